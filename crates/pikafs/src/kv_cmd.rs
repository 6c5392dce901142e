//! `pikafs kv`: run a Redis-compatible kv node (RocksDB primary or
//! secondary) until SIGINT/SIGTERM, and `pikafs kv promote`. The server
//! lives in `pikafs_kv`; this maps flags to [`pikafs_kv::KvConfig`] and
//! mounts the volume. With `--volume` the node is run by
//! [`agent`], which holds a lease at ctrl and fails over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use pikafs_fs::{Mode, MountError, MountOptions, Mounted};
use pikafs_kv::{FsyncPolicy, KvConfig, Role};
use pikafs_rocksfs::PikaEnv;
use tokio_util::sync::CancellationToken;

use crate::units::{parse_duration, parse_size};

/// `pikafs kv <subcommand>`.
#[derive(Debug, clap::Subcommand)]
pub enum KvCmd {
    /// Planned switchover: the RW node of VOLUME steps down and NODE (or
    /// the most caught-up RO node) becomes the writer; waits until it has.
    Promote {
        #[arg(long)]
        volume: String,
        /// Node id (its RESP address, as `pikafs status` lists it).
        #[arg(long)]
        node: Option<String>,
    },
}

/// `--role`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// RocksDB primary: serves writes, runs compactions.
    Rw,
    /// RocksDB secondary: catches up with the primary, rejects writes.
    Ro,
}

/// `--appendfsync`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AppendFsync {
    /// A reply waits until its writes' WAL is synced (group commit).
    Always,
    /// Sync about once a second; replies do not wait (may lose ~1 s).
    Everysec,
    /// Never sync explicitly; replies do not wait.
    No,
}

/// Flags of `pikafs kv`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct KvArgs {
    #[command(subcommand)]
    pub(crate) cmd: Option<KvCmd>,
    /// rw = RocksDB primary, ro = read-only secondary of the same data.
    /// With --volume this is the starting role: ctrl may promote an RO
    /// node (see docs/failover.md).
    #[arg(long, value_enum, default_value = "rw")]
    pub(crate) role: RoleArg,
    /// RESP listen address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub(crate) listen: SocketAddr,
    /// RocksDB directory on the local file system (an RO node names the
    /// primary's directory).
    #[arg(long, required_unless_present = "volume", conflicts_with = "volume")]
    pub(crate) dir: Option<PathBuf>,
    /// Keep RocksDB on this pikafs volume (formatted with `pikafs fs
    /// mkfs`), mounted in-process: RW for the primary, RO for a secondary.
    #[arg(long)]
    pub(crate) volume: Option<String>,
    /// With --volume: a local directory for node-private files (the
    /// secondary's directory and the RocksDB path prefix, which stays
    /// empty on the local disk). Default: a temp dir.
    #[arg(long)]
    pub(crate) local_dir: Option<PathBuf>,
    /// With --volume, RW: how long to wait for an earlier writer's mount
    /// lease to lapse (a restart after a crash) before giving up.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub(crate) mount_wait: Duration,
    /// With --volume: the RocksDB directory inside the volume's fs.
    #[arg(long, default_value = "/kv")]
    pub(crate) fs_dir: String,
    /// RO only: private directory of the secondary (default: a temp dir).
    #[arg(long)]
    pub(crate) secondary_dir: Option<PathBuf>,
    /// One memory budget for block cache plus memtables.
    #[arg(long, value_parser = parse_size, default_value = "512MiB")]
    pub(crate) memory: u64,
    /// Require AUTH with this password.
    #[arg(long, env = "PIKAFS_KV_REQUIREPASS")]
    pub(crate) requirepass: Option<String>,
    /// When acknowledged writes are durable.
    #[arg(long, value_enum, default_value = "always")]
    pub(crate) appendfsync: AppendFsync,
    /// Under load, hold a WAL sync up to this long while more writers
    /// join, so one replicated sync carries more writes (default 1ms;
    /// 0 = off).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) group_commit_window: Option<Duration>,
    /// Gather only when at least this many writers wait for the sync
    /// (default 8).
    #[arg(long)]
    pub(crate) group_commit_min_waiters: Option<usize>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub(crate) metrics: Option<SocketAddr>,
    /// RO: how often to catch up with the primary when not notified.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    pub(crate) catch_up_interval: Duration,
    /// With --volume: the RESP address announced to ctrl (node id, and
    /// where proxies connect). Default: --listen.
    #[arg(long)]
    pub(crate) advertise: Option<String>,
    /// Refuse connections beyond this many clients.
    #[arg(long, default_value_t = pikafs_kv::config::DEFAULT_MAX_CLIENTS)]
    pub(crate) maxclients: usize,
}

