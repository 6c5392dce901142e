//! pikafs-fs: the file system that lives inside one pikafs volume (the
//! libpfs analogue of PolarFS).
//!
//! Role: one RW mount (the kv node's RocksDB primary) and any number of RO
//! mounts on other hosts (RocksDB secondaries) share a volume through this
//! library; FUSE and the `pikafs fs` tools are later callers. It sits on a
//! [`BlockDevice`]: a [`VolumeDevice`] in production, a [`FileDevice`] or
//! [`CrashDevice`] in tests and tools.
//!
//! On a cluster, callers mount through [`session::Mounted`]: it holds the
//! mount lease at ctrl (the RW's grant bumps the volume epoch and fences
//! any earlier writer), pushes commit notifications from the RW to RO
//! mounts, publishes RO positions and open files, and feeds ctrl's
//! answer to [`Fs::release_orphans`].
//!
//! Inodes carry POSIX metadata (kind incl. symlinks, FIFOs, sockets and
//! devices; permission bits, owner, nanosecond times, hard-link counts);
//! the fs stores and journals it but checks no permissions: FUSE leaves
//! that to the kernel (`default_permissions`), the Rust API callers are
//! trusted. Inode numbers are never reused, so the `*_inode` calls are a
//! stable handle on an inode across renames and links.
//!
//! Layout (see `docs/fs.md`): superblock, two journal header slots, the
//! journal ring, two checkpoint slots, the data blocks.
//!
//! Invariants:
//! - every metadata change is a journal record; a transaction commits
//!   with one atomic 4 KiB header write, issued only after its records are
//!   durable or carrying a copy of them (inline commit), so a crash at any
//!   point recovers on mount and an RO never applies half a transaction;
//! - ordered mode: file data reaches its blocks before the records that
//!   map them or extend the size are committed, or it is in the journal
//!   with them (small writes, `data=journal`): then it is written home
//!   before a checkpoint moves the journal start past it, and readers
//!   (RW and RO) overlay it until then;
//! - an inode turns orphan only when its last name goes (hard links); its
//!   blocks, and those freed by truncate, are not reused until
//!   [`Fs::release_orphans`] says no reader can still see them;
//! - after a failed metadata write or a fence the RW mount refuses all
//!   further writes ([`FsError::ReadOnly`] / [`FsError::Fenced`]).
//!
//! The API is synchronous and thread-safe; never call it from an async
//! task without `spawn_blocking`.

mod allocator;
mod checkpoint;
pub mod device;
mod encoding;
mod error;
mod file;
mod fs;
mod fsck;
mod journal;
mod lease;
mod metadata;
mod metrics;
mod path;
mod pending;
mod record;
#[cfg(feature = "volume")]
pub mod session;
pub mod superblock;

#[cfg(feature = "volume")]
pub use device::VolumeDevice;
pub use device::{BlockDevice, CrashDevice, FileDevice};
pub use error::{DeviceError, FsError, Result};
pub use file::File;
pub use fs::{
    mkfs, Changes, CommitHook, DirEntry, Fs, Mode, NewAttrs, OpenFlags, ReleaseStats, Stat, StatFs,
    ROOT_INO, SYMLINK_MAX,
};
pub use fsck::{fsck, FsckReport};
pub use metadata::LINK_MAX;
pub use metrics::Metrics;
pub use path::NAME_MAX;
pub use record::{Ino, Kind, Lsn, SetAttr};
#[cfg(feature = "volume")]
pub use session::{format, MountError, MountOptions, Mounted};
pub use superblock::{MkfsOptions, Superblock};

/// Largest file size on a file system with `block_size` blocks (16 TiB
/// with the default 4 MiB blocks).
pub fn max_file_size(block_size: u64) -> u64 {
    metadata::MAX_FILE_BLOCKS * block_size
}

#[cfg(test)]
mod tests;
