//! `pikafs playground`: up with one command, usable, stopped by Ctrl-C,
//! and a second run reuses the data. Also a smoke run of `pikafs bench`
//! (its figures are not checked: speed is measured in benchmarks only).

use std::net::TcpStream;
use std::time::Duration;

use pikafs_testkit::{free_port, wait_for, Proc};

/// A base port such that every port the playground derives from it is free.
fn playground_base() -> u16 {
    loop {
        let base = free_port();
        if base > 60_000 {
            continue;
        }
        let all = [0u16, 1, 2, 100, 101, 102, 200, 201, 202, 300, 301, 400, 401];
        if all
            .iter()
            .all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok())
        {
            return base;
        }
    }
}

async fn start(dir: &std::path::Path, base: u16) -> Proc {
    // Storage only: these tests write raw bytes into the volume, which
    // would destroy the file system under kv nodes.
    start_with(dir, base, &["--no-kv"]).await
}

async fn start_with(dir: &std::path::Path, base: u16, extra: &[&str]) -> Proc {
    let args: Vec<String> = [
        "playground",
        "--dir",
        &dir.join("data").display().to_string(),
        "--base-port",
        &base.to_string(),
        "--volume-size",
        "1GiB",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    let log = dir.join("playground.out");
    let _ = std::fs::remove_file(&log);
    let p = Proc::spawn("playground", &args, &log).unwrap();
    wait_for(
        "the playground to say it is up",
        Duration::from_secs(180),
        || async {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            out.contains("playground is up").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_tail(40)));
    p
}

async fn cli(base: u16, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(pikafs_testkit::pikafs_bin())
        .arg("--ctrl")
        .arg(format!("http://127.0.0.1:{base}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut si = child.stdin.take().unwrap();
    si.write_all(stdin).await.unwrap();
    drop(si);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("cli finished in time")
        .unwrap();
    assert!(
        out.status.success(),
        "pikafs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stop(p: &mut Proc, base: u16) {
    p.signal(libc::SIGINT);
    let st = p.wait_exit(Duration::from_secs(30));
    assert!(
        st.is_some(),
        "playground did not stop on SIGINT\n{}",
        p.log_tail(30)
    );
    for port in [base, base + 100, base + 101, base + 102] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still served after the playground stopped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_starts_serves_stops_and_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = playground_base();
    let mut p = start(dir.path(), base).await;

    let info = cli(base, &["volume", "info", "vol0", "--json"], b"").await;
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["size_bytes"].as_u64(), Some(1 << 30));
    cli(
        base,
        &["volume", "write", "vol0", "--offset", "536870912"],
        b"kept across runs",
    )
    .await;

    let bench = cli(
        base,
        &[
            "bench",
            "volume",
            "--volume",
            "vol0",
            "--span",
            "64MiB",
            "--duration",
            "1s",
            "--json",
        ],
        b"",
    )
    .await;
    let b: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    let results = b["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "{b}");
    assert!(
        results.iter().all(|r| r["ops"].as_u64().unwrap_or(0) > 0),
        "{b}"
    );

    stop(&mut p, base);

    // Second run: same directory, the volume and its bytes are still there.
    let mut p = start(dir.path(), base).await;
    let out = cli(
        base,
        &[
            "volume",
            "read",
            "vol0",
            "--offset",
            "536870912",
            "--len",
            "16",
        ],
        b"",
    )
    .await;
    assert_eq!(out.stdout, b"kept across runs");
    stop(&mut p, base);
}

async fn redis_at(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect in time")
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_runs_the_whole_stack_behind_one_redis_port() {
    let dir = tempfile::tempdir().unwrap();
    let base = playground_base();
    let redis_port = free_port();
    let rp = redis_port.to_string();
    let extra = ["--ro", "1", "--redis-port", &rp];
    let mut p = start_with(dir.path(), base, &extra).await;
    let out = std::fs::read_to_string(dir.path().join("playground.out")).unwrap_or_default();
    assert!(
        out.contains(&format!("redis-cli -p {redis_port}")),
        "the playground prints the redis-cli line:\n{out}"
    );

    let mut c = redis_at(redis_port).await;
    // Reads go to the RO node; read-your-writes makes this connection's GET
    // wait for its SET there.
    let _: () = redis::cmd("CLIENT")
        .arg("READYOURWRITES")
        .arg("ON")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("kept across runs")
        .query_async(&mut c)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "kept across runs");
    // Writes reach the RW node and reads the RO one, directly too.
    let mut ro = redis_at(base + 301).await;
    let err = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async::<()>(&mut ro)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), redis::ErrorKind::ReadOnly, "{err:?}");

    let status = cli(base, &["status", "--json"], b"").await;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("127.0.0.1:{}", base + 300)),
        "status lists the kv nodes: {text}"
    );
    drop(c);
    drop(ro);
    stop(&mut p, base);
    for port in [redis_port, base + 300, base + 301] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still served after the playground stopped"
        );
    }

    let mut p = start_with(dir.path(), base, &extra).await;
    let mut c = redis_at(redis_port).await;
    let v: String = wait_for(
        "the value through the proxy after a rerun",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                redis::cmd("GET")
                    .arg("greeting")
                    .query_async::<Option<String>>(&mut c)
                    .await
                    .ok()
                    .flatten()
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(v, "kept across runs");
    let _: () = redis::cmd("PING").query_async(&mut c).await.unwrap();
    drop(c);
    stop(&mut p, base);
}
