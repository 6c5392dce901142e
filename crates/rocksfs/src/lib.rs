//! pikafs-rocksfs: RocksDB on pikafs, in-process.
//!
//! Role: a RocksDB `FileSystem` plugin that sends every file operation of
//! RocksDB to the pikafs fs layer ([`pikafs_fs::Fs`]) without FUSE. A small
//! C++ shim (`cpp/shim.cc`, compiled by `build.rs` against the headers of
//! the RocksDB that librocksdb-sys built) subclasses
//! `rocksdb::FileSystemWrapper` and calls back into Rust (`shim` module)
//! through a table of function pointers. [`PikaEnv`] wraps it in a
//! composite Env and hands it to the `rocksdb` crate with
//! `Env::from_raw`; it is also registered so `env=pikafs:<prefix>` in an
//! options string names it. [`tune_for_remote_disk`] sets the options a
//! remote disk wants.
//!
//! Callers: the kv node (RocksDB primary on the RW mount, secondaries on
//! RO mounts), its tests and benchmarks.
//!
//! Invariants:
//! - only paths under the prefix go to pikafs (prefix stripped); every
//!   other path goes to the local file system, so a secondary's private
//!   directory and info LOG can stay local;
//! - RocksDB's `LockFile` succeeds only on a RW mount: the RW mount lease
//!   at ctrl, which fenced every earlier writer, is the lock; an RO mount
//!   answers an IOError;
//! - no panic crosses the FFI boundary and no C++ exception escapes the
//!   shim; a stale or unknown file handle is an error, never UB;
//! - closing a file that changed since its last sync commits it, so RO
//!   mounts on other hosts see what a closed file holds (close-to-open);
//! - not-found is reported as RocksDB's NotFound/PathNotFound (RocksDB
//!   depends on it), no space as NoSpace, a fenced writer as IOFenced.
//! - on an RO mount, reads of files of at most 4 KiB (CURRENT, which a
//!   secondary rereads on every catch-up) may come from a cache, but only
//!   while the file's inode, size, mtime and ctime are those it was read
//!   at; every file operation is counted ([`op_stats`],
//!   [`PikaEnv::op_stats`]).
//!
//! See `docs/rocksfs.md` for the operation mapping and the tuning choices.

mod env;
mod error;
mod shim;
mod stats;
mod tuning;

pub use env::{FsProvider, PikaEnv};
pub use error::RocksFsError;
pub use stats::{op_stats, OpStat, OpStats, OPS};
pub use tuning::{tune_for_remote_disk, RemoteDiskTuning};

#[cfg(test)]
mod tests;
