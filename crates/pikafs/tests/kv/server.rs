//! Connection and server commands, raw RESP robustness, redis-cli and
//! redis-benchmark.

use std::time::Duration;

use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{assert_err, qs, KvNode};

/// Sends `req` on a raw socket and reads until `want` bytes arrived or the
/// peer closed.
async fn raw(sock: &mut TcpStream, req: &[u8], want: usize) -> Vec<u8> {
    sock.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
        }
    }
    out
}

async fn read_to_close(sock: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn malformed_resp_closes_only_that_connection() {
    let node = KvNode::start_rw().await;
    let mut good = node.conn().await;
    let _: String = qs(&mut good, "SET k v").await.unwrap();
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'",
        ),
        (
            b"*2000000\r\n",
            "-ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n$999999999999\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length"),
        (
            b"SET \"unbalanced\n",
            "-ERR Protocol error: unbalanced quotes in request",
        ),
    ];
    for (bytes, want) in cases {
        let mut s = TcpStream::connect(node.addr()).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let out = read_to_close(&mut s).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(want),
            "{:?} → {text:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // A huge inline line without newline is cut off too.
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    let _ = s.write_all(&vec![b'a'; 70 * 1024]).await;
    let out = read_to_close(&mut s).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("-ERR Protocol error: too big inline request")
    );
    // Good requests before the garbage in the same packet are answered.
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    s.write_all(b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n:1\r\n")
        .await
        .unwrap();
    let out = read_to_close(&mut s).await;
    assert!(String::from_utf8_lossy(&out).starts_with("+PONG\r\n+PONG\r\n-ERR Protocol error"));
    // The server and other connections are fine.
    assert_eq!(qs::<String>(&mut good, "GET k").await.unwrap(), "v");
    let mut again = node.conn().await;
    assert_eq!(qs::<String>(&mut again, "PING").await.unwrap(), "PONG");
}

