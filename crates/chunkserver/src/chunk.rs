//! The chunk store of one copyset replica: data files plus per-sector CRCs.
//!
//! Files live under `copysets/<copyset>/`: `<volume>_<chunk>.dat` holds the
//! chunk's bytes (preallocated to `CHUNK_SIZE`), `<volume>_<chunk>.crc` the
//! CRC32C of every 4 KiB sector as of the last checkpoint:
//!
//! ```text
//!  0        4         8                         8 + 4 * 16384
//!  +--------+---------+-------------------------+-----------+
//!  | "PKCR" | version | 16384 × u32 crc32c      | u32 crc32c|
//!  |        | u32 = 1 | (0 = never written)     | of array  |
//!  +--------+---------+-------------------------+-----------+
//! ```
//!
//! A CRC of 0 means "never written": the sector must then be all zeros (a
//! sector whose real CRC happens to be 0 is accepted too). In memory the CRCs
//! are always current; on disk they are as of the last checkpoint, and the
//! WAL entries after it are re-applied at startup.
//!
//! A per-chunk `RwLock` makes a read see either none or all of an applied
//! write (data and CRCs move together). Reads verify every sector they touch
//! and never return bytes that fail.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use pikafs_proto::{VolumeId, CHUNK_SIZE, SECTOR_SIZE};

use crate::error::ChunkError;
use crate::metrics::Metrics;
use crate::wal::preallocate;

/// Sectors per chunk.
pub const SECTORS_PER_CHUNK: usize = (CHUNK_SIZE as usize) / SECTOR_SIZE;
/// Free space to keep on the disk when creating chunk files.
pub const FREE_SPACE_RESERVE: u64 = 64 << 20;
const CRC_MAGIC: &[u8; 4] = b"PKCR";
const CRC_VERSION: u32 = 1;

struct ChunkState {
    crcs: Vec<u32>,
    /// Sectors known bad whatever their bytes: a corrupt sector kept by a
    /// read-modify-write, or every sector of a chunk whose CRC file was
    /// unreadable. Cleared only by a full rewrite of the sector.
    poison: Vec<u64>,
    dirty: bool,
}

impl ChunkState {
    fn new(crcs: Vec<u32>, poisoned: bool, dirty: bool) -> ChunkState {
        let word = if poisoned { u64::MAX } else { 0 };
        ChunkState {
            crcs,
            poison: vec![word; SECTORS_PER_CHUNK / 64],
            dirty,
        }
    }
    fn poisoned(&self, sector: usize) -> bool {
        self.poison[sector / 64] & (1 << (sector % 64)) != 0
    }
    fn set_poison(&mut self, sector: usize, on: bool) {
        if on {
            self.poison[sector / 64] |= 1 << (sector % 64);
        } else {
            self.poison[sector / 64] &= !(1 << (sector % 64));
        }
    }
    fn sector_ok(&self, sector: usize, data: &[u8]) -> bool {
        !self.poisoned(sector) && sector_ok(self.crcs[sector], data)
    }
}

struct Chunk {
    path: PathBuf,
    file: File,
    state: RwLock<ChunkState>,
}

