//! Runtime configuration of the ctrl service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7000";
/// Default silence after which a chunkserver counts as down.
pub const DEFAULT_SERVER_LEASE: Duration = Duration::from_secs(10);
/// Default replicas per server the placement aims for.
pub const DEFAULT_COPYSETS_PER_SERVER: u32 = 6;
/// Default lease of a file-system mount; mounts renew well within it.
pub const DEFAULT_MOUNT_LEASE: Duration = Duration::from_secs(10);
/// Default lease of a kv node (`pikafs kv --volume`); nodes heartbeat
/// every lease/4, and a writer silent this long is fenced and replaced.
pub const DEFAULT_KV_LEASE: Duration = Duration::from_secs(2);
/// Default time a promoted kv node gets to report RW before ctrl fences it
/// and promotes another.
pub const DEFAULT_KV_PROMOTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default period of the failure and placement check.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Configuration of [`crate::run`].
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address the `Ctrl` service listens on.
    pub listen: SocketAddr,
    /// Prometheus endpoint; none when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Directory holding `ctrl.redb`; created if missing.
    pub data_dir: PathBuf,
    /// A server silent for longer than this is down and its replicas get
    /// replaced.
    pub server_lease: Duration,
    /// Target copysets = `max(1, up_servers * copysets_per_server / 3)`, so
    /// each server holds about this many replicas.
    pub copysets_per_server: u32,
    /// Period of the failure/placement check.
    pub check_interval: Duration,
    /// Lease of a file-system mount (RW or RO). An RW mount that stops
    /// renewing loses exclusivity after this; an RO one stops pinning
    /// deleted files.
    pub mount_lease: Duration,
    /// Lease of a kv node; see [`DEFAULT_KV_LEASE`].
    pub kv_lease: Duration,
    /// See [`DEFAULT_KV_PROMOTE_TIMEOUT`].
    pub kv_promote_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid address"),
            metrics_listen: None,
            data_dir: PathBuf::from("ctrl-data"),
            server_lease: DEFAULT_SERVER_LEASE,
            copysets_per_server: DEFAULT_COPYSETS_PER_SERVER,
            check_interval: DEFAULT_CHECK_INTERVAL,
            mount_lease: DEFAULT_MOUNT_LEASE,
            kv_lease: DEFAULT_KV_LEASE,
            kv_promote_timeout: DEFAULT_KV_PROMOTE_TIMEOUT,
        }
    }
}

impl Config {
    /// Path of the redb file inside `data_dir`.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("ctrl.redb")
    }

    /// Rejects values the service cannot work with.
    ///
    /// # Errors
    /// A zero lease, check interval, promote timeout or copysets-per-server;
    /// a kv lease under 100 ms.
    pub fn validate(&self) -> Result<(), String> {
        if self.server_lease.is_zero() {
            return Err("server_lease must be > 0".into());
        }
        if self.check_interval.is_zero() {
            return Err("check_interval must be > 0".into());
        }
        if self.mount_lease.is_zero() {
            return Err("mount_lease must be > 0".into());
        }
        if self.kv_lease < Duration::from_millis(100) {
            return Err("kv_lease must be >= 100ms".into());
        }
        if self.kv_promote_timeout.is_zero() {
            return Err("kv_promote_timeout must be > 0".into());
        }
        if self.copysets_per_server == 0 {
            return Err("copysets_per_server must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_production_sized() {
        let c = Config::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.server_lease, Duration::from_secs(10));
        assert_eq!(c.db_path(), PathBuf::from("ctrl-data/ctrl.redb"));
    }

    #[test]
    fn zero_values_are_rejected() {
        let c = Config {
            copysets_per_server: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            server_lease: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
