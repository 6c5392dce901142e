//! Errors of the ctrl service and their gRPC status codes.

use pikafs_proto::{CopysetId, ServerId};

/// A persisted record failed to decode: the on-disk format is read strictly.
#[derive(Debug, thiserror::Error)]
#[error("bad {what} record: {detail}")]
pub struct RecordError {
    /// Which record type.
    pub what: &'static str,
    /// What was wrong with it.
    pub detail: String,
}

/// Failure of the redb store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (IO, corruption it detected, lock held by another process).
    #[error("redb: {0}")]
    Db(#[from] redb::Error),
    /// A record in `table` under `key` does not decode.
    #[error("table {table}, key {key}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        #[source]
        source: RecordError,
    },
}

macro_rules! redb_into_store {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
redb_into_store!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why a ctrl operation was refused. Each variant maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    /// The request is malformed (bad size, empty name...).
    #[error("{0}")]
    InvalidArgument(String),
    /// No volume of that name.
    #[error("volume {0:?} not found")]
    VolumeNotFound(String),
    /// The heartbeating server is not registered; it must register again.
    #[error("server {0} is not registered")]
    ServerNotFound(ServerId),
    /// A volume of that name exists.
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    /// Not enough chunkservers up to place data.
    #[error("need 3 chunkservers up, have {up}")]
    NotEnoughServers { up: usize },
    /// A volume refers to a copyset the store does not hold (broken invariant
    /// of the persisted map).
    #[error("copyset {0} referenced but unknown")]
    MissingCopyset(CopysetId),
    /// An id counter would overflow.
    #[error("{0} ids exhausted")]
    IdsExhausted(&'static str),
    /// The store failed; the mutation did not happen.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<CtrlError> for tonic::Status {
    fn from(e: CtrlError) -> Self {
        use tonic::Status;
        match &e {
            CtrlError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            CtrlError::VolumeNotFound(_) | CtrlError::ServerNotFound(_) => {
                Status::not_found(e.to_string())
            }
            CtrlError::VolumeExists(_) => Status::already_exists(e.to_string()),
            CtrlError::NotEnoughServers { .. } => Status::failed_precondition(e.to_string()),
            CtrlError::IdsExhausted(_) => Status::resource_exhausted(e.to_string()),
            CtrlError::MissingCopyset(_) | CtrlError::Store(_) => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_contract() {
        let s: tonic::Status = CtrlError::NotEnoughServers { up: 2 }.into();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.message(), "need 3 chunkservers up, have 2");
        let s: tonic::Status = CtrlError::ServerNotFound(7).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s: tonic::Status = CtrlError::VolumeExists("v".into()).into();
        assert_eq!(s.code(), tonic::Code::AlreadyExists);
    }
}
