//! Group commit: one thread syncs RocksDB's WAL for everybody.
//!
//! Writers write with `sync=false` and then, before acknowledging, wait until
//! the published synced sequence reaches their write's sequence. The syncer
//! loops: read the latest sequence, `flush_wal(true)`, publish it, wake
//! waiters. While one fsync runs, new writes pile up and share the next one,
//! so many clients (or one pipelining client) cost one fsync per round, not
//! one per write.
//!
//! Under load a sync is worth waiting for: each one costs a replicated
//! round on the volume (about 1 ms of CPU across the three chunkservers),
//! whatever it carries. So when at least [`GroupCommit::min_waiters`]
//! writers wait, the syncer holds the sync for up to
//! [`GroupCommit::window`], as long as more writers keep joining (it looks
//! every `window / 4`); a lone or low-concurrency writer never waits for
//! the window. This is MySQL's `binlog_group_commit_sync_delay`, gated on
//! concurrency like PostgreSQL's `commit_siblings`.
//!
//! After a failed sync the state is sticky-failed: waiters get an error and
//! new writes are refused (the file state after a failed fsync is unknown).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rocksdb::DB;

use crate::error::KvError;

/// How long a busy syncer gathers writers before it syncs
/// (`--group-commit-window`, `--group-commit-min-waiters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Longest hold of one sync; zero turns gathering off.
    pub window: Duration,
    /// Gather only when at least this many writers wait.
    pub min_waiters: usize,
}

impl Default for GroupCommit {
    /// 1 ms once 8 writers wait: on the 3-replica playground, 25–40% fewer
    /// syncs under `redis-benchmark -P 16 -c 50` (docs/kv.md).
    fn default() -> GroupCommit {
        GroupCommit {
            window: Duration::from_millis(1),
            min_waiters: 8,
        }
    }
}

/// When acknowledged writes reach the disk (`--appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Default: a reply is sent only after its writes' WAL is synced.
    Always,
    /// Sync about once per second; replies do not wait (up to ~1 s of
    /// acknowledged writes may be lost on a crash).
    EverySec,
    /// Never sync explicitly (the OS flushes); replies do not wait.
    No,
}

impl FsyncPolicy {
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Some(FsyncPolicy::Always),
            "everysec" => Some(FsyncPolicy::EverySec),
            "no" => Some(FsyncPolicy::No),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            FsyncPolicy::Always => 0,
            FsyncPolicy::EverySec => 1,
            FsyncPolicy::No => 2,
        }
    }

    fn from_u8(v: u8) -> FsyncPolicy {
        match v {
            1 => FsyncPolicy::EverySec,
            2 => FsyncPolicy::No,
            _ => FsyncPolicy::Always,
        }
    }
}

/// Called with each WAL sync's duration.
pub type SyncObserver = Box<dyn Fn(Duration) + Send>;

/// Published sync progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Synced {
    seq: u64,
    failed: bool,
}

struct Wanted {
    seq: u64,
    stop: bool,
}

/// The shared WAL syncer of an RW engine.
pub struct WalSync {
    db: Arc<DB>,
    policy: AtomicU8,
    wanted: Mutex<Wanted>,
    wake: Condvar,
    synced_tx: tokio::sync::watch::Sender<Synced>,
    syncs: AtomicU64,
    group: GroupCommit,
    /// Callers inside `wait_durable` whose sequence is not yet synced.
    waiters: AtomicUsize,
    last_sync_micros: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Called with each sync's duration (metrics).
    observer: Mutex<Option<SyncObserver>>,
}

