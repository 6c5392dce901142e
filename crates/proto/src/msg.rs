//! Data-path messages carried in [`Frame`]s.
//!
//! All integers are little-endian. Bodies, by opcode:
//!
//! | op | message | body |
//! |----|---------|------|
//! | 0x01 | `Ping` | empty |
//! | 0x02 | `Write` | copyset u64, volume u64, epoch u64, chunk u64, offset u32, data (rest) |
//! | 0x03 | `Read` | copyset u64, volume u64, chunk u64, offset u32, len u32 |
//! | 0x04 | `Fence` | copyset u64, volume u64, epoch u64 |
//! | 0x05 | `WriteV` | copyset u64, volume u64, epoch u64, chunk u64, count u32, count × (offset u32, len u32), the extents' data back to back (rest) |
//! | 0x10 | `RaftBatch` | from u64, count u32, count × (copyset u64, len u32, raft `Message` protobuf) |
//! | 0x11 | `ReadLocal` | copyset u64, volume u64, chunk u64, offset u32, len u32 |
//! | 0x12 | `ListChunks` | copyset u64 |
//! | 0x80 | `Ok` | empty |
//! | 0x81 | `Data` | bytes (rest) |
//! | 0x82 | `Chunks` | count u32, count × (volume u64, chunk u64) |
//! | 0xFF | `Error` | code u16, aux u64, message (rest, UTF-8) |
//!
//! `RaftBatch` is one-way: it gets no response, and senders use request id 0.
//! Every other request gets exactly one response with the same request id.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{ErrorCode, ProtoError};
use crate::frame::Frame;
use crate::ids::{CopysetId, Epoch, ServerId, VolumeId, MAX_IO_LEN};

/// Opcodes. Part of the wire format.
pub mod op {
    pub const PING: u8 = 0x01;
    pub const WRITE: u8 = 0x02;
    pub const READ: u8 = 0x03;
    pub const FENCE: u8 = 0x04;
    pub const WRITE_V: u8 = 0x05;
    pub const RAFT_BATCH: u8 = 0x10;
    pub const READ_LOCAL: u8 = 0x11;
    pub const LIST_CHUNKS: u8 = 0x12;
    pub const OK: u8 = 0x80;
    pub const DATA: u8 = 0x81;
    pub const CHUNKS: u8 = 0x82;
    pub const ERROR: u8 = 0xFF;
}

/// Largest number of raft messages in one batch frame.
pub const MAX_RAFT_BATCH: usize = 4096;
/// Largest number of extents in one `WriteV`.
pub const MAX_WRITE_EXTENTS: usize = 64;
/// Largest number of entries in a `Chunks` response.
pub const MAX_CHUNK_LIST: usize = 1 << 20;

/// A request to a chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Liveness check; answered with `Ok`.
    Ping,
    /// Replicated write of `data` at `offset` within chunk `chunk` of
    /// `volume`, fenced by `epoch`. Sent to the copyset leader. `offset +
    /// data.len()` must stay inside the chunk; any alignment is accepted.
    Write {
        copyset: CopysetId,
        volume: VolumeId,
        epoch: Epoch,
        chunk: u64,
        offset: u32,
        data: Bytes,
    },
    /// Several writes into one chunk as one replicated command: one raft
    /// entry, one answer, applied all or nothing. The fs commits a journal
    /// header and its ring copy this way (two writes to chunk 0, one round
    /// trip and one entry instead of two). At most [`MAX_WRITE_EXTENTS`]
    /// extents of [`MAX_IO_LEN`] bytes in total; each must stay inside the
    /// chunk (empty ones are ignored).
    WriteV {
        copyset: CopysetId,
        volume: VolumeId,
        epoch: Epoch,
        chunk: u64,
        extents: Vec<(u32, Bytes)>,
    },
    /// Linearizable read, served by the leader. Never-written bytes read as
    /// zeros.
    Read {
        copyset: CopysetId,
        volume: VolumeId,
        chunk: u64,
        offset: u32,
        len: u32,
    },
    /// Replicates "the newest epoch of `volume` is at least `epoch`" through
    /// the copyset, so older writers are rejected from then on.
    Fence {
        copyset: CopysetId,
        volume: VolumeId,
        epoch: Epoch,
    },
    /// Raft messages from server `from`, one entry per (copyset, message);
    /// the message is the protobuf encoding of raft's `eraftpb::Message`.
    RaftBatch {
        from: ServerId,
        msgs: Vec<(CopysetId, Bytes)>,
    },
    /// Read of this replica's local copy, without raft and CRC-checked. Used
    /// to copy a copyset to a new replica (snapshot install) and to repair a
    /// corrupt sector.
    ReadLocal {
        copyset: CopysetId,
        volume: VolumeId,
        chunk: u64,
        offset: u32,
        len: u32,
    },
    /// Lists the chunks this replica holds for the copyset.
    ListChunks { copyset: CopysetId },
}

