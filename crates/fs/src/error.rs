//! Errors of the device layer and of file system operations.

/// What a [`crate::BlockDevice`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A local IO call failed.
    #[error("{op} at offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The IO reaches past the end of the device.
    #[error("io [{offset}, +{len}) is outside the device of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A newer writer fenced this one (the volume epoch moved on): this
    /// writer must stop writing for good.
    #[error("fenced: {message}")]
    Fenced { message: String },
    /// A test device reached its simulated crash point; nothing more is
    /// written.
    #[error("simulated crash after write {after}")]
    Crashed { after: u64 },
    /// The remote volume failed the IO (unavailable, corrupt, ...).
    #[error("volume: {message}")]
    Volume { message: String },
}

/// What a file system operation can fail with. Path-carrying variants name
/// the path the caller passed (or the part of it that failed).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: file exists")]
    Exists { path: String },
    #[error("{path}: not a directory")]
    NotDir { path: String },
    #[error("{path}: is a directory")]
    IsDir { path: String },
    #[error("{path}: directory not empty")]
    NotEmpty { path: String },
    /// No free data block (or the metadata checkpoint area is full).
    #[error("no space left on the file system")]
    NoSpace,
    /// A write on a read-only mount or handle, or on a RW mount that turned
    /// read-only after a device write failed.
    #[error("read-only: {why}")]
    ReadOnly { why: String },
    /// A newer RW mount fenced this one; it refuses every further write.
    #[error("fenced by a newer writer: {message}")]
    Fenced { message: String },
    #[error("invalid argument: {what}")]
    InvalidArgument { what: String },
    #[error("{path}: name too long")]
    NameTooLong { path: String },
    /// The inode (or, for a new subdirectory, its parent) already has
    /// `LINK_MAX` links.
    #[error("{path}: too many links")]
    TooManyLinks { path: String },
    /// The operation needs another kind of inode (e.g. `readlink` of a
    /// file, `open` of a FIFO through the fs API).
    #[error("{path}: {what}")]
    WrongKind { path: String, what: String },
    /// The file would exceed the largest size ([`crate::max_file_size`]).
    #[error("{path}: file too large")]
    TooLarge { path: String },
    /// On-volume structures failed a check (crc, magic, impossible record).
    #[error("corrupt file system: {what}")]
    Corrupt { what: String },
    /// An RO mount cannot vouch for the data: its mount lease lapsed (a
    /// handle opened before the lapse is dead for good; reopen it) or is
    /// not known valid right now (retry later). Never returned on a RW
    /// mount.
    #[error("{path}: RO mount lease lost: {why}")]
    LeaseLost { path: String, why: String },
    #[error("device: {0}")]
    Device(#[from] DeviceError),
}

impl FsError {
    /// The POSIX errno closest to this error, for FUSE.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound { .. } => libc::ENOENT,
            FsError::Exists { .. } => libc::EEXIST,
            FsError::NotDir { .. } => libc::ENOTDIR,
            FsError::IsDir { .. } => libc::EISDIR,
            FsError::NotEmpty { .. } => libc::ENOTEMPTY,
            FsError::NoSpace => libc::ENOSPC,
            FsError::ReadOnly { .. } => libc::EROFS,
            FsError::Fenced { .. } => libc::EROFS,
            FsError::InvalidArgument { .. } => libc::EINVAL,
            FsError::NameTooLong { .. } => libc::ENAMETOOLONG,
            FsError::TooLarge { .. } => libc::EFBIG,
            FsError::TooManyLinks { .. } => libc::EMLINK,
            FsError::WrongKind { .. } => libc::EINVAL,
            FsError::Corrupt { .. } => libc::EUCLEAN,
            FsError::LeaseLost { .. } => libc::ESTALE,
            FsError::Device(_) => libc::EIO,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> FsError {
        FsError::Corrupt { what: what.into() }
    }
}

/// Result of file system operations.
pub type Result<T, E = FsError> = std::result::Result<T, E>;