pub async fn run(args: KvArgs, ctrl: &str) -> anyhow::Result<()> {
    if let Some(cmd) = &args.cmd {
        return match cmd {
            KvCmd::Promote { volume, node } => promote(ctrl, volume, node.as_deref()).await,
        };
    }
    if args.volume.is_some() {
        return agent::run(args, ctrl).await;
    }
    let role = args.role.role();
    let Some(dir) = args.dir.clone() else {
        anyhow::bail!("give --dir or --volume");
    };
    let cfg = args.kv_config(role, dir, args.secondary_dir.clone(), args.metrics)?;
    let server = pikafs_kv::KvServer::bind(cfg, None)
        .await
        .context("start kv server")?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = shutdown_signal().await {
            tracing::warn!(error = %format!("{e:#}"), "signal handling failed");
        }
        stop.cancel();
    });
    server.serve(shutdown).await.context("serve kv")?;
    Ok(())
}

/// `pikafs kv promote`: asks ctrl for a planned switchover and waits
/// (bounded) until the new writer reports RW.
async fn promote(ctrl: &str, volume: &str, node: Option<&str>) -> anyhow::Result<()> {
    use pikafs_proto::ctrlpb::{KvPromoteRequest, KvRole, VolumeName};
    let mut c = crate::cluster::connect(ctrl).await?;
    let before = c
        .kv_promote(KvPromoteRequest {
            volume: volume.to_string(),
            node_id: node.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|e| crate::cluster::status_err("kv promote", e))?
        .into_inner();
    let old = before
        .nodes
        .iter()
        .find(|n| n.role == KvRole::Rw as i32)
        .map(|n| n.node_id.clone());
    println!(
        "switchover requested: {} -> {}",
        old.as_deref().unwrap_or("(no writer)"),
        node.unwrap_or("(ctrl picks)")
    );
    let deadline = tokio::time::Instant::now() + PROMOTE_WAIT;
    loop {
        let t = c
            .kv_topology(VolumeName {
                name: volume.to_string(),
            })
            .await
            .map_err(|e| crate::cluster::status_err("kv topology", e))?
            .into_inner();
        let rw = t.nodes.iter().find(|n| n.role == KvRole::Rw as i32);
        if let Some(rw) = rw {
            let wanted = node.is_none_or(|n| n == rw.node_id);
            if wanted && Some(&rw.node_id) != old.as_ref() {
                println!("{} is the RW node now ({})", rw.node_id, rw.addr);
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "no new RW node after {PROMOTE_WAIT:?}; see `pikafs status` and the nodes' logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long `pikafs kv promote` waits for the new writer.
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

impl RoleArg {
    pub fn role(self) -> Role {
        match self {
            RoleArg::Rw => Role::Rw,
            RoleArg::Ro => Role::Ro,
        }
    }
}

impl KvArgs {
    /// The kv server's config for `role` on `dir` (flags mapped 1:1).
    pub(crate) fn kv_config(
        &self,
        role: Role,
        dir: PathBuf,
        secondary_dir: Option<PathBuf>,
        metrics: Option<SocketAddr>,
    ) -> anyhow::Result<KvConfig> {
        let mut cfg = KvConfig::new(self.listen, role, dir);
        if role == Role::Ro {
            cfg.secondary_dir = self.secondary_dir.clone().or(secondary_dir);
        }
        cfg.memory_bytes = usize::try_from(self.memory).context("--memory too large")?;
        cfg.requirepass = self.requirepass.clone();
        cfg.appendfsync = match self.appendfsync {
            AppendFsync::Always => FsyncPolicy::Always,
            AppendFsync::Everysec => FsyncPolicy::EverySec,
            AppendFsync::No => FsyncPolicy::No,
        };
        let d = cfg.group_commit;
        cfg.group_commit = pikafs_kv::wal::GroupCommit {
            window: self.group_commit_window.unwrap_or(d.window),
            min_waiters: self.group_commit_min_waiters.unwrap_or(d.min_waiters),
        };
        cfg.metrics = metrics;
        cfg.catch_up_interval = self.catch_up_interval;
        cfg.max_clients = self.maxclients;
        Ok(cfg)
    }
}

/// RocksDB's home on a pikafs volume: the in-process mount and the Env
/// that routes RocksDB's file operations to it.
pub(crate) struct OnVolume {
    pub(crate) mounted: Arc<Mounted>,
    pub(crate) env: PikaEnv,
    /// The RocksDB path (under the Env's prefix).
    pub(crate) db_dir: PathBuf,
    /// Node-private local directory.
    pub(crate) local: PathBuf,
}

/// Mounts `volume` (RW waits up to `--mount-wait` for an earlier
/// writer's mount lease) and builds the RocksDB Env over it. `incarnation`
/// numbers the Envs of one process (a promotion builds a second), since an
/// Env's prefix must be unique while it lives.
pub(crate) async fn open_volume(
    ctrl: &str,
    volume: &str,
    role: Role,
    args: &KvArgs,
    incarnation: u32,
) -> anyhow::Result<OnVolume> {
    let mode = match role {
        Role::Rw => Mode::Rw,
        Role::Ro => Mode::Ro,
    };
    let local = match &args.local_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "pikafs-kv-{volume}-{}-{}",
            args.listen.port(),
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&local).with_context(|| format!("create {}", local.display()))?;
    let deadline = tokio::time::Instant::now() + args.mount_wait;
    let mounted = loop {
        let opts = MountOptions::new(ctrl, volume, mode);
        let rt = tokio::runtime::Handle::current();
        match tokio::task::spawn_blocking(move || Mounted::open(opts, rt))
            .await
            .context("mount task")?
        {
            Ok(m) => break m,
            Err(MountError::RwHeld { message, .. }) if tokio::time::Instant::now() < deadline => {
                tracing::info!(volume, %message, "waiting for the previous writer's lease to lapse");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("mount volume {volume} ({mode:?})")),
        }
    };
    let mounted = Arc::new(mounted);
    if mode == Mode::Rw {
        let fs = mounted.clone();
        let fs_dir = args.fs_dir.clone();
        tokio::task::spawn_blocking(move || match fs.fs().mkdir(&fs_dir) {
            Ok(()) | Err(pikafs_fs::FsError::Exists { .. }) => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .context("mkdir task")?
        .with_context(|| format!("create {} on {volume}", args.fs_dir))?;
    }
    // The rocksdb crate creates every DB path on the local disk first, so
    // the prefix must be a local path we may create (it stays empty).
    let prefix = if incarnation == 0 {
        local.join("pikafs")
    } else {
        local.join(format!("pikafs-{incarnation}"))
    };
    let prefix = prefix
        .to_str()
        .context("the local directory is not UTF-8")?
        .to_string();
    let env = PikaEnv::new(mounted.clone(), &prefix).context("create the pikafs RocksDB Env")?;
    let db_dir = PathBuf::from(env.path(&args.fs_dir));
    tracing::info!(volume, ?mode, db = %db_dir.display(), "RocksDB on pikafs");
    Ok(OnVolume {
        mounted,
        env,
        db_dir,
        local,
    })
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

/// The kv node on a volume: a lease at ctrl, and the role changes ctrl
/// orders (see `docs/failover.md`).
///
/// One task heartbeats every lease/4, reporting the role, the RocksDB
/// sequence served, the catch-up lag and the fs mount id, and forwards
/// ctrl's orders to the node loop. The node loop opens the volume and
/// RocksDB in its current role and serves until an order, a signal or a
/// lost lease:
/// - `PROMOTE` (RO): report PROMOTING, stop serving (clients are
///   disconnected), close RocksDB, unmount RO, mount RW (ctrl has dropped
///   the dead writer's mount lease, so this does not wait), open the
///   primary (RocksDB replays the WAL on the volume), serve on the same
///   address, report RW;
/// - `STEP_DOWN` with `fenced`, a refused or lapsed kv lease, or an fs
///   mount whose lease was lost, while RW: the node may no longer be the
///   writer, so it exits at once ([`EXIT_STEPPED_DOWN`]) without touching
///   the volume again. Its writes would fail anyway (the epoch fence at the
///   chunkservers); exiting also stops reads of stale data. A supervisor
///   restarts it as RO;
/// - planned `STEP_DOWN` (not fenced): stop taking writes, let in-flight
///   replies finish (their WAL is synced), release the mount, say goodbye
///   to ctrl (which then promotes the target), and rejoin as an RO node on
///   the same address (exit [`EXIT_STEPPED_DOWN`] if closing failed).
mod agent {
    use std::sync::{Arc, Mutex, Weak};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use pikafs_fs::Mounted;
    use pikafs_kv::{Engine, KvServer, Role};
    use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
    use pikafs_proto::ctrlpb::{KvCommand, KvHeartbeatRequest, KvRole};
    use pikafs_proto::metrics_http::{serve_shared, SharedRegistry};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;
    use tonic::transport::Channel;
    use tracing::{error, info, warn};

    use super::{open_volume, shutdown_signal, KvArgs, OnVolume};

    /// Exit status of a node that stepped down or lost its lease as the
    /// writer; a supervisor restarts it with `--role ro`.
    pub const EXIT_STEPPED_DOWN: i32 = 3;
    /// Heartbeat period before ctrl has told us its lease.
    const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(500);
    /// How long a new writer waits for ctrl to confirm its seat.
    const CONFIRM_WAIT: Duration = Duration::from_secs(10);
    /// How often the node loop checks the fs mount's lease.
    const LEASE_POLL: Duration = Duration::from_millis(50);
    /// Bound on closing a role's server, RocksDB and mount.
    const CLOSE_WAIT: Duration = Duration::from_secs(15);

    /// What the heartbeat task reports; the node loop updates it.
    struct Report {
        role: KvRole,
        engine: Weak<Engine>,
        mounted: Weak<Mounted>,
        /// While a stepped-down writer closes and reopens as RO: no
        /// heartbeats (neither a stale RW one nor an RO one while it
        /// still holds the RW mount).
        paused: bool,
    }

    enum Event {
        /// ctrl answered ok with no order.
        Ack,
        Promote,
        StepDown {
            fenced: bool,
            message: String,
        },
        /// RW: no successful renewal for a whole lease, or ctrl refused it.
        LeaseLapsed(String),
    }

    #[derive(Clone)]
    struct Heartbeater {
        ctrl: String,
        volume: String,
        node_id: String,
        report: Arc<Mutex<Report>>,
        events: mpsc::UnboundedSender<Event>,
        /// Wakes the task for an immediate heartbeat.
        now: Arc<tokio::sync::Notify>,
    }

    fn lock(r: &Mutex<Report>) -> std::sync::MutexGuard<'_, Report> {
        r.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl Heartbeater {
        fn request(&self, leaving: bool) -> KvHeartbeatRequest {
            let r = lock(&self.report);
            let engine = r.engine.upgrade();
            let mount_id = r.mounted.upgrade().map_or(0, |m| m.mount_id());
            KvHeartbeatRequest {
                volume: self.volume.clone(),
                node_id: self.node_id.clone(),
                addr: self.node_id.clone(),
                role: r.role as i32,
                applied_seq: engine.as_ref().map_or(0, |e| e.applied_sequence()),
                lag_ms: engine
                    .as_ref()
                    .and_then(|e| e.catch_up_lag())
                    .map_or(0, |d| d.as_millis() as u64),
                mount_id,
                leaving,
            }
        }

        async fn run(self, stop: CancellationToken) {
            let mut client: Option<CtrlClient<Channel>> = None;
            let mut period = DEFAULT_HEARTBEAT;
            let mut lease = 4 * DEFAULT_HEARTBEAT;
            // Counted from the send time of the last renewal ctrl granted.
            let mut valid_until: Option<Instant> = None;
            let mut failures = 0u32;
            loop {
                let (role, paused) = {
                    let r = lock(&self.report);
                    (r.role, r.paused)
                };
                if paused {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.now.notified() => {}
                        _ = tokio::time::sleep(period) => {}
                    }
                    continue;
                }
                if role == KvRole::Rw {
                    if let Some(until) = valid_until {
                        if Instant::now() >= until {
                            let _ = self.events.send(Event::LeaseLapsed(format!(
                                "no renewal granted for {lease:?}"
                            )));
                        }
                    }
                }
                let req = self.request(false);
                let sent = Instant::now();
                let answer = async {
                    if client.is_none() {
                        client = Some(crate::cluster::connect(&self.ctrl).await?);
                    }
                    let c = client.as_mut().expect("connected above");
                    anyhow::Ok(c.kv_heartbeat(req).await?.into_inner())
                };
                match tokio::time::timeout(period.max(Duration::from_millis(200)), answer).await {
                    Ok(Ok(a)) => {
                        failures = 0;
                        if a.lease_ms > 0 {
                            lease = Duration::from_millis(a.lease_ms);
                            period = lease / 4;
                        }
                        if !a.ok {
                            warn!(message = %a.message, "ctrl refused the kv lease");
                            valid_until = None;
                            if role == KvRole::Rw {
                                let _ = self.events.send(Event::LeaseLapsed(a.message));
                            }
                        } else {
                            valid_until = Some(sent + lease);
                            let ev = match KvCommand::try_from(a.command) {
                                Ok(KvCommand::Promote) => Event::Promote,
                                Ok(KvCommand::StepDown) => Event::StepDown {
                                    fenced: a.fenced,
                                    message: a.message,
                                },
                                _ => Event::Ack,
                            };
                            let _ = self.events.send(ev);
                        }
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        client = None;
                        if failures == 1 || failures.is_multiple_of(20) {
                            warn!(error = %format!("{e:#}"), failures, "kv heartbeat failed");
                        }
                    }
                    Err(_) => {
                        failures += 1;
                        client = None;
                        if failures == 1 || failures.is_multiple_of(20) {
                            warn!(failures, "kv heartbeat timed out");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.now.notified() => {}
                    _ = tokio::time::sleep(period) => {}
                }
            }
        }

        /// A last heartbeat saying goodbye, so ctrl need not wait for the
        /// lease to lapse. Best effort.
        async fn goodbye(&self) {
            let req = self.request(true);
            let call = async {
                let mut c = crate::cluster::connect(&self.ctrl).await?;
                anyhow::Ok(c.kv_heartbeat(req).await?)
            };
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(Ok(_)) => info!("said goodbye to ctrl"),
                Ok(Err(e)) => warn!(error = %format!("{e:#}"), "goodbye to ctrl failed"),
                Err(_) => warn!("goodbye to ctrl timed out"),
            }
        }
    }

    /// One role's open server and the volume under it.
    struct Serving {
        role: Role,
        on_volume: OnVolume,
        engine: Weak<Engine>,
        cancel: CancellationToken,
        task: JoinHandle<Result<(), pikafs_kv::KvError>>,
    }

    /// Leaves the process at once: no destructors, no final writes (the
    /// volume may belong to another writer by now). Replies already sent
    /// were durable before they were sent.
    fn exit_now(why: &str) -> ! {
        error!(
            reason = why,
            "kv node is no longer the writer: exiting at once; restart it with --role ro"
        );
        eprintln!("pikafs kv: stepped down: {why}");
        // SAFETY: _exit ends the process without running atexit handlers
        // or C++ static destructors, which could race RocksDB's threads.
        unsafe { libc::_exit(super::agent::EXIT_STEPPED_DOWN) }
    }

    async fn open(
        args: &KvArgs,
        ctrl: &str,
        role: Role,
        incarnation: u32,
        metrics: Option<&SharedRegistry>,
    ) -> anyhow::Result<Serving> {
        let volume = args.volume.as_deref().context("--volume is required")?;
        let on_volume = open_volume(ctrl, volume, role, args, incarnation).await?;
        // The metrics port is bound once per process (`run`); each
        // incarnation's registry is swapped in behind it.
        let secondary = on_volume.local.join("secondary");
        let cfg = args.kv_config(role, on_volume.db_dir.clone(), Some(secondary), None)?;
        let server = bind_retry(cfg, &on_volume.env).await?;
        if let Some(m) = metrics {
            m.set(server.registry().clone());
        }
        if role == Role::Ro {
            // The fs journal's notifications (pushed by the RW mount on each
            // commit, applied by this RO mount) wake the secondary's catch-up.
            let changes = on_volume.mounted.subscribe();
            let trigger = server.engine().catch_up_trigger();
            std::thread::Builder::new()
                .name("kv-fs-notify".into())
                .spawn(move || {
                    for _ in changes {
                        trigger.notify_one();
                    }
                })
                .context("spawn the fs notification thread")?;
        }
        let engine = Arc::downgrade(server.engine());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        Ok(Serving {
            role,
            on_volume,
            engine,
            cancel,
            task,
        })
    }

    /// Binds the kv server; the previous role's listener on the same
    /// address may take a moment to go away.
    async fn bind_retry(
        cfg: pikafs_kv::KvConfig,
        env: &pikafs_rocksfs::PikaEnv,
    ) -> anyhow::Result<KvServer> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match KvServer::bind(cfg.clone(), Some(env.env().clone())).await {
                Ok(s) => return Ok(s),
                Err(pikafs_kv::KvError::Bind { addr, source })
                    if Instant::now() < deadline
                        && source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    warn!(%addr, "listen address still in use; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e).context("start kv server"),
            }
        }
    }

    /// Stops serving (in-flight batches finish their WAL sync), closes
    /// RocksDB and unmounts, which releases the mount lease. Only for a
    /// role that may still write: a fenced writer exits instead.
    async fn close(s: Serving) -> anyhow::Result<()> {
        s.cancel.cancel();
        match tokio::time::timeout(CLOSE_WAIT, s.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "kv server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "kv server task failed"),
            Err(_) => anyhow::bail!("kv server did not stop within {CLOSE_WAIT:?}"),
        }
        // The engine (RocksDB) closes when its last user is gone.
        let deadline = Instant::now() + CLOSE_WAIT;
        while s.engine.strong_count() > 0 {
            if Instant::now() > deadline {
                anyhow::bail!("RocksDB still in use {CLOSE_WAIT:?} after the server stopped");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let OnVolume { mounted, env, .. } = s.on_volume;
        drop(env);
        match Arc::try_unwrap(mounted) {
            Ok(m) => {
                let r = tokio::task::spawn_blocking(move || m.unmount())
                    .await
                    .context("unmount task")?;
                if let Err(e) = r {
                    warn!(error = %e, role = s.role.name(), "unmount failed");
                }
            }
            Err(m) => {
                // Someone still holds the fs (RocksDB's Env lingering): the
                // mount stays until the process exits; harmless for RO.
                warn!(
                    role = s.role.name(),
                    refs = Arc::strong_count(&m),
                    "the fs mount is still referenced; leaving it mounted"
                );
            }
        }
        Ok(())
    }

    pub async fn run(args: KvArgs, ctrl: &str) -> anyhow::Result<()> {
        let volume = args.volume.clone().context("--volume is required")?;
        let node_id = args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.to_string());
        let mut role = args.role.role();
        let report = Arc::new(Mutex::new(Report {
            role: KvRole::Unspecified,
            engine: Weak::new(),
            mounted: Weak::new(),
            paused: false,
        }));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hb = Arc::new(Heartbeater {
            ctrl: ctrl.to_string(),
            volume: volume.clone(),
            node_id: node_id.clone(),
            report: report.clone(),
            events: tx,
            now: Arc::new(tokio::sync::Notify::new()),
        });
        let stop_hb = CancellationToken::new();
        let signal = shutdown_signal();
        tokio::pin!(signal);
        let mut hb_task: Option<JoinHandle<()>> = None;
        let metrics = match args.metrics {
            Some(addr) => {
                let shared = SharedRegistry::new(Arc::default());
                serve_shared(addr, shared.clone())
                    .await
                    .with_context(|| format!("serve metrics on {addr}"))?;
                Some(shared)
            }
            None => None,
        };
        let mut incarnation = 0u32;
        loop {
            let t0 = Instant::now();
            let serving = tokio::select! {
                r = open(&args, ctrl, role, incarnation, metrics.as_ref()) => r?,
                r = &mut signal => {
                    r?;
                    info!("signal while opening: stopping");
                    return Ok(());
                }
            };
            incarnation += 1;
            {
                let mut r = lock(&report);
                r.role = match role {
                    Role::Rw => KvRole::Rw,
                    Role::Ro => KvRole::Ro,
                };
                r.engine = serving.engine.clone();
                r.mounted = Arc::downgrade(&serving.on_volume.mounted);
                r.paused = false;
            }
            // Drop orders meant for the previous role.
            while rx.try_recv().is_ok() {}
            if hb_task.is_none() {
                let h = hb.clone();
                let stop = stop_hb.clone();
                hb_task = Some(tokio::spawn(h.as_ref().clone().run(stop)));
            } else {
                hb.now.notify_one();
            }
            if role == Role::Rw {
                confirm_writer(&mut rx).await;
            }
            info!(
                volume = %volume,
                node = %node_id,
                role = role.name(),
                took_ms = t0.elapsed().as_millis() as u64,
                "kv node serving"
            );
            let mut serving = serving;
            let mut poll = tokio::time::interval(LEASE_POLL);
            let next = loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        None => anyhow::bail!("the heartbeat task stopped"),
                        Some(Event::Ack) => {}
                        Some(Event::Promote) if role == Role::Ro => break Next::Promote,
                        Some(Event::Promote) => {}
                        Some(Event::StepDown { fenced: true, message }) => {
                            exit_now(&format!("ctrl: {message}"))
                        }
                        Some(Event::StepDown { fenced: false, message }) => {
                            if role == Role::Rw {
                                break Next::StepDown(message);
                            }
                        }
                        Some(Event::LeaseLapsed(why)) => {
                            if role == Role::Rw {
                                exit_now(&format!("kv lease lapsed: {why}"));
                            }
                        }
                    },
                    _ = poll.tick() => {
                        if role == Role::Rw && serving.on_volume.mounted.lease_lost() {
                            exit_now("the fs mount lease was lost (fenced)");
                        }
                    }
                    r = &mut serving.task => {
                        let why = match r {
                            Ok(Ok(())) => "stopped".to_string(),
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => e.to_string(),
                        };
                        anyhow::bail!("kv server ended: {why}");
                    }
                    r = &mut signal => {
                        r?;
                        break Next::Stop;
                    }
                }
            };
            match next {
                Next::Promote => {
                    let t = Instant::now();
                    info!(volume = %volume, node = %node_id, "ctrl promotes this node: reopening as the writer");
                    lock(&report).role = KvRole::Promoting;
                    hb.now.notify_one();
                    close(serving).await.context("close the read-only role")?;
                    info!(
                        took_ms = t.elapsed().as_millis() as u64,
                        "read-only role closed"
                    );
                    role = Role::Rw;
                }
                Next::StepDown(message) => {
                    info!(%message, "planned step-down: finishing in-flight writes, releasing the volume");
                    // Stop reporting RW; the goodbye frees the seat at once.
                    lock(&report).paused = true;
                    let r = close(serving).await;
                    hb.goodbye().await;
                    if let Err(e) = r {
                        error!(error = %format!("{e:#}"), "closing after the step-down failed; exiting, restart it with --role ro");
                        std::process::exit(EXIT_STEPPED_DOWN);
                    }
                    info!("stepped down (planned switchover): rejoining as a read-only node");
                    role = Role::Ro;
                }
                Next::Stop => {
                    info!("stopping kv node");
                    stop_hb.cancel();
                    let r = close(serving).await;
                    hb.goodbye().await;
                    return r;
                }
            }
        }
    }

    enum Next {
        Promote,
        StepDown(String),
        Stop,
    }

    /// A new writer waits for ctrl to accept it before serving.
    async fn confirm_writer(rx: &mut mpsc::UnboundedReceiver<Event>) {
        let deadline = tokio::time::Instant::now() + CONFIRM_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Event::Ack)) => return,
                Ok(Some(Event::StepDown { message, .. })) => exit_now(&format!("ctrl: {message}")),
                Ok(Some(Event::LeaseLapsed(why))) => exit_now(&format!("kv lease refused: {why}")),
                Ok(Some(Event::Promote)) => {}
                Ok(None) => exit_now("the heartbeat task stopped"),
                Err(_) => exit_now("ctrl did not confirm this writer in time"),
            }
        }
    }
}
