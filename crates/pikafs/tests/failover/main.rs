//! kv failover on a real cluster volume: ctrl holds the kv nodes' leases,
//! fences a writer whose lease lapsed and promotes a read-only node
//! (docs/failover.md). Real `pikafs` processes, real Redis clients; every
//! wait is bounded and every process is stopped by PID when dropped.

mod fixture;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fixture::{get, redis_conn, Fixture, Writer};
use pikafs_proto::ctrlpb::KvRole;

/// The target: writes unavailable for at most this long.
const FAILOVER_BUDGET: Duration = Duration::from_secs(5);
/// Bound on waits for a failover or a process exit.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_no_acknowledged_write() {
    let mut fx = Fixture::start(2).await;
    let old_rw = fx.rw_addr().await.expect("an RW node");
    let writer = Writer::start(fx.ctrl_client().await, "load");
    writer.wait_acks(300, WAIT).await;

    let killed_at = Instant::now();
    let idx = fx.node_index(&old_rw);
    fx.nodes[idx].proc.kill();
    let before = writer.acks();
    writer.wait_acks(before + 300, WAIT).await;
    let acked = writer.stop().await;

    let gap = acked.unavailability(killed_at);
    eprintln!(
        "failover under load: writes unavailable for {gap:?} ({} acknowledged writes)",
        acked.sets.len()
    );
    let new_rw = fx.rw_addr().await.expect("a new RW node");
    assert_ne!(new_rw, old_rw, "another node took over");
    assert!(
        gap < FAILOVER_BUDGET,
        "writes unavailable for {gap:?}, budget {FAILOVER_BUDGET:?}"
    );

    // Every acknowledged write is on the new writer.
    let mut c = redis_conn(&new_rw).await.expect("connect to the new RW");
    acked.check(&mut c).await;

    // The killed node comes back as RO and follows the new writer.
    fx.restart(idx, "ro");
    fx.wait_role(&old_rw, KvRole::Ro, WAIT).await;
    let _: () = redis::cmd("SET")
        .arg("after-failover")
        .arg("yes")
        .query_async(&mut c)
        .await
        .expect("SET on the new RW");
    let mut r = redis_conn(&old_rw)
        .await
        .expect("connect to the restarted node");
    let seen = pikafs_testkit::wait_for("the restarted RO follows", WAIT, || {
        let mut r = r.clone();
        async move { get(&mut r, "after-failover").await }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", fx.nodes[idx].proc.log_tail(40)));
    assert_eq!(seen, "yes");
    let w: redis::RedisResult<()> = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async(&mut r)
        .await;
    assert_eq!(
        w.expect_err("the restarted node is read-only").kind(),
        redis::ErrorKind::ReadOnly
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_writer_is_fenced_and_steps_down() {
    let mut fx = Fixture::start(1).await;
    let old_rw = fx.rw_addr().await.expect("an RW node");
    let idx = fx.node_index(&old_rw);
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut c = redis_conn(&old_rw).await.expect("connect to the RW");
    for i in 0..200 {
        let (k, v) = (format!("before:{i}"), format!("v{i}"));
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query_async(&mut c)
            .await
            .expect("SET before the pause");
        expected.insert(k, v);
    }
    // A connection to the writer opened before it freezes: the zombie's
    // clients keep talking to it after it wakes up.
    let mut zombie_conn = redis_conn(&old_rw).await.expect("second connection");

    let paused_at = Instant::now();
    fx.nodes[idx].proc.pause();
    let new_rw = fx.wait_new_rw(&old_rw, WAIT).await;
    eprintln!(
        "zombie: {new_rw} took over {:?} after the writer froze",
        paused_at.elapsed()
    );
    let mut n = redis_conn(&new_rw).await.expect("connect to the new RW");
    for i in 0..200 {
        let (k, v) = (format!("after:{i}"), format!("w{i}"));
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query_async(&mut n)
            .await
            .expect("SET through the new RW");
        expected.insert(k, v);
    }
    // Overwrite some keys the zombie also holds, to catch any resurrection.
    for i in 0..50 {
        let (k, v) = (format!("before:{i}"), format!("new{i}"));
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(&v)
            .query_async(&mut n)
            .await
            .expect("overwrite through the new RW");
        expected.insert(k, v);
    }

    fx.nodes[idx].proc.resume();
    // Writes straight to the woken zombie never succeed: on the old
    // connection, and on new connections until it is gone.
    let r: redis::RedisResult<()> = redis::cmd("SET")
        .arg("before:0")
        .arg("zombie")
        .query_async(&mut zombie_conn)
        .await;
    assert!(r.is_err(), "the zombie acknowledged a write: {r:?}");
    let r: redis::RedisResult<()> = redis::cmd("SET")
        .arg("zombie-key")
        .arg("zombie")
        .query_async(&mut zombie_conn)
        .await;
    assert!(r.is_err(), "the zombie acknowledged a write: {r:?}");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Ok(mut z) = redis_conn(&old_rw).await {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg("zombie-key")
                .arg("zombie")
                .query_async(&mut z)
                .await;
            assert!(r.is_err(), "the zombie acknowledged a write: {r:?}");
        }
        if let Some(st) = fx.nodes[idx].proc.wait_exit(Duration::from_millis(100)) {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the zombie did not step down; log:\n{}",
            fx.nodes[idx].proc.log_tail(40)
        );
    };
    assert_eq!(
        status.code(),
        Some(3),
        "the zombie exits with the step-down status"
    );
    let log = std::fs::read_to_string(&fx.nodes[idx].proc.log).unwrap_or_default();
    assert!(
        log.contains("no longer the writer"),
        "the zombie says why it exits; log:\n{log}"
    );

    // The data written through the new writer is all there and unchanged.
    let mut n = redis_conn(&new_rw).await.expect("reconnect to the new RW");
    assert_eq!(get(&mut n, "zombie-key").await, None);
    for (k, v) in &expected {
        assert_eq!(get(&mut n, k).await.as_ref(), Some(v), "key {k}");
    }
    assert_eq!(fx.rw_addr().await.as_deref(), Some(new_rw.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_promote_switches_writer() {
    let mut fx = Fixture::start(2).await;
    let old_rw = fx.rw_addr().await.expect("an RW node");
    let old_idx = fx.node_index(&old_rw);
    let target = fx
        .nodes
        .iter()
        .map(|n| n.addr())
        .find(|a| *a != old_rw)
        .expect("an RO node");
    let writer = Writer::start(fx.ctrl_client().await, "planned");
    writer.wait_acks(200, WAIT).await;

    let out = fx
        .cluster
        .cli(&["kv", "promote", "--volume", fixture::VOL, "--node", &target])
        .await
        .expect("pikafs kv promote runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kv promote: {out:?}; old RW log:\n{}",
        fx.nodes[old_idx].proc.log_tail(40)
    );
    assert!(
        stdout.contains(&format!("{target} is the RW node now")),
        "{stdout}"
    );
    let before = writer.acks();
    writer.wait_acks(before + 200, WAIT).await;
    let acked = writer.stop().await;
    eprintln!(
        "planned switchover: longest write pause {:?} ({} acknowledged writes)",
        acked.max_gap(),
        acked.sets.len()
    );
    assert_eq!(fx.rw_addr().await.as_deref(), Some(target.as_str()));

    // The old writer stepped down and rejoined as a read-only node that
    // follows the new one.
    fx.wait_role(&old_rw, KvRole::Ro, WAIT).await;
    assert!(fx.nodes[old_idx].proc.is_running());
    let mut c = redis_conn(&target).await.expect("connect to the new RW");
    acked.check(&mut c).await;
    let _: () = redis::cmd("SET")
        .arg("after-switchover")
        .arg("yes")
        .query_async(&mut c)
        .await
        .expect("SET on the new RW");
    let mut old = redis_conn(&old_rw).await.expect("connect to the old RW");
    let seen = pikafs_testkit::wait_for("the demoted node follows", WAIT, || {
        let mut o = old.clone();
        async move { get(&mut o, "after-switchover").await }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", fx.nodes[old_idx].proc.log_tail(40)));
    assert_eq!(seen, "yes");
    let w: redis::RedisResult<()> = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async(&mut old)
        .await;
    assert_eq!(
        w.expect_err("the demoted node is read-only").kind(),
        redis::ErrorKind::ReadOnly
    );

    // `pikafs status` lists the volume's kv nodes with roles and leases.
    let out = fx.cluster.cli(&["status", "--json"]).await.expect("status");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let kv = &v["kv"][0];
    assert_eq!(kv["volume"], fixture::VOL);
    let nodes = kv["nodes"].as_array().expect("kv nodes");
    assert_eq!(nodes.len(), 3, "{kv}");
    for n in nodes {
        let want = if n["addr"] == target.as_str() {
            "rw"
        } else {
            "ro"
        };
        assert_eq!(n["role"], want, "{kv}");
        assert!(n["lease_remaining_ms"].as_u64().unwrap_or(0) > 0, "{kv}");
    }
    let out = fx.cluster.cli(&["status"]).await.expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("kv nodes of {}", fixture::VOL)),
        "{text}"
    );
    assert!(text.contains(&target), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_kv_nodes_roles_lag_and_leases() {
    let fx = Fixture::start(1).await;
    let rw = fx.nodes[0].addr();
    let ro = fx.nodes[1].addr();
    let mut c = redis_conn(&rw).await.expect("connect to the RW");
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("s{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .expect("SET");
    }
    // The RO node reports the sequence it caught up to.
    let seq_of = |v: &serde_json::Value, addr: &str| {
        v["kv"][0]["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["addr"] == addr))
            .and_then(|n| n["applied_seq"].as_u64())
    };
    let deadline = Instant::now() + WAIT;
    let last = loop {
        let out = fx.cluster.cli(&["status", "--json"]).await.expect("status");
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let (w, r) = (seq_of(&v, &rw), seq_of(&v, &ro));
        if w.is_some_and(|w| w >= 20) && r == w {
            break v;
        }
        assert!(Instant::now() < deadline, "RO never caught up: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kv = &last["kv"][0];
    assert_eq!(kv["volume"], fixture::VOL);
    assert!(kv["generation"].as_u64().unwrap_or(0) > 0, "{kv}");
    for n in kv["nodes"].as_array().expect("nodes") {
        let want = if n["addr"] == rw.as_str() { "rw" } else { "ro" };
        assert_eq!(n["role"], want, "{kv}");
        assert_eq!(n["node_id"], n["addr"], "{kv}");
        let lease = n["lease_remaining_ms"].as_u64().unwrap_or(0);
        assert!(lease > 0 && lease <= 2000, "{kv}");
        assert!(n["lag_ms"].is_u64(), "{kv}");
    }

    let out = fx.cluster.cli(&["status"]).await.expect("status");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("kv nodes of {} (2,", fixture::VOL)),
        "{text}"
    );
    let line = |addr: &str| {
        text.lines()
            .find(|l| l.starts_with(addr))
            .unwrap_or_else(|| panic!("no line for {addr}:\n{text}"))
            .to_string()
    };
    assert!(line(&rw).contains(" rw "), "{text}");
    assert!(line(&ro).contains(" ro "), "{text}");
}
