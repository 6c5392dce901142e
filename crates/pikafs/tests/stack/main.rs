//! The whole stack as a client sees it: a cluster volume, one RW and
//! several RO kv nodes on it, and `pikafs proxy` following ctrl's kv
//! topology. The writer is SIGKILLed under load through the proxy, and RO
//! nodes join and leave under read load; no acknowledged write is lost and
//! no read fails beyond the requests in flight to a node that died.
//!
//! Timings (write unavailability) are printed, not asserted beyond a
//! generous bound: speed belongs to `bench/failover.sh`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pikafs_proto::ctrlpb::{KvRole, VolumeName};
use pikafs_testkit::{free_port, wait_for, Cluster, ClusterOptions, Proc};
use redis::aio::MultiplexedConnection;

const VOL: &str = "stackvol";

/// A kv node of the stack.
struct Node {
    port: u16,
    metrics_port: u16,
    proc: Proc,
}

/// Cluster + kv nodes + proxy, all stopped on drop (by PID, via `Proc`).
/// Fields drop in order: the proxy and kv nodes before the cluster under
/// them, the directory last.
struct Stack {
    proxy: Proc,
    nodes: Vec<Node>,
    cluster: Cluster,
    tmp: tempfile::TempDir,
    proxy_port: u16,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn spawn_kv(ctrl: &str, role: &str, port: u16, metrics_port: u16, dir: &Path) -> Proc {
    let metrics = format!("127.0.0.1:{metrics_port}");
    let local = dir.join(format!("kv{port}"));
    pikafs_testkit::spawn_kv(ctrl, VOL, role, port, &local, &["--metrics", &metrics])
        .expect("spawn pikafs kv")
}

/// The value of a counter on a Prometheus endpoint (0 when absent).
async fn scrape_counter(port: u16, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("metrics connect in time")
    .expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send scrape");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .expect("scrape in time")
        .expect("read scrape");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

async fn connect(port: u16, what: &str) -> MultiplexedConnection {
    let url = format!("redis://127.0.0.1:{port}/");
    wait_for(what, Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let c = redis::Client::open(url).ok()?;
            let mut c =
                tokio::time::timeout(Duration::from_secs(5), c.get_multiplexed_async_connection())
                    .await
                    .ok()?
                    .ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
            (pong == "PONG").then_some(c)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

impl Stack {
    async fn start(ro: usize) -> Stack {
        let cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("cluster");
        cluster
            .create_fs_volume(VOL, "4GiB")
            .await
            .expect("volume with an fs");
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctrl = cluster.ctrl_url();
        let mut nodes = Vec::new();
        let (port, metrics_port) = (free_port(), free_port());
        let proc = spawn_kv(&ctrl, "rw", port, metrics_port, tmp.path());
        connect(port, "the RW kv node serves").await;
        nodes.push(Node {
            port,
            metrics_port,
            proc,
        });
        for _ in 0..ro {
            let (port, metrics_port) = (free_port(), free_port());
            let proc = spawn_kv(&ctrl, "ro", port, metrics_port, tmp.path());
            nodes.push(Node {
                port,
                metrics_port,
                proc,
            });
        }
        for n in &nodes[1..] {
            connect(n.port, "an RO kv node serves").await;
        }
        let proxy_port = free_port();
        let args = strings(&[
            "--ctrl",
            &ctrl,
            "proxy",
            "--listen",
            &format!("127.0.0.1:{proxy_port}"),
            "--volume",
            VOL,
        ]);
        let proxy = Proc::spawn("proxy", &args, &tmp.path().join("proxy.log")).expect("proxy");
        let stack = Stack {
            cluster,
            tmp,
            nodes,
            proxy,
            proxy_port,
        };
        stack.wait_topology(1 + ro).await;
        stack
    }

    /// ctrl's view: (node addr, role) of live kv nodes.
    async fn topology(&self) -> Vec<(String, KvRole)> {
        let Ok(mut c) = self.cluster.ctrl_client().await else {
            return Vec::new();
        };
        match c
            .kv_topology(VolumeName {
                name: VOL.to_string(),
            })
            .await
        {
            Ok(t) => t
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| {
                    let role = KvRole::try_from(n.role).unwrap_or(KvRole::Unspecified);
                    (n.addr, role)
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until ctrl lists `n` live nodes, one of them RW.
    async fn wait_topology(&self, n: usize) -> Vec<(String, KvRole)> {
        wait_for(
            &format!("ctrl lists {n} kv nodes with one writer"),
            Duration::from_secs(60),
            || async {
                let t = self.topology().await;
                let rw = t.iter().filter(|(_, r)| *r == KvRole::Rw).count();
                (t.len() == n && rw == 1).then_some(t)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; logs:\n{}", self.logs()))
    }

    /// The port of the node ctrl lists as RW, once there is one.
    async fn writer_port(&self, not: Option<u16>) -> u16 {
        wait_for(
            "ctrl to list a new writer",
            Duration::from_secs(60),
            || async {
                self.topology().await.into_iter().find_map(|(addr, role)| {
                    let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
                    (role == KvRole::Rw && Some(port) != not).then_some(port)
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}; logs:\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s += &format!("--- kv {}:\n{}\n", n.port, n.proc.log_tail(25));
        }
        s += &format!("--- proxy:\n{}\n", self.proxy.log_tail(25));
        s
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this stack")
    }
}

/// Largest gap between consecutive acknowledgements after `from`.
fn longest_gap(acks: &[Instant], from: Instant) -> Duration {
    let mut prev = acks.iter().rev().find(|t| **t <= from).copied();
    let mut gap = Duration::ZERO;
    for t in acks.iter().filter(|t| **t > from) {
        if let Some(p) = prev {
            gap = gap.max(t.duration_since(p));
        }
        prev = Some(*t);
    }
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_survive_a_sigkill_of_the_writer() {
    let mut stack = Stack::start(2).await;
    let mut c = connect(stack.proxy_port, "the proxy serves").await;
    let _: () = redis::cmd("SET")
        .arg("before")
        .arg("kill")
        .query_async(&mut c)
        .await
        .expect("SET through the proxy");

    // Writers through the proxy: each acknowledged SET is recorded with
    // its time. A failed SET is retried under a new key (it may or may not
    // have been applied; only acknowledged ones are checked).
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let ack_times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, ack_times, errors, stop) = (
            acked.clone(),
            ack_times.clone(),
            errors.clone(),
            stop.clone(),
        );
        let port = stack.proxy_port;
        writers.push(tokio::spawn(async move {
            let mut c = connect(port, "the proxy serves").await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (k, v) = (format!("w{w}:{n}"), format!("value-{w}-{n}"));
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    redis::cmd("SET").arg(&k).arg(&v).query_async::<()>(&mut c),
                )
                .await;
                match r {
                    Ok(Ok(())) => {
                        acked.lock().unwrap().insert(k, v);
                        ack_times.lock().unwrap().push(Instant::now());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        // The proxy may have dropped us; reconnect.
                        if let Ok(Ok(nc)) = tokio::time::timeout(Duration::from_secs(5), async {
                            redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
                                .get_multiplexed_async_connection()
                                .await
                        })
                        .await
                        {
                            c = nc;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_rw = stack.nodes[0].port;
    let killed_at = Instant::now();
    stack.node(old_rw).proc.kill();
    let new_rw = stack.writer_port(Some(old_rw)).await;
    eprintln!(
        "ctrl named {new_rw} the writer after {:?}",
        killed_at.elapsed()
    );
    // Keep writing until acknowledgements flow again for a while.
    wait_for(
        "writes through the proxy succeed again",
        Duration::from_secs(60),
        || async {
            let t = ack_times.lock().unwrap();
            t.last()
                .is_some_and(|l| l.duration_since(killed_at) > Duration::from_secs(2))
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; logs:\n{}", stack.logs()));
    stop.store(true, Ordering::Relaxed);
    for t in writers {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("writers stop")
            .expect("writer task");
    }
    let gap = longest_gap(&ack_times.lock().unwrap(), killed_at);
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "write unavailability {gap:?}; {} acknowledged writes, {} failed attempts",
        acked.len(),
        errors.load(Ordering::Relaxed)
    );
    // Generous: this is a correctness test; bench/failover.sh measures.
    assert!(gap < Duration::from_secs(30), "writes stalled {gap:?}");

    // Every acknowledged write is on the new writer...
    let mut w = connect(new_rw, "the new writer serves").await;
    let keys: Vec<&String> = acked.keys().collect();
    for chunk in keys.chunks(500) {
        let vals: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(&mut w)
            .await
            .expect("MGET on the new writer");
        for (k, v) in chunk.iter().zip(vals) {
            assert_eq!(v.as_ref(), acked.get(*k), "acknowledged {k} lost");
        }
    }
    let v: Option<String> = redis::cmd("GET")
        .arg("before")
        .query_async(&mut w)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("kill"));
    // ...and reads through the proxy see them (RO nodes follow the new
    // writer), checked on a sample with a bound for catch-up.
    for k in keys.iter().step_by(97) {
        let want = acked.get(*k).cloned();
        let got = wait_for(
            "the proxy reads an acknowledged key",
            Duration::from_secs(30),
            || {
                let mut c = c.clone();
                let want = want.clone();
                async move {
                    let v: Option<String> =
                        redis::cmd("GET").arg(*k).query_async(&mut c).await.ok()?;
                    (v == want).then_some(v)
                }
            },
        )
        .await;
        assert!(
            got.is_ok(),
            "{k} not readable through the proxy; logs:\n{}",
            stack.logs()
        );
    }

    // The promoted node's metrics endpoint serves its writer incarnation
    // (WAL syncs happen only on a writer).
    let metrics_port = stack.node(new_rw).metrics_port;
    let syncs = scrape_counter(metrics_port, "pikafs_kv_wal_syncs_total").await;
    assert!(syncs > 0, "the promoted node's metrics show no WAL syncs");

    // The killed writer comes back as a reader and follows.
    let dir = stack.tmp.path().to_path_buf();
    let ctrl = stack.cluster.ctrl_url();
    let metrics_port = stack.node(old_rw).metrics_port;
    stack.node(old_rw).proc = spawn_kv(&ctrl, "ro", old_rw, metrics_port, &dir);
    let mut back = connect(old_rw, "the old writer is back as a reader").await;
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("failover")
        .query_async(&mut w)
        .await
        .unwrap();
    let seen = wait_for(
        "the old writer, now RO, follows",
        Duration::from_secs(30),
        || {
            let mut b = back.clone();
            async move {
                redis::cmd("GET")
                    .arg("after")
                    .query_async::<Option<String>>(&mut b)
                    .await
                    .ok()
                    .flatten()
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; logs:\n{}", stack.logs()));
    assert_eq!(seen, "failover");
    let e = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async::<()>(&mut back)
        .await
        .expect_err("the old writer is read-only now");
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ro_nodes_join_and_leave_under_read_load() {
    let mut stack = Stack::start(2).await;
    let mut c = connect(stack.proxy_port, "the proxy serves").await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET")
            .arg(format!("r{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.expect("load");
    // Wait until every RO node has the data, so reads can be checked.
    for n in &stack.nodes[1..] {
        let mut r = connect(n.port, "RO").await;
        wait_for("RO caught up", Duration::from_secs(30), || {
            let mut r = r.clone();
            async move {
                redis::cmd("GET")
                    .arg("r999")
                    .query_async::<Option<String>>(&mut r)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await
        .expect("RO caught up");
        let _: () = redis::cmd("PING").query_async(&mut r).await.unwrap();
    }

    // Readers: each GET either returns exactly the value or fails; count
    // failures. A reader has one request in flight at a time, so at most
    // one failure per reader per node that dies is allowed.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    const READERS: u64 = 4;
    for r in 0..READERS {
        let (stop, failures, reads) = (stop.clone(), failures.clone(), reads.clone());
        let port = stack.proxy_port;
        readers.push(tokio::spawn(async move {
            let mut c = connect(port, "the proxy serves").await;
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % 1000;
                let got = tokio::time::timeout(
                    Duration::from_secs(10),
                    redis::cmd("GET")
                        .arg(format!("r{i}"))
                        .query_async::<Option<String>>(&mut c),
                )
                .await;
                match got {
                    Ok(Ok(v)) => {
                        assert_eq!(v, Some(format!("v{i}")), "a read returned a wrong value");
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;

    // Join: a third RO node; it must get a share of the reads.
    let dir = stack.tmp.path().to_path_buf();
    let ctrl = stack.cluster.ctrl_url();
    let (port, metrics_port) = (free_port(), free_port());
    let proc = spawn_kv(&ctrl, "ro", port, metrics_port, &dir);
    connect(port, "the new RO node serves").await;
    stack.nodes.push(Node {
        port,
        metrics_port,
        proc,
    });
    stack.wait_topology(4).await;
    let mut joined = connect(port, "the new RO node").await;
    let served = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut joined)
        .await
        .unwrap();
    let before = served(before);
    wait_for(
        "the joined RO node serves reads",
        Duration::from_secs(30),
        || {
            let mut j = joined.clone();
            async move {
                let info: String = redis::cmd("INFO")
                    .arg("stats")
                    .query_async(&mut j)
                    .await
                    .ok()?;
                (served(info) > before + 50).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; logs:\n{}", stack.logs()));

    // Leave: one RO stops cleanly, another is SIGKILLed.
    let gone = stack.nodes[1].port;
    stack.node(gone).proc.terminate(Duration::from_secs(10));
    stack.wait_topology(3).await;
    settle().await;
    let killed = stack.nodes[2].port;
    stack.node(killed).proc.kill();
    // ctrl drops it when its lease lapses; the proxy must already have
    // routed around it on the failed connection.
    stack.wait_topology(2).await;
    settle().await;
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("readers stop")
            .expect("reader task (a wrong value panics it)");
    }
    let (reads, failures) = (
        reads.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    eprintln!("{reads} reads, {failures} failed");
    assert!(reads > 1000, "reads went on: {reads}");
    // Two nodes left; each could fail the one in-flight read per reader.
    assert!(
        failures <= 2 * READERS,
        "{failures} reads failed, more than were in flight; logs:\n{}",
        stack.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_writer_behind_the_proxy_is_replaced_and_fenced() {
    let mut stack = Stack::start(1).await;
    let mut c = connect(stack.proxy_port, "the proxy serves").await;
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let set = |c: &mut MultiplexedConnection, k: String, v: String| {
        let mut c = c.clone();
        async move {
            // Far longer than a failover: a request stuck on the stopped
            // writer must come back as an error from the proxy, not time
            // out here.
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                redis::cmd("SET").arg(&k).arg(&v).query_async::<()>(&mut c),
            )
            .await
            .expect("the proxy answers every request while the writer is stopped");
            (k, v, r)
        }
    };
    for i in 0..200 {
        let (k, v, r) = set(&mut c, format!("s{i}"), format!("before-{i}")).await;
        r.expect("SET before the stop");
        acked.insert(k, v);
    }
    let old_rw = stack.nodes[0].port;
    stack.node(old_rw).proc.pause();
    // Writes during the stop: the first fails (or waits) until ctrl has
    // failed the writer over, then they land on the new writer.
    let mut errors = 0;
    let mut i = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume; logs:\n{}",
            stack.logs()
        );
        i += 1;
        let (k, v, r) = set(&mut c, format!("d{i}"), format!("during-{i}")).await;
        match r {
            Ok(()) => {
                acked.insert(k, v);
            }
            Err(e) => {
                errors += 1;
                eprintln!("SET during the stop: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let new_rw = stack.writer_port(Some(old_rw)).await;
    eprintln!("{errors} SETs failed while the writer was stopped; {new_rw} took over");
    // The zombie wakes up: it must not write (it is fenced) and it leaves.
    stack.node(old_rw).proc.resume();
    let mut z = redis::Client::open(format!("redis://127.0.0.1:{old_rw}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    if let Ok(z) = z.as_mut() {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            redis::cmd("SET")
                .arg("s0")
                .arg("zombie")
                .query_async::<()>(z),
        )
        .await;
        assert!(
            !matches!(r, Ok(Ok(()))),
            "the stopped-then-resumed writer took a write"
        );
    }
    let exited = stack.node(old_rw).proc.wait_exit(Duration::from_secs(30));
    assert!(
        exited.is_some(),
        "the old writer did not step down; logs:\n{}",
        stack.logs()
    );
    // Every acknowledged write is on the new writer, unchanged.
    let mut w = connect(new_rw, "the new writer serves").await;
    let keys: Vec<&String> = acked.keys().collect();
    let vals: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut w)
        .await
        .expect("MGET on the new writer");
    for (k, v) in keys.iter().zip(vals) {
        assert_eq!(
            v.as_ref(),
            acked.get(*k),
            "acknowledged {k} lost or changed"
        );
    }
}
