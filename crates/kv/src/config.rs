//! The kv server's configuration (`pikafs kv` flags) and its runtime-mutable
//! part (CONFIG SET).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use parking_lot::RwLock;

use crate::engine::Role;
use crate::error::KvError;
use crate::wal::{FsyncPolicy, GroupCommit};

/// Default node memory budget (block cache + memtables).
pub const DEFAULT_MEMORY_BYTES: usize = 512 << 20;
/// How often an RO node on a local directory polls the primary.
pub const DEFAULT_CATCH_UP_INTERVAL: Duration = Duration::from_millis(50);
/// Connections beyond this are refused with `-ERR max number of clients reached`.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

/// Everything `pikafs kv` needs to start.
#[derive(Debug, Clone)]
pub struct KvConfig {
    pub listen: SocketAddr,
    pub role: Role,
    /// The RocksDB directory.
    pub dir: PathBuf,
    /// RO: the secondary's private directory (default: a temp dir).
    pub secondary_dir: Option<PathBuf>,
    pub memory_bytes: usize,
    pub requirepass: Option<String>,
    pub appendfsync: FsyncPolicy,
    /// RW: how the WAL syncer gathers writers under load.
    pub group_commit: GroupCommit,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// RO: the catch-up timer (the fallback when nobody notifies).
    pub catch_up_interval: Duration,
    pub max_clients: usize,
}

impl KvConfig {
    /// A config with production defaults for `dir`, listening on `listen`.
    pub fn new(listen: SocketAddr, role: Role, dir: PathBuf) -> KvConfig {
        KvConfig {
            listen,
            role,
            dir,
            secondary_dir: None,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            requirepass: None,
            appendfsync: FsyncPolicy::Always,
            group_commit: GroupCommit::default(),
            metrics: None,
            catch_up_interval: DEFAULT_CATCH_UP_INTERVAL,
            max_clients: DEFAULT_MAX_CLIENTS,
        }
    }

    /// # Errors
    /// A setting is out of range.
    pub fn validate(&self) -> Result<(), KvError> {
        if self.memory_bytes < crate::engine::MIN_MEMORY_BYTES {
            return Err(KvError::Config(format!(
                "--memory must be at least {} bytes",
                crate::engine::MIN_MEMORY_BYTES
            )));
        }
        if self.catch_up_interval.is_zero() {
            return Err(KvError::Config("catch-up interval must be > 0".into()));
        }
        if self.requirepass.as_deref() == Some("") {
            return Err(KvError::Config("--requirepass must not be empty".into()));
        }
        Ok(())
    }
}

/// Settings CONFIG SET may change while running.
pub struct Runtime {
    pub requirepass: RwLock<Option<String>>,
    /// Reported `maxmemory`; the engine's budget is fixed at open.
    pub maxmemory: RwLock<u64>,
    pub max_clients: RwLock<usize>,
    /// Redis tuning knobs we accept and ignore, remembered for CONFIG GET.
    pub ignored: RwLock<HashMap<String, String>>,
}

/// Parses a Redis-style memory amount: `1024`, `100mb`, `1gb`, `512MiB`.
pub fn parse_memory(s: &str) -> Option<u64> {
    let l = s.trim().to_ascii_lowercase();
    let digits = l.chars().take_while(|c| c.is_ascii_digit()).count();
    let (n, unit) = l.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mul)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn memory_amounts_parse() {
        assert_eq!(parse_memory("512MiB"), Some(512 << 20));
        assert_eq!(parse_memory("1gb"), Some(1 << 30));
        assert_eq!(parse_memory("4096"), Some(4096));
        assert_eq!(parse_memory("12xb"), None);
        assert_eq!(parse_memory(""), None);
    }
}
