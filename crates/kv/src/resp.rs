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
