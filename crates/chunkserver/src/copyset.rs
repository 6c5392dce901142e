//! One copyset replica inside the raft loop: its `RawNode`, chunk store,
//! waiting proposers and readers, and the state machine that applies
//! committed entries.
//!
//! Entry data is a compact command encoding (little-endian):
//!
//! ```text
//!  Write: 0x01 | volume u64 | epoch u64 | chunk u64 | offset u32 | data
//!  Fence: 0x02 | volume u64 | epoch u64
//!  WriteV: 0x03 | volume u64 | epoch u64 | chunk u64 | count u32
//!          | count × (offset u32 | len u32) | the extents' data back to back
//! ```
//!
//! Entry context is `proposer ServerId u64 | proposal id u64`, so only the
//! server that proposed an entry answers for it, whoever applies it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use pikafs_proto::{CopysetId, Epoch, ErrorCode, Response, ServerId, VolumeId};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use crate::chunk::ChunkStore;
use crate::error::ChunkError;
use crate::raftlog::CopysetStorage;

/// A replicated state-machine command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Write {
        volume: VolumeId,
        epoch: Epoch,
        chunk: u64,
        offset: u32,
        data: Bytes,
    },
    Fence {
        volume: VolumeId,
        epoch: Epoch,
    },
    /// Several extents of one chunk, applied together (the proposer checked
    /// that each lies inside the chunk; apply checks again before writing
    /// any, so a bad entry writes nothing).
    WriteV {
        volume: VolumeId,
        epoch: Epoch,
        chunk: u64,
        extents: Vec<(u32, Bytes)>,
    },
}

const TAG_WRITE: u8 = 1;
const TAG_FENCE: u8 = 2;
const TAG_WRITE_V: u8 = 3;

impl Command {
    /// Encodes as entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Command::Write {
                volume,
                epoch,
                chunk,
                offset,
                data,
            } => {
                b.reserve(29 + data.len());
                b.put_u8(TAG_WRITE);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
                b.put_u64_le(*chunk);
                b.put_u32_le(*offset);
                b.extend_from_slice(data);
            }
            Command::Fence { volume, epoch } => {
                b.put_u8(TAG_FENCE);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
            }
            Command::WriteV {
                volume,
                epoch,
                chunk,
                extents,
            } => {
                let data: usize = extents.iter().map(|(_, d)| d.len()).sum();
                b.reserve(29 + 8 * extents.len() + data);
                b.put_u8(TAG_WRITE_V);
                b.put_u64_le(*volume);
                b.put_u64_le(*epoch);
                b.put_u64_le(*chunk);
                pikafs_proto::msg::put_extents(&mut b, extents);
            }
        }
        b
    }

    fn decode_write_v(mut d: Bytes) -> Option<Command> {
        if d.len() < 24 {
            return None;
        }
        let (volume, epoch, chunk) = (d.get_u64_le(), d.get_u64_le(), d.get_u64_le());
        let extents = pikafs_proto::msg::take_extents(d).ok()?;
        Some(Command::WriteV {
            volume,
            epoch,
            chunk,
            extents,
        })
    }

    /// Decodes entry data; `None` if malformed.
    pub fn decode(mut d: Bytes) -> Option<Command> {
        if d.is_empty() {
            return None;
        }
        match d.get_u8() {
            TAG_WRITE if d.len() >= 28 => Some(Command::Write {
                volume: d.get_u64_le(),
                epoch: d.get_u64_le(),
                chunk: d.get_u64_le(),
                offset: d.get_u32_le(),
                data: d,
            }),
            TAG_FENCE if d.len() == 16 => Some(Command::Fence {
                volume: d.get_u64_le(),
                epoch: d.get_u64_le(),
            }),
            TAG_WRITE_V => Command::decode_write_v(d),
            _ => None,
        }
    }

    /// The volume the command is about.
    pub fn volume(&self) -> VolumeId {
        match self {
            Command::Write { volume, .. }
            | Command::Fence { volume, .. }
            | Command::WriteV { volume, .. } => *volume,
        }
    }

    /// The chunk a write goes to; `None` for a fence.
    pub fn write_chunk(&self) -> Option<u64> {
        match self {
            Command::Write { chunk, .. } | Command::WriteV { chunk, .. } => Some(*chunk),
            Command::Fence { .. } => None,
        }
    }

    /// The epoch the command carries.
    pub fn epoch(&self) -> Epoch {
        match self {
            Command::Write { epoch, .. }
            | Command::Fence { epoch, .. }
            | Command::WriteV { epoch, .. } => *epoch,
        }
    }
}

