//! Where the kv nodes are: the RW node and the RO nodes, and how the proxy
//! learns about changes.
//!
//! A [`TopologySource`] publishes [`Topology`] snapshots on a
//! `tokio::sync::watch` channel; connection tasks read the latest snapshot
//! for every request batch, so joins, leaves and failovers apply to the
//! next request without any connection noticing. Two sources exist:
//! - static (`--rw`/`--ro`), changeable live with the admin command
//!   `PROXY TOPOLOGY SET rw ro...` (tests, use without ctrl);
//! - ctrl (`--volume V`): `KvTopology` polled every `poll` interval.

use std::sync::Arc;
use std::time::Duration;

use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{KvRole, VolumeName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hash::fnv1a;

/// One kv node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable identity used for hashing (the address for static nodes).
    pub id: Arc<str>,
    /// RESP address `host:port`.
    pub addr: Arc<str>,
    /// `fnv1a(id)`, precomputed for rendezvous hashing.
    pub hash: u64,
}

impl Node {
    pub fn new(id: &str, addr: &str) -> Node {
        Node {
            id: id.into(),
            addr: addr.into(),
            hash: fnv1a(id.as_bytes()),
        }
    }
}

/// One snapshot of the kv nodes of a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Changes whenever the node set or a role changes.
    pub generation: u64,
    pub rw: Option<Node>,
    pub ros: Vec<Node>,
}

impl Topology {
    /// A static topology from addresses (ids are the addresses).
    pub fn from_addrs(generation: u64, rw: Option<&str>, ros: &[String]) -> Topology {
        Topology {
            generation,
            rw: rw.map(|a| Node::new(a, a)),
            ros: ros.iter().map(|a| Node::new(a, a)).collect(),
        }
    }

    /// Same nodes in the same roles (generation ignored).
    pub fn same_nodes(&self, other: &Topology) -> bool {
        self.rw == other.rw && self.ros == other.ros
    }
}

/// Who may change the topology.
#[derive(Debug, Clone)]
pub enum TopologySource {
    /// Set by flags and by `PROXY TOPOLOGY SET`.
    Static(Arc<watch::Sender<Arc<Topology>>>),
    /// Followed from ctrl; `PROXY TOPOLOGY SET` is refused.
    Ctrl(watch::Receiver<Arc<Topology>>),
}

impl TopologySource {
    /// A static source starting at `initial`.
    pub fn fixed(initial: Topology) -> TopologySource {
        let (tx, _rx) = watch::channel(Arc::new(initial));
        TopologySource::Static(Arc::new(tx))
    }

    /// The channel connection tasks read.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        match self {
            TopologySource::Static(tx) => tx.subscribe(),
            TopologySource::Ctrl(rx) => rx.clone(),
        }
    }

    /// Replaces a static topology (generation = previous + 1).
    ///
    /// # Errors
    /// The topology comes from ctrl.
    pub fn set(&self, rw: Option<&str>, ros: &[String]) -> Result<u64, &'static str> {
        match self {
            TopologySource::Static(tx) => {
                let mut gen = 0;
                tx.send_modify(|t| {
                    gen = t.generation + 1;
                    *t = Arc::new(Topology::from_addrs(gen, rw, ros));
                });
                Ok(gen)
            }
            TopologySource::Ctrl(_) => Err("topology is managed by ctrl"),
        }
    }

    /// Polls ctrl's `KvTopology` for `volume` every `poll` until `cancel`.
    /// Until the first answer the topology is empty (every request fails
    /// with "no RW node"); errors keep the last known topology.
    pub fn from_ctrl(
        endpoint: String,
        volume: String,
        poll: Duration,
        cancel: CancellationToken,
    ) -> TopologySource {
        let (tx, rx) = watch::channel(Arc::new(Topology::default()));
        tokio::spawn(async move {
            let mut client: Option<CtrlClient<tonic::transport::Channel>> = None;
            let mut last_err = String::new();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                if client.is_none() {
                    match connect(&endpoint).await {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            let e = format!("connect to ctrl at {endpoint}: {e}");
                            if e != last_err {
                                tracing::warn!("{e}");
                                last_err = e;
                            }
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                match c
                    .kv_topology(VolumeName {
                        name: volume.clone(),
                    })
                    .await
                {
                    Ok(resp) => {
                        last_err.clear();
                        let r = resp.into_inner();
                        let mut t = Topology {
                            generation: r.generation,
                            ..Topology::default()
                        };
                        for n in &r.nodes {
                            let node = Node::new(&n.node_id, &n.addr);
                            match KvRole::try_from(n.role) {
                                Ok(KvRole::Rw) => t.rw = Some(node),
                                Ok(KvRole::Ro) => t.ros.push(node),
                                _ => {}
                            }
                        }
                        t.ros.sort_by(|a, b| a.id.cmp(&b.id));
                        let changed =
                            !tx.borrow().same_nodes(&t) || tx.borrow().generation != t.generation;
                        if changed {
                            tracing::info!(
                                generation = t.generation,
                                rw = ?t.rw.as_ref().map(|n| n.addr.clone()),
                                ros = t.ros.len(),
                                "kv topology changed"
                            );
                            tx.send_replace(Arc::new(t));
                        }
                    }
                    Err(s) => {
                        let e = format!("KvTopology({volume}): {:?}: {}", s.code(), s.message());
                        if e != last_err {
                            tracing::warn!("{e}; keeping the last topology");
                            last_err = e;
                        }
                        if s.code() == tonic::Code::Unavailable {
                            client = None;
                        }
                    }
                }
            }
        });
        TopologySource::Ctrl(rx)
    }
}

async fn connect(
    endpoint: &str,
) -> Result<CtrlClient<tonic::transport::Channel>, tonic::transport::Error> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let ch = tonic::transport::Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(CtrlClient::new(ch))
}
