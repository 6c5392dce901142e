//! Ids and the fixed geometry of volumes.

/// A chunkserver, assigned by ctrl at first registration. Also the raft peer
/// id of every replica the server hosts (a server holds at most one replica
/// of a copyset). Never 0.
pub type ServerId = u64;
/// A copyset: one raft group of (normally) three replicas. Never 0.
pub type CopysetId = u64;
/// A volume, assigned by ctrl. Never 0.
pub type VolumeId = u64;
/// A volume's fencing epoch; writes carry it, older ones are rejected.
pub type Epoch = u64;

/// Volumes are cut into chunks of this size; chunk `i` covers
/// `[i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)`.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// The integrity unit: one CRC32C per sector of every chunk.
pub const SECTOR_SIZE: usize = 4096;
/// Largest payload of one read or write request. Larger IO is split by the
/// volume client; this keeps raft entries and frames small.
pub const MAX_IO_LEN: usize = 1 << 20;
/// Smallest volume ctrl accepts. The architecture's product range starts at
/// 10 GiB; tests need small volumes (for example to fill one).
pub const MIN_VOLUME_SIZE: u64 = CHUNK_SIZE;
/// Largest volume: 100 TiB.
pub const MAX_VOLUME_SIZE: u64 = 100 << 40;
/// Number of replicas in a copyset.
pub const REPLICAS: usize = 3;