/// Encodes an entry context.
pub fn encode_context(proposer: ServerId, id: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    b.put_u64_le(proposer);
    b.put_u64_le(id);
    b
}

/// Decodes an entry context.
pub fn decode_context(mut c: &[u8]) -> Option<(ServerId, u64)> {
    if c.len() != 16 {
        return None;
    }
    Some((c.get_u64_le(), c.get_u64_le()))
}

/// Answers a waiting proposer: through a channel to a waiting task, or
/// (client writes) straight into the client's connection.
pub enum Responder {
    Chan(oneshot::Sender<Response>),
    Conn(ConnReply),
}

impl From<oneshot::Sender<Response>> for Responder {
    fn from(tx: oneshot::Sender<Response>) -> Responder {
        Responder::Chan(tx)
    }
}

impl Responder {
    /// Delivers the answer.
    ///
    /// # Errors
    /// The answer, if nobody is listening any more.
    pub fn send(self, r: Response) -> Result<(), Response> {
        match self {
            Responder::Chan(tx) => tx.send(r),
            Responder::Conn(c) => c.send(r),
        }
    }

    /// True when the answer can no longer be delivered.
    pub fn is_closed(&self) -> bool {
        match self {
            Responder::Chan(tx) => tx.is_closed(),
            Responder::Conn(c) => c.out.is_closed(),
        }
    }

    /// True for a connection answer older than `timeout`: the raft loop
    /// answers it `Timeout` itself, as the connection task would have.
    pub fn expired(&self, timeout: std::time::Duration) -> bool {
        match self {
            Responder::Chan(_) => false,
            Responder::Conn(c) => c.start.elapsed() > timeout,
        }
    }
}

/// An answer written by the raft loop straight into the client's
/// connection (request id `id`), saving the wake-up of a task that would
/// only forward it. Dropped unanswered, it answers `ShuttingDown`, as a
/// dropped channel does.
pub struct ConnReply {
    pub id: u64,
    pub out: Arc<crate::sockout::SocketOut>,
    pub start: std::time::Instant,
    pub requests_total: prometheus_client::metrics::counter::Counter,
    pub request_seconds: prometheus_client::metrics::histogram::Histogram,
    pub answered: bool,
}

impl ConnReply {
    fn send(mut self, r: Response) -> Result<(), Response> {
        self.answered = true;
        self.deliver(&r);
        Ok(())
    }

    fn deliver(&self, r: &Response) {
        self.requests_total.inc();
        self.request_seconds
            .observe(self.start.elapsed().as_secs_f64());
        let mut b = bytes::BytesMut::new();
        if tokio_util::codec::Encoder::encode(
            &mut pikafs_proto::FrameCodec,
            r.to_frame(self.id),
            &mut b,
        )
        .is_ok()
        {
            // Dropped only if the client is gone or stopped reading.
            let _ = self.out.send(b.freeze());
        }
    }
}

impl Drop for ConnReply {
    fn drop(&mut self) {
        if !self.answered {
            self.deliver(&Response::error(
                ErrorCode::ShuttingDown,
                0,
                "server stopping",
            ));
        }
    }
}
/// What a linearizable reader gets once applied ≥ its read index: the store
/// to read, and the other voters (to repair a corrupt sector from).
#[derive(Clone)]
pub struct ReadGrant {
    pub store: Arc<ChunkStore>,
    pub peers: Vec<ServerId>,
}

/// Answers a waiting reader with a grant or an error response.
pub type ReadResponder = oneshot::Sender<Result<ReadGrant, Response>>;

/// An apply failure that must stop the server.
#[derive(Debug, thiserror::Error)]
#[error("copyset {copyset}: apply of entry {index} failed: {source}")]
pub struct ApplyError {
    pub copyset: CopysetId,
    pub index: u64,
    #[source]
    pub source: ChunkError,
}

/// One replica in the raft loop.
pub struct Group {
    pub id: CopysetId,
    pub node: RawNode<CopysetStorage>,
    pub store: Arc<ChunkStore>,
    pub pending: HashMap<u64, Responder>,
    pub reads: Vec<(u64, ReadResponder)>,
    /// A Ready holding a snapshot whose data is being fetched.
    pub parked: Option<raft::Ready>,
    /// Set when the parked snapshot's data is local.
    pub fetched: bool,
    /// Entries at or below this index were in the WAL at startup and may be
    /// re-applied over chunk data newer than its CRC file: skip edge checks.
    pub replay_until: u64,
    /// Until this deadline, this replica (the one CREATE designated) keeps
    /// re-campaigning while no leader is known: its first campaign is often
    /// lost because its peers have not created the group yet.
    pub campaign_until: Option<std::time::Instant>,
}

