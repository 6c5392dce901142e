//! MULTI/EXEC/DISCARD/WATCH and pipelines.

use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{assert_err, qs, KvNode};

#[tokio::test]
async fn multi_exec_is_atomic_and_reports_per_command_errors() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let mut p = redis::pipe();
    p.atomic()
        .cmd("SET")
        .arg("a")
        .arg("1")
        .cmd("INCR")
        .arg("a")
        .cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .cmd("HGETALL")
        .arg("h")
        .cmd("GET")
        .arg("a");
    let (s, n, added, all, a): (String, i64, i64, Vec<String>, String) =
        p.query_async(&mut c).await.unwrap();
    assert_eq!((s.as_str(), n, added, a.as_str()), ("OK", 2, 1, "2"));
    assert_eq!(
        all,
        vec!["f", "v"],
        "reads inside EXEC see earlier queued writes"
    );

    // A runtime error (WRONGTYPE) fails only that command. Raw socket: the
    // redis crate turns an EXEC array holding an error into an Err.
    let mut s = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"MULTI\r\nSET x 1\r\nHSET a f v\r\nSET y 2\r\nEXEC\r\n")
        .await
        .unwrap();
    let want = "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n+OK\r\n";
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < want.len() {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert_eq!(qs::<String>(&mut c, "GET y").await.unwrap(), "2");
    assert_eq!(qs::<String>(&mut c, "GET x").await.unwrap(), "1");
    assert_eq!(
        qs::<String>(&mut c, "TYPE a").await.unwrap(),
        "string",
        "the failed HSET wrote nothing"
    );

    // Queue-time errors abort the whole transaction.
    let _: String = qs(&mut c, "MULTI").await.unwrap();
    assert_eq!(qs::<String>(&mut c, "SET z 1").await.unwrap(), "QUEUED");
    assert_err(
        qs::<Value>(&mut c, "NOSUCHCMD").await,
        "ERR unknown command 'NOSUCHCMD'",
    );
    assert_err(
        qs::<Value>(&mut c, "GET").await,
        "ERR wrong number of arguments for 'get' command",
    );
    assert_err(
        qs::<Value>(&mut c, "EXEC").await,
        "EXECABORT Transaction discarded because of previous errors.",
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS z").await.unwrap(), 0);

    assert_err(qs::<Value>(&mut c, "EXEC").await, "ERR EXEC without MULTI");
    assert_err(
        qs::<Value>(&mut c, "DISCARD").await,
        "ERR DISCARD without MULTI",
    );
    let _: String = qs(&mut c, "MULTI").await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "MULTI").await,
        "ERR MULTI calls can not be nested",
    );
    assert_err(
        qs::<Value>(&mut c, "WATCH a").await,
        "ERR WATCH inside MULTI is not allowed",
    );
    let _: String = qs(&mut c, "SET discarded 1").await.unwrap();
    assert_eq!(qs::<String>(&mut c, "DISCARD").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "EXISTS discarded").await.unwrap(), 0);

    // SELECT inside MULTI switches the db for later queued commands.
    let _: String = qs(&mut c, "MULTI").await.unwrap();
    let _: String = qs(&mut c, "SELECT 5").await.unwrap();
    let _: String = qs(&mut c, "SET in5 v").await.unwrap();
    let _: Value = qs(&mut c, "EXEC").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "EXISTS in5").await.unwrap(), 1);
    let _: String = qs(&mut c, "SELECT 0").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "EXISTS in5").await.unwrap(), 0);
}

#[tokio::test]
async fn watch_aborts_exec_when_another_client_writes() {
    let node = KvNode::start_rw().await;
    // Separate sockets: WATCH state is per connection.
    let mut a = node.conn().await;
    let mut b = node.conn().await;
    let _: String = qs(&mut a, "SET k 1").await.unwrap();
    let _: String = qs(&mut a, "WATCH k").await.unwrap();
    let _: String = qs(&mut b, "SET k 2").await.unwrap();
    let _: String = qs(&mut a, "MULTI").await.unwrap();
    let _: String = qs(&mut a, "SET k 3").await.unwrap();
    let r: Value = qs(&mut a, "EXEC").await.unwrap();
    assert_eq!(
        r,
        Value::Nil,
        "EXEC after a watched write returns a null array"
    );
    assert_eq!(qs::<String>(&mut a, "GET k").await.unwrap(), "2");

    // Untouched watch: EXEC runs. UNWATCH clears.
    let _: String = qs(&mut a, "WATCH k").await.unwrap();
    let _: String = qs(&mut b, "SET other 1").await.unwrap();
    let _: String = qs(&mut a, "MULTI").await.unwrap();
    let _: String = qs(&mut a, "SET k 4").await.unwrap();
    let r: Vec<String> = qs(&mut a, "EXEC").await.unwrap();
    assert_eq!(r, vec!["OK"]);
    let _: String = qs(&mut a, "WATCH k").await.unwrap();
    let _: String = qs(&mut b, "SET k 5").await.unwrap();
    let _: String = qs(&mut a, "UNWATCH").await.unwrap();
    let _: String = qs(&mut a, "MULTI").await.unwrap();
    let _: String = qs(&mut a, "SET k 6").await.unwrap();
    let r: Vec<String> = qs(&mut a, "EXEC").await.unwrap();
    assert_eq!(r, vec!["OK"]);
    // FLUSHALL touches every watched key.
    let _: String = qs(&mut a, "WATCH k").await.unwrap();
    let _: String = qs(&mut b, "FLUSHALL").await.unwrap();
    let _: String = qs(&mut a, "MULTI").await.unwrap();
    let _: String = qs(&mut a, "SET k 7").await.unwrap();
    let r: Value = qs(&mut a, "EXEC").await.unwrap();
    assert_eq!(r, Value::Nil);
}

#[tokio::test]
async fn concurrent_incr_with_watch_retry_never_loses_updates() {
    let node = KvNode::start_rw().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = node.conn().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let _: String = qs(&mut c, "WATCH ctr").await.unwrap();
                    let cur: Option<i64> = qs(&mut c, "GET ctr").await.unwrap();
                    let _: String = qs(&mut c, "MULTI").await.unwrap();
                    let _: String = qs(&mut c, &format!("SET ctr {}", cur.unwrap_or(0) + 1))
                        .await
                        .unwrap();
                    let r: Value = qs(&mut c, "EXEC").await.unwrap();
                    if r != Value::Nil {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "GET ctr").await.unwrap(), 100);
}

#[tokio::test]
async fn long_pipeline_replies_in_order() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let mut p = redis::pipe();
    for i in 0..3000 {
        p.cmd("SET").arg(format!("k{i}")).arg(i);
        p.cmd("GET").arg(format!("k{i}"));
    }
    let r: Vec<Value> = p.query_async(&mut c).await.unwrap();
    assert_eq!(r.len(), 6000);
    for i in 0..3000 {
        assert_eq!(r[2 * i], Value::Okay);
        assert_eq!(r[2 * i + 1], Value::BulkString(i.to_string().into_bytes()));
    }
}
