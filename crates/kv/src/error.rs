//! Errors of the kv layer.
//!
//! [`CmdError`] is what a command answers: its `Display` is the exact Redis
//! error line (without `-` and CRLF). [`KvError`] is what the server and the
//! engine return to their callers (the binary).

/// A record in RocksDB that does not decode. Surfaces to clients as an
/// `ERR` and is logged: it means corruption or a format from the future.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown type byte {0}")]
    UnknownType(u8),
}

/// The error reply of one command, with Redis 7's texts.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(String),
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    #[error("ERR no such key")]
    NoSuchKey,
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("READONLY You can't write against a read only replica.")]
    ReadOnly,
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// Any other error line, already in Redis form (`ERR ...`,
    /// `WRONGPASS ...`).
    #[error("{0}")]
    Msg(String),
    #[error("ERR storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("ERR corrupt record: {0}")]
    Corrupt(#[from] DecodeError),
}

impl CmdError {
    pub fn msg(s: impl Into<String>) -> CmdError {
        CmdError::Msg(s.into())
    }
}

/// Failures of the engine and the server that end `run` or an open.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("open rocksdb at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The WAL could not be synced: writes are refused from then on (a
    /// failed fsync leaves the file state unknown).
    #[error("wal sync failed: {0}")]
    WalSync(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid config: {0}")]
    Config(String),
}
