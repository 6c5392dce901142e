//! Checkpoint slots: two alternating full snapshots of the metadata.
//!
//! The RW writes a new snapshot into the slot the journal header does not
//! point at, then commits it with a header write that moves `start` to the
//! snapshot's lsn and names the slot. Until that header lands the old slot
//! and its journal suffix stay valid, so a crash mid-checkpoint is harmless.

use crate::device::BlockDevice;
use crate::encoding::{le32, le64, put32, put64};
use crate::error::FsError;
use crate::metadata::State;
use crate::record::Lsn;
use crate::superblock::{Superblock, SECTOR};

const CK_MAGIC: &[u8; 8] = b"PIKAFSCK";

/// Writes `payload` (an encoded [`State`] at `lsn`) into `slot`.
///
/// # Errors
/// [`FsError::NoSpace`] when the snapshot outgrows the slot; device errors.
pub(crate) fn write(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    slot: u32,
    lsn: Lsn,
    payload: &[u8],
) -> Result<(), FsError> {
    if payload.len() as u64 + SECTOR > sb.ckpt_size {
        tracing::error!(
            bytes = payload.len(),
            slot_bytes = sb.ckpt_size,
            "metadata snapshot outgrew the checkpoint slot; the file system turns read-only"
        );
        return Err(FsError::NoSpace);
    }
    let mut b = vec![0u8; SECTOR as usize];
    b[0..8].copy_from_slice(CK_MAGIC);
    put64(&mut b, 8, sb.fs_id());
    put64(&mut b, 16, lsn);
    put64(&mut b, 24, payload.len() as u64);
    put32(&mut b, 32, crc32c::crc32c(payload));
    let crc = crc32c::crc32c(&b[..4092]);
    put32(&mut b, 4092, crc);
    b.extend_from_slice(payload);
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    dev.write_at(sb.ckpt_off[slot as usize], &b)?;
    Ok(())
}

/// Reads the snapshot in `slot`, which must be the one taken at `lsn`.
///
/// # Errors
/// [`FsError::Corrupt`] on a bad header, crc, lsn or payload.
pub(crate) fn read(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    slot: u32,
    lsn: Lsn,
) -> Result<State, FsError> {
    let off = sb.ckpt_off[slot as usize];
    let h = dev.read_at(off, SECTOR as usize)?;
    let bad = |why: &str| FsError::corrupt(format!("checkpoint slot {slot}: {why}"));
    if &h[0..8] != CK_MAGIC
        || le64(&h, 8) != sb.fs_id()
        || crc32c::crc32c(&h[..4092]) != le32(&h, 4092)
    {
        return Err(bad("bad header"));
    }
    if le64(&h, 16) != lsn {
        return Err(bad(&format!(
            "holds lsn {}, the journal wants {lsn}",
            le64(&h, 16)
        )));
    }
    let len = le64(&h, 24);
    if len + SECTOR > sb.ckpt_size {
        return Err(bad("length exceeds the slot"));
    }
    let payload = dev.read_at(off + SECTOR, len as usize)?;
    if crc32c::crc32c(&payload) != le32(&h, 32) {
        return Err(bad("payload crc mismatch"));
    }
    let st = State::decode(&payload)?;
    if st.block_size != sb.block_size {
        return Err(bad("block size differs from the superblock"));
    }
    Ok(st)
}

/// Lsn held by `slot`, if its header is valid (for fsck's report).
pub(crate) fn slot_lsn(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    slot: u32,
) -> Result<Option<Lsn>, FsError> {
    let h = dev.read_at(sb.ckpt_off[slot as usize], SECTOR as usize)?;
    let ok = &h[0..8] == CK_MAGIC
        && le64(&h, 8) == sb.fs_id()
        && crc32c::crc32c(&h[..4092]) == le32(&h, 4092);
    Ok(ok.then(|| le64(&h, 16)))
}
