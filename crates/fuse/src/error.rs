//! Errors of mounting and unmounting (per-operation errors go to the
//! kernel as errnos, see `filesystem.rs`).

use std::path::PathBuf;

/// What [`crate::mount`] and [`crate::Session::unmount`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The kernel mount failed (no `/dev/fuse`, not a directory, no
    /// permission, `fusermount3` missing for auto-unmount, ...).
    #[error("mount {mountpoint}: {source}")]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Unmounting or joining the session threads failed; the mount may
    /// still be there (`fusermount3 -u -z DIR` removes it).
    #[error("unmount {mountpoint}: {source}")]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A helper thread could not be started.
    #[error("spawn {what} thread: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
