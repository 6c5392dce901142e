//! pikafs-ctrl: the control plane of pikafs.
//!
//! Role: keeps the cluster map (chunkservers, copysets and their target
//! members, volumes with their epochs and copyset lists) in redb, takes
//! chunkserver heartbeats, places copysets, replaces the replicas of dead
//! servers through raft membership changes driven by the copyset leaders,
//! and bumps volume epochs for fencing. It keeps the fs mount leases
//! ([`mounts`]) and the kv nodes' leases, fencing a kv writer whose lease
//! lapsed and promoting an RO node ([`kvnodes`], `docs/failover.md`). It
//! serves the `Ctrl` gRPC service of `crates/proto/proto/ctrl.proto`.
//!
//! Callers: the `pikafs ctrl` subcommand calls [`run`]; chunkservers call
//! `RegisterServer`/`Heartbeat`; the volume client and the CLI call the
//! volume RPCs, usually through [`connect`]; fs mounts call the mount RPCs;
//! kv nodes call `KvHeartbeat`, proxies `KvTopology`, `pikafs kv promote`
//! `KvPromote`.
//!
//! Invariants:
//! - every mutation is committed durably to `data_dir/ctrl.redb` before the
//!   RPC answers, and the in-memory map never runs ahead of the disk;
//! - a volume's copyset list never changes after creation, so chunk `i`
//!   lives on `copysets[i % len]` forever and the client routes without ctrl;
//! - ids (server, copyset, volume) are never reused and never 0;
//! - a copyset's target members change one replacement at a time, and only
//!   once the leader reports voters equal to the previous target;
//! - a replica is told to DESTROY only after the leader stopped counting it
//!   as a voter;
//! - after a restart every known server gets a full lease of grace;
//! - kv nodes (see [`kvnodes`]): at most one holds the RW seat, and a node
//!   loses it only after ctrl fenced it (volume epoch bumped durably, its
//!   fs mount lease dropped); only then is another node told to promote.
//!
//! ctrl is off the IO path: IO goes on while it is down.
//! See `docs/ctrl.md` for tables, record formats and the membership state
//! machine.

mod cluster;
pub mod config;
pub mod error;
pub mod kvnodes;
mod metrics;
pub mod mounts;
mod placement;
mod record;
mod service;
mod store;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tracing::{error, info};

pub use config::Config;
pub use error::CtrlError;
pub use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::service::CtrlService;

/// Timeout to establish a connection in [`connect`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of each request made through a [`connect`]ed client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to ctrl at `endpoint` (`host:port` or `http://host:port`).
///
/// # Errors
/// A malformed endpoint, or no connection within [`CONNECT_TIMEOUT`].
///
/// # Cancel safety
/// Cancel safe: dropping the future drops the half-open connection.
pub async fn connect(endpoint: &str) -> Result<CtrlClient<Channel>, tonic::transport::Error> {
    let uri = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    };
    let channel = Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await?;
    Ok(CtrlClient::new(channel))
}

/// Runs ctrl until `shutdown` is cancelled: binds `config.listen`, then as
/// [`run_with_listener`].
///
/// # Errors
/// Invalid config, the address cannot be bound, the store cannot be opened.
///
/// # Cancel safety
/// Not cancel safe; stop it with `shutdown` instead.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind ctrl gRPC address {}", config.listen))?;
    run_with_listener(config, listener, shutdown).await
}

/// Runs ctrl on an already bound listener (tests bind port 0 and read the
/// address first); `config.listen` is ignored. Opens the store, starts the
/// metrics endpoint and the check loop, serves gRPC, and on cancel stops
/// gracefully and returns `Ok`.
///
/// # Errors
/// Invalid config, the data directory or store cannot be opened, the
/// metrics address cannot be bound, the gRPC server fails.
///
/// # Cancel safety
/// Not cancel safe; stop it with `shutdown` instead.
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid ctrl config: {e}"))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let path = config.db_path();
    let (store, snap) =
        store::Store::open(&path).with_context(|| format!("open store {}", path.display()))?;
    info!(
        servers = snap.servers.len(),
        copysets = snap.copysets.len(),
        volumes = snap.volumes.len(),
        path = %path.display(),
        "ctrl state loaded"
    );

    let metrics = Metrics::default();
    if let Some(addr) = config.metrics_listen {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let bound = pikafs_proto::metrics_http::serve(addr, Arc::new(registry))
            .await
            .with_context(|| format!("bind metrics address {addr}"))?;
        info!(%bound, "metrics endpoint up");
    }

    let cluster = Arc::new(Mutex::new(Cluster::new(
        store,
        snap,
        config.server_lease,
        config.copysets_per_server,
        metrics.clone(),
        Instant::now(),
    )));
    let service = CtrlService::new(
        cluster.clone(),
        config.mount_lease,
        config.kv_lease,
        config.kv_promote_timeout,
        metrics,
    );

    let stop_checks = shutdown.child_token();
    let checker = tokio::spawn(check_loop(
        cluster.clone(),
        config.check_interval,
        stop_checks.clone(),
    ));
    let kv_checker = tokio::spawn(kv_check_loop(service.clone(), stop_checks.clone()));

    let local = listener.local_addr().context("read gRPC listen address")?;
    info!(%local, "ctrl serving");
    let served = tonic::transport::Server::builder()
        .add_service(pikafs_proto::ctrlpb::ctrl_server::CtrlServer::new(service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await;
    stop_checks.cancel();
    if let Err(e) = checker.await {
        error!(error = %e, "ctrl check loop panicked");
    }
    if let Err(e) = kv_checker.await {
        error!(error = %e, "ctrl kv check loop panicked");
    }
    served.context("serve ctrl gRPC")?;
    info!("ctrl stopped");
    Ok(())
}

/// Period of the kv lease check: a lapsed writer is noticed within this
/// of its lease end, a small part of the failover budget.
const KV_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Expires kv leases (fencing and replacing a lapsed writer) until
/// cancelled.
async fn kv_check_loop(service: CtrlService, stop: CancellationToken) {
    let mut tick = tokio::time::interval(KV_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = service.clone();
        // Fencing commits to redb: keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || s.kv_check(Instant::now())).await {
            error!(error = %e, "kv check panicked");
        }
    }
}

/// Runs [`Cluster::check`] every `interval` until cancelled.
async fn check_loop(cluster: Arc<Mutex<Cluster>>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let res = cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(Instant::now());
        if let Err(e) = res {
            // The next tick retries; a store failure needs a human.
            error!(error = %e, "ctrl check failed");
        }
    }
}
