//! kv on a pikafs volume: RocksDB's files go through the in-process
//! FileSystem plugin to the fs layer on a replicated volume. A RW primary
//! and an RO secondary share the volume; the RW is SIGKILLed under load,
//! ctrl promotes the RO (docs/failover.md), no acknowledged write is lost,
//! and the killed node comes back as an RO following the new writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pikafs_testkit::{free_port, wait_for, Cluster, ClusterOptions, Proc};
use redis::aio::MultiplexedConnection;

pub(crate) const VOL: &str = "kvvol";

pub(crate) fn spawn(ctrl: &str, role: &str, port: u16, local: &Path) -> Proc {
    pikafs_testkit::spawn_kv(ctrl, VOL, role, port, local, &[]).expect("spawn pikafs kv")
}

pub(crate) async fn connect(port: u16, proc: &Proc) -> MultiplexedConnection {
    let url = format!("redis://127.0.0.1:{port}/");
    let r = wait_for(
        "kv node on a volume serves",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let c = redis::Client::open(url).ok()?;
                let mut c = c.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                (pong == "PONG").then_some(c)
            }
        },
    )
    .await;
    r.unwrap_or_else(|e| {
        panic!(
            "{e}; log:\n{}",
            std::fs::read_to_string(&proc.log).unwrap_or_default()
        )
    })
}

async fn get(c: &mut MultiplexedConnection, k: &str) -> Option<String> {
    redis::cmd("GET").arg(k).query_async(c).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_and_ro_on_a_volume_survive_sigkill_of_the_writer() {
    let cluster = Cluster::start(ClusterOptions {
        mount_lease: Some(Duration::from_secs(2)),
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster");
    cluster
        .create_fs_volume(VOL, "4GiB")
        .await
        .expect("volume with an fs");
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctrl = cluster.ctrl_url();

    let rw_port = free_port();
    let mut rw = spawn(&ctrl, "rw", rw_port, &tmp.path().join("rw"));
    let mut c = connect(rw_port, &rw).await;
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    for i in 0..500 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query_async(&mut c)
            .await
            .expect("SET");
        acked.lock().unwrap().insert(k, v);
    }

    // An RO node on the same volume sees the writes (woken by the fs
    // journal's notifications) and refuses writes.
    let ro_port = free_port();
    let ro = spawn(&ctrl, "ro", ro_port, &tmp.path().join("ro"));
    let mut r = connect(ro_port, &ro).await;
    let seen = wait_for("RO sees k499", Duration::from_secs(30), || {
        let mut r = r.clone();
        async move { get(&mut r, "k499").await }
    })
    .await
    .expect("RO catches up");
    assert_eq!(seen, "v499");
    assert_eq!(get(&mut r, "k7").await.as_deref(), Some("v7"));
    let w: redis::RedisResult<()> = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async(&mut r)
        .await;
    let e = w.expect_err("an RO node refuses writes");
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e:?}");

    // Writers run while the RW process is SIGKILLed.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = c.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let (k, v) = (format!("w{w}:{n}"), format!("{n}"));
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(&k).arg(&v).query_async(&mut c).await;
                if r.is_err() {
                    return;
                }
                acked.lock().unwrap().insert(k, v);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rw.kill();
    for t in writers {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("writers stop once the node is gone")
            .expect("writer task");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 500, "writes were acknowledged under load");

    // Failover (docs/failover.md): ctrl fences the dead writer and promotes
    // the RO node, which replays the WAL from the volume and must hold every
    // acknowledged write.
    let t0 = Instant::now();
    let ro_url = format!("redis://127.0.0.1:{ro_port}/");
    let mut c = wait_for(
        "the RO node is promoted to writer",
        Duration::from_secs(60),
        || {
            let url = ro_url.clone();
            async move {
                let cl = redis::Client::open(url).ok()?;
                let mut c = cl.get_multiplexed_async_connection().await.ok()?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                info.contains("role:master").then_some(c)
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; RO log:\n{}",
            std::fs::read_to_string(&ro.log).unwrap_or_default()
        )
    });
    eprintln!("RO promoted after {:?}", t0.elapsed());
    let keys: Vec<&String> = acked.keys().collect();
    for chunk in keys.chunks(500) {
        let vals: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut c)
            .await
            .expect("MGET");
        for (k, v) in chunk.iter().zip(vals) {
            assert_eq!(v.as_ref(), acked.get(*k), "acknowledged {k} lost");
        }
    }
    // The killed node comes back as a reader (as a supervisor restarts it)
    // and follows the new writer.
    rw = spawn(&ctrl, "ro", rw_port, &tmp.path().join("rw"));
    let r = connect(rw_port, &rw).await;
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("failover")
        .query_async(&mut c)
        .await
        .expect("SET on the new writer");
    let seen = wait_for(
        "the restarted node sees a write of the new writer",
        Duration::from_secs(30),
        || {
            let mut r = r.clone();
            async move { get(&mut r, "after").await }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; restarted node's log:\n{}",
            std::fs::read_to_string(&rw.log).unwrap_or_default()
        )
    });
    assert_eq!(seen, "failover");
    drop((rw, ro));
    let out = cluster.cli(&["fs", "fsck", VOL]).await.expect("fsck runs");
    assert!(out.status.success(), "fsck: {out:?}");
}
