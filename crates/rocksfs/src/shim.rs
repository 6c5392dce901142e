//! The Rust half of the C ABI in `cpp/shim.h`: the callbacks the C++
//! FileSystem calls for every pikafs path, and the table of open files.
//!
//! Every callback catches panics (a panic must never unwind into C++) and
//! turns every failure into a status code plus a message. Open files live
//! in [`Context::files`] under a `u64` handle that C++ holds; a handle the
//! table does not know (closed twice, garbage) is an error, never UB.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pikafs_fs::{File, FsError, Kind, Mode, OpenFlags};

use crate::env::FsProvider;

// Status codes: keep in step with cpp/shim.h.
pub(crate) const OK: i32 = 0;
pub(crate) const NOT_FOUND: i32 = 1;
pub(crate) const NO_SPACE: i32 = 2;
pub(crate) const IO_ERROR: i32 = 3;
#[allow(dead_code)] // only C++ produces it (NotSupported ops never reach Rust)
pub(crate) const NOT_SUPPORTED: i32 = 4;
pub(crate) const INVALID_ARGUMENT: i32 = 5;
pub(crate) const FENCED: i32 = 6;
/// Size of the message buffer C++ passes (`PIKAFS_ERR_CAP`).
const ERR_CAP: usize = 512;

const OPEN_READ: i32 = 0;
const OPEN_TRUNCATE: i32 = 1;
const OPEN_APPEND: i32 = 2;

type PushFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize, u64, i32);

/// `pikafs_callbacks` in `cpp/shim.h`, field for field.
#[repr(C)]
pub(crate) struct Callbacks {
    pub ctx: *mut c_void,
    pub open: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        usize,
        i32,
        *mut u64,
        *mut u64,
        *mut c_char,
    ) -> i32,
    pub close: unsafe extern "C" fn(*mut c_void, u64, *mut c_char) -> i32,
    pub pread: unsafe extern "C" fn(
        *mut c_void,
        u64,
        u64,
        *mut c_char,
        usize,
        *mut usize,
        *mut c_char,
    ) -> i32,
    pub pwrite:
        unsafe extern "C" fn(*mut c_void, u64, u64, *const c_char, usize, *mut c_char) -> i32,
    pub truncate: unsafe extern "C" fn(*mut c_void, u64, u64, *mut c_char) -> i32,
    pub fsync: unsafe extern "C" fn(*mut c_void, u64, *mut c_char) -> i32,
    pub fallocate: unsafe extern "C" fn(*mut c_void, u64, u64, u64, *mut c_char) -> i32,
    pub stat: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        usize,
        *mut u64,
        *mut u64,
        *mut i32,
        *mut c_char,
    ) -> i32,
    pub readdir: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        usize,
        *mut c_void,
        PushFn,
        *mut c_char,
    ) -> i32,
    pub unlink: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_char) -> i32,
    pub mkdir: unsafe extern "C" fn(*mut c_void, *const c_char, usize, i32, *mut c_char) -> i32,
    pub rmdir: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_char) -> i32,
    pub rename: unsafe extern "C" fn(
        *mut c_void,
        *const c_char,
        usize,
        *const c_char,
        usize,
        *mut c_char,
    ) -> i32,
    pub truncate_path:
        unsafe extern "C" fn(*mut c_void, *const c_char, usize, u64, *mut c_char) -> i32,
    pub sync_all: unsafe extern "C" fn(*mut c_void, *mut c_char) -> i32,
    pub free_space: unsafe extern "C" fn(*mut c_void, *mut u64, *mut c_char) -> i32,
    pub lock: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_char) -> i32,
    pub unlock: unsafe extern "C" fn(*mut c_void, *const c_char, usize, *mut c_char) -> i32,
    pub drop_ctx: unsafe extern "C" fn(*mut c_void),
}

unsafe extern "C" {
    pub(crate) fn pikafs_env_create(
        cb: *const Callbacks,
        prefix: *const c_char,
        prefix_len: usize,
        name: *const c_char,
        name_len: usize,
    ) -> *mut c_void;
    pub(crate) fn pikafs_env_unregister(name: *const c_char, name_len: usize, env: *mut c_void);
}

