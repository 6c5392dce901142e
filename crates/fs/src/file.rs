//! Open files: reads, ordered-mode writes, truncate, fallocate, fsync.
//!
//! Ordered mode: data (and the zeros that make a new range defined) is
//! written to its blocks first; only then are the records that map the
//! blocks or move the size queued, so a committed size never covers bytes
//! that were not written. Invariant kept for every file: each byte of a
//! mapped block below the file size is data or zero; bytes at or past the
//! size are undefined (that is what lets a 4 KiB WAL append skip zeroing
//! the rest of its 4 MiB block).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{FsError, Result};
use crate::fs::{now_ns, Inner, Meta, Stat};
use crate::metadata::{runs_of, HOLE};
use crate::record::{Ino, Op};

/// Largest piece one write step handles; bounds buffers and records.
const PIECE: u64 = 8 << 20;
/// Largest zero buffer written at once.
const ZERO_CHUNK: u64 = 1 << 20;
/// Writes up to this size are queued and go out with the next commit
/// (`crate::pending`); larger ones are written at once.
const DEFER_MAX: usize = 64 << 10;
/// Queued data past this is committed without waiting for an fsync.
const QUEUED_MAX: usize = 1 << 20;
/// RO reads redone after racing a cut before one holds the metadata lock
/// across its device reads.
const OPTIMISTIC_READS: u32 = 3;

/// An open file. Reads work on any mount; writes need a RW mount and a
/// handle opened with `write`. Dropping it closes it (an orphan's blocks
/// are then releasable on this mount).
pub struct File {
    fs: Arc<Inner>,
    ino: Ino,
    writable: bool,
    /// Serialises writers of this inode across handles.
    wlock: Arc<Mutex<()>>,
    path: String,
    /// The RO mount lease generation this handle was opened under.
    generation: u64,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File")
            .field("ino", &self.ino)
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        self.fs.close_ref(self.ino);
    }
}

/// A read's device ranges (`None`: a hole) and the overlay bytes to copy
/// over them.
type ReadPlan = (Vec<(Option<u64>, u64)>, Vec<(u64, Vec<u8>)>);

/// One device write planned by a write step.
struct Seg {
    dev_off: u64,
    data: Vec<u8>,
}

impl File {
    /// A handle on `ino`, already counted in the open table (`wlock` is the
    /// inode's writer lock from it).
    pub(crate) fn new(
        fs: Arc<Inner>,
        ino: Ino,
        writable: bool,
        path: &str,
        wlock: Arc<Mutex<()>>,
        generation: u64,
    ) -> File {
        File {
            fs,
            ino,
            writable,
            wlock,
            path: path.to_string(),
            generation,
        }
    }

    /// The inode number.
    pub fn ino(&self) -> Ino {
        self.ino
    }

    /// The path this handle was opened with (it may have been renamed).
    pub fn path(&self) -> &str {
        &self.path
    }

    fn gone(&self) -> FsError {
        FsError::NotFound {
            path: self.path.clone(),
        }
    }

    /// RO: fails unless the mount lease this handle was opened under is
    /// still valid (see `crate::lease`). Always Ok on a RW mount.
    fn check_lease(&self) -> Result<()> {
        self.fs
            .lease
            .check(self.generation)
            .map_err(|l| FsError::LeaseLost {
                path: self.path.clone(),
                why: l.to_string(),
            })
    }

    fn check_write(&self) -> Result<()> {
        if !self.writable {
            return Err(FsError::InvalidArgument {
                what: format!("{} is not open for writing", self.path),
            });
        }
        self.fs.check_writable()
    }

    /// Stats the open inode (also after it was unlinked).
    ///
    /// # Errors
    /// [`FsError::NotFound`] when the inode was freed (RO after release).
    pub fn stat(&self) -> Result<Stat> {
        let m = self.fs.meta.read();
        self.fs.stat_ino(&m, self.ino).ok_or_else(|| self.gone())
    }

