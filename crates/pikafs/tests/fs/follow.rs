//! RO mounts follow the RW: new files, sizes, renames and unlinks become
//! visible after the writer's fsync, woken by its notification (the
//! fallback timer is set far above the limits checked here), and readers
//! never see sizes and contents disagree.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pikafs_fs::{Mode, MountError, Mounted, OpenFlags};

use crate::common::{pct, small_mkfs, wait_until, Env};

fn record(i: u64) -> Vec<u8> {
    let mut r = vec![(i % 251) as u8; 4096];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

#[test]
fn ro_mounts_follow_the_writer_by_notification() {
    let env = Env::start(Duration::from_secs(3), "fol", "256MiB", Some(small_mkfs()));
    let rw = env.mount("fol", Mode::Rw);

    // A second writer is refused while the first holds its lease.
    match Mounted::open(env.opts("fol", Mode::Rw), env.rt.handle().clone()) {
        Err(e @ MountError::RwHeld { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("fol"), "{msg}");
        }
        other => panic!("second RW mount: {other:?}"),
    }

    // Fallback catch-up every 30 s: anything faster is the notification.
    let ro_opts = |_| {
        let mut o = env.opts("fol", Mode::Ro);
        o.catch_up_interval = Duration::from_secs(30);
        o
    };
    let ro1 = Mounted::open(ro_opts(1), env.rt.handle().clone()).unwrap();
    let ro2 = Mounted::open(ro_opts(2), env.rt.handle().clone()).unwrap();
    let changes = ro1.subscribe();
    assert!(
        !ro1.notify_addr().is_empty(),
        "RO learnt the writer's notify address"
    );

    let fs = rw.fs();
    fs.mkdir("/db").unwrap();
    let wal = fs.open("/db/wal", OpenFlags::create()).unwrap();
    wal.fallocate(0, 4 << 20, true).unwrap();

    // Concurrent readers on ro2: the size they see never shrinks, and the
    // bytes below it are always the records written.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let ro2fs = ro2.fs().clone();
        std::thread::spawn(move || {
            let mut last = 0u64;
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let Ok(f) = ro2fs.open("/db/wal", OpenFlags::read()) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let size = f.stat().unwrap().size;
                assert!(size >= last, "size went back from {last} to {size}");
                assert_eq!(size % 4096, 0, "torn record size {size}");
                last = size;
                if size > 0 {
                    let data = f.pread(0, size as usize).unwrap();
                    assert_eq!(data.len() as u64, size);
                    for (i, rec) in data.chunks(4096).enumerate() {
                        assert_eq!(rec, &record(i as u64)[..], "record {i} of {size}");
                    }
                    checks += 1;
                }
            }
            checks
        })
    };

    let mut lags = Vec::new();
    let n = 200u64;
    for i in 0..n {
        wal.append(&record(i)).unwrap();
        wal.fsync().unwrap();
        let t0 = Instant::now();
        let want = (i + 1) * 4096;
        wait_until("RO sees the append", Duration::from_secs(5), || {
            (ro1.fs().stat("/db/wal").ok()?.size >= want).then_some(())
        });
        let f = ro1.fs().open("/db/wal", OpenFlags::read()).unwrap();
        assert_eq!(f.pread(want - 4096, 4096).unwrap(), record(i));
        lags.push(t0.elapsed());
    }
    let (p50, p99) = (pct(&lags, 0.5), pct(&lags, 0.99));
    println!("RO visibility lag over {n} fsyncs: p50 {p50:?} p99 {p99:?}");
    assert!(
        p99 < Duration::from_secs(2),
        "p99 {p99:?}: not notification-driven"
    );
    let mut got = 0;
    while changes.try_recv().is_ok() {
        got += 1;
    }
    assert!(got > 0, "subscribers heard of the catch-ups");
    assert!(ro1.fs().metrics().ro_notified_catch_ups_total.get() > 0);
    assert!(rw.fs().metrics().notify_pushes_total.get() > 0);

    // Namespace changes: each visible on both ROs well before the timer.
    let seen_on_all = |what: &str, f: &dyn Fn(&pikafs_fs::Fs) -> bool| {
        for ro in [&ro1, &ro2] {
            wait_until(what, Duration::from_secs(3), || f(ro.fs()).then_some(()));
        }
    };
    let a = fs.open("/db/000001.sst", OpenFlags::create()).unwrap();
    a.pwrite(0, b"sst one").unwrap();
    a.fsync().unwrap();
    seen_on_all("new file", &|f| {
        f.stat("/db/000001.sst")
            .map(|s| s.size == 7)
            .unwrap_or(false)
    });
    fs.rename("/db/000001.sst", "/db/000002.sst").unwrap();
    seen_on_all("rename", &|f| {
        f.stat("/db/000001.sst").is_err() && f.stat("/db/000002.sst").is_ok()
    });
    let b = fs.open("/db/CURRENT.tmp", OpenFlags::create()).unwrap();
    b.pwrite(0, b"MANIFEST-2").unwrap();
    b.fsync().unwrap();
    fs.rename("/db/CURRENT.tmp", "/db/000002.sst").unwrap();
    seen_on_all("rename replacing", &|f| {
        f.open("/db/000002.sst", OpenFlags::read())
            .and_then(|h| h.pread(0, 100))
            .map(|d| d == b"MANIFEST-2")
            .unwrap_or(false)
    });
    fs.unlink("/db/000002.sst").unwrap();
    seen_on_all("unlink", &|f| f.stat("/db/000002.sst").is_err());

    stop.store(true, Ordering::SeqCst);
    let checks = reader.join().expect("reader found no inconsistency");
    assert!(checks > 0);
    drop((a, b, wal));
    ro1.unmount().unwrap();
    ro2.unmount().unwrap();
    rw.unmount().unwrap();
    env.assert_fsck_clean("fol");
}
