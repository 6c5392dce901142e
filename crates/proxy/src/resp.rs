//! RESP2 on both sides of the proxy: bounded request parsing (client side)
//! and reply framing (backend side).
//!
//! Requests are parsed into their arguments *and* kept as the raw bytes the
//! client sent, so the common case forwards them without re-encoding.
//! Replies are never decoded unless the proxy has to look inside them
//! (MGET/EXISTS merges, `PIKAFS SEQ`/`WAITSEQ`): [`reply_len`] only finds
//! where one complete reply ends, so backend errors and values reach the
//! client byte for byte.

use bytes::{Bytes, BytesMut};

pub use pikafs_proto::resp::{
    encode_command, encode_command_into, find_crlf, parse_request, ProtocolError, Request,
    MAX_BULK_LEN, MAX_INLINE_LEN, MAX_MULTIBULK_LEN,
};

/// Deepest reply nesting we accept from a backend (RESP2 replies of the kv
/// node nest at most a few levels: EXEC of SCAN...).
const MAX_REPLY_DEPTH: usize = 32;

/// A reply the proxy produces itself: `-<text>\r\n`, kept on one line.
pub fn error_reply(text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(b'-');
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// `+<text>\r\n`.
pub fn status_reply(text: &str) -> Bytes {
    Bytes::from(format!("+{text}\r\n"))
}

/// `:<n>\r\n`.
pub fn int_reply(n: i64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

/// `$<len>\r\n<bytes>\r\n`.
pub fn bulk_reply(b: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(b.len() + 16);
    out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// A backend sent something that is not a RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad reply from backend: {0}")]
pub struct ReplyError(pub String);

/// Length of the first complete reply in `buf`, `Ok(None)` if it is not
/// complete yet.
///
/// # Errors
/// The bytes are not a RESP2 reply (the backend connection must be
/// dropped: its framing is lost).
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ReplyError> {
    reply_end(buf, 0, 0)
}

fn reply_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ReplyError> {
    if at >= buf.len() {
        return Ok(None);
    }
    if depth > MAX_REPLY_DEPTH {
        return Err(ReplyError("nested too deep".into()));
    }
    let Some(eol) = find_crlf(buf, at) else {
        return Ok(None);
    };
    let line = &buf[at + 1..eol];
    let next = eol + 2;
    match buf[at] {
        b'+' | b'-' | b':' => Ok(Some(next)),
        b'$' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some(next));
            }
            let end = next + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            Ok(Some(end))
        }
        b'*' => {
            let n = parse_int(line)?;
            let mut pos = next;
            for _ in 0..n.max(0) {
                match reply_end(buf, pos, depth + 1)? {
                    Some(e) => pos = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        other => Err(ReplyError(format!("unexpected type byte {other:#04x}"))),
    }
}

fn parse_int(line: &[u8]) -> Result<i64, ReplyError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|&n| n >= -1 && n <= MAX_BULK_LEN as i64)
        .ok_or_else(|| ReplyError(format!("bad length {:?}", String::from_utf8_lossy(line))))
}

/// The integer of a `:n` reply.
pub fn as_int(reply: &[u8]) -> Option<i64> {
    let body = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// Whether a reply is an error (`-...`).
pub fn is_error(reply: &[u8]) -> bool {
    reply.first() == Some(&b'-')
}

/// The elements of an array reply, each as its own complete reply; `None`
/// if `reply` is not a (non-nil) array.
pub fn array_elements(reply: &Bytes) -> Option<Vec<Bytes>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let eol = find_crlf(reply, 0)?;
    let n = parse_int(&reply[1..eol]).ok()?;
    if n < 0 {
        return None;
    }
    let mut pos = eol + 2;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let end = reply_end(reply, pos, 1).ok()??;
        out.push(reply.slice(pos..end));
        pos = end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_framing_waits_for_complete_replies() {
        let full = b"*3\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n-ERR x\r\n+OK\r\n";
        let first = full.len() - 5;
        assert_eq!(reply_len(full).unwrap(), Some(first));
        for cut in 0..first {
            assert_eq!(reply_len(&full[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(reply_len(b"*-1\r\n").unwrap(), Some(5));
        assert!(reply_len(b"?what\r\n").is_err());
    }

    #[test]
    fn array_elements_split_replies() {
        let r = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n:5\r\n");
        let e = array_elements(&r).unwrap();
        assert_eq!(
            e,
            vec![
                Bytes::from("$1\r\na\r\n"),
                Bytes::from("$-1\r\n"),
                Bytes::from(":5\r\n")
            ]
        );
        assert_eq!(as_int(&e[2]), Some(5));
        assert!(array_elements(&Bytes::from_static(b"-ERR\r\n")).is_none());
    }
}