/// What the callbacks share: the fs, the open files, the held locks.
pub(crate) struct Context {
    provider: Arc<dyn FsProvider>,
    files: RwLock<HashMap<u64, Arc<File>>>,
    next_handle: AtomicU64,
    /// fs paths of LOCK files held by a DB in this process.
    locks: Mutex<HashSet<String>>,
    /// This Env's operation counters (shared with its `PikaEnv`).
    pub(crate) stats: Arc<crate::stats::Stats>,
    /// RO only: whole contents of small files by path, with the identity
    /// they were read at. A secondary rereads CURRENT on every catch-up
    /// (to notice a new MANIFEST); on a volume each of those reads is a
    /// round trip, for 16 bytes that change only when a new MANIFEST
    /// appears (CURRENT is replaced by a rename: a new inode).
    small: Mutex<HashMap<String, Cached>>,
    /// Open handles whose reads the small-file cache serves.
    cached: RwLock<HashMap<u64, Cached>>,
}

/// A small file's contents and the identity they were read at.
type Cached = (FileId, Arc<Vec<u8>>);

/// What must match for cached contents to still be the file's: inode,
/// size, modification and change times (any write moves mtime; a new file
/// under the same name has another inode or ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    ino: u64,
    size: u64,
    mtime_ns: u64,
    ctime_ns: u64,
}

impl FileId {
    fn of(st: &pikafs_fs::Stat) -> FileId {
        FileId {
            ino: st.ino,
            size: st.size,
            mtime_ns: st.mtime_ns,
            ctime_ns: st.ctime_ns,
        }
    }
}

/// Files up to this size are cached whole on RO mounts (CURRENT,
/// IDENTITY, OPTIONS are far smaller; SSTs, WALs and MANIFESTs grow past
/// it, and a handle only serves reads from the cache while the file still
/// matches, falling back to the fs otherwise).
const SMALL_FILE_MAX: u64 = 4096;

impl Context {
    pub(crate) fn new(provider: Arc<dyn FsProvider>) -> Context {
        Context {
            provider,
            files: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            locks: Mutex::new(HashSet::new()),
            stats: Arc::new(crate::stats::Stats::new()),
            small: Mutex::new(HashMap::new()),
            cached: RwLock::new(HashMap::new()),
        }
    }

    fn file(&self, handle: u64) -> Result<Arc<File>, CbError> {
        self.files.read().get(&handle).cloned().ok_or_else(|| {
            CbError::new(
                INVALID_ARGUMENT,
                format!("unknown pikafs file handle {handle}"),
            )
        })
    }
}

/// A failure on its way to C++.
#[derive(Debug)]
pub(crate) struct CbError {
    code: i32,
    msg: String,
}

impl CbError {
    fn new(code: i32, msg: impl Into<String>) -> CbError {
        CbError {
            code,
            msg: msg.into(),
        }
    }
}

impl From<FsError> for CbError {
    fn from(e: FsError) -> CbError {
        CbError::new(code_of(&e), format!("pikafs: {e}"))
    }
}

/// The status code for an fs error (see docs/rocksfs.md, "Errors").
pub(crate) fn code_of(e: &FsError) -> i32 {
    match e {
        FsError::NotFound { .. } => NOT_FOUND,
        FsError::NoSpace => NO_SPACE,
        FsError::Fenced { .. } => FENCED,
        _ => IO_ERROR,
    }
}

