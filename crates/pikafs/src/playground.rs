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
}

/// A child process with its name, stopped by PID.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Every child, stopped on drop so an error path leaves nothing behind.
struct Cluster {
    procs: Vec<Proc>,
}

impl Cluster {
    fn spawn(&mut self, dir: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
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
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log: log_path,
        });
        Ok(())
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| match p.child.try_wait() {
                Ok(Some(status)) => Some(format!(
                    "{} exited with {status}; see {}",
                    p.name,
                    p.log.display()
                )),
                _ => None,
            })
    }

    /// SIGTERM to all, then SIGKILL to whoever outlives the grace period.
    fn stop(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                if let Ok(pid) = libc::pid_t::try_from(p.child.id()) {
                    // SAFETY: plain kill(2) on our own child's PID.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut self.procs {
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
        self.procs.clear();
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
    let mut cluster = Cluster { procs: Vec::new() };
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
    println!("press Ctrl-C to stop");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = &mut signal => { info!(signal = s?, "stopping the playground"); break; }
            _ = tick.tick() => {
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
