//! Shared helpers: real `pikafs kv` nodes (one RW and RO secondaries on one
//! temp dir) behind a real `pikafs proxy` with a static topology, clients
//! through the `redis` crate and raw TCP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pikafs_testkit::{free_port, wait_for, Proc};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `pikafs kv` node, killed on drop.
pub struct KvNode {
    pub proc: Proc,
    pub port: u16,
}

impl KvNode {
    pub async fn start(dir: &Path, role: &str, extra: &[&str]) -> KvNode {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "kv".into(),
            "--role".into(),
            role.into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--dir".into(),
            dir.join("db").display().to_string(),
            "--memory".into(),
            "64MiB".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // A secondary's private dir inside the test's temp dir: the default
        // (under /tmp, removed on a clean exit) outlives a SIGKILL.
        if role == "ro" {
            args.push("--secondary-dir".into());
            args.push(dir.join(format!("secondary-{port}")).display().to_string());
        }
        let log = dir.join(format!("kv-{role}-{port}.log"));
        let proc = Proc::spawn(&format!("kv-{role}"), &args, &log).expect("spawn pikafs kv");
        wait_listening(port, &log).await;
        KvNode { proc, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        connect(self.port).await
    }

    /// `total_commands_processed` from INFO stats: how many commands this
    /// node executed (includes the INFO calls themselves).
    pub async fn commands_processed(&self) -> u64 {
        let mut c = self.conn().await;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut c)
            .await
            .expect("INFO stats");
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_commands_processed in INFO stats")
    }
}

/// A `pikafs proxy`, killed on drop.
pub struct ProxyNode {
    pub proc: Proc,
    pub port: u16,
}

impl ProxyNode {
    pub async fn start(
        dir: &Path,
        rw: Option<&KvNode>,
        ros: &[&KvNode],
        extra: &[&str],
    ) -> ProxyNode {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if let Some(rw) = rw {
            args.extend(["--rw".to_string(), rw.addr()]);
        }
        for r in ros {
            args.extend(["--ro".to_string(), r.addr()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.join(format!("proxy-{port}.log"));
        let proc = Proc::spawn("proxy", &args, &log).expect("spawn pikafs proxy");
        wait_listening(port, &log).await;
        ProxyNode { proc, port }
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        connect(self.port).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

async fn wait_listening(port: u16, log: &Path) {
    let addr = format!("127.0.0.1:{port}");
    wait_for(
        "process accepts connections",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move { TcpStream::connect(&addr).await.ok().map(|_| ()) }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
}

pub async fn connect(port: u16) -> MultiplexedConnection {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("client url");
    tokio::time::timeout(
        Duration::from_secs(10),
        c.get_multiplexed_async_connection(),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// An RW node and `ros` RO nodes on one temp dir, and a proxy in front.
pub struct Setup {
    pub rw: KvNode,
    pub ros: Vec<KvNode>,
    pub proxy: ProxyNode,
    pub tmp: tempfile::TempDir,
}

impl Setup {
    pub async fn start(ros: usize, ro_extra: &[&str], proxy_extra: &[&str]) -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rw = KvNode::start(tmp.path(), "rw", &[]).await;
        let mut nodes = Vec::new();
        for _ in 0..ros {
            nodes.push(KvNode::start(tmp.path(), "ro", ro_extra).await);
        }
        let refs: Vec<&KvNode> = nodes.iter().collect();
        let proxy = ProxyNode::start(tmp.path(), Some(&rw), &refs, proxy_extra).await;
        Setup {
            rw,
            ros: nodes,
            proxy,
            tmp,
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    /// Waits until every RO node sees `key` = `value` (they catch up on a
    /// timer).
    pub async fn wait_ros_see(&self, key: &str, value: &str) {
        for ro in &self.ros {
            let c = ro.conn().await;
            wait_for("RO node catches up", Duration::from_secs(20), || {
                let mut c = c.clone();
                async move {
                    let v: Option<String> =
                        redis::cmd("GET").arg(key).query_async(&mut c).await.ok()?;
                    (v.as_deref() == Some(value)).then_some(())
                }
            })
            .await
            .expect("RO node catches up");
        }
    }
}

/// Raw RESP over TCP: sends bytes, reads back whole replies as bytes.
pub struct Raw {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
        let sock = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("send");
    }

    /// The next `n` replies, each as its raw bytes (10 s bound).
    pub async fn replies(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while out.len() < n {
            if let Some(len) = reply_len(&self.buf, 0) {
                out.push(self.buf.drain(..len).collect());
                continue;
            }
            let mut chunk = [0u8; 65536];
            let r = tokio::time::timeout_at(deadline, self.sock.read(&mut chunk))
                .await
                .expect("replies in time")
                .expect("read");
            assert!(r > 0, "connection closed after {} replies", out.len());
            self.buf.extend_from_slice(&chunk[..r]);
        }
        out
    }

    /// Reads until EOF (10 s bound); returns what came.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.sock.read(&mut chunk))
                .await
                .expect("EOF in time")
            {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn reply_len(b: &[u8], at: usize) -> Option<usize> {
    let eol = at + b.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[at + 1..eol]).ok()?;
    match b[at] {
        b'+' | b'-' | b':' => Some(eol + 2),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(eol + 2);
            }
            let end = eol + 2 + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            let mut pos = eol + 2;
            for _ in 0..n.max(0) {
                pos = reply_len(b, pos)?;
            }
            Some(pos)
        }
        _ => panic!("not RESP: {:?}", String::from_utf8_lossy(&b[at..])),
    }
}

/// Encodes a command line (whitespace separated) as RESP.
pub fn cmd_bytes(line: &str) -> Vec<u8> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out
}

/// Runs `redis-cli -p port args...` and returns stdout.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("timeout")
        .arg("10")
        .arg("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scrapes a Prometheus endpoint and returns the value of the sample line
/// starting with `series` (e.g. `pikafs_proxy_requests_total{route="ro"}`).
pub async fn scrape(port: u16, series: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}
