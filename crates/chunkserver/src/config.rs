//! Runtime configuration of a chunkserver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default data-path address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7100";
/// Default ctrl endpoint.
pub const DEFAULT_CTRL: &str = "http://127.0.0.1:7000";
/// Default WAL volume between two checkpoints.
pub const DEFAULT_CHECKPOINT_WAL_BYTES: u64 = 256 << 20;

/// Default [`Config::idle_spin`]: covers the gap between the hops of a
/// QD1 write on the playground.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(200);

/// Everything `run` needs. `Default` holds production values.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data-path TCP address; also advertised to ctrl.
    pub listen: SocketAddr,
    /// Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Holds `server_id`, `checkpoint`, `wal/` and `copysets/`.
    pub data_dir: PathBuf,
    /// ctrl gRPC endpoint, e.g. `http://127.0.0.1:7000`.
    pub ctrl: String,
    /// Period of heartbeats to ctrl.
    pub heartbeat_interval: Duration,
    /// Raft tick; election timeout is 10 ticks, heartbeat 2 ticks.
    pub raft_tick: Duration,
    /// Advertised capacity; 0 means the size of the file system of `data_dir`.
    pub capacity_bytes: u64,
    /// Checkpoint (and truncate the WAL) after this much WAL or every 30 s.
    pub checkpoint_wal_bytes: u64,
    /// How long the raft loop polls its inbox before it sleeps. Polling
    /// saves a thread wake-up per hop of a replicated write (QD1 4 KiB
    /// write p50 ~200 → ~170 µs on the playground) for up to this much CPU
    /// after each burst of work; zero sleeps at once.
    pub idle_spin: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            metrics_listen: None,
            data_dir: PathBuf::from("pikafs-data"),
            ctrl: DEFAULT_CTRL.to_string(),
            heartbeat_interval: Duration::from_secs(1),
            raft_tick: Duration::from_millis(100),
            capacity_bytes: 0,
            checkpoint_wal_bytes: DEFAULT_CHECKPOINT_WAL_BYTES,
            idle_spin: DEFAULT_IDLE_SPIN,
        }
    }
}

/// A configuration value the server cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunkserver config: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Rejects values the server cannot run with.
    ///
    /// # Errors
    /// A zero tick or heartbeat interval, or an empty ctrl endpoint.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.raft_tick.is_zero() {
            return Err(ConfigError("raft_tick must be > 0"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError("heartbeat_interval must be > 0"));
        }
        if self.ctrl.is_empty() {
            return Err(ConfigError("ctrl endpoint must be set"));
        }
        Ok(())
    }
}
