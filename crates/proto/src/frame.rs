//! The data-path frame: a length prefix, an opcode and a request id.
//!
//! ```text
//!  0       4      5               13
//!  +-------+------+---------------+----------------------+
//!  | len   | op   | request id    | body (len - 9 bytes) |
//!  | u32le | u8   | u64le         |                      |
//!  +-------+------+---------------+----------------------+
//! ```
//!
//! `len` counts the bytes after itself. A frame whose `len` exceeds
//! [`MAX_FRAME_LEN`] is rejected before any of it is buffered, so a peer
//! cannot make us allocate by lying about a length. Request ids let a client
//! pipeline many requests on one connection: responses may come back in any
//! order and carry the id of the request they answer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtoError;

/// Largest value of the length prefix. Big enough for a 1 MiB IO and for a
/// batch of raft messages (senders cap batches well below it).
pub const MAX_FRAME_LEN: usize = 16 << 20;
/// Bytes of op + request id that follow the length prefix.
pub const HEADER_LEN: usize = 9;

/// One decoded frame; the body is interpreted by [`crate::msg`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub op: u8,
    pub id: u64,
    pub body: Bytes,
}

/// tokio-util codec for [`Frame`]s with the size limit enforced.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if len < HEADER_LEN {
            return Err(ProtoError::FrameTooShort { len });
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut frame = src.split_to(len);
        let op = frame.get_u8();
        let id = frame.get_u64_le();
        Ok(Some(Frame {
            op,
            id,
            body: frame.freeze(),
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let len = HEADER_LEN + item.body.len();
        if len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        dst.reserve(4 + len);
        dst.put_u32_le(len as u32);
        dst.put_u8(item.op);
        dst.put_u64_le(item.id);
        dst.extend_from_slice(&item.body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_partial_input() {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        let f = Frame {
            op: 7,
            id: 42,
            body: Bytes::from_static(b"hello"),
        };
        codec.encode(f.clone(), &mut buf).unwrap();
        let whole = buf.clone();
        // Every strict prefix is incomplete, never an error.
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(codec.decode(&mut part).unwrap(), None);
        }
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_huge_length_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        buf.put_u8(1);
        let err = FrameCodec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn rejects_short_length() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(3);
        buf.put_slice(&[0, 0, 0]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Err(ProtoError::FrameTooShort { len: 3 })
        ));
    }
}
