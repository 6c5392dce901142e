//! Routing correctness: pipelines, transactions, split reads, errors.

use std::collections::HashSet;

use redis::Value;

use crate::common::{cmd_bytes, redis_cli, KvNode, ProxyNode, Raw, Setup};

/// Loads the same data under two prefixes so one pipeline can run through
/// the proxy and the other directly against the RW node.
async fn load(s: &Setup, prefixes: &[&str]) {
    let mut c = s.rw.conn().await;
    for p in prefixes {
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(format!("{p}:s1")).arg("v1").ignore();
        pipe.cmd("SET").arg(format!("{p}:n")).arg("10").ignore();
        pipe.cmd("HSET")
            .arg(format!("{p}:h"))
            .arg(&["f1", "a", "f2", "b"])
            .ignore();
        pipe.cmd("RPUSH")
            .arg(format!("{p}:l"))
            .arg(&["x", "y", "z"])
            .ignore();
        pipe.cmd("SADD")
            .arg(format!("{p}:set"))
            .arg(&["m1", "m2"])
            .ignore();
        pipe.query_async::<()>(&mut c).await.expect("load");
    }
    let _: () = redis::cmd("SET")
        .arg("sentinel")
        .arg("loaded")
        .query_async(&mut c)
        .await
        .expect("sentinel");
    s.wait_ros_see("sentinel", "loaded").await;
}

fn pipeline(p: &str) -> Vec<u8> {
    let lines = [
        format!("GET {p}:s1"),
        format!("SET {p}:new hello"),
        format!("INCR {p}:n"),
        format!("HGETALL {p}:h"),
        format!("LRANGE {p}:l 0 -1"),
        format!("MGET {p}:s1 {p}:missing {p}:h {p}:s1"),
        format!("GET {p}:h"),
        "NOSUCHCMD a b".to_string(),
        "GET".to_string(),
        format!("EXISTS {p}:s1 {p}:h {p}:nope {p}:l"),
        format!("TYPE {p}:l"),
        format!("SISMEMBER {p}:set m2"),
        format!("HSET {p}:s1 f v"),
        format!("DEL {p}:new"),
        "PING".to_string(),
        "ECHO hi".to_string(),
        format!("STRLEN {p}:s1"),
        format!("LINDEX {p}:l 1"),
        format!("INCRBY {p}:n notanumber"),
    ];
    let mut out = Vec::new();
    for l in &lines {
        out.extend_from_slice(&cmd_bytes(l));
    }
    // A long tail of writes and reads, so the pipeline spans many reads.
    for i in 0..300 {
        out.extend_from_slice(&cmd_bytes(&format!("SET {p}:bulk{i} {i}")));
        out.extend_from_slice(&cmd_bytes(&format!("GET {p}:s1")));
        out.extend_from_slice(&cmd_bytes(&format!("HGET {p}:h f{}", i % 3)));
    }
    out
}

