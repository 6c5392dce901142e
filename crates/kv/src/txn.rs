//! The transaction overlay every command runs against.
//!
//! A [`Txn`] reads a consistent view (a RocksDB snapshot on RW; on RO the
//! shared catch-up lock, so no catch-up lands mid-read) with its own pending
//! puts and deletes laid over it; iteration merges the overlay with a DB
//! iterator. [`Txn::commit`] turns the overlay into one `WriteBatch`, so a
//! command, or a whole MULTI/EXEC, is atomic. Write transactions hold the
//! engine's write lock from creation to commit or drop.
//!
//! Data types use the typed helpers (`get_meta_typed`, `put_meta`,
//! `get_sub`, `put_sub`, `scan_subs`, ...); keys are user keys and the
//! txn's selected db is applied here.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::{MutexGuard, RwLockReadGuard};
use rocksdb::{ErrorKind, ReadOptions, ReadTier, SnapshotWithThreadMode, WriteBatch, DB};

use crate::encoding::{self, meta_key, prefix_end, sub_key, sub_prefix, KeyType, Meta};
use crate::engine::{now_ms, Engine, Role, Touch};
use crate::error::{CmdError, KvError};

/// Which column family an overlay entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    Meta,
    Data,
}

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
type OverlayIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;

/// `(key or member, value)` rows returned by scans.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A captured overlay state ([`Txn::savepoint`]).
pub struct Savepoint {
    meta: Overlay,
    data: Overlay,
    ranges: usize,
    touched: usize,
}

/// A cheap rollback point ([`Txn::mark`]): positions in the undo log and
/// in the range and touch lists.
pub struct Mark {
    undo: usize,
    ranges: usize,
    touched: usize,
}

/// An overlay entry's state before a write: `(space, key, previous)`,
/// `previous = None` when the key was not in the overlay.
type Undo = (Space, Vec<u8>, Option<Option<Vec<u8>>>);

/// One command's (or one EXEC's) view and pending writes.
pub struct Txn<'e> {
    eng: &'e Engine,
    /// The selected db (SELECT); commands address keys in it.
    pub db: u8,
    snap: Option<SnapshotWithThreadMode<'e, DB>>,
    _read_guard: Option<RwLockReadGuard<'e, ()>>,
    write_guard: Option<MutexGuard<'e, ()>>,
    meta: Overlay,
    data: Overlay,
    /// Range deletions (FLUSHDB/FLUSHALL), applied before the overlay.
    ranges: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
    touched: Vec<Touch>,
    /// Set by the first [`Txn::mark`]: every later overlay write logs the
    /// entry it replaced, so a failed command in a pipelined group can be
    /// undone without copying the overlay.
    undo: Option<Vec<Undo>>,
    now: u64,
    /// Point reads reuse one ReadOptions (creating one is an FFI
    /// allocation per read otherwise).
    get_opts: ReadOptions,
    /// Memory-only reads ([`Txn::new_read_in_memory`]): RocksDB answers
    /// `Incomplete` instead of reading the disk.
    in_memory: bool,
    /// Set when a memory-only read needed the disk: the caller must rerun
    /// the command(s) on a normal txn; this txn's replies are void.
    needs_io: Cell<bool>,
}

fn read_options(snap: Option<&SnapshotWithThreadMode<'_, DB>>, in_memory: bool) -> ReadOptions {
    let mut ro = ReadOptions::default();
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    if in_memory {
        ro.set_read_tier(ReadTier::BlockCache);
    }
    ro
}

