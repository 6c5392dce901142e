//! The RocksDB engine under the kv server: open as primary (RW) or secondary
//! (RO), the node's memory budget, the single writer, versions, key-modified
//! hooks and the RO catch-up.
//!
//! Invariants:
//! - Writes are serialized by `write_lock` (held by a write [`Txn`] from
//!   creation to commit), so a read-modify-write command sees no concurrent
//!   writer and `latest_sequence_number()` right after a write is that
//!   write's sequence.
//! - Writes go to RocksDB with `sync=false`; durability comes from
//!   [`WalSync`], which callers wait on before acknowledging.
//! - On a secondary, `catch_up` takes `catch_up_lock` exclusively and every
//!   read [`Txn`] holds it shared, so a reader never sees part of a
//!   catch-up (and a primary WriteBatch is applied whole by a catch-up).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};

use crate::cursor::Cursors;
use crate::encoding::{split_sub_key, Meta, CF_DATA, CF_META};
use crate::error::KvError;
use crate::txn::Txn;
use crate::wal::{FsyncPolicy, GroupCommit, WalSync};

/// Whether this node is the RocksDB primary or a secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Rw,
    Ro,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Rw => "rw",
            Role::Ro => "ro",
        }
    }
}

/// How to open the engine.
pub struct EngineConfig {
    /// The RocksDB directory (the primary's, for RO too).
    pub path: PathBuf,
    pub role: Role,
    /// RO only: the secondary's private directory for its info log and
    /// MANIFEST tail state. Default: a fresh directory under the system
    /// temp dir.
    pub secondary_path: Option<PathBuf>,
    /// One budget for block cache plus memtables, in bytes.
    pub memory_bytes: usize,
    /// A custom RocksDB Env (e.g. pikafs's file system); `None` = local
    /// files.
    pub env: Option<rocksdb::Env>,
    pub fsync: FsyncPolicy,
    pub group_commit: GroupCommit,
}

/// How long an async worker waits for the write lock before it hands
/// its writes to a blocking thread: a write group holds the lock for tens
/// of microseconds; anything longer is a slow command.
pub const INLINE_LOCK_WAIT: Duration = Duration::from_micros(100);

/// Something a committed write changed, for WATCH and (later) blocking
/// commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    Key(u8, Vec<u8>),
    /// Every key of one db (FLUSHDB).
    Db(u8),
    /// Every key (FLUSHALL).
    All,
}

/// Called after every commit with what it touched. Must be quick and must
/// not call back into the engine's write path.
pub type KeyModifiedHook = Arc<dyn Fn(&[Touch]) + Send + Sync>;