/// Turns a RocksDB path (prefix stripped) into a canonical fs path:
/// repeated slashes and `.` dropped, `..` resolved, never above the root.
pub(crate) fn fs_path(raw: &[u8]) -> Result<String, CbError> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| CbError::new(INVALID_ARGUMENT, "pikafs paths must be UTF-8"))?;
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Writes `msg` NUL-terminated into C++'s `ERR_CAP`-byte buffer.
///
/// # Safety
/// `err` is null or points to `ERR_CAP` writable bytes.
unsafe fn write_err(err: *mut c_char, msg: &str) {
    if err.is_null() {
        return;
    }
    let mut n = msg.len().min(ERR_CAP - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `err` has ERR_CAP bytes (caller contract) and n < ERR_CAP;
    // the regions cannot overlap (one is a Rust string).
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// Runs `f` with the context, catching panics; returns the status code.
///
/// # Safety
/// `ctx` is the `Context` pointer given to `pikafs_env_create` (alive until
/// `drop_ctx`); `err` as for [`write_err`].
unsafe fn guard(
    ctx: *mut c_void,
    err: *mut c_char,
    op: &'static str,
    f: impl FnOnce(&Context) -> Result<(), CbError>,
) -> i32 {
    // SAFETY: C++ passes back the pointer we gave it, which stays valid
    // until drop_ctx (called only when no file object is left).
    let cx = unsafe { &*ctx.cast::<Context>() };
    let started = std::time::Instant::now();
    let res = catch_unwind(AssertUnwindSafe(|| f(cx))).unwrap_or_else(|_| {
        tracing::error!(op, "panic inside a pikafs RocksDB file operation");
        Err(CbError::new(
            IO_ERROR,
            format!("pikafs: {op}: internal panic"),
        ))
    });
    let elapsed = started.elapsed();
    cx.stats.record(op, elapsed);
    // Per-op timing for profiling a RocksDB operation through the fs
    // (`PIKAFS_LOG=pikafs_rocksfs=trace`); free when the level is off.
    tracing::trace!(op, us = elapsed.as_micros() as u64, "pikafs file op");
    match res {
        Ok(()) => OK,
        Err(e) => {
            if e.code == NOT_FOUND {
                tracing::trace!(op, msg = %e.msg, "not found");
            } else {
                tracing::debug!(op, code = e.code, msg = %e.msg, "pikafs file op failed");
            }
            // SAFETY: caller contract.
            unsafe { write_err(err, &e.msg) };
            e.code
        }
    }
}

/// # Safety
/// `p` points to `len` readable bytes (or `len` is 0).
unsafe fn path_arg(p: *const c_char, len: usize) -> Result<String, CbError> {
    if len == 0 {
        return fs_path(b"");
    }
    // SAFETY: caller contract.
    fs_path(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

unsafe extern "C" fn cb_open(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    how: i32,
    handle: *mut u64,
    size: *mut u64,
    err: *mut c_char,
) -> i32 {
    // SAFETY: C++ passes a valid context, path and out pointers.
    unsafe {
        guard(ctx, err, "open", |cx| {
            let p = path_arg(path, len)?;
            let flags = match how {
                OPEN_READ => OpenFlags::read(),
                OPEN_TRUNCATE => OpenFlags {
                    truncate: true,
                    ..OpenFlags::create()
                },
                OPEN_APPEND => OpenFlags::create(),
                _ => {
                    return Err(CbError::new(
                        INVALID_ARGUMENT,
                        format!("bad open mode {how}"),
                    ))
                }
            };
            let fs = cx.provider.fs();
            let file = fs.open(&p, flags)?;
            let st = file.stat()?;
            let sz = st.size;
            let h = cx.next_handle.fetch_add(1, Ordering::Relaxed);
            if how == OPEN_READ && fs.mode() == Mode::Ro && sz <= SMALL_FILE_MAX {
                cache_small(cx, &p, &file, FileId::of(&st), h)?;
            }
            cx.files.write().insert(h, Arc::new(file));
            *handle = h;
            *size = sz;
            Ok(())
        })
    }
}

/// RO: attaches handle `h` to the cached contents of the small file `p`,
/// reading them first if the cache has none for this identity.
fn cache_small(cx: &Context, p: &str, file: &File, id: FileId, h: u64) -> Result<(), CbError> {
    let known = cx
        .small
        .lock()
        .get(p)
        .filter(|(cid, _)| *cid == id)
        .map(|(_, b)| b.clone());
    let bytes = match known {
        Some(b) => b,
        None => {
            let data = file.pread(0, id.size as usize)?;
            if data.len() as u64 != id.size {
                return Ok(()); // changed under us: no caching this time
            }
            cx.stats.add_bytes("pread", data.len() as u64);
            let b = Arc::new(data);
            let mut small = cx.small.lock();
            // Bounded: RocksDB has a handful of small files per DB; drop
            // everything rather than track recency if a DB has more.
            if small.len() >= 64 {
                small.clear();
            }
            small.insert(p.to_string(), (id, b.clone()));
            b
        }
    };
    cx.cached.write().insert(h, (id, bytes));
    Ok(())
}

unsafe extern "C" fn cb_close(ctx: *mut c_void, handle: u64, err: *mut c_char) -> i32 {
    // SAFETY: valid context and error buffer from C++.
    unsafe {
        guard(ctx, err, "close", |cx| {
            cx.cached.write().remove(&handle);
            cx.files.write().remove(&handle).map(drop).ok_or_else(|| {
                CbError::new(
                    INVALID_ARGUMENT,
                    format!("close of unknown pikafs handle {handle}"),
                )
            })
        })
    }
}

unsafe extern "C" fn cb_pread(
    ctx: *mut c_void,
    handle: u64,
    offset: u64,
    buf: *mut c_char,
    len: usize,
    got: *mut usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: `buf` has `len` writable bytes (RocksDB's scratch).
    unsafe {
        guard(ctx, err, "pread", |cx| {
            let f = cx.file(handle)?;
            let hit = cx.cached.read().get(&handle).cloned();
            if let Some((id, bytes)) = hit {
                // Serve from the cache only while the file is what was
                // cached (an appended file falls through to the fs).
                // (A stat failure, e.g. an unlinked file, also goes to
                // the fs, which knows how to read orphans.)
                if f.stat().ok().map(|st| FileId::of(&st)) == Some(id) {
                    let from = (offset.min(bytes.len() as u64)) as usize;
                    let n = (bytes.len() - from).min(len);
                    std::ptr::copy_nonoverlapping(bytes[from..].as_ptr(), buf.cast::<u8>(), n);
                    *got = n;
                    cx.stats.record("pread_cached", std::time::Duration::ZERO);
                    cx.stats.add_bytes("pread_cached", n as u64);
                    return Ok(());
                }
                cx.cached.write().remove(&handle);
            }
            let data = f.pread(offset, len)?;
            // A short read (EOF) returns fewer bytes; never more than asked.
            let n = data.len().min(len);
            cx.stats.add_bytes("pread", n as u64);
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), n);
            *got = n;
            Ok(())
        })
    }
}

unsafe extern "C" fn cb_pwrite(
    ctx: *mut c_void,
    handle: u64,
    offset: u64,
    data: *const c_char,
    len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: `data` has `len` readable bytes.
    unsafe {
        guard(ctx, err, "pwrite", |cx| {
            let f = cx.file(handle)?;
            if len == 0 {
                return Ok(());
            }
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
            f.pwrite(offset, bytes)?;
            cx.stats.add_bytes("pwrite", len as u64);
            Ok(())
        })
    }
}

unsafe extern "C" fn cb_truncate(
    ctx: *mut c_void,
    handle: u64,
    size: u64,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid context and error buffer.
    unsafe {
        guard(ctx, err, "truncate", |cx| {
            Ok(cx.file(handle)?.truncate(size)?)
        })
    }
}

unsafe extern "C" fn cb_fsync(ctx: *mut c_void, handle: u64, err: *mut c_char) -> i32 {
    // SAFETY: valid context and error buffer.
    unsafe { guard(ctx, err, "fsync", |cx| Ok(cx.file(handle)?.fsync()?)) }
}

unsafe extern "C" fn cb_fallocate(
    ctx: *mut c_void,
    handle: u64,
    offset: u64,
    len: u64,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid context and error buffer.
    unsafe {
        guard(ctx, err, "fallocate", |cx| {
            Ok(cx.file(handle)?.fallocate(offset, len, true)?)
        })
    }
}

unsafe extern "C" fn cb_stat(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    size: *mut u64,
    mtime_ns: *mut u64,
    is_dir: *mut i32,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "stat", |cx| {
            let st = cx.provider.fs().stat(&path_arg(path, len)?)?;
            *size = st.size;
            *mtime_ns = st.mtime_ns;
            *is_dir = i32::from(st.kind == Kind::Dir);
            Ok(())
        })
    }
}

unsafe extern "C" fn cb_readdir(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    out: *mut c_void,
    push: PushFn,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++; `push` accepts `out`.
    unsafe {
        guard(ctx, err, "readdir", |cx| {
            let dir = path_arg(path, len)?;
            let fs = cx.provider.fs();
            let entries = fs.readdir(&dir)?;
            cx.stats.add_bytes("readdir", entries.len() as u64);
            for e in entries {
                let is_dir = e.kind == Kind::Dir;
                let child = if dir == "/" {
                    format!("/{}", e.name)
                } else {
                    format!("{dir}/{}", e.name)
                };
                // Racing an unlink: report size 0 rather than fail the
                // whole listing.
                let size = if is_dir {
                    0
                } else {
                    fs.stat(&child).map(|s| s.size).unwrap_or(0)
                };
                push(
                    out,
                    e.name.as_ptr().cast(),
                    e.name.len(),
                    size,
                    i32::from(is_dir),
                );
            }
            Ok(())
        })
    }
}

unsafe extern "C" fn cb_unlink(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "unlink", |cx| {
            Ok(cx.provider.fs().unlink(&path_arg(path, len)?)?)
        })
    }
}

