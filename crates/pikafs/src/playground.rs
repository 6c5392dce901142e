//! `pikafs playground`: a whole local cluster from one command, as child
//! processes of this binary, stopped together on Ctrl-C or SIGTERM.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use pikafs_proto::ctrlpb::{CreateVolumeRequest, Empty, VolumeName};
use tracing::{info, warn};

use crate::cluster::{connect, status_err};
use crate::units::{fmt_size, parse_size};

/// How long the cluster gets to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct PlaygroundArgs {
    /// Directory for data and logs; reused by the next run.
    #[arg(long, default_value = "./pikafs-playground")]
    pub dir: PathBuf,
    /// Number of chunkservers.
    #[arg(long, default_value_t = 3)]
    pub servers: u16,
    /// ctrl port; metrics on +1, chunkservers on +100+i, their metrics on +200+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Volume to create if absent.
    #[arg(long, default_value = "vol0")]
    pub volume: String,
    /// Size of that volume.
    #[arg(long, value_parser = parse_size, default_value = "10GiB")]
    pub volume_size: u64,
    /// Number of read-only kv nodes beside the read-write one.
    #[arg(long = "ro", default_value_t = 2)]
    pub ro: u16,
    /// Port of the Redis proxy, the one address clients use.
    #[arg(long, default_value_t = 6379)]
    pub redis_port: u16,
    /// Start only the storage and file system (no kv nodes, no proxy), e.g.
    /// to run raw volume benchmarks, which overwrite the file system.
    #[arg(long)]
    pub no_kv: bool,
    /// Memory budget of each kv node (block cache plus memtables).
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub kv_memory: u64,
}

/// A child process with its name, stopped by PID.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set for kv nodes: the arguments to restart it with when it exits.
    /// A kv node exits when it loses the writer role (failover fenced it),
    /// and comes back as a reader, as a supervisor would bring it back.
    restart: Option<Restart>,
}

/// How a supervised child comes back.
struct Restart {
    args: Vec<String>,
    /// Exits in the current window; too many and the playground gives up
    /// rather than loop on a node that cannot start.
    recent: Vec<Instant>,
}

/// At most this many restarts of one child per [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Every child, stopped on drop so an error path leaves nothing behind.
struct Cluster {
    procs: Vec<Proc>,
    /// How many of `procs` (the first ones) are ctrl and chunkservers.
    storage: usize,
}