/// A chunkserver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ok,
    Data(Bytes),
    Chunks(Vec<(VolumeId, u64)>),
    Error {
        code: ErrorCode,
        /// Leader id for `NotLeader`, newest epoch for `StaleEpoch`, else 0.
        aux: u64,
        message: String,
    },
}

impl Response {
    /// Builds an error response.
    pub fn error(code: ErrorCode, aux: u64, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            aux,
            message: message.into(),
        }
    }
}

struct Reader {
    body: Bytes,
}

impl Reader {
    fn need(&self, what: &'static str, n: usize) -> Result<(), ProtoError> {
        if self.body.remaining() < n {
            return Err(ProtoError::Truncated {
                what,
                need: n - self.body.remaining(),
            });
        }
        Ok(())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtoError> {
        self.need(what, 2)?;
        Ok(self.body.get_u16_le())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        self.need(what, 4)?;
        Ok(self.body.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        self.need(what, 8)?;
        Ok(self.body.get_u64_le())
    }
    fn bytes(&mut self, what: &'static str, n: usize) -> Result<Bytes, ProtoError> {
        self.need(what, n)?;
        Ok(self.body.split_to(n))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }
    fn finish(self) -> Result<(), ProtoError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Trailing(self.body.len()))
        }
    }
}

/// Appends `count u32 | count × (offset u32, len u32) | the data back to
/// back`: the tail of a `WriteV` request, and of the chunkserver's `WriteV`
/// raft entry.
pub fn put_extents(b: &mut impl BufMut, extents: &[(u32, Bytes)]) {
    b.put_u32_le(extents.len() as u32);
    for (off, d) in extents {
        b.put_u32_le(*off);
        b.put_u32_le(d.len() as u32);
    }
    for (_, d) in extents {
        b.put_slice(d);
    }
}

/// Decodes what [`put_extents`] wrote; it must be all of `body`. The count
/// (`1..=MAX_WRITE_EXTENTS`) and the summed lengths (`<= MAX_IO_LEN`) are
/// checked before any data is sliced, so a lying header allocates nothing.
///
/// # Errors
/// A count or total out of range, truncated or trailing bytes.
pub fn take_extents(body: Bytes) -> Result<Vec<(u32, Bytes)>, ProtoError> {
    let mut r = Reader { body };
    let count = r.u32("writev count")? as usize;
    if count == 0 || count > MAX_WRITE_EXTENTS {
        return Err(ProtoError::Invalid {
            what: "writev extent count",
            detail: format!("{count} is not in 1..={MAX_WRITE_EXTENTS}"),
        });
    }
    let mut lens = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let off = r.u32("writev extent offset")?;
        let len = r.u32("writev extent length")? as usize;
        total = total.saturating_add(len);
        lens.push((off, len));
    }
    check_io_len(total)?;
    let mut extents = Vec::with_capacity(count);
    for (off, len) in lens {
        extents.push((off, r.bytes("writev extent data", len)?));
    }
    r.finish()?;
    Ok(extents)
}

fn check_io_len(len: usize) -> Result<(), ProtoError> {
    if len > MAX_IO_LEN {
        return Err(ProtoError::Invalid {
            what: "io length",
            detail: format!("{len} bytes exceeds the limit of {MAX_IO_LEN}"),
        });
    }
    Ok(())
}

impl Request {
    /// Encodes into a frame with request id `id`.
    pub fn to_frame(&self, id: u64) -> Frame {
        let mut b = BytesMut::new();
        let op = match self {
            Request::Ping => op::PING,
            Request::Write {
                copyset,
                volume,
                epoch,
                chunk,
                offset,
                data,
            } => {
                b.reserve(36 + data.len());
                b.put_u64_le(*copyset);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
                b.put_u64_le(*chunk);
                b.put_u32_le(*offset);
                b.extend_from_slice(data);
                op::WRITE
            }
            Request::WriteV {
                copyset,
                volume,
                epoch,
                chunk,
                extents,
            } => {
                let data_len: usize = extents.iter().map(|(_, d)| d.len()).sum();
                b.reserve(36 + 8 * extents.len() + data_len);
                b.put_u64_le(*copyset);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
                b.put_u64_le(*chunk);
                put_extents(&mut b, extents);
                op::WRITE_V
            }
            Request::Read {
                copyset,
                volume,
                chunk,
                offset,
                len,
            }
            | Request::ReadLocal {
                copyset,
                volume,
                chunk,
                offset,
                len,
            } => {
                b.put_u64_le(*copyset);
                b.put_u64_le(*volume);
                b.put_u64_le(*chunk);
                b.put_u32_le(*offset);
                b.put_u32_le(*len);
                if matches!(self, Request::Read { .. }) {
                    op::READ
                } else {
                    op::READ_LOCAL
                }
            }
            Request::Fence {
                copyset,
                volume,
                epoch,
            } => {
                b.put_u64_le(*copyset);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
                op::FENCE
            }
            Request::RaftBatch { from, msgs } => {
                b.put_u64_le(*from);
                b.put_u32_le(msgs.len() as u32);
                for (cs, m) in msgs {
                    b.put_u64_le(*cs);
                    b.put_u32_le(m.len() as u32);
                    b.extend_from_slice(m);
                }
                op::RAFT_BATCH
            }
            Request::ListChunks { copyset } => {
                b.put_u64_le(*copyset);
                op::LIST_CHUNKS
            }
        };
        Frame {
            op,
            id,
            body: b.freeze(),
        }
    }