    /// Reads up to `len` bytes at `offset`; short at end of file. Holes
    /// read as zeros.
    ///
    /// On an RO mount the lease is checked before and *after* the device
    /// reads: bytes read while the lease was not certainly valid may belong
    /// to another file (the RW may have reused the blocks) and are never
    /// returned.
    ///
    /// # Errors
    /// [`FsError::LeaseLost`] (RO) when the mount lease lapsed since this
    /// handle was opened, or is not known valid now; [`FsError::NotFound`]
    /// when the inode was freed; device errors.
    pub fn pread(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_lease()?;
        let ro = self.fs.mode == crate::fs::Mode::Ro;
        let mut tries = 0;
        loop {
            let m = self.fs.meta.read();
            // RO: a truncate applied by catch-up between our planning and
            // our device reads lets the RW reuse the cut blocks (once we
            // publish the new lsn), so the bytes may be another file's.
            // Reads run without the lock (catch-up never waits for device
            // reads) and are redone when a cut was applied meanwhile;
            // after a few such races, the lock is held across the reads.
            let cuts = self.fs.cuts.load(Ordering::SeqCst);
            let (plan, overlay) = match self.plan(&m, offset, len)? {
                Some(p) => p,
                None => return Ok(Vec::new()),
            };
            let hold = ro && tries >= OPTIMISTIC_READS;
            let _held = if hold {
                Some(m)
            } else {
                drop(m);
                None
            };
            let out = self.read_plan(plan, &overlay, len)?;
            if ro && !hold && self.fs.cuts.load(Ordering::SeqCst) != cuts {
                tries += 1;
                continue;
            }
            // After the data: the lease must have covered the whole read.
            self.check_lease()?;
            return Ok(out);
        }
    }

    /// A read's plan: (device offset or None for a hole, length), merged,
    /// and copies of the bytes the device may not have yet: journaled
    /// ones not yet home (RW and RO), then queued ones (RW), newer,
    /// applied last (copied now: a commit may drain or home them before
    /// our device reads). `None` at or past the end of the file.
    fn plan(&self, m: &Meta, offset: u64, len: usize) -> Result<Option<ReadPlan>> {
        let bs = self.fs.sb.block_size;
        let data_off = self.fs.sb.data_off;
        let mut plan: Vec<(Option<u64>, u64)> = Vec::new();
        let mut queued: Vec<(u64, Vec<u8>)> = Vec::new();
        let inode = m.st.inodes.get(&self.ino).ok_or_else(|| self.gone())?;
        if offset >= inode.size {
            return Ok(None);
        }
        let end = inode.size.min(offset.saturating_add(len as u64));
        let mut pos = offset;
        while pos < end {
            let l = pos / bs;
            let n = ((l + 1) * bs).min(end) - pos;
            let dev = match inode.blocks.get(l as usize).copied().unwrap_or(HOLE) {
                HOLE => None,
                p => Some(data_off + p * bs + pos % bs),
            };
            match plan.last_mut() {
                Some((Some(d), len)) if dev == Some(*d + *len) => *len += n,
                Some((None, len)) if dev.is_none() => *len += n,
                _ => plan.push((dev, n)),
            }
            pos += n;
        }
        for overlay in [&m.unhomed, &m.data] {
            if overlay.is_empty() {
                continue;
            }
            for &(dev, n) in &plan {
                if let Some(d) = dev {
                    queued.extend(overlay.pieces_in(d, n));
                }
            }
        }
        Ok(Some((plan, queued)))
    }

