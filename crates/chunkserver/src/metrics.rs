//! Prometheus metrics of the chunkserver (`pikafs_chunkserver_*`).

use std::sync::atomic::AtomicU64;

use pikafs_proto::metrics_http::latency_buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of per-operation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// All metrics; cheap to clone (every metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub wal_fsync_seconds: Histogram,
    pub wal_write_seconds: Histogram,
    pub wal_batch_records: Histogram,
    pub wal_bytes_total: Counter<u64, AtomicU64>,
    pub crc_errors_total: Counter<u64, AtomicU64>,
    pub crc_repairs_total: Counter<u64, AtomicU64>,
    pub requests_total: Family<OpLabel, Counter<u64, AtomicU64>>,
    pub request_seconds: Family<OpLabel, Histogram>,
    pub inbox_depth: Gauge,
    pub checkpoints_total: Counter<u64, AtomicU64>,
    pub checkpoint_seconds: Histogram,
    pub raft_messages_dropped_total: Counter<u64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` with the
    /// `pikafs_chunkserver_` prefix.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            wal_fsync_seconds: Histogram::new(latency_buckets()),
            wal_write_seconds: Histogram::new(latency_buckets()),
            wal_batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            wal_bytes_total: Counter::default(),
            crc_errors_total: Counter::default(),
            crc_repairs_total: Counter::default(),
            requests_total: Family::default(),
            request_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            inbox_depth: Gauge::default(),
            checkpoints_total: Counter::default(),
            checkpoint_seconds: Histogram::new(latency_buckets()),
            raft_messages_dropped_total: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("pikafs_chunkserver");
        r.register(
            "wal_fsync_seconds",
            "WAL fdatasync latency",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "wal_write_seconds",
            "WAL batch write latency (with direct IO: until the device has the data)",
            m.wal_write_seconds.clone(),
        );
        r.register(
            "wal_batch_records",
            "WAL records per group commit",
            m.wal_batch_records.clone(),
        );
        r.register(
            "wal_bytes",
            "Bytes appended to the WAL",
            m.wal_bytes_total.clone(),
        );
        r.register(
            "crc_repairs",
            "Corrupt sectors repaired from another replica",
            m.crc_repairs_total.clone(),
        );
        r.register(
            "crc_errors",
            "Sectors that failed their CRC check",
            m.crc_errors_total.clone(),
        );
        r.register(
            "requests",
            "Data-path requests by op",
            m.requests_total.clone(),
        );
        r.register(
            "request_seconds",
            "Data-path request latency by op",
            m.request_seconds.clone(),
        );
        r.register(
            "inbox_depth",
            "Messages waiting in the raft loop inbox",
            m.inbox_depth.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints written",
            m.checkpoints_total.clone(),
        );
        r.register(
            "checkpoint_seconds",
            "Time the raft loop spent in a checkpoint (chunk syncs included)",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "raft_messages_dropped",
            "Raft messages dropped because a peer queue was full or down",
            m.raft_messages_dropped_total.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests.
    pub fn unregistered() -> Metrics {
        Metrics::new(&mut Registry::default())
    }
}