#[tokio::test]
async fn fragmented_and_inline_requests_work() {
    let node = KvNode::start_rw().await;
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    let req = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
    for chunk in req.chunks(3) {
        s.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = raw(&mut s, b"", 5).await;
    assert_eq!(out, b"+OK\r\n");
    let out = raw(&mut s, b"GET key\r\n", 11).await;
    assert_eq!(out, b"$5\r\nva\r\nl\r\n");
    let out = raw(&mut s, b"ECHO \"a b\"\r\n", 9).await;
    assert_eq!(out, b"$3\r\na b\r\n");
    let out = raw(&mut s, b"QUIT\r\n", 5).await;
    assert_eq!(out, b"+OK\r\n");
    assert!(read_to_close(&mut s).await.is_empty(), "QUIT closes");
}

#[tokio::test]
async fn auth_hello_and_connection_commands() {
    let node = KvNode::start_rw_with(&["--requirepass", "s3cret"]).await;
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    let out = raw(&mut s, b"GET k\r\n", 10).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-NOAUTH Authentication required."));
    let out = raw(&mut s, b"AUTH wrong\r\n", 10).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-WRONGPASS"));
    let out = raw(&mut s, b"HELLO 3\r\n", 10).await;
    assert!(String::from_utf8_lossy(&out).starts_with("-NOPROTO"));
    let out = raw(&mut s, b"AUTH default s3cret\r\n", 5).await;
    assert_eq!(out, b"+OK\r\n");
    let out = raw(&mut s, b"PING\r\n", 7).await;
    assert_eq!(out, b"+PONG\r\n");
    drop(s);
    // The redis crate with a password in the URL.
    let client = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", node.port)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(qs::<String>(&mut c, "PING").await.unwrap(), "PONG");
    let hello: Value = qs(&mut c, "HELLO 2").await.unwrap();
    assert!(format!("{hello:?}").contains("proto"));
    assert_eq!(
        qs::<String>(&mut c, "CLIENT SETNAME worker-1")
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(
        qs::<String>(&mut c, "CLIENT GETNAME").await.unwrap(),
        "worker-1"
    );
    assert_err(
        qs::<Value>(&mut c, "CLIENT SETNAME has\nspace").await,
        "ERR",
    );
    let id: i64 = qs(&mut c, "CLIENT ID").await.unwrap();
    let list: String = qs(&mut c, "CLIENT LIST").await.unwrap();
    assert!(
        list.contains(&format!("id={id} ")) && list.contains("name=worker-1"),
        "{list}"
    );
    let (secs, _us): (String, String) = qs(&mut c, "TIME").await.unwrap();
    assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
    assert_eq!(qs::<String>(&mut c, "ECHO hi").await.unwrap(), "hi");
    assert_eq!(qs::<String>(&mut c, "PING hello").await.unwrap(), "hello");
    assert_err(
        qs::<Value>(&mut c, "FOO bar").await,
        "ERR unknown command 'FOO', with args beginning with: 'bar'",
    );
    // CONFIG: real settings and ignored knobs.
    let r: Vec<String> = qs(&mut c, "CONFIG GET appendfsync").await.unwrap();
    assert_eq!(r, vec!["appendfsync", "always"]);
    assert_eq!(
        qs::<String>(&mut c, "CONFIG SET appendfsync everysec")
            .await
            .unwrap(),
        "OK"
    );
    let r: Vec<String> = qs(&mut c, "CONFIG GET appendfsync").await.unwrap();
    assert_eq!(r, vec!["appendfsync", "everysec"]);
    assert_err(
        qs::<Value>(&mut c, "CONFIG SET appendfsync sometimes").await,
        "ERR CONFIG SET failed",
    );
    assert_eq!(
        qs::<String>(&mut c, "CONFIG SET hz 50").await.unwrap(),
        "OK"
    );
    let r: Vec<String> = qs(&mut c, "CONFIG GET nosuchknob").await.unwrap();
    assert!(r.is_empty());
    let r: Vec<String> = qs(&mut c, "CONFIG GET maxmemory").await.unwrap();
    assert_eq!(r, vec!["maxmemory".to_string(), (64u64 << 20).to_string()]);
    // Changing requirepass applies to new connections.
    assert_eq!(
        qs::<String>(&mut c, "CONFIG SET requirepass other")
            .await
            .unwrap(),
        "OK"
    );
    let mut s = TcpStream::connect(node.addr()).await.unwrap();
    let out = raw(&mut s, b"AUTH s3cret\r\nAUTH other\r\n", 40).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("-WRONGPASS") && text.ends_with("+OK\r\n"),
        "{text}"
    );
    // CLIENT KILL closes another connection.
    let out = raw(&mut s, b"CLIENT ID\r\n", 3).await;
    let victim: i64 = String::from_utf8_lossy(&out[1..]).trim().parse().unwrap();
    let n: i64 = qs(&mut c, &format!("CLIENT KILL ID {victim}"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(read_to_close(&mut s).await.is_empty());
    // INFO sections.
    let info: String = qs(&mut c, "INFO").await.unwrap();
    for f in [
        "# Server",
        "redis_version:",
        "# Clients",
        "connected_clients:",
        "# Memory",
        "used_memory:",
        "# Stats",
        "# Replication",
        "role:master",
        "pikafs_role:rw",
        "pikafs_applied_seq:",
        "# Keyspace",
    ] {
        assert!(info.contains(f), "INFO lacks {f}: {info}");
    }
    let repl: String = qs(&mut c, "INFO replication").await.unwrap();
    assert!(!repl.contains("# Server"));
    // COMMAND.
    let n: i64 = qs(&mut c, "COMMAND COUNT").await.unwrap();
    assert!(n > 80, "{n}");
    let info: Value = qs(&mut c, "COMMAND INFO get nosuch").await.unwrap();
    let Value::Array(items) = info else { panic!() };
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Value::Nil);
    let docs: Value = qs(&mut c, "COMMAND DOCS set").await.unwrap();
    assert!(format!("{docs:?}").contains("summary"));
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {:?}", out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn redis_cli_and_redis_benchmark_work() {
    if std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis-cli not installed; skipping");
        return;
    }
    let node = KvNode::start_rw().await;
    let port = node.port;
    tokio::task::spawn_blocking(move || {
        assert_eq!(redis_cli(port, &["ping"]), "PONG");
        assert_eq!(redis_cli(port, &["set", "greeting", "hello world"]), "OK");
        assert_eq!(redis_cli(port, &["get", "greeting"]), "hello world");
        assert_eq!(redis_cli(port, &["hset", "h", "f", "v"]), "1");
        assert_eq!(redis_cli(port, &["type", "h"]), "hash");
        let info = redis_cli(port, &["info", "server"]);
        assert!(info.contains("redis_version"));
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-p",
                &port.to_string(),
                "-q",
                "-n",
                "2000",
                "-t",
                "set,get",
                "-P",
                "16",
            ])
            .output()
            .expect("run redis-benchmark");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("SET") && text.contains("GET"), "{text}");
        assert!(!text.to_lowercase().contains("error"), "{text}");
        eprintln!("redis-benchmark: {text}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn metrics_endpoint_reports_commands_and_wal_syncs() {
    let mport = pikafs_testkit::free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let node = KvNode::start_rw_with(&["--metrics", &maddr]).await;
    let mut c = node.conn().await;
    for i in 0..5 {
        let _: String = qs(&mut c, &format!("SET m{i} v")).await.unwrap();
    }
    let _: Option<String> = qs(&mut c, "GET m1").await.unwrap();
    let mut s = TcpStream::connect(&maddr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(
        body.contains("pikafs_kv_commands_total{cmd=\"set\"} 5"),
        "{body}"
    );
    assert!(
        body.contains("pikafs_kv_commands_total{cmd=\"get\"} 1"),
        "{body}"
    );
    assert!(body.contains("pikafs_kv_wal_syncs_total"), "{body}");
    assert!(body.contains("pikafs_kv_connections 1"), "{body}");
    assert!(
        body.contains("pikafs_kv_command_duration_seconds_bucket"),
        "{body}"
    );
}
