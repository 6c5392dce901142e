//! Prometheus metrics of ctrl (`pikafs_ctrl_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label set of `pikafs_ctrl_servers`: `state` = `up` | `down`.
pub type StateLabel = Vec<(&'static str, &'static str)>;

/// Handles to every ctrl metric; cheap to clone (shared atomics).
#[derive(Clone, Default)]
pub struct Metrics {
    /// `pikafs_ctrl_servers{state}`: registered servers by liveness.
    pub servers: Family<StateLabel, Gauge>,
    /// `pikafs_ctrl_copysets_degraded`: copysets not healthy at the last check.
    pub copysets_degraded: Gauge,
    /// `pikafs_ctrl_heartbeats_total`.
    pub heartbeats: Counter,
    /// `pikafs_ctrl_replacements_total`: dead members replaced in a copyset.
    pub replacements: Counter,
    /// `pikafs_ctrl_epoch_bumps_total`.
    pub epoch_bumps: Counter,
    /// `pikafs_ctrl_kv_fences_total`: kv writers fenced (lapse, zombie,
    /// failed promotion, step-down).
    pub kv_fences: Counter,
    /// `pikafs_ctrl_kv_promotions_total`: kv nodes promoted to RW.
    pub kv_promotions: Counter,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "pikafs_ctrl_servers",
            "Registered chunkservers by state",
            self.servers.clone(),
        );
        registry.register(
            "pikafs_ctrl_copysets_degraded",
            "Copysets without 3 voters equal to their members, all up, with a known leader",
            self.copysets_degraded.clone(),
        );
        registry.register(
            "pikafs_ctrl_heartbeats",
            "Heartbeats received from chunkservers",
            self.heartbeats.clone(),
        );
        registry.register(
            "pikafs_ctrl_replacements",
            "Dead copyset members replaced by another server",
            self.replacements.clone(),
        );
        registry.register(
            "pikafs_ctrl_epoch_bumps",
            "Volume epoch bumps",
            self.epoch_bumps.clone(),
        );
        registry.register(
            "pikafs_ctrl_kv_fences",
            "kv writers fenced: epoch bumped and fs mount lease dropped",
            self.kv_fences.clone(),
        );
        registry.register(
            "pikafs_ctrl_kv_promotions",
            "kv nodes promoted to the RW role",
            self.kv_promotions.clone(),
        );
    }

    pub fn set_servers(&self, up: usize, down: usize) {
        self.servers
            .get_or_create(&vec![("state", "up")])
            .set(up as i64);
        self.servers
            .get_or_create(&vec![("state", "down")])
            .set(down as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.set_servers(3, 1);
        m.heartbeats.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("pikafs_ctrl_servers{state=\"up\"} 3"), "{out}");
        assert!(
            out.contains("pikafs_ctrl_servers{state=\"down\"} 1"),
            "{out}"
        );
        assert!(out.contains("pikafs_ctrl_heartbeats_total 1"), "{out}");
        assert!(out.contains("pikafs_ctrl_replacements_total 0"), "{out}");
        assert!(out.contains("pikafs_ctrl_epoch_bumps_total 0"), "{out}");
        assert!(out.contains("pikafs_ctrl_copysets_degraded 0"), "{out}");
        assert!(out.contains("pikafs_ctrl_kv_fences_total 0"), "{out}");
        assert!(out.contains("pikafs_ctrl_kv_promotions_total 0"), "{out}");
    }
}