/// The opened RocksDB plus the node-wide write machinery.
pub struct Engine {
    db: Arc<DB>,
    role: Role,
    pub(crate) write_lock: Mutex<()>,
    pub(crate) catch_up_lock: RwLock<()>,
    last_version: AtomicU64,
    wal: Option<Arc<WalSync>>,
    cache: Cache,
    wbm: WriteBufferManager,
    memory_bytes: usize,
    /// RO: when the last successful catch-up *started*: the node holds
    /// every primary write that was visible in the files at that instant.
    last_catch_up: Mutex<Option<Instant>>,
    catch_ups: AtomicU64,
    /// The applied sequence, published after every catch-up (RO) for
    /// `PIKAFS WAITSEQ`.
    applied_tx: tokio::sync::watch::Sender<u64>,
    catch_up_trigger: Arc<tokio::sync::Notify>,
    hooks: RwLock<Vec<KeyModifiedHook>>,
    secondary_dir: Option<PathBuf>,
    remove_secondary_dir: bool,
    cursors: Cursors,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CPU time of the calling thread, in microseconds (0 if unavailable).
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Smallest budget we accept: below this RocksDB stalls on its own
/// overheads.
pub const MIN_MEMORY_BYTES: usize = 16 << 20;

fn cf_options(
    cache: &Cache,
    wbm: &WriteBufferManager,
    memory: usize,
    filter_db: Option<Arc<OnceLock<Weak<DB>>>>,
    meta_cf: bool,
) -> Options {
    let mut o = Options::default();
    let mut t = BlockBasedOptions::default();
    t.set_block_cache(cache);
    t.set_bloom_filter(10.0, false);
    t.set_cache_index_and_filter_blocks(true);
    o.set_block_based_table_factory(&t);
    o.set_write_buffer_manager(wbm);
    o.set_write_buffer_size((memory / 8).clamp(4 << 20, 64 << 20));
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_level_compaction_dynamic_level_bytes(true);
    if let Some(cell) = filter_db {
        if meta_cf {
            // Expired keys are logically absent already; dropping them here
            // only reclaims space. Their members go once the record is gone.
            o.set_compaction_filter("pikafs_kv_meta", move |_lvl, _k, v| match Meta::peek(v) {
                Ok((_, exp, _)) if exp != 0 && exp <= now_ms() => Decision::Remove,
                _ => Decision::Keep,
            });
        } else {
            o.set_compaction_filter("pikafs_kv_data", move |_lvl, k, _v| data_filter(&cell, k));
        }
    }
    o
}

/// Keeps a member only while its key's live metadata record names its
/// version (the Kvrocks approach: look the record up from inside the filter).
fn data_filter(cell: &OnceLock<Weak<DB>>, k: &[u8]) -> Decision {
    let Some(db) = cell.get().and_then(Weak::upgrade) else {
        return Decision::Keep;
    };
    let Ok(sub) = split_sub_key(k) else {
        return Decision::Keep; // not ours to judge
    };
    let Some(meta_cf) = db.cf_handle(CF_META) else {
        return Decision::Keep;
    };
    let mk = crate::encoding::meta_key(sub.db, sub.key);
    let decision = match db.get_pinned_cf(meta_cf, &mk) {
        Ok(None) => Decision::Remove,
        Ok(Some(raw)) => match Meta::peek(&raw) {
            Ok((kind, exp, version)) => {
                let live = kind.is_collection()
                    && version == sub.version
                    && !(exp != 0 && exp <= now_ms());
                if live {
                    Decision::Keep
                } else {
                    Decision::Remove
                }
            }
            Err(_) => Decision::Keep,
        },
        // An I/O error must never lose data: keep and retry next compaction.
        Err(_) => Decision::Keep,
    };
    decision
}

impl Engine {
    /// Opens (creating if needed, for RW) the database and, for RW, starts
    /// the WAL syncer thread.
    ///
    /// # Errors
    /// RocksDB cannot open the directory (for RO: the primary has not
    /// created it yet, or the secondary directory is unusable).
    pub fn open(cfg: EngineConfig) -> Result<Arc<Engine>, KvError> {
        let memory = cfg.memory_bytes.max(MIN_MEMORY_BYTES);
        let cache = Cache::new_lru_cache(memory);
        // Memtables are charged to the block cache, so the cache capacity is
        // the whole budget; memtables flush once they reach half of it.
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
            memory / 2,
            false,
            cache.clone(),
        );
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_write_buffer_manager(&wbm);
        opts.set_max_total_wal_size(256 << 20);
        if let Some(env) = &cfg.env {
            opts.set_env(env);
        }
        let cell: Arc<OnceLock<Weak<DB>>> = Arc::new(OnceLock::new());
        let (with_filter, role) = (cfg.role == Role::Rw, cfg.role);
        let descs = vec![
            ColumnFamilyDescriptor::new("default", Options::default()),
            ColumnFamilyDescriptor::new(
                CF_META,
                cf_options(
                    &cache,
                    &wbm,
                    memory,
                    with_filter.then(|| cell.clone()),
                    true,
                ),
            ),
            ColumnFamilyDescriptor::new(
                CF_DATA,
                cf_options(
                    &cache,
                    &wbm,
                    memory,
                    with_filter.then(|| cell.clone()),
                    false,
                ),
            ),
        ];
        let path_str = cfg.path.display().to_string();
        let (db, secondary_dir, remove_secondary_dir) = match role {
            Role::Rw => {
                let db = DB::open_cf_descriptors(&opts, &cfg.path, descs).map_err(|source| {
                    KvError::Open {
                        path: path_str,
                        source,
                    }
                })?;
                (db, None, false)
            }
            Role::Ro => {
                // A secondary must keep every file open: the primary deletes
                // compacted files the secondary may still reference.
                opts.set_max_open_files(-1);
                // Every `try_catch_up_with_primary` tails the MANIFEST and
                // ends in `LoadTableHandlers`, which starts and joins
                // `max_file_opening_threads - 1` threads (default 16) even
                // when no file is new: ~15 thread creations per catch-up,
                // thousands per second under write load, which made the
                // catch-up CPU-bound. One thread opens the (rare) new files
                // inline; only the initial open of a large DB is slower.
                opts.set_max_file_opening_threads(1);
                let (dir, remove) = match cfg.secondary_path {
                    Some(p) => (p, false),
                    None => {
                        let p = std::env::temp_dir().join(format!(
                            "pikafs-kv-secondary-{}-{}",
                            std::process::id(),
                            now_us()
                        ));
                        (p, true)
                    }
                };
                std::fs::create_dir_all(&dir)?;
                let db = DB::open_cf_descriptors_as_secondary(&opts, &cfg.path, &dir, descs)
                    .map_err(|source| KvError::Open {
                        path: path_str,
                        source,
                    })?;
                (db, Some(dir), remove)
            }
        };
        let db = Arc::new(db);
        let _ = cell.set(Arc::downgrade(&db));
        let wal =
            (role == Role::Rw).then(|| WalSync::start(db.clone(), cfg.fsync, cfg.group_commit));
        let (applied_tx, _) = tokio::sync::watch::channel(db.latest_sequence_number());
        Ok(Arc::new(Engine {
            db,
            role,
            write_lock: Mutex::new(()),
            catch_up_lock: RwLock::new(()),
            last_version: AtomicU64::new(now_us()),
            wal,
            cache,
            wbm,
            memory_bytes: memory,
            last_catch_up: Mutex::new(Some(Instant::now())),
            catch_ups: AtomicU64::new(0),
            applied_tx,
            catch_up_trigger: Arc::new(tokio::sync::Notify::new()),
            hooks: RwLock::new(Vec::new()),
            secondary_dir,
            remove_secondary_dir,
            cursors: Cursors::new(),
        }))
    }

