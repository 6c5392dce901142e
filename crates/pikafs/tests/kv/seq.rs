//! pikafs extensions for the proxy's read-your-writes (`PIKAFS SEQ`,
//! `PIKAFS WAITSEQ`), `PIKAFS COMPACT`, and `INFO replication`'s pikafs
//! fields.

use std::time::{Duration, Instant};

use pikafs_testkit::wait_for;
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::common::{assert_err, qs, KvNode};

/// One `field:value` of `INFO replication`.
async fn repl_field(c: &mut MultiplexedConnection, field: &str) -> String {
    let info: String = qs(c, "INFO replication").await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

#[tokio::test]
async fn waitseq_on_the_ro_makes_the_rw_write_readable() {
    let rw = KvNode::start_rw().await;
    let mut w = rw.conn().await;
    let _: String = qs(&mut w, "SET warm 1").await.unwrap();
    // A catch-up timer far beyond the test's waits: only WAITSEQ's own
    // trigger can make the RO catch up in time.
    let ro = KvNode::start(&rw.dir, "ro", &["--catch-up-interval", "60s"]).await;
    let mut r = ro.conn().await;
    let mut r2 = ro.conn().await;

    let s0: i64 = qs(&mut w, "PIKAFS SEQ").await.unwrap();
    let _: String = qs(&mut w, "SET ryw value1").await.unwrap();
    let s1: i64 = qs(&mut w, "PIKAFS SEQ").await.unwrap();
    assert!(s1 > s0, "a write advances the sequence: {s0} -> {s1}");
    assert_eq!(
        qs::<i64>(&mut w, &format!("PIKAFS WAITSEQ {s1} 1000"))
            .await
            .unwrap(),
        1,
        "the RW has applied its own writes"
    );
    let start = Instant::now();
    assert_eq!(
        qs::<i64>(&mut w, &format!("PIKAFS WAITSEQ {} 1000", s1 + 1000))
            .await
            .unwrap(),
        0,
        "the RW answers a future sequence at once"
    );
    assert!(start.elapsed() < Duration::from_millis(900));

    let start = Instant::now();
    let ok: i64 = qs(&mut r, &format!("PIKAFS WAITSEQ {s1} 20000"))
        .await
        .unwrap();
    assert_eq!(ok, 1);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "WAITSEQ triggered a catch-up instead of waiting for the 60 s timer"
    );
    assert_eq!(
        qs::<Option<String>>(&mut r, "GET ryw")
            .await
            .unwrap()
            .as_deref(),
        Some("value1")
    );
    let ro_seq: i64 = qs(&mut r, "PIKAFS SEQ").await.unwrap();
    assert!(ro_seq >= s1, "{ro_seq} < {s1}");

    // A far-future sequence: 0 after about the timeout, and other
    // connections on the RO are served meanwhile.
    let far = s1 + 1_000_000;
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let v: i64 = qs(&mut r, &format!("PIKAFS WAITSEQ {far} 1500"))
            .await
            .unwrap();
        (v, start.elapsed())
    });
    for _ in 0..20 {
        assert_eq!(
            qs::<Option<String>>(&mut r2, "GET ryw")
                .await
                .unwrap()
                .as_deref(),
            Some("value1")
        );
    }
    let (v, took) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("WAITSEQ returns")
        .unwrap();
    assert_eq!(v, 0);
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(15),
        "{took:?}"
    );

    assert_err(
        qs::<Value>(&mut r2, "PIKAFS WAITSEQ 1 60001").await,
        "ERR timeout_ms must be between 0 and 60000",
    );
    assert_err(
        qs::<Value>(&mut r2, "PIKAFS WAITSEQ x 10").await,
        "ERR value is not an integer or out of range",
    );
    assert_err(
        qs::<Value>(&mut r2, "PIKAFS NOPE").await,
        "ERR unknown subcommand",
    );
    assert_err(
        qs::<Value>(&mut r2, "PIKAFS COMPACT").await,
        "ERR PIKAFS COMPACT is only allowed on the RW node",
    );
    assert_eq!(qs::<String>(&mut w, "PIKAFS COMPACT").await.unwrap(), "OK");
    assert_eq!(
        qs::<Option<String>>(&mut w, "GET ryw")
            .await
            .unwrap()
            .as_deref(),
        Some("value1")
    );
}

#[tokio::test]
async fn info_replication_reports_role_sequence_lag_and_catch_ups() {
    let rw = KvNode::start_rw().await;
    let mut w = rw.conn().await;
    let _: String = qs(&mut w, "SET a 1").await.unwrap();
    assert_eq!(repl_field(&mut w, "role").await, "master");
    assert_eq!(repl_field(&mut w, "pikafs_role").await, "rw");
    assert_eq!(repl_field(&mut w, "pikafs_lag_ms").await, "0");
    let rw_seq: u64 = repl_field(&mut w, "pikafs_applied_seq")
        .await
        .parse()
        .unwrap();
    let _: String = qs(&mut w, "SET a 2").await.unwrap();
    let rw_seq2: u64 = repl_field(&mut w, "pikafs_applied_seq")
        .await
        .parse()
        .unwrap();
    assert!(rw_seq2 > rw_seq);

    let ro = KvNode::start(&rw.dir, "ro", &["--catch-up-interval", "20ms"]).await;
    let mut r = ro.conn().await;
    assert_eq!(repl_field(&mut r, "role").await, "slave");
    assert_eq!(repl_field(&mut r, "pikafs_role").await, "ro");
    let lag: i64 = repl_field(&mut r, "pikafs_lag_ms").await.parse().unwrap();
    assert!(lag >= 0, "{lag}");
    let c0: u64 = repl_field(&mut r, "pikafs_catch_ups")
        .await
        .parse()
        .unwrap();
    let a0: u64 = repl_field(&mut r, "pikafs_applied_seq")
        .await
        .parse()
        .unwrap();
    let _: String = qs(&mut w, "SET a 3").await.unwrap();
    let target: u64 = qs::<i64>(&mut w, "PIKAFS SEQ").await.unwrap() as u64;
    wait_for(
        "RO's applied_seq and catch_ups move",
        Duration::from_secs(10),
        || {
            let mut r = r.clone();
            async move {
                let a: u64 = repl_field(&mut r, "pikafs_applied_seq")
                    .await
                    .parse()
                    .ok()?;
                let c: u64 = repl_field(&mut r, "pikafs_catch_ups").await.parse().ok()?;
                (a >= target && a > a0 && c > c0).then_some(())
            }
        },
    )
    .await
    .unwrap();
}