/// Chunks of one copyset on this server.
pub struct ChunkStore {
    dir: PathBuf,
    chunks: RwLock<HashMap<(VolumeId, u64), Arc<Chunk>>>,
    /// Serialises chunk creation so two writers don't race to create a file.
    create: Mutex<()>,
    /// Serialises `sync` (checkpoint thread vs snapshot copy): both write
    /// the same temporary CRC files.
    sync_lock: Mutex<()>,
    metrics: Metrics,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// True if `data` is a valid content for a sector whose recorded CRC is `crc`.
fn sector_ok(crc: u32, data: &[u8]) -> bool {
    let real = crc32c::crc32c(data);
    real == crc || (crc == 0 && data.iter().all(|&b| b == 0))
}

pub(crate) fn check_range(offset: u64, len: u64) -> Result<(), ChunkError> {
    if offset.checked_add(len).is_none_or(|end| end > CHUNK_SIZE) {
        return Err(ChunkError::OutOfRange { offset, len });
    }
    Ok(())
}

fn encode_crcs(crcs: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + crcs.len() * 4);
    out.extend_from_slice(CRC_MAGIC);
    out.extend_from_slice(&CRC_VERSION.to_le_bytes());
    for c in crcs {
        out.extend_from_slice(&c.to_le_bytes());
    }
    let sum = crc32c::crc32c(&out[8..]);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn decode_crcs(data: &[u8]) -> Option<Vec<u32>> {
    if data.len() != 12 + SECTORS_PER_CHUNK * 4 || &data[..4] != CRC_MAGIC {
        return None;
    }
    if u32::from_le_bytes(data[4..8].try_into().ok()?) != CRC_VERSION {
        return None;
    }
    let body = &data[8..data.len() - 4];
    let sum = u32::from_le_bytes(data[data.len() - 4..].try_into().ok()?);
    if crc32c::crc32c(body) != sum {
        return None;
    }
    Some(
        body.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    )
}

/// Writes `data` to `path` atomically: tmp file, fsync, rename. The caller
/// fsyncs the directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Fsyncs a directory so renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free bytes of the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl ChunkStore {
    /// Opens the store in `dir` (created if missing), loading every chunk's
    /// CRCs. A data file without a CRC file was created after the last
    /// checkpoint: all its writes are still in the WAL and will be
    /// re-applied, so its CRCs start as "never written".
    ///
    /// # Errors
    /// IO errors or a malformed CRC file.
    pub fn open(dir: &Path, metrics: Metrics) -> Result<ChunkStore, ChunkError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut chunks = HashMap::new();
        for ent in fs::read_dir(dir).map_err(io(dir))? {
            let ent = ent.map_err(io(dir))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".dat") else {
                continue;
            };
            let Some((v, c)) = stem.split_once('_') else {
                continue;
            };
            let (Ok(volume), Ok(chunk)) = (v.parse::<u64>(), c.parse::<u64>()) else {
                continue;
            };
            let path = ent.path();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            let crc_path = path.with_extension("crc");
            let state = match fs::read(&crc_path) {
                Ok(data) => match decode_crcs(&data) {
                    Some(crcs) => ChunkState::new(crcs, false, false),
                    None => {
                        // Unverifiable data is never served: every sector
                        // stays Corrupt until rewritten in full.
                        tracing::error!(path = %crc_path.display(), "crc file is damaged; poisoning the whole chunk");
                        ChunkState::new(vec![0; SECTORS_PER_CHUNK], true, true)
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ChunkState::new(vec![0; SECTORS_PER_CHUNK], false, false)
                }
                Err(e) => return Err(io(&crc_path)(e)),
            };
            chunks.insert(
                (volume, chunk),
                Arc::new(Chunk {
                    path,
                    file,
                    state: RwLock::new(state),
                }),
            );
        }
        Ok(ChunkStore {
            dir: dir.to_path_buf(),
            chunks: RwLock::new(chunks),
            create: Mutex::new(()),
            sync_lock: Mutex::new(()),
            metrics,
        })
    }

    /// Directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn get(&self, volume: VolumeId, chunk: u64) -> Option<Arc<Chunk>> {
        self.chunks
            .read()
            .expect("chunk map lock poisoned")
            .get(&(volume, chunk))
            .cloned()
    }

    /// True when the chunk file exists.
    pub fn contains(&self, volume: VolumeId, chunk: u64) -> bool {
        self.get(volume, chunk).is_some()
    }

    /// Number of chunk files.
    pub fn chunk_count(&self) -> usize {
        self.chunks.read().expect("chunk map lock poisoned").len()
    }

    /// Every (volume, chunk) held, sorted.
    pub fn list(&self) -> Vec<(VolumeId, u64)> {
        let mut v: Vec<_> = self
            .chunks
            .read()
            .expect("chunk map lock poisoned")
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    fn get_or_create(&self, volume: VolumeId, chunk: u64) -> Result<Arc<Chunk>, ChunkError> {
        if let Some(c) = self.get(volume, chunk) {
            return Ok(c);
        }
        let _guard = self.create.lock().expect("chunk create lock poisoned");
        if let Some(c) = self.get(volume, chunk) {
            return Ok(c);
        }
        let path = self.dir.join(format!("{volume}_{chunk}.dat"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        preallocate(&file, CHUNK_SIZE).map_err(io(&path))?;
        fsync_dir(&self.dir).map_err(io(&self.dir))?;
        let c = Arc::new(Chunk {
            path,
            file,
            state: RwLock::new(ChunkState::new(vec![0; SECTORS_PER_CHUNK], false, true)),
        });
        self.chunks
            .write()
            .expect("chunk map lock poisoned")
            .insert((volume, chunk), c.clone());
        Ok(c)
    }

    /// Writes `data` at `offset` of the chunk, creating the chunk file on
    /// first write. Partial edge sectors are read-modify-written; when
    /// `verify_edges` is set their old content must pass its CRC, and a
    /// corrupt old sector stays poisoned (its CRC is not recomputed) rather
    /// than being silently blessed.
    ///
    /// # Errors
    /// Out-of-range writes and IO errors (fatal for the caller when applying).
    pub fn write(
        &self,
        volume: VolumeId,
        chunk: u64,
        offset: u64,
        data: &[u8],
        verify_edges: bool,
    ) -> Result<(), ChunkError> {
        check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let c = self.get_or_create(volume, chunk)?;
        let mut st = c.state.write().expect("chunk lock poisoned");
        let first = (offset as usize) / SECTOR_SIZE;
        let end = offset as usize + data.len();
        let last = (end - 1) / SECTOR_SIZE;
        let base = first * SECTOR_SIZE;
        let mut buf = vec![0u8; (last - first + 1) * SECTOR_SIZE];
        let mut poisoned: Vec<usize> = Vec::new();
        let head_partial = !(offset as usize).is_multiple_of(SECTOR_SIZE);
        let tail_partial = !end.is_multiple_of(SECTOR_SIZE);
        for (sector, partial) in [(first, head_partial), (last, tail_partial)] {
            if !partial || poisoned.contains(&sector) {
                continue;
            }
            if st.poisoned(sector) {
                poisoned.push(sector);
            }
            let at = (sector - first) * SECTOR_SIZE;
            let slot = &mut buf[at..at + SECTOR_SIZE];
            c.file
                .read_exact_at(slot, (sector * SECTOR_SIZE) as u64)
                .map_err(io(&c.path))?;
            if verify_edges && !poisoned.contains(&sector) && !st.sector_ok(sector, slot) {
                self.metrics.crc_errors_total.inc();
                tracing::warn!(
                    volume,
                    chunk,
                    sector,
                    "crc mismatch on read-modify-write; sector stays poisoned"
                );
                poisoned.push(sector);
            }
        }
        let rel = offset as usize - base;
        buf[rel..rel + data.len()].copy_from_slice(data);
        c.file
            .write_all_at(&buf, base as u64)
            .map_err(io(&c.path))?;
        for (i, sector) in (first..=last).enumerate() {
            if poisoned.contains(&sector) {
                st.set_poison(sector, true);
                continue;
            }
            st.set_poison(sector, false);
            st.crcs[sector] = crc32c::crc32c(&buf[i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE]);
        }
        st.dirty = true;
        Ok(())
    }

    /// Reads `len` bytes at `offset`, verifying every sector touched.
    /// Never-written chunks and sectors read as zeros.
    ///
    /// # Errors
    /// `Corrupt` if any sector fails its CRC (no bytes are returned), IO and
    /// range errors.
    pub fn read(
        &self,
        volume: VolumeId,
        chunk: u64,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, ChunkError> {
        check_range(offset, len as u64)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let Some(c) = self.get(volume, chunk) else {
            return Ok(Bytes::from(vec![0u8; len]));
        };
        let st = c.state.read().expect("chunk lock poisoned");
        let first = offset as usize / SECTOR_SIZE;
        let last = (offset as usize + len - 1) / SECTOR_SIZE;
        let base = first * SECTOR_SIZE;
        let mut buf = vec![0u8; (last - first + 1) * SECTOR_SIZE];
        c.file
            .read_exact_at(&mut buf, base as u64)
            .map_err(io(&c.path))?;
        for (i, sector) in (first..=last).enumerate() {
            if !st.sector_ok(sector, &buf[i * SECTOR_SIZE..(i + 1) * SECTOR_SIZE]) {
                self.metrics.crc_errors_total.inc();
                tracing::warn!(volume, chunk, sector, path = %c.path.display(), "crc mismatch on read");
                return Err(ChunkError::Corrupt {
                    volume,
                    chunk,
                    sector,
                });
            }
        }
        let rel = offset as usize - base;
        Ok(Bytes::from(buf).slice(rel..rel + len))
    }

    /// The CRC a healthy copy of `sector` must have, or `None` when the
    /// sector is poisoned (nothing to check a copy against).
    pub fn expected_crc(&self, volume: VolumeId, chunk: u64, sector: usize) -> Option<u32> {
        let c = self.get(volume, chunk)?;
        let st = c.state.read().expect("chunk lock poisoned");
        (sector < SECTORS_PER_CHUNK && !st.poisoned(sector)).then(|| st.crcs[sector])
    }

    /// Overwrites a corrupt sector with `data` fetched from another replica,
    /// only if `data` matches the CRC this replica expects *now* (so a stale
    /// or newer copy is never accepted). Returns true when repaired.
    ///
    /// # Errors
    /// IO errors.
    pub fn repair_sector(
        &self,
        volume: VolumeId,
        chunk: u64,
        sector: usize,
        data: &[u8],
    ) -> Result<bool, ChunkError> {
        let Some(c) = self.get(volume, chunk) else {
            return Ok(false);
        };
        if data.len() != SECTOR_SIZE || sector >= SECTORS_PER_CHUNK {
            return Ok(false);
        }
        let st = c.state.write().expect("chunk lock poisoned");
        if st.poisoned(sector) || !sector_ok(st.crcs[sector], data) {
            return Ok(false);
        }
        c.file
            .write_all_at(data, (sector * SECTOR_SIZE) as u64)
            .map_err(io(&c.path))?;
        tracing::info!(
            volume,
            chunk,
            sector,
            "corrupt sector repaired from a replica"
        );
        Ok(true)
    }

    /// Recomputes every sector's CRC from the data on disk, trusting it.
    /// Only for a copyset whose snapshot copy was cut short by a crash: its
    /// chunks mix copied data (whose CRCs were never saved) with old data,
    /// and the leader will send the snapshot again, rewriting every chunk it
    /// holds. All-zero sectors are recorded as never written.
    ///
    /// # Errors
    /// IO errors.
    pub fn recompute_crcs(&self) -> Result<(), ChunkError> {
        let chunks: Vec<Arc<Chunk>> = self
            .chunks
            .read()
            .expect("chunk map lock poisoned")
            .values()
            .cloned()
            .collect();
        let mut buf = vec![0u8; 1 << 20];
        for c in chunks {
            let mut st = c.state.write().expect("chunk lock poisoned");
            let per = buf.len() / SECTOR_SIZE;
            for first in (0..SECTORS_PER_CHUNK).step_by(per) {
                c.file
                    .read_exact_at(&mut buf, (first * SECTOR_SIZE) as u64)
                    .map_err(io(&c.path))?;
                for (i, sector) in buf.chunks_exact(SECTOR_SIZE).enumerate() {
                    st.crcs[first + i] = if sector.iter().all(|&b| b == 0) {
                        0
                    } else {
                        crc32c::crc32c(sector)
                    };
                }
            }
            st.poison.iter_mut().for_each(|w| *w = 0);
            st.dirty = true;
        }
        Ok(())
    }

    /// True when every sector of the range was never written (so copying
    /// zeros into it can be skipped).
    pub fn is_unwritten(&self, volume: VolumeId, chunk: u64, offset: u64, len: usize) -> bool {
        let Some(c) = self.get(volume, chunk) else {
            return true;
        };
        let st = c.state.read().expect("chunk lock poisoned");
        let first = offset as usize / SECTOR_SIZE;
        let last = ((offset as usize + len.max(1) - 1) / SECTOR_SIZE).min(SECTORS_PER_CHUNK - 1);
        (first..=last).all(|i| st.crcs[i] == 0 && !st.poisoned(i))
    }

    /// Makes every write so far durable: fdatasync of dirty data files, then
    /// their CRC files written atomically, then one directory fsync.
    ///
    /// # Errors
    /// IO errors (fatal for the caller).
    pub fn sync(&self) -> Result<(), ChunkError> {
        let _serial = self.sync_lock.lock().expect("sync lock poisoned");
        let chunks: Vec<Arc<Chunk>> = self
            .chunks
            .read()
            .expect("chunk map lock poisoned")
            .values()
            .cloned()
            .collect();
        let mut any = false;
        for c in chunks {
            // Snapshot the CRCs under the read lock: data written later is
            // covered by WAL replay, and sync_data below only makes more of
            // it durable.
            let crcs = {
                let st = c.state.read().expect("chunk lock poisoned");
                if !st.dirty {
                    continue;
                }
                st.crcs.clone()
            };
            c.file.sync_data().map_err(io(&c.path))?;
            let crc_path = c.path.with_extension("crc");
            write_atomic(&crc_path, &encode_crcs(&crcs)).map_err(io(&crc_path))?;
            let mut st = c.state.write().expect("chunk lock poisoned");
            if st.crcs == crcs {
                st.dirty = false;
            }
            any = true;
        }
        if any {
            fsync_dir(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// True if a write to this chunk would need a new file and the disk (or
    /// the configured capacity, when `capacity_left` is given) has no room.
    pub fn lacks_space_for(
        &self,
        volume: VolumeId,
        chunk: u64,
        capacity_left: Option<u64>,
    ) -> bool {
        if self.contains(volume, chunk) {
            return false;
        }
        if capacity_left.is_some_and(|left| left < CHUNK_SIZE) {
            return true;
        }
        match free_bytes(&self.dir) {
            Ok(free) => free < CHUNK_SIZE + FREE_SPACE_RESERVE,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> ChunkStore {
        ChunkStore::open(dir, Metrics::unregistered()).unwrap()
    }

    #[test]
    fn unaligned_write_read_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.read(1, 0, 100, 10).unwrap().as_ref(), &[0u8; 10]);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
        s.write(1, 0, 4000, &data, true).unwrap();
        assert_eq!(s.read(1, 0, 4000, data.len()).unwrap().as_ref(), &data[..]);
        // Bytes around the write are still zeros and verify.
        assert_eq!(s.read(1, 0, 3990, 10).unwrap().as_ref(), &[0u8; 10]);
        assert_eq!(s.read(1, 0, 14_000, 100).unwrap().as_ref(), &[0u8; 100]);
        // Overwrite the middle across a sector boundary.
        s.write(1, 0, 8190, b"abcd", true).unwrap();
        let got = s.read(1, 0, 8188, 8).unwrap();
        assert_eq!(&got[..2], &data[4188..4190]);
        assert_eq!(&got[2..6], b"abcd");
        assert_eq!(&got[6..], &data[4194..4196]);
        // Never-written sectors far away read as zeros.
        assert_eq!(s.read(1, 0, CHUNK_SIZE - 5, 5).unwrap().as_ref(), &[0u8; 5]);
        assert!(matches!(
            s.read(1, 0, CHUNK_SIZE - 5, 6),
            Err(ChunkError::OutOfRange { .. })
        ));
        assert!(s.write(1, 0, CHUNK_SIZE, b"x", true).is_err());
        assert_eq!(s.list(), vec![(1, 0)]);
    }

    #[test]
    fn flipped_byte_is_corrupt_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write(7, 3, 0, &[0xAB; 8192], true).unwrap();
        let path = dir.path().join("7_3.dat");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAC], 5000).unwrap();
        drop(f);
        match s.read(7, 3, 4096, 10) {
            Err(ChunkError::Corrupt { sector: 1, .. }) => {}
            other => panic!("expected corrupt, got {other:?}"),
        }
        // The untouched sector still reads.
        assert_eq!(s.read(7, 3, 0, 4096).unwrap().as_ref(), &[0xAB; 4096]);
        // A partial write over the corrupt sector keeps it poisoned.
        s.write(7, 3, 4100, b"zz", true).unwrap();
        assert!(s.read(7, 3, 4096, 10).is_err());
        // A full-sector overwrite heals it.
        s.write(7, 3, 4096, &[1; 4096], true).unwrap();
        assert_eq!(s.read(7, 3, 4096, 4096).unwrap().as_ref(), &[1; 4096]);
        // A never-written sector with garbage is corrupt too.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[9], 1 << 20).unwrap();
        assert!(s.read(7, 3, 1 << 20, 1).is_err());
    }

    #[test]
    fn crcs_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write(2, 1, 123, b"hello world", true).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = store(dir.path());
        assert_eq!(s.read(2, 1, 123, 11).unwrap().as_ref(), b"hello world");
        // The reloaded CRCs still catch corruption.
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("2_1.dat"))
            .unwrap();
        f.write_all_at(b"J", 123).unwrap();
        assert!(matches!(
            s.read(2, 1, 0, 200),
            Err(ChunkError::Corrupt { .. })
        ));
        drop(s);
        let s = store(dir.path());
        assert!(matches!(
            s.read(2, 1, 0, 200),
            Err(ChunkError::Corrupt { .. })
        ));
        assert!(!s.is_unwritten(2, 1, 0, 4096));
        assert!(s.is_unwritten(2, 1, 4096, 4096));
    }

    #[test]
    fn recompute_crcs_trusts_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write(1, 1, 0, &[5; 4096], true).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join("1_1.dat"))
            .unwrap();
        f.write_all_at(&[6; 10], 0).unwrap();
        f.write_all_at(&[7; 10], 8192).unwrap();
        assert!(s.read(1, 1, 0, 10).is_err());
        s.recompute_crcs().unwrap();
        assert_eq!(s.read(1, 1, 0, 10).unwrap().as_ref(), &[6; 10]);
        assert_eq!(s.read(1, 1, 8192, 10).unwrap().as_ref(), &[7; 10]);
        assert!(s.is_unwritten(1, 1, 4096, 4096));
    }

    #[test]
    fn damaged_crc_file_poisons_chunk_until_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.write(4, 2, 0, &[3; 8192], true).unwrap();
        s.sync().unwrap();
        drop(s);
        let crc = dir.path().join("4_2.crc");
        let mut d = fs::read(&crc).unwrap();
        d[20] ^= 1;
        fs::write(&crc, &d).unwrap();
        let s = store(dir.path());
        assert!(matches!(
            s.read(4, 2, 0, 1),
            Err(ChunkError::Corrupt { .. })
        ));
        assert!(matches!(
            s.read(4, 2, 1 << 20, 1),
            Err(ChunkError::Corrupt { .. })
        ));
        // A partial write keeps the sector poisoned; a full one heals it.
        s.write(4, 2, 4096, b"ab", true).unwrap();
        assert!(s.read(4, 2, 4096, 2).is_err());
        s.write(4, 2, 0, &[9; 4096], true).unwrap();
        assert_eq!(s.read(4, 2, 0, 4096).unwrap().as_ref(), &[9; 4096]);
    }
}
