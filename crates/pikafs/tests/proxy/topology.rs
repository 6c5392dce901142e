//! Topology changes under load: an RO node dies, joins, leaves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{connect, KvNode, Setup};

const KEYS: usize = 200;

async fn load(s: &Setup) {
    let mut c = s.proxy.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET")
            .arg(format!("load:{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    pipe.cmd("SET").arg("sentinel").arg("load").ignore();
    pipe.query_async::<()>(&mut c).await.expect("load");
    s.wait_ros_see("sentinel", "load").await;
}

/// Readers looping GET (checking each value) and an MGET now and then
/// through the proxy until stopped; counts reads and failures.
struct Load {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, readers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for r in 0..readers {
            let (stop, reads, failures) = (stop.clone(), reads.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = connect(port).await;
                let mut i = r * 31;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 7) % KEYS;
                    let res: redis::RedisResult<Option<String>> = redis::cmd("GET")
                        .arg(format!("load:{i}"))
                        .query_async(&mut c)
                        .await;
                    match res {
                        Ok(Some(v)) if v == format!("v{i}") => {}
                        other => {
                            eprintln!("reader {r}: GET load:{i} -> {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    if i % 10 == 0 {
                        let keys: Vec<String> = (0..8)
                            .map(|k| format!("load:{}", (i + k * 13) % KEYS))
                            .collect();
                        let res: redis::RedisResult<Vec<Option<String>>> =
                            redis::cmd("MGET").arg(&keys).query_async(&mut c).await;
                        let want: Vec<Option<String>> = (0..8)
                            .map(|k| Some(format!("v{}", (i + k * 13) % KEYS)))
                            .collect();
                        match res {
                            Ok(v) if v == want => {}
                            other => {
                                eprintln!("reader {r}: MGET -> {other:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Load {
            stop,
            reads,
            failures,
            tasks,
        }
    }

    async fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("readers stop in time")
                .expect("reader task");
        }
        (
            self.reads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    /// A failing test must not leave readers spinning on dead sockets.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn route(c: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    redis::cmd("PROXY")
        .arg("ROUTE")
        .arg(key)
        .query_async(c)
        .await
        .expect("PROXY ROUTE")
}

async fn set_topology(c: &mut redis::aio::MultiplexedConnection, rw: &KvNode, ros: &[&KvNode]) {
    let mut cmd = redis::cmd("PROXY");
    cmd.arg("TOPOLOGY").arg("SET").arg(rw.addr());
    for r in ros {
        cmd.arg(r.addr());
    }
    let _: i64 = cmd.query_async(c).await.expect("PROXY TOPOLOGY SET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ro_killed_under_read_load_fails_no_reads_beyond_those_in_flight() {
    let mut s = Setup::start(3, &[], &[]).await;
    load(&s).await;
    // Without --allow-topology-set no client may redirect the proxy.
    {
        let mut c = s.proxy.conn().await;
        let err = redis::cmd("PROXY")
            .arg("TOPOLOGY")
            .arg("SET")
            .arg("127.0.0.1:1")
            .query_async::<i64>(&mut c)
            .await
            .expect_err("PROXY TOPOLOGY SET must be refused by default");
        assert!(err.to_string().contains("--allow-topology-set"), "{err}");
        let rw: Option<String> = redis::cmd("PROXY")
            .arg("ROUTE")
            .arg("k")
            .query_async(&mut c)
            .await
            .expect("PROXY ROUTE");
        assert_ne!(rw.as_deref(), Some("127.0.0.1:1"));
    }
    let readers = 6;
    let l = Load::start(s.proxy.port, readers);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = s.ros[1].addr();
    let reads_before_kill = l.reads.load(Ordering::Relaxed);
    s.ros[1].proc.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures_mid = l.failures.load(Ordering::Relaxed);
    let reads_mid = l.reads.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (reads, failures) = l.stop().await;
    eprintln!(
        "reads: {reads_before_kill} before the kill, {reads} total; failures {failures} ({failures_mid} by 1.5 s after the kill)"
    );
    assert!(
        reads_before_kill > 50 && reads > reads_mid,
        "load must keep flowing"
    );
    // At most the reads in flight on the dead node may fail (one per
    // reader); the proxy re-sends them to the RW node, so usually none.
    assert!(failures as usize <= readers, "{failures} failed reads");
    assert_eq!(failures, failures_mid, "reads failed long after the kill");
    // The dead node is skipped.
    let mut c = s.proxy.conn().await;
    for i in 0..50 {
        assert_ne!(route(&mut c, &format!("load:{i}")).await, victim);
    }
    let log = s.proxy.log();
    assert!(log.contains("marked down"), "proxy log:\n{log}");
    s.ros[1].proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_ro_node_does_not_hang_reads() {
    let mut s = Setup::start(2, &[], &["--ro-timeout", "500ms"]).await;
    load(&s).await;
    let readers = 4;
    let l = Load::start(s.proxy.port, readers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGSTOP: the node's sockets stay open but it never answers.
    s.ros[1].proc.pause();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads_mid = l.reads.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (reads, failures) = l.stop().await;
    s.ros[1].proc.resume();
    eprintln!("reads: {reads} total, {reads_mid} 1.5 s after the stop; failures {failures}");
    // Reads stuck on the stopped node are answered by the RW node after
    // the bound, and later reads avoid it: reads keep flowing, none fail.
    assert!(
        reads > reads_mid,
        "reads stopped flowing behind a hung RO node"
    );
    assert_eq!(failures, 0, "reads failed behind a hung RO node");
    let log = s.proxy.log();
    assert!(log.contains("taking it for hung"), "proxy log:\n{log}");
    s.ros[1].proc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_nodes_join_and_leave_live_under_read_load() {
    let s = Setup::start(2, &[], &["--allow-topology-set"]).await;
    load(&s).await;
    let mut newcomer = KvNode::start(&s.dir(), "ro", &[]).await;
    // Wait for the newcomer to have caught up before it takes reads.
    {
        let mut c = newcomer.conn().await;
        pikafs_testkit::wait_for("new RO caught up", Duration::from_secs(20), || {
            let mut c = c.clone();
            async move {
                let v: Option<String> = redis::cmd("GET")
                    .arg("sentinel")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                (v.as_deref() == Some("load")).then_some(())
            }
        })
        .await
        .expect("new RO caught up");
        let _ = &mut c;
    }
    let mut admin = s.proxy.conn().await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("load:{i}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(route(&mut admin, k).await);
    }

    let l = Load::start(s.proxy.port, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n_before = newcomer.commands_processed().await;
    set_topology(&mut admin, &s.rw, &[&s.ros[0], &s.ros[1], &newcomer]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n_after = newcomer.commands_processed().await;
    assert!(
        n_after - n_before > 20,
        "the new RO node got {} commands",
        n_after - n_before
    );

    // Only keys that now hash to the newcomer moved.
    let mut moved = 0;
    for (k, b) in keys.iter().zip(&before) {
        let a = route(&mut admin, k).await;
        if &a != b {
            assert_eq!(a, newcomer.addr(), "key {k} moved between old nodes");
            moved += 1;
        }
    }
    assert!(
        (KEYS / 6..=KEYS / 2).contains(&moved),
        "{moved} of {KEYS} keys moved to the 3rd node"
    );

    // ro[0] leaves, then dies: no read may fail (none was in flight on it
    // once the topology stopped routing to it).
    set_topology(&mut admin, &s.rw, &[&s.ros[1], &newcomer]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gone = s.ros[0].commands_processed().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gone_after = s.ros[0].commands_processed().await;
    // 3 = the INFO call and the client's two CLIENT SETINFO.
    assert!(
        gone_after - gone <= 3,
        "a removed RO node still gets reads ({gone} -> {gone_after})"
    );
    let (reads, failures) = l.stop().await;
    eprintln!("reads {reads}, failures {failures}, moved {moved}");
    assert_eq!(failures, 0);
    newcomer.proc.kill();
}
