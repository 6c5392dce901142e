//! Shared RO connections (`pool.rs`) against fake kv nodes: many pipelining
//! clients share a few backend connections and still get their own replies
//! in order; a shared connection that breaks costs no client an error (its
//! reads are re-sent to the RW node); SELECT and AUTH keep their meaning.
//!
//! The fake node answers `GET k` with `<node>:<k>:<db>:<auth>` so every
//! reply says which node, database and authentication served it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pikafs_proxy::{resp, Proxy, ProxyConfig, Topology, TopologySource};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct FakeNode {
    name: String,
    addr: String,
    /// Connections accepted so far.
    accepted: AtomicUsize,
    /// `GET` requests answered.
    gets: AtomicUsize,
    /// `GET poison` answers garbage (breaks the connection's framing).
    poison: AtomicBool,
    /// Reads are taken but never answered (a hung node).
    hang: AtomicBool,
}

async fn fake_node(name: &str) -> Arc<FakeNode> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Arc::new(FakeNode {
        name: name.to_string(),
        addr: l.local_addr().unwrap().to_string(),
        accepted: AtomicUsize::new(0),
        gets: AtomicUsize::new(0),
        poison: AtomicBool::new(false),
        hang: AtomicBool::new(false),
    });
    let n = node.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            n.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(fake_conn(n.clone(), sock));
        }
    });
    node
}

async fn fake_conn(node: Arc<FakeNode>, mut sock: TcpStream) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut db = 0u32;
    let mut auth = "noauth".to_string();
    loop {
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut out = Vec::new();
        while let Ok(Some(req)) = resp::parse_request(&mut buf) {
            let name = String::from_utf8_lossy(&req.args[0]).to_ascii_uppercase();
            let arg = |i: usize| {
                req.args
                    .get(i)
                    .map(|a| String::from_utf8_lossy(a).to_string())
                    .unwrap_or_default()
            };
            match name.as_str() {
                "GET" if node.hang.load(Ordering::SeqCst) => {}
                "GET" => {
                    node.gets.fetch_add(1, Ordering::SeqCst);
                    let key = arg(1);
                    if key == "poison" && node.poison.load(Ordering::SeqCst) {
                        out.extend_from_slice(b"?garbage\r\n");
                    } else if let Some(rest) = key.strip_prefix("err:") {
                        out.extend_from_slice(format!("-ERR fake {rest}\r\n").as_bytes());
                    } else {
                        let v = format!("{}:{key}:{db}:{auth}", node.name);
                        out.extend_from_slice(&resp::bulk_reply(v.as_bytes()));
                    }
                }
                "SELECT" => {
                    db = arg(1).parse().unwrap_or(0);
                    out.extend_from_slice(b"+OK\r\n");
                }
                "AUTH" => {
                    auth = arg(1);
                    out.extend_from_slice(b"+OK\r\n");
                }
                "PING" => out.extend_from_slice(b"+PONG\r\n"),
                _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
            }
        }
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);

struct Setup {
    rw: Arc<FakeNode>,
    ros: Vec<Arc<FakeNode>>,
    addr: String,
    cancel: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn setup(ros: usize, shared_ro_conns: usize, down_retry: Duration) -> Setup {
    let rw = fake_node("rw").await;
    let mut ro_nodes = Vec::new();
    for i in 0..ros {
        ro_nodes.push(fake_node(&format!("ro{i}")).await);
    }
    let ro_addrs: Vec<String> = ro_nodes.iter().map(|n| n.addr.clone()).collect();
    let cfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        shared_ro_conns,
        ro_reply_timeout: Duration::from_millis(500),
        down_retry,
        ..ProxyConfig::default()
    };
    let topo = TopologySource::fixed(Topology::from_addrs(1, Some(&rw.addr), &ro_addrs));
    let proxy = Proxy::bind(cfg, topo).await.unwrap();
    let addr = proxy.local_addr().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.run(cancel.clone()));
    Setup {
        rw,
        ros: ro_nodes,
        addr,
        cancel,
    }
}

