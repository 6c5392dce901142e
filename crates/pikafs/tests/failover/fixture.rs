//! A cluster with a formatted volume and kv nodes on it, and a writer
//! that follows whichever node ctrl says is RW.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{KvRole, KvTopologyResponse, VolumeName};
use pikafs_testkit::{free_port, wait_for, Cluster, ClusterOptions, Proc};
use redis::aio::MultiplexedConnection;
use tonic::transport::Channel;

pub const VOL: &str = "fovol";
/// Bound on a node coming up (mount, RocksDB open, first heartbeat).
const START_WAIT: Duration = Duration::from_secs(90);

pub struct Node {
    pub port: u16,
    pub local: PathBuf,
    pub proc: Proc,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Field order matters: kv nodes are killed before the cluster under them.
pub struct Fixture {
    pub nodes: Vec<Node>,
    pub cluster: Cluster,
    ctrl: String,
    _tmp: tempfile::TempDir,
}

fn spawn(ctrl: &str, role: &str, port: u16, local: &std::path::Path) -> Proc {
    pikafs_testkit::spawn_kv(ctrl, VOL, role, port, local, &["--mount-wait", "60s"])
        .expect("spawn pikafs kv")
}

impl Fixture {
    /// A 3-server cluster (default 10 s mount lease: a failover must not
    /// wait for it), a formatted volume, one RW node and `ro` RO nodes,
    /// all registered at ctrl.
    pub async fn start(ro: usize) -> Fixture {
        let cluster = Cluster::start(ClusterOptions::default())
            .await
            .expect("cluster");
        cluster
            .create_fs_volume(VOL, "4GiB")
            .await
            .expect("volume with an fs");
        let tmp = tempfile::tempdir().expect("tempdir");
        let ctrl = cluster.ctrl_url();
        let mut fx = Fixture {
            nodes: Vec::new(),
            cluster,
            ctrl,
            _tmp: tmp,
        };
        fx.add("rw");
        fx.wait_role(&fx.nodes[0].addr(), KvRole::Rw, START_WAIT)
            .await;
        for _ in 0..ro {
            fx.add("ro");
        }
        for i in 1..=ro {
            let a = fx.nodes[i].addr();
            fx.wait_role(&a, KvRole::Ro, START_WAIT).await;
        }
        fx
    }

    fn add(&mut self, role: &str) {
        let port = free_port();
        let local = self._tmp.path().join(format!("node-{port}"));
        let proc = spawn(&self.ctrl, role, port, &local);
        self.nodes.push(Node { port, local, proc });
    }

    /// Restarts node `i` (same port and local dir) in `role`.
    pub fn restart(&mut self, i: usize, role: &str) {
        let n = &mut self.nodes[i];
        n.proc.kill();
        n.proc = spawn(&self.ctrl, role, n.port, &n.local);
    }

    pub fn node_index(&self, addr: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr() == addr)
            .expect("a node of this fixture")
    }

    pub async fn ctrl_client(&self) -> CtrlClient<Channel> {
        self.cluster.ctrl_client().await.expect("ctrl client")
    }

    pub async fn topology(&self) -> Option<KvTopologyResponse> {
        let mut c = self.cluster.ctrl_client().await.ok()?;
        topology(&mut c).await
    }

