//! Counters of the file operations RocksDB sends to pikafs: calls, bytes
//! and time per operation, per Env ([`crate::PikaEnv::op_stats`]) and for
//! the whole process ([`op_stats`]). They answer "what does RocksDB ask the
//! fs for" (e.g. per RO catch-up) without a profiler: take a snapshot
//! before and after, and [`OpStats::delta`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The operations counted, in the order [`op_stats`] returns them.
/// `pread` counts every read call, its bytes only those read through the
/// fs; `pread_cached` counts the reads (and bytes) served by the RO
/// small-file cache instead.
pub const OPS: [&str; 18] = [
    "open",
    "close",
    "pread",
    "pwrite",
    "truncate",
    "fsync",
    "fallocate",
    "stat",
    "readdir",
    "unlink",
    "mkdir",
    "rmdir",
    "rename",
    "sync",
    "statfs",
    "lock",
    "unlock",
    "pread_cached",
];

struct Counter {
    calls: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // array initializer only
const ZERO: Counter = Counter {
    calls: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    nanos: AtomicU64::new(0),
};

/// One set of counters (an Env's, or the process-wide one).
pub(crate) struct Stats([Counter; OPS.len()]);

static GLOBAL: Stats = Stats::new();

impl Stats {
    pub(crate) const fn new() -> Stats {
        Stats([ZERO; OPS.len()])
    }

    pub(crate) fn snapshot(&self) -> OpStats {
        OpStats(
            OPS.iter()
                .zip(self.0.iter())
                .map(|(op, c)| OpStat {
                    op,
                    calls: c.calls.load(Ordering::Relaxed),
                    bytes: c.bytes.load(Ordering::Relaxed),
                    time: Duration::from_nanos(c.nanos.load(Ordering::Relaxed)),
                })
                .collect(),
        )
    }

    /// Counts one call of `op` here and in the process-wide counters.
    pub(crate) fn record(&self, op: &str, elapsed: Duration) {
        if let Some(i) = index(op) {
            for c in [&self.0[i], &GLOBAL.0[i]] {
                c.calls.fetch_add(1, Ordering::Relaxed);
                c.nanos
                    .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn add_bytes(&self, op: &str, n: u64) {
        if let Some(i) = index(op) {
            self.0[i].bytes.fetch_add(n, Ordering::Relaxed);
            GLOBAL.0[i].bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One operation's totals since process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpStat {
    pub op: &'static str,
    pub calls: u64,
    /// pread/pwrite: bytes transferred; readdir: entries; else 0.
    pub bytes: u64,
    pub time: Duration,
}

/// Totals of every operation (all pikafs Envs of the process together).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpStats(pub Vec<OpStat>);

impl OpStats {
    /// `self - earlier`, operation by operation.
    pub fn delta(&self, earlier: &OpStats) -> OpStats {
        OpStats(
            self.0
                .iter()
                .map(|s| {
                    let e = earlier.get(s.op).unwrap_or_default();
                    OpStat {
                        op: s.op,
                        calls: s.calls.saturating_sub(e.calls),
                        bytes: s.bytes.saturating_sub(e.bytes),
                        time: s.time.saturating_sub(e.time),
                    }
                })
                .collect(),
        )
    }

    pub fn get(&self, op: &str) -> Option<OpStat> {
        self.0.iter().find(|s| s.op == op).copied()
    }

    /// Calls of every operation together.
    pub fn total_calls(&self) -> u64 {
        self.0.iter().map(|s| s.calls).sum()
    }
}

impl std::fmt::Display for OpStats {
    /// `op=calls/bytes/µs` for every operation that was called.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in self.0.iter().filter(|s| s.calls > 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(
                f,
                "{}={}/{}B/{}us",
                s.op,
                s.calls,
                s.bytes,
                s.time.as_micros()
            )?;
        }
        Ok(())
    }
}

/// A snapshot of the process-wide counters (every pikafs Env together).
pub fn op_stats() -> OpStats {
    GLOBAL.snapshot()
}

fn index(op: &str) -> Option<usize> {
    OPS.iter().position(|o| *o == op)
}
