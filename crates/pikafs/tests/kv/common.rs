//! Shared helpers: a real `pikafs kv` process on a free port, a Redis
//! client connection to it, error assertions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pikafs_testkit::{free_port, wait_for, Proc};
use redis::aio::MultiplexedConnection;

/// One `pikafs kv` node. Killed on drop; `dir` lives as long as the node
/// (or the `TempDir` it was given).
pub struct KvNode {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub role: &'static str,
    pub extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl KvNode {
    /// An RW node on a fresh temp dir.
    pub async fn start_rw() -> KvNode {
        Self::start_rw_with(&[]).await
    }

    /// An RW node on a fresh temp dir with extra flags.
    pub async fn start_rw_with(extra: &[&str]) -> KvNode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("db");
        let mut n = Self::start(&dir, "rw", extra).await;
        n._tmp = Some(tmp);
        n
    }

    /// A node of `role` on `dir` (which the caller keeps alive).
    pub async fn start(dir: &Path, role: &'static str, extra: &[&str]) -> KvNode {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let proc = spawn(dir, role, port, &extra);
        let n = KvNode {
            proc,
            port,
            dir: dir.to_path_buf(),
            role,
            extra,
            _tmp: None,
        };
        n.wait_ready().await;
        n
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn wait_ready(&self) {
        let addr = self.addr();
        let log = self.proc.log.clone();
        wait_for(
            "kv node accepts connections",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    }

    /// A multiplexed async connection.
    pub async fn conn(&self) -> MultiplexedConnection {
        let c = redis::Client::open(self.url()).expect("client url");
        tokio::time::timeout(
            Duration::from_secs(10),
            c.get_multiplexed_async_connection(),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGKILL, then start again on the same dir and port.
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.proc = spawn(&self.dir, self.role, self.port, &self.extra);
        self.wait_ready().await;
    }

    #[allow(dead_code)] // for debugging failing tests
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

fn spawn(dir: &Path, role: &str, port: u16, extra: &[String]) -> Proc {
    let mut args: Vec<String> = vec![
        "kv".into(),
        "--role".into(),
        role.into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--dir".into(),
        dir.display().to_string(),
        "--memory".into(),
        "64MiB".into(),
    ];
    args.extend(extra.iter().cloned());
    let parent = dir.parent().expect("dir has a parent");
    std::fs::create_dir_all(parent).expect("create parent");
    // Keep a secondary's private dir inside the test's temp dir: the default
    // (a fresh dir under /tmp, removed on a clean exit) outlives a SIGKILL.
    if role == "ro" && !extra.iter().any(|a| a == "--secondary-dir") {
        args.push("--secondary-dir".into());
        args.push(
            parent
                .join(format!("secondary-{port}"))
                .display()
                .to_string(),
        );
    }
    let log = parent.join(format!("kv-{role}-{port}.log"));
    Proc::spawn(&format!("kv-{role}"), &args, &log).expect("spawn pikafs kv")
}

/// Runs a raw command.
pub async fn q<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    args: &[&[u8]],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name is utf8"));
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await
}

/// Runs a command given as a whitespace-separated string.
pub async fn qs<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    line: &str,
) -> redis::RedisResult<T> {
    let parts: Vec<&[u8]> = line.split_whitespace().map(|s| s.as_bytes()).collect();
    q(c, &parts).await
}

/// Asserts `r` is an error whose full text (code + message) starts with
/// `prefix`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(r: redis::RedisResult<T>, prefix: &str) {
    match r {
        Ok(v) => panic!("expected error {prefix:?}, got {v:?}"),
        Err(e) => {
            let text = match (e.code(), e.detail()) {
                (Some(code), Some(d)) => format!("{code} {d}"),
                (Some(code), None) => code.to_string(),
                _ => e.to_string(),
            };
            assert!(
                text.starts_with(prefix),
                "error {text:?} does not start with {prefix:?}"
            );
        }
    }
}
