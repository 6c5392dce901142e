//! pikafs kv: a Redis-compatible server (RESP2, Redis 7 semantics) keeping
//! Redis data types in RocksDB.
//!
//! Role: `pikafs kv` runs one node, either the RW RocksDB primary (writes,
//! compaction, group-committed WAL) or a RO secondary that catches up with
//! the primary's files and rejects writes with `-READONLY`. Callers: the
//! `pikafs` binary (`kv_cmd.rs`) via [`KvServer`]/[`run`]; the lead wires a
//! pikafs-volume RocksDB `Env` and the fs journal notification
//! ([`Engine::catch_up_trigger`]).
//!
//! Invariants:
//! - By default (`appendfsync always`) a reply is sent only after the WAL is
//!   synced past every write the reply's batch made or observed.
//! - Every command (and every MULTI/EXEC) is one RocksDB WriteBatch over a
//!   consistent read view ([`Txn`]); writers are serialized.
//! - Encoding (see `docs/kv.md`): one metadata record per key, versioned
//!   member sub-keys; DEL/EXPIRE are O(1); a compaction filter reclaims
//!   stale members and expired keys.
//!
//! Layout: `resp` (wire), `command` (table + arg parsing), `session`
//! (connection state, MULTI/EXEC, server commands), `server` (sockets,
//! background tasks), `engine`/`txn`/`wal`/`encoding` (storage), one
//! module per data type (`string`, `hash`, `list`, `set`, `zset`,
//! `keyspace` for generic keys) and `blocking` (BLPOP & co.: blocked
//! clients wait on their connection task, never on a thread).
//! `HANDOFF.md` explains how to add a data type.

pub mod blocking;
pub mod command;
pub mod config;
pub mod cursor;
pub mod encoding;
pub mod engine;
pub mod error;
pub mod hash;
pub mod keyspace;
pub mod list;
pub mod metrics;
pub mod pattern;
pub mod resp;
pub mod score;
pub mod server;
pub mod session;
pub mod set;
pub mod string;
pub mod txn;
pub mod wal;
pub mod watch;
pub mod zset;

pub use config::KvConfig;
pub use engine::{Engine, EngineConfig, Role, Touch};
pub use error::{CmdError, KvError};
pub use server::{run, KvServer};
pub use txn::Txn;
pub use wal::FsyncPolicy;

/// The Redis version we claim in INFO/HELLO (the semantics we follow).
pub const REDIS_VERSION: &str = "7.2.0";