impl Group {
    /// True when this replica leads its copyset.
    pub fn is_leader(&self) -> bool {
        // A parked group must not be touched until its Ready is advanced.
        self.parked.is_none() && self.node.raft.state == StateRole::Leader
    }

    /// Current leader id, 0 if unknown.
    pub fn leader(&self) -> ServerId {
        self.node.raft.leader_id
    }

    /// Newest epoch known for `volume`.
    pub fn epoch_of(&self, volume: VolumeId) -> Epoch {
        self.node.store().epochs.get(&volume).copied().unwrap_or(0)
    }

    /// The "not leader" answer with the leader hint.
    pub fn not_leader(&self) -> Response {
        Response::error(ErrorCode::NotLeader, self.leader(), "not leader")
    }

    /// Fails every waiting proposer and reader with `resp`.
    pub fn fail_all(&mut self, resp: &Response) {
        for (_, r) in self.pending.drain() {
            let _ = r.send(resp.clone());
        }
        for (_, r) in self.reads.drain(..) {
            let _ = r.send(Err(resp.clone()));
        }
    }

    /// Answers readers whose read index is now applied.
    pub fn release_reads(&mut self) {
        let applied = self.node.store().applied;
        if self.reads.is_empty() {
            return;
        }
        let me = self.node.raft.id;
        let grant = ReadGrant {
            store: self.store.clone(),
            peers: self
                .node
                .store()
                .conf_state
                .voters
                .iter()
                .copied()
                .filter(|&v| v != me)
                .collect(),
        };
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(idx, _)| *idx <= applied);
        self.reads = wait;
        for (_, r) in ready {
            let _ = r.send(Ok(grant.clone()));
        }
    }

    /// Applies committed entries in order. Returns true when the
    /// configuration changed (the caller checkpoints).
    ///
    /// # Errors
    /// A chunk IO error: the caller must stop the server.
    pub fn apply(&mut self, me: ServerId, entries: Vec<Entry>) -> Result<bool, ApplyError> {
        let mut conf_changed = false;
        for e in entries {
            let index = e.index;
            if index <= self.node.store().applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryConfChange if !e.data.is_empty() => {
                    match ConfChange::parse_from_bytes(&e.data) {
                        Ok(cc) => {
                            let r = self.node.apply_conf_change(&cc);
                            self.conf_applied(r)
                        }
                        Err(err) => {
                            tracing::warn!(copyset = self.id, index, %err, "undecodable conf change")
                        }
                    }
                    conf_changed = true;
                }
                EntryType::EntryConfChangeV2 if !e.data.is_empty() => {
                    match ConfChangeV2::parse_from_bytes(&e.data) {
                        Ok(cc) => {
                            let r = self.node.apply_conf_change(&cc);
                            self.conf_applied(r)
                        }
                        Err(err) => {
                            tracing::warn!(copyset = self.id, index, %err, "undecodable conf change")
                        }
                    }
                    conf_changed = true;
                }
                EntryType::EntryNormal if !e.data.is_empty() => {
                    let resp = match Command::decode(e.data.clone()) {
                        Some(cmd) => self.apply_command(index, cmd)?,
                        None => {
                            tracing::warn!(copyset = self.id, index, "undecodable entry skipped");
                            Response::error(ErrorCode::Internal, 0, "undecodable entry")
                        }
                    };
                    if let Some((proposer, id)) = decode_context(&e.context) {
                        if proposer == me {
                            if let Some(r) = self.pending.remove(&id) {
                                let _ = r.send(resp);
                            }
                        }
                    }
                }
                _ => {}
            }
            let s = self.node.mut_store();
            s.applied = index;
            s.applied_term = e.term;
        }
        Ok(conf_changed)
    }

    /// Drops in-memory log entries nobody needs, keeping the memory of a
    /// replica bounded. Called every tick, independently of checkpoints: the
    /// WAL (truncated only after a checkpoint) is what restarts replay, the
    /// in-memory log only serves followers that lag.
    ///
    /// Keeps `retain_entries`/`retain_bytes` below `applied`; a leader also
    /// keeps what its recently active followers have not matched yet, up to
    /// `max_entries`/`max_bytes`. Beyond that a follower gets a snapshot.
    pub fn compact_log(&mut self, retain: (u64, u64), max: (u64, u64)) {
        if self.parked.is_some() {
            return;
        }
        let s = self.node.store();
        let mut to = s.compact_point(retain.0, retain.1);
        if self.node.raft.state == StateRole::Leader {
            let me = self.node.raft.id;
            for (id, p) in self.node.raft.prs().iter() {
                if *id != me && p.recent_active {
                    to = to.min(p.matched);
                }
            }
            to = to.max(s.compact_point(max.0, max.1));
        }
        self.node.mut_store().compact(to);
    }

    fn conf_applied(&mut self, r: raft::Result<raft::eraftpb::ConfState>) {
        match r {
            Ok(cs) => {
                tracing::info!(copyset = self.id, voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
                self.node.mut_store().conf_state = cs;
            }
            Err(err) => tracing::warn!(copyset = self.id, %err, "conf change rejected"),
        }
    }

    fn apply_command(&mut self, index: u64, cmd: Command) -> Result<Response, ApplyError> {
        let volume = cmd.volume();
        let epoch = cmd.epoch();
        let newest = self.epoch_of(volume);
        match cmd {
            Command::Fence { .. } => {
                if epoch > newest {
                    self.node.mut_store().epochs.insert(volume, epoch);
                }
                Ok(Response::Ok)
            }
            Command::Write {
                chunk,
                offset,
                data,
                ..
            } => self.apply_write(index, (volume, epoch, newest), chunk, &[(offset, data)]),
            Command::WriteV { chunk, extents, .. } => {
                self.apply_write(index, (volume, epoch, newest), chunk, &extents)
            }
        }
    }

    /// Applies the extents of one write command: all of them, or (stale
    /// epoch, an extent outside the chunk) none.
    fn apply_write(
        &mut self,
        index: u64,
        (volume, epoch, newest): (VolumeId, Epoch, Epoch),
        chunk: u64,
        extents: &[(u32, Bytes)],
    ) -> Result<Response, ApplyError> {
        if epoch < newest {
            return Ok(Response::error(
                ErrorCode::StaleEpoch,
                newest,
                format!("epoch {epoch} < {newest}"),
            ));
        }
        if extents
            .iter()
            .any(|(off, d)| crate::chunk::check_range(*off as u64, d.len() as u64).is_err())
        {
            return Ok(Response::error(
                ErrorCode::OutOfRange,
                0,
                "write outside the chunk",
            ));
        }
        if epoch > newest {
            self.node.mut_store().epochs.insert(volume, epoch);
        }
        let verify = index > self.replay_until;
        for (offset, data) in extents {
            match self
                .store
                .write(volume, chunk, *offset as u64, data, verify)
            {
                Ok(()) => {}
                // Checked above; kept so a mismatch cannot turn fatal.
                Err(ChunkError::OutOfRange { .. }) => {
                    return Ok(Response::error(
                        ErrorCode::OutOfRange,
                        0,
                        "write outside the chunk",
                    ))
                }
                Err(source) => {
                    return Err(ApplyError {
                        copyset: self.id,
                        index,
                        source,
                    })
                }
            }
        }
        Ok(Response::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_roundtrip_and_rejects_garbage() {
        for c in [
            Command::Write {
                volume: 1,
                epoch: 2,
                chunk: 3,
                offset: 4,
                data: Bytes::from_static(b"xyz"),
            },
            Command::Write {
                volume: 1,
                epoch: 2,
                chunk: 3,
                offset: 4,
                data: Bytes::new(),
            },
            Command::Fence {
                volume: 9,
                epoch: 10,
            },
            Command::WriteV {
                volume: 1,
                epoch: 2,
                chunk: 3,
                extents: vec![
                    (4096, Bytes::from_static(b"header")),
                    (0, Bytes::from_static(b"ring")),
                ],
            },
        ] {
            assert_eq!(Command::decode(Bytes::from(c.encode())), Some(c));
        }
        assert_eq!(Command::decode(Bytes::from_static(&[2, 1, 2])), None);
        assert_eq!(Command::decode(Bytes::from_static(&[7; 40])), None);
        assert_eq!(Command::decode(Bytes::new()), None);
        // WriteV whose counts and lengths lie about the entry's size.
        let good = Command::WriteV {
            volume: 1,
            epoch: 2,
            chunk: 3,
            extents: vec![(0, Bytes::from_static(b"abcd"))],
        }
        .encode();
        for cut in 0..good.len() {
            assert_eq!(Command::decode(Bytes::copy_from_slice(&good[..cut])), None);
        }
        let mut huge_count = good.clone();
        huge_count[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Command::decode(Bytes::from(huge_count)), None);
        let mut trailing = good;
        trailing.push(0);
        assert_eq!(Command::decode(Bytes::from(trailing)), None);
        assert_eq!(decode_context(&encode_context(4, 99)), Some((4, 99)));
        assert_eq!(decode_context(&[1, 2]), None);
    }
}
