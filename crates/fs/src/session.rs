//! The fs on a real cluster: a mount that holds a lease at ctrl.
//!
//! # API (stable; FUSE and the `pikafs fs` tools build on it)
//!
//! ```text
//! let opts = MountOptions::new("http://127.0.0.1:7000", "vol0", Mode::Ro);
//! let m = Mounted::open(opts, runtime_handle)?;  // blocking
//! let fs: &Fs = m.fs();                           // the whole fs API
//! let rx = m.subscribe();                         // RO: Changes after each catch-up
//! m.growfs()?;                                    // RW, after `pikafs volume grow`
//! m.unmount()?;                                   // or drop: releases the lease
//! format(opts, &MkfsOptions::default(), force, rt)?; // mkfs under the RW lease
//! ```
//!
//! - [`MountOptions`]: ctrl endpoint, volume, [`Mode`], a free-text host
//!   label, the RW's notification listen address (default `127.0.0.1:0`)
//!   and the RO fallback catch-up interval (default 500 ms).
//! - [`Mounted::open`]: **RW**: binds the notification listener, takes the
//!   RW lease (`AcquireMount{rw}`; ctrl bumps the volume epoch before it
//!   answers), opens the volume with that epoch, fences every copyset, and
//!   mounts. A second RW fails with [`MountError::RwHeld`] carrying ctrl's
//!   message. **RO**: takes an RO lease, mounts, publishes its position at
//!   once and follows the writer.
//! - Background threads: a renewer (every lease/3) and, for RO, a
//!   follower. The RW renewer fences the fs ([`Fs::fence`]) when ctrl says
//!   the lease was lost, and feeds `min_ro_lsn` / `pinned_inodes` to
//!   [`Fs::release_orphans`]. The RO renewer publishes `fs.lsn()` then
//!   `fs.open_inodes()` (that order: a file opened after the lsn was read
//!   is still linked at a position >= it, so nothing it reads can be freed).
//! - RO read lease (see `crate::lease`): reads through an RO handle fail
//!   with [`FsError::LeaseLost`] unless the lease (counted from the send
//!   time of its last renewal, minus a margin) was valid for the whole
//!   read and has not lapsed since the handle was opened. A lapse (ctrl
//!   answers `ok = false`, or no renewal went out in time) kills every
//!   open handle, then the renewer takes a new lease and catches up
//!   before opens work again.
//! - Notification: the RW pushes every committed lsn (8 bytes,
//!   little-endian) to each TCP subscriber from the commit itself. An RO
//!   connects to the RW's `notify_addr` (learnt from ctrl, re-fetched on
//!   each renewal, reconnecting with backoff) and calls
//!   [`Fs::catch_up_changes`] on each push and on a fallback timer.
//! - [`Mounted::subscribe`] (RO): a channel of [`Changes`] (inodes and
//!   `(parent, name)` entries to forget, or `reloaded`) sent after every
//!   catch-up that applied something. Call [`Mounted::catch_up`] rather
//!   than `fs().catch_up()` so subscribers see what you applied.
//! - Thread model: everything here blocks. Call it from plain threads or
//!   from a multi-threaded runtime's workers (via `block_in_place`), never
//!   from a current-thread runtime. `rt` is the runtime that carries the
//!   volume client's connections and the ctrl gRPC channel; it must
//!   outlive the `Mounted`.
//!
//! Safety of orphan release: the RW frees at `min(min_ro_lsn, lsn it had
//! committed when it sent the renewal)`, because ctrl's answer may predate
//! an RO that mounted since: such an RO read the fs after the request was
//! sent, so it cannot see files unlinked before it.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{AcquireMountRequest, ReleaseMountRequest, RenewMountRequest};
use pikafs_volume::{OpenOptions, VolumeClient};
use tokio::runtime::Handle;
use tonic::transport::{Channel, Endpoint};

use crate::device::{run_blocking, BlockDevice, VolumeDevice};
use crate::error::FsError;
use crate::fs::{Changes, Fs, Mode};
use crate::metrics::Metrics;
use crate::record::Lsn;
use crate::superblock::{MkfsOptions, Superblock, SECTOR};

