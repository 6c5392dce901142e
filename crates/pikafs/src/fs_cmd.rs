//! `pikafs fs ...`: PFS-style tools on the file system inside a volume.
//!
//! Every tool mounts through ctrl ([`pikafs_fs::Mounted`]): read-only tools
//! (`ls`, `tree`, `stat`, `cat`, `du`, `df`, `fsck`, `cp` from the volume)
//! take an RO lease, writing tools (`mkfs`, `growfs`, `rm`, `mkdir`,
//! `rmdir`, `mv`, `cp` to the volume) the RW lease, released at exit. A
//! file-system path is written `VOLUME:/path`; anything else given to `cp`
//! is a local path. Errors name the path and the cause:
//! `error: cp vol0:/a/b: no such file or directory`.
//!
//! Hidden helpers for tests and benchmarks: `fs stress` (a crash-test
//! writer that prints every durable state) and `fs bench` (native API vs
//! local ext4).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use pikafs_fs::{
    format, fsck, FsError, Kind, MkfsOptions, Mode, MountOptions, Mounted, OpenFlags, Stat,
};
use pikafs_proto::ctrlpb::VolumeName;
use tokio::runtime::Handle;

use crate::units::{fmt_size, parse_size};

/// Bytes per read or write when copying.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum FsCmd {
    /// Create a file system on a volume (refuses a formatted one without --force).
    Mkfs {
        volume: String,
        /// Format even if the volume already holds a file system.
        #[arg(long)]
        force: bool,
        /// Data block size (default 4MiB).
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        /// Journal ring size (default 1% of the volume, 1MiB..64MiB).
        #[arg(long, value_parser = parse_size)]
        journal_size: Option<u64>,
    },
    /// Extend the file system to the volume's size (after `pikafs volume grow`).
    Growfs { volume: String },
    /// List a directory (VOLUME:/path).
    Ls {
        /// Long format: type and mode, size, mtime, name.
        #[arg(short = 'l')]
        long: bool,
        target: String,
    },
    /// Show a directory tree (VOLUME:/path).
    Tree { target: String },
    /// Show a file's or directory's attributes (VOLUME:/path).
    Stat { target: String },
    /// Print files to stdout (VOLUME:/path ...).
    Cat {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Copy between the volume and local paths, in either direction.
    Cp {
        /// Copy directories recursively.
        #[arg(short = 'r', short_alias = 'R')]
        recursive: bool,
        src: String,
        dst: String,
    },
    /// Remove files (and directories with -r).
    Rm {
        #[arg(short = 'r', short_alias = 'R')]
        recursive: bool,
        /// No error for missing paths.
        #[arg(short = 'f')]
        force: bool,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Create directories.
    Mkdir {
        /// Create parents as needed; no error if it exists.
        #[arg(short = 'p')]
        parents: bool,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Remove empty directories.
    Rmdir {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Rename or move (atomic; replaces an existing file).
    Mv { src: String, dst: String },
    /// Space used below paths: allocated bytes, then apparent size.
    Du {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Space of the file system, including orphans held for RO mounts.
    Df { volume: String },
    /// Check the file system's consistency (read-only).
    Fsck { volume: String },
    /// (testing) Write, append, rename and unlink files with fsync, print
    /// every durable state to stdout.
    #[command(hide = true)]
    Stress(StressArgs),
    /// Benchmark the native API against a local directory (ext4).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct StressArgs {
    volume: String,
    /// Run this long (seconds), then unmount cleanly.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Directory inside the volume.
    #[arg(long, default_value = "/stress")]
    dir: String,
    #[arg(long)]
    seed: Option<u64>,
    /// Largest write in bytes.
    #[arg(long, default_value_t = 96 * 1024)]
    max_write: usize,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    volume: String,
    /// Local directory for the ext4 comparison (same disk as the cluster).
    #[arg(long)]
    dir: PathBuf,
    /// Operations per measure.
    #[arg(long, default_value_t = 500)]
    ops: usize,
}

/// Runs one `pikafs fs` command.
///
/// # Errors
/// Whatever the tool reports, naming the path and the cause.
pub async fn run(cmd: FsCmd, ctrl: &str) -> anyhow::Result<()> {
    let ctrl = ctrl.to_string();
    let rt = Handle::current();
    // The fs API blocks: keep it off the async workers.
    tokio::task::spawn_blocking(move || run_blocking(cmd, &ctrl, &rt))
        .await
        .context("fs tool thread")?
}

fn run_blocking(cmd: FsCmd, ctrl: &str, rt: &Handle) -> anyhow::Result<()> {
    let tools = Tools {
        ctrl: ctrl.to_string(),
        rt: rt.clone(),
    };
    match cmd {
        FsCmd::Mkfs {
            volume,
            force,
            block_size,
            journal_size,
        } => tools.mkfs(&volume, force, block_size, journal_size),
        FsCmd::Growfs { volume } => {
            let m = tools.mount(&volume, Mode::Rw)?;
            let bytes = m.growfs().map_err(|e| fs_err("growfs", &volume, "", e))?;
            println!("{volume}: {} of data space", fmt_size(bytes));
            m.unmount().context("unmount")?;
            Ok(())
        }
        FsCmd::Ls { long, target } => tools.ls(&target, long),
        FsCmd::Tree { target } => tools.tree(&target),
        FsCmd::Stat { target } => tools.stat(&target),
        FsCmd::Cat { targets } => tools.cat(&targets),
        FsCmd::Cp {
            recursive,
            src,
            dst,
        } => tools.cp(&src, &dst, recursive),
        FsCmd::Rm {
            recursive,
            force,
            targets,
        } => tools.rm(&targets, recursive, force),
        FsCmd::Mkdir { parents, targets } => tools.mkdir(&targets, parents),
        FsCmd::Rmdir { targets } => tools.rmdir(&targets),
        FsCmd::Mv { src, dst } => tools.mv(&src, &dst),
        FsCmd::Du { targets } => tools.du(&targets),
        FsCmd::Df { volume } => tools.df(&volume),
        FsCmd::Fsck { volume } => tools.fsck(&volume),
        FsCmd::Stress(a) => tools.stress(a),
        FsCmd::Bench(a) => tools.bench(a),
    }
}

/// Where a tool argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loc {
    Vol { volume: String, path: String },
    Local(PathBuf),
}

/// `VOLUME:/path` (or `VOLUME:` / `VOLUME` alone for `/` where `bare_vol`)
/// is a path in a volume; anything else a local path.
fn parse_loc(s: &str) -> Loc {
    if let Some((v, p)) = s.split_once(':') {
        if !v.is_empty() && !v.contains('/') && (p.is_empty() || p.starts_with('/')) {
            return Loc::Vol {
                volume: v.to_string(),
                path: norm(p),
            };
        }
    }
    Loc::Local(PathBuf::from(s))
}

/// A volume path argument of a tool that only works inside volumes.
fn vol_target(s: &str) -> anyhow::Result<(String, String)> {
    match parse_loc(s) {
        Loc::Vol { volume, path } => Ok((volume, path)),
        Loc::Local(_) if !s.is_empty() && !s.contains('/') && !s.contains(':') => {
            Ok((s.to_string(), "/".to_string()))
        }
        Loc::Local(_) => bail!("{s}: expected VOLUME:/path"),
    }
}

/// `/a//b/` -> `/a/b`; empty -> `/`.
fn norm(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').find(|c| !c.is_empty()).unwrap_or("")
}

/// The cause of an fs error without the fs path (the caller names it).
fn cause(e: &FsError) -> String {
    match e {
        FsError::NotFound { .. } => "no such file or directory".into(),
        FsError::Exists { .. } => "file exists".into(),
        FsError::NotDir { .. } => "not a directory".into(),
        FsError::IsDir { .. } => "is a directory".into(),
        FsError::NotEmpty { .. } => "directory not empty".into(),
        FsError::NameTooLong { .. } => "name too long".into(),
        FsError::TooLarge { .. } => "file too large".into(),
        other => other.to_string(),
    }
}

/// `{op} {volume}:{path}: {cause}`.
fn fs_err(op: &str, volume: &str, path: &str, e: FsError) -> anyhow::Error {
    let at = if path.is_empty() {
        volume.to_string()
    } else {
        format!("{volume}:{path}")
    };
    anyhow!("{op} {at}: {}", cause(&e))
}

fn kind_char(k: Kind) -> char {
    match k {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
        _ => '-',
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::Symlink => "symbolic link",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::CharDev => "character device",
        Kind::BlockDev => "block device",
        _ => "file",
    }
}

fn mode_string(st: &Stat) -> String {
    let mut s = String::new();
    s.push(kind_char(st.kind));
    for shift in [6u32, 3, 0] {
        let bits = (st.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn fmt_time(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    humantime::format_rfc3339_seconds(t).to_string()
}

struct Tools {
    ctrl: String,
    rt: Handle,
}

impl Tools {
    fn mount(&self, volume: &str, mode: Mode) -> anyhow::Result<Mounted> {
        let opts = MountOptions::new(&self.ctrl, volume, mode);
        let how = if mode == Mode::Rw {
            "read-write"
        } else {
            "read-only"
        };
        Mounted::open(opts, self.rt.clone()).with_context(|| format!("mount {volume} {how}"))
    }

    fn mkfs(
        &self,
        volume: &str,
        force: bool,
        block_size: Option<u64>,
        journal_size: Option<u64>,
    ) -> anyhow::Result<()> {
        let opts = MountOptions::new(&self.ctrl, volume, Mode::Rw);
        let mk = MkfsOptions {
            block_size,
            journal_size,
            checkpoint_size: journal_size,
        };
        let sb = format(&opts, &mk, force, &self.rt).with_context(|| format!("mkfs {volume}"))?;
        println!(
            "formatted {volume}: {} data blocks of {} ({}), journal {}",
            sb.data_blocks,
            fmt_size(sb.block_size),
            fmt_size(sb.data_blocks * sb.block_size),
            fmt_size(sb.ring_size)
        );
        Ok(())
    }

    fn ls(&self, target: &str, long: bool) -> anyhow::Result<()> {
        let (volume, path) = vol_target(target)?;
        let m = self.mount(&volume, Mode::Ro)?;
        let fs = m.fs();
        let st = fs
            .stat(&path)
            .map_err(|e| fs_err("ls", &volume, &path, e))?;
        let entries: Vec<(String, String)> = if st.kind == Kind::Dir {
            fs.readdir(&path)
                .map_err(|e| fs_err("ls", &volume, &path, e))?
                .into_iter()
                .map(|e| (e.name.clone(), join(&path, &e.name)))
                .collect()
        } else {
            vec![(basename(&path).to_string(), path.clone())]
        };
        let mut out = std::io::stdout().lock();
        for (name, full) in entries {
            if long {
                // An entry removed since readdir is skipped, as ls does.
                let Ok(st) = fs.stat(&full) else { continue };
                writeln!(
                    out,
                    "{} {:>12} {} {}",
                    mode_string(&st),
                    st.size,
                    fmt_time(st.mtime_ns),
                    name
                )?;
            } else {
                writeln!(out, "{name}")?;
            }
        }
        drop(out);
        m.unmount().context("unmount")?;
        Ok(())
    }

    fn tree(&self, target: &str) -> anyhow::Result<()> {
        let (volume, path) = vol_target(target)?;
        let m = self.mount(&volume, Mode::Ro)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{volume}:{path}")?;
        let (mut dirs, mut files) = (0u64, 0u64);
        fn walk(
            fs: &pikafs_fs::Fs,
            volume: &str,
            path: &str,
            prefix: &str,
            out: &mut impl Write,
            counts: (&mut u64, &mut u64),
        ) -> anyhow::Result<()> {
            let (dirs, files) = counts;
            let entries = fs
                .readdir(path)
                .map_err(|e| fs_err("tree", volume, path, e))?;
            let n = entries.len();
            for (i, e) in entries.into_iter().enumerate() {
                let last = i + 1 == n;
                let branch = if last { "└── " } else { "├── " };
                writeln!(out, "{prefix}{branch}{}", e.name)?;
                if e.kind == Kind::Dir {
                    *dirs += 1;
                    let sub = format!("{prefix}{}", if last { "    " } else { "│   " });
                    walk(
                        fs,
                        volume,
                        &join(path, &e.name),
                        &sub,
                        out,
                        (&mut *dirs, &mut *files),
                    )?;
                } else {
                    *files += 1;
                }
            }
            Ok(())
        }
        walk(
            m.fs(),
            &volume,
            &path,
            "",
            &mut out,
            (&mut dirs, &mut files),
        )?;
        writeln!(out, "\n{dirs} directories, {files} files")?;
        drop(out);
        m.unmount().context("unmount")?;
        Ok(())
    }

    fn stat(&self, target: &str) -> anyhow::Result<()> {
        let (volume, path) = vol_target(target)?;
        let m = self.mount(&volume, Mode::Ro)?;
        let st = m
            .fs()
            .stat(&path)
            .map_err(|e| fs_err("stat", &volume, &path, e))?;
        println!("path: {volume}:{path}");
        println!("type: {}", kind_name(st.kind));
        println!("ino: {}", st.ino);
        println!("size: {}", st.size);
        println!("allocated: {}", st.allocated);
        println!("mode: {:o} ({})", st.mode & 0o7777, mode_string(&st));
        println!("nlink: {}", st.nlink);
        println!("uid: {}", st.uid);
        println!("gid: {}", st.gid);
        if st.kind == Kind::Symlink {
            let target = m
                .fs()
                .readlink(&path)
                .map_err(|e| fs_err("readlink", &volume, &path, e))?;
            println!("target: {}", String::from_utf8_lossy(&target));
        }
        if matches!(st.kind, Kind::CharDev | Kind::BlockDev) {
            println!("rdev: {}", st.rdev);
        }
        println!("atime: {}", fmt_time(st.atime_ns));
        println!("mtime: {}", fmt_time(st.mtime_ns));
        println!("ctime: {}", fmt_time(st.ctime_ns));
        m.unmount().context("unmount")?;
        Ok(())
    }

    fn cat(&self, targets: &[String]) -> anyhow::Result<()> {
        let mut mounts: HashMap<String, Mounted> = HashMap::new();
        let mut out = std::io::stdout().lock();
        for t in targets {
            let (volume, path) = vol_target(t)?;
            if !mounts.contains_key(&volume) {
                mounts.insert(volume.clone(), self.mount(&volume, Mode::Ro)?);
            }
            let fs = mounts[&volume].fs();
            let f = fs
                .open(&path, OpenFlags::read())
                .map_err(|e| fs_err("cat", &volume, &path, e))?;
            let mut off = 0u64;
            loop {
                let buf = f
                    .pread(off, COPY_CHUNK)
                    .map_err(|e| fs_err("cat", &volume, &path, e))?;
                if buf.is_empty() {
                    break;
                }
                off += buf.len() as u64;
                if let Err(e) = out.write_all(&buf) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e).context("write stdout");
                }
            }
        }
        out.flush().context("write stdout")?;
        drop(out);
        for (_, m) in mounts {
            m.unmount().context("unmount")?;
        }
        Ok(())
    }

    fn cp(&self, src: &str, dst: &str, recursive: bool) -> anyhow::Result<()> {
        let (s, d) = (parse_loc(src), parse_loc(dst));
        let mut mounts: HashMap<String, Mounted> = HashMap::new();
        if let Loc::Vol { volume, .. } = &d {
            mounts.insert(volume.clone(), self.mount(volume, Mode::Rw)?);
        }
        if let Loc::Vol { volume, .. } = &s {
            if !mounts.contains_key(volume) {
                mounts.insert(volume.clone(), self.mount(volume, Mode::Ro)?);
            }
        }
        let src_ep = Ep::new(&s, &mounts);
        let dst_ep = Ep::new(&d, &mounts);
        let src_kind = src_ep
            .kind()?
            .ok_or_else(|| anyhow!("cp {src}: no such file or directory"))?;
        if src_kind == Kind::Dir && !recursive {
            bail!("cp {src}: is a directory (use -r)");
        }
        // Into an existing directory: keep the source's name.
        let target = match dst_ep.kind()? {
            Some(Kind::Dir) => {
                let name = src_ep.name();
                if name.is_empty() {
                    dst_ep
                } else {
                    dst_ep.child(&name)
                }
            }
            _ => dst_ep,
        };
        copy_tree(&src_ep, &target)?;
        for (_, m) in mounts {
            m.unmount().context("unmount")?;
        }
        Ok(())
    }

    fn rm(&self, targets: &[String], recursive: bool, force: bool) -> anyhow::Result<()> {
        self.each_rw(targets, |fs, volume, path| {
            let st = match fs.stat(path) {
                Ok(st) => st,
                Err(FsError::NotFound { .. }) if force => return Ok(()),
                Err(e) => return Err(fs_err("rm", volume, path, e)),
            };
            if st.kind == Kind::Dir {
                if !recursive {
                    bail!("rm {volume}:{path}: is a directory (use -r)");
                }
                remove_tree(fs, volume, path)
            } else {
                fs.unlink(path).map_err(|e| fs_err("rm", volume, path, e))
            }
        })
    }

    fn mkdir(&self, targets: &[String], parents: bool) -> anyhow::Result<()> {
        self.each_rw(targets, |fs, volume, path| {
            if !parents {
                return fs.mkdir(path).map_err(|e| fs_err("mkdir", volume, path, e));
            }
            let mut at = String::new();
            for c in path.split('/').filter(|c| !c.is_empty()) {
                at.push('/');
                at.push_str(c);
                match fs.mkdir(&at) {
                    Ok(()) => {}
                    Err(FsError::Exists { .. })
                        if fs.stat(&at).map(|s| s.kind == Kind::Dir).unwrap_or(false) => {}
                    Err(e) => return Err(fs_err("mkdir", volume, &at, e)),
                }
            }
            Ok(())
        })
    }

    fn rmdir(&self, targets: &[String]) -> anyhow::Result<()> {
        self.each_rw(targets, |fs, volume, path| {
            fs.rmdir(path).map_err(|e| fs_err("rmdir", volume, path, e))
        })
    }

    fn mv(&self, src: &str, dst: &str) -> anyhow::Result<()> {
        let (sv, sp) = vol_target(src)?;
        let (dv, mut dp) = vol_target(dst)?;
        if sv != dv {
            bail!("mv {src} {dst}: both paths must be in the same volume");
        }
        let m = self.mount(&sv, Mode::Rw)?;
        let fs = m.fs();
        if let Ok(st) = fs.stat(&dp) {
            if st.kind == Kind::Dir && fs.stat(&sp).map(|s| s.kind != Kind::Dir).unwrap_or(true) {
                dp = join(&dp, basename(&sp));
            }
        }
        fs.rename(&sp, &dp).map_err(|e| {
            let at = if matches!(e, FsError::NotFound { .. }) && fs.stat(&sp).is_err() {
                &sp
            } else {
                &dp
            };
            fs_err("mv", &sv, at, e)
        })?;
        m.unmount().context("unmount")?;
        Ok(())
    }

    fn du(&self, targets: &[String]) -> anyhow::Result<()> {
        let mut mounts: HashMap<String, Mounted> = HashMap::new();
        for t in targets {
            let (volume, path) = vol_target(t)?;
            if !mounts.contains_key(&volume) {
                mounts.insert(volume.clone(), self.mount(&volume, Mode::Ro)?);
            }
            let (alloc, size) = usage(mounts[&volume].fs(), &volume, &path)?;
            println!("{alloc}\t{size}\t{volume}:{path}");
        }
        for (_, m) in mounts {
            m.unmount().context("unmount")?;
        }
        Ok(())
    }

    fn df(&self, volume: &str) -> anyhow::Result<()> {
        let m = self.mount(volume, Mode::Ro)?;
        let s = m.fs().statfs();
        let line = |what: &str, n: u64| println!("{what:<14}{n:>16}  {}", fmt_size(n));
        println!("volume        {volume}");
        line("total", s.total_bytes);
        line("used", s.used_bytes);
        line("free", s.free_bytes);
        line("orphans", s.orphan_bytes);
        println!("orphan_files  {:>16}", s.orphan_files);
        println!("files         {:>16}", s.files);
        println!("dirs          {:>16}", s.dirs);
        println!("block_size    {:>16}", s.block_size);
        println!("lsn           {:>16}", s.lsn);
        let own = m.mount_id();
        let mounts = self.rt.block_on(async {
            let mut c = crate::cluster::connect(&self.ctrl).await?;
            c.list_mounts(VolumeName {
                name: volume.to_string(),
            })
            .await
            .map_err(|s| crate::cluster::status_err("list mounts", s))
        });
        match mounts {
            Ok(r) => {
                for mi in r.into_inner().mounts {
                    if mi.mount_id == own {
                        continue;
                    }
                    println!(
                        "mount {} {} host={:?} lsn={} open_files={} expires_in={}ms",
                        mi.mount_id,
                        if mi.rw { "rw" } else { "ro" },
                        mi.host,
                        mi.replay_lsn,
                        mi.open_inodes.len(),
                        mi.expires_in_ms
                    );
                }
            }
            Err(e) => eprintln!("warning: cannot list mounts: {e:#}"),
        }
        m.unmount().context("unmount")?;
        Ok(())
    }

    fn fsck(&self, volume: &str) -> anyhow::Result<()> {
        let m = self.mount(volume, Mode::Ro)?;
        let dev: &dyn pikafs_fs::BlockDevice = &**m.device();
        // A live writer may rewrite the journal under us: a failed check
        // is retried a few times before it is believed.
        let mut report = fsck(dev).with_context(|| format!("fsck {volume}"))?;
        for _ in 0..3 {
            if report.is_clean() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            report = fsck(dev).with_context(|| format!("fsck {volume}"))?;
        }
        for n in &report.notes {
            println!("note: {n}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        println!(
            "{volume}: {} files, {} dirs, {} orphans; blocks used {} pending {} free {}; journal {} txns, lsn {}..{}",
            report.files,
            report.dirs,
            report.orphans,
            report.used_blocks,
            report.pending_blocks,
            report.free_blocks,
            report.journal_txns,
            report.checkpoint_lsn,
            report.committed_lsn
        );
        m.unmount().context("unmount")?;
        if !report.is_clean() {
            bail!("fsck {volume}: {} errors", report.errors.len());
        }
        println!("{volume}: clean");
        Ok(())
    }

    /// Runs `f` on each target under one RW mount per volume.
    fn each_rw(
        &self,
        targets: &[String],
        mut f: impl FnMut(&pikafs_fs::Fs, &str, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let parsed: Vec<(String, String)> = targets
            .iter()
            .map(|t| vol_target(t))
            .collect::<anyhow::Result<_>>()?;
        let mut mounts: HashMap<String, Mounted> = HashMap::new();
        for (volume, _) in &parsed {
            if !mounts.contains_key(volume) {
                mounts.insert(volume.clone(), self.mount(volume, Mode::Rw)?);
            }
        }
        let mut result = Ok(());
        for (volume, path) in &parsed {
            if let Err(e) = f(mounts[volume].fs(), volume, path) {
                result = Err(e);
                break;
            }
        }
        for (_, m) in mounts {
            m.unmount().context("unmount")?;
        }
        result
    }

    fn stress(&self, a: StressArgs) -> anyhow::Result<()> {
        let m = self.mount(&a.volume, Mode::Rw)?;
        let res = stress(&m, &a);
        if res.is_ok() {
            m.unmount().context("unmount")?;
        }
        res
    }

    fn bench(&self, a: BenchArgs) -> anyhow::Result<()> {
        bench(self, &a)
    }
}

/// (allocated, apparent) bytes below `path`.
fn usage(fs: &pikafs_fs::Fs, volume: &str, path: &str) -> anyhow::Result<(u64, u64)> {
    let st = fs.stat(path).map_err(|e| fs_err("du", volume, path, e))?;
    if st.kind != Kind::Dir {
        return Ok((st.allocated, st.size));
    }
    let mut sum = (0, 0);
    for e in fs
        .readdir(path)
        .map_err(|e| fs_err("du", volume, path, e))?
    {
        let (a, s) = usage(fs, volume, &join(path, &e.name))?;
        sum.0 += a;
        sum.1 += s;
    }
    Ok(sum)
}

fn remove_tree(fs: &pikafs_fs::Fs, volume: &str, path: &str) -> anyhow::Result<()> {
    for e in fs
        .readdir(path)
        .map_err(|e| fs_err("rm", volume, path, e))?
    {
        let p = join(path, &e.name);
        if e.kind == Kind::Dir {
            remove_tree(fs, volume, &p)?;
        } else {
            fs.unlink(&p).map_err(|e| fs_err("rm", volume, &p, e))?;
        }
    }
    if path == "/" {
        return Ok(());
    }
    fs.rmdir(path).map_err(|e| fs_err("rm", volume, path, e))
}

/// One side of a copy.
enum Ep<'a> {
    Vol {
        fs: &'a pikafs_fs::Fs,
        volume: String,
        path: String,
    },
    Local(PathBuf),
}

impl<'a> Ep<'a> {
    fn new(loc: &Loc, mounts: &'a HashMap<String, Mounted>) -> Ep<'a> {
        match loc {
            Loc::Vol { volume, path } => Ep::Vol {
                fs: mounts[volume].fs(),
                volume: volume.clone(),
                path: path.clone(),
            },
            Loc::Local(p) => Ep::Local(p.clone()),
        }
    }

    fn show(&self) -> String {
        match self {
            Ep::Vol { volume, path, .. } => format!("{volume}:{path}"),
            Ep::Local(p) => p.display().to_string(),
        }
    }

    fn name(&self) -> String {
        match self {
            Ep::Vol { path, .. } => basename(path).to_string(),
            Ep::Local(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    fn child(&self, name: &str) -> Ep<'a> {
        match self {
            Ep::Vol { fs, volume, path } => Ep::Vol {
                fs,
                volume: volume.clone(),
                path: join(path, name),
            },
            Ep::Local(p) => Ep::Local(p.join(name)),
        }
    }

    /// `None` when absent.
    fn kind(&self) -> anyhow::Result<Option<Kind>> {
        match self {
            Ep::Vol { fs, volume, path } => match fs.stat(path) {
                Ok(st) => Ok(Some(st.kind)),
                Err(FsError::NotFound { .. }) => Ok(None),
                Err(e) => Err(fs_err("cp", volume, path, e)),
            },
            Ep::Local(p) => match std::fs::metadata(p) {
                Ok(md) if md.is_dir() => Ok(Some(Kind::Dir)),
                Ok(_) => Ok(Some(Kind::File)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("cp {}: {e}", p.display())),
            },
        }
    }

    fn list(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Ep::Vol { fs, volume, path } => Ok(fs
                .readdir(path)
                .map_err(|e| fs_err("cp", volume, path, e))?
                .into_iter()
                .map(|e| e.name)
                .collect()),
            Ep::Local(p) => {
                let mut v = Vec::new();
                for e in std::fs::read_dir(p).map_err(|e| anyhow!("cp {}: {e}", p.display()))? {
                    let e = e.map_err(|e| anyhow!("cp {}: {e}", p.display()))?;
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
                v.sort();
                Ok(v)
            }
        }
    }

    fn make_dir(&self) -> anyhow::Result<()> {
        match self.kind()? {
            Some(Kind::Dir) => return Ok(()),
            Some(_) => bail!("cp {}: file exists (not a directory)", self.show()),
            None => {}
        }
        match self {
            Ep::Vol { fs, volume, path } => {
                fs.mkdir(path).map_err(|e| fs_err("cp", volume, path, e))
            }
            Ep::Local(p) => std::fs::create_dir(p).map_err(|e| anyhow!("cp {}: {e}", p.display())),
        }
    }
}

fn copy_tree(src: &Ep, dst: &Ep) -> anyhow::Result<()> {
    if src.kind()? == Some(Kind::Dir) {
        dst.make_dir()?;
        for name in src.list()? {
            copy_tree(&src.child(&name), &dst.child(&name))?;
        }
        Ok(())
    } else {
        copy_file(src, dst)
    }
}

fn copy_file(src: &Ep, dst: &Ep) -> anyhow::Result<()> {
    enum Reader {
        Vol(pikafs_fs::File, String, String),
        Local(std::fs::File, PathBuf),
    }
    let mut reader = match src {
        Ep::Vol { fs, volume, path } => Reader::Vol(
            fs.open(path, OpenFlags::read())
                .map_err(|e| fs_err("cp", volume, path, e))?,
            volume.clone(),
            path.clone(),
        ),
        Ep::Local(p) => Reader::Local(
            std::fs::File::open(p).map_err(|e| anyhow!("cp {}: {e}", p.display()))?,
            p.clone(),
        ),
    };
    enum Writer {
        Vol(pikafs_fs::File, String, String),
        Local(std::fs::File, PathBuf),
    }
    let mut writer = match dst {
        Ep::Vol { fs, volume, path } => Writer::Vol(
            fs.open(
                path,
                OpenFlags {
                    truncate: true,
                    ..OpenFlags::create()
                },
            )
            .map_err(|e| fs_err("cp", volume, path, e))?,
            volume.clone(),
            path.clone(),
        ),
        Ep::Local(p) => Writer::Local(
            std::fs::File::create(p).map_err(|e| anyhow!("cp {}: {e}", p.display()))?,
            p.clone(),
        ),
    };
    let mut off = 0u64;
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let data: Vec<u8> = match &mut reader {
            Reader::Vol(f, v, p) => f
                .pread(off, COPY_CHUNK)
                .map_err(|e| fs_err("cp", v, p, e))?,
            Reader::Local(f, p) => {
                let n = read_full(f, &mut buf).map_err(|e| anyhow!("cp {}: {e}", p.display()))?;
                buf[..n].to_vec()
            }
        };
        if data.is_empty() {
            break;
        }
        match &mut writer {
            Writer::Vol(f, v, p) => f.pwrite(off, &data).map_err(|e| fs_err("cp", v, p, e))?,
            Writer::Local(f, p) => f
                .write_all(&data)
                .map_err(|e| anyhow!("cp {}: {e}", p.display()))?,
        }
        off += data.len() as u64;
    }
    if let Writer::Vol(f, v, p) = &writer {
        f.fsync().map_err(|e| fs_err("cp", v, p, e))?;
    }
    Ok(())
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The byte at `off` of a stress file of generation `gen`. The
/// integration tests (`tests/fs/crash.rs`) recompute it: keep in step.
pub fn stress_byte(gen: u64, off: u64) -> u8 {
    (gen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (off % 251) as u8 ^ (off >> 12) as u8
}

fn stress_bytes(gen: u64, from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|o| stress_byte(gen, o))
        .collect()
}

/// The stress writer: one thread, each step durable before it is
/// reported. Prints `TRY <seq> <effects>` before a step and `OK <seq>`
/// after it; effects are `;`-separated `FILE <path> <gen> <len>` or
/// `GONE <path>`. After a crash every path is in its last OK state, or
/// in the state of a final TRY without OK.
fn stress(m: &Mounted, a: &StressArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let fs = m.fs();
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = norm(&a.dir);
    match fs.mkdir(&dir) {
        Ok(()) | Err(FsError::Exists { .. }) => {}
        Err(e) => return Err(fs_err("stress mkdir", &a.volume, &dir, e)),
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "SEED {seed}")?;
    // path -> (gen, len) of the files this run created.
    let mut files: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // Earlier runs' files are left alone (not in the model).
    let gen_base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut seq = 0u64;
    let mut next_gen = 0u64;
    let err = |what: &str, p: &str, e: FsError| fs_err(&format!("stress {what}"), &a.volume, p, e);
    while Instant::now() < deadline {
        seq += 1;
        let names: Vec<String> = files.keys().cloned().collect();
        let pick = |rng: &mut rand::rngs::StdRng| names[rng.gen_range(0..names.len())].clone();
        let roll = rng.gen_range(0..100);
        if names.len() < 3 || (roll < 25 && names.len() < 24) {
            next_gen += 1;
            let gen = gen_base + next_gen;
            let path = join(&dir, &format!("f{next_gen}"));
            let len = rng.gen_range(0..a.max_write) as u64;
            writeln!(out, "TRY {seq} FILE {path} {gen} {len}")?;
            let f = fs
                .open(
                    &path,
                    OpenFlags {
                        truncate: true,
                        ..OpenFlags::create()
                    },
                )
                .map_err(|e| err("create", &path, e))?;
            let data = stress_bytes(gen, 0, len as usize);
            write_reclaiming(m, &f, 0, &data).map_err(|e| err("write", &path, e))?;
            f.fsync().map_err(|e| err("fsync", &path, e))?;
            files.insert(path, (gen, len));
        } else if roll < 70 {
            let path = pick(&mut rng);
            let (gen, len) = files[&path];
            let add = rng.gen_range(1..a.max_write) as u64;
            writeln!(out, "TRY {seq} FILE {path} {gen} {}", len + add)?;
            let f = fs
                .open(
                    &path,
                    OpenFlags {
                        write: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| err("open", &path, e))?;
            let data = stress_bytes(gen, len, add as usize);
            write_reclaiming(m, &f, len, &data).map_err(|e| err("append", &path, e))?;
            f.fsync().map_err(|e| err("fsync", &path, e))?;
            files.insert(path, (gen, len + add));
        } else if roll < 88 {
            let from = pick(&mut rng);
            let to = if rng.gen_bool(0.5) {
                pick(&mut rng)
            } else {
                next_gen += 1;
                join(&dir, &format!("f{next_gen}"))
            };
            if from == to {
                writeln!(out, "OK {seq}")?;
                continue;
            }
            let (gen, len) = files[&from];
            writeln!(out, "TRY {seq} GONE {from};FILE {to} {gen} {len}")?;
            fs.rename(&from, &to).map_err(|e| err("rename", &from, e))?;
            files.remove(&from);
            files.insert(to, (gen, len));
        } else {
            let path = pick(&mut rng);
            writeln!(out, "TRY {seq} GONE {path}")?;
            fs.unlink(&path).map_err(|e| err("unlink", &path, e))?;
            files.remove(&path);
        }
        writeln!(out, "OK {seq}")?;
    }
    writeln!(out, "DONE {seq}")?;
    Ok(())
}

/// `pwrite`, retried once after freeing orphans on `NoSpace` (unlinked
/// files are otherwise freed at the next lease renewal).
fn write_reclaiming(
    m: &Mounted,
    f: &pikafs_fs::File,
    off: u64,
    data: &[u8],
) -> Result<(), FsError> {
    match f.pwrite(off, data) {
        Err(FsError::NoSpace) => {
            m.reclaim();
            f.pwrite(off, data)
        }
        r => r,
    }
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (pct(&v, 0.50), pct(&v, 0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `n` appends of `block` + fdatasync into a new file preallocated with
/// `FALLOC_FL_KEEP_SIZE` (RocksDB's WAL pattern); the latency of each.
fn local_appends(path: &Path, n: usize, block: &[u8]) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::io::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    // SAFETY: fallocate(2) on a file descriptor we own.
    unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            ((n + 16) * block.len()) as libc::off_t,
        )
    };
    f.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(block).context("local append")?;
        f.sync_data().context("local fdatasync")?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

fn bench(tools: &Tools, a: &BenchArgs) -> anyhow::Result<()> {
    let n = a.ops.max(10);
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;
    let local = a
        .dir
        .join(format!("pikafs-fs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&local).with_context(|| format!("create {}", local.display()))?;
    let result = bench_inner(tools, a, n, &local);
    let _ = std::fs::remove_dir_all(&local);
    result
}

fn bench_inner(tools: &Tools, a: &BenchArgs, n: usize, local: &Path) -> anyhow::Result<()> {
    let rw = tools.mount(&a.volume, Mode::Rw)?;
    let fs = rw.fs();
    let dir = format!("/pikafs-bench-{}", std::process::id());
    fs.mkdir(&dir)
        .map_err(|e| fs_err("bench", &a.volume, &dir, e))?;
    let block = vec![0x5au8; 4096];

    // 1. WAL pattern: append 4 KiB + fsync into a preallocated file.
    let wal = join(&dir, "wal");
    let f = fs
        .open(&wal, OpenFlags::create())
        .map_err(|e| fs_err("bench", &a.volume, &wal, e))?;
    f.fallocate(0, (n as u64 + 16) * 4096, true)
        .map_err(|e| fs_err("bench", &a.volume, &wal, e))?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.append(&block)
            .and_then(|_| f.fsync())
            .map_err(|e| fs_err("bench", &a.volume, &wal, e))?;
        lat.push(t.elapsed());
    }
    drop(f);
    let (p50, p99) = summary(lat);

    let lat = local_appends(&local.join("wal"), n, &block)?;
    let (l50, l99) = summary(lat);
    println!(
        "append 4KiB + fsync   pikafs p50 {} p99 {} | local p50 {} p99 {} | ratio p50 {:.2}x",
        us(p50),
        us(p99),
        us(l50),
        us(l99),
        p50.as_secs_f64() / l50.as_secs_f64().max(1e-9)
    );
    // Context, not the target: three replicas on one disk flush at once.
    // Three local writers doing the same appends concurrently show what that
    // costs here before any software runs (on separate hosts it is zero).
    let three = std::thread::scope(|sc| {
        let jobs: Vec<_> = (0..3)
            .map(|i| {
                let (path, block) = (local.join(format!("wal{i}")), &block);
                sc.spawn(move || local_appends(&path, n, block))
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .map_err(|_| anyhow::anyhow!("local writer panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let (t50, t99) = summary(three.into_iter().flatten().collect());
    println!(
        "  (3 local writers at once, one disk: p50 {} p99 {}; pikafs / that p50 {:.2}x)",
        us(t50),
        us(t99),
        p50.as_secs_f64() / t50.as_secs_f64().max(1e-9)
    );

    // 2. create + write 4 KiB + fsync + close.
    let files = (n / 2).max(10);
    let t = Instant::now();
    for i in 0..files {
        let p = join(&dir, &format!("small{i}"));
        let f = fs
            .open(&p, OpenFlags::create())
            .map_err(|e| fs_err("bench", &a.volume, &p, e))?;
        f.pwrite(0, &block)
            .and_then(|_| f.fsync())
            .map_err(|e| fs_err("bench", &a.volume, &p, e))?;
    }
    let pk_rate = files as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..files {
        let p = local.join(format!("small{i}"));
        let mut f = std::fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        f.write_all(&block).context("local write")?;
        f.sync_all().context("local fsync")?;
    }
    let l_rate = files as f64 / t.elapsed().as_secs_f64();
    println!(
        "create+4KiB+fsync     pikafs {pk_rate:.0} files/s | local {l_rate:.0} files/s | {:.0}%",
        pk_rate / l_rate * 100.0
    );

    // 3. RO visibility lag: RW fsync returns -> RO sees the size and bytes.
    let ro = tools.mount(&a.volume, Mode::Ro)?;
    let rx = ro.subscribe();
    let lagp = join(&dir, "lag");
    let f = fs
        .open(&lagp, OpenFlags::create())
        .map_err(|e| fs_err("bench", &a.volume, &lagp, e))?;
    f.fallocate(0, (n as u64 + 16) * 4096, true)
        .map_err(|e| fs_err("bench", &a.volume, &lagp, e))?;
    let mut lags = Vec::with_capacity(n);
    let mut pushed_hits = 0usize;
    let rounds = n.min(300);
    for i in 0..rounds {
        let mut rec = block.clone();
        rec[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.append(&rec)
            .and_then(|_| f.fsync())
            .map_err(|e| fs_err("bench", &a.volume, &lagp, e))?;
        let t0 = Instant::now();
        let want = (i as u64 + 1) * 4096;
        let limit = t0 + Duration::from_secs(5);
        loop {
            if let Ok(st) = ro.fs().stat(&lagp) {
                if st.size >= want {
                    let rf = ro
                        .fs()
                        .open(&lagp, OpenFlags::read())
                        .map_err(|e| fs_err("bench ro", &a.volume, &lagp, e))?;
                    let got = rf
                        .pread(want - 4096, 4096)
                        .map_err(|e| fs_err("bench ro", &a.volume, &lagp, e))?;
                    anyhow::ensure!(got == rec, "RO read wrong bytes at record {i}");
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "RO did not see record {i} within 5s"
            );
            if rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                pushed_hits += 1;
            }
        }
        lags.push(t0.elapsed());
        while rx.try_recv().is_ok() {}
    }
    drop(f);
    let (g50, g99) = summary(lags);
    println!(
        "RO visibility lag     p50 {} p99 {} ({rounds} fsyncs, {pushed_hits} woken by notification)",
        us(g50),
        us(g99)
    );
    ro.unmount().context("unmount ro")?;
    remove_tree(fs, &a.volume, &dir)?;
    rw.unmount().context("unmount")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            parse_loc("vol0:/a//b/"),
            Loc::Vol {
                volume: "vol0".into(),
                path: "/a/b".into()
            }
        );
        assert_eq!(
            parse_loc("vol0:"),
            Loc::Vol {
                volume: "vol0".into(),
                path: "/".into()
            }
        );
        assert_eq!(parse_loc("./x:/y"), Loc::Local("./x:/y".into()));
        assert_eq!(parse_loc("/tmp/a"), Loc::Local("/tmp/a".into()));
        assert_eq!(parse_loc("a:b"), Loc::Local("a:b".into()));
        assert_eq!(vol_target("vol0").unwrap(), ("vol0".into(), "/".into()));
        assert!(vol_target("/tmp/x").is_err());
        assert_eq!(basename("/a/b"), "b");
    }

    #[test]
    fn errors_name_the_path_once() {
        let e = fs_err(
            "cp",
            "vol0",
            "/a/b",
            FsError::NotFound {
                path: "/a/b".into(),
            },
        );
        assert_eq!(e.to_string(), "cp vol0:/a/b: no such file or directory");
    }

    #[test]
    fn flags_parse() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct T {
            #[command(subcommand)]
            cmd: FsCmd,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("fs").chain(args.iter().copied())).map(|t| t.cmd)
        };
        assert!(matches!(
            parse(&["mkfs", "v", "--force", "--block-size", "64KiB"]).unwrap(),
            FsCmd::Mkfs {
                force: true,
                block_size: Some(65536),
                ..
            }
        ));
        assert!(matches!(
            parse(&["ls", "-l", "v:/"]).unwrap(),
            FsCmd::Ls { long: true, .. }
        ));
        assert!(matches!(
            parse(&["cp", "-r", "a", "v:/b"]).unwrap(),
            FsCmd::Cp {
                recursive: true,
                ..
            }
        ));
        assert!(matches!(
            parse(&["rm", "-rf", "v:/a", "v:/b"]).unwrap(),
            FsCmd::Rm { recursive: true, force: true, ref targets } if targets.len() == 2
        ));
        assert!(matches!(
            parse(&["mkdir", "-p", "v:/a/b"]).unwrap(),
            FsCmd::Mkdir { parents: true, .. }
        ));
        assert!(parse(&["rm"]).is_err(), "rm needs a target");
        assert!(matches!(
            parse(&["stress", "v", "--seconds", "2"]).unwrap(),
            FsCmd::Stress(_)
        ));
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (p50, p99) = summary(v);
        assert_eq!(p50, Duration::from_millis(50));
        assert_eq!(p99, Duration::from_millis(99));
    }
}
