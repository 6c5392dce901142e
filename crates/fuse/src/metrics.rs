//! Prometheus metrics of one FUSE mount (`pikafs_fuse_*`).

use std::sync::atomic::AtomicU64;

use pikafs_proto::metrics_http::latency_buckets;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The metrics of one mount; they count whether or not registered. Cheap
/// to clone (every metric is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Latency of a FUSE read request in the fs.
    pub read_seconds: Histogram,
    /// Latency of a FUSE write request in the fs.
    pub write_seconds: Histogram,
    /// Latency of fsync (a journal commit on RW).
    pub fsync_seconds: Histogram,
    pub read_bytes_total: Counter<u64, AtomicU64>,
    pub write_bytes_total: Counter<u64, AtomicU64>,
    /// Requests answered with an error from the fs (not ENOENT lookups).
    pub errors_total: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            read_seconds: Histogram::new(latency_buckets()),
            write_seconds: Histogram::new(latency_buckets()),
            fsync_seconds: Histogram::new(latency_buckets()),
            read_bytes_total: Counter::default(),
            write_bytes_total: Counter::default(),
            errors_total: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics in `registry` with the `pikafs_fuse_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pikafs_fuse");
        r.register(
            "read_seconds",
            "FUSE read latency",
            self.read_seconds.clone(),
        );
        r.register(
            "write_seconds",
            "FUSE write latency",
            self.write_seconds.clone(),
        );
        r.register(
            "fsync_seconds",
            "FUSE fsync latency",
            self.fsync_seconds.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes read through FUSE",
            self.read_bytes_total.clone(),
        );
        r.register(
            "write_bytes",
            "Bytes written through FUSE",
            self.write_bytes_total.clone(),
        );
        r.register(
            "errors",
            "FUSE read, write and fsync requests that failed in the fs",
            self.errors_total.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_with_prefix() {
        let m = Metrics::default();
        m.read_bytes_total.inc_by(7);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("pikafs_fuse_read_bytes_total 7"), "{out}");
        assert!(out.contains("pikafs_fuse_fsync_seconds_bucket"), "{out}");
    }
}
