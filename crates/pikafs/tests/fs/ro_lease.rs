//! An RO mount whose lease lapses at ctrl pins nothing, so the RW may
//! reuse the blocks of files it still has open: reads through handles
//! opened before the lapse must fail with `LeaseLost`, never return the
//! new owner's bytes; fresh opens work once a new lease is held.

use std::time::Duration;

use pikafs_fs::{FsError, Mode, OpenFlags};

use crate::common::{small_mkfs, wait_until, Env};

const MIB: usize = 1 << 20;
const LEASE: Duration = Duration::from_secs(2);

#[test]
fn lapsed_ro_lease_never_returns_reused_blocks() {
    let env = Env::start(LEASE, "lapse", "128MiB", Some(small_mkfs()));
    let rw = env.mount("lapse", Mode::Rw);
    let ro = env.mount("lapse", Mode::Ro);
    let fs = rw.fs();

    let f = fs.open("/a", OpenFlags::create()).unwrap();
    f.pwrite(0, &vec![b'A'; 4 * MIB]).unwrap();
    f.fsync().unwrap();
    drop(f);
    wait_until("RO sees /a", Duration::from_secs(5), || {
        (ro.fs().stat("/a").ok()?.size == 4 * MIB as u64).then_some(())
    });
    let a = ro.fs().open("/a", OpenFlags::read()).unwrap();
    assert!(a.pread(0, 4 * MIB).unwrap().iter().all(|&b| b == b'A'));

    // Occupy every other free block, so a new file can only land on /a's.
    let filler = fs.open("/filler", OpenFlags::create()).unwrap();
    let mut filled = 0u64;
    loop {
        match filler.fallocate(filled, MIB as u64, true) {
            Ok(()) => filled += MIB as u64,
            Err(FsError::NoSpace) => break,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
    filler.fsync().unwrap();

    // The RO stalls: its lease runs out locally, then at ctrl.
    let first_id = ro.mount_id();
    ro.pause_renewals(true);
    wait_until("RO sees its lease run out", 2 * LEASE, || {
        ro.read_lease_lapsed().then_some(())
    });
    let err = a.pread(0, MIB).unwrap_err();
    assert!(matches!(err, FsError::LeaseLost { .. }), "{err}");
    assert_eq!(err.errno(), libc::ESTALE);
    let err = ro.fs().open("/a", OpenFlags::read()).unwrap_err();
    assert!(matches!(err, FsError::LeaseLost { .. }), "{err}");
    std::thread::sleep(LEASE + Duration::from_millis(500));

    // The RW deletes /a; with no live RO lease nothing pins it.
    fs.unlink("/a").unwrap();
    wait_until("the RW frees /a", Duration::from_secs(10), || {
        assert!(rw.reclaim(), "RW lease lost");
        (fs.statfs().orphan_files == 0).then_some(())
    });
    let b = fs.open("/b", OpenFlags::create()).unwrap();
    b.pwrite(0, &vec![b'B'; 4 * MIB])
        .expect("only /a's freed blocks are left");
    b.fsync().unwrap();

    // The old handle must not see /b's bytes, now or after the RO renews.
    match a.pread(0, 4 * MIB) {
        Err(FsError::LeaseLost { .. }) => {}
        Ok(got) => panic!(
            "read through a lapsed lease returned data ({} B bytes)",
            got.iter().filter(|&&x| x == b'B').count()
        ),
        Err(e) => panic!("unexpected error {e}"),
    }
    ro.pause_renewals(false);
    wait_until("RO takes a new lease", Duration::from_secs(10), || {
        (!ro.read_lease_lapsed()).then_some(())
    });
    assert_ne!(ro.mount_id(), first_id, "a new lease was granted");
    assert!(ro.fs().metrics().ro_lease_lapses_total.get() >= 1);
    for _ in 0..3 {
        let err = a.pread(0, 4 * MIB).unwrap_err();
        assert!(matches!(err, FsError::LeaseLost { .. }), "{err}");
    }
    drop(a);

    // The new lease came with a catch-up: /a is gone, /b opens and reads.
    let err = ro.fs().open("/a", OpenFlags::read()).unwrap_err();
    assert!(matches!(err, FsError::NotFound { .. }), "{err}");
    let got = ro
        .fs()
        .open("/b", OpenFlags::read())
        .unwrap()
        .pread(0, 4 * MIB)
        .unwrap();
    assert!(got.iter().all(|&x| x == b'B'));
    drop((b, filler));
    ro.unmount().unwrap();
    rw.unmount().unwrap();
    env.assert_fsck_clean("lapse");
}
