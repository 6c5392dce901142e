//! `pikafs ctrl` and `pikafs chunkserver`: flags to `Config`, then `run`
//! until SIGTERM or SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::units::{parse_duration, parse_size};

/// Flags of `pikafs ctrl`.
#[derive(Debug, Args)]
pub struct CtrlArgs {
    /// gRPC address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory of ctrl's database; created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Prometheus endpoint address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Silence after which a chunkserver is down (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub server_lease: Option<Duration>,
    /// Replicas per server the placement aims for (default 6).
    #[arg(long)]
    pub copysets_per_server: Option<u32>,
    /// Period of the failure and placement check (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub check_interval: Option<Duration>,
    /// Lease of a file-system mount (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub mount_lease: Option<Duration>,
    /// Lease of a kv node; a writer silent this long is fenced and an RO
    /// node promoted (default 2s; nodes heartbeat every lease/4).
    #[arg(long, value_parser = parse_duration)]
    pub kv_lease: Option<Duration>,
    /// Time a promoted kv node gets to report RW before another is chosen
    /// (default 15s).
    #[arg(long, value_parser = parse_duration)]
    pub kv_promote_timeout: Option<Duration>,
}

/// Flags of `pikafs chunkserver` (ctrl comes from the global `--ctrl`).
#[derive(Debug, Args)]
pub struct ChunkserverArgs {
    /// Data-path address to listen on; advertised to ctrl.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory of the WAL and chunk files; created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Prometheus endpoint address.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Period of heartbeats to ctrl (default 1s).
    #[arg(long, value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Raft tick; elections take 10 ticks (default 100ms).
    #[arg(long, value_parser = parse_duration)]
    pub raft_tick: Option<Duration>,
    /// Capacity advertised to ctrl, e.g. 100GiB (default: the file system's size).
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// How long the raft loop polls for work before it sleeps: lower
    /// write latency for CPU (default 200us; 0 = sleep at once). The
    /// environment variable reaches the chunkservers a playground starts.
    #[arg(long, env = "PIKAFS_IDLE_SPIN", value_parser = parse_duration)]
    pub idle_spin: Option<Duration>,
}

impl CtrlArgs {
    pub fn config(&self) -> pikafs_ctrl::Config {
        let d = pikafs_ctrl::Config::default();
        pikafs_ctrl::Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            data_dir: self.data_dir.clone(),
            server_lease: self.server_lease.unwrap_or(d.server_lease),
            copysets_per_server: self.copysets_per_server.unwrap_or(d.copysets_per_server),
            check_interval: self.check_interval.unwrap_or(d.check_interval),
            mount_lease: self.mount_lease.unwrap_or(d.mount_lease),
            kv_lease: self.kv_lease.unwrap_or(d.kv_lease),
            kv_promote_timeout: self.kv_promote_timeout.unwrap_or(d.kv_promote_timeout),
        }
    }
}

impl ChunkserverArgs {
    pub fn config(&self, ctrl: &str) -> pikafs_chunkserver::Config {
        let d = pikafs_chunkserver::Config::default();
        pikafs_chunkserver::Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            data_dir: self.data_dir.clone(),
            ctrl: crate::cluster::normalize_url(ctrl),
            heartbeat_interval: self.heartbeat_interval.unwrap_or(d.heartbeat_interval),
            raft_tick: self.raft_tick.unwrap_or(d.raft_tick),
            capacity_bytes: self.capacity.unwrap_or(d.capacity_bytes),
            checkpoint_wal_bytes: d.checkpoint_wal_bytes,
            idle_spin: self.idle_spin.unwrap_or(d.idle_spin),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// # Errors
/// The signal handlers cannot be installed.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Runs a service until it ends by itself or a signal asks it to stop, in
/// which case its token is cancelled and its shutdown awaited.
async fn serve<F>(what: &str, run: impl FnOnce(CancellationToken) -> F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let token = CancellationToken::new();
    let mut task = tokio::spawn(run(token.clone()));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        r = &mut task => return r.with_context(|| format!("{what} task panicked"))?,
        s = &mut signal => info!(signal = s?, "stopping {what}"),
    }
    token.cancel();
    task.await
        .with_context(|| format!("{what} task panicked"))?
}

/// `pikafs ctrl`.
pub async fn run_ctrl(args: CtrlArgs) -> anyhow::Result<()> {
    let config = args.config();
    serve("ctrl", move |t| pikafs_ctrl::run(config, t)).await
}

/// `pikafs chunkserver`.
pub async fn run_chunkserver(args: ChunkserverArgs, ctrl: &str) -> anyhow::Result<()> {
    let config = args.config(ctrl);
    serve("chunkserver", move |t| pikafs_chunkserver::run(config, t)).await
}
