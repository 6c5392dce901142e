//! pikafs-fuse: serves a mounted pikafs file system ([`pikafs_fs::Fs`])
//! through the kernel with `fuser` (pure-Rust mount, no libfuse).
//!
//! Role: the FUSE front end behind `pikafs mount VOLUME DIR [--ro]`, so
//! standard tools (cp, ls, cat, dd, rsync, fio) and the external suites
//! (pjdfstest, fsx) run on a pikafs volume. Callers: `crates/pikafs`'s
//! `mount_cmd` and tests; they mount the [`Fs`] (RW or RO, file image or
//! cluster volume) and keep owning it: [`Session::unmount`] removes the
//! kernel mount only, then the caller unmounts the fs.
//!
//! Invariants:
//! - an RO mount never lets the kernel cache what the writer may change:
//!   zero attribute/entry TTLs and direct IO, so after the fs applied the
//!   writer's journal (its own [`Fs::catch_up`], or the poller started by
//!   [`MountOptions::catch_up_interval`]) the next syscall sees it;
//! - a RW mount may cache for [`RW_TTL`]: it is the only writer;
//! - the kernel's inode numbers are the fs's (`Stat::ino`, root 1);
//! - owners, permission bits, times, symlinks, hard links and special
//!   files are the fs's (journaled, seen by RO mounts after catch-up); the
//!   kernel enforces permissions against them (`default_permissions`), the
//!   FUSE layer never checks access itself;
//! - requests naming an existing inode go to the fs by inode number (never
//!   reused), so hard links and unlinked-but-open files need no path.

mod bench;
mod error;
mod filesystem;
mod inodes;
mod metrics;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use pikafs_fs::{Fs, Mode};

pub use bench::{bench, BenchReport};
pub use error::FuseError;
pub use filesystem::RW_TTL;
pub use metrics::Metrics;

/// How [`mount`] serves the fs.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Mount read-only (the kernel refuses writes with `EROFS`) with no
    /// kernel caching. Forced on when the fs is mounted `Mode::Ro`.
    pub ro: bool,
    /// RO only: call [`Fs::catch_up`] this often from a thread owned by
    /// the session. `None` when something else (the cluster mount's
    /// notification loop) already keeps the fs current.
    pub catch_up_interval: Option<Duration>,
    /// Let `fusermount3` unmount when this process dies (even by
    /// SIGKILL). Off by default: with Debian 12's fusermount3 the
    /// watchdog exits at once, and fuser then never unmounts (it leaves
    /// that to the watchdog), so [`Session::unmount`] would hang.
    pub auto_unmount: bool,
    /// fuser request threads.
    pub threads: usize,
    /// Shown as the source in `/proc/mounts`.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            ro: false,
            catch_up_interval: None,
            auto_unmount: false,
            threads: 4,
            fsname: "pikafs".into(),
        }
    }
}

/// A live FUSE mount. Dropping it unmounts (logging failures);
/// [`Session::unmount`] reports them.
pub struct Session {
    bg: Option<BackgroundSession>,
    metrics: Metrics,
    poller: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Mounts `fs` at `mountpoint` and serves it from background threads
/// until the returned [`Session`] is unmounted or dropped.
///
/// # Errors
/// [`FuseError::Mount`] when the kernel mount fails, [`FuseError::Spawn`]
/// when the catch-up thread cannot start.
pub fn mount(fs: Fs, mountpoint: &Path, opts: &MountOptions) -> Result<Session, FuseError> {
    let ro = opts.ro || fs.mode() == Mode::Ro;
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("pikafs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        // The kernel checks access against the owners and modes we
        // report (EACCES/EPERM, sticky directories, set-ID clearing).
        MountOption::DefaultPermissions,
        if ro { MountOption::RO } else { MountOption::RW },
    ];
    if opts.auto_unmount {
        mount_options.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    // Other users (pjdfstest switches to nobody) may use the mount; the
    // kernel enforces permissions (`default_permissions`).
    config.acl = SessionACL::All;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let metrics = Metrics::default();
    let fuse = filesystem::PikaFuse::new(fs.clone(), ro, metrics.clone());
    let bg = fuser::spawn_mount(fuse, mountpoint, &config).map_err(|source| FuseError::Mount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    })?;
    let mut session = Session {
        bg: Some(bg),
        metrics,
        poller: None,
        mountpoint: mountpoint.to_path_buf(),
    };
    if let (true, Some(every)) = (ro, opts.catch_up_interval) {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let h = std::thread::Builder::new()
            .name("fuse-catch-up".into())
            .spawn(move || catch_up_loop(&fs, every, &stop2))
            .map_err(|source| FuseError::Spawn {
                what: "catch-up",
                source,
            })?;
        session.poller = Some((stop, h));
    }
    tracing::info!(mountpoint = %mountpoint.display(), ro, "mounted");
    Ok(session)
}

fn catch_up_loop(fs: &Fs, every: Duration, stop: &AtomicBool) {
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        match fs.catch_up() {
            Ok(_) => failing = false,
            // Keep serving the last applied state; say so once per outage.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "ro catch-up failed; serving the last applied state");
            }
            Err(_) => {}
        }
        std::thread::sleep(every);
    }
}

impl Session {
    /// This mount's metrics (register them with [`Metrics::register`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A registry with this mount's metrics and `fs`'s, for
    /// `pikafs_proto::metrics_http::serve`.
    pub fn registry(&self, fs: &Fs) -> Arc<prometheus_client::registry::Registry> {
        let mut r = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut r);
        fs.metrics().register(&mut r);
        Arc::new(r)
    }

    /// Where the fs is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the request threads to finish. Fails
    /// (`EBUSY`) while a process has a file open on the mount; the mount
    /// then stays served until the session is dropped.
    ///
    /// # Errors
    /// [`FuseError::Unmount`]; the mount may then still exist.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), FuseError> {
        if let Some((stop, h)) = self.poller.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        let Some(bg) = self.bg.take() else {
            return Ok(());
        };
        bg.umount_and_join().map_err(|source| FuseError::Unmount {
            mountpoint: self.mountpoint.clone(),
            source,
        })?;
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}
