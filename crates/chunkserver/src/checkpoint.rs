//! The checkpoint: what a restart needs besides the WAL and chunk files.
//!
//! Written atomically (tmp file, fsync, rename, directory fsync) after every
//! chunk file and CRC file is durable, so the chunk data always holds at
//! least every write up to each copyset's `applied`. Layout (little-endian):
//!
//! ```text
//!  +--------+---------+----------+----------+------------------------+
//!  | "PKCP" | version | body len | crc32c   | body                   |
//!  | 4 B    | u32 = 1 | u64      | u32      |                        |
//!  +--------+---------+----------+----------+------------------------+
//!  body = u32 n, n × copyset, u32 m, m × peer
//!  copyset = id u64 | applied u64 | applied_term u64
//!          | hs.term u64 | hs.vote u64 | hs.commit u64
//!          | u32 nv | nv × voter u64 | u32 nl | nl × learner u64
//!          | u32 ne | ne × (volume u64, epoch u64)
//!  peer    = server id u64 | u16 len | address (UTF-8)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Buf, BufMut};
use pikafs_proto::{CopysetId, Epoch, ServerId, VolumeId};

use crate::chunk::{fsync_dir, write_atomic};
use crate::error::CheckpointError;

const MAGIC: &[u8; 4] = b"PKCP";
const VERSION: u32 = 1;
/// File name inside the data directory.
pub const FILE_NAME: &str = "checkpoint";

/// One copyset's durable state at its applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopysetCheckpoint {
    pub id: CopysetId,
    pub applied: u64,
    pub applied_term: u64,
    pub hs_term: u64,
    pub hs_vote: u64,
    pub hs_commit: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Newest epoch per volume, as of `applied`.
    pub epochs: BTreeMap<VolumeId, Epoch>,
}

/// The whole checkpoint file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub copysets: Vec<CopysetCheckpoint>,
    /// Address book, so a restart with ctrl down can still reach peers.
    pub peers: BTreeMap<ServerId, String>,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        if self.0.len() < 8 {
            return Err(CheckpointError::Malformed("truncated u64".into()));
        }
        Ok(self.0.get_u64_le())
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        if self.0.len() < 4 {
            return Err(CheckpointError::Malformed("truncated u32".into()));
        }
        Ok(self.0.get_u32_le())
    }
    fn count(&mut self, unit: usize) -> Result<usize, CheckpointError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(unit) > self.0.len() {
            return Err(CheckpointError::Malformed(format!("count {n} too large")));
        }
        Ok(n)
    }
    fn u64s(&mut self) -> Result<Vec<u64>, CheckpointError> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
}

impl Checkpoint {
    /// Serialises to the file format.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_u32_le(self.copysets.len() as u32);
        for c in &self.copysets {
            for v in [
                c.id,
                c.applied,
                c.applied_term,
                c.hs_term,
                c.hs_vote,
                c.hs_commit,
            ] {
                b.put_u64_le(v);
            }
            for list in [&c.voters, &c.learners] {
                b.put_u32_le(list.len() as u32);
                for v in list {
                    b.put_u64_le(*v);
                }
            }
            b.put_u32_le(c.epochs.len() as u32);
            for (v, e) in &c.epochs {
                b.put_u64_le(*v);
                b.put_u64_le(*e);
            }
        }
        b.put_u32_le(self.peers.len() as u32);
        for (id, addr) in &self.peers {
            b.put_u64_le(*id);
            let a = &addr.as_bytes()[..addr.len().min(u16::MAX as usize)];
            b.put_u16_le(a.len() as u16);
            b.extend_from_slice(a);
        }
        let mut out = Vec::with_capacity(20 + b.len());
        out.extend_from_slice(MAGIC);
        out.put_u32_le(VERSION);
        out.put_u64_le(b.len() as u64);
        out.put_u32_le(crc32c::crc32c(&b));
        out.extend_from_slice(&b);
        out
    }

    /// Parses the file format strictly.
    ///
    /// # Errors
    /// Any mismatch of magic, version, length or CRC, or a truncated body.
    pub fn decode(data: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let bad = |s: &str| CheckpointError::Malformed(s.to_string());
        if data.len() < 20 || &data[..4] != MAGIC {
            return Err(bad("bad magic"));
        }
        let mut h = &data[4..20];
        if h.get_u32_le() != VERSION {
            return Err(bad("unknown version"));
        }
        let len = h.get_u64_le() as usize;
        let crc = h.get_u32_le();
        let body = &data[20..];
        if body.len() != len || crc32c::crc32c(body) != crc {
            return Err(bad("length or crc mismatch"));
        }
        let mut r = Reader(body);
        let n = r.count(48)?;
        let mut copysets = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = CopysetCheckpoint {
                id: r.u64()?,
                applied: r.u64()?,
                applied_term: r.u64()?,
                hs_term: r.u64()?,
                hs_vote: r.u64()?,
                hs_commit: r.u64()?,
                ..Default::default()
            };
            c.voters = r.u64s()?;
            c.learners = r.u64s()?;
            let ne = r.count(16)?;
            for _ in 0..ne {
                let v = r.u64()?;
                let e = r.u64()?;
                c.epochs.insert(v, e);
            }
            copysets.push(c);
        }
        let np = r.count(10)?;
        let mut peers = BTreeMap::new();
        for _ in 0..np {
            let id = r.u64()?;
            if r.0.len() < 2 {
                return Err(bad("truncated peer"));
            }
            let l = r.0.get_u16_le() as usize;
            if r.0.len() < l {
                return Err(bad("truncated peer address"));
            }
            let addr =
                String::from_utf8(r.0[..l].to_vec()).map_err(|_| bad("address not UTF-8"))?;
            r.0.advance(l);
            peers.insert(id, addr);
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Checkpoint { copysets, peers })
    }

    /// Loads `data_dir/checkpoint`; `None` when there is none yet.
    ///
    /// # Errors
    /// IO errors or a malformed file (never silently ignored).
    pub fn load(data_dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(d) => Checkpoint::decode(&d).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes `data_dir/checkpoint` atomically and durably.
    ///
    /// # Errors
    /// IO errors.
    pub fn store(&self, data_dir: &Path) -> Result<(), CheckpointError> {
        let path = data_dir.join(FILE_NAME);
        let e = |source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        };
        write_atomic(&path, &self.encode()).map_err(e)?;
        fsync_dir(data_dir).map_err(e)
    }
}

