//! `pikafs mount VOLUME DIR [--ro]`: serves a pikafs file system through
//! FUSE until SIGINT/SIGTERM, then unmounts the kernel mount, unmounts the
//! fs (a RW commits and checkpoints) and releases the ctrl lease.
//!
//! `--file` mounts an fs image in a local file instead of a cluster volume
//! (tests, tools, benchmarks); `--mkfs SIZE` creates that image first and
//! `--bench SIZE` runs the FUSE-vs-native sequential benchmark on the
//! mount and exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use pikafs_fs::{mkfs, FileDevice, Fs, MkfsOptions, Mode, Mounted};
use pikafs_fuse::{MountOptions, Session};

use crate::units::{parse_duration, parse_size};

/// Flags of `pikafs mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Volume to mount (with --file: the path of a file holding an fs
    /// image).
    pub volume: String,
    /// Mount point: an existing directory.
    pub dir: PathBuf,
    /// Mount read-only: follow the volume's writer (the kernel caches
    /// nothing, so the writer's fsync'd changes show at once).
    #[arg(long)]
    pub ro: bool,
    /// VOLUME is a local file image, no cluster or lease (only one RW
    /// mount of it at a time is safe; RO mounts poll its journal).
    #[arg(long)]
    pub file: bool,
    /// With --file: create the image with this size and format it first
    /// (destroys what was there).
    #[arg(long, value_parser = parse_size, requires = "file")]
    pub mkfs: Option<u64>,
    /// With --file --ro: how often to read the writer's journal.
    #[arg(long, value_parser = parse_duration, default_value = "2ms", hide = true)]
    pub poll: Duration,
    /// FUSE request threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// Serve Prometheus metrics (`pikafs_fuse_*`, `pikafs_fs_*`) here.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Instead of serving: write and read back a file of this size
    /// through FUSE and through the native API, print both and exit.
    #[arg(long, value_parser = parse_size, hide = true)]
    pub bench: Option<u64>,
}

/// What holds the mounted fs.
enum Backing {
    File(Fs),
    Cluster(Box<Mounted>),
}

impl Backing {
    fn fs(&self) -> Fs {
        match self {
            Backing::File(fs) => fs.clone(),
            Backing::Cluster(m) => m.fs().clone(),
        }
    }

    fn unmount(self) -> anyhow::Result<()> {
        match self {
            Backing::File(fs) => fs.unmount().context("unmount the fs"),
            Backing::Cluster(m) => m.unmount().context("unmount the volume"),
        }
    }
}

