//! `pikafs mount` end to end on a real cluster: a RW and an RO FUSE mount
//! of one volume in `pikafs mount` processes, the lease refusing a second
//! writer, RO visibility of the writer's fsync'd changes, and a clean
//! unmount on SIGTERM that leaves the data on the volume.
//!
//! Every mount is removed on drop (SIGTERM, then `fusermount3 -u -z`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pikafs_fs::{MkfsOptions, Mode, MountOptions, Mounted, OpenFlags};
use pikafs_testkit::{pikafs_bin, Proc};
use pikafs_testkit::{Cluster, ClusterOptions};

fn mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `pikafs mount` process; unmounted on drop whatever happened.
struct MountProc {
    proc: Proc,
    dir: PathBuf,
}

impl MountProc {
    fn start(ctrl: &str, vol: &str, dir: &Path, ro: bool, log: &Path) -> MountProc {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let mut args: Vec<String> = ["--ctrl", ctrl, "mount", vol]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(dir.to_string_lossy().into_owned());
        if ro {
            args.push("--ro".into());
        }
        let proc = Proc::spawn("mount", &args, log).expect("spawn pikafs mount");
        let m = MountProc {
            proc,
            dir: dir.to_path_buf(),
        };
        wait_until(
            &format!("{} mounted (log {})", dir.display(), log.display()),
            Duration::from_secs(30),
            || mounted(dir),
        );
        m
    }

    /// SIGTERM; the process must unmount and exit 0.
    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let st = self.proc.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "pikafs mount exit {st:?}; log:\n{}",
            std::fs::read_to_string(&self.proc.log).unwrap_or_default()
        );
        assert!(!mounted(&self.dir), "still mounted after exit");
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(10));
        let _ = Command::new("timeout")
            .args(["10", "fusermount3", "-u", "-z"])
            .arg(&self.dir)
            .output();
    }
}

#[test]
fn rw_and_ro_mount_processes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt
        .block_on(Cluster::start(ClusterOptions {
            mount_lease: Some(Duration::from_secs(3)),
            ..ClusterOptions::default()
        }))
        .expect("cluster starts");
    rt.block_on(cluster.create_volume("v", "1G"))
        .expect("volume created");
    let ctrl = cluster.ctrl_url();
    pikafs_fs::format(
        &MountOptions::new(&ctrl, "v", Mode::Rw),
        &MkfsOptions::default(),
        false,
        rt.handle(),
    )
    .expect("mkfs");

    let tmp = tempfile::tempdir().expect("tempdir");
    let (rw_dir, ro_dir) = (tmp.path().join("rw"), tmp.path().join("ro"));
    let rw = MountProc::start(&ctrl, "v", &rw_dir, false, &tmp.path().join("rw.log"));
    let ro = MountProc::start(&ctrl, "v", &ro_dir, true, &tmp.path().join("ro.log"));

    // A second writer is refused while the first holds the lease.
    let dir2 = tmp.path().join("rw2");
    std::fs::create_dir_all(&dir2).unwrap();
    let out = Command::new("timeout")
        .arg("60")
        .arg(pikafs_bin())
        .args(["--ctrl", &ctrl, "mount", "v"])
        .arg(&dir2)
        .output()
        .expect("run second mount");
    assert!(!out.status.success(), "second RW mount succeeded");
    assert!(!mounted(&dir2));

    // The writer's fsync'd data and names reach the RO mount.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir(rw_dir.join("d")).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(rw_dir.join("d/f")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    wait_until("RO sees d/f", Duration::from_secs(10), || {
        std::fs::read(ro_dir.join("d/f")).ok().as_deref() == Some(&data[..])
    });
    std::fs::rename(rw_dir.join("d/f"), rw_dir.join("g")).unwrap();
    wait_until("RO sees the rename", Duration::from_secs(10), || {
        ro_dir.join("g").exists() && !ro_dir.join("d/f").exists()
    });
    assert_eq!(
        std::fs::write(ro_dir.join("x"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );

    // Owners, modes, links and times reach the RO mount process through
    // the writer's commit notifications.
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let g = rw_dir.join("g");
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(&g, Some(4321), Some(8765)).unwrap();
        std::fs::hard_link(&g, rw_dir.join("d/g2")).unwrap();
        std::os::unix::fs::symlink("../g", rw_dir.join("d/ln")).unwrap();
        let times = [
            libc::timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 123,
            },
            libc::timespec {
                tv_sec: 1_234_567_891,
                tv_nsec: 456,
            },
        ];
        let gp = std::ffi::CString::new(g.to_str().unwrap()).unwrap();
        // SAFETY: a valid path and a two-element timespec array.
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, gp.as_ptr(), times.as_ptr(), 0) },
            0
        );
        // Last: once the RO has it, it has everything before it (the
        // journal is applied in order).
        let fifo = std::ffi::CString::new(rw_dir.join("d/p").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        wait_until("RO sees the fifo", Duration::from_secs(10), || {
            ro_dir.join("d/p").exists()
        });
        let m = std::fs::metadata(ro_dir.join("d/g2")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.nlink()),
            (0o640, 4321, 8765, 2)
        );
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_891, 456));
        assert_eq!(
            std::fs::read_link(ro_dir.join("d/ln")).unwrap(),
            std::path::PathBuf::from("../g")
        );
        assert_eq!(std::fs::read(ro_dir.join("d/ln")).unwrap(), data);
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(ro_dir.join("d/p"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    ro.stop();
    rw.stop();

    // The lease was released: a new writer mounts at once and sees the data.
    let m = Mounted::open(MountOptions::new(&ctrl, "v", Mode::Rw), rt.handle().clone())
        .expect("remount rw");
    let f = m.fs().open("/g", OpenFlags::read()).expect("open /g");
    assert_eq!(f.pread(0, data.len() + 10).expect("read /g"), data);
    drop(f);
    m.unmount().expect("unmount");
}
