//! The listener: accepts clients and runs one [`crate::client`] pair of
//! tasks per connection until shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::topology::TopologySource;

/// What every connection task shares.
pub(crate) struct Shared {
    pub cfg: ProxyConfig,
    pub topology: TopologySource,
    pub metrics: Metrics,
    pub health: Health,
    pub pool: Pool,
}

/// A bound proxy, ready to [`Proxy::run`].
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
}

impl Proxy {
    /// Binds the listen address (and the metrics endpoint if configured).
    ///
    /// # Errors
    /// An address cannot be bound.
    pub async fn bind(cfg: ProxyConfig, topology: TopologySource) -> Result<Proxy, ProxyError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let mut reg = Registry::default();
        let metrics = Metrics::new(&mut reg);
        if let Some(addr) = cfg.metrics {
            pikafs_proto::metrics_http::serve(addr, Arc::new(reg))
                .await
                .map_err(|source| ProxyError::Metrics { addr, source })?;
        }
        Ok(Proxy {
            shared: Arc::new(Shared {
                cfg,
                topology,
                metrics,
                health: Health::default(),
                pool: Pool::default(),
            }),
            listener,
            local,
        })
    }

    /// The bound RESP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts clients until `cancel`; then stops accepting and waits for
    /// the open connections to end (they end when their clients hang up).
    ///
    /// # Errors
    /// Never at the moment; accept errors (e.g. out of file descriptors)
    /// are logged and retried.
    ///
    /// # Cancel safety
    /// Not cancel safe; stop it with `cancel`.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ProxyError> {
        let tracker = TaskTracker::new();
        let next_id = AtomicU64::new(1);
        // Keep the generation gauge current whatever the source.
        {
            let mut rx = self.shared.topology.subscribe();
            let shared = self.shared.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let g = rx.borrow_and_update().generation;
                    shared.metrics.topology_generation.set(g as i64);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            });
        }
        tracing::info!(listen = %self.local, "proxy listening");
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.listener.accept() => a,
            };
            let (sock, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            shared.metrics.clients.inc();
            shared.metrics.clients_total.inc();
            tracker.spawn(async move {
                tracing::debug!(client = id, %peer, "client connected");
                crate::client::serve(shared.clone(), sock, id).await;
                shared.metrics.clients.dec();
                tracing::debug!(client = id, "client gone");
            });
        }
        tracker.close();
        Ok(())
    }
}
