//! RESP2 requests, as a Redis client sends them: the bounded, incremental
//! parser shared by the kv server (`pikafs kv`) and the proxy (`pikafs
//! proxy`), and the multibulk encoding of a command.
//!
//! Every length is bounded, so a hostile client costs at most one bulk of
//! memory before it is cut off; a protocol error ends only its connection.
//! A parsed request keeps the bytes the client sent beside its arguments
//! (the arguments are slices of them), so a proxy forwards without
//! re-encoding.

use bytes::{Buf, Bytes, BytesMut};

/// Largest bulk string, as Redis's `proto-max-bulk-len` default.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Largest multibulk element count (Redis allows 1024*1024).
pub const MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Longest inline command line and longest `*N` / `$N` header line.
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// A malformed request; the text follows `-ERR Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn perr(s: impl Into<String>) -> ProtocolError {
    ProtocolError(s.into())
}

/// One client request: its arguments and the multibulk bytes to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Bytes>,
    /// The request as a RESP multibulk (inline requests are re-encoded so
    /// backends always get the same form).
    pub raw: Bytes,
}

/// Parses one request from the front of `buf`, consuming it. Returns
/// `Ok(None)` when more bytes are needed (nothing is consumed then). An
/// empty inline line yields a request with no arguments, which callers
/// skip.
///
/// # Errors
/// The bytes are not RESP or exceed a bound; the connection must be closed
/// after replying with the error.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'*' {
        parse_multibulk(buf)
    } else {
        parse_inline(buf).map(|o| {
            o.map(|args| Request {
                raw: encode_command(&args),
                args,
            })
        })
    }
}

/// Index of the first CRLF in `buf` at or after `from`.
pub fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// A header line `<c><digits>\r\n` starting at `at`; returns (value, index
/// after CRLF).
fn header(
    buf: &[u8],
    at: usize,
    what: &str,
    max: usize,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(end) = find_crlf(buf, at) else {
        if buf.len() - at > MAX_INLINE_LEN {
            return Err(perr(format!("too big {what} count string")));
        }
        return Ok(None);
    };
    let digits = std::str::from_utf8(&buf[at + 1..end])
        .map_err(|_| perr(format!("invalid {what} length")))?;
    let n: i64 = digits
        .parse()
        .map_err(|_| perr(format!("invalid {what} length")))?;
    if n > max as i64 {
        return Err(perr(format!("invalid {what} length")));
    }
    Ok(Some((n, end + 2)))
}

fn parse_multibulk(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    let Some((count, mut pos)) = header(buf, 0, "multibulk", MAX_MULTIBULK_LEN)? else {
        return Ok(None);
    };
    if count <= 0 {
        buf.advance(pos);
        return Ok(Some(Request {
            args: Vec::new(),
            raw: Bytes::new(),
        }));
    }
    // Check the whole request is here before copying anything, so a
    // partial request costs nothing until complete.
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(perr(format!("expected '$', got '{}'", buf[pos] as char)));
        }
        let Some((len, start)) = header(buf, pos, "bulk", MAX_BULK_LEN)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(perr("invalid bulk length"));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            buf.reserve(end + 2 - buf.len());
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(perr("bulk string not terminated by CRLF"));
        }
        spans.push((start, end));
        pos = end + 2;
    }
    let raw = buf.split_to(pos).freeze();
    let args = spans.into_iter().map(|(s, e)| raw.slice(s..e)).collect();
    Ok(Some(Request { args, raw }))
}

fn parse_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(perr("too big inline request"));
        }
        return Ok(None);
    };
    if nl > MAX_INLINE_LEN {
        return Err(perr("too big inline request"));
    }
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    split_inline(line).map(Some)
}