fn open_file(path: &Path, mode: Mode, mkfs_size: Option<u64>) -> anyhow::Result<Fs> {
    if let Some(size) = mkfs_size {
        if mode == Mode::Ro {
            bail!("--mkfs needs a RW mount");
        }
        let dev = FileDevice::create(path, size)
            .with_context(|| format!("create image {}", path.display()))?;
        mkfs(&dev, &MkfsOptions::default()).with_context(|| format!("mkfs {}", path.display()))?;
    }
    let dev = FileDevice::open(path).with_context(|| format!("open image {}", path.display()))?;
    Fs::mount(Arc::new(dev), mode).with_context(|| format!("mount fs image {}", path.display()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task panicked")?
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

/// Runs `pikafs mount`.
///
/// # Errors
/// Opening or mounting the volume or image (a second RW mount of a volume
/// fails with ctrl's message naming the holder), the FUSE mount, the
/// benchmark, or the final unmount.
///
/// # Cancel safety
/// Not cancel-safe: dropping the future mid-way leaves the unmount to the
/// `Session` and `Mounted` destructors (best effort).
pub async fn run(args: MountArgs, ctrl: &str) -> anyhow::Result<()> {
    let mode = if args.ro { Mode::Ro } else { Mode::Rw };
    if args.bench.is_some() && args.ro {
        bail!("--bench needs a RW mount");
    }
    let backing = if args.file {
        let path = PathBuf::from(&args.volume);
        let mkfs_size = args.mkfs;
        Backing::File(blocking(move || open_file(&path, mode, mkfs_size)).await?)
    } else {
        let opts = pikafs_fs::MountOptions::new(ctrl, &args.volume, mode);
        let rt = tokio::runtime::Handle::current();
        let volume = args.volume.clone();
        let m = blocking(move || {
            Mounted::open(opts, rt).with_context(|| format!("mount volume {volume}"))
        })
        .await?;
        Backing::Cluster(Box::new(m))
    };
    let fuse_opts = MountOptions {
        ro: args.ro,
        // A cluster RO mount follows the writer's notifications itself.
        catch_up_interval: (args.file && args.ro).then_some(args.poll),
        threads: args.threads,
        fsname: format!("pikafs:{}", args.volume),
        ..MountOptions::default()
    };
    let fs = backing.fs();
    let dir = args.dir.clone();
    let session = match blocking(move || {
        pikafs_fuse::mount(fs, &dir, &fuse_opts)
            .with_context(|| format!("fuse mount at {}", dir.display()))
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            // Leave no lease behind.
            let _ = blocking(move || backing.unmount()).await;
            return Err(e);
        }
    };
    if let Some(addr) = args.metrics_listen {
        let registry = session.registry(&backing.fs());
        match pikafs_proto::metrics_http::serve(addr, registry).await {
            Ok(at) => tracing::info!(%at, "serving metrics"),
            Err(e) => {
                let _ = unmount(session, &args.dir).await;
                let _ = blocking(move || backing.unmount()).await;
                return Err(e).with_context(|| format!("serve metrics on {addr}"));
            }
        }
    }
    let served = match args.bench {
        Some(bytes) => {
            let fs = backing.fs();
            let dir = args.dir.clone();
            blocking(move || pikafs_fuse::bench(&fs, &dir, bytes).context("fuse benchmark"))
                .await
                .map(|report| println!("{report}"))
        }
        None => {
            println!(
                "mounted {} at {} ({}); Ctrl-C or SIGTERM unmounts",
                args.volume,
                args.dir.display(),
                if args.ro { "ro" } else { "rw" }
            );
            shutdown_signal().await
        }
    };
    let unmounted = unmount(session, &args.dir).await;
    let released = blocking(move || backing.unmount()).await;
    served?;
    unmounted?;
    released?;
    tracing::info!(dir = %args.dir.display(), "unmounted");
    Ok(())
}

/// Unmounts the kernel mount; while files are open on it, detaches it
/// lazily instead so the fs can still be unmounted and the lease released.
async fn unmount(session: Session, dir: &Path) -> anyhow::Result<()> {
    match blocking(move || Ok(session.unmount())).await? {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            let out = tokio::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(dir)
                .output()
                .await
                .context("run fusermount3 -u -z")?;
            if !out.status.success() {
                bail!(
                    "unmount {}: {e}; fusermount3 -u -z: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: MountArgs,
    }

    fn parse(args: &[&str]) -> Result<MountArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("mount").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags() {
        let a = parse(&["vol0", "/mnt/p"]).unwrap();
        assert_eq!((a.volume.as_str(), a.ro, a.file), ("vol0", false, false));
        assert_eq!(a.dir, PathBuf::from("/mnt/p"));
        assert_eq!(a.poll, Duration::from_millis(2));
        let a = parse(&["img", "d", "--ro", "--file", "--poll", "5ms"]).unwrap();
        assert!(a.ro && a.file);
        assert_eq!(a.poll, Duration::from_millis(5));
        let a = parse(&["img", "d", "--file", "--mkfs", "1GiB", "--bench", "256MiB"]).unwrap();
        assert_eq!((a.mkfs, a.bench), (Some(1 << 30), Some(256 << 20)));
        // --mkfs only makes sense for a file image.
        assert!(parse(&["vol0", "d", "--mkfs", "1GiB"]).is_err());
        assert!(parse(&["vol0"]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ro_bench_and_mkfs_are_refused() {
        let ro_bench = parse(&["img", "d", "--file", "--ro", "--bench", "1MiB"]).unwrap();
        let e = run(ro_bench, "unused").await.unwrap_err();
        assert!(
            format!("{e:#}").contains("--bench needs a RW mount"),
            "{e:#}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        let e = open_file(&img, Mode::Ro, Some(64 << 20)).unwrap_err();
        assert!(
            format!("{e:#}").contains("--mkfs needs a RW mount"),
            "{e:#}"
        );
    }
}
