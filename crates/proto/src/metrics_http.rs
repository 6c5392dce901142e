//! The Prometheus endpoint every service exposes.
//!
//! A scrape is one `GET` over HTTP/1.1 with `Connection: close`; that is all
//! Prometheus needs, so a few lines of tokio stand in for an HTTP stack.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

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
    serve_shared(addr, SharedRegistry::new(registry)).await
}

/// A registry that can be replaced while it is served: a service that
/// restarts in place (a kv node promoted from reader to writer) keeps its
/// one metrics port and serves its current incarnation's metrics.
#[derive(Clone)]
pub struct SharedRegistry(Arc<RwLock<Arc<Registry>>>);

impl SharedRegistry {
    pub fn new(registry: Arc<Registry>) -> SharedRegistry {
        SharedRegistry(Arc::new(RwLock::new(registry)))
    }

    /// Serves `registry` from the next scrape on.
    pub fn set(&self, registry: Arc<Registry>) {
        // A poisoned lock only means a scrape panicked; the value is whole.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = registry;
    }

    fn get(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// [`serve`] for a [`SharedRegistry`].
///
/// # Errors
/// The address cannot be bound.
pub async fn serve_shared(addr: SocketAddr, shared: SharedRegistry) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let registry = shared.get();
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
