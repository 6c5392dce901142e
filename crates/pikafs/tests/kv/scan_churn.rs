//! A long SCAN (and HSCAN) on an RO node while the RW deletes, rewrites and
//! fully compacts (so SST files the RO was reading are deleted under it):
//! the scan completes without error, returns every key that existed the
//! whole time, and nothing that never existed. Run on a local directory and
//! on a pikafs volume.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pikafs_testkit::{free_port, Cluster, ClusterOptions};
use redis::aio::MultiplexedConnection;

use crate::common::{qs, KvNode};
use crate::volume;

const STABLE: usize = 10_000;
const CHURN: usize = 10_000;
const HASH_FIELDS: usize = 3_000;

async fn info_u64(c: &mut MultiplexedConnection, field: &str) -> u64 {
    let info: String = qs(c, "INFO replication").await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Loads stable keys, churn keys and a big hash on the RW.
async fn load(w: &mut MultiplexedConnection) {
    for (prefix, n) in [("stable", STABLE), ("churn", CHURN)] {
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut cmd = redis::cmd("MSET");
            for i in chunk {
                cmd.arg(format!("{prefix}:{i}")).arg(format!("v{i}"));
            }
            let _: () = cmd.query_async(w).await.unwrap();
        }
    }
    for chunk in (0..HASH_FIELDS).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg("bighash");
        for i in chunk {
            cmd.arg(format!("f{i}")).arg(format!("hv{i}"));
        }
        let _: i64 = cmd.query_async(w).await.unwrap();
    }
    let _: String = qs(w, "PIKAFS COMPACT").await.unwrap();
}

/// Whether `k` is a key the RW ever wrote (`new_max`: how many `new:*`
/// keys were created).
fn ever_existed(k: &str, new_max: u64) -> bool {
    let num = |p: &str| k.strip_prefix(p).and_then(|n| n.parse::<u64>().ok());
    k == "bighash"
        || num("stable:").is_some_and(|i| i < STABLE as u64)
        || num("churn:").is_some_and(|i| i < CHURN as u64)
        || num("new:").is_some_and(|i| i < new_max)
}

async fn scan_while_churning(w: MultiplexedConnection, mut r: MultiplexedConnection) {
    let mut w0 = w.clone();
    load(&mut w0).await;
    let seq: i64 = qs(&mut w0, "PIKAFS SEQ").await.unwrap();
    let ok: i64 = qs(&mut r, &format!("PIKAFS WAITSEQ {seq} 30000"))
        .await
        .unwrap();
    assert_eq!(ok, 1, "the RO caught up with the load");

    let stop = Arc::new(AtomicBool::new(false));
    let compactions = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let churner = {
        let (stop, compactions, created) = (stop.clone(), compactions.clone(), created.clone());
        let mut w = w.clone();
        tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Delete a slice of churn keys, rewrite another, create new
                // ones, then compact everything.
                let base = (round * 700) % CHURN;
                let mut del = redis::cmd("DEL");
                let mut set = redis::cmd("MSET");
                for i in 0..350 {
                    del.arg(format!("churn:{}", (base + i) % CHURN));
                    set.arg(format!("churn:{}", (base + 350 + i) % CHURN))
                        .arg(format!("r{round}"));
                }
                let n0 = created.load(Ordering::Relaxed);
                for n in n0..n0 + 200 {
                    set.arg(format!("new:{n}")).arg("x");
                }
                // Counted before the write, so a scan never sees a new key
                // the checker does not know about.
                created.store(n0 + 200, Ordering::Relaxed);
                let _: i64 = del.query_async(&mut w).await.unwrap();
                let _: () = set.query_async(&mut w).await.unwrap();
                let _: String = qs(&mut w, "PIKAFS COMPACT").await.unwrap();
                compactions.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
        })
    };

    let catch_ups0 = info_u64(&mut r, "pikafs_catch_ups").await;
    let applied0 = info_u64(&mut r, "pikafs_applied_seq").await;
    let comp0 = compactions.load(Ordering::Relaxed);

    // Full SCAN with a small COUNT, slowly, while the RW churns.
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor = 0u64;
    let mut calls = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(10)
            .query_async(&mut r)
            .await
            .expect("SCAN on the RO never fails");
        let new_max = created.load(Ordering::Relaxed);
        for k in keys {
            assert!(
                ever_existed(&k, new_max),
                "SCAN returned {k:?}, which never existed"
            );
            seen.insert(k);
        }
        calls += 1;
        if calls.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let missing: Vec<usize> = (0..STABLE)
        .filter(|i| !seen.contains(&format!("stable:{i}")))
        .collect();
    assert!(missing.is_empty(), "SCAN missed stable keys {missing:?}");
    assert!(seen.contains("bighash"));

    // HSCAN of the big, unmodified hash, while churn and compactions go on.
    let mut fields: HashSet<String> = HashSet::new();
    let mut cursor = 0u64;
    let mut calls = 0u64;
    loop {
        let (next, kv): (u64, Vec<String>) = redis::cmd("HSCAN")
            .arg("bighash")
            .arg(cursor)
            .arg("COUNT")
            .arg(10)
            .query_async(&mut r)
            .await
            .expect("HSCAN on the RO never fails");
        for pair in kv.chunks(2) {
            let i: usize = pair[0]
                .strip_prefix('f')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("HSCAN returned unknown field {:?}", pair[0]));
            assert!(i < HASH_FIELDS, "unknown field {}", pair[0]);
            assert_eq!(
                pair[1],
                format!("hv{i}"),
                "field {} has a wrong value",
                pair[0]
            );
            fields.insert(pair[0].clone());
        }
        calls += 1;
        if calls.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(fields.len(), HASH_FIELDS, "HSCAN missed fields");

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(60), churner)
        .await
        .expect("churner stops")
        .unwrap();
    let comps = compactions.load(Ordering::Relaxed) - comp0;
    assert!(comps >= 2, "only {comps} compactions ran during the scans");
    // The RO really moved on under the scan (it replayed the churn and the
    // compactions' new file sets while the cursors were open).
    let catch_ups = info_u64(&mut r, "pikafs_catch_ups").await;
    let applied = info_u64(&mut r, "pikafs_applied_seq").await;
    assert!(
        catch_ups > catch_ups0 && applied > applied0,
        "RO did not catch up during the scan"
    );
    let dbsize: i64 = qs(&mut r, "DBSIZE").await.unwrap();
    assert!(dbsize as usize >= STABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_scan_on_ro_survives_rw_compaction_on_a_local_dir() {
    let rw = KvNode::start_rw().await;
    let ro = KvNode::start(&rw.dir, "ro", &[]).await;
    scan_while_churning(rw.conn().await, ro.conn().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_scan_on_ro_survives_rw_compaction_on_a_volume() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    cluster
        .create_fs_volume(volume::VOL, "4GiB")
        .await
        .expect("volume with an fs");
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctrl = cluster.ctrl_url();
    let rw_port = free_port();
    let rw = volume::spawn(&ctrl, "rw", rw_port, &tmp.path().join("rw"));
    let w = volume::connect(rw_port, &rw).await;
    let ro_port = free_port();
    let ro = volume::spawn(&ctrl, "ro", ro_port, &tmp.path().join("ro"));
    let r = volume::connect(ro_port, &ro).await;
    scan_while_churning(w, r).await;
    drop((rw, ro));
    let out = cluster
        .cli(&["fs", "fsck", volume::VOL])
        .await
        .expect("fsck runs");
    assert!(out.status.success(), "fsck: {out:?}");
}
