//! The block device the file system lives on: a volume, a local file, or a
//! crash-simulating image in tests.

mod crash;
mod file;
#[cfg(feature = "volume")]
mod volume;

pub use crash::CrashDevice;
pub use file::FileDevice;
#[cfg(feature = "volume")]
pub(crate) use volume::run_blocking;
#[cfg(feature = "volume")]
pub use volume::VolumeDevice;

use crate::error::DeviceError;

/// What the fs needs from a volume: a flat byte range with durable writes.
///
/// Assumptions the on-volume format relies on (see `docs/fs.md`):
/// - a write is durable when it returns;
/// - a 4 KiB write at a 4 KiB-aligned offset is atomic (all or nothing):
///   pikafs volumes make it one raft entry as long as it stays inside one
///   chunk, which every fs metadata sector does;
/// - a read returns every write that returned before the read began, also
///   when the write came from another host.
pub trait BlockDevice: Send + Sync + 'static {
    /// The device size in bytes as last seen.
    fn size(&self) -> u64;

    /// Reads `len` bytes at `offset`.
    ///
    /// # Errors
    /// [`DeviceError`] on IO failure or an out-of-range request.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError>;

    /// Writes `data` at `offset`; durable when it returns.
    ///
    /// # Errors
    /// [`DeviceError::Fenced`] when a newer writer took over (stop writing),
    /// or another [`DeviceError`].
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// Writes every `(offset, data)`; durable when it returns. A device
    /// may issue them concurrently and in any order (a volume does: one
    /// round trip for all), so callers must not depend on their order for
    /// anything but speed. The default writes them one by one, in order,
    /// which is what the crash tests rely on to tear between them.
    ///
    /// # Errors
    /// As [`BlockDevice::write_at`]; on error any subset may have landed.
    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<(), DeviceError> {
        for &(off, data) in writes {
            self.write_at(off, data)?;
        }
        Ok(())
    }

    /// Re-reads the size (after `pikafs volume grow`).
    ///
    /// # Errors
    /// [`DeviceError`] when the size cannot be learnt.
    fn refresh_size(&self) -> Result<u64, DeviceError> {
        Ok(self.size())
    }
}

pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<(), DeviceError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            offset,
            len: len as u64,
            size,
        }),
    }
}
