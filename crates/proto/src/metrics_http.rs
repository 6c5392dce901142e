//! The Prometheus endpoint every service exposes.
//!
//! A scrape is one `GET` over HTTP/1.1 with `Connection: close`; that is all
//! Prometheus needs, so a few lines of tokio stand in for an HTTP stack.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `addr` and answers every request with the text encoding of
/// `registry`. Returns the bound address (useful with port 0); serving goes
/// on in a spawned task until the runtime stops.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                // The request itself does not matter; read what is there so
                // the client does not see a reset.
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf))
                        .await;
                let mut body = String::new();
                if encode(&mut body, &registry).is_err() {
                    body = "# encoding failed\n".into();
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

/// Histogram buckets sized for fsync and network round trips: 10 µs to ~5 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(10e-6, 2.0, 20)
}