    /// Reads a plan from the device and copies the overlay over it.
    fn read_plan(
        &self,
        plan: Vec<(Option<u64>, u64)>,
        overlay: &[(u64, Vec<u8>)],
        len: usize,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for (dev, n) in plan {
            match dev {
                Some(d) => {
                    let at = out.len();
                    out.extend_from_slice(&self.fs.dev.read_at(d, n as usize)?);
                    for (q_off, q) in overlay.iter().filter(|(o, _)| (d..d + n).contains(o)) {
                        let from = at + (q_off - d) as usize;
                        out[from..from + q.len()].copy_from_slice(q);
                    }
                }
                None => out.resize(out.len() + n as usize, 0),
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, allocating blocks as needed. Durable
    /// data, but the new size and mapping are committed by the next
    /// `fsync` (or any namespace operation).
    ///
    /// # Errors
    /// [`FsError::NoSpace`], [`FsError::TooLarge`], [`FsError::ReadOnly`],
    /// [`FsError::Fenced`], device errors (nothing is mapped for a failed
    /// write).
    pub fn pwrite(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_write()?;
        let _w = self.wlock.lock();
        self.write_locked(offset, data)
    }

    /// Appends `data` at the current end; returns the offset it landed at.
    ///
    /// # Errors
    /// As [`File::pwrite`].
    pub fn append(&self, data: &[u8]) -> Result<u64> {
        self.check_write()?;
        let _w = self.wlock.lock();
        let off = self.stat()?.size;
        self.write_locked(off, data)?;
        Ok(off)
    }

    /// Refuses sizes past [`crate::max_file_size`].
    fn check_size(&self, end: Option<u64>) -> Result<()> {
        match end {
            Some(e) if e <= crate::max_file_size(self.fs.sb.block_size) => Ok(()),
            _ => Err(FsError::TooLarge {
                path: self.path.clone(),
            }),
        }
    }

    fn write_locked(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_size(offset.checked_add(data.len() as u64))?;
        let mut done = 0usize;
        // A zero-length write changes nothing, not even the size.
        while done < data.len() {
            let n = (data.len() - done).min(PIECE as usize);
            self.write_piece(offset + done as u64, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Zero segments for the mapped parts of `[from, to)` (a range that
    /// becomes part of the file but was past its end).
    fn zero_mapped(blocks: &[u64], bs: u64, data_off: u64, from: u64, to: u64, out: &mut Vec<Seg>) {
        let mut pos = from;
        while pos < to {
            let l = pos / bs;
            let n = ((l + 1) * bs).min(to) - pos;
            if let Some(&p) = blocks.get(l as usize) {
                if p != HOLE {
                    push_zeros(out, data_off + p * bs + pos % bs, n);
                }
            }
            pos += n;
        }
    }

    /// One step of a write (at most [`PIECE`] bytes): reserve blocks, write
    /// data and zeros, then queue the records.
    fn write_piece(&self, offset: u64, data: &[u8]) -> Result<()> {
        let bs = self.fs.sb.block_size;
        let data_off = self.fs.sb.data_off;
        let end = offset + data.len() as u64;
        let mut segs: Vec<Seg> = Vec::new();
        // Fresh (logical, physical) blocks reserved for this step.
        let mut fresh: Vec<(u64, u64)> = Vec::new();
        let old_size;
        {
            let mut m = self.fs.meta.write();
            let inode = m.st.inodes.get(&self.ino).ok_or_else(|| self.gone())?;
            old_size = inode.size;
            if offset > old_size {
                Self::zero_mapped(&inode.blocks, bs, data_off, old_size, offset, &mut segs);
            }
            let mut missing = Vec::new();
            let mut phys = Vec::new();
            if !data.is_empty() {
                for l in offset / bs..=(end - 1) / bs {
                    let p = inode.blocks.get(l as usize).copied().unwrap_or(HOLE);
                    if p == HOLE {
                        missing.push(l);
                    }
                    phys.push((l, p));
                }
            }
            if !missing.is_empty() {
                let runs =
                    m.st.alloc
                        .alloc(missing.len() as u64)
                        .ok_or(FsError::NoSpace)?;
                let blocks = runs.iter().flat_map(|&(s, c)| s..s + c);
                fresh = missing.iter().copied().zip(blocks).collect();
            }
            let mut fi = fresh.iter().peekable();
            for (l, p) in phys {
                let blk_start = l * bs;
                let blk_end = blk_start + bs;
                let (p, is_fresh) = if p == HOLE {
                    let &(_, fp) = fi.next().expect("one fresh block per missing block");
                    (fp, true)
                } else {
                    (p, false)
                };
                let base = data_off + p * bs;
                if is_fresh && offset > blk_start {
                    push_zeros(&mut segs, base, offset - blk_start);
                }
                let a = offset.max(blk_start);
                let b = end.min(blk_end);
                segs.push(Seg {
                    dev_off: base + (a - blk_start),
                    data: data[(a - offset) as usize..(b - offset) as usize].to_vec(),
                });
                if is_fresh && old_size > end && end < blk_end {
                    let z_end = old_size.min(blk_end);
                    push_zeros(&mut segs, base + (end - blk_start), z_end - end);
                }
            }
        }
        let new_size = old_size.max(end);
        let new_size = (new_size != old_size).then_some(new_size);
        if segs.iter().map(|s| s.data.len()).sum::<usize>() <= DEFER_MAX {
            // Small (the WAL pattern): the data goes out with the commit.
            return self.queue_mapping(&fresh, new_size, false, segs);
        }
        if let Err(e) = write_segs(&self.fs, segs) {
            let mut m = self.fs.meta.write();
            for &(_, p) in &fresh {
                m.st.alloc.clear(p);
            }
            return Err(e);
        }
        self.queue_mapping(&fresh, new_size, false, Vec::new())
    }

    /// Queues Map records for `fresh` blocks and an optional new size
    /// (`cut`: a truncate, which also drops blocks past it), and `data`
    /// not yet written, under one lock so a commit takes both or neither.
    fn queue_mapping(
        &self,
        fresh: &[(u64, u64)],
        new_size: Option<u64>,
        cut: bool,
        data: Vec<Seg>,
    ) -> Result<()> {
        let commit_now = {
            let mut m = self.fs.meta.write();
            if !data.is_empty() {
                for seg in data {
                    m.data.insert(seg.dev_off, seg.data);
                }
                // An in-place overwrite queues no record; the bump makes
                // the next fsync commit (write) it all the same.
                m.op_seq += 1;
            }
            let mut i = 0;
            while i < fresh.len() {
                // A record maps logically contiguous blocks.
                let mut j = i + 1;
                while j < fresh.len() && fresh[j].0 == fresh[j - 1].0 + 1 {
                    j += 1;
                }
                let phys: Vec<u64> = fresh[i..j].iter().map(|f| f.1).collect();
                let op = Op::Map {
                    ino: self.ino,
                    logical: fresh[i].0,
                    runs: runs_of(&phys),
                };
                self.fs.push(&mut m, op, &self.path)?;
                i = j;
            }
            let now = now_ns();
            match new_size {
                Some(size) => {
                    let op = if cut {
                        Op::Truncate {
                            ino: self.ino,
                            size,
                            mtime: now,
                        }
                    } else {
                        Op::SetSize {
                            ino: self.ino,
                            size,
                            mtime: now,
                        }
                    };
                    self.fs.push(&mut m, op, &self.path)?;
                }
                None => {
                    // In-place overwrites change only mtime, kept in memory
                    // until the next size change journals it.
                    if let Some(i) = m.st.inodes.get_mut(&self.ino) {
                        i.mtime = now;
                        i.ctime = now;
                    }
                }
            }
            self.fs.pending_large(&m) || m.data.bytes() > QUEUED_MAX
        };
        if commit_now {
            self.fs.commit(self.fs.op_seq(), false)?;
        }
        Ok(())
    }

    /// Sets the size. Growing makes `[old, size)` read as zeros; shrinking
    /// moves the cut blocks to the pending-free list. Committed by the
    /// next `fsync`.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`], [`FsError::Fenced`], device errors.
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.check_write()?;
        self.check_size(Some(size))?;
        let _w = self.wlock.lock();
        let bs = self.fs.sb.block_size;
        let mut segs = Vec::new();
        let old = {
            let m = self.fs.meta.read();
            let inode = m.st.inodes.get(&self.ino).ok_or_else(|| self.gone())?;
            if size > inode.size {
                Self::zero_mapped(
                    &inode.blocks,
                    bs,
                    self.fs.sb.data_off,
                    inode.size,
                    size,
                    &mut segs,
                );
            }
            inode.size
        };
        write_segs(&self.fs, segs)?;
        let keep = size.div_ceil(bs) as usize;
        let has_tail = self
            .fs
            .meta
            .read()
            .st
            .inodes
            .get(&self.ino)
            .is_some_and(|i| i.blocks.len() > keep);
        if size == old && !has_tail {
            return Ok(());
        }
        self.queue_mapping(&[], Some(size), true, Vec::new())
    }

    /// Allocates blocks for `[offset, offset + len)`. With `keep_size` the
    /// size is unchanged (preallocation, as RocksDB does for WAL and SST
    /// files); without, the size grows to cover the range, reading zeros.
    ///
    /// # Errors
    /// [`FsError::NoSpace`], [`FsError::ReadOnly`], device errors.
    pub fn fallocate(&self, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        self.check_write()?;
        if len == 0 {
            return Err(FsError::InvalidArgument {
                what: "fallocate of zero bytes".into(),
            });
        }
        let end = offset.checked_add(len);
        self.check_size(end)?;
        let end = end.expect("checked by check_size");
        let _w = self.wlock.lock();
        let bs = self.fs.sb.block_size;
        let data_off = self.fs.sb.data_off;
        let mut segs = Vec::new();
        let mut fresh: Vec<(u64, u64)> = Vec::new();
        let (old, new_size) = {
            let mut m = self.fs.meta.write();
            let inode = m.st.inodes.get(&self.ino).ok_or_else(|| self.gone())?;
            let old = inode.size;
            let new_size = if keep_size { old } else { old.max(end) };
            if new_size > old {
                Self::zero_mapped(&inode.blocks, bs, data_off, old, new_size, &mut segs);
            }
            let missing: Vec<u64> = (offset / bs..=(end - 1) / bs)
                .filter(|&l| inode.blocks.get(l as usize).copied().unwrap_or(HOLE) == HOLE)
                .collect();
            if !missing.is_empty() {
                let runs =
                    m.st.alloc
                        .alloc(missing.len() as u64)
                        .ok_or(FsError::NoSpace)?;
                fresh = missing
                    .into_iter()
                    .zip(runs.iter().flat_map(|&(s, c)| s..s + c))
                    .collect();
            }
            // Fresh blocks below the (new) size must read as zeros.
            for &(l, p) in &fresh {
                let z = new_size.min((l + 1) * bs).saturating_sub(l * bs);
                if z > 0 {
                    push_zeros(&mut segs, data_off + p * bs, z);
                }
            }
            (old, new_size)
        };
        if let Err(e) = write_segs(&self.fs, segs) {
            let mut m = self.fs.meta.write();
            for &(_, p) in &fresh {
                m.st.alloc.clear(p);
            }
            return Err(e);
        }
        self.queue_mapping(
            &fresh,
            (new_size != old).then_some(new_size),
            false,
            Vec::new(),
        )
    }

    /// Makes this file durable: commits the queued metadata and small
    /// writes (of every file: group commit). WAL pattern cost: one batch
    /// of concurrent device writes (header with the records inline, ring
    /// copy, the appended bytes), i.e. one round trip.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`] / [`FsError::Fenced`] when the mount can no
    /// longer write; device errors (the mount then turns read-only).
    pub fn fsync(&self) -> Result<()> {
        if self.fs.mode == crate::fs::Mode::Ro {
            return Ok(());
        }
        self.fs.commit(self.fs.op_seq(), false)
    }
}

fn push_zeros(out: &mut Vec<Seg>, dev_off: u64, len: u64) {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK);
        out.push(Seg {
            dev_off: dev_off + done,
            data: vec![0; n as usize],
        });
        done += n;
    }
}

/// Writes the segments straight to the device, merging neighbours into
/// one device write.
fn write_segs(fs: &Inner, mut segs: Vec<Seg>) -> Result<()> {
    let ranges: Vec<(u64, u64)> = segs
        .iter()
        .map(|s| (s.dev_off, s.data.len() as u64))
        .collect();
    fs.before_direct_write(&ranges)?;
    segs.sort_by_key(|s| s.dev_off);
    write_sorted(fs, segs).map_err(|e| fs.data_error(e))
}

fn write_sorted(fs: &Inner, segs: Vec<Seg>) -> Result<(), crate::error::DeviceError> {
    let mut cur: Option<Seg> = None;
    for s in segs {
        match &mut cur {
            Some(c)
                if c.dev_off + c.data.len() as u64 == s.dev_off
                    && c.data.len() < PIECE as usize =>
            {
                c.data.extend_from_slice(&s.data)
            }
            _ => {
                if let Some(c) = cur.take() {
                    fs.dev.write_at(c.dev_off, &c.data)?;
                }
                cur = Some(s);
            }
        }
    }
    if let Some(c) = cur {
        fs.dev.write_at(c.dev_off, &c.data)?;
    }
    Ok(())
}
