//! A whole storage cluster: one ctrl and N chunkservers.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{ClusterStatusResponse, Empty};

use crate::process::{free_port, pikafs_bin, Proc};
use crate::wait_for;

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub servers: usize,
    /// ctrl marks a server down after this much silence.
    pub server_lease: Duration,
    pub heartbeat_interval: Duration,
    pub copysets_per_server: u32,
    /// ctrl's `--mount-lease` (file-system mount leases); `None` keeps
    /// ctrl's default.
    pub mount_lease: Option<Duration>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            servers: 3,
            // Long enough that a kill-and-restart does not trigger a
            // replacement; permanent-loss tests shorten it.
            server_lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_millis(300),
            copysets_per_server: 3,
            mount_lease: None,
        }
    }
}

struct Server {
    port: u16,
    metrics_port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// A running cluster in a temporary directory. Dropping it kills every
/// process it started.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    opts: ClusterOptions,
    ctrl_port: u16,
    ctrl_metrics_port: u16,
    ctrl: Option<Proc>,
    servers: Vec<Server>,
}

impl Cluster {
    /// Starts ctrl and `opts.servers` chunkservers and waits (bounded) until
    /// every server is up and every copyset has three voters and a leader.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            pikafs_bin().exists(),
            "pikafs binary not found at {} (build it, or set PIKAFS_BIN)",
            pikafs_bin().display()
        );
        let dir = tempfile::Builder::new().prefix("pikafs-test-").tempdir()?;
        let mut c = Cluster {
            dir,
            opts: opts.clone(),
            ctrl_port: free_port(),
            ctrl_metrics_port: free_port(),
            ctrl: None,
            servers: Vec::new(),
        };
        c.start_ctrl()?;
        for _ in 0..opts.servers {
            c.add_server()?;
        }
        c.wait_healthy(Duration::from_secs(60)).await?;
        Ok(c)
    }

    pub fn ctrl_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ctrl_port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn start_ctrl(&mut self) -> anyhow::Result<()> {
        let args: Vec<String> = vec![
            "ctrl".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.ctrl_port),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", self.ctrl_metrics_port),
            "--data-dir".into(),
            self.dir.path().join("ctrl").display().to_string(),
            "--server-lease".into(),
            format!("{}ms", self.opts.server_lease.as_millis()),
            "--copysets-per-server".into(),
            self.opts.copysets_per_server.to_string(),
            "--check-interval".into(),
            "200ms".into(),
        ];
        let mut args = args;
        if let Some(lease) = self.opts.mount_lease {
            args.push("--mount-lease".into());
            args.push(format!("{}ms", lease.as_millis()));
        }
        let log = self.dir.path().join("ctrl.log");
        self.ctrl = Some(Proc::spawn("ctrl", &args, &log)?);
        Ok(())
    }

    pub fn kill_ctrl(&mut self) {
        if let Some(p) = self.ctrl.as_mut() {
            p.kill();
        }
        self.ctrl = None;
    }

    /// Adds and starts one more chunkserver; returns its index.
    pub fn add_server(&mut self) -> anyhow::Result<usize> {
        let i = self.servers.len();
        self.servers.push(Server {
            port: free_port(),
            metrics_port: free_port(),
            dir: self.dir.path().join(format!("cs{i}")),
            proc: None,
        });
        self.start_server(i)?;
        Ok(i)
    }

    /// (Re)starts server `i` on its old port and data directory.
    pub fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let s = &self.servers[i];
        let args: Vec<String> = vec![
            "chunkserver".into(),
            "--ctrl".into(),
            self.ctrl_url(),
            "--listen".into(),
            format!("127.0.0.1:{}", s.port),
            "--metrics-listen".into(),
            format!("127.0.0.1:{}", s.metrics_port),
            "--data-dir".into(),
            s.dir.display().to_string(),
            "--heartbeat-interval".into(),
            format!("{}ms", self.opts.heartbeat_interval.as_millis()),
        ];
        let log = self.dir.path().join(format!("cs{i}.log"));
        let p = Proc::spawn(&format!("cs{i}"), &args, &log)?;
        self.servers[i].proc = Some(p);
        Ok(())
    }

    pub fn kill_server(&mut self, i: usize) {
        if let Some(p) = self.servers[i].proc.as_mut() {
            p.kill();
        }
        self.servers[i].proc = None;
    }

    pub fn pause_server(&self, i: usize) {
        if let Some(p) = self.servers[i].proc.as_ref() {
            p.pause();
        }
    }

    pub fn resume_server(&self, i: usize) {
        if let Some(p) = self.servers[i].proc.as_ref() {
            p.resume();
        }
    }

    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    pub fn server_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.servers[i].port)
    }

    pub fn server_dir(&self, i: usize) -> &Path {
        &self.servers[i].dir
    }

    /// Index of the server listening on `addr`.
    pub fn server_index(&self, addr: &str) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.server_addr(i) == addr)
    }

    /// True while server `i`'s process is alive.
    pub fn server_running(&mut self, i: usize) -> bool {
        self.servers[i]
            .proc
            .as_mut()
            .map(|p| p.is_running())
            .unwrap_or(false)
    }

    /// Log tails of every process, for assertion messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut names = vec!["ctrl".to_string()];
        names.extend((0..self.servers.len()).map(|i| format!("cs{i}")));
        for n in names {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                .unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("----- {n}.log (tail) -----\n"));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Runs `pikafs --ctrl <url> <args>` to completion (bounded by 60 s).
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli_with_stdin(args, &[]).await
    }

    /// As [`Cluster::cli`], feeding `stdin`.
    pub async fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<Output> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(pikafs_bin());
        cmd.arg("--ctrl")
            .arg(self.ctrl_url())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(stdin).await?;
            drop(si);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .map_err(|_| anyhow::anyhow!("pikafs {args:?} did not finish in 60 s"))??;
        Ok(out)
    }

    pub async fn ctrl_client(&self) -> anyhow::Result<CtrlClient<tonic::transport::Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(self.ctrl_url())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(CtrlClient::new(ch))
    }

    pub async fn status(&self) -> anyhow::Result<ClusterStatusResponse> {
        Ok(self
            .ctrl_client()
            .await?
            .cluster_status(Empty {})
            .await?
            .into_inner())
    }

    /// Waits until every running server is up at ctrl, at least one copyset
    /// exists, and every copyset is healthy (3 voters equal to its members,
    /// all up, a leader known).
    pub async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<ClusterStatusResponse> {
        let want_up = self.servers.iter().filter(|s| s.proc.is_some()).count();
        wait_for("a healthy cluster", limit, || async {
            let st = self.status().await.ok()?;
            let up = st.servers.iter().filter(|s| s.up).count();
            let ok = up >= want_up.min(3)
                && !st.copysets.is_empty()
                && st.copysets.iter().all(|c| c.healthy);
            ok.then_some(st)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs(30)))
    }

    /// Creates a volume through the CLI and checks it succeeded.
    pub async fn create_volume(&self, name: &str, size: &str) -> anyhow::Result<()> {
        let out = self
            .cli(&["volume", "create", name, "--size", size])
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "volume create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Creates a volume and formats a pikafs file system on it (default
    /// mkfs options), checking both succeeded.
    pub async fn create_fs_volume(&self, name: &str, size: &str) -> anyhow::Result<()> {
        self.create_volume(name, size).await?;
        let out = self.cli(&["fs", "mkfs", name]).await?;
        anyhow::ensure!(
            out.status.success(),
            "mkfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Server index of the leader of every copyset, by ctrl's status.
    pub async fn leaders(&self) -> anyhow::Result<Vec<(u64, Option<usize>)>> {
        let st = self.status().await?;
        Ok(st
            .copysets
            .iter()
            .map(|c| {
                let addr = st
                    .servers
                    .iter()
                    .find(|s| s.server_id == c.leader_id)
                    .map(|s| s.addr.clone());
                (c.copyset_id, addr.and_then(|a| self.server_index(&a)))
            })
            .collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(p) = s.proc.as_mut() {
                p.kill();
            }
        }
        if let Some(p) = self.ctrl.as_mut() {
            p.kill();
        }
        if std::env::var_os("PIKAFS_KEEP_TEST_DIR").is_some() {
            eprintln!("keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
    }
}
