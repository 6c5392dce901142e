//! A local file as a block device (tests and offline tools).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{check_range, BlockDevice};
use crate::error::DeviceError;

/// A block device backed by a local file. Every write is followed by
/// `fdatasync`, so "durable when it returns" holds. Two `FileDevice`s on the
/// same path behave like two hosts sharing a volume (one RW, one RO).
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: AtomicU64,
}

impl FileDevice {
    /// Creates (or truncates) the file at `path` with `size` bytes of zeros.
    ///
    /// # Errors
    /// [`DeviceError::Io`] when the file cannot be created or sized.
    pub fn create(path: &Path, size: u64) -> Result<FileDevice, DeviceError> {
        let io = |op| {
            move |source| DeviceError::Io {
                op,
                offset: 0,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("create"))?;
        file.set_len(size).map_err(io("set_len"))?;
        Ok(FileDevice {
            file,
            size: AtomicU64::new(size),
        })
    }

    /// Opens an existing file; its length is the device size.
    ///
    /// # Errors
    /// [`DeviceError::Io`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<FileDevice, DeviceError> {
        let io = |op| {
            move |source| DeviceError::Io {
                op,
                offset: 0,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("open"))?;
        let size = file.metadata().map_err(io("stat"))?.len();
        Ok(FileDevice {
            file,
            size: AtomicU64::new(size),
        })
    }

    /// Grows (or shrinks) the backing file, like `pikafs volume grow`.
    ///
    /// # Errors
    /// [`DeviceError::Io`].
    pub fn set_size(&self, size: u64) -> Result<(), DeviceError> {
        self.file.set_len(size).map_err(|source| DeviceError::Io {
            op: "set_len",
            offset: size,
            source,
        })?;
        self.size.store(size, Ordering::SeqCst);
        Ok(())
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        check_range(offset, len, self.size())?;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| DeviceError::Io {
                op: "pread",
                offset,
                source,
            })?;
        Ok(buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.write_many(&[(offset, data)])
    }

    /// Every pwrite, then one fdatasync for all of them.
    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<(), DeviceError> {
        for &(offset, data) in writes {
            check_range(offset, data.len(), self.size())?;
        }
        for &(offset, data) in writes {
            self.file
                .write_all_at(data, offset)
                .map_err(|source| DeviceError::Io {
                    op: "pwrite",
                    offset,
                    source,
                })?;
        }
        let offset = writes.first().map_or(0, |w| w.0);
        self.file.sync_data().map_err(|source| DeviceError::Io {
            op: "fdatasync",
            offset,
            source,
        })
    }

    fn refresh_size(&self) -> Result<u64, DeviceError> {
        let len = self
            .file
            .metadata()
            .map_err(|source| DeviceError::Io {
                op: "stat",
                offset: 0,
                source,
            })?
            .len();
        self.size.store(len, Ordering::SeqCst);
        Ok(len)
    }
}