/// Default fallback interval of an RO mount's catch-up when no push
/// arrives (the writer is idle, or its notifier is unreachable).
pub const DEFAULT_CATCH_UP_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one ctrl call.
const CTRL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on dialling the RW's notifier.
const NOTIFY_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Backoff bounds for reconnecting to the RW's notifier.
const NOTIFY_BACKOFF_MIN: Duration = Duration::from_millis(20);
const NOTIFY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How to mount a volume through ctrl.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// ctrl gRPC endpoint (`http://host:port` or `host:port`).
    pub ctrl: String,
    pub volume: String,
    pub mode: Mode,
    /// Free text shown by `ListMounts` (default `hostname pid N`).
    pub host: String,
    /// RW: where RO mounts subscribe for commit notifications. Port 0
    /// picks a free port; use a reachable address for RO mounts on other
    /// hosts.
    pub notify_listen: SocketAddr,
    /// RO: catch up at least this often even without a push.
    pub catch_up_interval: Duration,
    /// How long one volume IO is retried before it fails.
    pub io_retry_deadline: Duration,
}

impl MountOptions {
    /// Options with defaults: notification on `127.0.0.1:0`, 500 ms
    /// fallback catch-up, a host label from the host name and pid.
    pub fn new(ctrl: &str, volume: &str, mode: Mode) -> MountOptions {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        MountOptions {
            ctrl: ctrl.to_string(),
            volume: volume.to_string(),
            mode,
            host: format!("{hostname} pid {}", std::process::id()),
            notify_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            catch_up_interval: DEFAULT_CATCH_UP_INTERVAL,
            io_retry_deadline: OpenOptions::default().retry_deadline,
        }
    }
}