impl<'e> Txn<'e> {
    pub(crate) fn new_read(eng: &'e Engine, db: u8) -> Txn<'e> {
        let (snap, guard) = match eng.role() {
            Role::Rw => (Some(eng.db().snapshot()), None),
            Role::Ro => (None, Some(eng.catch_up_lock.read())),
        };
        Txn::read_with(eng, db, snap, guard, false)
    }

    /// A read txn that never waits: `None` on RO while a catch-up holds
    /// the lock; its reads are served from memtables and the block cache
    /// only, and a read that would need the disk fails and sets
    /// [`Txn::needs_io`]. For running cheap reads on an async worker.
    pub(crate) fn new_read_in_memory(eng: &'e Engine, db: u8) -> Option<Txn<'e>> {
        let (snap, guard) = match eng.role() {
            Role::Rw => (Some(eng.db().snapshot()), None),
            Role::Ro => (None, Some(eng.catch_up_lock.try_read()?)),
        };
        Some(Txn::read_with(eng, db, snap, guard, true))
    }

    fn read_with(
        eng: &'e Engine,
        db: u8,
        snap: Option<SnapshotWithThreadMode<'e, DB>>,
        guard: Option<RwLockReadGuard<'e, ()>>,
        in_memory: bool,
    ) -> Txn<'e> {
        // The options hold a raw pointer to the snapshot, which RocksDB
        // owns and which lives as long as `snap` (dropped with the txn).
        let get_opts = read_options(snap.as_ref(), in_memory);
        Txn {
            eng,
            db,
            snap,
            _read_guard: guard,
            write_guard: None,
            meta: Overlay::new(),
            data: Overlay::new(),
            ranges: Vec::new(),
            touched: Vec::new(),
            undo: None,
            now: now_ms(),
            get_opts,
            in_memory,
            needs_io: Cell::new(false),
        }
    }

    /// A memory-only txn ([`Txn::new_read_in_memory`]) hit a read that
    /// needs the disk: discard what it answered and rerun normally.
    pub fn needs_io(&self) -> bool {
        self.needs_io.get()
    }

    /// Notes a memory-only read that needed the disk.
    fn check_io(&self, e: rocksdb::Error) -> CmdError {
        if self.in_memory && e.kind() == ErrorKind::Incomplete {
            self.needs_io.set(true);
        }
        e.into()
    }

    pub(crate) fn new_write(eng: &'e Engine, db: u8) -> Txn<'e> {
        let guard = eng.write_lock.lock();
        Txn::write_with(eng, db, guard, false)
    }

    /// See [`Engine::write_txn_in_memory`].
    pub(crate) fn new_write_in_memory(eng: &'e Engine, db: u8) -> Option<Txn<'e>> {
        let guard = eng
            .write_lock
            .try_lock_for(crate::engine::INLINE_LOCK_WAIT)?;
        Some(Txn::write_with(eng, db, guard, true))
    }

    fn write_with(eng: &'e Engine, db: u8, guard: MutexGuard<'e, ()>, in_memory: bool) -> Txn<'e> {
        // Under the write lock nothing else writes: reading the live DB is
        // reading a consistent point.
        Txn {
            eng,
            db,
            snap: None,
            _read_guard: None,
            write_guard: Some(guard),
            meta: Overlay::new(),
            data: Overlay::new(),
            ranges: Vec::new(),
            touched: Vec::new(),
            undo: None,
            now: now_ms(),
            get_opts: read_options(None, in_memory),
            in_memory,
            needs_io: Cell::new(false),
        }
    }

    /// Whether this txn reads memory only (and commits without stalling).
    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    pub fn engine(&self) -> &'e Engine {
        self.eng
    }

    /// Whether this txn may write (holds the write lock).
    pub fn is_writable(&self) -> bool {
        self.write_guard.is_some()
    }

    /// The command's clock, fixed at txn start so one command judges expiry
    /// consistently (Redis does the same per command).
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    fn read_opts(&self) -> ReadOptions {
        read_options(self.snap.as_ref(), self.in_memory)
    }

    fn overlay(&self, space: Space) -> &Overlay {
        match space {
            Space::Meta => &self.meta,
            Space::Data => &self.data,
        }
    }

    fn cf(&self, space: Space) -> &'e rocksdb::ColumnFamily {
        match space {
            Space::Meta => self.eng.meta_cf(),
            Space::Data => self.eng.data_cf(),
        }
    }

    fn range_deleted(&self, space: Space, k: &[u8]) -> bool {
        self.ranges.iter().any(|(s, from, to)| {
            *s == space && k >= from.as_slice() && to.as_ref().is_none_or(|t| k < t.as_slice())
        })
    }