    /// Decodes a request frame.
    ///
    /// # Errors
    /// Unknown opcode, truncated or trailing bytes, or a length over a limit.
    pub fn from_frame(frame: Frame) -> Result<Request, ProtoError> {
        let mut r = Reader { body: frame.body };
        let req = match frame.op {
            op::PING => Request::Ping,
            op::WRITE => {
                let copyset = r.u64("write copyset")?;
                let volume = r.u64("write volume")?;
                let epoch = r.u64("write epoch")?;
                let chunk = r.u64("write chunk")?;
                let offset = r.u32("write offset")?;
                let data = r.rest();
                check_io_len(data.len())?;
                Request::Write {
                    copyset,
                    volume,
                    epoch,
                    chunk,
                    offset,
                    data,
                }
            }
            op::WRITE_V => {
                let copyset = r.u64("writev copyset")?;
                let volume = r.u64("writev volume")?;
                let epoch = r.u64("writev epoch")?;
                let chunk = r.u64("writev chunk")?;
                let extents = take_extents(r.rest())?;
                Request::WriteV {
                    copyset,
                    volume,
                    epoch,
                    chunk,
                    extents,
                }
            }
            op::READ | op::READ_LOCAL => {
                let copyset = r.u64("read copyset")?;
                let volume = r.u64("read volume")?;
                let chunk = r.u64("read chunk")?;
                let offset = r.u32("read offset")?;
                let len = r.u32("read len")?;
                check_io_len(len as usize)?;
                if frame.op == op::READ {
                    Request::Read {
                        copyset,
                        volume,
                        chunk,
                        offset,
                        len,
                    }
                } else {
                    Request::ReadLocal {
                        copyset,
                        volume,
                        chunk,
                        offset,
                        len,
                    }
                }
            }
            op::FENCE => Request::Fence {
                copyset: r.u64("fence copyset")?,
                volume: r.u64("fence volume")?,
                epoch: r.u64("fence epoch")?,
            },
            op::RAFT_BATCH => {
                let from = r.u64("raft batch sender")?;
                let count = r.u32("raft batch count")? as usize;
                if count > MAX_RAFT_BATCH {
                    return Err(ProtoError::Invalid {
                        what: "raft batch count",
                        detail: format!("{count} exceeds {MAX_RAFT_BATCH}"),
                    });
                }
                let mut msgs = Vec::with_capacity(count);
                for _ in 0..count {
                    let cs = r.u64("raft message copyset")?;
                    let len = r.u32("raft message length")? as usize;
                    msgs.push((cs, r.bytes("raft message", len)?));
                }
                Request::RaftBatch { from, msgs }
            }
            op::LIST_CHUNKS => Request::ListChunks {
                copyset: r.u64("list copyset")?,
            },
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// Encodes into a frame answering request `id`.
    pub fn to_frame(&self, id: u64) -> Frame {
        let mut b = BytesMut::new();
        let op = match self {
            Response::Ok => op::OK,
            Response::Data(d) => {
                b.extend_from_slice(d);
                op::DATA
            }
            Response::Chunks(list) => {
                b.put_u32_le(list.len() as u32);
                for (v, c) in list {
                    b.put_u64_le(*v);
                    b.put_u64_le(*c);
                }
                op::CHUNKS
            }
            Response::Error { code, aux, message } => {
                b.put_u16_le(*code as u16);
                b.put_u64_le(*aux);
                b.extend_from_slice(message.as_bytes());
                op::ERROR
            }
        };
        Frame {
            op,
            id,
            body: b.freeze(),
        }
    }

    /// Decodes a response frame.
    ///
    /// # Errors
    /// Unknown opcode, truncated or trailing bytes, or a count over a limit.
    pub fn from_frame(frame: Frame) -> Result<Response, ProtoError> {
        let mut r = Reader { body: frame.body };
        let resp = match frame.op {
            op::OK => Response::Ok,
            op::DATA => Response::Data(r.rest()),
            op::CHUNKS => {
                let count = r.u32("chunk count")? as usize;
                if count > MAX_CHUNK_LIST {
                    return Err(ProtoError::Invalid {
                        what: "chunk count",
                        detail: format!("{count} exceeds {MAX_CHUNK_LIST}"),
                    });
                }
                r.need("chunk list", count * 16)?;
                let mut list = Vec::with_capacity(count);
                for _ in 0..count {
                    list.push((r.u64("chunk volume")?, r.u64("chunk index")?));
                }
                Response::Chunks(list)
            }
            op::ERROR => {
                let code = ErrorCode::from_u16(r.u16("error code")?);
                let aux = r.u64("error aux")?;
                let message = String::from_utf8_lossy(&r.rest()).into_owned();
                Response::Error { code, aux, message }
            }
            other => return Err(ProtoError::UnknownOp(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Ping,
            Request::Write {
                copyset: 1,
                volume: 2,
                epoch: 3,
                chunk: 4,
                offset: 5,
                data: Bytes::from_static(b"abc"),
            },
            Request::WriteV {
                copyset: 1,
                volume: 2,
                epoch: 3,
                chunk: 4,
                extents: vec![
                    (4096, Bytes::from_static(b"hdr")),
                    (0, Bytes::from_static(b"ring")),
                ],
            },
            Request::Read {
                copyset: 1,
                volume: 2,
                chunk: 3,
                offset: 4,
                len: 4096,
            },
            Request::ReadLocal {
                copyset: 1,
                volume: 2,
                chunk: 3,
                offset: 0,
                len: 1,
            },
            Request::Fence {
                copyset: 9,
                volume: 8,
                epoch: 7,
            },
            Request::RaftBatch {
                from: 3,
                msgs: vec![(1, Bytes::from_static(b"x")), (2, Bytes::new())],
            },
            Request::ListChunks { copyset: 5 },
        ]
    }

    #[test]
    fn requests_roundtrip() {
        for (i, req) in all_requests().into_iter().enumerate() {
            let f = req.to_frame(i as u64);
            assert_eq!(f.id, i as u64);
            assert_eq!(Request::from_frame(f).unwrap(), req);
        }
    }

    #[test]
    fn responses_roundtrip() {
        for resp in [
            Response::Ok,
            Response::Data(Bytes::from_static(b"data")),
            Response::Chunks(vec![(1, 2), (3, 4)]),
            Response::error(ErrorCode::NotLeader, 2, "not leader"),
        ] {
            assert_eq!(Response::from_frame(resp.to_frame(9)).unwrap(), resp);
        }
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        for req in all_requests() {
            let f = req.to_frame(1);
            for cut in 0..f.body.len() {
                let short = Frame {
                    op: f.op,
                    id: 1,
                    body: f.body.slice(..cut),
                };
                // Write and Data take "the rest" so a cut may still decode;
                // it must never panic.
                let _ = Request::from_frame(short);
            }
        }
    }

    #[test]
    fn rejects_oversize_read_and_lying_counts() {
        let f = Request::Read {
            copyset: 1,
            volume: 1,
            chunk: 0,
            offset: 0,
            len: (MAX_IO_LEN + 1) as u32,
        }
        .to_frame(1);
        assert!(Request::from_frame(f).is_err());
        let mut b = BytesMut::new();
        b.put_u64_le(1);
        b.put_u32_le(u32::MAX);
        let f = Frame {
            op: op::RAFT_BATCH,
            id: 0,
            body: b.freeze(),
        };
        assert!(Request::from_frame(f).is_err());
        // WriteV: no extents, too many, or lengths summing past the limit.
        let writev = |count: u32, lens: &[u32]| {
            let mut b = BytesMut::new();
            for v in [1u64, 2, 3, 4] {
                b.put_u64_le(v);
            }
            b.put_u32_le(count);
            for l in lens {
                b.put_u32_le(0);
                b.put_u32_le(*l);
            }
            Request::from_frame(Frame {
                op: op::WRITE_V,
                id: 1,
                body: b.freeze(),
            })
        };
        assert!(matches!(writev(0, &[]), Err(ProtoError::Invalid { .. })));
        assert!(matches!(
            writev((MAX_WRITE_EXTENTS + 1) as u32, &[]),
            Err(ProtoError::Invalid { .. })
        ));
        assert!(matches!(
            writev(2, &[u32::MAX, u32::MAX]),
            Err(ProtoError::Invalid { .. })
        ));
        // A length the body does not have is truncation, not a huge alloc.
        assert!(matches!(
            writev(1, &[4096]),
            Err(ProtoError::Truncated { .. })
        ));
        let f = Frame {
            op: 0x55,
            id: 0,
            body: Bytes::new(),
        };
        assert!(matches!(
            Request::from_frame(f),
            Err(ProtoError::UnknownOp(0x55))
        ));
    }
}
