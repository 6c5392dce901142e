//! `pikafs proxy`: run a RESP proxy in front of a volume's kv nodes until
//! SIGINT/SIGTERM. All behaviour lives in `pikafs_proxy`; this only maps
//! flags to a [`pikafs_proxy::ProxyConfig`] and a topology source.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use pikafs_proxy::{Proxy, ProxyConfig, Topology, TopologySource};
use tokio_util::sync::CancellationToken;

use crate::units::parse_duration;

/// Flags of `pikafs proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// RESP listen address.
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: SocketAddr,
    /// Follow the kv nodes of this volume from ctrl (`--ctrl`).
    #[arg(long, conflicts_with_all = ["rw", "ro"])]
    volume: Option<String>,
    /// Static topology: the RW kv node's address.
    #[arg(long)]
    rw: Option<String>,
    /// Static topology: an RO kv node's address (repeat for more).
    #[arg(long)]
    ro: Vec<String>,
    /// Turn read-your-writes on for every connection (else per connection
    /// with `CLIENT READYOURWRITES ON`).
    #[arg(long)]
    read_your_writes: bool,
    /// How long a read-your-writes read waits for its RO node before the
    /// RW node answers it.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    ryw_wait: Duration,
    /// How long a failed RO node is skipped before it is tried again.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    down_retry: Duration,
    /// How long a read waits for an RO node's reply before the node is
    /// taken for hung: the read goes to the RW node instead.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    ro_timeout: Duration,
    /// How often the topology is polled from ctrl (with --volume).
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    topology_poll: Duration,
    /// Connections per (RO node, db) shared by all clients for plain reads
    /// (clients without AUTH or read-your-writes); 0 = one set per client.
    #[arg(long, default_value_t = pikafs_proxy::config::DEFAULT_SHARED_RO_CONNS)]
    shared_ro_conns: usize,
    /// Accept `PROXY TOPOLOGY SET` from clients (static --rw/--ro topology
    /// only). Any client may then redirect the proxy: use on trusted
    /// networks, e.g. for tests and manual reconfiguration.
    #[arg(long)]
    allow_topology_set: bool,
    /// Prometheus metrics address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

pub async fn run(args: ProxyArgs, ctrl: &str) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let source = match &args.volume {
        Some(v) => TopologySource::from_ctrl(
            ctrl.to_string(),
            v.clone(),
            args.topology_poll,
            cancel.clone(),
        ),
        None => {
            anyhow::ensure!(
                args.rw.is_some() || !args.ro.is_empty(),
                "give --volume V (topology from ctrl) or a static topology (--rw ADDR [--ro ADDR]...)"
            );
            TopologySource::fixed(Topology::from_addrs(1, args.rw.as_deref(), &args.ro))
        }
    };
    let cfg = ProxyConfig {
        listen: args.listen,
        read_your_writes: args.read_your_writes,
        ryw_wait: args.ryw_wait,
        down_retry: args.down_retry,
        ro_reply_timeout: args.ro_timeout,
        metrics: args.metrics,
        shared_ro_conns: args.shared_ro_conns,
        allow_topology_set: args.allow_topology_set,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::bind(cfg, source).await.context("start proxy")?;
    let run = tokio::spawn(proxy.run(cancel.clone()));
    let sig = crate::server::shutdown_signal().await?;
    tracing::info!("{sig}: stopping the proxy");
    cancel.cancel();
    run.await.context("proxy task")?.context("run proxy")?;
    Ok(())
}