unsafe extern "C" fn cb_mkdir(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    if_missing: i32,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "mkdir", |cx| {
            let p = path_arg(path, len)?;
            let fs = cx.provider.fs();
            if p == "/" && if_missing != 0 {
                return Ok(());
            }
            match fs.mkdir(&p) {
                Ok(()) => Ok(()),
                Err(FsError::Exists { .. }) if if_missing != 0 => {
                    if fs.stat(&p)?.kind == Kind::Dir {
                        Ok(())
                    } else {
                        Err(CbError::new(
                            IO_ERROR,
                            format!("pikafs: {p}: exists and is not a directory"),
                        ))
                    }
                }
                // An RO mount cannot create, but an existing directory is
                // what CreateDirIfMissing asks for (a secondary does this).
                Err(e @ FsError::ReadOnly { .. }) if if_missing != 0 => match fs.stat(&p) {
                    Ok(st) if st.kind == Kind::Dir => Ok(()),
                    _ => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            }
        })
    }
}

unsafe extern "C" fn cb_rmdir(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "rmdir", |cx| {
            Ok(cx.provider.fs().rmdir(&path_arg(path, len)?)?)
        })
    }
}

unsafe extern "C" fn cb_rename(
    ctx: *mut c_void,
    from: *const c_char,
    from_len: usize,
    to: *const c_char,
    to_len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "rename", |cx| {
            let (a, b) = (path_arg(from, from_len)?, path_arg(to, to_len)?);
            Ok(cx.provider.fs().rename(&a, &b)?)
        })
    }
}