    /// The node-wide SCAN-family cursor table.
    pub fn cursors(&self) -> &Cursors {
        &self.cursors
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn meta_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(CF_META)
            .expect("meta cf is created at open")
    }

    pub fn data_cf(&self) -> &ColumnFamily {
        self.db
            .cf_handle(CF_DATA)
            .expect("data cf is created at open")
    }

    /// The WAL syncer (RW only).
    pub fn wal(&self) -> Option<&Arc<WalSync>> {
        self.wal.as_ref()
    }

    /// A read transaction on db `db` at one consistent point.
    pub fn read_txn(&self, db: u8) -> Txn<'_> {
        Txn::new_read(self, db)
    }

    /// A write transaction on db `db`: takes the node's write lock until it
    /// is committed or dropped. Blocks; call from a blocking thread.
    pub fn write_txn(&self, db: u8) -> Txn<'_> {
        Txn::new_write(self, db)
    }

    /// A write txn that never waits long: `None` when the write lock stays
    /// taken for [`INLINE_LOCK_WAIT`]; reads from memory only and a commit
    /// that RocksDB would stall fails with `Incomplete` (see
    /// [`Txn::needs_io`]). For cheap writes on an async worker.
    pub fn write_txn_in_memory(&self, db: u8) -> Option<Txn<'_>> {
        Txn::new_write_in_memory(self, db)
    }

    /// A fresh collection version, greater than every version handed out
    /// before by this process and (clock permitting) by earlier ones.
    pub fn next_version(&self) -> u64 {
        let now = now_us();
        let mut cur = self.last_version.load(Ordering::Relaxed);
        loop {
            let next = now.max(cur + 1);
            match self.last_version.compare_exchange(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Writes `batch` unsynced; the caller holds `write_lock`. Returns the
    /// sequence number of the batch's last record. With `no_slowdown`,
    /// a write RocksDB would delay or stop (too many memtables or L0
    /// files) fails at once with `Incomplete` and writes nothing.
    pub(crate) fn write_batch(
        &self,
        batch: WriteBatch,
        touched: &[Touch],
        no_slowdown: bool,
    ) -> Result<u64, KvError> {
        if let Some(w) = &self.wal {
            w.check_healthy()?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        wo.set_no_slowdown(no_slowdown);
        self.db.write_opt(batch, &wo)?;
        let seq = self.db.latest_sequence_number();
        if !touched.is_empty() {
            for h in self.hooks.read().iter() {
                h(touched);
            }
        }
        Ok(seq)
    }

    /// Registers a hook run after every commit (WATCH, blocking pops).
    pub fn add_key_modified_hook(&self, hook: KeyModifiedHook) {
        self.hooks.write().push(hook);
    }

    /// The last sequence number applied: on RW the last write, on RO the
    /// last one caught up to.
    pub fn applied_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// RO: replays what the primary has written since the last catch-up.
    /// Blocks; readers wait for it. On RW this is a no-op.
    ///
    /// # Errors
    /// RocksDB could not read the primary's MANIFEST or WAL.
    pub fn catch_up(&self) -> Result<(), KvError> {
        if self.role != Role::Ro {
            return Ok(());
        }
        let started = Instant::now();
        // The thread-CPU clock is a real syscall: read it only for the trace.
        let cpu0 = tracing::enabled!(tracing::Level::TRACE).then(thread_cpu_us);
        let (seq, locked) = {
            let _g = self.catch_up_lock.write();
            let locked = started.elapsed();
            self.db.try_catch_up_with_primary()?;
            (self.db.latest_sequence_number(), locked)
        };
        tracing::trace!(
            seq,
            us = started.elapsed().as_micros() as u64,
            lock_us = locked.as_micros() as u64,
            cpu_us = cpu0.map_or(0, |c| thread_cpu_us().saturating_sub(c)),
            "caught up"
        );
        *self.last_catch_up.lock() = Some(started);
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
        self.applied_tx.send_replace(seq);
        Ok(())
    }

    /// RO: successful catch-ups so far.
    pub fn catch_up_count(&self) -> u64 {
        self.catch_ups.load(Ordering::Relaxed)
    }

    /// The applied sequence as published after each catch-up (RO); on RW
    /// it stays at the open-time value, use [`Engine::applied_sequence`].
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// RW: flushes the memtables and compacts both column families fully
    /// (bottommost level rewritten too), so the filters run over every
    /// record and superseded SST files are deleted. Blocks.
    ///
    /// # Errors
    /// A flush failed.
    pub fn compact_all(&self) -> Result<(), KvError> {
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        for cf in [self.meta_cf(), self.data_cf()] {
            self.db.flush_cf(cf)?;
            self.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &co);
        }
        Ok(())
    }

    /// RO: notify this to make the catch-up loop run now (e.g. on an fs
    /// journal notification) instead of at its next timer tick.
    pub fn catch_up_trigger(&self) -> Arc<tokio::sync::Notify> {
        self.catch_up_trigger.clone()
    }

    /// RO: time since the start of the last successful catch-up, i.e. an
    /// upper bound on how stale this node's view is (for primary writes
    /// already visible in the files).
    pub fn catch_up_lag(&self) -> Option<Duration> {
        self.last_catch_up.lock().map(|t| t.elapsed())
    }

    pub fn memory_budget(&self) -> usize {
        self.memory_bytes
    }

    /// Bytes charged to the budget now (block cache including memtables).
    pub fn memory_used(&self) -> usize {
        self.cache.get_usage()
    }

    /// Bytes of memtables (a part of `memory_used`).
    pub fn memtable_bytes(&self) -> usize {
        self.wbm.get_usage()
    }

    /// A RocksDB integer property of the meta column family.
    pub fn meta_property(&self, name: &str) -> Option<u64> {
        self.db
            .property_int_value_cf(self.meta_cf(), name)
            .ok()
            .flatten()
    }

    /// Stops the WAL syncer after a final sync and waits for background
    /// work, so the DB can be closed cleanly.
    pub fn shutdown(&self) {
        if let Some(w) = &self.wal {
            w.stop();
        }
        self.db.cancel_all_background_work(true);
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The compaction filter holds only a Weak to the DB; stop background
        // work first so the last Arc is never dropped on a compaction thread.
        self.shutdown();
        if self.remove_secondary_dir {
            if let Some(d) = &self.secondary_dir {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{sub_prefix, KeyType};
    use crate::txn::Space;

    fn open(dir: &Path) -> Arc<Engine> {
        Engine::open(EngineConfig {
            path: dir.to_path_buf(),
            role: Role::Rw,
            secondary_path: None,
            memory_bytes: 32 << 20,
            env: None,
            fsync: FsyncPolicy::Always,
            group_commit: GroupCommit::default(),
        })
        .unwrap()
    }

    fn data_rows(eng: &Engine) -> usize {
        eng.db()
            .iterator_cf(eng.data_cf(), rocksdb::IteratorMode::Start)
            .count()
    }

    #[test]
    fn compaction_filter_drops_stale_members_and_expired_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let eng = open(dir.path());
        let mut t = eng.write_txn(0);
        let mut live = Meta::collection(KeyType::Hash, eng.next_version());
        let mut dead = Meta::collection(KeyType::Hash, eng.next_version());
        let mut gone = Meta::collection(KeyType::Hash, eng.next_version());
        for i in 0..10u8 {
            t.put_sub(b"live", live.version, &[i], vec![i]);
            t.put_sub(b"dead", dead.version, &[i], vec![i]);
            t.put_sub(b"gone", gone.version, &[i], vec![i]);
        }
        live.size = 10;
        dead.size = 10;
        gone.size = 10;
        gone.expire_ms = 1; // long expired
        t.put_meta(b"live", &live);
        t.put_meta(b"dead", &dead);
        t.put_meta(b"gone", &gone);
        t.commit().unwrap();
        // O(1) delete: only the record goes; members stay until compaction.
        let mut t = eng.write_txn(0);
        t.delete_key(b"dead");
        // A recreated key gets a new version; old members are stale.
        let recreated = Meta::collection(KeyType::Hash, eng.next_version());
        assert!(recreated.version > live.version);
        t.commit().unwrap();
        assert_eq!(data_rows(&eng), 30);
        eng.db().flush_cf(eng.meta_cf()).unwrap();
        eng.db().flush_cf(eng.data_cf()).unwrap();
        eng.db()
            .compact_range_cf(eng.data_cf(), None::<&[u8]>, None::<&[u8]>);
        eng.db()
            .compact_range_cf(eng.meta_cf(), None::<&[u8]>, None::<&[u8]>);
        assert_eq!(data_rows(&eng), 10, "only the live hash's members remain");
        let r = eng.read_txn(0);
        let prefix = sub_prefix(0, b"live", live.version);
        let rows = r.scan_raw(Space::Data, &prefix, None, 100, false).unwrap();
        assert_eq!(rows.len(), 10);
        assert!(
            eng.db()
                .get_cf(eng.meta_cf(), crate::encoding::meta_key(0, b"gone"))
                .unwrap()
                .is_none(),
            "expired record compacted away"
        );
    }

    #[test]
    fn versions_increase_and_writes_are_synced_by_the_group_committer() {
        let dir = tempfile::tempdir().unwrap();
        let eng = open(dir.path());
        let a = eng.next_version();
        let b = eng.next_version();
        assert!(b > a);
        let mut t = eng.write_txn(0);
        t.put_meta(b"k", &Meta::string(b"v".to_vec(), 0));
        let seq = t.commit().unwrap().expect("a write has a sequence");
        let wal = eng.wal().expect("rw has a syncer").clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(seq))
                .await
                .expect("synced in time")
                .unwrap();
        });
        assert!(wal.synced_sequence() >= seq);
        assert!(wal.sync_count() >= 1);
    }
}
