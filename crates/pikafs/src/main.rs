//! `pikafs`: the one binary of pikafs.
//!
//! It only parses flags and hands over to a library per subcommand: `ctrl`
//! and `chunkserver` run their services until SIGTERM/SIGINT; `volume` and
//! `status` talk to ctrl; `bench` drives the volume client; `playground`
//! runs a local cluster of child processes. Errors print as `error: {:#}`
//! (the anyhow context chain) and exit with status 1.

mod bench;
mod bench_kv;
mod cluster;
mod fio;
mod fs_cmd;
mod kv_cmd;
mod mount_cmd;
mod playground;
mod proxy_cmd;
mod server;
mod status;
mod units;
mod volume;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Default ctrl endpoint, matching `pikafs ctrl`'s usual port.
const DEFAULT_CTRL: &str = "http://127.0.0.1:7000";

/// pikafs: a PolarFS-style distributed storage system.
#[derive(Debug, Parser)]
#[command(name = "pikafs", version)]
struct Cli {
    /// ctrl gRPC endpoint.
    #[arg(long, global = true, env = "PIKAFS_CTRL", default_value = DEFAULT_CTRL)]
    ctrl: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the control plane.
    Ctrl(server::CtrlArgs),
    /// Run a chunkserver (registers with --ctrl).
    Chunkserver(server::ChunkserverArgs),
    /// Manage volumes and do raw volume IO.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Show servers, copysets and volumes.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Run a local cluster (ctrl + chunkservers) until Ctrl-C.
    Playground(playground::PlaygroundArgs),
    /// File-system tools: mkfs, ls, cp, cat, mv, rm, df, fsck, ...
    #[command(subcommand)]
    Fs(fs_cmd::FsCmd),
    /// Mount a volume's file system through FUSE until Ctrl-C/SIGTERM.
    Mount(mount_cmd::MountArgs),
    /// Run a Redis-compatible kv node (RocksDB primary or secondary).
    Kv(kv_cmd::KvArgs),
    /// Run a RESP proxy in front of a volume's kv nodes.
    Proxy(proxy_cmd::ProxyArgs),
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("PIKAFS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Ctrl(args) => server::run_ctrl(args).await,
        Cmd::Chunkserver(args) => server::run_chunkserver(args, &cli.ctrl).await,
        Cmd::Volume(cmd) => volume::run(cmd, &cli.ctrl).await,
        Cmd::Status { json } => status::run(&cli.ctrl, json).await,
        Cmd::Bench(cmd) => bench::run(cmd, &cli.ctrl).await,
        Cmd::Playground(args) => playground::run(args).await,
        Cmd::Fs(cmd) => fs_cmd::run(cmd, &cli.ctrl).await,
        Cmd::Mount(args) => mount_cmd::run(args, &cli.ctrl).await,
        Cmd::Kv(args) => kv_cmd::run(args, &cli.ctrl).await,
        Cmd::Proxy(args) => proxy_cmd::run(args, &cli.ctrl).await,
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("pikafs").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn ctrl_flag_is_global_and_defaults() {
        let c = parse(&["status"]);
        // The env var may be set in a developer's shell; only check when not.
        if std::env::var_os("PIKAFS_CTRL").is_none() {
            assert_eq!(c.ctrl, DEFAULT_CTRL);
        }
        assert_eq!(
            parse(&["--ctrl", "http://h:1", "status"]).ctrl,
            "http://h:1"
        );
        assert_eq!(
            parse(&["status", "--ctrl", "http://h:2"]).ctrl,
            "http://h:2"
        );
        assert_eq!(parse(&["volume", "ls", "--ctrl", "h:3"]).ctrl, "h:3");
    }

    #[test]
    fn server_flags() {
        let c = parse(&[
            "ctrl",
            "--listen",
            "127.0.0.1:7000",
            "--data-dir",
            "/tmp/x",
            "--server-lease",
            "3s",
            "--check-interval",
            "500ms",
            "--copysets-per-server",
            "4",
        ]);
        let Cmd::Ctrl(a) = c.command else {
            panic!("not ctrl")
        };
        let cfg = a.config();
        assert_eq!(cfg.server_lease, Duration::from_secs(3));
        assert_eq!(cfg.check_interval, Duration::from_millis(500));
        assert_eq!(cfg.copysets_per_server, 4);
        assert_eq!(cfg.metrics_listen, None);

        let c = parse(&[
            "chunkserver",
            "--listen",
            "127.0.0.1:7100",
            "--data-dir",
            "d",
            "--capacity",
            "10GiB",
            "--raft-tick",
            "50ms",
            "--ctrl",
            "127.0.0.1:7000",
        ]);
        let ctrl = c.ctrl.clone();
        let Cmd::Chunkserver(a) = c.command else {
            panic!("not chunkserver")
        };
        let cfg = a.config(&ctrl);
        assert_eq!(cfg.capacity_bytes, 10 << 30);
        assert_eq!(cfg.raft_tick, Duration::from_millis(50));
        assert_eq!(cfg.ctrl, "http://127.0.0.1:7000");
    }

    #[test]
    fn volume_and_bench_flags() {
        let c = parse(&["volume", "create", "v", "--size", "1G"]);
        assert!(
            matches!(c.command, Cmd::Volume(volume::VolumeCmd::Create { size, .. }) if size == 1 << 30)
        );
        let c = parse(&[
            "volume", "write", "v", "--offset", "4k", "--epoch", "5", "--fence",
        ]);
        assert!(matches!(
            c.command,
            Cmd::Volume(volume::VolumeCmd::Write {
                offset: 4096,
                epoch: Some(5),
                fence: true,
                input: None,
                ..
            })
        ));
        let c = parse(&[
            "bench",
            "volume",
            "--volume",
            "v",
            "--span",
            "256MiB",
            "--duration",
            "2s",
        ]);
        let Cmd::Bench(bench::BenchCmd::Volume(b)) = c.command else {
            panic!("not bench")
        };
        assert_eq!((b.span, b.duration), (256 << 20, Duration::from_secs(2)));
        assert!(Cli::try_parse_from(["pikafs", "volume", "create", "v", "--size", "1XB"]).is_err());
        assert!(Cli::try_parse_from(["pikafs", "volume", "read", "v", "--offset", "0"]).is_err());
    }

    #[test]
    fn playground_defaults() {
        let Cmd::Playground(p) = parse(&["playground"]).command else {
            panic!("not playground")
        };
        assert_eq!(
            (p.servers, p.base_port, p.volume.as_str()),
            (3, 7000, "vol0")
        );
        assert_eq!(p.volume_size, 10 << 30);
        assert_eq!((p.ro, p.redis_port, p.no_kv), (2, 6379, false));
    }
}