    pub async fn rw_addr(&self) -> Option<String> {
        rw_of(&self.topology().await?)
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!("--- {}:\n{}\n", n.addr(), n.proc.log_tail(25)));
        }
        s.push_str(&self.cluster.logs(10));
        s
    }

    /// Waits until ctrl lists `addr` with `role`.
    pub async fn wait_role(&self, addr: &str, role: KvRole, limit: Duration) {
        let r = wait_for(&format!("{addr} registered as {role:?}"), limit, || async {
            let t = self.topology().await?;
            t.nodes
                .iter()
                .any(|n| n.addr == addr && n.role == role as i32)
                .then_some(())
        })
        .await;
        if let Err(e) = r {
            panic!("{e}; topology {:?}\n{}", self.topology().await, self.logs());
        }
    }

    /// Waits until ctrl names an RW node other than `old`.
    pub async fn wait_new_rw(&self, old: &str, limit: Duration) -> String {
        let r = wait_for("a new RW node", limit, || async {
            self.rw_addr().await.filter(|a| a != old)
        })
        .await;
        r.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

pub async fn topology(c: &mut CtrlClient<Channel>) -> Option<KvTopologyResponse> {
    c.kv_topology(VolumeName { name: VOL.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

pub fn rw_of(t: &KvTopologyResponse) -> Option<String> {
    t.nodes
        .iter()
        .find(|n| n.role == KvRole::Rw as i32)
        .map(|n| n.addr.clone())
}

/// A connection with bounded connect and response times.
pub async fn redis_conn(addr: &str) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(3));
    redis::Client::open(format!("redis://{addr}/"))?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

pub async fn get(c: &mut MultiplexedConnection, k: &str) -> Option<String> {
    redis::cmd("GET").arg(k).query_async(c).await.ok().flatten()
}

/// What the writer got acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Acked {
    prefix: String,
    /// Unique keys SET and acknowledged, with their values.
    pub sets: Vec<(String, String)>,
    /// Highest value an acknowledged INCR of the counter returned.
    pub incr_max: i64,
    /// INCRs sent (acknowledged or not).
    pub incr_attempts: i64,
    /// When each write was acknowledged.
    pub times: Vec<Instant>,
}

impl Acked {
    /// From the last acknowledgement before `t` to the first after it.
    pub fn unavailability(&self, t: Instant) -> Duration {
        let last = self.times.iter().filter(|a| **a <= t).max().copied();
        let first = self.times.iter().filter(|a| **a > t).min().copied();
        match (last, first) {
            (Some(l), Some(f)) => f - l,
            _ => panic!("acknowledgements on both sides of the fault are needed"),
        }
    }

    /// The longest time between two consecutive acknowledgements.
    pub fn max_gap(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    /// Every acknowledged write is visible through `c`.
    pub async fn check(&self, c: &mut MultiplexedConnection) {
        for chunk in self.sets.chunks(500) {
            let keys: Vec<&String> = chunk.iter().map(|(k, _)| k).collect();
            let vals: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(c)
                .await
                .expect("MGET");
            for ((k, v), got) in chunk.iter().zip(vals) {
                assert_eq!(got.as_ref(), Some(v), "acknowledged write of {k} lost");
            }
        }
        let n: i64 = redis::cmd("GET")
            .arg(format!("{}:counter", self.prefix))
            .query_async::<Option<i64>>(c)
            .await
            .expect("GET counter")
            .unwrap_or(0);
        assert!(
            n >= self.incr_max && n <= self.incr_attempts,
            "counter {n}: acknowledged up to {}, sent {}",
            self.incr_max,
            self.incr_attempts
        );
    }
}

/// One client writing sequentially to whichever node ctrl says is RW,
/// re-resolving through `KvTopology` after any error.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(mut ctrl: CtrlClient<Channel>, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Acked {
            prefix: prefix.to_string(),
            ..Acked::default()
        }));
        let (s, a, prefix) = (stop.clone(), acked.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let mut conn: Option<MultiplexedConnection> = None;
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                let Some(c) = conn.as_mut() else {
                    let rw = topology(&mut ctrl).await.as_ref().and_then(rw_of);
                    if let Some(addr) = rw {
                        conn = redis_conn(&addr).await.ok();
                    }
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                };
                n += 1;
                let ok = if n.is_multiple_of(5) {
                    a.lock().unwrap().incr_attempts += 1;
                    let r: redis::RedisResult<i64> = redis::cmd("INCR")
                        .arg(format!("{prefix}:counter"))
                        .query_async(c)
                        .await;
                    r.map(|v| {
                        let mut g = a.lock().unwrap();
                        g.incr_max = g.incr_max.max(v);
                        g.times.push(Instant::now());
                    })
                } else {
                    let (k, v) = (format!("{prefix}:{n}"), format!("value-{n}"));
                    let r: redis::RedisResult<()> =
                        redis::cmd("SET").arg(&k).arg(&v).query_async(c).await;
                    r.map(|()| {
                        let mut g = a.lock().unwrap();
                        g.sets.push((k, v));
                        g.times.push(Instant::now());
                    })
                };
                if ok.is_err() {
                    conn = None;
                }
            }
        });
        Writer { stop, acked, task }
    }

    pub fn acks(&self) -> usize {
        self.acked.lock().unwrap().times.len()
    }

    pub async fn wait_acks(&self, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.acks() < n {
            assert!(
                start.elapsed() < limit,
                "only {} of {n} writes acknowledged within {limit:?}",
                self.acks()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Acked {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the writer stops")
            .expect("writer task");
        self.acked.lock().unwrap().clone()
    }
}
