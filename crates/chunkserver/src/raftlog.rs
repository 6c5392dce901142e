//! `raft::Storage` of one copyset: the in-memory log rebuilt from the WAL,
//! plus the applied state that snapshots are cut at.
//!
//! `MemStorage` reports snapshots at the *commit* index; ours must be at the
//! *applied* index, because the snapshot's data is "copy the leader's chunk
//! files", which hold exactly the applied writes (and possibly newer ones,
//! which is harmless, see the crate docs).

use std::collections::BTreeMap;

use pikafs_proto::{Epoch, ServerId, VolumeId};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Log, hard state and applied state of one copyset. Owned by the raft loop
/// (inside the `RawNode`), so no locking.
#[derive(Debug, Default)]
pub struct CopysetStorage {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    entries: Vec<Entry>,
    /// Index and term of the entry just before `entries[0]`.
    base_index: u64,
    base_term: u64,
    /// Highest index applied to the chunk store, and its term.
    pub applied: u64,
    pub applied_term: u64,
    /// Replicated state machine: newest epoch per volume, as of `applied`.
    pub epochs: BTreeMap<VolumeId, Epoch>,
    /// This server, written into snapshots as the server to copy from.
    pub me: ServerId,
}

/// Encodes snapshot data: the leader's id then the epoch map.
pub fn encode_snapshot_data(leader: ServerId, epochs: &BTreeMap<VolumeId, Epoch>) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + epochs.len() * 16);
    b.extend_from_slice(&leader.to_le_bytes());
    b.extend_from_slice(&(epochs.len() as u32).to_le_bytes());
    for (v, e) in epochs {
        b.extend_from_slice(&v.to_le_bytes());
        b.extend_from_slice(&e.to_le_bytes());
    }
    b
}

/// Decodes [`encode_snapshot_data`]; `None` if malformed.
pub fn decode_snapshot_data(d: &[u8]) -> Option<(ServerId, BTreeMap<VolumeId, Epoch>)> {
    let leader = u64::from_le_bytes(d.get(..8)?.try_into().ok()?);
    let n = u32::from_le_bytes(d.get(8..12)?.try_into().ok()?) as usize;
    let rest = d.get(12..)?;
    if rest.len() != n.checked_mul(16)? {
        return None;
    }
    let epochs = rest
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            )
        })
        .collect();
    Some((leader, epochs))
}

impl CopysetStorage {
    /// A storage whose log starts after `(index, term)` (a bootstrap point,
    /// a checkpoint or an installed snapshot).
    pub fn new(me: ServerId, index: u64, term: u64, conf_state: ConfState) -> CopysetStorage {
        let mut hard_state = HardState::default();
        hard_state.term = term;
        hard_state.commit = index;
        CopysetStorage {
            hard_state,
            conf_state,
            base_index: index,
            base_term: term,
            applied: index,
            applied_term: term,
            me,
            ..Default::default()
        }
    }

    /// First index held in the log.
    pub fn first(&self) -> u64 {
        self.base_index + 1
    }

    /// Last index held (or the base).
    pub fn last(&self) -> u64 {
        self.entries.last().map_or(self.base_index, |e| e.index)
    }

    /// Appends entries, replacing any conflicting tail. Entries at or below
    /// the base are dropped (they are already covered by it).
    pub fn append(&mut self, ents: &[Entry]) {
        let ents: Vec<&Entry> = ents.iter().filter(|e| e.index > self.base_index).collect();
        let Some(first) = ents.first().map(|e| e.index) else {
            return;
        };
        if first > self.last() + 1 {
            // A gap cannot come from raft; keep the log contiguous by
            // dropping what we have (raft will resend or snapshot).
            tracing::warn!(
                first,
                last = self.last(),
                "raft log gap; resetting log tail"
            );
            self.entries.clear();
            self.base_index = first - 1;
            self.base_term = 0;
        }
        let keep = (first - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(ents.into_iter().cloned());
    }

    /// Resets the log to an installed snapshot.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.base_index = meta.index;
        self.base_term = meta.term;
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.applied = meta.index;
        self.applied_term = meta.term;
    }

    /// Drops entries up to and including `index` (bounded by `applied`).
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.applied).min(self.last());
        if index <= self.base_index {
            return;
        }
        let term = self.term_of(index).unwrap_or(0);
        let n = (index - self.base_index) as usize;
        self.entries.drain(..n);
        self.base_index = index;
        self.base_term = term;
    }

    /// Where to compact so that at most `max_entries` entries and about
    /// `max_bytes` of entry data stay at or below `applied` (for followers
    /// that lag a little; beyond that they get a snapshot).
    pub fn compact_point(&self, max_entries: u64, max_bytes: u64) -> u64 {
        let top = self.applied.min(self.last());
        let mut bytes = 0u64;
        let mut idx = top;
        while idx > self.base_index && top - idx < max_entries {
            let e = &self.entries[(idx - self.first()) as usize];
            bytes += e.data.len() as u64;
            if bytes > max_bytes {
                break;
            }
            idx -= 1;
        }
        idx
    }

    fn term_of(&self, idx: u64) -> Result<u64, StorageError> {
        if idx == self.base_index {
            return Ok(self.base_term);
        }
        if idx < self.base_index {
            return Err(StorageError::Compacted);
        }
        self.entries
            .get((idx - self.first()) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    /// Number of entries held in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entries are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl raft::Storage for CopysetStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.base_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx).map_err(raft::Error::Store)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut snap = Snapshot::default();
        snap.data = encode_snapshot_data(self.me, &self.epochs).into();
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = self.applied_term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn ent(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e
    }

    #[test]
    fn compact_point_bounds_bytes() {
        let mut s = CopysetStorage::new(1, 0, 1, ConfState::default());
        let ents: Vec<Entry> = (1..=10)
            .map(|i| {
                let mut e = ent(i, 1);
                e.data = vec![0u8; 100].into();
                e
            })
            .collect();
        s.append(&ents);
        s.applied = 8;
        // 250 bytes keep entries 7 and 8 (200 bytes); 6 would exceed.
        assert_eq!(s.compact_point(100, 250), 6);
        assert_eq!(s.compact_point(3, 1 << 20), 5);
        s.compact(s.compact_point(100, 250));
        assert_eq!((s.first(), s.last()), (7, 10));
    }

    #[test]
    fn append_overwrite_compact_and_snapshot_at_applied() {
        let mut s = CopysetStorage::new(1, 5, 5, ConfState::from((vec![1, 2, 3], vec![])));
        s.append(&[ent(6, 5), ent(7, 5), ent(8, 5)]);
        s.append(&[ent(7, 6)]);
        assert_eq!((s.first(), s.last()), (6, 7));
        assert_eq!(s.term(7).unwrap(), 6);
        assert_eq!(s.term(5).unwrap(), 5);
        assert!(s.term(4).is_err());
        s.applied = 7;
        s.applied_term = 6;
        s.epochs.insert(3, 9);
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_metadata().term, 6);
        let (leader, epochs) = decode_snapshot_data(&snap.data).unwrap();
        assert_eq!((leader, epochs.get(&3)), (1, Some(&9)));
        assert_eq!(s.compact_point(100, 1 << 20), 5);
        assert_eq!(s.compact_point(1, 1 << 20), 6);
        s.compact(6);
        assert_eq!(s.first(), 7);
        assert_eq!(s.term(6).unwrap(), 5);
        assert!(s
            .entries(6, 8, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(
            s.entries(7, 8, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            1
        );
    }
}