/// Why a mount (or format) failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Another RW mount holds the lease; `message` is ctrl's (it names the
    /// holder and how long its lease has left).
    #[error("volume {volume}: {message}")]
    RwHeld { volume: String, message: String },
    #[error("volume {volume:?} not found")]
    VolumeNotFound { volume: String },
    /// ctrl is unreachable or refused the call.
    #[error("ctrl {op} for volume {volume}: {message}")]
    Ctrl {
        op: &'static str,
        volume: String,
        message: String,
    },
    /// Opening or fencing the volume failed.
    #[error("volume {volume}: {message}")]
    Volume { volume: String, message: String },
    /// The volume holds no pikafs file system (run `pikafs fs mkfs`).
    #[error("volume {volume} is not formatted (run `pikafs fs mkfs {volume}`)")]
    NotFormatted { volume: String },
    /// `format` without `force` on a formatted volume.
    #[error("volume {volume} already holds a file system (use --force to format it anew)")]
    AlreadyFormatted { volume: String },
    #[error("notification listener on {addr}: {source}")]
    Notify {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// State shared with the background threads.
struct Shared {
    volume: String,
    mode: Mode,
    host: String,
    ctrl: CtrlClient<Channel>,
    rt: Handle,
    mount_id: AtomicU64,
    lease: Mutex<Duration>,
    /// RW: ours. RO: the RW's, from ctrl ("" when none).
    notify_addr: Mutex<String>,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_cv: Condvar,
    lease_lost: AtomicBool,
    subscribers: Mutex<Vec<mpsc::Sender<Changes>>>,
    /// RW: the notification subscribers.
    pushees: Mutex<Vec<TcpStream>>,
    /// RO: the live connection to the notifier (shut down to stop).
    follow_stream: Mutex<Option<TcpStream>>,
    /// Test hook: the renewer skips its ticks while set.
    renew_paused: AtomicBool,
}

impl Shared {
    /// Sleeps up to `d`; returns true when asked to stop.
    fn sleep(&self, d: Duration) -> bool {
        let mut g = self.stop_lock.lock();
        if !self.stop.load(Ordering::SeqCst) {
            self.stop_cv.wait_for(&mut g, d);
        }
        self.stop.load(Ordering::SeqCst)
    }

    fn ctrl_error(&self, op: &'static str, s: tonic::Status) -> MountError {
        ctrl_error(&self.volume, op, s)
    }

    fn broadcast(&self, ch: &Changes) {
        self.subscribers
            .lock()
            .retain(|tx| tx.send(ch.clone()).is_ok());
    }
}

fn ctrl_error(volume: &str, op: &'static str, s: tonic::Status) -> MountError {
    match s.code() {
        tonic::Code::FailedPrecondition => MountError::RwHeld {
            volume: volume.to_string(),
            message: s.message().to_string(),
        },
        tonic::Code::NotFound => MountError::VolumeNotFound {
            volume: volume.to_string(),
        },
        code => MountError::Ctrl {
            op,
            volume: volume.to_string(),
            message: format!("{code}: {}", s.message()),
        },
    }
}

fn ctrl_client(opts: &MountOptions, rt: &Handle) -> Result<CtrlClient<Channel>, MountError> {
    let url = if opts.ctrl.contains("://") {
        opts.ctrl.clone()
    } else {
        format!("http://{}", opts.ctrl)
    };
    let _enter = rt.enter();
    let channel = Endpoint::from_shared(url)
        .map_err(|e| MountError::Ctrl {
            op: "connect",
            volume: opts.volume.clone(),
            message: format!("bad endpoint {:?}: {e}", opts.ctrl),
        })?
        .connect_timeout(Duration::from_secs(2))
        .timeout(CTRL_TIMEOUT)
        .connect_lazy();
    Ok(CtrlClient::new(channel))
}

/// The grant of a mount lease.
struct Grant {
    mount_id: u64,
    epoch: u64,
    lease: Duration,
    rw_notify_addr: String,
}

fn acquire(
    ctrl: &CtrlClient<Channel>,
    rt: &Handle,
    volume: &str,
    rw: bool,
    host: &str,
    notify_addr: &str,
) -> Result<Grant, MountError> {
    let mut c = ctrl.clone();
    let req = AcquireMountRequest {
        volume: volume.to_string(),
        rw,
        host: host.to_string(),
        notify_addr: notify_addr.to_string(),
    };
    let r = run_blocking(rt, async move { c.acquire_mount(req).await })
        .map_err(|s| ctrl_error(volume, "acquire mount", s))?
        .into_inner();
    Ok(Grant {
        mount_id: r.mount_id,
        epoch: r.epoch,
        lease: Duration::from_millis(r.lease_ms.max(300)),
        rw_notify_addr: r.rw_notify_addr,
    })
}

fn release(
    ctrl: &CtrlClient<Channel>,
    rt: &Handle,
    volume: &str,
    id: u64,
) -> Result<(), MountError> {
    let mut c = ctrl.clone();
    let req = ReleaseMountRequest {
        volume: volume.to_string(),
        mount_id: id,
    };
    run_blocking(rt, async move { c.release_mount(req).await })
        .map(|_| ())
        .map_err(|s| ctrl_error(volume, "release mount", s))
}

/// Opens the volume client; RW writes with `epoch` and fences first.
fn open_device(
    opts: &MountOptions,
    rt: &Handle,
    epoch: Option<u64>,
) -> Result<Arc<VolumeDevice>, MountError> {
    let vopts = OpenOptions {
        epoch,
        retry_deadline: opts.io_retry_deadline,
        ..OpenOptions::default()
    };
    let vol_err = |e: pikafs_volume::VolumeError| MountError::Volume {
        volume: opts.volume.clone(),
        message: e.to_string(),
    };
    let client = run_blocking(rt, VolumeClient::open(&opts.ctrl, &opts.volume, vopts)).map_err(
        |e| match e {
            pikafs_volume::VolumeError::NotFound { .. } => MountError::VolumeNotFound {
                volume: opts.volume.clone(),
            },
            e => vol_err(e),
        },
    )?;
    if epoch.is_some() {
        run_blocking(rt, client.fence()).map_err(vol_err)?;
    }
    Ok(Arc::new(VolumeDevice::new(client, rt.clone())))
}

/// True when the device starts with a valid pikafs superblock.
fn formatted(dev: &dyn BlockDevice) -> Result<bool, MountError> {
    let b = dev.read_at(0, SECTOR as usize).map_err(FsError::from)?;
    Ok(Superblock::decode(&b).is_ok())
}

/// Formats `opts.volume` under the RW lease (which fences any writer) and
/// releases the lease. Refuses a formatted volume unless `force`.
///
/// # Errors
/// [`MountError::AlreadyFormatted`], [`MountError::RwHeld`] while a RW
/// mount is live, ctrl, volume and fs errors.
pub fn format(
    opts: &MountOptions,
    mkfs: &MkfsOptions,
    force: bool,
    rt: &Handle,
) -> Result<Superblock, MountError> {
    let ctrl = ctrl_client(opts, rt)?;
    let g = acquire(&ctrl, rt, &opts.volume, true, &opts.host, "")?;
    let result = (|| {
        let dev = open_device(opts, rt, Some(g.epoch))?;
        if !force && formatted(&*dev)? {
            return Err(MountError::AlreadyFormatted {
                volume: opts.volume.clone(),
            });
        }
        Ok(crate::fs::mkfs(&*dev, mkfs)?)
    })();
    if let Err(e) = release(&ctrl, rt, &opts.volume, g.mount_id) {
        tracing::warn!(error = %e, "releasing the mount lease after mkfs failed");
    }
    result
}

/// A file system mounted through ctrl, with its lease and background
/// threads. Dropping it unmounts (best effort); [`Mounted::unmount`]
/// reports errors.
pub struct Mounted {
    fs: Fs,
    dev: Arc<VolumeDevice>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// RW: the notifier's bound address (to wake its accept loop).
    listen_addr: Option<SocketAddr>,
    done: bool,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("volume", &self.shared.volume)
            .field("mode", &self.shared.mode)
            .field("mount_id", &self.mount_id())
            .finish()
    }
}