    /// Raw get of an encoded key.
    ///
    /// # Errors
    /// RocksDB read failure.
    pub fn get_raw(&self, space: Space, k: &[u8]) -> Result<Option<Vec<u8>>, CmdError> {
        if let Some(v) = self.overlay(space).get(k) {
            return Ok(v.clone());
        }
        if self.range_deleted(space, k) {
            return Ok(None);
        }
        self.eng
            .db()
            .get_cf_opt(self.cf(space), k, &self.get_opts)
            .map_err(|e| self.check_io(e))
    }

    /// Raw put of an encoded key into the overlay.
    pub fn put_raw(&mut self, space: Space, k: Vec<u8>, v: Vec<u8>) {
        self.set_overlay(space, k, Some(v));
    }

    pub fn delete_raw(&mut self, space: Space, k: Vec<u8>) {
        self.set_overlay(space, k, None);
    }

    fn set_overlay(&mut self, space: Space, k: Vec<u8>, v: Option<Vec<u8>>) {
        self.assert_writable();
        let ov = match space {
            Space::Meta => &mut self.meta,
            Space::Data => &mut self.data,
        };
        match self.undo.as_mut() {
            Some(undo) => {
                let prev = ov.insert(k.clone(), v);
                undo.push((space, k, prev));
            }
            None => {
                ov.insert(k, v);
            }
        }
    }

    fn assert_writable(&self) {
        assert!(
            self.write_guard.is_some(),
            "write on a read txn: the command table must flag the command as a write"
        );
    }

