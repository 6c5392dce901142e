//! Offline consistency check of a file system image.

use crate::checkpoint;
use crate::device::BlockDevice;
use crate::error::Result;
use crate::fs::read_txns;
use crate::journal;
use crate::record::{Kind, Lsn};
use crate::superblock::{Superblock, SECTOR};

/// What [`fsck`] found. `errors` empty means consistent.
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    /// Inconsistencies; each line names what is wrong.
    pub errors: Vec<String>,
    /// Notes that are not errors (e.g. an unused checkpoint slot).
    pub notes: Vec<String>,
    pub checkpoint_lsn: Lsn,
    pub committed_lsn: Lsn,
    pub journal_txns: u64,
    /// Named non-directory inodes (a hard-linked inode counts once).
    pub files: u64,
    pub dirs: u64,
    pub orphans: u64,
    pub used_blocks: u64,
    pub pending_blocks: u64,
    pub free_blocks: u64,
}

impl FsckReport {
    /// True when no error was found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the file system on `dev` without changing it: superblock,
/// journal header, the checkpoint and journal crcs, that every record
/// applies, the directory tree (every inode linked once or an orphan,
/// parents right), and block ownership (every used block owned by exactly
/// one inode or pending-free list, none out of range).
///
/// # Errors
/// Only device read errors; corruption goes into the report.
pub fn fsck(dev: &dyn BlockDevice) -> Result<FsckReport> {
    let mut r = FsckReport::default();
    let sb = match Superblock::decode(&dev.read_at(0, SECTOR as usize)?) {
        Ok(sb) => sb,
        Err(e) => {
            r.errors.push(e.to_string());
            return Ok(r);
        }
    };
    // As a mount sees it: a newest transaction whose guarded data did not
    // all land was never acknowledged and does not count.
    let (h, inline) = match journal::read_trusted_header(dev, &sb) {
        Ok((h, inline, cut)) => {
            if cut {
                r.notes.push(format!(
                    "the newest transaction (ending at lsn {}) lost its data in a crash and is not counted; the next RW mount drops it",
                    h.end
                ));
            }
            (h, inline)
        }
        Err(e) => {
            r.errors.push(e.to_string());
            return Ok(r);
        }
    };
    r.checkpoint_lsn = h.start;
    r.committed_lsn = h.end;
    let other = 1 - h.ckpt_slot;
    match checkpoint::slot_lsn(dev, &sb, other)? {
        Some(lsn) => r
            .notes
            .push(format!("checkpoint slot {other} holds older lsn {lsn}")),
        None => r.notes.push(format!("checkpoint slot {other} is unused")),
    }
    let mut st = match checkpoint::read(dev, &sb, h.ckpt_slot, h.start) {
        Ok(st) => st,
        Err(e) => {
            r.errors.push(e.to_string());
            return Ok(r);
        }
    };
    match read_txns(dev, &sb, h.start, &h, &inline) {
        Ok(txns) => {
            r.journal_txns = txns.len() as u64;
            'apply: for (end, ops) in &txns {
                for op in ops {
                    if let Err(why) = st.apply(op, Some(*end)) {
                        r.errors.push(format!(
                            "record {op:?} before lsn {end} does not apply: {why:?}"
                        ));
                        break 'apply;
                    }
                }
            }
        }
        Err((e, _)) => r.errors.push(e.to_string()),
    }
    if st.alloc.nblocks() > sb.blocks_for(dev.size()) {
        r.errors.push(format!(
            "file system has {} blocks, the device only room for {}",
            st.alloc.nblocks(),
            sb.blocks_for(dev.size())
        ));
    }
    r.errors.extend(st.check());
    r.files = st
        .inodes
        .values()
        .filter(|i| i.kind != Kind::Dir && i.nlink > 0)
        .count() as u64;
    r.dirs = st.inodes.values().filter(|i| i.kind == Kind::Dir).count() as u64;
    r.orphans = st.orphans.len() as u64;
    r.used_blocks = st.alloc.used();
    r.pending_blocks = st.pending.iter().map(|(_, b)| b.len() as u64).sum();
    r.free_blocks = st.alloc.free();
    Ok(r)
}
