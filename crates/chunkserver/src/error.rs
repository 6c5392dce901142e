//! Error types of the chunkserver's storage layers.

use pikafs_proto::{CopysetId, VolumeId};

/// Errors of the shared write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal io on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("wal record of copyset {copyset} is malformed: {detail}")]
    BadRecord { copyset: CopysetId, detail: String },
}

/// Errors of the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk io on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sector {sector} of volume {volume} chunk {chunk} failed its crc check")]
    Corrupt {
        volume: VolumeId,
        chunk: u64,
        sector: usize,
    },
    #[error("range {offset}+{len} is outside the chunk")]
    OutOfRange { offset: u64, len: u64 },
    #[error("not enough free space for a new chunk")]
    NoSpace,
}

/// Errors of the checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint io on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("chunk sync before checkpoint: {0}")]
    Chunk(#[from] ChunkError),
}