impl WalSync {
    pub(crate) fn start(db: Arc<DB>, policy: FsyncPolicy, group: GroupCommit) -> Arc<WalSync> {
        let start = db.latest_sequence_number();
        let (synced_tx, _) = tokio::sync::watch::channel(Synced {
            seq: start,
            failed: false,
        });
        let w = Arc::new(WalSync {
            db,
            policy: AtomicU8::new(policy.to_u8()),
            wanted: Mutex::new(Wanted {
                seq: start,
                stop: false,
            }),
            wake: Condvar::new(),
            synced_tx,
            syncs: AtomicU64::new(0),
            group,
            waiters: AtomicUsize::new(0),
            last_sync_micros: AtomicU64::new(0),
            thread: Mutex::new(None),
            observer: Mutex::new(None),
        });
        let me = w.clone();
        let h = std::thread::Builder::new()
            .name("kv-wal-sync".into())
            .spawn(move || me.run())
            .expect("spawn the WAL syncer thread");
        *w.thread.lock() = Some(h);
        w
    }

    pub fn policy(&self) -> FsyncPolicy {
        FsyncPolicy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    /// `CONFIG SET appendfsync`.
    pub fn set_policy(&self, p: FsyncPolicy) {
        self.policy.store(p.to_u8(), Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Registers the per-sync duration observer.
    pub fn set_observer(&self, f: SyncObserver) {
        *self.observer.lock() = Some(f);
    }

    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub fn synced_sequence(&self) -> u64 {
        self.synced_tx.borrow().seq
    }

    pub(crate) fn check_healthy(&self) -> Result<(), KvError> {
        if self.synced_tx.borrow().failed {
            return Err(KvError::WalSync(
                "an earlier WAL sync failed; writes are refused".into(),
            ));
        }
        Ok(())
    }

    /// Waits until every write up to `seq` is durable per the policy:
    /// under `always` until the WAL is synced past `seq`, otherwise not at
    /// all.
    ///
    /// # Errors
    /// A WAL sync failed.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only stops waiting.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), KvError> {
        if self.policy() != FsyncPolicy::Always {
            return self.check_healthy();
        }
        let mut rx = self.synced_tx.subscribe();
        {
            let s = *rx.borrow();
            if s.failed {
                return self.check_healthy();
            }
            if s.seq >= seq {
                return Ok(());
            }
        }
        // Counted before the syncer can see `wanted`, so the sync this
        // wakes already knows how busy it is; the guard keeps the count
        // right when the future is dropped.
        let _waiting = Waiting::new(&self.waiters);
        {
            let mut w = self.wanted.lock();
            if w.seq < seq {
                w.seq = seq;
                self.wake.notify_one();
            }
        }
        let res = rx.wait_for(|s| s.failed || s.seq >= seq).await;
        match res {
            Ok(s) if !s.failed => Ok(()),
            _ => Err(KvError::WalSync("WAL sync failed".into())),
        }
    }

    /// Syncs once more and stops the thread.
    pub(crate) fn stop(&self) {
        self.wanted.lock().stop = true;
        self.wake.notify_one();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }

    /// Holds the coming sync while it is worth it: enough writers wait and
    /// more keep joining, for at most the window.
    fn gather(&self) {
        let g = self.group;
        if g.window.is_zero() || self.waiters.load(Ordering::Relaxed) < g.min_waiters.max(1) {
            return;
        }
        let start = Instant::now();
        let slice = (g.window / 4).max(Duration::from_micros(50));
        let mut seen = self.waiters.load(Ordering::Relaxed);
        while start.elapsed() + slice <= g.window {
            std::thread::sleep(slice);
            let now = self.waiters.load(Ordering::Relaxed);
            if now <= seen {
                return;
            }
            seen = now;
        }
    }

    fn run(self: Arc<Self>) {
        let mut last_periodic = Instant::now();
        loop {
            let stop;
            {
                let mut w = self.wanted.lock();
                loop {
                    if w.stop {
                        break;
                    }
                    let synced = self.synced_tx.borrow().seq;
                    let policy = self.policy();
                    if policy == FsyncPolicy::Always && w.seq > synced {
                        break;
                    }
                    if policy == FsyncPolicy::EverySec
                        && last_periodic.elapsed() >= Duration::from_secs(1)
                    {
                        break;
                    }
                    // Under `always` waiters wake us; the timeout covers the
                    // periodic policies and writes nobody waits for.
                    self.wake.wait_for(&mut w, Duration::from_millis(100));
                }
                stop = w.stop;
            }
            last_periodic = Instant::now();
            if self.synced_tx.borrow().failed {
                if stop {
                    return;
                }
                continue;
            }
            if !stop {
                self.gather();
            }
            let seq = self.db.latest_sequence_number();
            if seq > self.synced_tx.borrow().seq {
                let t = Instant::now();
                let res = self.db.flush_wal(true);
                let took = t.elapsed();
                self.syncs.fetch_add(1, Ordering::Relaxed);
                self.last_sync_micros
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                if let Some(f) = self.observer.lock().as_ref() {
                    f(took);
                }
                match res {
                    Ok(()) => {
                        self.synced_tx.send_replace(Synced { seq, failed: false });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "WAL sync failed; refusing writes from now on");
                        self.synced_tx.send_replace(Synced {
                            seq: self.synced_tx.borrow().seq,
                            failed: true,
                        });
                    }
                }
            }
            if stop {
                return;
            }
        }
    }
}

/// One caller inside [`WalSync::wait_durable`].
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Arc<DB> {
        Arc::new(DB::open_default(dir).unwrap())
    }

