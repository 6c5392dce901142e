//! Prometheus metrics of the kv server (`pikafs_kv_*`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CmdLabels {
    /// The command name (lower case), or `unknown`: bounded by the table.
    pub cmd: String,
}

/// The kv server's metrics; cheap to clone (all handles are Arcs).
#[derive(Clone)]
pub struct Metrics {
    pub commands: Family<CmdLabels, Counter>,
    pub command_errors: Family<CmdLabels, Counter>,
    pub command_seconds: Histogram,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub protocol_errors: Counter,
    pub wal_syncs: Counter,
    pub wal_sync_seconds: Histogram,
    pub durable_wait_seconds: Histogram,
    pub catch_ups: Counter,
    pub catch_up_errors: Counter,
    pub catch_up_seconds: Histogram,
    pub expired_keys: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let buckets = || Histogram::new(pikafs_proto::metrics_http::latency_buckets());
        let m = Metrics {
            commands: Family::default(),
            command_errors: Family::default(),
            command_seconds: buckets(),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            protocol_errors: Counter::default(),
            wal_syncs: Counter::default(),
            wal_sync_seconds: buckets(),
            durable_wait_seconds: buckets(),
            catch_ups: Counter::default(),
            catch_up_errors: Counter::default(),
            catch_up_seconds: buckets(),
            expired_keys: Counter::default(),
        };
        reg.register(
            "pikafs_kv_commands",
            "Commands executed, by name",
            m.commands.clone(),
        );
        reg.register(
            "pikafs_kv_command_errors",
            "Commands answered with an error, by name",
            m.command_errors.clone(),
        );
        reg.register(
            "pikafs_kv_command_duration_seconds",
            "Command execution time (excluding the durability wait)",
            m.command_seconds.clone(),
        );
        reg.register(
            "pikafs_kv_connections",
            "Open client connections",
            m.connections.clone(),
        );
        reg.register(
            "pikafs_kv_connections_accepted",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        reg.register(
            "pikafs_kv_protocol_errors",
            "Connections closed for malformed RESP",
            m.protocol_errors.clone(),
        );
        reg.register(
            "pikafs_kv_wal_syncs",
            "Group-commit WAL syncs",
            m.wal_syncs.clone(),
        );
        reg.register(
            "pikafs_kv_wal_sync_duration_seconds",
            "Duration of one WAL sync (flush_wal(true))",
            m.wal_sync_seconds.clone(),
        );
        reg.register(
            "pikafs_kv_durable_wait_seconds",
            "Time a pipelined batch's replies waited for the WAL sync",
            m.durable_wait_seconds.clone(),
        );
        reg.register(
            "pikafs_kv_catch_ups",
            "RO catch-ups with the primary",
            m.catch_ups.clone(),
        );
        reg.register(
            "pikafs_kv_catch_up_errors",
            "Failed RO catch-ups",
            m.catch_up_errors.clone(),
        );
        reg.register(
            "pikafs_kv_catch_up_duration_seconds",
            "RO: time of one catch-up with the primary (try_catch_up_with_primary)",
            m.catch_up_seconds.clone(),
        );
        reg.register(
            "pikafs_kv_expired_keys",
            "Keys removed by active expiry",
            m.expired_keys.clone(),
        );
        m
    }

    /// An observer for [`crate::wal::WalSync::set_observer`].
    pub fn wal_observer(&self) -> Box<dyn Fn(Duration) + Send> {
        let (n, h) = (self.wal_syncs.clone(), self.wal_sync_seconds.clone());
        Box::new(move |d| {
            n.inc();
            h.observe(d.as_secs_f64());
        })
    }
}

/// A registry with the kv metrics in it, for `--metrics`.
pub fn registry() -> (Arc<Registry>, Metrics) {
    let mut reg = Registry::default();
    let m = Metrics::new(&mut reg);
    (Arc::new(reg), m)
}
