//! An in-memory device that simulates a crash after a chosen write.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::{check_range, BlockDevice};
use crate::error::DeviceError;

/// Sector size at which a torn write is cut.
const TEAR_UNIT: u64 = 4096;

/// An in-memory device for crash tests. It counts writes; once write number
/// `crash_after` has been applied, every later write is dropped and fails
/// with [`DeviceError::Crashed`]. With `tear`, the first dropped write is
/// instead applied partially: its sectors up to the middle one reach the
/// image (a write torn at a sector boundary). [`CrashDevice::image`] then
/// gives what a restarted host would find.
#[derive(Debug)]
pub struct CrashDevice {
    image: Mutex<Vec<u8>>,
    writes: AtomicU64,
    crash_after: Option<u64>,
    tear: bool,
    log: Mutex<Vec<(u64, usize)>>,
}

impl CrashDevice {
    /// A zeroed device of `size` bytes that never crashes.
    pub fn new(size: u64) -> CrashDevice {
        CrashDevice::from_image(vec![0; size as usize], None, false)
    }

    /// A device holding `image` that crashes after write `crash_after`
    /// (counted from this device's creation), tearing the next write when
    /// `tear` is set.
    pub fn from_image(image: Vec<u8>, crash_after: Option<u64>, tear: bool) -> CrashDevice {
        CrashDevice {
            image: Mutex::new(image),
            writes: AtomicU64::new(0),
            crash_after,
            tear,
            log: Mutex::new(Vec::new()),
        }
    }

    /// A copy of the current contents.
    pub fn image(&self) -> Vec<u8> {
        self.image.lock().clone()
    }

    /// Writes attempted so far (applied or not).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// True once a write has been dropped.
    pub fn crashed(&self) -> bool {
        matches!(self.crash_after, Some(n) if self.writes() > n)
    }

    /// (offset, len) of every write attempted, in order.
    pub fn write_log(&self) -> Vec<(u64, usize)> {
        self.log.lock().clone()
    }

    /// Grows the image with zeros, like `pikafs volume grow`.
    pub fn grow(&self, size: u64) {
        let mut img = self.image.lock();
        if (size as usize) > img.len() {
            img.resize(size as usize, 0);
        }
    }
}

impl BlockDevice for CrashDevice {
    fn size(&self) -> u64 {
        self.image.lock().len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        let img = self.image.lock();
        check_range(offset, len, img.len() as u64)?;
        Ok(img[offset as usize..offset as usize + len].to_vec())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut img = self.image.lock();
        check_range(offset, data.len(), img.len() as u64)?;
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        self.log.lock().push((offset, data.len()));
        match self.crash_after {
            Some(after) if n > after => {
                if self.tear && n == after + 1 {
                    // Keep the sectors before the middle one: the device
                    // guarantees sector atomicity, nothing more.
                    let end = offset + data.len() as u64;
                    let mid = offset + data.len() as u64 / 2;
                    let cut = (mid / TEAR_UNIT * TEAR_UNIT).clamp(offset, end);
                    let keep = (cut - offset) as usize;
                    img[offset as usize..offset as usize + keep].copy_from_slice(&data[..keep]);
                }
                Err(DeviceError::Crashed { after })
            }
            _ => {
                img[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                Ok(())
            }
        }
    }
}