    /// Entries with `lower <= key < upper` (`upper = None`: unbounded),
    /// overlay merged over the DB, at most `limit`, in key order (or reverse
    /// order when `reverse`).
    ///
    /// # Errors
    /// RocksDB read failure.
    pub fn scan_raw(
        &self,
        space: Space,
        lower: &[u8],
        upper: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Rows, CmdError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let ov = self.overlay(space);
        let hi = upper.map_or(Bound::Unbounded, Bound::Excluded);
        let range = ov.range::<[u8], _>((Bound::Included(lower), hi));
        let mut ov_iter: OverlayIter<'_> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut ov_next = ov_iter.next();
        let mut ro = self.read_opts();
        ro.set_iterate_lower_bound(lower.to_vec());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u.to_vec());
        }
        let mut it = self.eng.db().raw_iterator_cf_opt(self.cf(space), ro);
        if reverse {
            it.seek_to_last();
        } else {
            it.seek(lower);
        }
        // The iterator side in order; overlay wins ties; deletes hide.
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        while out.len() < limit {
            let db_key = if it.valid() { it.key() } else { None };
            let take_overlay = match (db_key, &ov_next) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(dk), Some((ok, _))) => !before(dk, ok.as_slice()),
            };
            if take_overlay {
                let (ok, ov_val) = ov_next.expect("checked above");
                if db_key == Some(ok.as_slice()) {
                    advance(&mut it, reverse);
                }
                if let Some(v) = ov_val {
                    out.push((ok.clone(), v.clone()));
                }
                ov_next = ov_iter.next();
            } else {
                let dk = db_key.expect("checked above");
                if !self.range_deleted(space, dk) {
                    let v = it.value().unwrap_or_default().to_vec();
                    out.push((dk.to_vec(), v));
                }
                advance(&mut it, reverse);
            }
        }
        it.status().map_err(|e| self.check_io(e))?;
        Ok(out)
    }

    // ---- typed helpers for data types ----

    /// The live metadata record of `key`, or `None` when absent or expired
    /// (lazy expiry: the active expirer or the next write removes it).
    ///
    /// # Errors
    /// RocksDB failure or a corrupt record.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Meta>, CmdError> {
        let Some(raw) = self.get_raw(Space::Meta, &meta_key(self.db, key))? else {
            return Ok(None);
        };
        let m = Meta::decode(&raw)?;
        if m.is_expired(self.now) {
            return Ok(None);
        }
        Ok(Some(m))
    }

    /// Like [`Txn::get_meta`] but `WRONGTYPE` unless the key is `kind`.
    ///
    /// # Errors
    /// `WrongType`, RocksDB failure or a corrupt record.
    pub fn get_meta_typed(&self, key: &[u8], kind: KeyType) -> Result<Option<Meta>, CmdError> {
        match self.get_meta(key)? {
            Some(m) if m.kind != kind => Err(CmdError::WrongType),
            other => Ok(other),
        }
    }

    /// The collection's record, or a fresh empty one with a new version
    /// (not yet written) when the key is absent.
    ///
    /// # Errors
    /// As [`Txn::get_meta_typed`].
    pub fn get_or_new_collection(&self, key: &[u8], kind: KeyType) -> Result<Meta, CmdError> {
        Ok(match self.get_meta_typed(key, kind)? {
            Some(m) => m,
            None => Meta::collection(kind, self.eng.next_version()),
        })
    }

    /// Writes `key`'s metadata record (replacing any value of any type:
    /// members of a replaced collection become stale and are reclaimed by
    /// the compaction filter).
    pub fn put_meta(&mut self, key: &[u8], m: &Meta) {
        self.put_raw(Space::Meta, meta_key(self.db, key), m.encode());
        self.touch(key);
    }

    /// Deletes `key` of any type in O(1): drops the metadata record.
    pub fn delete_key(&mut self, key: &[u8]) {
        self.delete_raw(Space::Meta, meta_key(self.db, key));
        self.touch(key);
    }

    /// Writes a collection whose size changed: deletes the key when it
    /// became empty (Redis removes empty collections).
    pub fn put_or_delete_collection(&mut self, key: &[u8], m: &Meta) {
        if m.size == 0 {
            self.delete_key(key);
        } else {
            self.put_meta(key, m);
        }
    }

    /// # Errors
    /// RocksDB failure.
    pub fn get_sub(
        &self,
        key: &[u8],
        version: u64,
        member: &[u8],
    ) -> Result<Option<Vec<u8>>, CmdError> {
        self.get_raw(Space::Data, &sub_key(self.db, key, version, member))
    }

    pub fn put_sub(&mut self, key: &[u8], version: u64, member: &[u8], value: Vec<u8>) {
        self.put_raw(Space::Data, sub_key(self.db, key, version, member), value);
        self.touch(key);
    }

    pub fn delete_sub(&mut self, key: &[u8], version: u64, member: &[u8]) {
        self.delete_raw(Space::Data, sub_key(self.db, key, version, member));
        self.touch(key);
    }

    /// Members of one collection generation, `(member, value)`, starting at
    /// member `from` (inclusive; reverse: at most `from`, pass `None` for
    /// the end), at most `limit`.
    ///
    /// # Errors
    /// RocksDB failure.
    pub fn scan_subs(
        &self,
        key: &[u8],
        version: u64,
        from: Option<&[u8]>,
        limit: usize,
        reverse: bool,
    ) -> Result<Rows, CmdError> {
        let prefix = sub_prefix(self.db, key, version);
        let end = prefix_end(&prefix);
        let (lower, upper) = match (from, reverse) {
            (None, _) => (prefix.clone(), end),
            (Some(f), false) => {
                let mut l = prefix.clone();
                l.extend_from_slice(f);
                (l, end)
            }
            (Some(f), true) => {
                // Inclusive upper bound on `from`: exclusive at from + 0x00.
                let mut u = prefix.clone();
                u.extend_from_slice(f);
                u.push(0);
                (prefix.clone(), Some(u))
            }
        };
        let rows = self.scan_raw(Space::Data, &lower, upper.as_deref(), limit, reverse)?;
        let n = prefix.len();
        Ok(rows
            .into_iter()
            .map(|(k, v)| (k[n..].to_vec(), v))
            .collect())
    }

    /// Records that `key` changed (WATCH, blocking wake-ups). Called by the
    /// typed writers; call it yourself after raw writes.
    pub fn touch(&mut self, key: &[u8]) {
        let t = Touch::Key(self.db, key.to_vec());
        if self.touched.last() != Some(&t) {
            self.touched.push(t);
        }
    }

    /// Deletes every key of db `db` (FLUSHDB), or of all dbs.
    pub fn flush(&mut self, db: Option<u8>) {
        self.assert_writable();
        let (from, to) = match db {
            Some(d) => (vec![d], Some(vec![d + 1])),
            None => (Vec::new(), None),
        };
        for space in [Space::Meta, Space::Data] {
            let ov = match space {
                Space::Meta => &mut self.meta,
                Space::Data => &mut self.data,
            };
            let gone: Vec<Vec<u8>> = ov
                .keys()
                .filter(|k| *k >= &from && to.as_ref().is_none_or(|t| *k < t))
                .cloned()
                .collect();
            for k in gone {
                let prev = ov.remove(&k);
                if let Some(undo) = self.undo.as_mut() {
                    undo.push((space, k, prev));
                }
            }
            self.ranges.push((space, from.clone(), to.clone()));
        }
        self.touched.push(match db {
            Some(d) => Touch::Db(d),
            None => Touch::All,
        });
    }

    /// Captures the overlay so a failed command inside EXEC can be undone.
    /// Costs a copy of the pending writes: transactions are small.
    pub fn savepoint(&self) -> Savepoint {
        Savepoint {
            meta: self.meta.clone(),
            data: self.data.clone(),
            ranges: self.ranges.len(),
            touched: self.touched.len(),
        }
    }

    /// Restores the overlay captured by [`Txn::savepoint`].
    pub fn rollback_to(&mut self, s: Savepoint) {
        self.meta = s.meta;
        self.data = s.data;
        self.ranges.truncate(s.ranges);
        self.touched.truncate(s.touched);
    }

    /// A rollback point for [`Txn::rollback_to_mark`]. Unlike
    /// [`Txn::savepoint`] it copies nothing: from the first mark on, each
    /// overlay write logs what it replaced (the pipelined write groups use
    /// this, one mark per command).
    pub fn mark(&mut self) -> Mark {
        let undo = self.undo.get_or_insert_with(Vec::new).len();
        Mark {
            undo,
            ranges: self.ranges.len(),
            touched: self.touched.len(),
        }
    }

    /// Undoes every overlay write, range deletion and touch since `m`.
    pub fn rollback_to_mark(&mut self, m: Mark) {
        if let Some(undo) = self.undo.as_mut() {
            while undo.len() > m.undo {
                let Some((space, k, prev)) = undo.pop() else {
                    break;
                };
                let ov = match space {
                    Space::Meta => &mut self.meta,
                    Space::Data => &mut self.data,
                };
                match prev {
                    Some(p) => {
                        ov.insert(k, p);
                    }
                    None => {
                        ov.remove(&k);
                    }
                }
            }
        }
        self.ranges.truncate(m.ranges);
        self.touched.truncate(m.touched);
    }

    /// Whether the overlay holds anything to write.
    pub fn is_dirty(&self) -> bool {
        !self.meta.is_empty() || !self.data.is_empty() || !self.ranges.is_empty()
    }

    /// Writes the overlay as one WriteBatch (unsynced) and releases the
    /// write lock. Returns the batch's sequence number, `None` if nothing
    /// was written.
    ///
    /// # Errors
    /// RocksDB refused the write, or the WAL is sticky-failed.
    pub fn commit(mut self) -> Result<Option<u64>, KvError> {
        if !self.is_dirty() {
            return Ok(None);
        }
        let meta_cf = self.eng.meta_cf();
        let data_cf = self.eng.data_cf();
        let mut b = WriteBatch::default();
        for (space, from, to) in &self.ranges {
            let cf = if *space == Space::Meta {
                meta_cf
            } else {
                data_cf
            };
            // An unbounded end: every key starts with a db byte < 0xff.
            let to = to.clone().unwrap_or_else(|| vec![0xff; 2]);
            b.delete_range_cf(cf, from, &to);
        }
        for (k, v) in std::mem::take(&mut self.meta) {
            match v {
                Some(v) => b.put_cf(meta_cf, k, v),
                None => b.delete_cf(meta_cf, k),
            }
        }
        for (k, v) in std::mem::take(&mut self.data) {
            match v {
                Some(v) => b.put_cf(data_cf, k, v),
                None => b.delete_cf(data_cf, k),
            }
        }
        let touched = std::mem::take(&mut self.touched);
        let seq = self.eng.write_batch(b, &touched, self.in_memory)?;
        Ok(Some(seq))
    }
}