impl Mounted {
    /// Takes a lease at ctrl and mounts (see the module docs). Blocks.
    ///
    /// # Errors
    /// [`MountError::RwHeld`] when another RW mount holds the lease,
    /// [`MountError::NotFormatted`], [`MountError::VolumeNotFound`],
    /// ctrl, volume and fs errors. On error no lease is left behind.
    pub fn open(opts: MountOptions, rt: Handle) -> Result<Mounted, MountError> {
        let ctrl = ctrl_client(&opts, &rt)?;
        let rw = opts.mode == Mode::Rw;
        let listener = if rw {
            let l = TcpListener::bind(opts.notify_listen).map_err(|source| MountError::Notify {
                addr: opts.notify_listen,
                source,
            })?;
            Some(l)
        } else {
            None
        };
        let listen_addr = match &listener {
            Some(l) => Some(l.local_addr().map_err(|source| MountError::Notify {
                addr: opts.notify_listen,
                source,
            })?),
            None => None,
        };
        let notify = listen_addr.map(|a| a.to_string()).unwrap_or_default();
        // The RO read lease counts from the request's send time.
        let sent = Instant::now();
        let g = acquire(&ctrl, &rt, &opts.volume, rw, &opts.host, &notify)?;
        let mounted = (|| {
            let dev = open_device(&opts, &rt, rw.then_some(g.epoch))?;
            if !formatted(&*dev)? {
                return Err(MountError::NotFormatted {
                    volume: opts.volume.clone(),
                });
            }
            let fs = Fs::mount(dev.clone() as Arc<dyn BlockDevice>, opts.mode)?;
            if !rw {
                // Mounted (metadata read) after the grant: reads trusted
                // until the lease may have run out.
                fs.inner.lease.enforce(sent, g.lease);
            }
            Ok((dev, fs))
        })();
        let (dev, fs) = match mounted {
            Ok(v) => v,
            Err(e) => {
                if let Err(re) = release(&ctrl, &rt, &opts.volume, g.mount_id) {
                    tracing::warn!(error = %re, "releasing the mount lease after a failed mount");
                }
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            volume: opts.volume.clone(),
            mode: opts.mode,
            host: opts.host.clone(),
            ctrl,
            rt,
            mount_id: AtomicU64::new(g.mount_id),
            lease: Mutex::new(g.lease),
            notify_addr: Mutex::new(if rw { notify } else { g.rw_notify_addr }),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_cv: Condvar::new(),
            lease_lost: AtomicBool::new(false),
            subscribers: Mutex::new(Vec::new()),
            pushees: Mutex::new(Vec::new()),
            follow_stream: Mutex::new(None),
            renew_paused: AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        if let Some(listener) = listener {
            let hook_shared = shared.clone();
            let metrics = fs.metrics().clone();
            fs.set_commit_hook(Some(Arc::new(move |lsn| push(&hook_shared, &metrics, lsn))));
            let (s, f) = (shared.clone(), fs.clone());
            threads.push(spawn("pikafs-fs-notify", move || {
                accept_loop(&s, &f, listener)
            }));
        } else {
            // Publish our position now: until then ctrl pins everything.
            renew_once(&shared, &fs);
            let (s, f, iv) = (shared.clone(), fs.clone(), opts.catch_up_interval);
            threads.push(spawn("pikafs-fs-follow", move || follow_loop(&s, &f, iv)));
        }
        let (s, f) = (shared.clone(), fs.clone());
        threads.push(spawn("pikafs-fs-lease", move || renew_loop(&s, &f)));
        tracing::debug!(
            volume = %opts.volume,
            mode = ?opts.mode,
            mount_id = g.mount_id,
            epoch = g.epoch,
            notify = %shared.notify_addr.lock(),
            "mounted through ctrl"
        );
        Ok(Mounted {
            fs,
            dev,
            shared,
            threads,
            listen_addr,
            done: false,
        })
    }

    /// The file system.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    /// The volume device under the fs (for `fsck`, sizes, the epoch).
    pub fn device(&self) -> &Arc<VolumeDevice> {
        &self.dev
    }

    /// The lease id ctrl gave this mount (an RO mount that lost its lease
    /// and took a new one reports the new id).
    pub fn mount_id(&self) -> u64 {
        self.shared.mount_id.load(Ordering::SeqCst)
    }

    /// RW: the epoch this mount writes with.
    pub fn epoch(&self) -> u64 {
        self.dev.client().epoch()
    }

    /// RW: our notification address. RO: the writer's, as last learnt
    /// from ctrl ("" when there is no writer).
    pub fn notify_addr(&self) -> String {
        self.shared.notify_addr.lock().clone()
    }

    /// True when ctrl answered that this mount's lease had lapsed (a RW is
    /// then fenced and refuses writes).
    pub fn lease_lost(&self) -> bool {
        self.shared.lease_lost.load(Ordering::SeqCst)
    }

    /// RO: true while no mount lease is known valid, so reads and opens
    /// fail with [`FsError::LeaseLost`] (until the renewer takes a new
    /// lease and catches up). Always false on a RW mount.
    pub fn read_lease_lapsed(&self) -> bool {
        self.fs.inner.lease.lapsed()
    }

    /// Test hook: stops (or resumes) the background lease renewals, to
    /// simulate a stalled mount whose lease lapses at ctrl.
    #[doc(hidden)]
    pub fn pause_renewals(&self, paused: bool) {
        self.shared.renew_paused.store(paused, Ordering::SeqCst);
    }

    /// RO: a channel of what each catch-up applied (empty catch-ups are
    /// not sent). Any number of subscribers; a dropped receiver is
    /// forgotten. On a RW mount nothing is ever sent.
    pub fn subscribe(&self) -> mpsc::Receiver<Changes> {
        let (tx, rx) = mpsc::channel();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// RO: catches up now and tells subscribers; RW: no-op. Returns what
    /// was applied.
    ///
    /// # Errors
    /// As [`Fs::catch_up_changes`].
    pub fn catch_up(&self) -> Result<Changes, FsError> {
        catch_up(&self.shared, &self.fs)
    }

    /// RW: asks ctrl now (instead of at the next renewal) what the RO
    /// mounts still pin and frees every orphan and pending block they do
    /// not; for a writer that hit [`FsError::NoSpace`] while it has
    /// recently deleted files. Returns false if the lease was lost.
    pub fn reclaim(&self) -> bool {
        renew_once(&self.shared, &self.fs)
    }

    /// RW: extends the fs to the volume's current size (after `pikafs
    /// volume grow`); returns the new data bytes.
    ///
    /// # Errors
    /// As [`Fs::growfs`].
    pub fn growfs(&self) -> Result<u64, FsError> {
        self.fs.growfs()
    }

    /// Stops the background threads, unmounts (a RW frees the orphans no
    /// RO pins, commits and writes a checkpoint, unless it was fenced) and
    /// releases the lease.
    ///
    /// # Errors
    /// The final commit's error (the lease is released anyway), or ctrl's
    /// on release.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), MountError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        {
            let _g = self.shared.stop_lock.lock();
            self.shared.stop.store(true, Ordering::SeqCst);
            self.shared.stop_cv.notify_all();
        }
        if let Some(s) = self.shared.follow_stream.lock().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(addr) = self.listen_addr {
            // Wakes the accept loop, which then sees `stop`.
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.fs.set_commit_hook(None);
        self.shared.pushees.lock().clear();
        if self.shared.mode == Mode::Rw && !self.fs.is_read_only() && !self.lease_lost() {
            // Free what no RO pins before leaving, so short-lived writers
            // (the tools) do not leave orphans for the next one.
            renew_once(&self.shared, &self.fs);
        }
        let unmounted = if self.fs.is_read_only() {
            Ok(())
        } else {
            self.fs.clone().unmount()
        };
        let released = if self.lease_lost() {
            Ok(())
        } else {
            release(
                &self.shared.ctrl,
                &self.shared.rt,
                &self.shared.volume,
                self.mount_id(),
            )
        };
        tracing::debug!(volume = %self.shared.volume, mode = ?self.shared.mode, "unmounted");
        unmounted?;
        released
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "unmount at drop failed");
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("spawning a mount thread")
}

/// RW commit hook: pushes `lsn` to every subscriber. Non-blocking: a
/// subscriber whose socket buffer is full (it stopped reading) or that
/// hung up is dropped; it reconnects and catches up on its timer.
fn push(shared: &Shared, metrics: &Metrics, lsn: Lsn) {
    let bytes = lsn.to_le_bytes();
    let mut pushees = shared.pushees.lock();
    pushees.retain_mut(|s| matches!(s.write(&bytes), Ok(8)));
    metrics.notify_pushes_total.inc_by(pushees.len() as u64);
    metrics.notify_subscribers.set(pushees.len() as i64);
}

fn accept_loop(shared: &Shared, fs: &Fs, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "notify accept failed");
                if shared.sleep(Duration::from_millis(50)) {
                    return;
                }
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        if s.set_nonblocking(true).is_err() {
            continue;
        }
        tracing::debug!(peer = ?s.peer_addr().ok(), "notify subscriber connected");
        // The current position first (read before taking `pushees`: the
        // commit hook holds the journal lock while it takes `pushees`).
        // The subscriber catches up on its first message whatever it
        // says, so a commit between here and the push below is not lost.
        let lsn = fs.lsn();
        let mut s = s;
        let mut pushees = shared.pushees.lock();
        if matches!(s.write(&lsn.to_le_bytes()), Ok(8)) {
            pushees.push(s);
        }
        fs.metrics().notify_subscribers.set(pushees.len() as i64);
    }
}

