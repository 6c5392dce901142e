//! Persisted records and their fixed little-endian binary format.
//!
//! Every record starts with a format version byte ([`RECORD_VERSION`]).
//! Decoding is strict: a wrong version, a short or long buffer, invalid
//! UTF-8, a zero or duplicate id, or unknown flag bits are errors, never
//! defaults. The layouts are drawn in `docs/ctrl.md`.

use pikafs_proto::{CopysetId, ServerId, VolumeId};

use crate::error::RecordError;

/// Format version written first in every record.
pub const RECORD_VERSION: u8 = 1;

/// Longest server address accepted (host:port).
pub const MAX_ADDR_LEN: usize = 1024;

/// A registered chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// Data-path address, host:port.
    pub addr: String,
    /// Capacity it announced.
    pub capacity_bytes: u64,
}

/// A copyset: the members ctrl wants it to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopysetRecord {
    /// Target members, distinct server ids, in placement order.
    pub members: Vec<ServerId>,
    /// Some replica has reported a leader at least once. Before that a
    /// missing member gets CREATE; after, JOIN.
    pub bootstrapped: bool,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub size_bytes: u64,
    pub epoch: u64,
    pub created_unix_secs: u64,
    /// Chunk i lives on `copysets[i % len]`; fixed at creation.
    pub copysets: Vec<CopysetId>,
}

const FLAG_BOOTSTRAPPED: u8 = 1;

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Result<Self, RecordError> {
        let mut r = Reader { buf, what };
        let v = r.u8()?;
        if v != RECORD_VERSION {
            return Err(r.err(format!("unknown version {v}")));
        }
        Ok(r)
    }

    fn err(&self, detail: String) -> RecordError {
        RecordError {
            what: self.what,
            detail,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(self.err(format!(
                "truncated: need {n} bytes, have {}",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// `n` distinct non-zero ids.
    fn ids(&mut self, n: usize, kind: &str) -> Result<Vec<u64>, RecordError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.u64()?;
            if id == 0 || out.contains(&id) {
                return Err(self.err(format!("{kind} id {id} is zero or repeated")));
            }
            out.push(id);
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), RecordError> {
        if !self.buf.is_empty() {
            return Err(self.err(format!("{} trailing bytes", self.buf.len())));
        }
        Ok(())
    }
}

impl ServerRecord {
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.addr.as_bytes();
        // Callers validate the address length on registration.
        let len = u16::try_from(addr.len()).expect("address length checked at registration");
        let mut out = Vec::with_capacity(11 + addr.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.capacity_bytes.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(addr);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(buf, "server")?;
        let capacity_bytes = r.u64()?;
        let len = r.u16()? as usize;
        let raw = r.take(len)?;
        let addr = std::str::from_utf8(raw)
            .map_err(|e| r.err(format!("address is not UTF-8: {e}")))?
            .to_owned();
        r.finish()?;
        Ok(ServerRecord {
            addr,
            capacity_bytes,
        })
    }
}

impl CopysetRecord {
    pub fn encode(&self) -> Vec<u8> {
        let n = u8::try_from(self.members.len()).expect("a copyset has at most a few members");
        let mut out = Vec::with_capacity(3 + 8 * self.members.len());
        out.push(RECORD_VERSION);
        out.push(if self.bootstrapped {
            FLAG_BOOTSTRAPPED
        } else {
            0
        });
        out.push(n);
        for m in &self.members {
            out.extend_from_slice(&m.to_le_bytes());
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(buf, "copyset")?;
        let flags = r.u8()?;
        if flags & !FLAG_BOOTSTRAPPED != 0 {
            return Err(r.err(format!("unknown flags {flags:#04x}")));
        }
        let n = r.u8()? as usize;
        if n == 0 {
            return Err(r.err("no members".into()));
        }
        let members = r.ids(n, "member")?;
        r.finish()?;
        Ok(CopysetRecord {
            members,
            bootstrapped: flags & FLAG_BOOTSTRAPPED != 0,
        })
    }
}

impl VolumeRecord {
    pub fn encode(&self) -> Vec<u8> {
        let n = u16::try_from(self.copysets.len()).expect("a volume has at most 16 copysets");
        let mut out = Vec::with_capacity(35 + 8 * self.copysets.len());
        out.push(RECORD_VERSION);
        for v in [self.id, self.size_bytes, self.epoch, self.created_unix_secs] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&n.to_le_bytes());
        for c in &self.copysets {
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(buf, "volume")?;
        let id = r.u64()?;
        let size_bytes = r.u64()?;
        let epoch = r.u64()?;
        let created_unix_secs = r.u64()?;
        let n = r.u16()? as usize;
        if id == 0 || epoch == 0 || n == 0 {
            return Err(r.err(format!(
                "id {id}, epoch {epoch}, {n} copysets: none may be zero"
            )));
        }
        let copysets = r.ids(n, "copyset")?;
        r.finish()?;
        Ok(VolumeRecord {
            id,
            size_bytes,
            epoch,
            created_unix_secs,
            copysets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume() -> VolumeRecord {
        VolumeRecord {
            id: 3,
            size_bytes: 1 << 30,
            epoch: 7,
            created_unix_secs: 1_700_000_000,
            copysets: vec![1, 2, 5],
        }
    }

    #[test]
    fn records_round_trip() {
        let s = ServerRecord {
            addr: "127.0.0.1:9000".into(),
            capacity_bytes: 42,
        };
        assert_eq!(ServerRecord::decode(&s.encode()).unwrap(), s);
        let c = CopysetRecord {
            members: vec![4, 1, 9],
            bootstrapped: true,
        };
        assert_eq!(CopysetRecord::decode(&c.encode()).unwrap(), c);
        let v = volume();
        assert_eq!(VolumeRecord::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn volume_layout_is_fixed() {
        let b = volume().encode();
        assert_eq!(b.len(), 1 + 4 * 8 + 2 + 3 * 8);
        assert_eq!(b[0], RECORD_VERSION);
        assert_eq!(&b[1..9], &3u64.to_le_bytes());
        assert_eq!(&b[17..25], &7u64.to_le_bytes());
        assert_eq!(&b[33..35], &3u16.to_le_bytes());
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let b = volume().encode();
        for cut in 0..b.len() {
            assert!(VolumeRecord::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(VolumeRecord::decode(&long).is_err());
        let s = ServerRecord {
            addr: "h:1".into(),
            capacity_bytes: 0,
        }
        .encode();
        for cut in 0..s.len() {
            assert!(ServerRecord::decode(&s[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_fields_are_rejected() {
        let mut b = volume().encode();
        b[0] = 2;
        assert!(VolumeRecord::decode(&b)
            .unwrap_err()
            .detail
            .contains("version"));

        let mut c = CopysetRecord {
            members: vec![1, 2, 3],
            bootstrapped: false,
        }
        .encode();
        c[1] = 0x80;
        assert!(CopysetRecord::decode(&c).is_err());

        let dup = CopysetRecord {
            members: vec![1, 1, 3],
            bootstrapped: false,
        }
        .encode();
        assert!(CopysetRecord::decode(&dup).is_err());

        let mut s = ServerRecord {
            addr: "ab".into(),
            capacity_bytes: 0,
        }
        .encode();
        let last = s.len() - 1;
        s[last] = 0xff;
        assert!(ServerRecord::decode(&s).is_err());
    }
}
