//! Safe deletion across mounts: a file unlinked or replaced by the RW
//! stays readable, byte for byte, on an RO mount that has it open; its
//! blocks are reused only after that mount closes it.

use std::time::Duration;

use pikafs_fs::{FsError, Mode, OpenFlags};

use crate::common::{small_mkfs, wait_until, Env};

const MIB: usize = 1 << 20;

#[test]
fn long_ro_read_survives_unlink_replace_and_reuse() {
    let env = Env::start(Duration::from_secs(3), "orph", "128MiB", Some(small_mkfs()));
    let rw = env.mount("orph", Mode::Rw);
    let ro = env.mount("orph", Mode::Ro);
    let fs = rw.fs();

    let write = |path: &str, byte: u8, len: usize| -> Result<(), FsError> {
        let f = fs.open(path, OpenFlags::create())?;
        f.pwrite(0, &vec![byte; len])?;
        f.fsync()
    };
    write("/a", b'A', 8 * MIB).unwrap();
    write("/d", b'D', 4 * MIB).unwrap();
    wait_until("RO sees /a and /d", Duration::from_secs(5), || {
        (ro.fs().stat("/a").ok()?.size == 8 * MIB as u64 && ro.fs().stat("/d").is_ok())
            .then_some(())
    });
    let a = ro.fs().open("/a", OpenFlags::read()).unwrap();
    let d = ro.fs().open("/d", OpenFlags::read()).unwrap();
    // Reads a MiB of /a and /d and checks them: no error, no foreign byte.
    let mut off = 0usize;
    let mut read_step = || {
        let pos = (off % (8 * MIB)) as u64;
        let got = a.pread(pos, MIB).unwrap();
        assert!(
            got.iter().all(|&b| b == b'A'),
            "foreign bytes in /a at {pos}"
        );
        let got = d.pread((off % (4 * MIB)) as u64, MIB).unwrap();
        assert!(got.iter().all(|&b| b == b'D'), "foreign bytes in /d");
        off += MIB;
    };
    read_step();

    // Replace /a by rename, unlink /d.
    write("/b", b'B', 2 * MIB).unwrap();
    fs.rename("/b", "/a").unwrap();
    fs.unlink("/d").unwrap();
    read_step();
    // Wait until the RO has applied both (it now holds two orphans open).
    wait_until("RO applies the unlink", Duration::from_secs(5), || {
        ro.fs().stat("/d").is_err().then_some(())
    });
    assert_eq!(ro.fs().stat("/a").unwrap().size, 2 * MIB as u64);
    read_step();

    // Fill every free block, asking ctrl for releases: the pinned
    // orphans must survive it.
    let filler = fs.open("/filler", OpenFlags::create()).unwrap();
    let mut filled = 0u64;
    loop {
        match filler.fallocate(filled, 4 * MIB as u64, true) {
            Ok(()) => filled += 4 * MIB as u64,
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("fallocate: {e}"),
        }
        read_step();
    }
    filler.fsync().unwrap();
    for _ in 0..3 {
        assert!(rw.reclaim());
        read_step();
        std::thread::sleep(Duration::from_millis(400));
    }
    let st = fs.statfs();
    assert_eq!(st.orphan_files, 2, "{st:?}");
    let more = fs.open("/more", OpenFlags::create()).unwrap();
    let err = more.pwrite(0, &vec![b'C'; 4 * MIB]).unwrap_err();
    assert!(matches!(err, FsError::NoSpace), "{err}");
    for _ in 0..16 {
        read_step();
    }

    // The RO closes them: after its next renewal the space comes back
    // and the RW reuses exactly those blocks.
    drop(a);
    drop(d);
    wait_until(
        "orphans released after close",
        Duration::from_secs(10),
        || {
            rw.reclaim();
            (fs.statfs().orphan_files == 0).then_some(())
        },
    );
    more.pwrite(0, &vec![b'C'; 8 * MIB]).unwrap();
    more.fsync().unwrap();
    wait_until("RO sees /more", Duration::from_secs(5), || {
        (ro.fs().stat("/more").ok()?.size == 8 * MIB as u64).then_some(())
    });
    let got = ro
        .fs()
        .open("/more", OpenFlags::read())
        .unwrap()
        .pread(0, 8 * MIB)
        .unwrap();
    assert!(got.iter().all(|&b| b == b'C'));
    let got = ro
        .fs()
        .open("/a", OpenFlags::read())
        .unwrap()
        .pread(0, 2 * MIB)
        .unwrap();
    assert!(got.iter().all(|&b| b == b'B'));
    drop((filler, more));
    ro.unmount().unwrap();
    rw.unmount().unwrap();
    env.assert_fsck_clean("orph");
}
