//! The mounted file system: mount, commit, checkpoints, namespace
//! operations, RO catch-up and orphan release. File IO is in `file.rs`.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::checkpoint;
use crate::device::BlockDevice;
use crate::error::{DeviceError, FsError, Result};
use crate::file::File;
use crate::journal::{self, JournalHeader, TxnError};
use crate::lease::ReadLease;
use crate::metadata::{State, ROOT, UNCOMMITTED};
use crate::metrics::Metrics;
use crate::path::{components, resolve, resolve_parent};
use crate::pending::{self, PendingData};
use crate::record::{Ino, Kind, Lsn, Op, SetAttr};
use crate::superblock::{MkfsOptions, Superblock, SECTOR};

/// How a volume is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The one writer.
    Rw,
    /// A reader that follows the writer's journal with [`Fs::catch_up`].
    Ro,
}

/// How [`Fs::open`] treats the path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFlags {
    /// Create the file if it does not exist (committed before `open`
    /// returns).
    pub create: bool,
    /// Cut the file to zero bytes.
    pub truncate: bool,
    /// With `create`: fail with [`FsError::Exists`] if it exists.
    pub exclusive: bool,
    /// Open for writing (needs a RW mount).
    pub write: bool,
}

impl OpenFlags {
    /// Read-only access to an existing file.
    pub fn read() -> OpenFlags {
        OpenFlags::default()
    }
    /// Read-write, creating the file if needed.
    pub fn create() -> OpenFlags {
        OpenFlags {
            create: true,
            write: true,
            ..OpenFlags::default()
        }
    }
}

/// What `stat` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Bytes of data blocks mapped (including preallocation).
    pub allocated: u64,
    /// Permission bits (07777); the type is `kind`.
    pub mode: u32,
    /// Names of a non-directory (0 for an orphan: unlinked while open);
    /// 2 + subdirectories for a directory.
    pub nlink: u32,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    pub ctime_ns: u64,
    pub atime_ns: u64,
    pub uid: u32,
    pub gid: u32,
    /// Device number of a char or block device, else 0.
    pub rdev: u64,
}

/// Owner and permission bits of a new inode ([`Fs::open_as`],
/// [`Fs::mkdir_as`], [`Fs::mknod`], [`Fs::symlink`]). In a directory with
/// the set-group-ID bit, the new inode takes the directory's group
/// instead, and a new directory inherits the bit (as on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewAttrs {
    /// Permission bits (07777), the caller's umask already applied.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NewAttrs {
    /// `mode`, owned by this process's effective user and group (what the
    /// plain [`Fs::open`] and [`Fs::mkdir`] use).
    pub fn process(mode: u32) -> NewAttrs {
        // SAFETY: geteuid/getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        NewAttrs { mode, uid, gid }
    }
}

/// Longest symlink target, in bytes (`PATH_MAX` less its NUL).
pub const SYMLINK_MAX: usize = 4095;

/// One `readdir` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: Ino,
    pub kind: Kind,
}

/// Space and object counts (`df`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u64,
    pub total_bytes: u64,
    /// Blocks owned by live files, orphans and pending-free lists.
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Part of `used_bytes` held only by orphans and pending-free blocks,
    /// reusable after [`Fs::release_orphans`].
    pub orphan_bytes: u64,
    pub orphan_files: u64,
    pub files: u64,
    pub dirs: u64,
    /// Journal position this mount has applied (RW: committed).
    pub lsn: Lsn,
}

/// What [`Fs::release_orphans`] freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseStats {
    pub orphans_freed: u64,
    pub blocks_freed: u64,
}

pub(crate) struct OpenEntry {
    count: usize,
    pub(crate) wlock: Arc<Mutex<()>>,
}

pub(crate) struct Meta {
    pub(crate) st: State,
    /// Records applied in memory, not yet committed, in order.
    pending: Vec<Op>,
    pending_bytes: usize,
    /// Small data writes that go out with the next commit (see
    /// `crate::pending`); drained together with `pending`.
    pub(crate) data: PendingData,
    /// Journaled bytes not known to be home, tagged with the end lsn of
    /// the transaction that journaled them (newest bytes win). RW: what
    /// the next checkpoint writes home. RO: an overlay fed by replay,
    /// dropped once the header's `start` passes a tag (the RW homes
    /// everything before it moves `start`). Reads copy these over the
    /// device's bytes. At most the ring's size.
    pub(crate) unhomed: PendingData,
    /// Sequence number of the last record pushed.
    pub(crate) op_seq: u64,
    pub(crate) open: HashMap<Ino, OpenEntry>,
}

struct JournalState {
    /// RW: the last header written. RO: `end` is the applied lsn.
    header: JournalHeader,
    committed_seq: u64,
    /// RO: the in-memory state is unusable and must be reloaded.
    stale: bool,
    /// RW: device ranges `(offset, len)` guarded by the newest
    /// transaction's `DataCrc` (its data went out with its header).
    /// Writing into them before the next header would make that committed
    /// transaction look torn, so such writes seal it first.
    last_guard: Vec<(u64, u64)>,
}

pub(crate) struct Inner {
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) sb: Superblock,
    pub(crate) mode: Mode,
    // Lock order: `journal` before `meta`. Never take `journal` while
    // holding `meta` (a catch-up holding `journal` waits for `meta`).
    pub(crate) meta: RwLock<Meta>,
    journal: Mutex<JournalState>,
    /// Set when the RW can no longer write: (fenced, why).
    broken: Mutex<Option<(bool, String)>>,
    unmounted: AtomicBool,
    metrics: Metrics,
    /// Called with the new committed lsn after every durable commit (RW).
    commit_hook: RwLock<Option<CommitHook>>,
    /// RO through a session: whether reads can be trusted.
    pub(crate) lease: ReadLease,
    /// RO: bumped (under the metadata write lock) whenever catch-up
    /// applies something that frees blocks (a truncate, a freed orphan,
    /// released pending blocks) or reloads; a read that planned before a
    /// bump may have read reused blocks and is redone (`File::pread`).
    pub(crate) cuts: std::sync::atomic::AtomicU64,
}

/// See [`Fs::set_commit_hook`].
pub type CommitHook = Arc<dyn Fn(Lsn) + Send + Sync>;

/// What one [`Fs::catch_up_changes`] applied on an RO mount, for caches
/// (the FUSE kernel cache) that must forget what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The applied lsn after the call.
    pub lsn: Lsn,
    /// The mount reloaded from a checkpoint: anything may have changed
    /// (`inodes` and `entries` are then empty).
    pub reloaded: bool,
    /// Inodes whose attributes, size, data or entries changed (created,
    /// written, truncated, removed, renamed, or a directory whose entries
    /// changed), sorted, no duplicates.
    pub inodes: Vec<Ino>,
    /// `(parent, name)` bindings that were added, removed or replaced.
    pub entries: Vec<(Ino, String)>,
}

impl Changes {
    /// True when nothing was applied.
    pub fn is_empty(&self) -> bool {
        !self.reloaded && self.inodes.is_empty() && self.entries.is_empty()
    }
}

/// A mounted pikafs file system. Cheap to clone; `Send + Sync`, usable
/// from many threads at once. Every call blocks on device IO: do not call
/// it from an async task (use `spawn_blocking`).
#[derive(Clone)]
pub struct Fs {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("mode", &self.inner.mode)
            .field("sb", &self.inner.sb)
            .finish()
    }
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.write_u32(std::process::id());
    h.finish()
}

