//! RESP2 requests (multibulk and inline) and replies.
//!
//! The request parser, incremental over a `BytesMut` read buffer and
//! bounded in every length, is `pikafs_proto::resp`, shared with the
//! proxy; a protocol error ends only that connection.

use bytes::{Bytes, BytesMut};

pub use pikafs_proto::resp::{ProtocolError, MAX_BULK_LEN, MAX_INLINE_LEN, MAX_MULTIBULK_LEN};

/// Parses one request from the front of `buf`, consuming it: its
/// arguments. Returns `Ok(None)` when more bytes are needed (nothing is
/// consumed then). An empty inline line yields `Some(vec![])`, which
/// callers skip.
///
/// # Errors
/// The bytes are not RESP or exceed a bound; the connection must be closed
/// after replying with the error.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    Ok(pikafs_proto::resp::parse_request(buf)?.map(|r| r.args))
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`-style status line.
    Status(String),
    /// `-ERR ...` line (text without the `-`).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// `$-1`.
    Nil,
    Array(Vec<Reply>),
    /// `*-1` (e.g. EXEC aborted by WATCH).
    NilArray,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn opt_bulk(b: Option<impl Into<Bytes>>) -> Reply {
        b.map(|b| Reply::Bulk(b.into())).unwrap_or(Reply::Nil)
    }

    pub fn bulk_str(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(s) => {
                out.extend_from_slice(b"+");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.extend_from_slice(b"-");
                // An error line must stay one line.
                for &b in s.as_bytes() {
                    out.extend_from_slice(&[if b == b'\r' || b == b'\n' { b' ' } else { b }]);
                }
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => {
                out.extend_from_slice(format!(":{n}\r\n").as_bytes());
            }
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.encode(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf)? {
            out.push(r);
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
                got.push(r);
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
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::ok(),
            Reply::Int(-3),
            Reply::bulk("x"),
            Reply::Nil,
            Reply::Error("ERR a\r\nb".into()),
            Reply::NilArray,
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*6\r\n+OK\r\n:-3\r\n$1\r\nx\r\n$-1\r\n-ERR a  b\r\n*-1\r\n"
        );
    }
}
