//! A full volume: writes fail with ENOSPC, nothing is corrupted, and the
//! data written before stays intact after remount.

use std::time::Duration;

use pikafs_fs::{FsError, Mode, OpenFlags};

use crate::common::{small_mkfs, Env};

#[test]
fn full_volume_gives_enospc_and_no_corruption() {
    let env = Env::start(Duration::from_secs(3), "full", "64MiB", Some(small_mkfs()));
    let rw = env.mount("full", Mode::Rw);
    let fs = rw.fs();
    let keep = fs.open("/keep", OpenFlags::create()).unwrap();
    keep.pwrite(0, &vec![7u8; 1 << 20]).unwrap();
    keep.fsync().unwrap();

    let big = fs.open("/big", OpenFlags::create()).unwrap();
    let chunk = vec![9u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match big.pwrite(written, &chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 1 << 30, "never ran out of space");
    };
    assert!(matches!(err, FsError::NoSpace), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    // Top up the last blocks with block-sized writes.
    let block = vec![9u8; 64 << 10];
    while big.pwrite(written, &block).is_ok() {
        written += block.len() as u64;
    }
    // The fs still works: fsync, and new names (no data) can be made.
    big.fsync().unwrap();
    fs.mkdir("/d").unwrap();
    let small = fs.open("/d/small", OpenFlags::create()).unwrap();
    assert!(matches!(
        small.pwrite(0, &[1; 100 << 10]),
        Err(FsError::NoSpace)
    ));
    let st = fs.statfs();
    assert!(st.free_bytes < 64 << 10, "{st:?}");
    drop((big, small, keep));
    rw.unmount().unwrap();
    env.assert_fsck_clean("full");

    // Remount: every byte of the full file is there.
    let rw = env.mount("full", Mode::Rw);
    assert_eq!(rw.fs().stat("/big").unwrap().size, written);
    let data = rw
        .fs()
        .open("/big", OpenFlags::read())
        .unwrap()
        .pread(0, written as usize)
        .unwrap();
    assert!(data.iter().all(|&b| b == 9));
    let data = rw
        .fs()
        .open("/keep", OpenFlags::read())
        .unwrap()
        .pread(0, 2 << 20)
        .unwrap();
    assert_eq!(data, vec![7u8; 1 << 20]);
    // Deleting frees the space again (no RO mounts: at once on reclaim).
    rw.fs().unlink("/big").unwrap();
    assert!(rw.reclaim());
    let f = rw.fs().open("/again", OpenFlags::create()).unwrap();
    f.pwrite(0, &vec![3u8; 4 << 20]).unwrap();
    f.fsync().unwrap();
    drop(f);
    rw.unmount().unwrap();
    env.assert_fsck_clean("full");
}

#[test]
fn growfs_after_volume_grow_reaches_ro_mounts() {
    let env = Env::start(Duration::from_secs(3), "grow", "64MiB", Some(small_mkfs()));
    let ro = env.mount("grow", Mode::Ro);
    let rw = env.mount("grow", Mode::Rw);
    let before = rw.fs().statfs().total_bytes;
    let (ok, out, err) = env.cli(&["volume", "grow", "grow", "--size", "192MiB"]);
    assert!(ok, "{out}{err}");
    let after = rw.growfs().unwrap();
    assert!(after >= before + (120 << 20), "{before} -> {after}");
    // Space past the old end is usable, and an RO reads it.
    let f = rw.fs().open("/big", OpenFlags::create()).unwrap();
    let data: Vec<u8> = (0..before + (32 << 20)).map(|i| (i % 241) as u8).collect();
    f.pwrite(0, &data).unwrap();
    f.fsync().unwrap();
    crate::common::wait_until("RO sees the grown fs", Duration::from_secs(5), || {
        (ro.fs().statfs().total_bytes == after
            && ro.fs().stat("/big").ok()?.size == data.len() as u64)
            .then_some(())
    });
    let got = ro
        .fs()
        .open("/big", OpenFlags::read())
        .unwrap()
        .pread(0, data.len())
        .unwrap();
    assert!(got == data, "RO read of blocks past the old end");
    drop(f);
    rw.unmount().unwrap();
    ro.unmount().unwrap();
    env.assert_fsck_clean("grow");
}
