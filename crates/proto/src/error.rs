//! Error codes of the data path and decoding errors.

/// Stable error codes sent in [`crate::Response::Error`]. The numbers are
/// part of the wire format: never renumber, only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// This replica is not the leader; `aux` carries the leader's server id
    /// (0 when unknown).
    NotLeader = 1,
    /// The request's epoch is older than the newest the copyset knows for the
    /// volume; `aux` carries that newest epoch.
    StaleEpoch = 2,
    /// This server hosts no replica of the copyset.
    NoSuchCopyset = 3,
    /// Offset or length outside the chunk.
    OutOfRange = 4,
    /// The request is malformed or unsupported.
    BadRequest = 5,
    /// A sector failed its CRC check and could not be repaired.
    Corrupt = 6,
    /// A bounded queue is full; retry later.
    Busy = 7,
    /// A local IO error (for example a full disk). The server refuses writes
    /// after a failed fsync.
    Io = 8,
    /// The request exceeds a size limit.
    TooLarge = 9,
    /// The operation did not complete in time (for example no quorum).
    Timeout = 10,
    /// Anything else.
    Internal = 11,
    /// The server is shutting down.
    ShuttingDown = 12,
}

impl ErrorCode {
    /// Decodes a wire code; unknown codes map to [`ErrorCode::Internal`] so a
    /// newer server never breaks an older client.
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        match v {
            1 => NotLeader,
            2 => StaleEpoch,
            3 => NoSuchCopyset,
            4 => OutOfRange,
            5 => BadRequest,
            6 => Corrupt,
            7 => Busy,
            8 => Io,
            9 => TooLarge,
            10 => Timeout,
            12 => ShuttingDown,
            _ => Internal,
        }
    }

    /// True when the same request may succeed if sent again (perhaps to
    /// another replica).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoSuchCopyset
                | ErrorCode::Busy
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A frame or message could not be decoded, or a limit was exceeded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than its header")]
    FrameTooShort { len: usize },
    #[error("unknown opcode {0:#04x}")]
    UnknownOp(u8),
    #[error("truncated {what}: need {need} more bytes")]
    Truncated { what: &'static str, need: usize },
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