impl Cluster {
    fn spawn(&mut self, dir: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
        let child = Self::start(dir, name, args)?;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log: dir.join(format!("{name}.log")),
            restart: None,
        });
        Ok(())
    }

    /// Like [`Cluster::spawn`], but the child is restarted with
    /// `restart_args` whenever it exits.
    fn spawn_supervised(
        &mut self,
        dir: &Path,
        name: &str,
        args: &[String],
        restart_args: Vec<String>,
    ) -> anyhow::Result<()> {
        self.spawn(dir, name, args)?;
        if let Some(p) = self.procs.last_mut() {
            p.restart = Some(Restart {
                args: restart_args,
                recent: Vec::new(),
            });
        }
        Ok(())
    }

    /// Restarts supervised children that exited.
    fn supervise(&mut self, dir: &Path) -> anyhow::Result<()> {
        for p in &mut self.procs {
            let Some(r) = p.restart.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = p.child.try_wait() else {
                continue;
            };
            let now = Instant::now();
            r.recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            anyhow::ensure!(
                r.recent.len() < MAX_RESTARTS,
                "{} exited {MAX_RESTARTS} times within {RESTART_WINDOW:?} (last: {status}); see {}",
                p.name,
                p.log.display()
            );
            r.recent.push(now);
            warn!(name = p.name, %status, "exited; restarting it as a read-only node");
            p.child = Self::start(dir, &p.name, &r.args)?;
        }
        Ok(())
    }

    fn start(dir: &Path, name: &str, args: &[String]) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("find own executable")?;
        let log_path = dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let log2 = log.try_clone().context("clone log handle")?;
        let mut cmd = Command::new(exe);
        cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
        // SAFETY: prctl is async-signal-safe; it makes the kernel stop the
        // child if we die without cleaning up (e.g. SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        info!(name, pid = child.id(), log = %log_path.display(), "started");
        Ok(child)
    }

    /// The first unsupervised child that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .filter(|p| p.restart.is_none())
            .find_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "{} exited with {status}; see {}",
                    p.name,
                    p.log.display()
                )),
                _ => None,
            })
    }

    /// Stops the compute tier (kv nodes, proxy: everything after the
    /// first `storage` children) before the storage it writes to, so the
    /// RW kv node can flush and release its mount on the way out.
    fn stop(&mut self) {
        let storage = self.storage.min(self.procs.len());
        let compute: Vec<Proc> = self.procs.drain(storage..).collect();
        Self::stop_all(compute);
        let rest: Vec<Proc> = self.procs.drain(..).collect();
        Self::stop_all(rest);
    }

    /// SIGTERM to all, then SIGKILL to whoever outlives the grace period.
    fn stop_all(mut procs: Vec<Proc>) {
        for p in &mut procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                if let Ok(pid) = libc::pid_t::try_from(p.child.id()) {
                    // SAFETY: plain kill(2) on our own child's PID.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut procs {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        warn!(name = p.name, "did not stop in time; killing");
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Formats `volume` with a pikafs file system unless it holds one.
async fn format_volume(ctrl_url: &str, volume: &str) -> anyhow::Result<()> {
    let opts = pikafs_fs::MountOptions::new(ctrl_url, volume, pikafs_fs::Mode::Rw);
    let rt = tokio::runtime::Handle::current();
    let res = tokio::task::spawn_blocking(move || {
        pikafs_fs::format(&opts, &pikafs_fs::MkfsOptions::default(), false, &rt)
    })
    .await
    .context("mkfs thread")?;
    match res {
        Ok(sb) => println!(
            "formatted {volume}: {} of data space in {} blocks",
            fmt_size(sb.data_blocks * sb.block_size),
            fmt_size(sb.block_size)
        ),
        Err(pikafs_fs::MountError::AlreadyFormatted { .. }) => {
            println!("volume {volume} already holds a file system")
        }
        Err(e) => return Err(e).with_context(|| format!("mkfs {volume}")),
    }
    Ok(())
}

/// Waits until ctrl answers with enough servers up and copysets placed.
async fn wait_ready(
    ctrl_url: &str,
    want_servers: usize,
    cluster: &mut Cluster,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("ctrl not reachable yet");
    while Instant::now() < deadline {
        if let Some(e) = cluster.exited() {
            anyhow::bail!("{e}");
        }
        match connect(ctrl_url).await {
            Ok(mut c) => match c.cluster_status(Empty {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    let up = s.servers.iter().filter(|s| s.up).count();
                    if up >= want_servers && !s.copysets.is_empty() {
                        return Ok(());
                    }
                    last = format!("{up} servers up, {} copysets", s.copysets.len());
                }
                Err(e) => last = format!("cluster status: {}", e.message()),
            },
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("cluster not ready after {READY_TIMEOUT:?}: {last}")
}

/// Runs the playground until a signal.
pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.servers >= 1, "--servers must be at least 1");
    let port = |off: u16| {
        args.base_port.checked_add(off).with_context(|| {
            format!(
                "--base-port {} leaves no room for port +{off}",
                args.base_port
            )
        })
    };
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize().context("resolve playground dir")?;
    let ctrl_url = format!("http://127.0.0.1:{}", args.base_port);
    let mut cluster = Cluster {
        procs: Vec::new(),
        storage: usize::MAX,
    };
    let s = |p: &Path| p.display().to_string();
    cluster.spawn(
        &dir,
        "ctrl",
        &[
            "ctrl".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.base_port),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", port(1)?),
            "--data-dir".into(),
            s(&dir.join("ctrl")),
        ],
    )?;
    for i in 0..args.servers {
        cluster.spawn(
            &dir,
            &format!("cs{i}"),
            &[
                "--ctrl".into(),
                ctrl_url.clone(),
                "chunkserver".into(),
                "--listen".into(),
                format!("127.0.0.1:{}", port(100 + i)?),
                "--metrics-listen".into(),
                format!("127.0.0.1:{}", port(200 + i)?),
                "--data-dir".into(),
                s(&dir.join(format!("cs{i}"))),
            ],
        )?;
    }
    let signal = crate::server::shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        r = wait_ready(&ctrl_url, usize::from(args.servers.min(3)), &mut cluster) => r?,
        s = &mut signal => { info!(signal = s?, "stopping before the cluster was ready"); return Ok(()); }
    }
    let mut ctrl = connect(&ctrl_url).await?;
    match ctrl
        .get_volume(VolumeName {
            name: args.volume.clone(),
        })
        .await
    {
        Ok(v) => println!(
            "volume {} exists ({})",
            args.volume,
            fmt_size(v.into_inner().size_bytes)
        ),
        Err(e) if e.code() == tonic::Code::NotFound => {
            ctrl.create_volume(CreateVolumeRequest {
                name: args.volume.clone(),
                size_bytes: args.volume_size,
            })
            .await
            .map_err(|e| status_err(&format!("create volume {:?}", args.volume), e))?;
            println!(
                "created volume {} ({})",
                args.volume,
                fmt_size(args.volume_size)
            );
        }
        Err(e) => return Err(status_err("get volume", e)),
    }
    format_volume(&ctrl_url, &args.volume).await?;
    cluster.storage = cluster.procs.len();
    if !args.no_kv {
        tokio::select! {
            r = start_kv(&args, &dir, &ctrl_url, &mut cluster) => r?,
            s = &mut signal => { info!(signal = s?, "stopping before the kv nodes were ready"); return Ok(()); }
        }
    }
    println!();
    println!(
        "pikafs playground is up: ctrl at {ctrl_url}, {} chunkservers, data and logs in {}",
        args.servers,
        dir.display()
    );
    println!("try, in another shell:");
    println!("  export PIKAFS_CTRL={ctrl_url}");
    println!("  pikafs status");
    println!("  pikafs volume info {}", args.volume);
    let v = &args.volume;
    if args.no_kv {
        println!("  echo hello > /tmp/hello.txt && pikafs fs cp /tmp/hello.txt {v}:/hello.txt");
        println!("  pikafs fs ls -l {v}:/");
        println!("  pikafs fs cat {v}:/hello.txt");
        println!("  pikafs fs df {v}");
        println!("  pikafs fs fsck {v}");
        println!(
            "  mkdir -p /tmp/pikafs-mnt && pikafs mount {v} /tmp/pikafs-mnt   # add --ro for a reader"
        );
        println!("  pikafs fs bench {v} --dir /tmp");
        println!("(raw `pikafs volume write` / `bench volume` overwrite the file system)");
    } else {
        // The RW kv node holds the volume's one read-write mount, so only
        // read-only fs tools apply here.
        println!("  pikafs fs ls -l {v}:/kv      # RocksDB's files on the volume");
        println!("  pikafs fs df {v}");
        println!("  mkdir -p /tmp/pikafs-mnt && pikafs mount {v} /tmp/pikafs-mnt --ro");
        println!(
            "Redis: 1 read-write and {} read-only kv nodes on {v}, behind the proxy:",
            args.ro
        );
        println!("  redis-cli -p {}", args.redis_port);
        println!(
            "  redis-benchmark -p {} -q -P 16 -t set,get",
            args.redis_port
        );
    }
    println!("press Ctrl-C to stop");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = &mut signal => { info!(signal = s?, "stopping the playground"); break; }
            _ = tick.tick() => {
                if let Err(e) = cluster.supervise(&dir) {
                    cluster.stop();
                    return Err(e);
                }
                if let Some(e) = cluster.exited() {
                    warn!("{e}; stopping the playground");
                    cluster.stop();
                    anyhow::bail!("{e}");
                }
            }
        }
    }
    tokio::task::block_in_place(|| cluster.stop());
    Ok(())
}

