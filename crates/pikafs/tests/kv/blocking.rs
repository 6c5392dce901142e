//! Blocking list commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP): two
//! or more real connections, one blocked, others pushing.

use std::time::{Duration, Instant};

use pikafs_testkit::wait_for;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{assert_err, qs, KvNode};

/// INFO's `blocked_clients`.
async fn blocked_clients(c: &mut MultiplexedConnection) -> i64 {
    let info: String = qs(c, "INFO clients").await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in {info}"))
}

/// Polls until exactly `n` clients are blocked.
async fn wait_blocked(c: &MultiplexedConnection, n: i64) {
    wait_for(
        &format!("{n} blocked clients"),
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            async move { (blocked_clients(&mut c).await == n).then_some(()) }
        },
    )
    .await
    .unwrap();
}

/// Reads from a raw socket until `want` bytes arrived (bounded).
async fn read_exact_reply(s: &mut TcpStream, want: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < want.len() {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
}

#[tokio::test]
async fn a_push_from_another_connection_wakes_blpop_and_timeouts_answer_nil() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let blocker = node.conn().await;
    let t = tokio::spawn(async move {
        let mut b = blocker;
        let r: Option<(String, String)> = qs(&mut b, "BLPOP k1 k2 5").await.unwrap();
        r
    });
    wait_blocked(&c, 1).await;
    // The blocked client stalls nobody else.
    assert_eq!(qs::<String>(&mut c, "PING").await.unwrap(), "PONG");
    assert_eq!(qs::<i64>(&mut c, "RPUSH k2 v").await.unwrap(), 1);
    let got = tokio::time::timeout(Duration::from_secs(10), t)
        .await
        .expect("woken in time")
        .unwrap();
    assert_eq!(got, Some(("k2".into(), "v".into())));
    assert_eq!(qs::<i64>(&mut c, "EXISTS k2").await.unwrap(), 0);
    assert_eq!(blocked_clients(&mut c).await, 0);

    // Timeout: nil array after about the timeout.
    let start = Instant::now();
    let v: Value = qs(&mut c, "BLPOP nothing 0.3").await.unwrap();
    let took = start.elapsed();
    assert_eq!(v, Value::Nil);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let v: Value = qs(&mut c, "BRPOPLPUSH nothing dst 0.1").await.unwrap();
    assert_eq!(v, Value::Nil);

    // Served at once when data is there; keys in argument order.
    let _: i64 = qs(&mut c, "RPUSH x 1 2").await.unwrap();
    let _: i64 = qs(&mut c, "RPUSH y 3").await.unwrap();
    let r: (String, String) = qs(&mut c, "BLPOP y x 0").await.unwrap();
    assert_eq!(r, ("y".into(), "3".into()));
    let r: (String, String) = qs(&mut c, "BRPOP nothing x 0").await.unwrap();
    assert_eq!(r, ("x".into(), "2".into()));
    let _: i64 = qs(&mut c, "RPUSH m a b c").await.unwrap();
    let r: (String, Vec<String>) = qs(&mut c, "BLMPOP 0 2 none m RIGHT COUNT 2").await.unwrap();
    assert_eq!(r, ("m".into(), vec!["c".into(), "b".into()]));

    // Errors, with Redis's texts.
    assert_err(
        qs::<Value>(&mut c, "BLPOP k -1").await,
        "ERR timeout is negative",
    );
    assert_err(
        qs::<Value>(&mut c, "BLPOP k abc").await,
        "ERR timeout is not a float or out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "BLMOVE a b UP LEFT 0").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "BLPOP").await,
        "ERR wrong number of arguments for 'blpop' command",
    );
    let _: String = qs(&mut c, "SET s str").await.unwrap();
    assert_err(qs::<Value>(&mut c, "BLPOP s 1").await, "WRONGTYPE");
    assert_err(qs::<Value>(&mut c, "BLPOP empty s 1").await, "WRONGTYPE");

    // Inside MULTI they never block: nil when empty, served when not.
    let _: i64 = qs(&mut c, "RPUSH full 9").await.unwrap();
    let mut p = redis::pipe();
    p.atomic()
        .cmd("BLPOP")
        .arg("empty")
        .arg(0)
        .cmd("BLMOVE")
        .arg("empty")
        .arg("d")
        .arg("LEFT")
        .arg("RIGHT")
        .arg(0)
        .cmd("BRPOP")
        .arg("full")
        .arg(0);
    let start = Instant::now();
    let v: Vec<Value> = tokio::time::timeout(Duration::from_secs(5), p.query_async(&mut c))
        .await
        .expect("MULTI never blocks")
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(v[0], Value::Nil);
    assert_eq!(v[1], Value::Nil);
    assert_eq!(
        v[2],
        Value::Array(vec![
            Value::BulkString(b"full".to_vec()),
            Value::BulkString(b"9".to_vec())
        ])
    );
}