/// Splits an inline command like Redis's `sdssplitargs`: whitespace
/// separated, with "double" (backslash escapes, `\xHH`) and 'single' quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    let unbalanced = || perr("unbalanced quotes in request");
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut cur = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let &c = line.get(i).ok_or_else(unbalanced)?;
                    if c == b'"' {
                        i += 1;
                        break;
                    }
                    if c == b'\\' && i + 1 < line.len() {
                        let n = line[i + 1];
                        if n == b'x'
                            && i + 3 < line.len()
                            && line[i + 2].is_ascii_hexdigit()
                            && line[i + 3].is_ascii_hexdigit()
                        {
                            let h = std::str::from_utf8(&line[i + 2..i + 4]).expect("hex digits");
                            cur.push(u8::from_str_radix(h, 16).expect("hex digits"));
                            i += 4;
                            continue;
                        }
                        cur.push(match n {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                    cur.push(c);
                    i += 1;
                }
                if i < line.len() && !line[i].is_ascii_whitespace() {
                    return Err(unbalanced());
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let &c = line.get(i).ok_or_else(unbalanced)?;
                    if c == b'\'' {
                        i += 1;
                        break;
                    }
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        cur.push(b'\'');
                        i += 2;
                        continue;
                    }
                    cur.push(c);
                    i += 1;
                }
                if i < line.len() && !line[i].is_ascii_whitespace() {
                    return Err(unbalanced());
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    cur.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(cur));
    }
    Ok(args)
}

/// Encodes a command as a RESP multibulk.
pub fn encode_command<B: AsRef<[u8]>>(args: &[B]) -> Bytes {
    let mut out =
        BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    encode_command_into(args, &mut out);
    out.freeze()
}

/// Appends a command as a RESP multibulk to `out`.
pub fn encode_command_into<B: AsRef<[u8]>>(args: &[B], out: &mut BytesMut) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf)? {
            out.push(r.args);
        }
        Ok(out)
    }

    #[test]
    fn multibulk_parses_binary_args() {
        let r = parse_all(b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n").unwrap();
        assert_eq!(r, vec![vec![Bytes::from("GET"), Bytes::from("a\r\nb")]]);
    }

    #[test]
    fn fragmented_input_yields_the_same_requests() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let whole = parse_all(input).unwrap();
        assert_eq!(whole.len(), 3);
        // Feed one byte at a time: every split point must work.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(r) = parse_request(&mut buf).unwrap() {
                got.push(r.args);
            }
        }
        assert_eq!(got, whole);
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_request_consumes_nothing() {
        let input = &b"*2\r\n$3\r\nGET\r\n$10\r\nabc"[..];
        let mut buf = BytesMut::from(input);
        assert_eq!(parse_request(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], input);
    }

    #[test]
    fn oversize_lengths_are_rejected_before_reading_the_body() {
        let e = parse_all(b"*2000000\r\n").unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid multibulk length");
        let e = parse_all(b"*1\r\n$600000000\r\n").unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
        let long = vec![b'a'; MAX_INLINE_LEN + 10];
        let e = parse_all(&long).unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: too big inline request");
        let mut hdr = b"*".to_vec();
        hdr.extend(std::iter::repeat_n(b'1', MAX_INLINE_LEN + 10));
        assert!(parse_all(&hdr).is_err());
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert_eq!(
            parse_all(b"*1\r\n+PING\r\n").unwrap_err().to_string(),
            "Protocol error: expected '$', got '+'"
        );
        assert!(parse_all(b"*x\r\n").is_err());
        assert!(parse_all(b"*1\r\n$-5\r\n").is_err());
        assert!(parse_all(b"*1\r\n$2\r\nabcd\r\n").is_err());
        assert!(parse_all(b"SET \"abc\n").is_err());
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let r = parse_all(b"set \"a b\\x41\" 'c d'  e\r\n\r\nping\n").unwrap();
        assert_eq!(
            r,
            vec![
                vec![
                    Bytes::from("set"),
                    Bytes::from("a bA"),
                    Bytes::from("c d"),
                    Bytes::from("e")
                ],
                vec![],
                vec![Bytes::from("ping")],
            ]
        );
    }

    #[test]
    fn multibulk_keeps_raw_bytes() {
        let input = b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let r = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(r.args, vec![Bytes::from("GET"), Bytes::from("a\r\nb")]);
        assert_eq!(&r.raw[..], &input[..]);
    }

    #[test]
    fn inline_is_reencoded() {
        let mut buf = BytesMut::from(&b"set \"a b\" 'c'\r\n"[..]);
        let r = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(&r.raw[..], b"*3\r\n$3\r\nset\r\n$3\r\na b\r\n$1\r\nc\r\n");
    }
}