/// `GET key` through `con`; the fake nodes always answer a string.
async fn get(con: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("GET").arg(key).query_async(con).await.unwrap()
}

async fn client(addr: &str) -> MultiplexedConnection {
    let c = redis::Client::open(format!("redis://{addr}/")).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        c.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// `clients` clients each send `rounds` pipelines of `per` GETs at once and
/// check every reply is its own key's, in order; returns the replies'
/// node names.
async fn pipelined_reads(
    addr: &str,
    clients: usize,
    rounds: usize,
    per: usize,
    pause: Duration,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut con = client(&addr).await;
            let mut nodes = Vec::new();
            for r in 0..rounds {
                let keys: Vec<String> = (0..per).map(|i| format!("k{c}-{r}-{i}")).collect();
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("GET").arg(k);
                }
                let got: Vec<String> = p.query_async(&mut con).await.expect("pipeline");
                assert_eq!(got.len(), keys.len());
                for (k, v) in keys.iter().zip(&got) {
                    let parts: Vec<&str> = v.split(':').collect();
                    assert_eq!(parts.len(), 4, "reply {v:?}");
                    assert_eq!(parts[1], k, "client {c}: reply {v:?} out of order");
                    assert_eq!(parts[2], "0");
                    nodes.push(parts[0].to_string());
                }
                tokio::time::sleep(pause).await;
            }
            nodes
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let nodes = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("clients finish in time")
            .expect("client task");
        all.extend(nodes);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_of_many_clients_share_ro_connections_and_keep_their_order() {
    let s = setup(2, 2, SECOND).await;
    let nodes = pipelined_reads(&s.addr, 20, 30, 16, Duration::ZERO).await;
    assert_eq!(nodes.len(), 20 * 30 * 16);
    for ro in &s.ros {
        let served = nodes.iter().filter(|n| **n == ro.name).count();
        assert!(
            served > nodes.len() / 4,
            "{} served {served} of {} reads",
            ro.name,
            nodes.len()
        );
        // 20 clients, but only the shared connections (2 lanes) reached it.
        let conns = ro.accepted.load(Ordering::SeqCst);
        assert!(
            (1..=2).contains(&conns),
            "{} accepted {conns} connections",
            ro.name
        );
    }
    assert_eq!(
        s.rw.gets.load(Ordering::SeqCst),
        0,
        "no read reached the RW"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_connections_every_client_has_its_own() {
    let s = setup(2, 0, SECOND).await;
    let nodes = pipelined_reads(&s.addr, 6, 5, 16, Duration::ZERO).await;
    assert_eq!(nodes.len(), 6 * 5 * 16);
    for ro in &s.ros {
        assert_eq!(ro.accepted.load(Ordering::SeqCst), 6, "{}", ro.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_shared_connection_fails_no_client_request() {
    let s = setup(2, 1, Duration::from_millis(10)).await;
    for ro in &s.ros {
        ro.poison.store(true, Ordering::SeqCst);
    }
    let addr = s.addr.clone();
    // Readers run while another client breaks the shared connections over
    // and over with replies that are not RESP.
    let readers =
        tokio::spawn(
            async move { pipelined_reads(&addr, 8, 40, 16, Duration::from_millis(3)).await },
        );
    let mut con = client(&s.addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut breaks = 0;
    while !readers.is_finished() && Instant::now() < deadline {
        // The poisoned read itself is re-sent to the RW node.
        let v: String = redis::cmd("GET")
            .arg("poison")
            .query_async(&mut con)
            .await
            .expect("poisoned read answered");
        assert_eq!(v, "rw:poison:0:noauth");
        breaks += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let nodes = tokio::time::timeout(Duration::from_secs(60), readers)
        .await
        .expect("readers finish")
        .expect("no reader saw an error or a reply out of order");
    assert_eq!(nodes.len(), 8 * 40 * 16);
    assert!(breaks > 0);
    // The broken connections were replaced, not given up on: the RO nodes
    // kept serving reads.
    let from_ro = nodes.iter().filter(|n| n.starts_with("ro")).count();
    assert!(from_ro > 0, "no read served by an RO node");
    let conns: usize = s
        .ros
        .iter()
        .map(|r| r.accepted.load(Ordering::SeqCst))
        .sum();
    assert!(
        conns > 2,
        "shared connections were never reopened ({conns})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_select_and_auth_keep_their_meaning_on_shared_connections() {
    let s = setup(2, 2, SECOND).await;
    let mut con = client(&s.addr).await;
    // An error reply passes through unchanged, and the next reply is still
    // the right one.
    let e = redis::cmd("GET")
        .arg("err:x")
        .query_async::<String>(&mut con)
        .await
        .expect_err("error passes through");
    assert!(e.to_string().contains("fake x"), "{e}");
    let v: String = get(&mut con, "a").await;
    assert!(v.starts_with("ro") && v.ends_with(":a:0:noauth"), "{v}");
    // SELECT: reads use a shared connection of that database.
    let _: () = redis::cmd("SELECT")
        .arg(3)
        .query_async(&mut con)
        .await
        .unwrap();
    for k in ["a", "b", "c", "d"] {
        let v: String = get(&mut con, k).await;
        assert!(v.ends_with(&format!(":{k}:3:noauth")), "{v}");
        assert!(v.starts_with("ro"), "{v}");
    }
    // AUTH: the client's reads go over its own authenticated connections.
    let _: () = redis::cmd("AUTH")
        .arg("pw")
        .query_async(&mut con)
        .await
        .unwrap();
    for k in ["a", "b", "c", "d"] {
        let v: String = get(&mut con, k).await;
        assert!(v.ends_with(&format!(":{k}:3:pw")), "{v}");
    }
    // Another client is unaffected by the first one's SELECT and AUTH.
    let mut other = client(&s.addr).await;
    let v: String = get(&mut other, "a").await;
    assert!(v.ends_with(":a:0:noauth"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_beyond_the_in_flight_bound_mixing_rw_and_shared_reads_stays_in_order() {
    let s = setup(2, 2, SECOND).await;
    let mut con = client(&s.addr).await;
    // 20,000 requests: more than the 4096 a client may have in flight and
    // many slot hand-overs; every 7th goes to the RW node (PING).
    let n = 20_000;
    let mut p = redis::pipe();
    for i in 0..n {
        if i % 7 == 0 {
            p.cmd("PING");
        } else {
            p.cmd("GET").arg(format!("key{i}"));
        }
    }
    let got: Vec<String> = tokio::time::timeout(Duration::from_secs(60), p.query_async(&mut con))
        .await
        .expect("pipeline answered in time")
        .expect("pipeline");
    assert_eq!(got.len(), n);
    for (i, v) in got.iter().enumerate() {
        if i % 7 == 0 {
            assert_eq!(v, "PONG", "reply {i}");
        } else {
            let parts: Vec<&str> = v.split(':').collect();
            assert_eq!(
                parts.get(1).copied(),
                Some(&*format!("key{i}")),
                "reply {i}: {v}"
            );
            assert!(parts[0].starts_with("ro"), "reply {i}: {v}");
        }
    }
    assert_eq!(s.rw.gets.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stuck_on_a_hung_shared_connection_are_answered_by_the_rw_node() {
    // RO timeout 500 ms (see `setup`).
    let s = setup(2, 1, Duration::from_secs(30)).await;
    let mut warm = client(&s.addr).await;
    let _: String = get(&mut warm, "x").await;
    for ro in &s.ros {
        ro.hang.store(true, Ordering::SeqCst);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let addr = s.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut con = client(&addr).await;
            let mut p = redis::pipe();
            for i in 0..16 {
                p.cmd("GET").arg(format!("h{c}-{i}"));
            }
            let got: Vec<String> = p.query_async(&mut con).await.expect("answered");
            for (i, v) in got.iter().enumerate() {
                assert_eq!(v, &format!("rw:h{c}-{i}:0:noauth"));
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("reads answered despite the hung RO nodes")
            .expect("client task");
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Both nodes are marked down now: new reads go to the RW node at once.
    let t = Instant::now();
    let v: String = get(&mut warm, "later").await;
    assert_eq!(v, "rw:later:0:noauth");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}
