//! The superblock (offset 0, one 4 KiB sector): geometry of every region.
//! Written once by mkfs and never again; growth is a journaled record.

use crate::encoding::{le32, le64, put32, put64};
use crate::error::FsError;

/// Metadata IO unit: superblock, journal headers, journal transactions and
/// checkpoint headers are whole, aligned sectors.
pub const SECTOR: u64 = 4096;
pub(crate) const SB_MAGIC: &[u8; 8] = b"PIKAFSSB";
/// 2: inodes carry owner, atime, rdev and symlink targets; hard links,
/// symlinks and special files (`Create` grew, `Link` and `SetAttr`
/// records). 3: journaled data (`Journaled` records whose bytes follow the
/// transaction in the ring; a 40-byte transaction header with the data
/// area's length and crc; headers name the inline transaction's data
/// length). Older images are not read.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// Offset of the two journal header slots (one sector each).
pub(crate) const HEADER_OFF: u64 = SECTOR;
/// The journal ring starts after the two header slots.
pub(crate) const RING_OFF: u64 = 3 * SECTOR;

/// Default data block (allocation unit): PolarFS's 4 MiB. A 64 MiB chunk
/// holds exactly 16, so no block straddles two chunks.
pub const DEFAULT_BLOCK_SIZE: u64 = 4 << 20;
const MIN_RING: u64 = 1 << 20;
/// The ring ends where the volume's first 64 MiB chunk does, so every
/// commit batch (header + ring copy, with journaled data) stays on one
/// copyset.
const MAX_RING: u64 = (64 << 20) - RING_OFF;

/// Knobs of [`crate::mkfs`]; `Default` gives production values.
#[derive(Debug, Clone, Default)]
pub struct MkfsOptions {
    /// Data block size: a power of two, at least 4 KiB. Default 4 MiB.
    pub block_size: Option<u64>,
    /// Journal ring size (multiple of 4 KiB). Default 1% of the device,
    /// clamped to [1 MiB, 64 MiB - 12 KiB] (so the ring ends with the
    /// volume's chunk 0).
    pub journal_size: Option<u64>,
    /// Size of each of the two checkpoint slots. Default: the journal size.
    pub checkpoint_size: Option<u64>,
}

