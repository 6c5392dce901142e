//! Shared helpers: a cluster with a formatted volume, mounts, waits.

use std::time::{Duration, Instant};

use pikafs_fs::{MkfsOptions, Mode, MountError, MountOptions, Mounted};
use pikafs_testkit::{Cluster, ClusterOptions};
use tokio::runtime::Runtime;

/// A cluster plus the runtime its clients live on. Tests are plain
/// `#[test]`s: the fs API blocks, so it runs on the test thread.
pub struct Env {
    pub rt: Runtime,
    pub cluster: Cluster,
}

impl Env {
    /// Starts a 3-server cluster with `mount_lease` and creates volume
    /// `vol` of `size`, formatted with `mkfs` unless `None`.
    pub fn start(mount_lease: Duration, vol: &str, size: &str, mkfs: Option<MkfsOptions>) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cluster = rt
            .block_on(Cluster::start(ClusterOptions {
                mount_lease: Some(mount_lease),
                ..ClusterOptions::default()
            }))
            .expect("cluster starts");
        rt.block_on(cluster.create_volume(vol, size))
            .expect("volume created");
        let env = Env { rt, cluster };
        if let Some(mk) = mkfs {
            pikafs_fs::format(&env.opts(vol, Mode::Rw), &mk, false, env.rt.handle()).expect("mkfs");
        }
        env
    }

    pub fn opts(&self, vol: &str, mode: Mode) -> MountOptions {
        MountOptions::new(&self.cluster.ctrl_url(), vol, mode)
    }

    pub fn mount(&self, vol: &str, mode: Mode) -> Mounted {
        Mounted::open(self.opts(vol, mode), self.rt.handle().clone())
            .unwrap_or_else(|e| panic!("mount {vol} {mode:?}: {e}"))
    }

    /// Mounts RW, retrying while an earlier writer's lease has not lapsed.
    pub fn mount_rw_waiting(&self, vol: &str, limit: Duration) -> Mounted {
        let deadline = Instant::now() + limit;
        loop {
            match Mounted::open(self.opts(vol, Mode::Rw), self.rt.handle().clone()) {
                Ok(m) => return m,
                Err(MountError::RwHeld { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("mount {vol} rw: {e}"),
            }
        }
    }

    /// Runs `pikafs --ctrl .. <args>`; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.rt.block_on(self.cluster.cli(args)).expect("cli runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `pikafs fs fsck vol` must pass.
    pub fn assert_fsck_clean(&self, vol: &str) {
        let (ok, out, err) = self.cli(&["fs", "fsck", vol]);
        assert!(ok && out.contains("clean"), "fsck failed:\n{out}\n{err}");
    }
}

/// Polls `f` every 2 ms until it returns `Some`, for at most `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Nearest-rank percentile of unsorted samples.
pub fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Test-sized block and journal: ENOSPC and ring wraps come quickly.
pub fn small_mkfs() -> MkfsOptions {
    MkfsOptions {
        block_size: Some(64 << 10),
        journal_size: Some(1 << 20),
        checkpoint_size: Some(1 << 20),
    }
}
