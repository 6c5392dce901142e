//! The fs on a real pikafs volume: mkfs, RW and RO mounts through
//! `VolumeDevice`, fencing by a newer epoch, remount by the new writer.
//! Run with `cargo test -p pikafs-fs --features cluster-tests` after
//! building the `pikafs` binary.
#![cfg(feature = "cluster-tests")]

use std::sync::Arc;
use std::time::Duration;

use pikafs_fs::{fsck, mkfs, BlockDevice, Fs, FsError, MkfsOptions, Mode, OpenFlags, VolumeDevice};
use pikafs_testkit::{Cluster, ClusterOptions};
use pikafs_volume::{OpenOptions, VolumeClient};

async fn device(cluster: &Cluster, epoch: Option<u64>) -> Arc<VolumeDevice> {
    let opts = OpenOptions {
        epoch,
        retry_deadline: Duration::from_secs(20),
        ..OpenOptions::default()
    };
    let client = VolumeClient::open(&cluster.ctrl_url(), "fsvol", opts)
        .await
        .unwrap();
    Arc::new(VolumeDevice::new(client, tokio::runtime::Handle::current()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_on_a_volume_follows_and_fences() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("fsvol", "1GiB").await.unwrap();
    let rw_dev = device(&cluster, None).await;
    let ro_dev = device(&cluster, None).await;

    // The fs API blocks: run it off the async workers.
    let (rw, ro) = {
        let (rw_dev, ro_dev) = (rw_dev.clone(), ro_dev.clone());
        tokio::task::spawn_blocking(move || {
            mkfs(&*rw_dev, &MkfsOptions::default()).unwrap();
            let rw = Fs::mount(rw_dev, Mode::Rw).unwrap();
            let ro = Fs::mount(ro_dev, Mode::Ro).unwrap();
            rw.mkdir("/db").unwrap();
            let wal = rw.open("/db/000001.log", OpenFlags::create()).unwrap();
            wal.fallocate(0, 8 << 20, true).unwrap();
            for i in 0..50u8 {
                wal.append(&[i; 4096]).unwrap();
                wal.fsync().unwrap();
            }
            // The RocksDB WAL pattern; printed for docs/benchmarks.
            let started = std::time::Instant::now();
            let n = 200;
            let bench = rw.open("/db/bench.log", OpenFlags::create()).unwrap();
            bench.fallocate(0, 4 << 20, true).unwrap();
            for _ in 0..n {
                bench.append(&[9; 4096]).unwrap();
                bench.fsync().unwrap();
            }
            println!("append 4 KiB + fsync: {:?} each", started.elapsed() / n);
            drop(bench);
            rw.unlink("/db/bench.log").unwrap();
            let sst = rw.open("/db/000002.sst", OpenFlags::create()).unwrap();
            sst.pwrite(0, &vec![7u8; 9 << 20]).unwrap();
            sst.fsync().unwrap();
            ro.catch_up().unwrap();
            assert_eq!(ro.stat("/db/000001.log").unwrap().size, 50 * 4096);
            let f = ro.open("/db/000001.log", OpenFlags::read()).unwrap();
            let data = f.pread(0, 50 * 4096).unwrap();
            for (i, rec) in data.chunks(4096).enumerate() {
                assert!(rec.iter().all(|&b| b == i as u8), "record {i}");
            }
            assert_eq!(
                ro.open("/db/000002.sst", OpenFlags::read())
                    .unwrap()
                    .pread(0, 9 << 20)
                    .unwrap(),
                vec![7u8; 9 << 20]
            );
            (rw, ro)
        })
        .await
        .unwrap()
    };

    // A new writer takes over: bump the epoch and fence the old one.
    let out = cluster
        .cli(&["volume", "bump-epoch", "fsvol"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_dev = device(&cluster, None).await;
    assert!(new_dev.client().epoch() > rw_dev.client().epoch());
    new_dev.client().fence().await.unwrap();

    tokio::task::spawn_blocking(move || {
        let wal = rw
            .open(
                "/db/000001.log",
                OpenFlags {
                    write: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let err = wal.append(&[1; 4096]).unwrap_err();
        assert!(matches!(err, FsError::Fenced { .. }), "{err}");
        assert!(matches!(rw.mkdir("/x"), Err(FsError::Fenced { .. })));
        drop(wal);
        drop(rw);
        let rw2 = Fs::mount(new_dev.clone(), Mode::Rw).unwrap();
        assert_eq!(rw2.stat("/db/000001.log").unwrap().size, 50 * 4096);
        rw2.rename("/db/000001.log", "/db/000003.log").unwrap();
        ro.catch_up().unwrap();
        assert!(ro.stat("/db/000003.log").is_ok());
        rw2.unmount().unwrap();
        let report = fsck(&*new_dev as &dyn BlockDevice).unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
        assert_eq!(report.files, 2);
    })
    .await
    .unwrap();
}