/// The decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub block_size: u64,
    pub ring_size: u64,
    pub ckpt_off: [u64; 2],
    pub ckpt_size: u64,
    pub data_off: u64,
    /// Data blocks at mkfs time; `growfs` adds more through the journal.
    pub data_blocks: u64,
    pub created_ns: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Superblock {
    /// Lays out a device of `dev_size` bytes.
    ///
    /// # Errors
    /// [`FsError::InvalidArgument`] for bad options or a device too small
    /// for the metadata plus 16 data blocks.
    pub fn layout(
        dev_size: u64,
        opts: &MkfsOptions,
        uuid: [u8; 16],
        now: u64,
    ) -> Result<Superblock, FsError> {
        let bad = |what: String| FsError::InvalidArgument { what };
        let block_size = opts.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
        if block_size < SECTOR || !block_size.is_power_of_two() {
            return Err(bad(format!(
                "block size {block_size} is not a power of two >= 4096"
            )));
        }
        let ring_size = opts
            .journal_size
            .unwrap_or_else(|| (dev_size / 100).clamp(MIN_RING, MAX_RING) / SECTOR * SECTOR);
        if ring_size < 16 * SECTOR || !ring_size.is_multiple_of(SECTOR) {
            return Err(bad(format!(
                "journal size {ring_size} is not a multiple of 4096 >= 64 KiB"
            )));
        }
        let ckpt_size = opts.checkpoint_size.unwrap_or(ring_size);
        if ckpt_size < 4 * SECTOR || !ckpt_size.is_multiple_of(SECTOR) {
            return Err(bad(format!(
                "checkpoint size {ckpt_size} is not a multiple of 4096 >= 16 KiB"
            )));
        }
        let ckpt_a = RING_OFF + ring_size;
        let ckpt_b = ckpt_a + ckpt_size;
        let data_off = round_up(ckpt_b + ckpt_size, block_size);
        let data_blocks = dev_size.saturating_sub(data_off) / block_size;
        if data_blocks < 16 {
            return Err(bad(format!(
                "device of {dev_size} bytes leaves {data_blocks} data blocks of {block_size} (need 16)"
            )));
        }
        Ok(Superblock {
            uuid,
            block_size,
            ring_size,
            ckpt_off: [ckpt_a, ckpt_b],
            ckpt_size,
            data_off,
            data_blocks,
            created_ns: now,
        })
    }

    /// Data blocks a device of `dev_size` bytes can hold.
    pub fn blocks_for(&self, dev_size: u64) -> u64 {
        dev_size.saturating_sub(self.data_off) / self.block_size
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        b[0..8].copy_from_slice(SB_MAGIC);
        put32(&mut b, 8, FORMAT_VERSION);
        b[16..32].copy_from_slice(&self.uuid);
        put64(&mut b, 32, self.block_size);
        put64(&mut b, 40, HEADER_OFF);
        put64(&mut b, 48, RING_OFF);
        put64(&mut b, 56, self.ring_size);
        put64(&mut b, 64, self.ckpt_off[0]);
        put64(&mut b, 72, self.ckpt_off[1]);
        put64(&mut b, 80, self.ckpt_size);
        put64(&mut b, 88, self.data_off);
        put64(&mut b, 96, self.data_blocks);
        put64(&mut b, 104, self.created_ns);
        let crc = crc32c::crc32c(&b[..4092]);
        put32(&mut b, 4092, crc);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Superblock, FsError> {
        if b.len() < SECTOR as usize || &b[0..8] != SB_MAGIC {
            return Err(FsError::corrupt(
                "no pikafs superblock (bad magic); run mkfs",
            ));
        }
        if crc32c::crc32c(&b[..4092]) != le32(b, 4092) {
            return Err(FsError::corrupt("superblock crc mismatch"));
        }
        let version = le32(b, 8);
        if version != FORMAT_VERSION {
            return Err(FsError::corrupt(format!(
                "format version {version}, this build reads {FORMAT_VERSION}"
            )));
        }
        if le64(b, 40) != HEADER_OFF || le64(b, 48) != RING_OFF {
            return Err(FsError::corrupt(
                "superblock region offsets differ from format 1",
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            uuid,
            block_size: le64(b, 32),
            ring_size: le64(b, 56),
            ckpt_off: [le64(b, 64), le64(b, 72)],
            ckpt_size: le64(b, 80),
            data_off: le64(b, 88),
            data_blocks: le64(b, 96),
            created_ns: le64(b, 104),
        };
        if !sb.block_size.is_power_of_two()
            || sb.block_size < SECTOR
            || !sb.ring_size.is_multiple_of(SECTOR)
            || sb.ring_size == 0
        {
            return Err(FsError::corrupt("superblock geometry is invalid"));
        }
        Ok(sb)
    }

    /// The first 8 uuid bytes, stamped in every journal transaction and
    /// checkpoint so leftovers of an earlier mkfs are never mistaken for
    /// ours.
    pub(crate) fn fs_id(&self) -> u64 {
        le64(&self.uuid, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_roundtrip_and_crc() {
        let sb = Superblock::layout(256 << 20, &MkfsOptions::default(), [7; 16], 42).unwrap();
        assert_eq!(sb.ring_size, (256u64 << 20) / 100 / 4096 * 4096);
        assert_eq!(sb.data_off % sb.block_size, 0);
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        b[100] ^= 1;
        assert!(matches!(
            Superblock::decode(&b),
            Err(FsError::Corrupt { .. })
        ));
    }

    /// The largest default ring ends with the volume's 64 MiB chunk 0, so
    /// headers and ring copies always go to one copyset.
    #[test]
    fn default_ring_stays_in_chunk_0() {
        let sb = Superblock::layout(100 << 30, &MkfsOptions::default(), [7; 16], 42).unwrap();
        assert_eq!(RING_OFF + sb.ring_size, 64 << 20);
        assert_eq!(sb.data_off % sb.block_size, 0);
    }

    #[test]
    fn layout_rejects_tiny_device() {
        assert!(Superblock::layout(8 << 20, &MkfsOptions::default(), [0; 16], 0).is_err());
    }
}