/// Creates an empty file system on `dev`, destroying what was there.
///
/// # Errors
/// [`FsError::InvalidArgument`] when the device is too small for `opts`;
/// device errors.
pub fn mkfs(dev: &dyn BlockDevice, opts: &MkfsOptions) -> Result<Superblock> {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&random_u64().to_le_bytes());
    uuid[8..].copy_from_slice(&random_u64().to_le_bytes());
    let now = now_ns();
    let sb = Superblock::layout(dev.size(), opts, uuid, now)?;
    let st = State::new(sb.block_size, sb.data_blocks, now);
    checkpoint::write(dev, &sb, 0, 0, &st.encode())?;
    // Clear both header slots so no header of an older file system
    // survives beside ours, then commit the empty journal.
    dev.write_at(
        crate::superblock::HEADER_OFF,
        &vec![0u8; 2 * SECTOR as usize],
    )?;
    journal::write_header(
        dev,
        &sb,
        &JournalHeader {
            seq: 1,
            start: 0,
            end: 0,
            ckpt_slot: 0,
            inline_len: 0,
            inline_data: 0,
        },
        &[],
    )?;
    // The superblock goes last: a device with a valid superblock always
    // has a valid journal header and checkpoint.
    dev.write_at(0, &sb.encode())?;
    tracing::debug!(
        block_size = sb.block_size,
        data_blocks = sb.data_blocks,
        journal = sb.ring_size,
        "mkfs done"
    );
    Ok(sb)
}