/// One checkpoint to make durable: the chunk stores of every copyset it
/// lists, then the checkpoint file itself.
pub struct CheckpointJob {
    pub checkpoint: Checkpoint,
    pub stores: Vec<std::sync::Arc<crate::chunk::ChunkStore>>,
    pub data_dir: std::path::PathBuf,
}

impl CheckpointJob {
    /// Syncs every store (data, then CRC files), then writes the file.
    /// A store whose directory is gone was destroyed meanwhile: skipped.
    ///
    /// # Errors
    /// IO errors (fatal for the server).
    pub fn run(&self) -> Result<(), CheckpointError> {
        for store in &self.stores {
            if let Err(e) = store.sync() {
                if store.dir().exists() {
                    return Err(CheckpointError::Chunk(e));
                }
            }
        }
        self.checkpoint.store(&self.data_dir)
    }
}

/// A thread that runs checkpoint jobs off the raft loop, one at a time, so
/// the loop never stalls on chunk-file syncs.
pub struct Checkpointer {
    jobs: std::sync::mpsc::Sender<CheckpointJob>,
    done: std::sync::mpsc::Receiver<Result<(), CheckpointError>>,
}

impl Checkpointer {
    /// Starts the thread.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn() -> std::io::Result<Checkpointer> {
        let (jobs, rx) = std::sync::mpsc::channel::<CheckpointJob>();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                for job in rx {
                    if tx.send(job.run()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer { jobs, done })
    }

    /// Queues a job; the caller must not queue another before its result.
    pub fn submit(&self, job: CheckpointJob) -> Result<(), CheckpointError> {
        self.jobs
            .send(job)
            .map_err(|_| CheckpointError::Malformed("checkpoint thread is gone".into()))
    }

    /// The result of the submitted job, if it is done.
    pub fn try_done(&self) -> Option<Result<(), CheckpointError>> {
        self.done.try_recv().ok()
    }

    /// Waits for the result of the submitted job.
    pub fn wait_done(&self) -> Result<(), CheckpointError> {
        self.done.recv().unwrap_or_else(|_| {
            Err(CheckpointError::Malformed(
                "checkpoint thread is gone".into(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            copysets: vec![
                CopysetCheckpoint {
                    id: 3,
                    applied: 100,
                    applied_term: 4,
                    hs_term: 5,
                    hs_vote: 2,
                    hs_commit: 101,
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    epochs: [(10, 2), (11, 7)].into_iter().collect(),
                },
                CopysetCheckpoint {
                    id: 9,
                    ..Default::default()
                },
            ],
            peers: [(1, "127.0.0.1:7100".to_string()), (2, "h:1".to_string())]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn roundtrip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), None);
        let c = sample();
        c.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c.clone()));
        // Overwrite keeps only the newest.
        let mut c2 = c;
        c2.copysets.pop();
        c2.store(dir.path()).unwrap();
        assert_eq!(Checkpoint::load(dir.path()).unwrap(), Some(c2));
    }

    #[test]
    fn any_damage_is_rejected() {
        let enc = sample().encode();
        for i in 0..enc.len() {
            let mut d = enc.clone();
            d[i] ^= 1;
            assert!(Checkpoint::decode(&d).is_err(), "flip at {i} accepted");
        }
        for cut in 0..enc.len() {
            assert!(Checkpoint::decode(&enc[..cut]).is_err());
        }
    }
}
