//! Errors of the volume client.

use std::time::Duration;

use pikafs_proto::{CopysetId, Epoch, ErrorCode, VolumeId};

/// What a volume operation can fail with. Retryable conditions (leader
/// changes, broken connections, busy servers) are retried inside the client
/// until the retry deadline; what reaches the caller is final.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// ctrl knows no volume of that name.
    #[error("volume {name:?} not found")]
    NotFound { name: String },
    /// The IO reaches past the end of the volume (checked again after a
    /// refresh, in case the volume grew).
    #[error("io [{offset}, +{len}) is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A newer writer has fenced this client: stop writing.
    #[error("volume {volume} is fenced: our epoch {mine}, newest {newest}")]
    StaleEpoch {
        volume: VolumeId,
        mine: Epoch,
        newest: Epoch,
    },
    /// No replica of the copyset answered usefully before the retry deadline.
    #[error("copyset {copyset} unavailable after {waited:?}: {last_error}")]
    Unavailable {
        copyset: CopysetId,
        last_error: String,
        waited: Duration,
    },
    /// The data failed its checksum and could not be repaired; never returned
    /// as data.
    #[error("copyset {copyset} reports corrupt data: {message}")]
    Corrupt { copyset: CopysetId, message: String },
    /// A non-retryable error answered by a chunkserver.
    #[error("chunkserver error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    /// A chunkserver answered with something that does not fit the request.
    #[error("protocol error from copyset {copyset}: {message}")]
    Protocol { copyset: CopysetId, message: String },
    /// The volume's routing table from ctrl is unusable (no copysets,
    /// members without addresses).
    #[error("bad routing for volume {volume}: {message}")]
    BadRoute { volume: VolumeId, message: String },
    /// ctrl could not be reached or refused the call.
    #[error("ctrl: {0}")]
    Ctrl(String),
}

impl VolumeError {
    pub(crate) fn from_status(name: &str, status: tonic::Status) -> VolumeError {
        if status.code() == tonic::Code::NotFound {
            VolumeError::NotFound {
                name: name.to_string(),
            }
        } else {
            VolumeError::Ctrl(format!("{}: {}", status.code(), status.message()))
        }
    }
}