fn catch_up(shared: &Shared, fs: &Fs) -> Result<Changes, FsError> {
    let ch = fs.catch_up_changes()?;
    if !ch.is_empty() {
        shared.broadcast(&ch);
    }
    Ok(ch)
}

/// RO: waits for pushes from the writer (or the fallback interval) and
/// catches up.
fn follow_loop(shared: &Shared, fs: &Fs, interval: Duration) {
    let mut stream: Option<(String, TcpStream)> = None;
    let mut backoff = NOTIFY_BACKOFF_MIN;
    let mut next_dial = Instant::now();
    let mut buf = [0u8; 4096];
    let mut partial: Vec<u8> = Vec::new();
    let mut last_catch_up = Instant::now();
    // The first push on a new connection always triggers a catch-up.
    let mut fresh = false;
    while !shared.stop.load(Ordering::SeqCst) {
        let want = shared.notify_addr.lock().clone();
        if stream.as_ref().is_some_and(|(a, _)| *a != want) {
            stream = None;
        }
        if stream.is_none() && !want.is_empty() && Instant::now() >= next_dial {
            match dial(&want, interval) {
                Ok(s) => {
                    if let Ok(c) = s.try_clone() {
                        *shared.follow_stream.lock() = Some(c);
                    }
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    tracing::debug!(addr = %want, "following the writer's notifications");
                    stream = Some((want.clone(), s));
                    fresh = true;
                    partial.clear();
                    backoff = NOTIFY_BACKOFF_MIN;
                }
                Err(e) => {
                    tracing::debug!(addr = %want, error = %e, "notifier unreachable; retrying");
                    next_dial = Instant::now() + backoff;
                    backoff = (backoff * 2).min(NOTIFY_BACKOFF_MAX);
                }
            }
        }
        let mut pushed: Option<Lsn> = None;
        match stream.as_mut() {
            Some((_, s)) => match s.read(&mut buf) {
                Ok(0) => {
                    tracing::debug!("writer's notifier hung up");
                    stream = None;
                    next_dial = Instant::now() + backoff;
                }
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    let whole = partial.len() / 8 * 8;
                    if whole > 0 {
                        let last = &partial[whole - 8..whole];
                        pushed = Some(Lsn::from_le_bytes(
                            last.try_into().expect("an 8-byte slice"),
                        ));
                        partial.drain(..whole);
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "notify connection failed");
                    stream = None;
                    next_dial = Instant::now() + backoff;
                }
            },
            None => {
                let wait = if want.is_empty() {
                    interval
                } else {
                    next_dial
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(5), interval)
                };
                if shared.sleep(wait) {
                    return;
                }
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let due = last_catch_up.elapsed() >= interval;
        let news = pushed.is_some_and(|l| fresh || l > fs.lsn());
        if pushed.is_some() {
            fresh = false;
        }
        if news || due {
            last_catch_up = Instant::now();
            if news {
                fs.metrics().ro_notified_catch_ups_total.inc();
            } else {
                fs.metrics().ro_timer_catch_ups_total.inc();
            }
            if let Err(e) = catch_up(shared, fs) {
                tracing::warn!(error = %e, "RO catch-up failed; will retry");
            }
        }
    }
}

