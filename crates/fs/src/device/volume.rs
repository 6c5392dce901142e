//! The real thing: a pikafs volume through `pikafs_volume::VolumeClient`.

use pikafs_volume::{VolumeClient, VolumeError};
use tokio::runtime::Handle;

use super::BlockDevice;
use crate::error::DeviceError;

/// A pikafs volume as a [`BlockDevice`]. The fs API is synchronous; each IO
/// is driven to completion on the given tokio runtime. Call the fs from
/// plain threads (e.g. `spawn_blocking`), or from a multi-threaded runtime's
/// worker, where `block_in_place` is used; calling from a current-thread
/// runtime panics in tokio.
#[derive(Debug, Clone)]
pub struct VolumeDevice {
    client: VolumeClient,
    handle: Handle,
}

impl VolumeDevice {
    /// Wraps an opened client; `handle` is the runtime its connections
    /// live on.
    pub fn new(client: VolumeClient, handle: Handle) -> VolumeDevice {
        VolumeDevice { client, handle }
    }

    /// The wrapped client (epoch, volume id, fencing).
    pub fn client(&self) -> &VolumeClient {
        &self.client
    }

    fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        run_blocking(&self.handle, fut)
    }
}

/// Drives `fut` to completion on `handle` from synchronous code: a plain
/// thread, a `spawn_blocking` thread, or (via `block_in_place`) a worker of
/// a multi-threaded runtime.
pub(crate) fn run_blocking<F: std::future::Future>(handle: &Handle, fut: F) -> F::Output {
    if Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| handle.block_on(fut))
    } else {
        handle.block_on(fut)
    }
}

fn device_error(e: VolumeError) -> DeviceError {
    match e {
        VolumeError::StaleEpoch { .. } => DeviceError::Fenced {
            message: e.to_string(),
        },
        VolumeError::OutOfRange { offset, len, size } => {
            DeviceError::OutOfRange { offset, len, size }
        }
        other => DeviceError::Volume {
            message: other.to_string(),
        },
    }
}

impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.client.size()
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, DeviceError> {
        self.block_on(self.client.read(offset, len))
            .map(|b| b.to_vec())
            .map_err(device_error)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.block_on(self.client.write(offset, data))
            .map_err(device_error)
    }

    fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<(), DeviceError> {
        // All at once: the chunkservers' group commit can take them in one
        // WAL fsync, and the caller waits one round trip, not several.
        self.block_on(self.client.write_many(writes))
            .map_err(device_error)
    }

    fn refresh_size(&self) -> Result<u64, DeviceError> {
        self.block_on(self.client.refresh()).map_err(device_error)?;
        Ok(self.client.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_blocking_works_from_threads_blocking_pool_and_workers() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let h = rt.handle().clone();
        let job = |h: Handle| async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            h.metrics().num_workers()
        };
        // A plain thread.
        assert_eq!(run_blocking(&h, job(h.clone())), 2);
        // A spawn_blocking thread.
        let h2 = h.clone();
        let got = rt
            .block_on(rt.spawn_blocking(move || run_blocking(&h2, job(h2.clone()))))
            .unwrap();
        assert_eq!(got, 2);
        // A worker thread of the runtime itself.
        let h3 = h.clone();
        let got = rt
            .block_on(rt.spawn(async move { run_blocking(&h3, job(h3.clone())) }))
            .unwrap();
        assert_eq!(got, 2);
    }
}
