//! Prometheus metrics of the proxy (`pikafs_proxy_*`).
//!
//! Label values are fixed sets (routes) or node addresses from the
//! topology, so cardinality stays bounded. Per-route counters are resolved
//! once, so the request path does no label lookups.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `rw`, `ro`, `split`, `global`, `local`, `ryw_fallback`, `retry_rw`.
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// Backend address.
    pub node: String,
}

/// The proxy's metrics; cheap to clone (all handles are Arcs).
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RouteLabels, Counter>,
    pub rw: Counter,
    pub ro: Counter,
    pub split: Counter,
    pub global: Counter,
    pub local: Counter,
    pub ryw_fallback: Counter,
    pub retry_rw: Counter,
    pub backend_errors: Family<NodeLabels, Counter>,
    pub topology_generation: Gauge,
    pub clients: Gauge,
    pub clients_total: Counter,
    pub protocol_errors: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Metrics {
        let requests: Family<RouteLabels, Counter> = Family::default();
        let r = |route| requests.get_or_create(&RouteLabels { route }).clone();
        let m = Metrics {
            rw: r("rw"),
            ro: r("ro"),
            split: r("split"),
            global: r("global"),
            local: r("local"),
            ryw_fallback: r("ryw_fallback"),
            retry_rw: r("retry_rw"),
            requests,
            backend_errors: Family::default(),
            topology_generation: Gauge::default(),
            clients: Gauge::default(),
            clients_total: Counter::default(),
            protocol_errors: Counter::default(),
        };
        reg.register(
            "pikafs_proxy_requests",
            "Client requests by route (rw, ro, split, global, local) and re-sends to the RW node (ryw_fallback, retry_rw)",
            m.requests.clone(),
        );
        reg.register(
            "pikafs_proxy_backend_errors",
            "Backend connections that failed (connect, read or write), by node",
            m.backend_errors.clone(),
        );
        reg.register(
            "pikafs_proxy_topology_generation",
            "Generation of the topology in use",
            m.topology_generation.clone(),
        );
        reg.register(
            "pikafs_proxy_clients",
            "Connected clients",
            m.clients.clone(),
        );
        reg.register(
            "pikafs_proxy_clients_accepted",
            "Client connections accepted",
            m.clients_total.clone(),
        );
        reg.register(
            "pikafs_proxy_protocol_errors",
            "Client connections closed for malformed RESP",
            m.protocol_errors.clone(),
        );
        m
    }

    /// Counts a failed backend connection to `addr`.
    pub fn backend_error(&self, addr: &str) {
        self.backend_errors
            .get_or_create(&NodeLabels {
                node: addr.to_string(),
            })
            .inc();
    }
}