fn dial(addr: &str, interval: Duration) -> std::io::Result<TcpStream> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let s = TcpStream::connect_timeout(&sa, NOTIFY_CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(interval))?;
    Ok(s)
}

/// RO, after a lapse and a new (or renewed) lease requested at `sent`:
/// catches up so that nothing the RW freed in the gap stays visible, then
/// allows opens again. On a failed catch-up opens stay refused; the next
/// renewal finds the lease lapsed and tries again.
fn regrant(shared: &Shared, fs: &Fs, sent: Instant, lease: Duration) {
    match catch_up(shared, fs) {
        Ok(_) => fs.inner.lease.grant(sent, lease),
        Err(e) => tracing::warn!(error = %e, "RO catch-up after a lease lapse failed; will retry"),
    }
}

fn renew_loop(shared: &Shared, fs: &Fs) {
    loop {
        let every = *shared.lease.lock() / 3;
        if shared.sleep(every) {
            return;
        }
        if shared.renew_paused.load(Ordering::SeqCst) {
            continue;
        }
        if !renew_once(shared, fs) {
            return;
        }
    }
}

/// One renewal; false when the RW lost its lease (stop renewing).
fn renew_once(shared: &Shared, fs: &Fs) -> bool {
    // The RO read lease counts from here (see `crate::lease`).
    let sent = Instant::now();
    // lsn before open inodes: see the module docs.
    let lsn = fs.lsn();
    let open = if shared.mode == Mode::Ro {
        fs.open_inodes()
    } else {
        Vec::new()
    };
    let req = RenewMountRequest {
        volume: shared.volume.clone(),
        mount_id: shared.mount_id.load(Ordering::SeqCst),
        replay_lsn: lsn,
        open_inodes: open,
    };
    let mut c = shared.ctrl.clone();
    let resp = match run_blocking(&shared.rt, async move { c.renew_mount(req).await }) {
        Ok(r) => r.into_inner(),
        Err(s) => {
            fs.metrics().lease_renew_failures_total.inc();
            // ctrl is off the IO path: keep going, the epoch protects us.
            tracing::warn!(error = %shared.ctrl_error("renew mount", s), "mount lease renewal failed; retrying");
            return true;
        }
    };
    if !resp.ok {
        fs.metrics().lease_renew_failures_total.inc();
        if shared.mode == Mode::Rw {
            shared.lease_lost.store(true, Ordering::SeqCst);
            fs.fence(&format!(
                "the RW mount lease of volume {} lapsed at ctrl; a newer writer may hold it",
                shared.volume
            ));
            tracing::warn!(volume = %shared.volume, "RW mount lease lost; refusing writes");
            return false;
        }
        // An RO lease lapsed (we were too slow, or ctrl restarted): the RW
        // may have reused blocks of our open files, so every handle opened
        // so far is dead. Take a new lease, reload, then allow opens.
        let generation = fs.inner.lease.lapse();
        fs.metrics().ro_lease_lapses_total.inc();
        tracing::warn!(volume = %shared.volume, generation, "RO mount lease lapsed; open files invalidated, taking a new one");
        let sent = Instant::now();
        match acquire(
            &shared.ctrl,
            &shared.rt,
            &shared.volume,
            false,
            &shared.host,
            "",
        ) {
            Ok(g) => {
                shared.mount_id.store(g.mount_id, Ordering::SeqCst);
                *shared.lease.lock() = g.lease;
                *shared.notify_addr.lock() = g.rw_notify_addr;
                // Published at the next tick; until then ctrl pins all.
                regrant(shared, fs, sent, g.lease);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-acquiring the RO mount lease failed");
                return true;
            }
        }
    }
    if resp.lease_ms > 0 {
        *shared.lease.lock() = Duration::from_millis(resp.lease_ms.max(300));
    }
    if shared.mode == Mode::Ro {
        *shared.notify_addr.lock() = resp.rw_notify_addr;
        let lease = *shared.lease.lock();
        if !fs.inner.lease.extend(sent, lease) {
            // No renewal was sent before our lease ran out: ctrl may have
            // stopped counting us in between, whatever it answers now.
            let generation = fs.inner.lease.lapse();
            fs.metrics().ro_lease_lapses_total.inc();
            tracing::warn!(volume = %shared.volume, generation, "RO mount lease ran out before it was renewed; open files invalidated");
            regrant(shared, fs, sent, lease);
        }
        return true;
    }
    let pinned: HashSet<u64> = resp.pinned_inodes.into_iter().collect();
    match fs.release_orphans(resp.min_ro_lsn.min(lsn), &pinned) {
        Ok(st) if st.orphans_freed + st.blocks_freed > 0 => {
            tracing::debug!(
                orphans = st.orphans_freed,
                blocks = st.blocks_freed,
                "released orphan space"
            );
        }
        Ok(_) => {}
        Err(e @ (FsError::Fenced { .. } | FsError::ReadOnly { .. })) => {
            tracing::debug!(error = %e, "no orphan release on a read-only mount");
        }
        Err(e) => tracing::warn!(error = %e, "releasing orphans failed"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;
    use crate::fs::OpenFlags;

    fn shared(mode: Mode, rt: &tokio::runtime::Runtime, notify: String) -> Arc<Shared> {
        let opts = MountOptions::new("127.0.0.1:1", "t", mode);
        Arc::new(Shared {
            volume: "t".into(),
            mode,
            host: "test".into(),
            ctrl: ctrl_client(&opts, rt.handle()).unwrap(),
            rt: rt.handle().clone(),
            mount_id: AtomicU64::new(1),
            lease: Mutex::new(Duration::from_secs(3600)),
            notify_addr: Mutex::new(notify),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_cv: Condvar::new(),
            lease_lost: AtomicBool::new(false),
            subscribers: Mutex::new(Vec::new()),
            pushees: Mutex::new(Vec::new()),
            follow_stream: Mutex::new(None),
            renew_paused: AtomicBool::new(false),
        })
    }

    /// The RW's commit hook wakes an RO follower through TCP long before
    /// its fallback timer (an hour here), and subscribers get the changes.
    #[test]
    fn notification_wakes_the_follower() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dev = Arc::new(CrashDevice::new(32 << 20));
        crate::fs::mkfs(
            &*dev,
            &MkfsOptions {
                block_size: Some(64 << 10),
                journal_size: Some(256 << 10),
                checkpoint_size: Some(256 << 10),
            },
        )
        .unwrap();
        let rw = Fs::mount(dev.clone(), Mode::Rw).unwrap();
        let ro = Fs::mount(dev, Mode::Ro).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rw_sh = shared(Mode::Rw, &rt, addr.to_string());
        let ro_sh = shared(Mode::Ro, &rt, addr.to_string());
        let (s, m) = (rw_sh.clone(), rw.metrics().clone());
        rw.set_commit_hook(Some(Arc::new(move |lsn| push(&s, &m, lsn))));
        let (s, f) = (rw_sh.clone(), rw.clone());
        let acceptor = std::thread::spawn(move || accept_loop(&s, &f, listener));
        let (s, f) = (ro_sh.clone(), ro.clone());
        let follower = std::thread::spawn(move || follow_loop(&s, &f, Duration::from_secs(3600)));
        let (tx, rx) = mpsc::channel();
        ro_sh.subscribers.lock().push(tx);

        let deadline = Instant::now() + Duration::from_secs(10);
        while rw.metrics().notify_subscribers.get() < 1 {
            assert!(Instant::now() < deadline, "follower never subscribed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let file = rw.open("/wal", OpenFlags::create()).unwrap();
        for i in 0..20u64 {
            file.append(&[i as u8; 4096]).unwrap();
            file.fsync().unwrap();
            let t = Instant::now();
            while ro.stat("/wal").map(|s| s.size).unwrap_or(0) < (i + 1) * 4096 {
                assert!(t.elapsed() < Duration::from_secs(5), "append {i} not seen");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert!(ro.metrics().ro_notified_catch_ups_total.get() > 0);
        assert_eq!(ro.metrics().ro_timer_catch_ups_total.get(), 0);
        let ino = rw.stat("/wal").unwrap().ino;
        let mut seen = Vec::new();
        while let Ok(ch) = rx.try_recv() {
            seen.extend(ch.inodes);
        }
        assert!(seen.contains(&ino), "subscribers got the changed inode");

        for sh in [&rw_sh, &ro_sh] {
            let _g = sh.stop_lock.lock();
            sh.stop.store(true, Ordering::SeqCst);
            sh.stop_cv.notify_all();
        }
        if let Some(s) = ro_sh.follow_stream.lock().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let _ = TcpStream::connect(addr);
        acceptor.join().unwrap();
        follower.join().unwrap();
    }
}