unsafe extern "C" fn cb_truncate_path(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    size: u64,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "truncate", |cx| {
            let p = path_arg(path, len)?;
            let flags = OpenFlags {
                write: true,
                ..OpenFlags::default()
            };
            Ok(cx.provider.fs().open(&p, flags)?.truncate(size)?)
        })
    }
}

unsafe extern "C" fn cb_sync_all(ctx: *mut c_void, err: *mut c_char) -> i32 {
    // SAFETY: valid context and error buffer.
    unsafe { guard(ctx, err, "sync", sync_all) }
}

/// Directory fsync and `SyncFile`: commits everything queued on the mount
/// (`Fs::sync`; a no-op on an RO mount). Namespace operations are already
/// committed when they return; this also covers other files' queued
/// writes, as a POSIX directory fsync after file fsyncs would.
fn sync_all(cx: &Context) -> Result<(), CbError> {
    Ok(cx.provider.fs().sync()?)
}

unsafe extern "C" fn cb_free_space(ctx: *mut c_void, free: *mut u64, err: *mut c_char) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "statfs", |cx| {
            *free = cx.provider.fs().statfs().free_bytes;
            Ok(())
        })
    }
}

unsafe extern "C" fn cb_lock(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe { guard(ctx, err, "lock", |cx| lock(cx, &path_arg(path, len)?)) }
}

/// RocksDB's LOCK file: the RW mount's lease at ctrl (which fenced every
/// earlier writer) is the cross-host lock; this only adds the in-process
/// check that two DBs of this mount do not share a directory.
fn lock(cx: &Context, p: &str) -> Result<(), CbError> {
    let fs = cx.provider.fs();
    if fs.mode() == Mode::Ro {
        return Err(CbError::new(
            IO_ERROR,
            format!("pikafs: lock {p}: lock held by the RW mount (this is a read-only mount)"),
        ));
    }
    let mut locks = cx.locks.lock();
    if locks.contains(p) {
        return Err(CbError::new(
            IO_ERROR,
            format!("pikafs: lock {p}: lock held by this process"),
        ));
    }
    // The file itself only marks the directory as a DB's, as on POSIX.
    drop(fs.open(p, OpenFlags::create())?);
    locks.insert(p.to_string());
    Ok(())
}

unsafe extern "C" fn cb_unlock(
    ctx: *mut c_void,
    path: *const c_char,
    len: usize,
    err: *mut c_char,
) -> i32 {
    // SAFETY: valid pointers from C++.
    unsafe {
        guard(ctx, err, "unlock", |cx| {
            let p = path_arg(path, len)?;
            if cx.locks.lock().remove(&p) {
                Ok(())
            } else {
                Err(CbError::new(
                    IO_ERROR,
                    format!("pikafs: unlock {p}: not locked"),
                ))
            }
        })
    }
}

unsafe extern "C" fn cb_drop_ctx(ctx: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointer came from Box::into_raw in `callbacks`, and
        // C++ calls this exactly once, from the FileSystem's destructor.
        drop(unsafe { Box::from_raw(ctx.cast::<Context>()) });
    }));
}

