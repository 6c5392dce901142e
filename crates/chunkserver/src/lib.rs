//! pikafs chunkserver: hosts copyset replicas (raft groups of 3) and their
//! chunk data.
//!
//! Callers: the `pikafs chunkserver` subcommand calls [`run`]; volume
//! clients and peer chunkservers talk to it over the data-path protocol of
//! `pikafs_proto::msg`; ctrl drives it through heartbeat answers.
//!
//! Structure (see `docs/chunkserver.md`):
//!
//! - [`raftstore`]: ONE thread owns every copyset's `raft::RawNode` and
//!   state machine, and group-commits all their logs with one `fdatasync`
//!   of the shared [`wal`] per iteration;
//! - [`server`]: tokio tasks for client and peer connections, talking to the
//!   loop through the bounded [`inbox`] (full → `Busy`); they and the
//!   transport run on a data-path runtime of [`DATA_PATH_WORKERS`] worker(s)
//!   owned by [`run`], not on the caller's runtime;
//! - [`transport`]: one outgoing connection per peer server, raft
//!   messages batched per destination;
//! - [`sockout`]: socket output the raft loop writes into directly while
//!   the socket is idle (raft traffic, write answers), else queued to the
//!   socket's writer task: no runtime wake-up just to forward a message;
//! - [`chunk`]: chunk files with a CRC32C per 4 KiB sector;
//! - [`checkpoint`]: periodic durable state that lets the WAL be truncated,
//!   written by a checkpoint thread from state the loop captured;
//! - [`snapshot`]: new replicas copy chunk files from the leader;
//! - [`heartbeat`]: registration and heartbeats to ctrl.
//!
//! Invariants:
//!
//! - a write is acknowledged only after its entry is committed (fsynced on a
//!   majority) and applied; a failed WAL fsync or chunk IO error during apply
//!   stops the server (`run` returns an error) instead of acknowledging more;
//! - a write whose epoch is older than the newest the copyset knows for the
//!   volume is rejected with `StaleEpoch`, on the proposal fast path and
//!   again, deterministically, at apply;
//! - reads verify the CRC of every sector they touch and never return bytes
//!   that fail it; a leader read repairs a bad sector from a replica whose
//!   copy matches the CRC the leader expects, else answers `Corrupt`;
//! - reads are linearizable through a leader lease (raft `LeaseBased` read
//!   index with `check_quorum`), which assumes clock drift between servers
//!   is small against the election timeout (10 ticks).

// Generated protobuf structs (raft's eraftpb) are built field by field, as
// raft-rs itself does.
#![allow(clippy::field_reassign_with_default)]

pub mod checkpoint;
pub mod chunk;
pub mod config;
pub mod copyset;
pub mod error;
pub mod heartbeat;
pub mod inbox;
pub mod logger;
pub mod metrics;
pub mod raftlog;
pub mod raftstore;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod sockout;
pub mod transport;
pub mod wal;

#[cfg(test)]
mod cluster_tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Worker threads of the data-path runtime.
pub const DATA_PATH_WORKERS: usize = 1;
pub use shared::Shared;

/// Runs a chunkserver until `shutdown` is cancelled (then stops cleanly:
/// stops accepting, lets the raft loop finish its iteration and fsync, and
/// writes a final checkpoint) or until a fatal error.
///
/// # Errors
/// Bad configuration, unusable data directory or address, a malformed
/// on-disk state, or a fatal IO error in the raft loop (a restart replays the
/// WAL).
///
/// # Cancel safety
/// Dropping the future leaves the raft thread running until the process
/// exits; cancel `shutdown` instead.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    if let Some(addr) = config.metrics_listen {
        let bound = pikafs_proto::metrics_http::serve(addr, Arc::new(registry))
            .await
            .with_context(|| format!("bind metrics endpoint {addr}"))?;
        tracing::info!(%bound, "metrics endpoint up");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind data-path listener {}", config.listen))?;
    let local = listener.local_addr().context("read listener address")?;
    let advertised = local.to_string();

    let me = match heartbeat::load_server_id(&config.data_dir).context("load server id")? {
        Some(id) => id,
        None => {
            let cap = heartbeat::capacity(config.capacity_bytes, &config.data_dir);
            let Some(id) = heartbeat::register(&config.ctrl, &advertised, cap, &shutdown).await
            else {
                return Ok(());
            };
            heartbeat::store_server_id(&config.data_dir, id).context("persist server id")?;
            id
        }
    };
    tracing::info!(server_id = me, addr = %advertised, "chunkserver starting");

    let shared = Arc::new(Shared::new(
        me,
        config.data_dir.clone(),
        config.capacity_bytes,
        metrics.clone(),
    ));
    // The data path (client and peer connections, raft transport) gets a
    // runtime of its own with one worker: on a small machine shared by
    // several servers, a second worker mostly costs wakeups (work stealing,
    // eventfd writes, epoll_wait returns) rather than adding throughput.
    // Chunk reads still run on its blocking pool.
    let io_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(DATA_PATH_WORKERS)
        .thread_name("cs-io")
        .enable_all()
        .build()
        .context("build data-path runtime")?;
    let listener = {
        let std_listener = listener.into_std().context("detach data-path listener")?;
        let _in_io_rt = io_rt.enter();
        TcpListener::from_std(std_listener).context("attach data-path listener")?
    };
    let (inbox, mut rx) = inbox::inbox(metrics.inbox_depth.clone());
    rx.set_spin(config.idle_spin);
    let stop = shutdown.child_token();
    let loop_cfg = raftstore::LoopConfig {
        tick: config.raft_tick,
        checkpoint_wal_bytes: config.checkpoint_wal_bytes,
    };
    let store = {
        let (shared, inbox, stop) = (shared.clone(), inbox.clone(), stop.clone());
        let rt = io_rt.handle().clone();
        tokio::task::spawn_blocking(move || {
            raftstore::RaftStore::open(shared, loop_cfg, rx, inbox, rt, stop)
        })
        .await
        .context("join recovery task")?
        .context("recover copysets from checkpoint and wal")?
    };
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raft-loop".into())
        .spawn(move || {
            let _ = done_tx.send(store.run());
        })
        .context("spawn raft loop thread")?;

    let tracker = TaskTracker::new();
    tracker.spawn_on(
        server::serve(
            listener,
            server::ServerCtx {
                shared: shared.clone(),
                inbox: inbox.clone(),
            },
            stop.clone(),
            tracker.clone(),
        ),
        io_rt.handle(),
    );
    tracker.spawn(heartbeat::run(
        heartbeat::HeartbeatConfig {
            endpoint: config.ctrl.clone(),
            addr: advertised,
            interval: config.heartbeat_interval,
            capacity_bytes: config.capacity_bytes,
        },
        shared.clone(),
        inbox.clone(),
        stop.clone(),
    ));

    let result = tokio::select! {
        r = &mut done_rx => r,
        _ = shutdown.cancelled() => {
            tracing::info!("chunkserver stopping");
            stop.cancel();
            let inbox = inbox.clone();
            let _ = tokio::task::spawn_blocking(move || inbox.send_blocking(inbox::InboxMsg::Shutdown)).await;
            done_rx.await
        }
    };
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::info!("some connection tasks did not stop in time");
    }
    io_rt.shutdown_background();
    tracing::info!("chunkserver stopped");
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("raft loop failed"),
        Err(_) => Err(anyhow!("raft loop thread panicked")),
    }
}
