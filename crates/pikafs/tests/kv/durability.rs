//! Durability: acknowledged writes survive SIGKILL; TTLs survive restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{qs, KvNode};

/// Every acknowledged `(key, value)`; hash fields as `key\tfield`.
#[derive(Default)]
struct AckLog {
    acked: std::sync::Mutex<Vec<(String, String)>>,
}

#[tokio::test]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    let mut node = KvNode::start_rw().await;
    let log = Arc::new(AckLog::default());
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    // Several clients doing single writes…
    for w in 0..6 {
        let mut c = node.conn().await;
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let k = format!("w{w}:{n}");
                let v = format!("v{n}");
                let r: redis::RedisResult<String> = qs(&mut c, &format!("SET {k} {v}")).await;
                match r {
                    Ok(_) => log.acked.lock().unwrap().push((k, v)),
                    Err(_) => return n,
                }
                let r: redis::RedisResult<i64> = qs(&mut c, &format!("HSET hw{w} f{n} {n}")).await;
                match r {
                    Ok(_) => log
                        .acked
                        .lock()
                        .unwrap()
                        .push((format!("hw{w}\tf{n}"), n.to_string())),
                    Err(_) => return n,
                }
                n += 1;
            }
        }));
    }
    // …and one pipelining client.
    {
        let mut c = node.conn().await;
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let mut p = redis::pipe();
                let mut batch = Vec::new();
                for _ in 0..32 {
                    let k = format!("p:{n}");
                    p.cmd("SET").arg(&k).arg(n);
                    batch.push((k, n.to_string()));
                    n += 1;
                }
                let r: redis::RedisResult<Vec<String>> = p.query_async(&mut c).await;
                match r {
                    Ok(_) => log.acked.lock().unwrap().extend(batch),
                    Err(_) => return n,
                }
            }
        }));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    // Group commit: far fewer fsyncs than acknowledged writes.
    let mut probe = node.conn().await;
    let info: String = qs(&mut probe, "INFO persistence").await.unwrap();
    let syncs: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("pikafs_wal_syncs:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO persistence has pikafs_wal_syncs");
    let acked_so_far = log.acked.lock().unwrap().len() as u64;
    // SIGKILL while the writers are mid-flight.
    node.kill();
    assert!(
        syncs < acked_so_far,
        "group commit should share fsyncs: {syncs} syncs for {acked_so_far} writes"
    );
    eprintln!("{syncs} WAL syncs for {acked_so_far} acknowledged writes");
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("writers stop after the kill");
    }
    let acked = log.acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the load made progress: {}", acked.len());
    node.restart().await;
    let mut c = node.conn().await;
    let mut missing = Vec::new();
    for (k, v) in &acked {
        let got: Option<String> = if let Some((h, f)) = k.split_once('\t') {
            qs(&mut c, &format!("HGET {h} {f}")).await.unwrap()
        } else {
            qs(&mut c, &format!("GET {k}")).await.unwrap()
        };
        if got.as_deref() != Some(v.as_str()) {
            missing.push((k.clone(), v.clone(), got));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "{} acknowledged writes all present after SIGKILL",
        acked.len()
    );
    let info: String = qs(&mut c, "INFO persistence").await.unwrap();
    assert!(info.contains("pikafs_appendfsync:always"));
}

#[tokio::test]
async fn ttl_survives_restart_and_expires_after() {
    let mut node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: String = qs(&mut c, "SET long v EX 1000").await.unwrap();
    let _: String = qs(&mut c, "SET short v PX 1500").await.unwrap();
    let _: i64 = qs(&mut c, "HSET h f v").await.unwrap();
    let _: i64 = qs(&mut c, "PEXPIRE h 1500").await.unwrap();
    let _: String = qs(&mut c, "SET plain v").await.unwrap();
    let at: i64 = qs(&mut c, "PEXPIRETIME long").await.unwrap();
    drop(c);
    node.restart().await;
    let mut c = node.conn().await;
    assert_eq!(
        qs::<i64>(&mut c, "PEXPIRETIME long").await.unwrap(),
        at,
        "absolute expiry persisted"
    );
    assert_eq!(qs::<i64>(&mut c, "TTL plain").await.unwrap(), -1);
    assert!(qs::<i64>(&mut c, "PTTL short").await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(qs::<i64>(&mut c, "EXISTS short h").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXISTS long plain").await.unwrap(), 2);
}
