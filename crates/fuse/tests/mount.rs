//! Real FUSE mounts of a file-image fs, driven with std::fs and with the
//! standard tools. Every mount is removed on drop (session unmount, then
//! `fusermount3 -u -z` as a fallback) and every external command runs
//! under `timeout`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pikafs_fs::{mkfs, FileDevice, Fs, MkfsOptions, Mode};
use pikafs_fuse::{MountOptions, Session};

const IMAGE_SIZE: u64 = 1 << 30;

struct Mnt {
    dir: PathBuf,
    session: Option<Session>,
    fs: Fs,
}

impl Drop for Mnt {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.unmount() {
                eprintln!("unmount: {e}");
            }
        }
        let _ = Command::new("timeout")
            .args(["10", "fusermount3", "-u", "-z"])
            .arg(&self.dir)
            .output();
    }
}

fn image(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let dev = FileDevice::create(&img, IMAGE_SIZE).expect("create image");
    mkfs(&dev, &MkfsOptions::default()).expect("mkfs");
    img
}

fn mount_image(img: &Path, dir: &Path, mode: Mode) -> Mnt {
    let mnt = dir.join(match mode {
        Mode::Rw => "rw",
        Mode::Ro => "ro",
    });
    std::fs::create_dir_all(&mnt).expect("mkdir mountpoint");
    let dev = FileDevice::open(img).expect("open image");
    let fs = Fs::mount(Arc::new(dev), mode).expect("mount fs");
    let opts = MountOptions {
        ro: mode == Mode::Ro,
        catch_up_interval: Some(Duration::from_millis(2)),
        ..MountOptions::default()
    };
    let session = pikafs_fuse::mount(fs.clone(), &mnt, &opts).expect("fuse mount");
    Mnt {
        dir: mnt,
        session: Some(session),
        fs,
    }
}

/// Runs `sh -c script` (with a timeout) and returns stdout; panics with
/// stderr on failure.
fn sh(script: &str) -> String {
    let out = Command::new("timeout")
        .args(["120", "sh", "-c", script])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn std_fs_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path());
    let m = mount_image(&img, tmp.path(), Mode::Rw);
    let d = &m.dir;

    std::fs::create_dir(d.join("a")).unwrap();
    std::fs::create_dir(d.join("a/b")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(d.join("a/b/f"), &data).unwrap();
    assert_eq!(std::fs::read(d.join("a/b/f")).unwrap(), data);
    assert_eq!(std::fs::metadata(d.join("a/b/f")).unwrap().len(), 3_000_000);
    // The native view agrees.
    assert_eq!(m.fs.stat("/a/b/f").unwrap().size, 3_000_000);

    // pwrite into the middle, past the end (hole), truncate both ways.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join("a/b/f"))
        .unwrap();
    f.write_all_at(b"hello", 100).unwrap();
    f.write_all_at(b"tail", 5_000_000).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact_at(&mut buf, 100).unwrap();
    assert_eq!(&buf, b"hello");
    let mut hole = [1u8; 16];
    f.read_exact_at(&mut hole, 4_000_000).unwrap();
    assert_eq!(hole, [0u8; 16]);
    f.set_len(10).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10);
    f.set_len(8192).unwrap();
    let mut all = Vec::new();
    (&f).seek(SeekFrom::Start(0)).unwrap();
    (&f).read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 8192);
    assert!(all[10..].iter().all(|&b| b == 0));
    f.sync_all().unwrap();
    drop(f);

    // Append mode.
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(d.join("log"))
        .unwrap();
    a.write_all(b"one\n").unwrap();
    a.write_all(b"two\n").unwrap();
    drop(a);
    assert_eq!(
        std::fs::read_to_string(d.join("log")).unwrap(),
        "one\ntwo\n"
    );

    // Rename (incl. replace and a directory with children), unlink, rmdir.
    std::fs::write(d.join("x"), b"x").unwrap();
    std::fs::rename(d.join("log"), d.join("x")).unwrap();
    assert_eq!(std::fs::read(d.join("x")).unwrap(), b"one\ntwo\n");
    assert!(!d.join("log").exists());
    std::fs::rename(d.join("a"), d.join("c")).unwrap();
    assert_eq!(std::fs::metadata(d.join("c/b/f")).unwrap().len(), 8192);
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "x"]);
    assert_eq!(
        std::fs::remove_dir(d.join("c")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_file(d.join("c/b/f")).unwrap();
    std::fs::remove_dir(d.join("c/b")).unwrap();
    std::fs::remove_dir(d.join("c")).unwrap();
    assert_eq!(
        std::fs::metadata(d.join("c")).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::create_dir(d.join("x")).unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );

    // An unlinked file stays readable through its open descriptor.
    std::fs::write(d.join("gone"), b"still here").unwrap();
    let g = std::fs::File::open(d.join("gone")).unwrap();
    std::fs::remove_file(d.join("gone")).unwrap();
    let mut s = String::new();
    (&g).read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(g.metadata().unwrap().len(), 10);

    // chmod/utimes are accepted (no-ops); statfs reports the device.
    sh(&format!(
        "chmod 600 {0}/x && touch -d @0 {0}/x",
        d.display()
    ));
    let df = sh(&format!("df -B1 --output=size {}", d.display()));
    let size: u64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        size > IMAGE_SIZE / 2 && size <= IMAGE_SIZE,
        "df size {size}"
    );
}

