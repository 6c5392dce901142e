//! The `pikafs fs` tools, as a user scripts them: mkfs (and its refusal),
//! cp both ways (files and directories), ls, stat, cat, mv, rm, mkdir,
//! rmdir, du, df showing orphan space held by an RO mount, fsck, and
//! errors that name the path and the cause.

use std::time::Duration;

use pikafs_fs::{Mode, OpenFlags};

use crate::common::{wait_until, Env};

#[test]
fn cli_tools_work_end_to_end() {
    let env = Env::start(Duration::from_secs(2), "cli", "256MiB", None);
    let ok = |args: &[&str]| -> String {
        let (ok, out, err) = env.cli(args);
        assert!(ok, "pikafs {args:?} failed:\n{out}\n{err}");
        out
    };
    let fails = |args: &[&str]| -> String {
        let (ok, out, err) = env.cli(args);
        assert!(!ok, "pikafs {args:?} should fail:\n{out}");
        err
    };

    let err = fails(&["fs", "ls", "cli:/"]);
    assert!(err.contains("not formatted"), "{err}");
    assert!(ok(&["fs", "mkfs", "cli", "--block-size", "64KiB"]).contains("formatted cli"));
    let err = fails(&["fs", "mkfs", "cli"]);
    assert!(err.contains("already holds a file system"), "{err}");

    // A local tree to copy in.
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("sub/hello.txt"), b"hello pikafs\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();

    ok(&["fs", "mkdir", "-p", "cli:/data/in"]);
    ok(&["fs", "cp", "-r", src.to_str().unwrap(), "cli:/data/in"]);
    let ls = ok(&["fs", "ls", "cli:/data/in/src"]);
    assert_eq!(ls, "big.bin\nempty\nsub\n");
    let ls = ok(&["fs", "ls", "-l", "cli:/data/in/src"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-rw") && l.contains(" 3000000 ") && l.ends_with("big.bin")),
        "{ls}"
    );
    assert!(
        ls.lines().any(|l| l.starts_with('d') && l.ends_with("sub")),
        "{ls}"
    );
    assert_eq!(
        ok(&["fs", "cat", "cli:/data/in/src/sub/hello.txt"]),
        "hello pikafs\n"
    );
    let stat = ok(&["fs", "stat", "cli:/data/in/src/big.bin"]);
    assert!(stat.contains("size: 3000000"), "{stat}");
    let tree = ok(&["fs", "tree", "cli:/data"]);
    assert!(
        tree.contains("hello.txt") && tree.contains("3 directories, 3 files"),
        "{tree}"
    );
    let du = ok(&["fs", "du", "cli:/data"]);
    let apparent: u64 = du.split('\t').nth(1).unwrap().parse().unwrap();
    assert_eq!(apparent, 3_000_000 + 13);

    // Out again, recursively, byte for byte.
    let back = local.path().join("back");
    ok(&["fs", "cp", "-r", "cli:/data/in/src", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(back.join("sub/hello.txt")).unwrap(),
        b"hello pikafs\n"
    );
    assert_eq!(std::fs::read(back.join("empty")).unwrap(), b"");
    // A single file into an existing local directory keeps its name.
    ok(&[
        "fs",
        "cp",
        "cli:/data/in/src/sub/hello.txt",
        local.path().to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(local.path().join("hello.txt")).unwrap(),
        b"hello pikafs\n"
    );

    // mv, rename-replace, rm, rmdir.
    ok(&[
        "fs",
        "mv",
        "cli:/data/in/src/sub/hello.txt",
        "cli:/data/hello.txt",
    ]);
    ok(&[
        "fs",
        "mv",
        "cli:/data/hello.txt",
        "cli:/data/in/src/big.bin",
    ]);
    assert_eq!(
        ok(&["fs", "cat", "cli:/data/in/src/big.bin"]),
        "hello pikafs\n"
    );
    ok(&["fs", "rmdir", "cli:/data/in/src/sub"]);
    let err = fails(&["fs", "rmdir", "cli:/data/in"]);
    assert!(
        err.contains("error: rmdir cli:/data/in: directory not empty"),
        "{err}"
    );
    let err = fails(&[
        "fs",
        "cp",
        "cli:/data/nope/x",
        local.path().to_str().unwrap(),
    ]);
    assert!(
        err.contains("error: cp cli:/data/nope/x: no such file or directory"),
        "{err}"
    );
    let err = fails(&["fs", "rm", "cli:/data"]);
    assert!(err.contains("is a directory"), "{err}");

    // df shows the space an RO mount holds by keeping an unlinked file open.
    let ro = env.mount("cli", Mode::Ro);
    let held = ro
        .fs()
        .open("/data/in/src/empty", OpenFlags::read())
        .unwrap();
    let f2 = ro
        .fs()
        .open("/data/in/src/big.bin", OpenFlags::read())
        .unwrap();
    drop(held);
    // Make the RO's open set reach ctrl before the writer looks.
    ro.catch_up().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    ok(&["fs", "rm", "-r", "cli:/data/in"]);
    let df = ok(&["fs", "df", "cli"]);
    let field = |name: &str| -> u64 {
        df.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {df}"))
    };
    // big.bin (64 KiB, open on the RO) and maybe `empty` (0 bytes,
    // unlinked past the RO's last published position).
    assert!((1..=2).contains(&field("orphan_files")), "{df}");
    assert_eq!(field("orphans"), 64 << 10, "{df}");
    assert!(df.contains(" ro "), "df lists the RO mount: {df}");
    assert_eq!(f2.pread(0, 100).unwrap(), b"hello pikafs\n");
    drop(f2);
    ro.unmount().unwrap();
    // With no RO left the next writer frees it.
    let rw = env.mount("cli", Mode::Rw);
    wait_until("orphan freed", Duration::from_secs(5), || {
        rw.reclaim();
        (rw.fs().statfs().orphan_files == 0).then_some(())
    });
    rw.unmount().unwrap();
    assert_eq!(ok(&["fs", "ls", "cli:/data"]), "");
    let out = ok(&["fs", "fsck", "cli"]);
    assert!(out.contains("cli: clean"), "{out}");
}
