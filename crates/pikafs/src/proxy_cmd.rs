//! `pikafs proxy`: run a RESP proxy in front of a volume's kv nodes until
//! SIGINT/SIGTERM. All behaviour lives in `pikafs_proxy`.

/// Flags of `pikafs proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// RESP listen address.
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: std::net::SocketAddr,
}

pub async fn run(_args: ProxyArgs, _ctrl: &str) -> anyhow::Result<()> {
    anyhow::bail!("pikafs proxy: not built yet")
}
