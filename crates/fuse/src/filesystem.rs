//! The `fuser::Filesystem` over a pikafs [`Fs`]: every kernel request is
//! translated to a path-based fs call (see `inodes.rs`) and its
//! [`pikafs_fs::FsError`] to an errno.
//!
//! Caching (see `docs/fuse.md`): a RW mount is the only writer, so the
//! kernel may keep attributes and entries for [`RW_TTL`] and pages while a
//! file is open; an RO mount follows another writer, so it uses zero TTLs
//! and direct IO and every stat, lookup and read reaches the fs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenAccMode, OpenFlags as KOpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;
use pikafs_fs::{
    File, Fs, FsError, Ino, Kind, NewAttrs, OpenFlags, SetAttr, Stat, NAME_MAX, ROOT_INO,
};

use crate::inodes::{join, InodeTable};
use crate::metrics::Metrics;

/// Attribute and entry TTL on a RW mount: nothing else changes the fs.
pub const RW_TTL: Duration = Duration::from_secs(1);
/// Largest write request the kernel may send (the fs handles any size;
/// bigger requests mean fewer round trips for sequential IO).
const MAX_WRITE: u32 = 1 << 20;
/// Kernel readahead window.
const MAX_READAHEAD: u32 = 1 << 20;
/// `st_blksize`: tools such as cp size their buffers from it.
const BLKSIZE: u32 = 1 << 20;
/// Unit of `statfs` block counts.
const STATFS_BSIZE: u64 = 4096;

struct Handle {
    file: File,
    writable: bool,
}

/// A directory listing taken at opendir, so offsets stay stable while
/// the directory changes.
type Listing = Vec<(Ino, FileType, String)>;

