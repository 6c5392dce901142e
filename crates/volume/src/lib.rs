//! The pikafs volume client: reads and writes a volume as a flat byte range.
//!
//! Role: the bottom of the compute side. The fs layer (and `pikafs volume`,
//! `pikafs bench`) open a volume by name at ctrl, then send IO straight to
//! chunkservers over the binary data path; ctrl is needed only to open and
//! to refresh the routing table, so IO goes on while ctrl is down.
//!
//! How it works: an IO is split at chunk boundaries and into pieces of at
//! most `MAX_IO_LEN` ([`layout`]); chunk `i` lives on copyset
//! `copysets[i % copysets.len()]` of the volume's routing table. Pieces go
//! out concurrently over one pipelined connection per chunkserver
//! ([`connection`]) to the copyset's leader, retried across leader changes
//! and failures until a deadline ([`client`]).
//!
//! Invariants:
//! - an acknowledged write is on a majority of its copyset and fsync'd;
//! - every write carries the client's epoch, and a `StaleEpoch` answer is
//!   returned at once, never retried: a fenced writer must stop;
//! - data that fails its checksum is returned as [`VolumeError::Corrupt`],
//!   never as bytes;
//! - a read that returns reflects every write acknowledged before it began
//!   (reads go to the leader, which serves them under its lease).
//!
//! See `docs/volume-client.md` for the retry table.

pub mod client;
pub mod connection;
pub mod error;
pub mod layout;

pub use client::{OpenOptions, VolumeClient};
pub use error::VolumeError;
