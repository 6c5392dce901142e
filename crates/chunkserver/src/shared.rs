//! State shared between the raft loop and the tokio tasks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use pikafs_proto::{CopysetId, ServerId};

use crate::chunk::ChunkStore;
use crate::metrics::Metrics;

/// Read-mostly state: which chunk stores exist (so reads of local data need
/// not go through the raft loop) and the address book of peer servers.
pub struct Shared {
    pub me: ServerId,
    pub data_dir: PathBuf,
    pub capacity_bytes: u64,
    pub stores: RwLock<HashMap<CopysetId, Arc<ChunkStore>>>,
    pub peers: RwLock<HashMap<ServerId, String>>,
    pub metrics: Metrics,
}

impl Shared {
    /// Creates the shared state with no copysets.
    pub fn new(me: ServerId, data_dir: PathBuf, capacity_bytes: u64, metrics: Metrics) -> Shared {
        Shared {
            me,
            data_dir,
            capacity_bytes,
            stores: RwLock::new(HashMap::new()),
            peers: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    /// Data-path address of a peer server.
    pub fn peer_addr(&self, id: ServerId) -> Option<String> {
        self.peers
            .read()
            .expect("peer lock poisoned")
            .get(&id)
            .cloned()
    }

    /// The chunk store of a local replica.
    pub fn store(&self, copyset: CopysetId) -> Option<Arc<ChunkStore>> {
        self.stores
            .read()
            .expect("store lock poisoned")
            .get(&copyset)
            .cloned()
    }

    /// Bytes allocated to chunk files.
    pub fn used_bytes(&self) -> u64 {
        self.stores
            .read()
            .expect("store lock poisoned")
            .values()
            .map(|s| s.chunk_count() as u64 * pikafs_proto::CHUNK_SIZE)
            .sum()
    }

    /// Room left under the configured capacity, `None` when unconfigured.
    pub fn capacity_left(&self) -> Option<u64> {
        (self.capacity_bytes > 0).then(|| self.capacity_bytes.saturating_sub(self.used_bytes()))
    }
}
