//! RocksDB options for a database whose files live on pikafs: every read
//! that misses the caches is a network round trip to a chunkserver, every
//! write a replicated raft commit. docs/rocksfs.md explains each choice.

use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options};

/// What [`tune_for_remote_disk`] sets; `Default` gives the production
/// values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDiskTuning {
    /// Block cache capacity (uncompressed blocks, index and filter blocks).
    pub block_cache_bytes: usize,
    /// Data block size. Larger than RocksDB's 4 KiB: a point read pays one
    /// round trip whatever the size, and a scan needs fewer of them.
    pub block_size: usize,
    /// Readahead for compaction inputs (and iterators' auto readahead
    /// ceiling): sequential reads become a few large IOs.
    pub compaction_readahead_bytes: usize,
    /// RocksDB's WritableFileWriter buffer: appends reach the fs in pieces
    /// this big (the volume's largest IO is 1 MiB).
    pub writable_file_max_buffer_bytes: u64,
    /// SST target size; 64 MiB = one volume chunk.
    pub target_file_size_bytes: u64,
}

impl Default for RemoteDiskTuning {
    fn default() -> RemoteDiskTuning {
        RemoteDiskTuning {
            block_cache_bytes: 256 << 20,
            block_size: 16 << 10,
            compaction_readahead_bytes: 2 << 20,
            writable_file_max_buffer_bytes: 1 << 20,
            target_file_size_bytes: 64 << 20,
        }
    }
}

/// Applies `tuning` to `opts` and returns the block cache it installed
/// (share it with other column families, or read its usage for metrics).
///
/// Also: no range syncs (`bytes_per_sync = wal_bytes_per_sync = 0`: a sync
/// on pikafs is a journal commit, only worth paying when RocksDB needs
/// durability), all table files kept open (`max_open_files = -1`: reopening
/// rereads footer, index and filter over the network), no stats pass over
/// every SST at open, index and filter blocks in the cache with L0's pinned,
/// a 10-bit bloom filter (a negative point lookup costs no round trip), LZ4.
pub fn tune_for_remote_disk(opts: &mut Options, tuning: &RemoteDiskTuning) -> Cache {
    let cache = Cache::new_lru_cache(tuning.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_block_size(tuning.block_size);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);

    opts.set_compaction_readahead_size(tuning.compaction_readahead_bytes);
    opts.set_writable_file_max_buffer_size(tuning.writable_file_max_buffer_bytes);
    opts.set_target_file_size_base(tuning.target_file_size_bytes);
    opts.set_bytes_per_sync(0);
    opts.set_wal_bytes_per_sync(0);
    opts.set_max_open_files(-1);
    opts.set_skip_stats_update_on_db_open(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    cache
}