    fn put(db: &DB, k: &[u8]) -> u64 {
        db.put(k, b"v").unwrap();
        db.latest_sequence_number()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn syncer(db: &Arc<DB>, window: Duration, min_waiters: usize) -> Arc<WalSync> {
        let group = GroupCommit {
            window,
            min_waiters,
        };
        WalSync::start(db.clone(), FsyncPolicy::Always, group)
    }

    /// Waits for `seq` to be durable, failing the test with `why` after
    /// `secs`.
    fn durable_within(w: &WalSync, seq: u64, secs: u64, why: &str) {
        runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(secs), w.wait_durable(seq))
                .await
                .expect(why)
                .unwrap();
        });
    }

    #[test]
    fn a_writer_below_min_waiters_is_not_held_by_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let w = syncer(&db, Duration::from_secs(600), 2);
        let seq = put(&db, b"a");
        durable_within(
            &w,
            seq,
            30,
            "a lone writer must not wait for the 10 min window",
        );
        assert!(w.synced_sequence() >= seq);
        w.stop();
    }

    #[test]
    fn gathering_stops_as_soon_as_no_more_writers_join() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        // Looks every 2 s; nobody joins, so the sync goes after one look,
        // long before the window's end.
        let w = syncer(&db, Duration::from_secs(16), 1);
        let seq = put(&db, b"a");
        durable_within(&w, seq, 12, "synced after one look, not after the window");
        assert_eq!(w.sync_count(), 1);
        w.stop();
    }

    #[test]
    fn writers_joining_within_the_window_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        // Looks every 500 ms; the second writer joins after 100 ms.
        let w = syncer(&db, Duration::from_secs(4), 1);
        let rt = runtime();
        let s1 = put(&db, b"a");
        let first = rt.spawn({
            let w = w.clone();
            async move { w.wait_durable(s1).await }
        });
        std::thread::sleep(Duration::from_millis(100));
        let s2 = put(&db, b"b");
        rt.block_on(async {
            let second = tokio::time::timeout(Duration::from_secs(30), w.wait_durable(s2));
            second.await.expect("second synced in time").unwrap();
            tokio::time::timeout(Duration::from_secs(30), first)
                .await
                .expect("first synced in time")
                .unwrap()
                .unwrap();
        });
        assert_eq!(w.sync_count(), 1, "both writers rode the same sync");
        assert!(w.synced_sequence() >= s2);
        w.stop();
    }

    #[test]
    fn a_dropped_wait_leaves_no_phantom_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let w = syncer(&db, Duration::ZERO, 1);
        runtime().block_on(async {
            let seq = put(&db, b"a");
            let fut = w.wait_durable(seq);
            let _ = tokio::time::timeout(Duration::from_nanos(1), fut).await;
        });
        assert_eq!(w.waiters.load(Ordering::Relaxed), 0);
        w.stop();
    }
}