#[tokio::test]
async fn first_blocked_is_first_served_and_blmove_is_atomic_and_chains() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let mut waiters = Vec::new();
    for i in 0..3 {
        let mut b = node.conn().await;
        waiters.push(tokio::spawn(async move {
            let r: (String, String) = qs(&mut b, "BLPOP q 10").await.unwrap();
            r.1
        }));
        // Block them one after the other, so their order is known.
        wait_blocked(&c, i + 1).await;
    }
    // One push of three elements: the oldest waiter gets the first.
    let _: i64 = qs(&mut c, "RPUSH q a b c").await.unwrap();
    let mut got = Vec::new();
    for w in waiters {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("served in time")
                .unwrap(),
        );
    }
    assert_eq!(got, vec!["a", "b", "c"]);

    // BLMOVE src → dst while a BLPOP waits on dst: the moved element lands
    // in dst in the same write as the pop, and wakes the BLPOP.
    let mut m = node.conn().await;
    let mover = tokio::spawn(async move {
        let r: Option<String> = qs(&mut m, "BLMOVE src dst RIGHT LEFT 10").await.unwrap();
        r
    });
    wait_blocked(&c, 1).await;
    let mut p = node.conn().await;
    let popper = tokio::spawn(async move {
        let r: (String, String) = qs(&mut p, "BLPOP dst 10").await.unwrap();
        r
    });
    wait_blocked(&c, 2).await;
    let _: i64 = qs(&mut c, "RPUSH src x1 x2").await.unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(10), mover)
        .await
        .expect("mover served")
        .unwrap();
    assert_eq!(moved.as_deref(), Some("x2"));
    let popped = tokio::time::timeout(Duration::from_secs(10), popper)
        .await
        .expect("popper served")
        .unwrap();
    assert_eq!(popped, ("dst".into(), "x2".into()));
    assert_eq!(
        qs::<Vec<String>>(&mut c, "LRANGE src 0 -1").await.unwrap(),
        vec!["x1"]
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS dst").await.unwrap(), 0);

    // Atomicity under concurrency: movers rotate elements between two
    // lists; an observer reading both lengths in one MULTI always sees the
    // same total.
    let _: i64 = qs(&mut c, "RPUSH ring 1 2 3 4 5").await.unwrap();
    let mut movers = Vec::new();
    for i in 0..4 {
        let mut mc = node.conn().await;
        movers.push(tokio::spawn(async move {
            for _ in 0..100 {
                let (a, b) = if i % 2 == 0 {
                    ("ring", "ring2")
                } else {
                    ("ring2", "ring")
                };
                let _: Value = qs(&mut mc, &format!("BLMOVE {a} {b} LEFT RIGHT 0.01"))
                    .await
                    .unwrap();
            }
        }));
    }
    for _ in 0..100 {
        let mut p = redis::pipe();
        p.atomic().cmd("LLEN").arg("ring").cmd("LLEN").arg("ring2");
        let (a, b): (i64, i64) = p.query_async(&mut c).await.unwrap();
        assert_eq!(a + b, 5, "an element was in flight between lists");
    }
    for m in movers {
        tokio::time::timeout(Duration::from_secs(60), m)
            .await
            .expect("movers finish")
            .unwrap();
    }
}

#[tokio::test]
async fn disconnected_or_killed_blocked_clients_are_forgotten() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;

    // A client that closes while blocked must not swallow a later push.
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"BLPOP gone 0\r\n").await.unwrap();
    wait_blocked(&c, 1).await;
    drop(s);
    wait_blocked(&c, 0).await;
    let _: i64 = qs(&mut c, "RPUSH gone v").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "LLEN gone").await.unwrap(), 1);

    // CLIENT KILL unblocks (closes) it.
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"CLIENT ID\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let id: String = String::from_utf8_lossy(&buf[1..n]).trim().to_string();
    s.write_all(b"BLPOP killed 0\r\n").await.unwrap();
    wait_blocked(&c, 1).await;
    let n: i64 = qs(&mut c, &format!("CLIENT KILL ID {id}")).await.unwrap();
    assert_eq!(n, 1);
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "killed connection is closed without a reply");
    wait_blocked(&c, 0).await;

    // Pipelined commands behind a blocked one run after it, in order.
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"PING\r\nBLPOP later 0\r\nECHO after\r\n")
        .await
        .unwrap();
    read_exact_reply(&mut s, "+PONG\r\n").await;
    wait_blocked(&c, 1).await;
    let _: i64 = qs(&mut c, "RPUSH later v").await.unwrap();
    read_exact_reply(&mut s, "*2\r\n$5\r\nlater\r\n$1\r\nv\r\n$5\r\nafter\r\n").await;

    // Many blocked clients hold no threads: the server keeps serving.
    let mut conns = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(format!("BLPOP many{} 0\r\n", i % 4).as_bytes())
            .await
            .unwrap();
        conns.push(s);
    }
    wait_blocked(&c, 64).await;
    for i in 0..200 {
        let _: String = qs(&mut c, &format!("SET plain{i} {i}")).await.unwrap();
    }
    for k in 0..4 {
        let _: i64 = qs(
            &mut c,
            &format!("RPUSH many{k} {}", vec!["e"; 16].join(" ")),
        )
        .await
        .unwrap();
    }
    for s in &mut conns {
        let mut got = vec![0u8; "*2\r\n$5\r\nmany0\r\n$1\r\ne\r\n".len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
            .await
            .expect("served in time")
            .unwrap();
        assert!(
            got.starts_with(b"*2\r\n$5\r\nmany"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(blocked_clients(&mut c).await, 0);
}

#[tokio::test]
async fn blocking_commands_are_readonly_on_an_ro_node() {
    let rw = KvNode::start_rw().await;
    let mut w = rw.conn().await;
    let _: i64 = qs(&mut w, "RPUSH l a").await.unwrap();
    let ro = KvNode::start(&rw.dir, "ro", &[]).await;
    let mut r = ro.conn().await;
    assert_err(qs::<Value>(&mut r, "BLPOP l 0").await, "READONLY");
    assert_err(
        qs::<Value>(&mut r, "BLMOVE l d LEFT LEFT 0").await,
        "READONLY",
    );
}
