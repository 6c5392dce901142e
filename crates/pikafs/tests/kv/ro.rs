//! A RO node (RocksDB secondary) on the RW node's directory.

use std::time::Duration;

use pikafs_testkit::wait_for;
use redis::Value;

use crate::common::{assert_err, qs, KvNode};

#[tokio::test]
async fn ro_catches_up_rejects_writes_and_never_sees_half_a_transaction() {
    let rw = KvNode::start_rw().await;
    let mut w = rw.conn().await;
    let _: String = qs(&mut w, "SET before-ro 1").await.unwrap();
    let ro = KvNode::start(&rw.dir, "ro", &[]).await;
    let mut r = ro.conn().await;
    let _: String = qs(&mut w, "SET k hello").await.unwrap();
    let _: i64 = qs(&mut w, "HSET h f v").await.unwrap();
    let seen = wait_for("RO sees the RW write", Duration::from_secs(10), || {
        let mut r = r.clone();
        async move {
            let v: Option<String> = qs(&mut r, "GET k").await.ok()?;
            v
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, "hello");
    assert_eq!(qs::<String>(&mut r, "GET before-ro").await.unwrap(), "1");
    assert_eq!(qs::<String>(&mut r, "HGET h f").await.unwrap(), "v");
    assert_err(
        qs::<Value>(&mut r, "SET k x").await,
        "READONLY You can't write against a read only replica.",
    );
    assert_err(qs::<Value>(&mut r, "DEL k").await, "READONLY");
    let _: String = qs(&mut r, "MULTI").await.unwrap();
    assert_err(qs::<Value>(&mut r, "SET k x").await, "READONLY");
    assert_err(qs::<Value>(&mut r, "EXEC").await, "EXECABORT");
    let info: String = qs(&mut r, "INFO replication").await.unwrap();
    assert!(
        info.contains("role:slave") && info.contains("pikafs_role:ro"),
        "{info}"
    );
    assert!(
        info.contains("pikafs_applied_seq:") && info.contains("pikafs_lag_ms:"),
        "{info}"
    );

    // RW commits a, b together; RO must never see them differ.
    let writer = tokio::spawn(async move {
        for i in 1..=300 {
            let mut p = redis::pipe();
            p.atomic()
                .cmd("SET")
                .arg("a")
                .arg(i)
                .cmd("SET")
                .arg("b")
                .arg(i);
            let _: Vec<String> = p.query_async(&mut w).await.unwrap();
        }
        w
    });
    let mut last = 0;
    let mut checks = 0;
    while !writer.is_finished() || checks < 10 {
        let (a, b): (Option<i64>, Option<i64>) = qs(&mut r, "MGET a b")
            .await
            .map(|v: Vec<Option<i64>>| (v[0], v[1]))
            .unwrap();
        assert_eq!(a, b, "RO saw half of a MULTI/EXEC");
        let a = a.unwrap_or(0);
        assert!(a >= last, "RO went back in time: {a} < {last}");
        last = a;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut w = writer.await.unwrap();
    let _: String = qs(&mut w, "SET done 1").await.unwrap();
    wait_for("RO catches up to the end", Duration::from_secs(10), || {
        let mut r = r.clone();
        async move {
            let v: Option<i64> = qs(&mut r, "GET a").await.ok()?;
            (v == Some(300)).then_some(())
        }
    })
    .await
    .unwrap();
}
