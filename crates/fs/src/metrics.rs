//! Prometheus metrics of one mount (`pikafs_fs_*`).

use std::sync::atomic::AtomicU64;

use pikafs_proto::metrics_http::latency_buckets;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The metrics of one mount. They count from mount time whether or not
/// they are registered; cheap to clone (every metric is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Latency of a journal commit (transaction + header writes, plus a
    /// checkpoint when one is due).
    pub commit_seconds: Histogram,
    pub commits_total: Counter<u64, AtomicU64>,
    pub journal_bytes_total: Counter<u64, AtomicU64>,
    pub checkpoints_total: Counter<u64, AtomicU64>,
    /// RW: commits whose data went out with the header under a CRC guard.
    pub guarded_commits_total: Counter<u64, AtomicU64>,
    /// RW: headers rewritten to seal a guarded transaction before its
    /// ranges were written again.
    pub seals_total: Counter<u64, AtomicU64>,
    /// RW: commits whose small data rode in the journal ring (`Journaled`).
    pub journaled_commits_total: Counter<u64, AtomicU64>,
    /// RW: journaled bytes written to their home blocks (before a
    /// checkpoint; adjacent ranges merged).
    pub homed_bytes_total: Counter<u64, AtomicU64>,
    /// Journaled bytes held in memory until they are known home (RW: the
    /// next checkpoint writes them; RO: the overlay reads see).
    pub unhomed_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// RO mounts that had to reload from a checkpoint (lagged a ring).
    pub ro_reloads_total: Counter<u64, AtomicU64>,
    /// Committed (RW) or applied (RO) journal lsn.
    pub lsn: Gauge<u64, AtomicU64>,
    /// RW: commit notifications written to RO subscribers.
    pub notify_pushes_total: Counter<u64, AtomicU64>,
    /// RW: RO mounts subscribed to commit notifications.
    pub notify_subscribers: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// RO: catch-ups woken by a notification from the writer.
    pub ro_notified_catch_ups_total: Counter<u64, AtomicU64>,
    /// RO: catch-ups run by the fallback timer.
    pub ro_timer_catch_ups_total: Counter<u64, AtomicU64>,
    /// Lease renewals at ctrl that failed or answered `ok = false`.
    pub lease_renew_failures_total: Counter<u64, AtomicU64>,
    /// RO: lease lapses that invalidated every open file handle.
    pub ro_lease_lapses_total: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            commit_seconds: Histogram::new(latency_buckets()),
            commits_total: Counter::default(),
            journal_bytes_total: Counter::default(),
            checkpoints_total: Counter::default(),
            guarded_commits_total: Counter::default(),
            seals_total: Counter::default(),
            journaled_commits_total: Counter::default(),
            homed_bytes_total: Counter::default(),
            unhomed_bytes: Gauge::default(),
            ro_reloads_total: Counter::default(),
            lsn: Gauge::default(),
            notify_pushes_total: Counter::default(),
            notify_subscribers: Gauge::default(),
            ro_notified_catch_ups_total: Counter::default(),
            ro_timer_catch_ups_total: Counter::default(),
            lease_renew_failures_total: Counter::default(),
            ro_lease_lapses_total: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics in `registry` with the `pikafs_fs_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pikafs_fs");
        r.register(
            "commit_seconds",
            "Journal commit latency",
            self.commit_seconds.clone(),
        );
        r.register(
            "commits",
            "Journal transactions committed",
            self.commits_total.clone(),
        );
        r.register(
            "journal_bytes",
            "Bytes written to the journal ring",
            self.journal_bytes_total.clone(),
        );
        r.register(
            "checkpoints",
            "Metadata checkpoints written",
            self.checkpoints_total.clone(),
        );
        r.register(
            "guarded_commits",
            "Commits whose small data writes went out with the header, CRC-guarded",
            self.guarded_commits_total.clone(),
        );
        r.register(
            "seals",
            "Headers rewritten to seal a guarded transaction",
            self.seals_total.clone(),
        );
        r.register(
            "journaled_commits",
            "Commits whose small data writes rode in the journal ring",
            self.journaled_commits_total.clone(),
        );
        r.register(
            "homed_bytes",
            "Journaled bytes written to their home blocks before a checkpoint",
            self.homed_bytes_total.clone(),
        );
        r.register(
            "unhomed_bytes",
            "Journaled bytes held in memory until known home",
            self.unhomed_bytes.clone(),
        );
        r.register(
            "ro_reloads",
            "RO reloads from a checkpoint after lagging the ring",
            self.ro_reloads_total.clone(),
        );
        r.register(
            "lsn",
            "Committed (RW) or applied (RO) journal position",
            self.lsn.clone(),
        );
        r.register(
            "notify_pushes",
            "Commit notifications written to RO subscribers (RW)",
            self.notify_pushes_total.clone(),
        );
        r.register(
            "notify_subscribers",
            "RO mounts subscribed to commit notifications (RW)",
            self.notify_subscribers.clone(),
        );
        r.register(
            "ro_notified_catch_ups",
            "RO catch-ups woken by the writer's notification",
            self.ro_notified_catch_ups_total.clone(),
        );
        r.register(
            "ro_timer_catch_ups",
            "RO catch-ups run by the fallback timer",
            self.ro_timer_catch_ups_total.clone(),
        );
        r.register(
            "lease_renew_failures",
            "Mount lease renewals that failed or were refused",
            self.lease_renew_failures_total.clone(),
        );
        r.register(
            "ro_lease_lapses",
            "RO mount lease lapses that invalidated every open file handle",
            self.ro_lease_lapses_total.clone(),
        );
    }
}
