//! Test harness that drives the real `pikafs` binary.
//!
//! Integration tests start `pikafs ctrl` and `pikafs chunkserver` as child
//! processes on 127.0.0.1, each with its own temporary data directory and
//! ports nobody else in this test process was given. Every process is
//! tracked by PID and SIGKILLed when its handle drops, so a failing test
//! leaves nothing running. Every wait is bounded.
//!
//! Fault injection is by signal: [`Cluster::kill_server`] (SIGKILL),
//! [`Cluster::pause_server`] / [`Cluster::resume_server`] (SIGSTOP/SIGCONT)
//! and restarts on the same data directory.

mod cluster;
mod kv;
mod process;
mod raw;

pub use cluster::{Cluster, ClusterOptions};
pub use kv::spawn_kv;
pub use process::{free_port, pikafs_bin, Proc};
pub use raw::RawConn;

use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some`, or fails after `limit`.
///
/// # Errors
/// `what` did not happen within `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
