//! Group commit: one thread syncs RocksDB's WAL for everybody.
//!
//! Writers write with `sync=false` and then, before acknowledging, wait until
//! the published synced sequence reaches their write's sequence. The syncer
//! loops: read the latest sequence, `flush_wal(true)`, publish it, wake
//! waiters. While one fsync runs, new writes pile up and share the next one,
//! so many clients (or one pipelining client) cost one fsync per round, not
//! one per write.
//!
//! After a failed sync the state is sticky-failed: waiters get an error and
//! new writes are refused (the file state after a failed fsync is unknown).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rocksdb::DB;

use crate::error::KvError;

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
    last_sync_micros: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Called with each sync's duration (metrics).
    observer: Mutex<Option<SyncObserver>>,
}

impl WalSync {
    pub(crate) fn start(db: Arc<DB>, policy: FsyncPolicy) -> Arc<WalSync> {
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