/// The callback table over `cx`; ownership of `cx` passes to whoever calls
/// `drop_ctx` (the shim).
pub(crate) fn callbacks(cx: Box<Context>) -> Callbacks {
    Callbacks {
        ctx: Box::into_raw(cx).cast(),
        open: cb_open,
        close: cb_close,
        pread: cb_pread,
        pwrite: cb_pwrite,
        truncate: cb_truncate,
        fsync: cb_fsync,
        fallocate: cb_fallocate,
        stat: cb_stat,
        readdir: cb_readdir,
        unlink: cb_unlink,
        mkdir: cb_mkdir,
        rmdir: cb_rmdir,
        rename: cb_rename,
        truncate_path: cb_truncate_path,
        sync_all: cb_sync_all,
        free_space: cb_free_space,
        lock: cb_lock,
        unlock: cb_unlock,
        drop_ctx: cb_drop_ctx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pikafs_fs::{mkfs, CrashDevice, Fs, MkfsOptions};

    fn ctx(mode: Mode) -> (Fs, Callbacks) {
        let dev = Arc::new(CrashDevice::new(64 << 20));
        let opts = MkfsOptions {
            block_size: Some(64 << 10),
            journal_size: Some(256 << 10),
            checkpoint_size: Some(256 << 10),
        };
        mkfs(&*dev, &opts).expect("mkfs");
        let fs = Fs::mount(dev.clone(), Mode::Rw).expect("mount");
        fs.mkdir("/d").expect("mkdir");
        let f = fs.open("/d/f", OpenFlags::create()).expect("create");
        f.pwrite(0, b"hello").expect("write");
        f.fsync().expect("fsync");
        let fs = match mode {
            Mode::Rw => fs,
            Mode::Ro => Fs::mount(dev, Mode::Ro).expect("mount ro"),
        };
        (fs.clone(), callbacks(Box::new(Context::new(Arc::new(fs)))))
    }

    fn msg(err: &[u8]) -> String {
        let n = err.iter().position(|&b| b == 0).expect("NUL-terminated");
        String::from_utf8_lossy(&err[..n]).into_owned()
    }

    #[test]
    fn a_panic_becomes_an_io_error() {
        let (_fs, cb) = ctx(Mode::Rw);
        let mut err = [0u8; ERR_CAP];
        // SAFETY: the table's own context and a buffer of ERR_CAP bytes.
        let rc = unsafe {
            guard(cb.ctx, err.as_mut_ptr().cast(), "test", |_| {
                panic!("boom");
            })
        };
        assert_eq!(rc, IO_ERROR);
        assert!(msg(&err).contains("internal panic"), "{}", msg(&err));
        // A long message is cut at the buffer, NUL-terminated.
        let long = "é".repeat(ERR_CAP);
        // SAFETY: as above.
        let rc = unsafe {
            guard(cb.ctx, err.as_mut_ptr().cast(), "test", |_| {
                Err(CbError::new(IO_ERROR, long.clone()))
            })
        };
        assert_eq!(rc, IO_ERROR);
        assert!(msg(&err).len() < ERR_CAP && msg(&err).starts_with("éé"));
        // SAFETY: the table's own context, dropped once.
        unsafe { (cb.drop_ctx)(cb.ctx) };
    }

    #[test]
    fn paths_are_canonical() {
        assert_eq!(fs_path(b"").unwrap(), "/");
        assert_eq!(fs_path(b"/db//000012.sst").unwrap(), "/db/000012.sst");
        assert_eq!(fs_path(b"/db/./x/../CURRENT").unwrap(), "/db/CURRENT");
        assert_eq!(fs_path(b"/../../etc").unwrap(), "/etc");
        assert!(fs_path(b"/\xff").is_err());
    }

    #[test]
    fn errors_map_to_the_codes_rocksdb_needs() {
        let nf = FsError::NotFound { path: "/x".into() };
        assert_eq!(code_of(&nf), NOT_FOUND);
        assert_eq!(code_of(&FsError::NoSpace), NO_SPACE);
        assert_eq!(
            code_of(&FsError::Fenced {
                message: "m".into()
            }),
            FENCED
        );
        assert_eq!(code_of(&FsError::ReadOnly { why: "w".into() }), IO_ERROR);
        let ll = FsError::LeaseLost {
            path: "/x".into(),
            why: "w".into(),
        };
        assert_eq!(code_of(&ll), IO_ERROR);
    }

    #[test]
    fn handles_read_short_at_eof_and_die_on_close() {
        let (_fs, cb) = ctx(Mode::Rw);
        let mut err = [0u8; ERR_CAP];
        let e = err.as_mut_ptr().cast::<c_char>();
        let p = "/d/f";
        let (mut h, mut size) = (0u64, 0u64);
        // SAFETY: the table's own context; pointers valid for each call.
        unsafe {
            let rc = (cb.open)(
                cb.ctx,
                p.as_ptr().cast(),
                p.len(),
                OPEN_READ,
                &mut h,
                &mut size,
                e,
            );
            assert_eq!(rc, OK);
            assert_eq!(size, 5);
            let mut buf = [0u8; 64];
            let mut got = 0usize;
            let rc = (cb.pread)(
                cb.ctx,
                h,
                3,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut got,
                e,
            );
            assert_eq!(rc, OK);
            assert_eq!(&buf[..got], b"lo");
            let rc = (cb.pread)(
                cb.ctx,
                h,
                100,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut got,
                e,
            );
            assert_eq!((rc, got), (OK, 0));
            assert_eq!((cb.close)(cb.ctx, h, e), OK);
            // A dead handle is an error, for every operation.
            assert_eq!((cb.close)(cb.ctx, h, e), INVALID_ARGUMENT);
            let rc = (cb.pread)(cb.ctx, h, 0, buf.as_mut_ptr().cast(), 1, &mut got, e);
            assert_eq!(rc, INVALID_ARGUMENT);
            assert!(
                msg(&err).contains("unknown pikafs file handle"),
                "{}",
                msg(&err)
            );
            assert_eq!((cb.fsync)(cb.ctx, 12345, e), INVALID_ARGUMENT);
            let missing = "/d/missing";
            let rc = (cb.open)(
                cb.ctx,
                missing.as_ptr().cast(),
                missing.len(),
                OPEN_READ,
                &mut h,
                &mut size,
                e,
            );
            assert_eq!(rc, NOT_FOUND);
            assert!(msg(&err).contains("/d/missing"), "{}", msg(&err));
            (cb.drop_ctx)(cb.ctx);
        }
    }

    #[test]
    fn ro_context_refuses_writes_and_the_lock() {
        let (fs, cb) = ctx(Mode::Ro);
        assert_eq!(fs.mode(), Mode::Ro);
        let mut err = [0u8; ERR_CAP];
        let e = err.as_mut_ptr().cast::<c_char>();
        let (mut h, mut size) = (0u64, 0u64);
        // SAFETY: the table's own context; pointers valid for each call.
        unsafe {
            for how in [OPEN_TRUNCATE, OPEN_APPEND] {
                let p = "/d/new";
                let rc = (cb.open)(
                    cb.ctx,
                    p.as_ptr().cast(),
                    p.len(),
                    how,
                    &mut h,
                    &mut size,
                    e,
                );
                assert_eq!(rc, IO_ERROR);
                assert!(msg(&err).contains("read-only"), "{}", msg(&err));
            }
            let p = "/d/LOCK";
            assert_eq!((cb.lock)(cb.ctx, p.as_ptr().cast(), p.len(), e), IO_ERROR);
            assert!(
                msg(&err).contains("lock held by the RW mount"),
                "{}",
                msg(&err)
            );
            let p = "/d/f";
            assert_eq!((cb.unlink)(cb.ctx, p.as_ptr().cast(), p.len(), e), IO_ERROR);
            // CreateDirIfMissing of an existing directory is fine on RO.
            let d = "/d";
            assert_eq!((cb.mkdir)(cb.ctx, d.as_ptr().cast(), d.len(), 1, e), OK);
            let d = "/other";
            assert_eq!(
                (cb.mkdir)(cb.ctx, d.as_ptr().cast(), d.len(), 1, e),
                IO_ERROR
            );
            (cb.drop_ctx)(cb.ctx);
        }
    }

    /// Reads `len` bytes at `off` of open handle `h` through the callbacks.
    fn read_at(cb: &Callbacks, h: u64, off: u64, len: usize) -> Vec<u8> {
        let mut err = [0u8; ERR_CAP];
        let mut buf = vec![0u8; len];
        let mut got = 0usize;
        // SAFETY: the table's own context; `buf` has `len` bytes.
        let rc = unsafe {
            (cb.pread)(
                cb.ctx,
                h,
                off,
                buf.as_mut_ptr().cast(),
                len,
                &mut got,
                err.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, OK, "{}", msg(&err));
        buf.truncate(got);
        buf
    }

    fn open_read(cb: &Callbacks, p: &str) -> u64 {
        let mut err = [0u8; ERR_CAP];
        let (mut h, mut size) = (0u64, 0u64);
        // SAFETY: the table's own context; pointers valid for the call.
        let rc = unsafe {
            (cb.open)(
                cb.ctx,
                p.as_ptr().cast(),
                p.len(),
                OPEN_READ,
                &mut h,
                &mut size,
                err.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, OK, "{}", msg(&err));
        h
    }

    #[test]
    fn ro_small_file_cache_follows_replacement_and_appends() {
        let dev = Arc::new(CrashDevice::new(64 << 20));
        let opts = MkfsOptions {
            block_size: Some(64 << 10),
            journal_size: Some(256 << 10),
            checkpoint_size: Some(256 << 10),
        };
        mkfs(&*dev, &opts).expect("mkfs");
        let rw = Fs::mount(dev.clone(), Mode::Rw).expect("mount");
        let put = |name: &str, data: &[u8]| {
            let f = rw.open(name, OpenFlags::create()).expect("create");
            f.pwrite(0, data).expect("write");
            f.fsync().expect("fsync");
        };
        put("/CURRENT", b"MANIFEST-000001\n");
        let ro = Fs::mount(dev, Mode::Ro).expect("mount ro");
        let cx = Box::new(Context::new(Arc::new(ro.clone())));
        let stats = cx.stats.clone();
        let cb = callbacks(cx);
        let cached = || stats.snapshot().get("pread_cached").map_or(0, |s| s.calls);

        for _ in 0..3 {
            let h = open_read(&cb, "/CURRENT");
            assert_eq!(read_at(&cb, h, 0, 100), b"MANIFEST-000001\n");
            // SAFETY: own context, open handle.
            unsafe { (cb.close)(cb.ctx, h, std::ptr::null_mut()) };
        }
        assert_eq!(cached(), 3, "every read after open is served by the cache");

        // RocksDB's way to change CURRENT: a new file renamed over it.
        put("/CURRENT.tmp", b"MANIFEST-000009\n");
        rw.rename("/CURRENT.tmp", "/CURRENT").expect("rename");
        rw.sync().expect("sync");
        ro.catch_up().expect("ro catch up");
        let h = open_read(&cb, "/CURRENT");
        assert_eq!(read_at(&cb, h, 0, 100), b"MANIFEST-000009\n");

        // An open handle of a file that grows reads the new bytes.
        put("/log", b"abc");
        ro.catch_up().expect("ro catch up");
        let h2 = open_read(&cb, "/log");
        assert_eq!(read_at(&cb, h2, 0, 100), b"abc");
        let f = rw.open("/log", OpenFlags::create()).expect("open");
        f.pwrite(3, b"def").expect("append");
        f.fsync().expect("fsync");
        ro.catch_up().expect("ro catch up");
        assert_eq!(read_at(&cb, h2, 0, 100), b"abcdef");
        assert_eq!(read_at(&cb, h2, 6, 100), b"");
        // SAFETY: own context and handles; drop_ctx last.
        unsafe {
            (cb.close)(cb.ctx, h, std::ptr::null_mut());
            (cb.close)(cb.ctx, h2, std::ptr::null_mut());
            (cb.drop_ctx)(cb.ctx);
        }
    }

    #[test]
    fn lock_is_exclusive_within_the_process() {
        let (fs, cb) = ctx(Mode::Rw);
        let mut err = [0u8; ERR_CAP];
        let e = err.as_mut_ptr().cast::<c_char>();
        let p = "/d/LOCK";
        // SAFETY: the table's own context; pointers valid for each call.
        unsafe {
            assert_eq!((cb.lock)(cb.ctx, p.as_ptr().cast(), p.len(), e), OK);
            assert!(fs.stat("/d/LOCK").is_ok(), "LOCK file created");
            assert_eq!((cb.lock)(cb.ctx, p.as_ptr().cast(), p.len(), e), IO_ERROR);
            assert!(msg(&err).contains("held by this process"), "{}", msg(&err));
            assert_eq!((cb.unlock)(cb.ctx, p.as_ptr().cast(), p.len(), e), OK);
            assert_eq!((cb.lock)(cb.ctx, p.as_ptr().cast(), p.len(), e), OK);
            (cb.drop_ctx)(cb.ctx);
        }
    }
}