/// The FUSE file system. Methods take `&self` and run on several fuser
/// threads at once; the fs is thread-safe and the tables are behind
/// short-held locks.
pub(crate) struct PikaFuse {
    fs: Fs,
    ro: bool,
    ttl: Duration,
    open_flags: FopenFlags,
    inodes: InodeTable,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    metrics: Metrics,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// The owner and umask'd mode the kernel asks a new inode to have.
fn new_attrs(req: &Request, mode: u32, umask: u32) -> NewAttrs {
    NewAttrs {
        mode: mode & !umask & 0o7777,
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn ns_of(t: SystemTime) -> u64 {
    // Times before 1970 are clamped: the fs keeps unsigned nanoseconds.
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn time_ns(t: TimeOrNow) -> u64 {
    match t {
        TimeOrNow::SpecificTime(t) => ns_of(t),
        TimeOrNow::Now => ns_of(SystemTime::now()),
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // The fs stores UTF-8 names.
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    if s.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(s)
}

impl PikaFuse {
    pub(crate) fn new(fs: Fs, ro: bool, metrics: Metrics) -> PikaFuse {
        PikaFuse {
            fs,
            ro,
            ttl: if ro { Duration::ZERO } else { RW_TTL },
            // RO: the writer may change any byte behind the kernel's back.
            // RW: every change goes through this mount, so pages stay
            // valid across opens.
            open_flags: if ro {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::FOPEN_KEEP_CACHE
            },
            inodes: InodeTable::new(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            metrics,
        }
    }

    fn attr(&self, st: &Stat) -> FileAttr {
        let t = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
        FileAttr {
            ino: INodeNo(st.ino),
            size: st.size,
            blocks: st.allocated.div_ceil(512),
            atime: t(st.atime_ns),
            mtime: t(st.mtime_ns),
            ctime: t(st.ctime_ns),
            crtime: t(st.ctime_ns),
            kind: kind(st.kind),
            perm: (st.mode & 0o7777) as u16,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            // The kernel's dev_t as FUSE carries it (new_encode_dev).
            rdev: st.rdev as u32,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn path_of(&self, ino: INodeNo) -> Result<String, Errno> {
        self.inodes.path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        Ok(join(&self.path_of(parent)?, name_str(name)?))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.files.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// Any open handle on `ino` (to reach an unlinked but open inode).
    fn any_handle(&self, ino: Ino, writable: bool) -> Option<Arc<Handle>> {
        self.files
            .lock()
            .values()
            .find(|h| h.file.ino() == ino && (h.writable || !writable))
            .cloned()
    }

    fn add_handle(&self, file: File, writable: bool) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .lock()
            .insert(fh, Arc::new(Handle { file, writable }));
        FileHandle(fh)
    }

    /// Stats `ino` by number: inode numbers are never reused, so this is
    /// right whatever names it has now (hard links, renames by an RO's
    /// writer, an unlinked but open file).
    fn stat_ino(&self, ino: Ino) -> Result<Stat, Errno> {
        self.fs.stat_inode(ino).map_err(|e| errno(&e))
    }

    /// Replies with the entry the fs just made or linked.
    fn reply_new(&self, path: String, r: Result<Stat, FsError>, reply: ReplyEntry) {
        match r {
            Ok(st) => {
                self.inodes.remember(st.ino, path);
                reply.entry(&self.ttl, &self.attr(&st), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn entry_of(&self, path: String, reply: ReplyEntry) {
        match self.fs.stat(&path) {
            Ok(st) => {
                self.inodes.remember(st.ino, path);
                reply.entry(&self.ttl, &self.attr(&st), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn check_rw(&self) -> Result<(), Errno> {
        if self.ro {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn truncate(&self, ino: Ino, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        self.check_rw()?;
        let by_fh = fh
            .and_then(|fh| self.files.lock().get(&fh.0).cloned())
            .filter(|h| h.writable);
        if let Some(h) = by_fh.or_else(|| self.any_handle(ino, true)) {
            return h.file.truncate(size).map_err(|e| errno(&e));
        }
        let flags = OpenFlags {
            write: true,
            ..OpenFlags::default()
        };
        let file = self.fs.open_inode(ino, flags).map_err(|e| errno(&e))?;
        file.truncate(size).map_err(|e| errno(&e))
    }

    fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PikaFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Err carries the nearest value the kernel accepts: use that.
        if let Err(v) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(v);
        }
        if let Err(v) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(v);
        }
        tracing::info!(ro = self.ro, "fuse session started");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(path) => self.entry_of(path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = match fh.and_then(|fh| self.files.lock().get(&fh.0).cloned()) {
            Some(h) => h.file.stat().map_err(|e| errno(&e)),
            None => self.stat_ino(ino.0),
        };
        match st {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Permission checks (owner for chmod/chown/utimes, write access
        // for UTIME_NOW) and the set-ID bit clearing of chown and chmod
        // are the kernel's: the mount uses `default_permissions`, and the
        // kernel sends the cleared mode along.
        if let Some(size) = size {
            if let Err(e) = self.truncate(ino.0, fh, size) {
                return reply.error(e);
            }
        }
        let attr = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            atime: atime.map(time_ns),
            mtime: mtime.map(time_ns),
        };
        if !attr.is_empty() {
            if let Err(e) = self
                .check_rw()
                .and_then(|()| self.fs.setattr_inode(ino.0, &attr).map_err(|e| errno(&e)))
            {
                return reply.error(e);
            }
        }
        match self.stat_ino(ino.0) {
            Ok(st) => reply.attr(&self.ttl, &self.attr(&st)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.check_rw().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.fs.mkdir_as(&path, &new_attrs(req, mode, umask)) {
            Ok(()) => self.entry_of(path, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.check_rw().and_then(|()| self.child(parent, name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let Some(k) = Kind::from_type_bits(mode).filter(|k| *k != Kind::Dir && *k != Kind::Symlink)
        else {
            return reply.error(Errno::EINVAL);
        };
        let r = self
            .fs
            .mknod(&path, k, &new_attrs(req, mode, umask), u64::from(rdev));
        self.reply_new(path, r, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let path = match self.check_rw().and_then(|()| self.child(parent, link_name)) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let attrs = new_attrs(req, 0o777, 0);
        let r = self
            .fs
            .symlink(target.as_os_str().as_bytes(), &path, &attrs);
        self.reply_new(path, r, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink_inode(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let path = match self
            .check_rw()
            .and_then(|()| self.child(newparent, newname))
        {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let r = self.fs.link_inode(ino.0, &path);
        self.reply_new(path, r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .check_rw()
            .and_then(|()| self.child(parent, name))
            .and_then(|path| {
                self.fs.unlink(&path).map_err(|e| errno(&e))?;
                self.inodes.detach(&path);
                Ok(())
            });
        Self::reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .check_rw()
            .and_then(|()| self.child(parent, name))
            .and_then(|path| {
                self.fs.rmdir(&path).map_err(|e| errno(&e))?;
                self.inodes.detach(&path);
                Ok(())
            });
        Self::reply_empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.check_rw()?;
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && self.fs.stat(&to).is_ok() {
                return Err(Errno::EEXIST);
            }
            self.fs.rename(&from, &to).map_err(|e| errno(&e))?;
            self.inodes.renamed(&from, &to);
            Ok(())
        })();
        Self::reply_empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: KOpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
            if writable {
                self.check_rw()?;
            }
            let of = OpenFlags {
                write: writable,
                truncate: writable && flags.0 & libc::O_TRUNC != 0,
                ..OpenFlags::default()
            };
            let file = self.fs.open_inode(ino.0, of).map_err(|e| errno(&e))?;
            Ok(self.add_handle(file, writable))
        })();
        match r {
            Ok(fh) => reply.opened(fh, self.open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            self.check_rw()?;
            let path = self.child(parent, name)?;
            let of = OpenFlags {
                create: true,
                exclusive: flags & libc::O_EXCL != 0,
                truncate: flags & libc::O_TRUNC != 0,
                write: true,
            };
            let file = self
                .fs
                .open_as(&path, of, &new_attrs(req, mode, umask))
                .map_err(|e| errno(&e))?;
            let st = file.stat().map_err(|e| errno(&e))?;
            self.inodes.remember(st.ino, path);
            Ok((st, self.add_handle(file, true)))
        })();
        match r {
            Ok((st, fh)) => reply.created(
                &self.ttl,
                &self.attr(&st),
                Generation(0),
                fh,
                self.open_flags,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: KOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let t = Instant::now();
        let r = self
            .handle(fh)
            .and_then(|h| h.file.pread(offset, size as usize).map_err(|e| errno(&e)));
        self.metrics.read_seconds.observe(t.elapsed().as_secs_f64());
        match r {
            Ok(data) => {
                self.metrics.read_bytes_total.inc_by(data.len() as u64);
                reply.data(&data)
            }
            Err(e) => {
                self.metrics.errors_total.inc();
                reply.error(e)
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: KOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let t = Instant::now();
        let r = self.handle(fh).and_then(|h| {
            if !h.writable {
                return Err(Errno::EBADF);
            }
            h.file.pwrite(offset, data).map_err(|e| errno(&e))
        });
        self.metrics
            .write_seconds
            .observe(t.elapsed().as_secs_f64());
        match r {
            Ok(()) => {
                self.metrics.write_bytes_total.inc_by(data.len() as u64);
                // A FUSE write request is at most MAX_WRITE bytes.
                reply.written(data.len() as u32)
            }
            Err(e) => {
                self.metrics.errors_total.inc();
                reply.error(e)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point; fsync is.
        Self::reply_empty(reply, self.handle(fh).map(|_| ()));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: KOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Dropping the last Arc closes the fs File (an orphan becomes
        // releasable).
        self.files.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let t = Instant::now();
        let r = self.handle(fh).and_then(|h| {
            if self.ro {
                // Nothing of an RO mount is dirty.
                return Ok(());
            }
            h.file.fsync().map_err(|e| errno(&e))
        });
        self.metrics
            .fsync_seconds
            .observe(t.elapsed().as_secs_f64());
        if r.is_err() {
            self.metrics.errors_total.inc();
        }
        Self::reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: KOpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let path = self.path_of(ino)?;
            let entries = self.fs.readdir(&path).map_err(|e| errno(&e))?;
            let parent = if ino.0 == ROOT_INO {
                ROOT_INO
            } else {
                let up = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("/");
                let up = if up.is_empty() { "/" } else { up };
                self.fs.stat(up).map(|s| s.ino).unwrap_or(ROOT_INO)
            };
            let mut list: Listing = Vec::with_capacity(entries.len() + 2);
            list.push((ino.0, FileType::Directory, ".".into()));
            list.push((parent, FileType::Directory, "..".into()));
            list.extend(entries.into_iter().map(|e| (e.ino, kind(e.kind), e.name)));
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.dirs.lock().insert(fh, Arc::new(list));
            Ok(FileHandle(fh))
        })();
        match r {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(list) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, k, name)) in list.iter().enumerate().skip(offset as usize) {
            // The offset of an entry is where the next call resumes.
            if reply.add(INodeNo(*ino), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: KOpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed before their call returns.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        let objects = s.files + s.dirs;
        // Inodes are not preallocated: report plenty free.
        let ffree = u64::from(u32::MAX).saturating_sub(objects);
        reply.statfs(
            s.total_bytes / STATFS_BSIZE,
            s.free_bytes / STATFS_BSIZE,
            s.free_bytes / STATFS_BSIZE,
            objects + ffree,
            ffree,
            STATFS_BSIZE as u32,
            NAME_MAX as u32,
            STATFS_BSIZE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (`default_permissions`) and
        // does not ask; what is left is existence and the RO mount.
        let r = self.stat_ino(ino.0).and_then(|_| {
            if mask.contains(AccessFlags::W_OK) {
                self.check_rw()
            } else {
                Ok(())
            }
        });
        Self::reply_empty(reply, r);
    }

    // No extended attributes. ENOSYS (not ENODATA) makes the kernel stop
    // asking, which matters: without it every write first asks for
    // `security.capability`.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            self.check_rw()?;
            let keep_size = match mode {
                0 => false,
                libc::FALLOC_FL_KEEP_SIZE => true,
                _ => return Err(Errno::from_i32(libc::EOPNOTSUPP)),
            };
            let h = self.handle(fh)?;
            if !h.writable {
                return Err(Errno::EBADF);
            }
            h.file
                .fallocate(offset, length, keep_size)
                .map_err(|e| errno(&e))
        })();
        Self::reply_empty(reply, r);
    }
}