const PIPELINE_LEN: usize = 19 + 900;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_reads_and_writes_matches_a_direct_connection() {
    let s = Setup::start(2, &[], &[]).await;
    load(&s, &["px", "dx"]).await;

    let mut via = Raw::connect(s.proxy.port).await;
    via.send(&pipeline("px")).await;
    let got = via.replies(PIPELINE_LEN).await;

    let mut direct = Raw::connect(s.rw.port).await;
    direct.send(&pipeline("dx")).await;
    let want = direct.replies(PIPELINE_LEN).await;

    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w),
            "reply {i} differs"
        );
    }
    // The errors really were errors (the comparison is not vacuous).
    assert!(got[6].starts_with(b"-WRONGTYPE"));
    assert!(got[7].starts_with(b"-ERR unknown command"));
    assert!(got[8].starts_with(b"-ERR wrong number of arguments"));
    assert_eq!(&got[9][..], b":3\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_runs_on_the_rw_node_and_watch_conflicts_abort() {
    let s = Setup::start(2, &[], &[]).await;
    let mut c = s.proxy.conn().await;
    // Reads inside MULTI see the transaction's own writes: they go to RW.
    let (ok, n, v): (String, i64, String) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("t:a")
        .arg(1)
        .cmd("INCRBY")
        .arg("t:a")
        .arg(5)
        .cmd("GET")
        .arg("t:a")
        .query_async(&mut c)
        .await
        .expect("MULTI/EXEC");
    assert_eq!((ok.as_str(), n, v.as_str()), ("OK", 6, "6"));

    // WATCH conflict through two proxy connections.
    let mut a = Raw::connect(s.proxy.port).await;
    let mut b = Raw::connect(s.proxy.port).await;
    a.send(&cmd_bytes("WATCH t:w")).await;
    a.send(&cmd_bytes("GET t:w")).await;
    assert_eq!(
        a.replies(2).await,
        vec![b"+OK\r\n".to_vec(), b"$-1\r\n".to_vec()]
    );
    b.send(&cmd_bytes("SET t:w other")).await;
    assert_eq!(b.replies(1).await, vec![b"+OK\r\n".to_vec()]);
    a.send(&cmd_bytes("MULTI")).await;
    a.send(&cmd_bytes("SET t:w mine")).await;
    a.send(&cmd_bytes("EXEC")).await;
    let r = a.replies(3).await;
    assert_eq!(r[0], b"+OK\r\n");
    assert_eq!(r[1], b"+QUEUED\r\n");
    assert_eq!(
        r[2], b"*-1\r\n",
        "EXEC after a conflicting write must abort"
    );
    // Without a conflict the same sequence commits; DISCARD unpins.
    a.send(&cmd_bytes("WATCH t:w")).await;
    a.send(&cmd_bytes("MULTI")).await;
    a.send(&cmd_bytes("SET t:w mine")).await;
    a.send(&cmd_bytes("EXEC")).await;
    let r = a.replies(4).await;
    assert_eq!(r[3], b"*1\r\n+OK\r\n");
    a.send(&cmd_bytes("MULTI")).await;
    a.send(&cmd_bytes("SET t:w discarded")).await;
    a.send(&cmd_bytes("DISCARD")).await;
    a.send(&cmd_bytes("GET t:w")).await;
    let r = a.replies(4).await;
    assert_eq!(r[2], b"+OK\r\n");
    // The GET may be served by a lagging RO node: it sees "mine", an
    // earlier value or none, never the discarded value.
    assert!(
        r[3] == b"$4\r\nmine\r\n" || r[3] == b"$5\r\nother\r\n" || r[3] == b"$-1\r\n",
        "GET after DISCARD: {:?}",
        String::from_utf8_lossy(&r[3])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_spanning_all_ro_nodes_keeps_order_and_exists_sums() {
    let s = Setup::start(3, &[], &[]).await;
    let mut c = s.proxy.conn().await;
    let n = 60;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET")
            .arg(format!("m:{i}"))
            .arg(format!("v{i}"))
            .ignore();
    }
    pipe.cmd("HSET").arg("m:hash").arg("f").arg("x").ignore();
    pipe.cmd("SET").arg("sentinel").arg("m").ignore();
    pipe.query_async::<()>(&mut c).await.expect("load");
    s.wait_ros_see("sentinel", "m").await;

    // The keys really span every RO node.
    let mut routes = HashSet::new();
    for i in 0..n {
        let r: String = redis::cmd("PROXY")
            .arg("ROUTE")
            .arg(format!("m:{i}"))
            .query_async(&mut c)
            .await
            .expect("PROXY ROUTE");
        routes.insert(r);
    }
    let ro_addrs: HashSet<String> = s.ros.iter().map(KvNode::addr).collect();
    assert_eq!(routes, ro_addrs, "60 keys should hash onto all 3 RO nodes");

    let mut keys: Vec<String> = (0..n).map(|i| format!("m:{i}")).collect();
    keys.insert(17, "m:missing".into());
    keys.insert(30, "m:hash".into());
    keys.push("m:0".into());
    let before: Vec<u64> =
        futures::future::join_all(s.ros.iter().map(|r| r.commands_processed())).await;
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .expect("MGET");
    let want: Vec<Option<String>> = keys
        .iter()
        .map(|k| {
            k.strip_prefix("m:")
                .and_then(|i| i.parse::<usize>().ok())
                .map(|i| format!("v{i}"))
        })
        .collect();
    assert_eq!(got, want);
    let after: Vec<u64> =
        futures::future::join_all(s.ros.iter().map(|r| r.commands_processed())).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        // Each node ran its part of the MGET (plus the INFO of `before`).
        assert!(
            a - b >= 2,
            "RO node {i} got no part of the MGET ({b} -> {a})"
        );
    }

    let e: i64 = redis::cmd("EXISTS")
        .arg(&["m:1", "m:2", "m:missing", "m:3", "m:hash", "m:1"])
        .query_async(&mut c)
        .await
        .expect("EXISTS");
    assert_eq!(e, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_reach_the_client_unchanged() {
    let s = Setup::start(2, &[], &[]).await;
    let mut c = s.rw.conn().await;
    let _: () = redis::cmd("HSET")
        .arg("e:h")
        .arg("f")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("HSET");
    let _: () = redis::cmd("SET")
        .arg("sentinel")
        .arg("e")
        .query_async(&mut c)
        .await
        .expect("SET");
    s.wait_ros_see("sentinel", "e").await;
    for args in [
        &["GET", "e:h"][..],
        &["LPUSH", "e:h", "x"],
        &["NOSUCHCOMMAND", "a"],
        &["GET"],
        &["SET", "k"],
        &["INCR", "e:h"],
        &["EXPIRE", "e:h", "notanumber"],
        &["MGET"],
        &["SELECT", "99"],
    ] {
        let via = redis_cli(s.proxy.port, args);
        let direct = redis_cli(s.rw.port, args);
        assert_eq!(via, direct, "redis-cli {args:?}");
        assert!(
            via.starts_with("(error)")
                || via.starts_with("ERR")
                || via.contains("ERR")
                || via.contains("WRONGTYPE"),
            "{args:?}: {via:?} is no error"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_the_ro_nodes() {
    let s = Setup::start(3, &[], &[]).await;
    let mut c = s.proxy.conn().await;
    let _: () = redis::cmd("SET")
        .arg("sentinel")
        .arg("r")
        .query_async(&mut c)
        .await
        .expect("SET");
    s.wait_ros_see("sentinel", "r").await;
    let before: Vec<u64> =
        futures::future::join_all(s.ros.iter().map(|r| r.commands_processed())).await;
    let rw_before = s.rw.commands_processed().await;
    let reads = 600;
    for i in 0..reads {
        let _: Option<String> = redis::cmd("GET")
            .arg(format!("spread:{i}"))
            .query_async(&mut c)
            .await
            .expect("GET");
    }
    let after: Vec<u64> =
        futures::future::join_all(s.ros.iter().map(|r| r.commands_processed())).await;
    let rw_after = s.rw.commands_processed().await;
    let got: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    eprintln!("commands per RO node (reads + INFO): {got:?}");
    let sum = got.iter().sum::<u64>();
    // Each node also counts this test's two INFO calls and the client handshakes (CLIENT SETINFO).
    assert!(
        (reads..=reads + 18).contains(&sum),
        "every read went to an RO node: {got:?}"
    );
    for g in &got {
        assert!(*g > reads / 6, "uneven spread {got:?}");
    }
    // Only the INFO calls reached the RW node.
    assert!(
        rw_after - rw_before <= 6,
        "reads must not reach the RW node ({rw_before} -> {rw_after})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ro_nodes_everything_goes_to_the_rw_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rw = KvNode::start(tmp.path(), "rw", &[]).await;
    let proxy = ProxyNode::start(tmp.path(), Some(&rw), &[], &[]).await;
    let mut c = proxy.conn().await;
    let _: () = redis::cmd("MSET")
        .arg(&["a", "1", "b", "2"])
        .query_async(&mut c)
        .await
        .expect("MSET");
    let v: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["a", "x", "b"])
        .query_async(&mut c)
        .await
        .expect("MGET");
    assert_eq!(v, vec![Some("1".into()), None, Some("2".into())]);
    let n: i64 = redis::cmd("EXISTS")
        .arg(&["a", "b", "x"])
        .query_async(&mut c)
        .await
        .expect("EXISTS");
    assert_eq!(n, 2);
    let n: i64 = redis::cmd("DBSIZE")
        .query_async(&mut c)
        .await
        .expect("DBSIZE");
    assert_eq!(n, 2);
    let (cursor, keys): (String, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("COUNT")
        .arg(100)
        .query_async(&mut c)
        .await
        .expect("SCAN");
    assert_eq!(cursor, "0");
    assert_eq!(keys.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_applies_to_every_backend_connection() {
    let s = Setup::start(2, &[], &[]).await;
    let mut a = Raw::connect(s.proxy.port).await;
    a.send(&cmd_bytes("SELECT 3")).await;
    a.send(&cmd_bytes("SET sel:k in3")).await;
    assert_eq!(
        a.replies(2).await,
        vec![b"+OK\r\n".to_vec(), b"+OK\r\n".to_vec()]
    );
    // Reads go to RO nodes (opened after the SELECT): they must read db 3.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        a.send(&cmd_bytes("GET sel:k")).await;
        let r = a.replies(1).await;
        if r[0] == b"$3\r\nin3\r\n" {
            break;
        }
        assert_eq!(r[0], b"$-1\r\n");
        assert!(
            std::time::Instant::now() < deadline,
            "RO never showed db 3's key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // db 0 does not have it.
    a.send(&cmd_bytes("SELECT 0")).await;
    a.send(&cmd_bytes("GET sel:k")).await;
    a.send(&cmd_bytes("EXISTS sel:k sel:k")).await;
    assert_eq!(
        a.replies(3).await,
        vec![b"+OK\r\n".to_vec(), b"$-1\r\n".to_vec(), b":0\r\n".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_client() {
    let s = Setup::start(1, &[], &[]).await;
    let mut good = Raw::connect(s.proxy.port).await;
    good.send(&cmd_bytes("SET mal:k v")).await;
    assert_eq!(good.replies(1).await, vec![b"+OK\r\n".to_vec()]);
    for bad in [
        &b"*1\r\n$-5\r\n"[..],
        b"*1\r\n$600000000\r\n",
        b"*2000000\r\n",
        b"*1\r\n+PING\r\n",
    ] {
        let mut b = Raw::connect(s.proxy.port).await;
        // A good request first: its reply still arrives.
        let mut req = cmd_bytes("PING");
        req.extend_from_slice(bad);
        b.send(&req).await;
        let all = b.read_to_eof().await;
        let text = String::from_utf8_lossy(&all);
        assert!(
            text.starts_with("+PONG\r\n-ERR Protocol error"),
            "{bad:?}: {text:?}"
        );
    }
    let mut long = Raw::connect(s.proxy.port).await;
    long.send(&vec![b'a'; 70 * 1024]).await;
    let text = String::from_utf8_lossy(&long.read_to_eof().await).into_owned();
    assert!(
        text.starts_with("-ERR Protocol error: too big inline request"),
        "{text:?}"
    );
    // The other client is untouched.
    good.send(&cmd_bytes("PING")).await;
    good.send(&cmd_bytes("ECHO still")).await;
    assert_eq!(
        good.replies(2).await,
        vec![b"+PONG\r\n".to_vec(), b"$5\r\nstill\r\n".to_vec()]
    );
    let _ = s.proxy.log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_from_many_clients_at_once() {
    let s = Setup::start(2, &[], &[]).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let port = s.proxy.port;
        tasks.push(tokio::spawn(async move {
            let mut c = crate::common::connect(port).await;
            for round in 0..20 {
                let mut pipe = redis::pipe();
                for i in 0..50 {
                    pipe.cmd("SET")
                        .arg(format!("c{t}:{i}"))
                        .arg(round * 100 + i)
                        .ignore();
                    pipe.cmd("PING");
                    pipe.cmd("MGET")
                        .arg(&[format!("c{t}:{i}"), format!("c{t}:x")]);
                }
                let r: Vec<Value> = pipe.query_async(&mut c).await.expect("pipeline");
                assert_eq!(r.len(), 100);
                for pair in r.chunks(2) {
                    assert_eq!(pair[0], Value::SimpleString("PONG".into()));
                    let Value::Array(items) = &pair[1] else {
                        panic!("MGET reply {:?}", pair[1]);
                    };
                    assert_eq!(items.len(), 2);
                    assert_eq!(items[1], Value::Nil);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(60), t)
            .await
            .expect("clients finish in time")
            .expect("client task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_passed_through_and_replayed_on_every_backend() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pw = ["--requirepass", "s3cret"];
    let rw = KvNode::start(tmp.path(), "rw", &pw).await;
    let ro1 = KvNode::start(tmp.path(), "ro", &pw).await;
    let ro2 = KvNode::start(tmp.path(), "ro", &pw).await;
    let proxy = ProxyNode::start(tmp.path(), Some(&rw), &[&ro1, &ro2], &[]).await;
    let mut a = Raw::connect(proxy.port).await;
    // Before AUTH both the RW node and the RO nodes refuse, unchanged.
    a.send(&cmd_bytes("SET auth:k v")).await;
    a.send(&cmd_bytes("GET auth:k")).await;
    a.send(&cmd_bytes("AUTH wrong")).await;
    let r = a.replies(3).await;
    assert!(
        r[0].starts_with(b"-NOAUTH"),
        "{:?}",
        String::from_utf8_lossy(&r[0])
    );
    assert!(
        r[1].starts_with(b"-NOAUTH"),
        "{:?}",
        String::from_utf8_lossy(&r[1])
    );
    assert!(
        r[2].starts_with(b"-WRONGPASS") || r[2].starts_with(b"-ERR"),
        "{:?}",
        String::from_utf8_lossy(&r[2])
    );
    a.send(&cmd_bytes("AUTH s3cret")).await;
    a.send(&cmd_bytes("SET auth:k v")).await;
    assert_eq!(
        a.replies(2).await,
        vec![b"+OK\r\n".to_vec(), b"+OK\r\n".to_vec()]
    );
    // Reads on RO nodes (including connections opened after the AUTH) are
    // authenticated: never NOAUTH, and the value shows up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        a.send(&cmd_bytes("MGET auth:k auth:x auth:y auth:z auth:k"))
            .await;
        let r = a.replies(1).await;
        let text = String::from_utf8_lossy(&r[0]).into_owned();
        assert!(r[0].starts_with(b"*5"), "{text:?}");
        if text.starts_with("*5\r\n$1\r\nv\r\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "value never visible: {text:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_values_and_long_replies_pass_through() {
    let s = Setup::start(1, &[], &[]).await;
    let mut c = s.proxy.conn().await;
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let _: () = redis::cmd("SET")
        .arg("big:v")
        .arg(&big)
        .query_async(&mut c)
        .await
        .expect("SET big");
    let items: Vec<String> = (0..20_000).map(|i| format!("item-{i}")).collect();
    let _: i64 = redis::cmd("RPUSH")
        .arg("big:l")
        .arg(&items)
        .query_async(&mut c)
        .await
        .expect("RPUSH");
    let _: () = redis::cmd("SET")
        .arg("sentinel")
        .arg("big")
        .query_async(&mut c)
        .await
        .expect("SET");
    s.wait_ros_see("sentinel", "big").await;
    // Both reads are served by the RO node.
    let got: Vec<u8> = redis::cmd("GET")
        .arg("big:v")
        .query_async(&mut c)
        .await
        .expect("GET big");
    assert!(got == big, "8 MiB value differs ({} bytes back)", got.len());
    let got: Vec<String> = redis::cmd("LRANGE")
        .arg("big:l")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .expect("LRANGE");
    assert_eq!(got, items);
}