/// Loads the state a header describes: its checkpoint plus the journal
/// after it. The error's flag says the ring or slot may have been
/// overwritten under us (retryable for an RO).
fn load(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<(State, PendingData), (FsError, bool)> {
    let mut st = checkpoint::read(dev, sb, h.ckpt_slot, h.start).map_err(|e| (e, true))?;
    let txns = read_txns(dev, sb, h.start, h, inline)?;
    apply_txns(&mut st, &txns).map_err(|e| (e, false))?;
    // Everything journaled after the checkpoint may still be missing at
    // home: overlay it.
    let mut unhomed = PendingData::default();
    feed_journaled(&mut unhomed, &txns);
    Ok((st, unhomed))
}

/// Adds the journaled data of `txns` to `overlay`, in journal order (a
/// later transaction's bytes replace an earlier one's). Ranges a later
/// transaction wrote home directly (listed by its `DataCrc`) leave the
/// overlay: home has newer bytes there.
pub(crate) fn feed_journaled(overlay: &mut PendingData, txns: &[Txn]) {
    for (end, ops) in txns {
        for op in ops {
            match op {
                Op::Journaled { dev_off, data, .. } => {
                    overlay.insert_tagged(*dev_off, data.clone(), *end);
                }
                Op::DataCrc { ranges } => {
                    for &(off, len, _) in ranges {
                        overlay.remove_range(off, len as u64);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A parsed transaction: its end lsn and records.
pub(crate) type Txn = (Lsn, Vec<Op>);

/// Reads and checks the committed transactions in `[from, h.end)`: from
/// the ring up to `h.ring_end()`, then the header's inline copy of the
/// newest one. The error's flag says the ring may have been overwritten
/// under us (retryable for an RO).
pub(crate) fn read_txns(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    from: Lsn,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<Vec<Txn>, (FsError, bool)> {
    read_txns_with(dev, sb, from, h, inline, None)
}

/// [`read_txns`] given the inline transaction already parsed (and its
/// data area checked) by `journal::read_trusted_header_parsed`.
fn read_txns_with(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    from: Lsn,
    h: &JournalHeader,
    inline: &[u8],
    parsed: Option<Vec<Txn>>,
) -> Result<Vec<Txn>, (FsError, bool)> {
    let classify = |e: TxnError| match e {
        e @ TxnError::Mismatch { .. } => (FsError::from(e), true),
        e => (FsError::from(e), false),
    };
    if from == h.end {
        return Ok(Vec::new());
    }
    let ring_end = h.ring_end();
    if from > ring_end {
        return Err((
            FsError::corrupt(format!("lsn {from} is inside the newest transaction")),
            true,
        ));
    }
    let mut txns = if from < ring_end {
        let buf = journal::read_ring(dev, sb, from, ring_end - from).map_err(|e| (e, false))?;
        journal::parse_txns(sb, &buf, from).map_err(classify)?
    } else {
        Vec::new()
    };
    if !inline.is_empty() {
        // Its records come from the header, its data area from the ring
        // (a mismatch there: lapped under an RO, retry).
        let tail = match parsed {
            Some(t) => t,
            None => journal::inline_txns(dev, sb, h, inline)
                .map_err(|e| (e, false))?
                .map_err(classify)?,
        };
        txns.extend(tail);
    }
    Ok(txns)
}

pub(crate) fn apply_txns(st: &mut State, txns: &[Txn]) -> Result<(), FsError> {
    for (end, ops) in txns {
        for op in ops {
            st.apply(op, Some(*end)).map_err(|r| {
                FsError::corrupt(format!(
                    "journal record {op:?} before lsn {end} does not apply: {r:?}"
                ))
            })?;
        }
    }
    Ok(())
}

/// [`apply_txns`] that notes in `ch` what each record changes.
fn apply_txns_noting(st: &mut State, txns: &[Txn], ch: &mut Changes) -> Result<(), FsError> {
    for (end, ops) in txns {
        for op in ops {
            note_change(st, op, ch);
            st.apply(op, Some(*end)).map_err(|r| {
                FsError::corrupt(format!(
                    "journal record {op:?} before lsn {end} does not apply: {r:?}"
                ))
            })?;
        }
    }
    Ok(())
}

impl Fs {
    /// Mounts the file system on `dev`: loads the newest checkpoint and
    /// replays the committed journal after it.
    ///
    /// `Mode::Rw` assumes exclusivity (granted and fenced by ctrl in later
    /// layers); `Mode::Ro` never writes the device.
    ///
    /// # Errors
    /// [`FsError::Corrupt`] when no valid superblock, header or checkpoint
    /// is found; device errors.
    pub fn mount(dev: Arc<dyn BlockDevice>, mode: Mode) -> Result<Fs> {
        let sb = Superblock::decode(&dev.read_at(0, SECTOR as usize)?)?;
        let mut tries = 0;
        let (h, st, unhomed) = loop {
            let (mut h, inline, cut) = journal::read_trusted_header(&*dev, &sb)?;
            if cut && mode == Mode::Rw {
                // The newest transaction's data never all landed, so its
                // fsync never returned: drop it for good, so that no
                // later write can make it look whole.
                h.seq += 1;
                journal::write_header(&*dev, &sb, &h, &[])?;
                tracing::info!(
                    end = h.end,
                    "dropped a transaction whose data was incomplete"
                );
            }
            match load(&*dev, &sb, &h, &inline) {
                Ok((st, unhomed)) => {
                    if mode == Mode::Rw && !inline.is_empty() {
                        // The ring copy of the newest transaction went out
                        // with its header and may be torn: restore it
                        // before the next commit stops inlining it.
                        journal::write_ring(
                            &*dev,
                            &sb,
                            h.ring_end(),
                            &journal::pad_frame(&inline),
                        )?;
                        // Then seal it: its data guard (checked above) is
                        // not remembered across mounts, so readers must
                        // stop checking it before anything is written.
                        h.seq += 1;
                        h.inline_len = 0;
                        h.inline_data = 0;
                        journal::write_header(&*dev, &sb, &h, &[])?;
                    }
                    break (h, st, unhomed);
                }
                // An RO racing the RW's checkpoint: read the header again.
                Err((_, true)) if mode == Mode::Ro && tries < 10 => tries += 1,
                Err((e, _)) => return Err(e),
            }
        };
        let room = sb.blocks_for(dev.size());
        if st.alloc.nblocks() > room {
            return Err(FsError::corrupt(format!(
                "the file system has {} data blocks but the device only room for {room}",
                st.alloc.nblocks()
            )));
        }
        tracing::debug!(?mode, start = h.start, end = h.end, "mounted");
        let metrics = Metrics::default();
        metrics.lsn.set(h.end);
        metrics.unhomed_bytes.set(unhomed.bytes() as i64);
        Ok(Fs {
            inner: Arc::new(Inner {
                dev,
                sb,
                mode,
                meta: RwLock::new(Meta {
                    st,
                    pending: Vec::new(),
                    pending_bytes: 0,
                    data: PendingData::default(),
                    unhomed,
                    op_seq: 0,
                    open: HashMap::new(),
                }),
                journal: Mutex::new(JournalState {
                    header: h,
                    committed_seq: 0,
                    stale: false,
                    last_guard: Vec::new(),
                }),
                broken: Mutex::new(None),
                unmounted: AtomicBool::new(false),
                metrics,
                commit_hook: RwLock::new(None),
                lease: ReadLease::default(),
                cuts: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// Commits everything and, on a RW mount, writes a checkpoint so the
    /// next mount replays nothing. Open `File`s stay usable for reads.
    ///
    /// # Errors
    /// The commit's errors.
    pub fn unmount(self) -> Result<()> {
        if self.inner.mode == Mode::Rw && self.inner.broken.lock().is_none() {
            self.inner.commit(u64::MAX, true)?;
        }
        self.inner.unmounted.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The mode this file system was mounted with.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// This mount's metrics (register them with [`Metrics::register`]).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.inner.sb
    }

    /// The journal position this mount has applied (RO) or committed (RW).
    pub fn lsn(&self) -> Lsn {
        self.inner.journal.lock().header.end
    }

    /// Inodes open on this mount (an RO publishes them so the RW keeps
    /// their blocks).
    pub fn open_inodes(&self) -> Vec<Ino> {
        let mut v: Vec<Ino> = self.inner.meta.read().open.keys().copied().collect();
        v.sort();
        v
    }

    /// Opens (and maybe creates) a file.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::Exists`] (create + exclusive),
    /// [`FsError::IsDir`], [`FsError::NotDir`], [`FsError::ReadOnly`] for
    /// writes on an RO mount, [`FsError::LeaseLost`] on an RO mount (through
    /// a session) whose lease is not known valid, [`FsError::NoSpace`],
    /// commit errors.
    pub fn open(&self, path: &str, flags: OpenFlags) -> Result<File> {
        self.open_as(path, flags, &NewAttrs::process(0o644))
    }

    /// [`Fs::open`] that gives a file it creates `attrs` (FUSE passes the
    /// caller's owner and umask'd mode).
    ///
    /// # Errors
    /// As [`Fs::open`]; [`FsError::WrongKind`] for a name that is not a
    /// regular file or directory.
    pub fn open_as(&self, path: &str, flags: OpenFlags, attrs: &NewAttrs) -> Result<File> {
        let wants_write = flags.write || flags.create || flags.truncate;
        if wants_write {
            self.inner.check_writable()?;
        }
        let generation = self
            .inner
            .lease
            .open_generation()
            .map_err(|l| FsError::LeaseLost {
                path: path.to_string(),
                why: l.to_string(),
            })?;
        let (ino, created, seq, wlock) = {
            let mut m = self.inner.meta.write();
            let comps = components(path)?;
            if comps.is_empty() {
                return Err(FsError::IsDir {
                    path: path.to_string(),
                });
            }
            let (parent, name) = resolve_parent(&m.st, path)?;
            let existing =
                m.st.dir(parent)
                    .map_err(|r| r.at(path))?
                    .entries
                    .get(name)
                    .copied();
            match existing {
                Some(ino) => {
                    if flags.create && flags.exclusive {
                        return Err(FsError::Exists {
                            path: path.to_string(),
                        });
                    }
                    check_regular(&m, ino, path)?;
                    (ino, false, 0, register_open(&mut m, ino))
                }
                None if flags.create => {
                    let ino = m.st.next_ino;
                    let op = new_node(&m, parent, name, ino, Kind::File, attrs, 0, Vec::new());
                    let seq = self.inner.push(&mut m, op, path)?;
                    (ino, true, seq, register_open(&mut m, ino))
                }
                None => {
                    return Err(FsError::NotFound {
                        path: path.to_string(),
                    })
                }
            }
        };
        // Registered under the same lock as the lookup, so the inode cannot
        // be released in between.
        let file = File::new(
            self.inner.clone(),
            ino,
            flags.write || flags.truncate,
            path,
            wlock,
            generation,
        );
        // A new file is committed with the next fsync or namespace
        // operation (as on ext4, a create is durable once the file or its
        // directory is fsync'd): create + write + fsync is one commit.
        if created && self.inner.pending_large(&self.inner.meta.read()) {
            self.inner.commit(seq, false)?;
        }
        if flags.truncate {
            file.truncate(0)?;
        }
        Ok(file)
    }

    /// Stats a path.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`], bad paths.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let m = self.inner.meta.read();
        let ino = resolve(&m.st, path, &components(path)?)?;
        self.inner
            .stat_ino(&m, ino)
            .ok_or_else(|| FsError::NotFound {
                path: path.to_string(),
            })
    }

    /// Creates a directory (committed when it returns).
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::NotFound`] for a missing parent,
    /// [`FsError::ReadOnly`], commit errors.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.mkdir_as(path, &NewAttrs::process(0o755))
    }

    /// [`Fs::mkdir`] with the given owner and mode.
    ///
    /// # Errors
    /// As [`Fs::mkdir`]; [`FsError::TooManyLinks`] when the parent has
    /// `LINK_MAX` links.
    pub fn mkdir_as(&self, path: &str, attrs: &NewAttrs) -> Result<()> {
        self.create_node(path, Kind::Dir, attrs, 0, Vec::new())
            .map(|_| ())
    }

    /// Creates a FIFO, socket, char or block device (`rdev` is the
    /// device number) or an empty regular file. Committed when it
    /// returns; returns the new inode's attributes.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::NotFound`] for a missing parent,
    /// [`FsError::InvalidArgument`] for a directory or symlink kind,
    /// [`FsError::ReadOnly`], commit errors.
    pub fn mknod(&self, path: &str, kind: Kind, attrs: &NewAttrs, rdev: u64) -> Result<Stat> {
        if matches!(kind, Kind::Dir | Kind::Symlink) {
            return Err(FsError::InvalidArgument {
                what: format!("{path}: mknod cannot make a {kind:?}"),
            });
        }
        let rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            rdev
        } else {
            0
        };
        self.create_node(path, kind, attrs, rdev, Vec::new())
    }

    /// Creates a symlink at `path` pointing at `target` (stored as is,
    /// never followed by the fs: the kernel resolves it). Committed when
    /// it returns.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::NotFound`] for a missing parent,
    /// [`FsError::NameTooLong`] for a target over [`SYMLINK_MAX`] bytes,
    /// [`FsError::InvalidArgument`] for an empty target or one with NUL.
    pub fn symlink(&self, target: &[u8], path: &str, attrs: &NewAttrs) -> Result<Stat> {
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong {
                path: path.to_string(),
            });
        }
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::InvalidArgument {
                what: format!("{path}: a symlink target is non-empty and has no NUL"),
            });
        }
        self.create_node(path, Kind::Symlink, attrs, 0, target.to_vec())
    }

    fn create_node(
        &self,
        path: &str,
        kind: Kind,
        attrs: &NewAttrs,
        rdev: u64,
        target: Vec<u8>,
    ) -> Result<Stat> {
        self.inner.check_writable()?;
        let (seq, ino) = {
            let mut m = self.inner.meta.write();
            let (parent, name) = resolve_parent(&m.st, path)?;
            let ino = m.st.next_ino;
            let op = new_node(&m, parent, name, ino, kind, attrs, rdev, target);
            (self.inner.push(&mut m, op, path)?, ino)
        };
        self.inner.commit(seq, false)?;
        self.stat_inode(ino)
    }

    /// A symlink's target.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::WrongKind`] when `path` is not a
    /// symlink.
    pub fn readlink(&self, path: &str) -> Result<Vec<u8>> {
        let m = self.inner.meta.read();
        let ino = resolve(&m.st, path, &components(path)?)?;
        readlink_of(&m, ino, path)
    }

    /// [`Fs::readlink`] by inode number.
    ///
    /// # Errors
    /// As [`Fs::readlink`].
    pub fn readlink_inode(&self, ino: Ino) -> Result<Vec<u8>> {
        let m = self.inner.meta.read();
        readlink_of(&m, ino, &format!("inode {ino}"))
    }

    /// Gives the existing non-directory at `from` the new name `to` (a
    /// hard link). Committed when it returns.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::Exists`], [`FsError::TooManyLinks`],
    /// [`FsError::InvalidArgument`] for a directory.
    pub fn link(&self, from: &str, to: &str) -> Result<Stat> {
        let ino = self.stat(from)?.ino;
        self.link_inode(ino, to)
    }

    /// [`Fs::link`] of inode `ino` (which must still have a name).
    ///
    /// # Errors
    /// As [`Fs::link`].
    pub fn link_inode(&self, ino: Ino, to: &str) -> Result<Stat> {
        self.inner.check_writable()?;
        let seq = {
            let mut m = self.inner.meta.write();
            let (parent, name) = resolve_parent(&m.st, to)?;
            let op = Op::Link {
                ino,
                parent,
                name: name.to_string(),
                time: now_ns(),
            };
            self.inner.push(&mut m, op, to)?
        };
        self.inner.commit(seq, false)?;
        self.stat_inode(ino)
    }

    /// Stats an inode by number (also an orphan still open somewhere).
    /// Inode numbers are never reused, so a number names one inode for
    /// the file system's life.
    ///
    /// # Errors
    /// [`FsError::NotFound`] when no such inode exists (any more).
    pub fn stat_inode(&self, ino: Ino) -> Result<Stat> {
        let m = self.inner.meta.read();
        self.inner
            .stat_ino(&m, ino)
            .ok_or_else(|| FsError::NotFound {
                path: format!("inode {ino}"),
            })
    }

    /// Opens a regular file by inode number (no create). An orphan can be
    /// opened while it exists (e.g. through a descriptor the kernel holds).
    ///
    /// # Errors
    /// As [`Fs::open`].
    pub fn open_inode(&self, ino: Ino, flags: OpenFlags) -> Result<File> {
        let path = format!("inode {ino}");
        if flags.write || flags.truncate || flags.create {
            self.inner.check_writable()?;
        }
        let generation = self
            .inner
            .lease
            .open_generation()
            .map_err(|l| FsError::LeaseLost {
                path: path.clone(),
                why: l.to_string(),
            })?;
        let wlock = {
            let mut m = self.inner.meta.write();
            if !m.st.inodes.contains_key(&ino) {
                return Err(FsError::NotFound { path });
            }
            check_regular(&m, ino, &path)?;
            register_open(&mut m, ino)
        };
        let file = File::new(
            self.inner.clone(),
            ino,
            flags.write || flags.truncate,
            &path,
            wlock,
            generation,
        );
        if flags.truncate {
            file.truncate(0)?;
        }
        Ok(file)
    }

    /// chmod / chown / utimens of `path`: sets what `attr` names and moves
    /// ctime to now. Committed when it returns. Permission checks are the
    /// caller's (the kernel's, through FUSE `default_permissions`).
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::ReadOnly`], commit errors.
    pub fn setattr(&self, path: &str, attr: &SetAttr) -> Result<Stat> {
        let ino = self.stat(path)?.ino;
        self.setattr_inode(ino, attr)
    }

    /// [`Fs::setattr`] by inode number (also an open orphan: fchmod).
    ///
    /// # Errors
    /// As [`Fs::setattr`].
    pub fn setattr_inode(&self, ino: Ino, attr: &SetAttr) -> Result<Stat> {
        self.inner.check_writable()?;
        let seq = {
            let mut m = self.inner.meta.write();
            let op = Op::SetAttr {
                ino,
                attr: attr.clone(),
                ctime: now_ns(),
            };
            self.inner.push(&mut m, op, &format!("inode {ino}"))?
        };
        self.inner.commit(seq, false)?;
        self.stat_inode(ino)
    }

    /// Removes an empty directory (committed when it returns).
    ///
    /// # Errors
    /// [`FsError::NotEmpty`], [`FsError::NotDir`], [`FsError::NotFound`].
    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.remove(path, Kind::Dir)
    }

    /// Removes a file name (committed when it returns). The inode turns
    /// orphan: handles open on this or any RO mount keep reading it until
    /// [`Fs::release_orphans`] frees it.
    ///
    /// # Errors
    /// [`FsError::IsDir`], [`FsError::NotFound`].
    pub fn unlink(&self, path: &str) -> Result<()> {
        self.remove(path, Kind::File)
    }

    fn remove(&self, path: &str, want: Kind) -> Result<()> {
        self.inner.check_writable()?;
        let seq = {
            let mut m = self.inner.meta.write();
            let (parent, name) = resolve_parent(&m.st, path)?;
            let ino = *m
                .st
                .dir(parent)
                .map_err(|r| r.at(path))?
                .entries
                .get(name)
                .ok_or_else(|| FsError::NotFound {
                    path: path.to_string(),
                })?;
            let is_dir = m.st.inodes.get(&ino).map(|i| i.kind == Kind::Dir);
            match (is_dir, want) {
                (Some(true), Kind::File) => {
                    return Err(FsError::IsDir {
                        path: path.to_string(),
                    })
                }
                (Some(false), Kind::Dir) => {
                    return Err(FsError::NotDir {
                        path: path.to_string(),
                    })
                }
                _ => {}
            }
            let op = Op::Remove {
                parent,
                name: name.to_string(),
                time: now_ns(),
            };
            self.inner.push(&mut m, op, path)?
        };
        self.inner.commit(seq, false)
    }

    /// Renames atomically, replacing an existing file (or empty directory)
    /// at `to`, which turns orphan. Committed when it returns.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`] / [`FsError::NotDir`] on a
    /// kind mismatch, [`FsError::NotEmpty`], [`FsError::InvalidArgument`]
    /// when moving a directory into itself.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.inner.check_writable()?;
        let seq = {
            let mut m = self.inner.meta.write();
            let (src_parent, src_name) = resolve_parent(&m.st, from)?;
            let (dst_parent, dst_name) = resolve_parent(&m.st, to)?;
            let op = Op::Rename {
                src_parent,
                src_name: src_name.to_string(),
                dst_parent,
                dst_name: dst_name.to_string(),
                time: now_ns(),
            };
            let src_exists =
                m.st.dir(src_parent)
                    .map(|d| d.entries.contains_key(src_name))
                    .unwrap_or(false);
            self.inner
                .push(&mut m, op, if src_exists { to } else { from })?
        };
        self.inner.commit(seq, false)
    }

    /// Lists a directory, sorted by name.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`].
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let m = self.inner.meta.read();
        let ino = resolve(&m.st, path, &components(path)?)?;
        let dir = m.st.dir(ino).map_err(|r| r.at(path))?;
        Ok(dir
            .entries
            .iter()
            .map(|(name, &ino)| DirEntry {
                name: name.clone(),
                ino,
                kind: m.st.inodes.get(&ino).map(|i| i.kind).unwrap_or(Kind::File),
            })
            .collect())
    }

    /// Space and object counts.
    pub fn statfs(&self) -> StatFs {
        // Lock order is journal before meta (commit and catch-up take them
        // that way); read the position first so no lock is held across.
        let lsn = self.inner.journal.lock().header.end;
        let m = self.inner.meta.read();
        let bs = self.inner.sb.block_size;
        let files =
            m.st.inodes
                .values()
                .filter(|i| i.kind != Kind::Dir && i.nlink > 0)
                .count() as u64;
        let dirs = m.st.inodes.values().filter(|i| i.kind == Kind::Dir).count() as u64;
        StatFs {
            block_size: bs,
            total_bytes: m.st.alloc.nblocks() * bs,
            used_bytes: m.st.alloc.used() * bs,
            free_bytes: m.st.alloc.free() * bs,
            orphan_bytes: m.st.orphan_blocks() * bs,
            orphan_files: m.st.orphans.len() as u64,
            files,
            dirs,
            lsn,
        }
    }

    /// Extends the file system to the device's current size (after
    /// `pikafs volume grow`). Returns the new total data bytes.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`], device and commit errors.
    pub fn growfs(&self) -> Result<u64> {
        self.inner.check_writable()?;
        let size = self.inner.dev.refresh_size()?;
        let blocks = self.inner.sb.blocks_for(size);
        let seq = {
            let mut m = self.inner.meta.write();
            if blocks <= m.st.alloc.nblocks() {
                return Ok(m.st.alloc.nblocks() * self.inner.sb.block_size);
            }
            self.inner.push(
                &mut m,
                Op::Grow {
                    data_blocks: blocks,
                },
                "/",
            )?
        };
        self.inner.commit(seq, false)?;
        tracing::info!(blocks, "file system grown");
        Ok(blocks * self.inner.sb.block_size)
    }

    /// Frees orphans and pending-free blocks that no reader can still see:
    /// those released at or before `min_ro_lsn` (the smallest applied lsn
    /// of the live RO mounts; `u64::MAX` with none), except orphans open on
    /// this mount or listed in `ro_open`. Committed when it returns.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`] on an RO mount, commit errors.
    pub fn release_orphans(&self, min_ro_lsn: Lsn, ro_open: &HashSet<Ino>) -> Result<ReleaseStats> {
        self.inner.check_writable()?;
        let mut stats = ReleaseStats::default();
        let seq = {
            let mut m = self.inner.meta.write();
            let ready = |at: Lsn| at != UNCOMMITTED && at <= min_ro_lsn;
            let victims: Vec<Ino> =
                m.st.orphans
                    .iter()
                    .filter(|(ino, at)| {
                        ready(**at) && !ro_open.contains(ino) && !m.open.contains_key(ino)
                    })
                    .map(|(ino, _)| *ino)
                    .collect();
            for ino in victims {
                stats.blocks_freed +=
                    m.st.inodes
                        .get(&ino)
                        .map(|i| i.mapped().count() as u64)
                        .unwrap_or(0);
                stats.orphans_freed += 1;
                // Writes to the orphan still waiting for a commit would
                // land in blocks that may be reused by then.
                let (bs, data_off) = (self.inner.sb.block_size, self.inner.sb.data_off);
                let blocks: Vec<u64> =
                    m.st.inodes
                        .get(&ino)
                        .map(|i| i.mapped().collect())
                        .unwrap_or_default();
                for b in blocks {
                    m.data.remove_range(data_off + b * bs, bs);
                }
                self.inner.push(&mut m, Op::FreeOrphan { ino }, "orphan")?;
            }
            let pend: u64 =
                m.st.pending
                    .iter()
                    .filter(|(at, _)| ready(*at))
                    .map(|(_, b)| b.len() as u64)
                    .sum();
            if pend > 0 {
                stats.blocks_freed += pend;
                self.inner
                    .push(&mut m, Op::ReleasePending { upto: min_ro_lsn }, "pending")?;
            }
            m.op_seq
        };
        self.inner.commit(seq, false)?;
        Ok(stats)
    }

    /// Commits everything queued (RW): namespace changes, sizes, and the
    /// data of small writes. What `fsync` of a directory means here; an
    /// RO mount has nothing to commit.
    ///
    /// # Errors
    /// [`FsError::ReadOnly`] / [`FsError::Fenced`] when the mount can no
    /// longer write; device errors.
    pub fn sync(&self) -> Result<()> {
        if self.inner.mode == Mode::Ro {
            return Ok(());
        }
        self.inner.commit(self.inner.op_seq(), false)
    }

    /// Forces a checkpoint now (RW): commits, snapshots the metadata and
    /// empties the journal.
    ///
    /// # Errors
    /// Commit and device errors.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.commit(u64::MAX, true)
    }

    /// RO: applies what the RW committed since the last call and returns
    /// the applied lsn. Never applies part of a transaction: only records
    /// below the committed end of a valid header. If the RW has lapped the
    /// ring past our position, reloads from its checkpoint. RW: returns the
    /// committed lsn.
    ///
    /// # Errors
    /// [`FsError::Corrupt`] when the journal cannot be read consistently
    /// after retries; device errors.
    pub fn catch_up(&self) -> Result<Lsn> {
        self.inner.catch_up(None)
    }

    /// [`Fs::catch_up`] that also reports what it applied (RO), so a cache
    /// in front of this mount can drop exactly the stale entries. On a RW
    /// mount it returns empty changes at the committed lsn.
    ///
    /// # Errors
    /// As [`Fs::catch_up`].
    pub fn catch_up_changes(&self) -> Result<Changes> {
        let mut ch = Changes::default();
        ch.lsn = self.inner.catch_up(Some(&mut ch))?;
        ch.inodes.sort_unstable();
        ch.inodes.dedup();
        ch.entries.sort();
        ch.entries.dedup();
        Ok(ch)
    }

    /// Installs `hook`, called with the new committed lsn after every
    /// durable commit of this RW mount (the notification layer pushes it
    /// to RO mounts). It runs on the committing thread with the journal
    /// lock held: it must be quick and must not call back into the fs.
    /// Replaces any earlier hook; `None` removes it.
    pub fn set_commit_hook(&self, hook: Option<CommitHook>) {
        *self.inner.commit_hook.write() = hook;
    }

    /// Stops this RW mount from writing for good, as if the device had
    /// answered `StaleEpoch` (its mount lease was lost, so a newer writer
    /// may exist). Every later write fails with [`FsError::Fenced`] naming
    /// `why`. No effect on an RO mount or a mount already refusing writes.
    pub fn fence(&self, why: &str) {
        if self.inner.mode == Mode::Rw {
            self.inner.poison(&FsError::Fenced {
                message: why.to_string(),
            });
        }
    }

    /// True when this RW mount refuses writes (fenced, or after a failed
    /// metadata write). Always false on an RO mount.
    pub fn is_read_only(&self) -> bool {
        self.inner.mode == Mode::Rw
            && (self.inner.broken.lock().is_some() || self.inner.unmounted.load(Ordering::SeqCst))
    }
}

/// True for the records after which the RW may reuse blocks a reader
/// planned to read (once the RO publishes an lsn past them).
fn frees_blocks(op: &Op) -> bool {
    matches!(
        op,
        Op::Truncate { .. } | Op::FreeOrphan { .. } | Op::ReleasePending { .. }
    )
}

/// Records in `ch` what applying `op` to `st` will change; called before
/// the op is applied, so removed and replaced names still resolve.
fn note_change(st: &State, op: &Op, ch: &mut Changes) {
    let lookup = |parent: Ino, name: &str| {
        st.inodes
            .get(&parent)
            .and_then(|p| p.entries.get(name).copied())
    };
    match op {
        Op::Create {
            parent, name, ino, ..
        } => {
            ch.inodes.extend([*parent, *ino]);
            ch.entries.push((*parent, name.clone()));
        }
        Op::Remove { parent, name, .. } => {
            ch.inodes.push(*parent);
            ch.inodes.extend(lookup(*parent, name));
            ch.entries.push((*parent, name.clone()));
        }
        Op::Rename {
            src_parent,
            src_name,
            dst_parent,
            dst_name,
            ..
        } => {
            ch.inodes.extend([*src_parent, *dst_parent]);
            ch.inodes.extend(lookup(*src_parent, src_name));
            ch.inodes.extend(lookup(*dst_parent, dst_name));
            ch.entries.push((*src_parent, src_name.clone()));
            ch.entries.push((*dst_parent, dst_name.clone()));
        }
        Op::Link {
            ino, parent, name, ..
        } => {
            ch.inodes.extend([*parent, *ino]);
            ch.entries.push((*parent, name.clone()));
        }
        Op::SetAttr { ino, .. }
        | Op::Map { ino, .. }
        | Op::SetSize { ino, .. }
        | Op::Truncate { ino, .. }
        | Op::FreeOrphan { ino } => ch.inodes.push(*ino),
        _ => {}
    }
}

impl Inner {
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.mode == Mode::Ro {
            return Err(FsError::ReadOnly {
                why: "read-only mount".into(),
            });
        }
        if self.unmounted.load(Ordering::SeqCst) {
            return Err(FsError::ReadOnly {
                why: "unmounted".into(),
            });
        }
        match &*self.broken.lock() {
            Some((true, why)) => Err(FsError::Fenced {
                message: why.clone(),
            }),
            Some((false, why)) => Err(FsError::ReadOnly { why: why.clone() }),
            None => Ok(()),
        }
    }

    /// Turns the RW read-only after a failed metadata write (or a fence):
    /// memory no longer matches the device, so nothing more may be written.
    pub(crate) fn poison(&self, e: &FsError) {
        let fenced = matches!(
            e,
            FsError::Device(DeviceError::Fenced { .. }) | FsError::Fenced { .. }
        );
        let mut b = self.broken.lock();
        if b.is_none() {
            if fenced {
                tracing::warn!(error = %e, "fenced by a newer writer; this mount is now read-only");
            } else {
                tracing::error!(error = %e, "metadata write failed; this mount is now read-only");
            }
            *b = Some((fenced, e.to_string()));
        }
    }

    /// Maps a device error from a data write: a fence poisons the mount.
    pub(crate) fn data_error(&self, e: DeviceError) -> FsError {
        let e = FsError::Device(e);
        if matches!(e, FsError::Device(DeviceError::Fenced { .. })) {
            self.poison(&e);
            if let Some((_, why)) = &*self.broken.lock() {
                return FsError::Fenced {
                    message: why.clone(),
                };
            }
        }
        e
    }

    /// Applies `op` in memory and queues it for the next commit.
    pub(crate) fn push(&self, m: &mut Meta, op: Op, path: &str) -> Result<u64> {
        m.st.apply(&op, None).map_err(|r| r.at(path))?;
        m.pending_bytes += op.encoded_len();
        m.pending.push(op);
        m.op_seq += 1;
        Ok(m.op_seq)
    }

    /// True when queued records should be committed without waiting for
    /// an fsync, to keep a transaction small next to the ring.
    pub(crate) fn pending_large(&self, m: &Meta) -> bool {
        m.pending_bytes as u64 > self.sb.ring_size / 8
    }

    pub(crate) fn stat_ino(&self, m: &Meta, ino: Ino) -> Option<Stat> {
        let i = m.st.inodes.get(&ino)?;
        Some(Stat {
            ino,
            kind: i.kind,
            size: i.size,
            allocated: i.mapped().count() as u64 * self.sb.block_size,
            mode: i.mode,
            nlink: i.nlink,
            mtime_ns: i.mtime,
            ctime_ns: i.ctime,
            atime_ns: i.atime,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
        })
    }

    pub(crate) fn op_seq(&self) -> u64 {
        self.meta.read().op_seq
    }

    /// Commits every record queued up to `upto` (group commit: one caller
    /// commits for all who queued before it), and the data of small writes
    /// queued with them. With `force_ckpt`, also writes a checkpoint.
    ///
    /// Device writes: queued data of at most [`JOURNAL_MAX_BYTES`] is
    /// *journaled*: it rides in the transaction's data area, so a small
    /// transaction is one batch of two writes, both in chunk 0: the header
    /// (carrying the records inline) and the ring copy (records + data).
    /// The bytes go home before the next checkpoint. Larger queued data
    /// goes home in the same batch under a `DataCrc` guard
    /// (`crate::pending`), or first (ordered). A large transaction: data,
    /// then ring, then header. A checkpoint adds the home writes of the
    /// journaled bytes (one batch), the slot and the header.
    pub(crate) fn commit(&self, upto: u64, force_ckpt: bool) -> Result<()> {
        let mut j = self.journal.lock();
        if j.committed_seq >= upto && !force_ckpt {
            return Ok(());
        }
        self.check_writable()?;
        let sb = &self.sb;
        let h = j.header;
        let (txn, new_end, snapshot, last_seq, data, guard, journaled, small) = {
            let mut m = self.meta.write();
            let mut ops = std::mem::take(&mut m.pending);
            m.pending_bytes = 0;
            let mut data = m.data.take();
            let last_seq = m.op_seq;
            if ops.is_empty() && data.is_empty() && !force_ckpt {
                j.committed_seq = last_seq;
                return Ok(());
            }
            if force_ckpt && ops.is_empty() && !m.unhomed.is_empty() {
                // This checkpoint homes journaled bytes; RO mounts overlay
                // them until they see `start` move, and they only look
                // when pushed a new end: make one.
                ops.push(Op::DataCrc { ranges: Vec::new() });
            }
            let data_bytes: usize = data.iter().map(|(_, d)| d.len()).sum();
            // Data overwriting journaled bytes not yet home is journaled
            // whatever its size if the ring has room (else see below).
            let over_unhomed = data
                .iter()
                .any(|(o, d)| m.unhomed.overlaps(*o, d.len() as u64));
            let journal_size = {
                let ops_bytes: usize = ops.iter().map(Op::encoded_len).sum();
                journal::txn_len(ops_bytes + JOURNALED_RECORD * data.len())
                    + journal::data_area_len(data_bytes)
            };
            let journaled = !data.is_empty()
                && (over_unhomed || (data_bytes <= JOURNAL_MAX_BYTES && journal_small_data()))
                && h.end + journal_size - h.start <= sb.ring_size;
            if journaled {
                ops.extend(data.drain(..).map(|(dev_off, d)| Op::Journaled {
                    dev_off,
                    len: d.len() as u32,
                    data: d,
                }));
            }
            // Data going home directly lists its ranges in a `DataCrc`:
            // small enough, it goes out with the header under that guard;
            // over journaled bytes not yet home, the record also tells
            // replay (and RO overlays) that home has newer bytes there
            // than the ring, and those ranges leave `unhomed` now, so no
            // homing writes the older bytes over them.
            let small = data_bytes <= GUARD_MAX_BYTES && data.len() <= GUARD_MAX_RANGES;
            if over_unhomed && !journaled {
                for (o, d) in &data {
                    m.unhomed.remove_range(*o, d.len() as u64);
                }
            }
            let guard: Vec<(u64, u64)> =
                if !data.is_empty() && ((!ops.is_empty() && small) || over_unhomed) {
                    ops.push(Op::DataCrc {
                        ranges: data
                            .iter()
                            .map(|(o, d)| (*o, d.len() as u32, crc32c::crc32c(d)))
                            .collect(),
                    });
                    data.iter().map(|(o, d)| (*o, d.len() as u64)).collect()
                } else {
                    Vec::new()
                };
            let (txn, new_end, fits) = if ops.is_empty() {
                (None, h.end, true)
            } else {
                let txn = journal::encode_txn(sb, h.end, &ops);
                let new_end = h.end + txn.len() as u64;
                let fits = new_end - h.start <= sb.ring_size;
                (Some(txn), new_end, fits)
            };
            if journaled {
                // Readers on this mount see the bytes from now on; the
                // checkpoint that moves `start` past `new_end` homes them.
                for op in &ops {
                    if let Op::Journaled { dev_off, data, .. } = op {
                        m.unhomed.insert_tagged(*dev_off, data.clone(), new_end);
                    }
                }
                self.metrics.unhomed_bytes.set(m.unhomed.bytes() as i64);
            }
            m.st.stamp(new_end);
            // Journaled bytes wait in memory (RW and every RO) until a
            // checkpoint writes them home: bound that, as well as the ring.
            let want_ckpt = force_ckpt
                || !fits
                || new_end - h.start > sb.ring_size / 2
                || m.unhomed.bytes() > MAX_UNHOMED_BYTES;
            let snapshot = want_ckpt.then(|| m.st.encode());
            (
                txn.filter(|_| fits),
                new_end,
                snapshot,
                last_seq,
                data,
                guard,
                journaled,
                small,
            )
        };
        let had_txn = txn.is_some();
        let started = std::time::Instant::now();
        let result = (|| -> Result<()> {
            let data_writes: Vec<(u64, &[u8])> =
                data.iter().map(|(o, d)| (*o, d.as_slice())).collect();
            if data_writes
                .iter()
                .any(|&(o, d)| pending::overlaps_any(&j.last_guard, o, d.len() as u64))
            {
                self.seal(&mut j)?;
            }
            let frame = txn.as_deref().map(journal::txn_frame);
            let inline: &[u8] = match frame {
                Some(f) if f.len() <= journal::INLINE_MAX => f,
                _ => &[],
            };
            // Only a transaction the header carries can be guarded: readers
            // check the guard of the header's inline transaction.
            let concurrent = !guard.is_empty() && small && !inline.is_empty();
            if !concurrent && !data_writes.is_empty() {
                self.dev.write_many(&data_writes)?;
            }
            if let Some(txn) = &txn {
                let nh = JournalHeader {
                    seq: j.header.seq + 1,
                    end: new_end,
                    inline_len: inline.len() as u32,
                    inline_data: if inline.is_empty() {
                        0
                    } else {
                        crate::encoding::le32(inline, 32)
                    },
                    ..j.header
                };
                if inline.is_empty() {
                    journal::write_ring(&*self.dev, sb, h.end, txn)?;
                    journal::write_header(&*self.dev, sb, &nh, &[])?;
                } else {
                    // One batch: the header carries the records, so it and
                    // the ring copy (complete before the next commit, which
                    // no longer inlines this one) go out together, and so
                    // does guarded data. Journaled data is in the ring copy,
                    // whose data area's crc the header's records carry.
                    // Header first: a device that writes in order (the
                    // crash tests) then tears after it.
                    let (hoff, hbytes) = journal::header_write(sb, &nh, inline);
                    let mut writes = vec![(hoff, hbytes.as_slice())];
                    writes.extend(journal::ring_writes(sb, h.end, txn));
                    if concurrent {
                        writes.extend(data_writes.iter().copied());
                    }
                    self.dev.write_many(&writes)?;
                }
                j.header = nh;
                if concurrent {
                    self.metrics.guarded_commits_total.inc();
                }
                if journaled {
                    self.metrics.journaled_commits_total.inc();
                }
                // Readers check the inline transaction's `DataCrc` whether
                // or not its data went out with the header.
                j.last_guard = if inline.is_empty() { Vec::new() } else { guard };
                j.committed_seq = last_seq;
                self.metrics.commits_total.inc();
                self.metrics.journal_bytes_total.inc_by(txn.len() as u64);
            }
            if let Some(snap) = &snapshot {
                // Every journaled byte must be home before `start` moves
                // past the ring copy that holds it.
                self.home(&mut j)?;
                let slot = 1 - j.header.ckpt_slot;
                checkpoint::write(&*self.dev, sb, slot, new_end, snap)?;
                let nh = JournalHeader {
                    seq: j.header.seq + 1,
                    start: new_end,
                    end: new_end,
                    ckpt_slot: slot,
                    inline_len: 0,
                    inline_data: 0,
                };
                journal::write_header(&*self.dev, sb, &nh, &[])?;
                j.header = nh;
                j.last_guard.clear();
                {
                    let mut m = self.meta.write();
                    m.unhomed.clear();
                    self.metrics.unhomed_bytes.set(0);
                }
                self.metrics.checkpoints_total.inc();
                tracing::debug!(
                    lsn = new_end,
                    slot,
                    bytes = snap.len(),
                    "checkpoint written"
                );
            }
            j.committed_seq = last_seq;
            Ok(())
        })();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.lsn.set(j.header.end);
        if j.header.end > h.end {
            if let Some(hook) = &*self.commit_hook.read() {
                hook(j.header.end);
            }
        }
        if let Err(e) = result {
            self.poison(&e);
            // Reads on this (now read-only) mount keep seeing the bytes
            // that did not make it, as they see the records' effects
            // (journaled bytes are in `unhomed` already).
            let mut m = self.meta.write();
            for (o, d) in data {
                if !m.data.overlaps(o, d.len() as u64) {
                    m.data.insert(o, d);
                }
            }
            drop(m);
            if had_txn && j.committed_seq >= last_seq {
                // The records are durable; only the checkpoint after them
                // failed. The caller's operation stands, later ones fail.
                return Ok(());
            }
            return Err(match &*self.broken.lock() {
                Some((true, why)) => FsError::Fenced {
                    message: why.clone(),
                },
                _ => e,
            });
        }
        Ok(())
    }

    /// Writes every journaled byte not yet home to its home block (one
    /// batch of concurrent writes, adjacent ranges merged). They stay in
    /// `unhomed` until the checkpoint header is durable: a direct write
    /// into them meanwhile must still wait for that checkpoint.
    fn home(&self, j: &mut JournalState) -> Result<()> {
        let segs = self.meta.read().unhomed.copy_merged();
        if segs.is_empty() {
            return Ok(());
        }
        if segs
            .iter()
            .any(|(o, d)| pending::overlaps_any(&j.last_guard, *o, d.len() as u64))
        {
            self.seal(j)?;
        }
        let writes: Vec<(u64, &[u8])> = segs.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        self.dev.write_many(&writes)?;
        self.metrics
            .homed_bytes_total
            .inc_by(segs.iter().map(|(_, d)| d.len() as u64).sum());
        Ok(())
    }

    /// Rewrites the newest header without its inline transaction, whose
    /// ring copy is complete by now: readers stop checking that
    /// transaction's data guard, so its ranges may be written again.
    fn seal(&self, j: &mut JournalState) -> Result<()> {
        if j.header.inline_len != 0 {
            let nh = JournalHeader {
                seq: j.header.seq + 1,
                inline_len: 0,
                inline_data: 0,
                ..j.header
            };
            journal::write_header(&*self.dev, &self.sb, &nh, &[])?;
            j.header = nh;
            self.metrics.seals_total.inc();
        }
        j.last_guard.clear();
        Ok(())
    }

    /// Called before data is written straight to the device (not queued):
    /// older queued bytes for the same ranges are committed first (else
    /// they would land later, over the newer ones); journaled bytes not
    /// yet home in the ranges are homed by a checkpoint first (else the
    /// next checkpoint, or a replay after a crash, would put them back
    /// over the newer ones); and a newest transaction guarding any of the
    /// ranges is sealed.
    ///
    /// # Errors
    /// Commit and device errors.
    pub(crate) fn before_direct_write(&self, ranges: &[(u64, u64)]) -> Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        let (queued, journaled) = {
            let m = self.meta.read();
            (
                ranges.iter().any(|&(o, l)| m.data.overlaps(o, l)),
                ranges.iter().any(|&(o, l)| m.unhomed.overlaps(o, l)),
            )
        };
        if queued {
            self.commit(self.op_seq(), false)?;
        }
        // Committing queued bytes may have journaled them: they are then
        // unhomed too, and must go home before the direct write lands, or
        // the overlay would put them back over it.
        let journaled = journaled || {
            let m = self.meta.read();
            ranges.iter().any(|&(o, l)| m.unhomed.overlaps(o, l))
        };
        if journaled {
            self.commit(self.op_seq(), true)?;
        }
        let mut j = self.journal.lock();
        if ranges
            .iter()
            .any(|&(o, l)| pending::overlaps_any(&j.last_guard, o, l))
        {
            self.check_writable()?;
            if let Err(e) = self.seal(&mut j) {
                self.poison(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    fn catch_up(&self, mut changes: Option<&mut Changes>) -> Result<Lsn> {
        let mut j = self.journal.lock();
        if self.mode == Mode::Rw {
            return Ok(j.header.end);
        }
        let sb = &self.sb;
        let dev = &*self.dev;
        let mut last_err = None;
        for _ in 0..10 {
            // A newest transaction whose data is still in flight is left
            // for the next call (the RW notifies once its fsync returns).
            let (h, inline, _, tail) = journal::read_trusted_header_parsed(dev, sb)?;
            let applied = j.header.end;
            if !j.stale && h.start <= applied && applied <= h.end {
                if h.end == applied {
                    if h.start > j.header.start {
                        // A checkpoint alone: what it homed is home.
                        let mut m = self.meta.write();
                        m.unhomed.drop_upto(h.start);
                        self.metrics.unhomed_bytes.set(m.unhomed.bytes() as i64);
                        j.header = h;
                    }
                    return Ok(applied);
                }
                match read_txns_with(dev, sb, applied, &h, &inline, Some(tail)) {
                    Ok(txns) => {
                        // The ring bytes we read were intact if the RW had
                        // not yet moved `start` past them.
                        let h2 = journal::read_header(dev, sb)?;
                        if h2.start <= applied {
                            let mut m = self.meta.write();
                            let applied = match changes.as_deref_mut() {
                                Some(ch) => apply_txns_noting(&mut m.st, &txns, ch),
                                None => apply_txns(&mut m.st, &txns),
                            };
                            // Bumped before anything is published (the lsn
                            // after `j.header` moves), so before the RW
                            // can reuse a cut block.
                            if txns.iter().any(|(_, ops)| ops.iter().any(frees_blocks)) {
                                self.cuts.fetch_add(1, Ordering::SeqCst);
                            }
                            if let Err(e) = applied {
                                j.stale = true;
                                return Err(e);
                            }
                            // New journaled bytes overlay the device until
                            // a checkpoint (`start` past them) says home.
                            feed_journaled(&mut m.unhomed, &txns);
                            m.unhomed.drop_upto(h.start);
                            self.metrics.unhomed_bytes.set(m.unhomed.bytes() as i64);
                            drop(m);
                            j.header = h;
                            self.metrics.lsn.set(h.end);
                            return Ok(h.end);
                        }
                        last_err = Some(FsError::corrupt("journal lapped during catch-up"));
                    }
                    Err((e, true)) => last_err = Some(e),
                    Err((e, false)) => return Err(e),
                }
                continue;
            }
            // Lagged past the ring (or first call after a reload): start
            // again from the checkpoint the header names.
            match load(dev, sb, &h, &inline) {
                Ok((st, unhomed)) => {
                    let h2 = journal::read_header(dev, sb)?;
                    if h2.start <= h.start {
                        let mut m = self.meta.write();
                        self.cuts.fetch_add(1, Ordering::SeqCst);
                        m.st = st;
                        self.metrics.unhomed_bytes.set(unhomed.bytes() as i64);
                        m.unhomed = unhomed;
                        drop(m);
                        j.header = h;
                        j.stale = false;
                        if let Some(ch) = changes.as_deref_mut() {
                            ch.reloaded = true;
                        }
                        self.metrics.lsn.set(h.end);
                        self.metrics.ro_reloads_total.inc();
                        tracing::info!(lsn = h.end, "RO mount reloaded from checkpoint");
                        return Ok(h.end);
                    }
                    last_err = Some(FsError::corrupt("checkpoint replaced during reload"));
                }
                Err((e, true)) => last_err = Some(e),
                Err((e, false)) => return Err(e),
            }
        }
        j.stale = true;
        Err(last_err.unwrap_or_else(|| FsError::corrupt("catch-up did not converge")))
    }

    pub(crate) fn close_ref(&self, ino: Ino) {
        let mut m = self.meta.write();
        if let Some(e) = m.open.get_mut(&ino) {
            e.count -= 1;
            if e.count == 0 {
                m.open.remove(&ino);
            }
        }
    }
}

/// The `Create` record of a new inode: in a set-group-ID directory it
/// takes the directory's group, and a new directory keeps the bit.
#[allow(clippy::too_many_arguments)]
fn new_node(
    m: &Meta,
    parent: Ino,
    name: &str,
    ino: Ino,
    kind: Kind,
    attrs: &NewAttrs,
    rdev: u64,
    target: Vec<u8>,
) -> Op {
    let (mut mode, mut gid) = (attrs.mode & 0o7777, attrs.gid);
    if let Some(p) = m.st.inodes.get(&parent) {
        if p.mode & libc::S_ISGID != 0 {
            gid = p.gid;
            if kind == Kind::Dir {
                mode |= libc::S_ISGID;
            }
        }
    }
    if kind == Kind::Symlink {
        mode = 0o777;
    }
    Op::Create {
        parent,
        name: name.to_string(),
        ino,
        kind,
        mode,
        uid: attrs.uid,
        gid,
        rdev,
        target,
        time: now_ns(),
    }
}

/// Refuses to open anything but a regular file.
fn check_regular(m: &Meta, ino: Ino, path: &str) -> Result<()> {
    match m.st.inodes.get(&ino).map(|i| i.kind) {
        Some(Kind::File) => Ok(()),
        Some(Kind::Dir) => Err(FsError::IsDir {
            path: path.to_string(),
        }),
        Some(k) => Err(FsError::WrongKind {
            path: path.to_string(),
            what: format!("a {k:?} cannot be opened through the fs"),
        }),
        None => Err(FsError::NotFound {
            path: path.to_string(),
        }),
    }
}

fn readlink_of(m: &Meta, ino: Ino, path: &str) -> Result<Vec<u8>> {
    match m.st.inodes.get(&ino) {
        Some(i) if i.kind == Kind::Symlink => Ok(i.target.clone()),
        Some(_) => Err(FsError::WrongKind {
            path: path.to_string(),
            what: "not a symlink".into(),
        }),
        None => Err(FsError::NotFound {
            path: path.to_string(),
        }),
    }
}

/// Counts one more handle on `ino`; returns the inode's writer lock.
fn register_open(m: &mut Meta, ino: Ino) -> Arc<Mutex<()>> {
    let e = m.open.entry(ino).or_insert_with(|| OpenEntry {
        count: 0,
        wlock: Arc::new(Mutex::new(())),
    });
    e.count += 1;
    e.wlock.clone()
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: queued records of a RW that was not unmounted.
        if self.mode == Mode::Rw
            && !self.unmounted.load(Ordering::SeqCst)
            && self.broken.lock().is_none()
        {
            if let Err(e) = self.commit(u64::MAX, false) {
                tracing::warn!(error = %e, "final commit at drop failed");
            }
        }
    }
}

/// The root inode number.
pub const ROOT_INO: Ino = ROOT;

/// Most queued data bytes a commit sends together with its header under
/// a `DataCrc` guard; more is written first (ordered), as its transfer
/// time dwarfs a round trip anyway. Readers of the newest transaction
/// re-read this much to check it.
const GUARD_MAX_BYTES: usize = 256 << 10;
/// Most ranges one guard lists (each costs 16 bytes of the inline frame).
const GUARD_MAX_RANGES: usize = 32;
/// Most queued data bytes a commit journals (puts in the ring with its
/// records, to be written home before the next checkpoint); more goes
/// home at once, as its transfer dwarfs a round trip and would double
/// its write cost. Data overwriting journaled bytes not yet home is
/// journaled whatever its size (when the ring has room).
const JOURNAL_MAX_BYTES: usize = 64 << 10;

/// Journaled bytes not yet written home that trigger a checkpoint (which
/// writes them home): the memory they hold on the RW and on each RO mount,
/// and the size of one checkpoint's home batch.
const MAX_UNHOMED_BYTES: usize = 8 << 20;
/// Encoded size of one `Journaled` record (type, offset, length).
const JOURNALED_RECORD: usize = 1 + 8 + 4;

/// Whether small queued data is journaled (the default). The environment
/// variable `PIKAFS_FS_JOURNAL_DATA=0` turns it off for A/B measurements
/// (small data then goes home in the commit's batch under the data
/// guard); data over journaled bytes not yet home is journaled anyway.
fn journal_small_data() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("PIKAFS_FS_JOURNAL_DATA").map_or(true, |v| v != "0"))
}