fn advance(it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, DB>, reverse: bool) {
    if reverse {
        it.prev()
    } else {
        it.next()
    }
}

/// Decodes a meta-CF row into `(user key, meta)` for key scans.
pub fn decode_meta_row(k: &[u8], v: &[u8]) -> Result<(Vec<u8>, Meta), CmdError> {
    let (_, key) = encoding::split_meta_key(k).ok_or(crate::error::DecodeError::Truncated)?;
    Ok((key.to_vec(), Meta::decode(v)?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::{EngineConfig, Role};
    use crate::wal::FsyncPolicy;
    use std::collections::BTreeMap;

    pub(crate) fn engine(dir: &std::path::Path) -> std::sync::Arc<Engine> {
        Engine::open(EngineConfig {
            path: dir.to_path_buf(),
            role: Role::Rw,
            secondary_path: None,
            memory_bytes: 32 << 20,
            env: None,
            fsync: FsyncPolicy::Always,
            group_commit: Default::default(),
        })
        .unwrap()
    }

    /// Leaves `cold` in an SST only: the next `engine()` on `dir` starts
    /// with an empty memtable and block cache.
    fn write_cold_record(dir: &std::path::Path) {
        let eng = engine(dir);
        let mut t = eng.write_txn(0);
        t.put_meta(b"cold", &Meta::string(b"on disk".to_vec(), 0));
        t.commit().unwrap();
        eng.db().flush_cf(eng.meta_cf()).unwrap();
    }

    #[test]
    fn memory_only_reads_flag_disk_reads_and_never_wait_for_a_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        write_cold_record(dir.path());
        // Reopened with a fresh block cache: the record is only on disk.
        let eng = engine(dir.path());
        let t = Txn::new_read_in_memory(&eng, 0).expect("RW never waits");
        assert!(t.get_meta(b"cold").is_err(), "a disk read is refused");
        assert!(t.needs_io(), "and flagged for a rerun");
        drop(t);
        let t = eng.read_txn(0);
        assert_eq!(t.get_meta(b"cold").unwrap().unwrap().payload, b"on disk");
        drop(t);
        // Now the block is cached, and memtable rows never need the disk.
        let mut w = eng.write_txn(0);
        w.put_meta(b"hot", &Meta::string(b"in memtable".to_vec(), 0));
        w.commit().unwrap();
        let t = Txn::new_read_in_memory(&eng, 0).unwrap();
        assert_eq!(t.get_meta(b"cold").unwrap().unwrap().payload, b"on disk");
        assert_eq!(t.get_meta(b"hot").unwrap().unwrap().payload, b"in memtable");
        assert!(t.get_meta(b"absent").unwrap().is_none());
        assert!(!t.needs_io());
        drop(t);

        // RO: a catch-up in progress makes a memory-only txn unavailable
        // instead of blocking the caller (an async worker).
        let sec = tempfile::tempdir().unwrap();
        let ro = Engine::open(EngineConfig {
            path: dir.path().to_path_buf(),
            role: Role::Ro,
            secondary_path: Some(sec.path().to_path_buf()),
            memory_bytes: 32 << 20,
            env: None,
            fsync: FsyncPolicy::Always,
            group_commit: Default::default(),
        })
        .unwrap();
        let held = ro.catch_up_lock.write();
        assert!(Txn::new_read_in_memory(&ro, 0).is_none());
        drop(held);
        let t = Txn::new_read_in_memory(&ro, 0).expect("no catch-up running");
        assert_eq!(t.get_meta(b"hot").unwrap().unwrap().payload, b"in memtable");
    }

    #[test]
    fn memory_only_writes_flag_disk_reads_commit_otherwise_and_never_wait_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        write_cold_record(dir.path());
        let eng = engine(dir.path());
        // A read-modify-write over a record only on disk: flagged, and
        // nothing of the txn is written when it is dropped.
        let mut t = eng.write_txn_in_memory(0).expect("the lock is free");
        assert!(t.is_in_memory());
        t.put_meta(b"side", &Meta::string(b"effect".to_vec(), 0));
        assert!(t.get_meta(b"cold").is_err(), "a disk read is refused");
        assert!(t.needs_io());
        drop(t);
        let r = eng.read_txn(0);
        assert!(
            r.get_meta(b"side").unwrap().is_none(),
            "dropped, not written"
        );
        assert_eq!(r.get_meta(b"cold").unwrap().unwrap().payload, b"on disk");
        drop(r);

        // Blind and memtable-only writes commit like a normal write txn.
        let mut t = eng.write_txn_in_memory(0).unwrap();
        t.put_meta(b"hot", &Meta::string(b"1".to_vec(), 0));
        let seq = t.commit().unwrap().expect("a write has a sequence");
        assert_eq!(seq, eng.applied_sequence());
        let mut t = eng.write_txn_in_memory(0).unwrap();
        assert_eq!(t.get_meta(b"hot").unwrap().unwrap().payload, b"1");
        t.put_meta(b"hot", &Meta::string(b"2".to_vec(), 0));
        t.commit().unwrap();
        assert_eq!(
            eng.read_txn(0).get_meta(b"hot").unwrap().unwrap().payload,
            b"2"
        );

        // A writer holding the lock (a slow command on a blocking thread)
        // makes the memory-only txn unavailable instead of blocking.
        let held = eng.write_txn(0);
        let started = std::time::Instant::now();
        assert!(eng.write_txn_in_memory(0).is_none());
        assert!(started.elapsed() >= crate::engine::INLINE_LOCK_WAIT);
        drop(held);
        assert!(eng.write_txn_in_memory(0).is_some());
    }

    #[test]
    fn rollback_to_mark_undoes_exactly_the_writes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        let mut t = eng.write_txn(0);
        t.put_meta(b"db-row", &Meta::string(b"committed".to_vec(), 0));
        t.commit().unwrap();

        let mut t = eng.write_txn(0);
        let m0 = t.mark();
        t.put_meta(b"a", &Meta::string(b"1".to_vec(), 0));
        let m1 = t.mark();
        // Overwrite, delete a DB row, add: all after m1.
        t.put_meta(b"a", &Meta::string(b"2".to_vec(), 0));
        t.delete_key(b"db-row");
        t.put_meta(b"b", &Meta::string(b"x".to_vec(), 0));
        t.flush(Some(1));
        t.rollback_to_mark(m1);
        let val = |t: &Txn<'_>, k: &[u8]| t.get_meta(k).unwrap().map(|m| m.payload);
        assert_eq!(val(&t, b"a"), Some(b"1".to_vec()));
        assert_eq!(val(&t, b"db-row"), Some(b"committed".to_vec()));
        assert_eq!(val(&t, b"b"), None);
        assert!(t.ranges.is_empty(), "the FLUSHDB range is undone");
        assert_eq!(t.touched, vec![Touch::Key(0, b"a".to_vec())]);
        // A mark taken after a rollback still works, then everything goes.
        t.put_meta(b"c", &Meta::string(b"3".to_vec(), 0));
        t.rollback_to_mark(m0);
        assert!(!t.is_dirty());
        assert!(t.touched.is_empty());
        // What is left commits as usual.
        t.put_meta(b"d", &Meta::string(b"4".to_vec(), 0));
        assert!(t.commit().unwrap().is_some());
        let r = eng.read_txn(0);
        assert_eq!(val(&r, b"d"), Some(b"4".to_vec()));
        assert_eq!(val(&r, b"a"), None);
        assert_eq!(val(&r, b"db-row"), Some(b"committed".to_vec()));
    }

    #[test]
    fn overlay_merges_with_db_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        // Model: what the merged view must show.
        let mut model = BTreeMap::new();
        let mut t = eng.write_txn(0);
        for i in 0..20u8 {
            if i % 2 == 0 {
                t.put_raw(Space::Data, vec![b'k', i], vec![i]);
                model.insert(vec![b'k', i], vec![i]);
            }
        }
        t.commit().unwrap();
        let mut t = eng.write_txn(0);
        for i in 0..20u8 {
            match i % 4 {
                0 => {
                    t.delete_raw(Space::Data, vec![b'k', i]);
                    model.remove(&vec![b'k', i]);
                }
                1 | 2 => {
                    t.put_raw(Space::Data, vec![b'k', i], vec![100 + i]);
                    model.insert(vec![b'k', i], vec![100 + i]);
                }
                _ => {}
            }
        }
        let want: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(
            t.scan_raw(Space::Data, b"k", Some(b"l"), 1000, false)
                .unwrap(),
            want
        );
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(
            t.scan_raw(Space::Data, b"k", Some(b"l"), 1000, true)
                .unwrap(),
            rev
        );
        // Limits and bounds.
        assert_eq!(
            t.scan_raw(Space::Data, &[b'k', 5], Some(&[b'k', 11]), 3, false)
                .unwrap(),
            want.iter()
                .filter(|(k, _)| k[1] >= 5)
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
        );
        // After commit the DB alone shows the same.
        t.commit().unwrap();
        let r = eng.read_txn(0);
        assert_eq!(
            r.scan_raw(Space::Data, b"k", Some(b"l"), 1000, false)
                .unwrap(),
            want
        );
    }

    #[test]
    fn flush_in_txn_hides_db_rows_and_keeps_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        let mut t = eng.write_txn(0);
        t.put_meta(b"a", &Meta::string(b"1".to_vec(), 0));
        t.commit().unwrap();
        let mut t = eng.write_txn(1);
        t.put_meta(b"other-db", &Meta::string(b"x".to_vec(), 0));
        t.commit().unwrap();
        let mut t = eng.write_txn(0);
        t.flush(Some(0));
        assert_eq!(t.get_meta(b"a").unwrap(), None);
        t.put_meta(b"b", &Meta::string(b"2".to_vec(), 0));
        t.commit().unwrap();
        let r = eng.read_txn(0);
        assert_eq!(r.get_meta(b"a").unwrap(), None);
        assert!(r.get_meta(b"b").unwrap().is_some());
        assert!(eng.read_txn(1).get_meta(b"other-db").unwrap().is_some());
    }

    #[test]
    fn read_txn_sees_a_snapshot_and_expired_keys_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        let r = eng.read_txn(0);
        let mut t = eng.write_txn(0);
        t.put_meta(b"k", &Meta::string(b"v".to_vec(), 0));
        t.put_meta(b"gone", &Meta::string(b"v".to_vec(), 1));
        t.commit().unwrap();
        assert_eq!(
            r.get_meta(b"k").unwrap(),
            None,
            "snapshot predates the write"
        );
        let r2 = eng.read_txn(0);
        assert!(r2.get_meta(b"k").unwrap().is_some());
        assert_eq!(r2.get_meta(b"gone").unwrap(), None);
    }

    #[test]
    fn scan_subs_handles_reverse_from() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        let mut t = eng.write_txn(0);
        for m in [b"a", b"b", b"c"] {
            t.put_sub(b"h", 7, m, m.to_vec());
        }
        t.put_sub(b"h", 8, b"z", vec![]);
        let got = t.scan_subs(b"h", 7, Some(b"b"), 10, true).unwrap();
        assert_eq!(
            got,
            vec![
                (b"b".to_vec(), b"b".to_vec()),
                (b"a".to_vec(), b"a".to_vec())
            ]
        );
        let got = t.scan_subs(b"h", 7, Some(b"b"), 10, false).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(t.scan_subs(b"h", 7, None, 10, false).unwrap().len(), 3);
    }
}