/// Port offsets of the kv tier from `--base-port`: node i listens on
/// +300+i and serves metrics on +400+i; the proxy's metrics are on +2.
const KV_PORT: u16 = 300;
const KV_METRICS_PORT: u16 = 400;
const PROXY_METRICS_PORT: u16 = 2;
/// How long a kv node gets to open RocksDB and answer PING; a restart
/// after a crash waits for the old writer's mount lease first.
const KV_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the RW kv node, then (once it serves, so the database exists)
/// the RO nodes, then the proxy.
async fn start_kv(
    args: &PlaygroundArgs,
    dir: &Path,
    ctrl_url: &str,
    cluster: &mut Cluster,
) -> anyhow::Result<()> {
    let port = |off: u16| {
        args.base_port.checked_add(off).with_context(|| {
            format!(
                "--base-port {} leaves no room for the kv nodes",
                args.base_port
            )
        })
    };
    let node = |i: u16, role: &str| -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "--ctrl".into(),
            ctrl_url.into(),
            "kv".into(),
            "--role".into(),
            role.into(),
            "--volume".into(),
            args.volume.clone(),
            "--listen".into(),
            format!("127.0.0.1:{}", port(KV_PORT + i)?),
            "--metrics".into(),
            format!("127.0.0.1:{}", port(KV_METRICS_PORT + i)?),
            "--local-dir".into(),
            dir.join(format!("kv{i}")).display().to_string(),
            "--memory".into(),
            args.kv_memory.to_string(),
        ])
    };
    // With readers, a writer that exits has lost its role to one of them
    // (failover) and comes back as a reader; alone, it comes back as the
    // writer.
    let rw_restart = if args.ro > 0 { "ro" } else { "rw" };
    cluster.spawn_supervised(dir, "kv0", &node(0, "rw")?, node(0, rw_restart)?)?;
    wait_resp(port(KV_PORT)?, cluster).await?;
    for i in 1..=args.ro {
        cluster.spawn_supervised(dir, &format!("kv{i}"), &node(i, "ro")?, node(i, "ro")?)?;
    }
    for i in 1..=args.ro {
        wait_resp(port(KV_PORT + i)?, cluster).await?;
    }
    cluster.spawn(
        dir,
        "proxy",
        &[
            "--ctrl".into(),
            ctrl_url.into(),
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.redis_port),
            "--volume".into(),
            args.volume.clone(),
            "--metrics".into(),
            format!("127.0.0.1:{}", port(PROXY_METRICS_PORT)?),
        ],
    )?;
    wait_resp(args.redis_port, cluster).await
}

/// Waits until a RESP server on 127.0.0.1:`port` answers PING.
async fn wait_resp(port: u16, cluster: &mut Cluster) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + KV_READY_TIMEOUT;
    let mut last = String::from("not listening yet");
    while Instant::now() < deadline {
        if let Some(e) = cluster.exited() {
            anyhow::bail!("{e}");
        }
        let attempt = async {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            c.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(reply)) if reply.starts_with("+PONG") => return Ok(()),
            Ok(Ok(reply)) => last = format!("PING answered {:?}", reply.trim_end()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "PING timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("127.0.0.1:{port} did not answer PING within {KV_READY_TIMEOUT:?}: {last}")
}