#[test]
fn fallocate_and_statfs() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path());
    let m = mount_image(&img, tmp.path(), Mode::Rw);
    let p = m.dir.join("pre");
    let f = std::fs::File::create(&p).unwrap();
    // SAFETY: a valid fd and plain integers.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 8 << 20) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 8 << 20);
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            16 << 20,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 8 << 20);
    assert!(m.fs.stat("/pre").unwrap().allocated >= 16 << 20);
    // Punching holes is not supported.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    assert_eq!(rc, -1);
}

#[test]
fn standard_tools() {
    if !have("rsync") {
        eprintln!("SKIP: rsync not installed (apt-get install -y rsync)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path());
    let m = mount_image(&img, tmp.path(), Mode::Rw);
    let src = tmp.path().join("src");
    let back = tmp.path().join("back");
    let d = m.dir.display();
    sh(&format!(
        "mkdir -p {s}/sub/deeper && head -c 5000000 /dev/urandom > {s}/big && \
         echo hi > {s}/sub/small && head -c 4096 /dev/urandom > {s}/sub/deeper/page && \
         : > {s}/empty",
        s = src.display()
    ));
    // cp -r in and out, compare.
    sh(&format!(
        "cp -r {}/. {d}/cp && cp -r {d}/cp {}",
        src.display(),
        back.display()
    ));
    sh(&format!("diff -r {} {}", src.display(), back.display()));
    // cat, ls.
    assert_eq!(sh(&format!("cat {d}/cp/sub/small")), "hi\n");
    let ls = sh(&format!("ls {d}/cp"));
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        ["big", "empty", "sub"]
    );
    let ll = sh(&format!("ls -l {d}/cp/big"));
    assert!(ll.contains("5000000"), "{ll}");
    // dd: block writes with an offset, notrunc, read back.
    sh(&format!(
        "dd if=/dev/zero of={d}/dd bs=64k count=64 status=none && \
         printf abc | dd of={d}/dd bs=1 seek=1000 conv=notrunc status=none"
    ));
    assert_eq!(sh(&format!("stat -c %s {d}/dd")).trim(), "4194304");
    assert_eq!(
        sh(&format!("dd if={d}/dd bs=1 skip=1000 count=3 status=none")),
        "abc"
    );
    // rsync -a in, then again (nothing to do), then out; compare.
    sh(&format!("rsync -a {}/ {d}/rs/", src.display()));
    sh(&format!("rsync -a {}/ {d}/rs/", src.display()));
    let back2 = tmp.path().join("back2");
    sh(&format!("rsync -a {d}/rs/ {}/", back2.display()));
    sh(&format!("diff -r {} {}", src.display(), back2.display()));
    // rsync replaces files by rename: update one and check.
    sh(&format!(
        "echo changed > {s}/sub/small && rsync -a --checksum {s}/ {d}/rs/",
        s = src.display()
    ));
    assert_eq!(sh(&format!("cat {d}/rs/sub/small")), "changed\n");
    // The native view agrees with what the tools did.
    assert_eq!(m.fs.stat("/rs/big").unwrap().size, 5_000_000);
}

#[test]
fn fio_verify() {
    if !have("fio") {
        eprintln!("SKIP: fio not installed (apt-get install -y fio)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path());
    let m = mount_image(&img, tmp.path(), Mode::Rw);
    let out = sh(&format!(
        "fio --name=v --filename={}/f --size=64M --bs=4k --rw=randwrite \
         --verify=crc32c --do_verify=1 --direct=0 --output-format=terse --terse-version=3",
        m.dir.display()
    ));
    // Terse v3: field 5 is the error count of the job.
    let fields: Vec<&str> = out.trim().split(';').collect();
    assert_eq!(fields.get(4), Some(&"0"), "fio errors: {out}");
}

#[test]
fn ro_mount_sees_rw_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image(tmp.path());
    let rw = mount_image(&img, tmp.path(), Mode::Rw);
    let ro = mount_image(&img, tmp.path(), Mode::Ro);
    let (w, r) = (&rw.dir, &ro.dir);

    // Writes on the RO mount are refused by the kernel.
    assert_eq!(
        std::fs::write(r.join("nope"), b"x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );

    // A new file with data, after the writer's fsync.
    let mut f = std::fs::File::create(w.join("f")).unwrap();
    f.write_all(b"first").unwrap();
    f.sync_all().unwrap();
    wait_for("RO sees f", || {
        std::fs::read(r.join("f")).ok().as_deref() == Some(b"first")
    });

    // The RO keeps a descriptor open; the file grows.
    let held = std::fs::File::open(r.join("f")).unwrap();
    f.write_all(b" second").unwrap();
    f.sync_all().unwrap();
    wait_for("RO sees growth", || {
        held.metadata().map(|m| m.len()).unwrap_or(0) == 12
    });
    let mut s = String::new();
    (&held).read_to_string(&mut s).unwrap();
    assert_eq!(s, "first second");

    // Rename-replace and unlink: names follow, the open file stays readable.
    std::fs::write(w.join("g"), b"replacement").unwrap();
    std::fs::File::open(w.join("g"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::rename(w.join("g"), w.join("f")).unwrap();
    wait_for("RO sees replace", || {
        std::fs::read(r.join("f")).ok().as_deref() == Some(b"replacement")
    });
    assert!(!r.join("g").exists());
    let mut again = Vec::new();
    held.read_at(&mut [0u8; 0], 0).unwrap();
    (&held).seek(SeekFrom::Start(0)).unwrap();
    (&held).read_to_end(&mut again).unwrap();
    assert_eq!(again, b"first second");

    std::fs::create_dir(w.join("dir")).unwrap();
    std::fs::rename(w.join("f"), w.join("dir/moved")).unwrap();
    wait_for("RO sees move", || {
        r.join("dir/moved").exists() && !r.join("f").exists()
    });
    std::fs::remove_file(w.join("dir/moved")).unwrap();
    wait_for("RO sees unlink", || !r.join("dir/moved").exists());
    let listing: Vec<_> = std::fs::read_dir(r.join("dir")).unwrap().collect();
    assert!(listing.is_empty());
}

/// The attributes compared between the RW and RO views of one name.
fn posix_view(p: &Path) -> (u32, u32, u32, u64, u64, i64, i64, i64, i64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        m.size(),
        m.atime(),
        m.atime_nsec(),
        m.mtime(),
        m.mtime_nsec(),
        m.rdev(),
    )
}

fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in test paths")
}

#[test]
fn posix_metadata_through_the_kernel_and_on_ro() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    // Other users must reach the mount points for the EACCES check.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = image(tmp.path());
    let rw = mount_image(&img, tmp.path(), Mode::Rw);
    let ro = mount_image(&img, tmp.path(), Mode::Ro);
    let (w, r) = (&rw.dir, &ro.dir);

    // chmod, chown (the kernel clears set-user-ID on chown).
    std::fs::write(w.join("f"), b"payload").unwrap();
    std::fs::set_permissions(w.join("f"), std::fs::Permissions::from_mode(0o4750)).unwrap();
    assert_eq!(std::fs::metadata(w.join("f")).unwrap().mode(), 0o104750);
    std::os::unix::fs::chown(w.join("f"), Some(1234), Some(5678)).unwrap();
    let m = std::fs::metadata(w.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o750));

    // The kernel enforces the reported bits (default_permissions):
    // nobody may not read a 0750 file owned by someone else.
    if have("setpriv") {
        let denied = Command::new("timeout")
            .args([
                "10",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg("cat")
            .arg(w.join("f"))
            .output()
            .unwrap();
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
    } else {
        println!("SKIP permission check: no setpriv");
    }

    // Symlink (lstat vs stat), hard link, FIFO, char device.
    std::os::unix::fs::symlink("f", w.join("ln")).unwrap();
    assert_eq!(
        std::fs::read_link(w.join("ln")).unwrap(),
        PathBuf::from("f")
    );
    assert!(std::fs::symlink_metadata(w.join("ln"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(w.join("ln")).unwrap(), b"payload");
    std::fs::hard_link(w.join("f"), w.join("hl")).unwrap();
    assert_eq!(std::fs::metadata(w.join("f")).unwrap().nlink(), 2);
    // SAFETY: valid NUL-terminated paths; the calls only create inodes.
    unsafe {
        assert_eq!(libc::mkfifo(cpath(&w.join("fifo")).as_ptr(), 0o640), 0);
        let dev = libc::makedev(1, 3);
        assert_eq!(
            libc::mknod(cpath(&w.join("null")).as_ptr(), libc::S_IFCHR | 0o600, dev),
            0
        );
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(w.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = std::fs::symlink_metadata(w.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));

    // utimensat: explicit nanoseconds, and UTIME_OMIT keeps atime.
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 500_000_001,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 250_000_003,
        },
    ];
    let omit_atime = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 7,
        },
    ];
    // SAFETY: valid path and a two-element timespec array.
    unsafe {
        assert_eq!(
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(&w.join("hl")).as_ptr(),
                times.as_ptr(),
                0
            ),
            0
        );
        assert_eq!(
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(&w.join("fifo")).as_ptr(),
                omit_atime.as_ptr(),
                0
            ),
            0
        );
    }
    let m = std::fs::metadata(w.join("f")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 500_000_001));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 250_000_003));
    let fifo = std::fs::symlink_metadata(w.join("fifo")).unwrap();
    assert_eq!((fifo.mtime(), fifo.mtime_nsec()), (1_600_000_000, 7));
    assert_ne!(fifo.atime(), 0, "UTIME_OMIT left atime alone");

    // Directory link counts: 2 + subdirectories.
    std::fs::create_dir_all(w.join("d/sub")).unwrap();
    assert_eq!(std::fs::metadata(w.join("d")).unwrap().nlink(), 3);

    // The RO mount sees every attribute after catch-up.
    let names = ["f", "hl", "ln", "fifo", "null", "d", "d/sub"];
    wait_for("RO sees d/sub", || r.join("d/sub").exists());
    for n in names {
        assert_eq!(posix_view(&r.join(n)), posix_view(&w.join(n)), "{n}");
    }
    assert_eq!(
        std::fs::read_link(r.join("ln")).unwrap(),
        PathBuf::from("f")
    );
    assert_eq!(std::fs::read(r.join("hl")).unwrap(), b"payload");

    // Unlinking one name keeps the inode under the other, on both.
    std::fs::remove_file(w.join("f")).unwrap();
    assert_eq!(std::fs::metadata(w.join("hl")).unwrap().nlink(), 1);
    wait_for("RO sees the unlink", || !r.join("f").exists());
    assert_eq!(std::fs::metadata(r.join("hl")).unwrap().nlink(), 1);
    assert_eq!(std::fs::read(r.join("hl")).unwrap(), b"payload");
    // The dangling symlink stays a symlink.
    assert!(std::fs::read(r.join("ln")).is_err());
    assert!(std::fs::symlink_metadata(r.join("ln")).is_ok());

    // And it all survives the RW's unmount and a remount.
    drop(ro);
    drop(rw);
    let dev = Arc::new(FileDevice::open(&img).unwrap());
    let rep = pikafs_fs::fsck(&*dev).unwrap();
    assert!(rep.is_clean(), "{:?}", rep.errors);
    let fs = Fs::mount(dev, Mode::Ro).unwrap();
    let st = fs.stat("/hl").unwrap();
    assert_eq!((st.uid, st.gid, st.nlink, st.mode), (1234, 5678, 1, 0o750));
    assert_eq!(fs.readlink("/ln").unwrap(), b"f");
}
