//! pikafs proxy: one Redis (RESP2) address in front of a volume's kv nodes.
//!
//! Role: `pikafs proxy` (the binary's `proxy_cmd.rs`) builds a
//! [`ProxyConfig`] and a [`TopologySource`] and runs a [`Proxy`]. Writes,
//! transactions, blocking and unknown commands go to the RW node; reads go
//! to an RO node picked by rendezvous hashing of the key (each RO node's
//! block cache holds its own share); MGET and multi-key EXISTS are split
//! per node and merged in order; keyspace-wide reads go to one fixed node.
//! See `docs/proxy.md`.
//!
//! Invariants:
//! - Replies reach a client in the order of its requests, byte for byte as
//!   the backend sent them (errors included), except merged MGET/EXISTS.
//! - Each client has its own backend connections, so SELECT/AUTH/MULTI/WATCH
//!   state is per client; SELECT and AUTH are replayed on every backend
//!   connection a client opens later. MULTI and WATCH pin the client to the
//!   RW node until EXEC/DISCARD/UNWATCH. The one exception: plain RO reads
//!   of clients without AUTH and read-your-writes share a few connections
//!   per (RO node, db) (`pool.rs`), whose only state is the db.
//! - A backend that fails fails only the requests in flight on it; reads
//!   among them are re-sent to the RW node. A failed RO node is skipped
//!   for `down_retry`, then tried again.
//! - With read-your-writes on, a read never returns data older than the
//!   client's own acknowledged writes (`PIKAFS SEQ` / `PIKAFS WAITSEQ`; on
//!   timeout the RW node answers).
//! - The proxy never links RocksDB.

mod client;
pub mod command;
pub mod config;
pub mod error;
pub mod hash;
mod health;
pub mod metrics;
mod pool;
pub mod resp;
mod server;
pub mod topology;

pub use config::ProxyConfig;
pub use error::ProxyError;
pub use server::Proxy;
pub use topology::{Node, Topology, TopologySource};
