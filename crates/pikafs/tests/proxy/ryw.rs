//! Read-your-writes: with it on, a client's reads on RO nodes never miss
//! its own writes, even while the RO nodes lag.

use std::time::Duration;

use crate::common::{connect, scrape, ProxyNode, Setup};
use pikafs_testkit::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_sees_every_own_write_while_ro_nodes_lag() {
    // RO nodes catch up only every 300 ms: plenty of lag.
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let s = Setup::start(2, &["--catch-up-interval", "300ms"], &["--metrics", &maddr]).await;
    let mut c = s.proxy.conn().await;

    // Without read-your-writes the lag is visible (so the test can fail).
    let mut stale = 0;
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("ryw:{}", i % 5))
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET");
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("ryw:{}", i % 5))
            .query_async(&mut c)
            .await
            .expect("GET");
        if v != Some(i.to_string()) {
            stale += 1;
        }
    }
    eprintln!("stale reads without read-your-writes: {stale}/50");
    assert!(
        stale > 0,
        "RO nodes should lag behind with a 300 ms catch-up interval"
    );

    let on: String = redis::cmd("CLIENT")
        .arg("READYOURWRITES")
        .arg("ON")
        .query_async(&mut c)
        .await
        .expect("CLIENT READYOURWRITES ON");
    assert_eq!(on, "OK");
    let state: String = redis::cmd("CLIENT")
        .arg("READYOURWRITES")
        .query_async(&mut c)
        .await
        .expect("CLIENT READYOURWRITES");
    assert_eq!(state, "on");
    for i in 0..1000 {
        let key = format!("ryw:{}", i % 10);
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET");
        let v: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("GET");
        assert_eq!(
            v,
            Some(i.to_string()),
            "iteration {i}: read missed own write"
        );
    }
    // With a kv node that knows `PIKAFS SEQ`, reads really went to RO nodes
    // behind a WAITSEQ (some answered there, the lagging ones re-sent to RW).
    let mut rw = s.rw.conn().await;
    let seq: redis::RedisResult<i64> = redis::cmd("PIKAFS").arg("SEQ").query_async(&mut rw).await;
    let ro = scrape(mport, "pikafs_proxy_requests_total{route=\"ro\"}").await;
    let fallback = scrape(mport, "pikafs_proxy_requests_total{route=\"ryw_fallback\"}").await;
    eprintln!("PIKAFS SEQ on RW: {seq:?}; reads routed to RO: {ro:?}, re-sent to RW after WAITSEQ: {fallback:?}");
    if seq.is_ok() {
        assert!(
            ro.unwrap_or(0.0) >= 1000.0,
            "reads should go to RO nodes behind WAITSEQ"
        );
    }
    // Pipelined writes then reads, including a split MGET.
    let mut pipe = redis::pipe();
    for i in 0..20 {
        pipe.cmd("SET").arg(format!("rywp:{i}")).arg(i).ignore();
    }
    for i in 0..20 {
        pipe.cmd("GET").arg(format!("rywp:{i}"));
    }
    pipe.cmd("MGET")
        .arg((0..20).map(|i| format!("rywp:{i}")).collect::<Vec<_>>());
    let (singles, mget): (Vec<String>, Vec<String>) = {
        let mut r: Vec<redis::Value> = pipe.query_async(&mut c).await.expect("pipeline");
        let m = r.pop().expect("MGET reply");
        let singles = r
            .into_iter()
            .map(|v| redis::from_redis_value(&v).expect("string"))
            .collect();
        (singles, redis::from_redis_value(&m).expect("strings"))
    };
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(singles, want);
    assert_eq!(mget, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_your_writes_flag_turns_it_on_for_every_connection() {
    let s = Setup::start(2, &["--catch-up-interval", "300ms"], &[]).await;
    let refs: Vec<&crate::common::KvNode> = s.ros.iter().collect();
    let p = ProxyNode::start(
        &s.dir(),
        Some(&s.rw),
        &refs,
        &["--read-your-writes", "--ryw-wait", "20ms"],
    )
    .await;
    let mut c = connect(p.port).await;
    let state: String = redis::cmd("CLIENT")
        .arg("READYOURWRITES")
        .query_async(&mut c)
        .await
        .expect("CLIENT READYOURWRITES");
    assert_eq!(state, "on");
    for i in 0..300 {
        let key = format!("flag:{}", i % 7);
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("f")
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("HSET");
        let v: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("f")
            .query_async(&mut c)
            .await
            .expect("HGET");
        assert_eq!(v, Some(i.to_string()), "iteration {i}");
    }
    let _ = Duration::from_millis(0);
}
