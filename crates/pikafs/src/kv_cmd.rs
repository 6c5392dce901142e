//! `pikafs kv`: run a Redis-compatible kv node (RocksDB primary or
//! secondary) until SIGINT/SIGTERM. All behaviour lives in `pikafs_kv`; this
//! only maps flags to [`pikafs_kv::KvConfig`].

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
pub struct KvArgs {
    /// rw = RocksDB primary, ro = read-only secondary of the same data.
    #[arg(long, value_enum, default_value = "rw")]
    role: RoleArg,
    /// RESP listen address.
    #[arg(long, default_value = "127.0.0.1:6379")]
    listen: SocketAddr,
    /// RocksDB directory on the local file system (an RO node names the
    /// primary's directory).
    #[arg(long, required_unless_present = "volume", conflicts_with = "volume")]
    dir: Option<PathBuf>,
    /// Keep RocksDB on this pikafs volume (formatted with `pikafs fs
    /// mkfs`), mounted in-process: RW for the primary, RO for a secondary.
    #[arg(long)]
    volume: Option<String>,
    /// With --volume: a local directory for node-private files (the
    /// secondary's directory and the RocksDB path prefix, which stays
    /// empty on the local disk). Default: a temp dir.
    #[arg(long)]
    local_dir: Option<PathBuf>,
    /// With --volume, RW: how long to wait for an earlier writer's mount
    /// lease to lapse (a restart after a crash) before giving up.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    mount_wait: Duration,
    /// With --volume: the RocksDB directory inside the volume's fs.
    #[arg(long, default_value = "/kv")]
    fs_dir: String,
    /// RO only: private directory of the secondary (default: a temp dir).
    #[arg(long)]
    secondary_dir: Option<PathBuf>,
    /// One memory budget for block cache plus memtables.
    #[arg(long, value_parser = parse_size, default_value = "512MiB")]
    memory: u64,
    /// Require AUTH with this password.
    #[arg(long, env = "PIKAFS_KV_REQUIREPASS")]
    requirepass: Option<String>,
    /// When acknowledged writes are durable.
    #[arg(long, value_enum, default_value = "always")]
    appendfsync: AppendFsync,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// RO: how often to catch up with the primary when not notified.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    catch_up_interval: Duration,
    /// Refuse connections beyond this many clients.
    #[arg(long, default_value_t = pikafs_kv::config::DEFAULT_MAX_CLIENTS)]
    maxclients: usize,
}

pub async fn run(args: KvArgs, ctrl: &str) -> anyhow::Result<()> {
    let role = match args.role {
        RoleArg::Rw => Role::Rw,
        RoleArg::Ro => Role::Ro,
    };
    let (dir, on_volume) = match (&args.dir, &args.volume) {
        (Some(dir), _) => (dir.clone(), None),
        (None, Some(volume)) => {
            let v = open_volume(ctrl, volume, role, &args).await?;
            (v.db_dir.clone(), Some(v))
        }
        (None, None) => anyhow::bail!("give --dir or --volume"),
    };
    let mut cfg = KvConfig::new(args.listen, role, dir);
    let env = on_volume.as_ref().map(|v| v.env.env().clone());
    if let (Some(v), Role::Ro) = (&on_volume, role) {
        cfg.secondary_dir = Some(v.local.join("secondary"));
    }
    if args.secondary_dir.is_some() {
        cfg.secondary_dir = args.secondary_dir;
    }
    cfg.memory_bytes = usize::try_from(args.memory).context("--memory too large")?;
    cfg.requirepass = args.requirepass;
    cfg.appendfsync = match args.appendfsync {
        AppendFsync::Always => FsyncPolicy::Always,
        AppendFsync::Everysec => FsyncPolicy::EverySec,
        AppendFsync::No => FsyncPolicy::No,
    };
    cfg.metrics = args.metrics;
    cfg.catch_up_interval = args.catch_up_interval;
    cfg.max_clients = args.maxclients;
    let server = pikafs_kv::KvServer::bind(cfg, env)
        .await
        .context("start kv server")?;
    if let (Some(v), Role::Ro) = (&on_volume, role) {
        // The fs journal's notifications (pushed by the RW mount on each
        // commit, applied by this RO mount) wake the secondary's catch-up.
        let changes = v.mounted.subscribe();
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

/// RocksDB's home on a pikafs volume: the in-process mount and the Env
/// that routes RocksDB's file operations to it.
struct OnVolume {
    mounted: Arc<Mounted>,
    env: PikaEnv,
    /// The RocksDB path (under the Env's prefix).
    db_dir: PathBuf,
    /// Node-private local directory.
    local: PathBuf,
}

async fn open_volume(
    ctrl: &str,
    volume: &str,
    role: Role,
    args: &KvArgs,
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
    let prefix = local.join("pikafs");
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
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}
