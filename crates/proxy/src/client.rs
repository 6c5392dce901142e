//! One client connection: a dispatcher task that reads and routes requests,
//! and a collector task that gathers the replies in request order.
//!
//! ```text
//!  client ──► dispatcher ──(raw request bytes)──► backend writer task ──► kv node
//!                 │ Slot per request (bounded channel, in order)            │
//!                 ▼                                                         ▼
//!  client ◄── collector ◄──────────── reads replies from the backend sockets
//! ```
//!
//! Every client gets its own backend connections (one per kv node it uses,
//! opened lazily; plain RO reads of clients without AUTH or read-your-writes
//! use the shared connections of `pool.rs` instead, see `Slot::Shared`), so
//! per-connection state (SELECT, AUTH, MULTI, WATCH)
//! behaves as on a direct connection and each backend connection's replies
//! come back in the order its requests went out. The collector knows, per
//! slot, which backend connection holds the next reply, so it needs no
//! request ids. The dispatcher never blocks on a backend socket (a writer
//! task per backend connection does), which rules out a deadlock between a
//! full backend socket and the collector waiting for another backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore, TryAcquireError};

use crate::command::{classify, Class};
use crate::hash;
use crate::pool::{BatchReply, Mux};
use crate::resp::{self, Request};
use crate::server::Shared;
use crate::topology::{Node, Topology};

/// Slots handed to the collector in one piece at most (a client batch is
/// usually far smaller: one hand-over per batch, not per request).
const SLOT_BATCH: usize = 256;
/// Bound of a read the collector re-sends to the RW node itself.
const SIDE_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Highest SELECT index the kv node accepts (16 databases).
const MAX_DB: u32 = 15;
/// Routing key of keyspace-wide reads: every proxy sends them to the same
/// RO node, and SCAN cursors stay valid while the topology is stable.
const GLOBAL_ROUTE_KEY: &[u8] = b"\x00pikafs-global";

/// Read-your-writes state shared by a client's two tasks.
#[derive(Debug, Default)]
struct Ryw {
    /// `PIKAFS SEQ` replies not collected yet: reads go to the RW node.
    pending: AtomicU64,
    /// Sequence number of the client's last write (`u64::MAX`: unknown, so
    /// reads go to the RW node).
    last_seq: AtomicU64,
    /// Reads sent to an RO node behind a `WAITSEQ` and not answered yet.
    outstanding: AtomicU64,
    resolved: Notify,
    /// Highest sequence each RO node confirmed to this client.
    applied: Mutex<HashMap<Arc<str>, u64>>,
}

/// State both tasks of one client see.
#[derive(Debug, Default)]
struct ClientShared {
    ryw: Ryw,
    /// The client's last AUTH request, replayed on new backend connections.
    auth: Mutex<Option<Bytes>>,
}

/// A request to re-send to the RW node if its RO node fails (reads only).
#[derive(Debug, Clone)]
struct Retry {
    raw: Bytes,
    db: u32,
}

#[derive(Debug)]
enum MergeKind {
    Mget { keys: usize },
    Sum,
}

#[derive(Debug)]
struct Part {
    conn: u32,
    retry: Retry,
    /// MGET: where this part's values go in the merged reply.
    positions: Vec<usize>,
}

/// What the collector does for one request, in request order.
#[derive(Debug)]
enum Slot {
    /// A new backend connection: its read half.
    NewConn {
        id: u32,
        read: OwnedReadHalf,
        addr: Arc<str>,
        ro: bool,
        dead: Arc<AtomicBool>,
    },
    /// A reply made by the proxy.
    Local(Bytes),
    /// Forward the next reply of `conn`; reads carry a retry.
    Fwd { conn: u32, retry: Option<Retry> },
    /// Read and drop the next reply of `conn` (replayed SELECT/AUTH).
    Swallow { conn: u32 },
    /// The next reply of `conn` is `PIKAFS SEQ` after a write.
    Seq { conn: u32 },
    /// `PIKAFS WAITSEQ` then the read on an RO node.
    RywRead {
        conn: u32,
        node: Arc<str>,
        seq: u64,
        retry: Retry,
    },
    /// A multi-key read split over nodes.
    Merge { kind: MergeKind, parts: Vec<Part> },
    /// Forward the next reply of the current batch on shared connection
    /// `mux`; `first` starts a new batch (its replies arrive on `rx`).
    Shared {
        mux: u64,
        first: Option<(BatchReply, Arc<Mux>)>,
        retry: Retry,
    },
    /// Write what is pending and close the client connection.
    Close,
}

/// Serves one client until it disconnects.
pub(crate) async fn serve(shared: Arc<Shared>, sock: TcpStream, id: u64) {
    let _ = sock.set_nodelay(true);
    let (read, write) = sock.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    // Requests handed to the collector and not answered yet: the bound of
    // a client's pipeline (backpressure instead of unbounded buffering).
    let inflight = Arc::new(Semaphore::new(crate::config::MAX_INFLIGHT_PER_CLIENT));
    let cs = Arc::new(ClientShared::default());
    let collector = Collector {
        shared: shared.clone(),
        cs: cs.clone(),
        client: write,
        out: BytesMut::with_capacity(16 * 1024),
        conns: HashMap::new(),
        batches: HashMap::new(),
        side: None,
        topo: shared.topology.subscribe(),
    };
    let col = tokio::spawn(collector.run(rx, inflight.clone()));
    let mut d = Dispatcher {
        ryw: shared.cfg.read_your_writes,
        shared,
        cs,
        tx,
        slots: Vec::with_capacity(32),
        inflight,
        conns: Vec::new(),
        next_conn: 0,
        db: 0,
        in_multi: false,
        watching: false,
        topo: Arc::new(Topology::default()),
        healthy: Vec::new(),
        client_id: id,
        authed: false,
        batches: Vec::new(),
    };
    d.run(read, id).await;
    drop(d);
    let _ = col.await;
}

/// This client's requests for one shared connection, not yet submitted.
struct SharedBatch {
    mux: Arc<Mux>,
    buf: BytesMut,
    n: usize,
    /// Set from the first request of a batch until it is submitted.
    tx: Option<oneshot::Sender<Bytes>>,
}

/// One backend connection as the dispatcher sees it.
struct BConn {
    id: u32,
    addr: Arc<str>,
    buf: BytesMut,
    tx: mpsc::UnboundedSender<Bytes>,
    dead: Arc<AtomicBool>,
}

struct Dispatcher {
    shared: Arc<Shared>,
    cs: Arc<ClientShared>,
    tx: mpsc::UnboundedSender<Vec<Slot>>,
    /// Slots of this batch not handed to the collector yet.
    slots: Vec<Slot>,
    inflight: Arc<Semaphore>,
    conns: Vec<BConn>,
    next_conn: u32,
    db: u32,
    ryw: bool,
    in_multi: bool,
    watching: bool,
    topo: Arc<Topology>,
    /// The topology's RO nodes not marked down, refreshed per batch.
    healthy: Vec<Node>,
    client_id: u64,
    /// The client sent AUTH: its reads need its own (authenticated)
    /// connections.
    authed: bool,
    /// Reads for shared connections gathered in this batch.
    batches: Vec<SharedBatch>,
}

/// The collector went away (client write failed): stop.
struct Gone;

impl Dispatcher {
    async fn run(&mut self, mut read: OwnedReadHalf, id: u64) {
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let mut topo_rx = self.shared.topology.subscribe();
        loop {
            if inbuf.capacity() - inbuf.len() < 4096 {
                inbuf.reserve(16 * 1024);
            }
            match read.read_buf(&mut inbuf).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(client = id, "client read: {e}");
                    return;
                }
            }
            self.topo = topo_rx.borrow_and_update().clone();
            self.refresh_healthy();
            loop {
                match resp::parse_request(&mut inbuf) {
                    Ok(Some(req)) => {
                        if req.args.is_empty() {
                            continue;
                        }
                        match self.dispatch(req).await {
                            Ok(true) => {}
                            Ok(false) | Err(Gone) => {
                                let _ = self.send_slots().await;
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(client = id, "closing client: {e}");
                        self.shared.metrics.protocol_errors.inc();
                        let _ = self
                            .push(Slot::Local(resp::error_reply(&format!("ERR {e}"))))
                            .await;
                        let _ = self.push(Slot::Close).await;
                        let _ = self.send_slots().await;
                        return;
                    }
                }
            }
            if self.send_slots().await.is_err() {
                return;
            }
        }
    }

    fn refresh_healthy(&mut self) {
        let down = self.shared.health.down_now();
        self.healthy.clear();
        self.healthy.extend(
            self.topo
                .ros
                .iter()
                .filter(|n| !down.iter().any(|d| **d == *n.addr))
                .cloned(),
        );
    }

    /// Hands every backend its buffered requests.
    fn flush(&mut self) {
        for b in &mut self.batches {
            if let Some(tx) = b.tx.take() {
                b.mux.submit(&b.buf, b.n, tx);
                b.buf.clear();
                b.n = 0;
            }
        }
        for c in &mut self.conns {
            if !c.buf.is_empty() {
                let b = c.buf.split().freeze();
                if c.tx.send(b).is_err() {
                    c.dead.store(true, Ordering::Release);
                }
            }
        }
    }

    async fn push(&mut self, slot: Slot) -> Result<(), Gone> {
        self.slots.push(slot);
        if self.slots.len() >= SLOT_BATCH {
            self.send_slots().await?;
        }
        Ok(())
    }

    /// Hands the backends their requests, then the collector the slots of
    /// those requests, in one piece.
    async fn send_slots(&mut self) -> Result<(), Gone> {
        // Requests first: the collector may wait on any of them.
        self.flush();
        if self.slots.is_empty() {
            return Ok(());
        }
        let n = self.slots.len() as u32;
        // Everything the collector waits for is with the backends now, so
        // waiting for room here cannot deadlock with it.
        match self.inflight.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => self
                .inflight
                .acquire_many(n)
                .await
                .map_err(|_| Gone)?
                .forget(),
            Err(TryAcquireError::Closed) => return Err(Gone),
        }
        let batch = std::mem::replace(&mut self.slots, Vec::with_capacity(32));
        self.tx.send(batch).map_err(|_| Gone)
    }

    async fn local(&mut self, reply: Bytes) -> Result<bool, Gone> {
        self.shared.metrics.local.inc();
        self.push(Slot::Local(reply)).await?;
        Ok(true)
    }

    /// The index of an open connection to `node`, connecting if needed.
    async fn conn(&mut self, node: &Node, ro: bool) -> Result<Option<usize>, Gone> {
        if let Some(i) = self.conns.iter().position(|c| *c.addr == *node.addr) {
            if !self.conns[i].dead.load(Ordering::Acquire) {
                return Ok(Some(i));
            }
            self.conns.swap_remove(i);
        }
        let addr = node.addr.clone();
        let connect =
            tokio::time::timeout(self.shared.cfg.connect_timeout, TcpStream::connect(&*addr)).await;
        let sock = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.backend_failed(&addr, ro, &e.to_string());
                return Ok(None);
            }
            Err(_) => {
                self.backend_failed(&addr, ro, "connect timed out");
                return Ok(None);
            }
        };
        let _ = sock.set_nodelay(true);
        if ro {
            self.shared.health.mark_up(&addr);
        }
        let (read, write) = sock.into_split();
        let id = self.next_conn;
        self.next_conn += 1;
        let dead = Arc::new(AtomicBool::new(false));
        let (wtx, wrx) = mpsc::unbounded_channel();
        tokio::spawn(backend_writer(write, wrx, dead.clone()));
        self.push(Slot::NewConn {
            id,
            read,
            addr: addr.clone(),
            ro,
            dead: dead.clone(),
        })
        .await?;
        let mut c = BConn {
            id,
            addr,
            buf: BytesMut::with_capacity(8 * 1024),
            tx: wtx,
            dead,
        };
        // Replay connection state so this backend connection matches what
        // the client set up on the others.
        let auth = self.cs.auth.lock().clone();
        if let Some(a) = auth {
            c.buf.extend_from_slice(&a);
            self.push(Slot::Swallow { conn: id }).await?;
        }
        if self.db != 0 {
            resp::encode_command_into(
                &[&b"SELECT"[..], self.db.to_string().as_bytes()],
                &mut c.buf,
            );
            self.push(Slot::Swallow { conn: id }).await?;
        }
        self.conns.push(c);
        Ok(Some(self.conns.len() - 1))
    }

    fn backend_failed(&self, addr: &Arc<str>, ro: bool, why: &str) {
        tracing::info!(node = %addr, "backend connect failed: {why}");
        self.shared.metrics.backend_error(addr);
        if ro {
            self.shared
                .health
                .mark_down(addr, self.shared.cfg.down_retry);
        }
    }

    /// The RW connection, or the error reply to give instead.
    async fn rw_conn(&mut self) -> Result<Result<usize, Bytes>, Gone> {
        let Some(rw) = self.topo.rw.clone() else {
            return Ok(Err(resp::error_reply(
                "ERR proxy: no RW node in the topology",
            )));
        };
        Ok(match self.conn(&rw, false).await? {
            Some(i) => Ok(i),
            None => Err(resp::error_reply(&format!(
                "ERR proxy: cannot reach the RW node {}",
                rw.addr
            ))),
        })
    }

    /// Counts a read sent to an RO node: a global command's or a keyed one.
    fn count_read(&self, global: bool) {
        if global {
            self.shared.metrics.global.inc();
        } else {
            self.shared.metrics.ro.inc();
        }
    }

    /// Sends `raw` to the RW node; `write` adds read-your-writes
    /// bookkeeping.
    async fn send_rw(&mut self, raw: &[u8], write: bool) -> Result<bool, Gone> {
        let i = match self.rw_conn().await? {
            Ok(i) => i,
            Err(reply) => return self.local(reply).await,
        };
        self.shared.metrics.rw.inc();
        let c = &mut self.conns[i];
        c.buf.extend_from_slice(raw);
        let id = c.id;
        self.push(Slot::Fwd {
            conn: id,
            retry: None,
        })
        .await?;
        if write && self.ryw && !self.in_multi {
            resp::encode_command_into(&[&b"PIKAFS"[..], b"SEQ"], &mut self.conns[i].buf);
            self.cs.ryw.pending.fetch_add(1, Ordering::AcqRel);
            self.push(Slot::Seq { conn: id }).await?;
        }
        Ok(true)
    }

    /// Sends `raw` to every open backend connection and the RW node; the
    /// client gets the RW node's reply (SELECT, AUTH, RESET).
    async fn send_all(&mut self, raw: &[u8]) -> Result<bool, Gone> {
        let rw = match self.rw_conn().await? {
            Ok(i) => i,
            Err(reply) => return self.local(reply).await,
        };
        self.shared.metrics.rw.inc();
        for i in 0..self.conns.len() {
            if i == rw || self.conns[i].dead.load(Ordering::Acquire) {
                continue;
            }
            self.conns[i].buf.extend_from_slice(raw);
            let conn = self.conns[i].id;
            self.push(Slot::Swallow { conn }).await?;
        }
        self.conns[rw].buf.extend_from_slice(raw);
        let conn = self.conns[rw].id;
        self.push(Slot::Fwd { conn, retry: None }).await?;
        Ok(true)
    }

    /// Waits until no read-your-writes read is outstanding on an RO node,
    /// so a later write cannot overtake a read the collector may have to
    /// re-send to the RW node.
    async fn settle_ryw(&mut self) {
        if !self.ryw || self.cs.ryw.outstanding.load(Ordering::Acquire) == 0 {
            return;
        }
        if self.send_slots().await.is_err() {
            return;
        }
        let cs = self.cs.clone();
        loop {
            let n = cs.ryw.resolved.notified();
            if cs.ryw.outstanding.load(Ordering::Acquire) == 0 {
                return;
            }
            n.await;
        }
    }

    fn pick_index(&self, key: &[u8]) -> Option<usize> {
        hash::pick(self.healthy.iter().map(|n| n.hash), key)
    }

    fn pick(&self, key: &[u8]) -> Option<Node> {
        hash::pick(self.healthy.iter().map(|n| n.hash), key).map(|i| self.healthy[i].clone())
    }

    /// Whether a read of this client on `node` needs a WAITSEQ first:
    /// `Err(())` = send it to the RW node instead.
    fn ryw_need(&self, node: &Node) -> Result<Option<u64>, ()> {
        if !self.ryw {
            return Ok(None);
        }
        let r = &self.cs.ryw;
        if r.pending.load(Ordering::Acquire) > 0 {
            return Err(());
        }
        let seq = r.last_seq.load(Ordering::Acquire);
        if seq == 0 {
            return Ok(None);
        }
        if seq == u64::MAX {
            return Err(());
        }
        if r.applied.lock().get(&node.id).is_some_and(|&a| a >= seq) {
            return Ok(None);
        }
        Ok(Some(seq))
    }

    /// A read of one node's data: to the RO node `key` hashes to (or the RW
    /// node when there is none, it is down, or read-your-writes needs it).
    async fn read(&mut self, raw: Bytes, key: &[u8], global: bool) -> Result<bool, Gone> {
        if self.in_multi || self.watching {
            return self.send_rw(&raw, false).await;
        }
        let Some(idx) = self.pick_index(key) else {
            return self.send_rw(&raw, false).await;
        };
        if !self.ryw && !self.authed && self.shared.cfg.shared_ro_conns > 0 {
            return self.read_shared(raw, idx, global).await;
        }
        let node = self.healthy[idx].clone();
        let Ok(wait) = self.ryw_need(&node) else {
            return self.send_rw(&raw, false).await;
        };
        let Some(i) = self.conn(&node, true).await? else {
            self.refresh_healthy();
            return self.send_rw(&raw, false).await;
        };
        self.count_read(global);
        let retry = Retry { raw, db: self.db };
        let c = &mut self.conns[i];
        let conn = c.id;
        match wait {
            None => {
                c.buf.extend_from_slice(&retry.raw);
                self.push(Slot::Fwd {
                    conn,
                    retry: Some(retry),
                })
                .await?;
            }
            Some(seq) => {
                let ms = self.shared.cfg.ryw_wait.as_millis().max(1).to_string();
                resp::encode_command_into(
                    &[
                        &b"PIKAFS"[..],
                        b"WAITSEQ",
                        seq.to_string().as_bytes(),
                        ms.as_bytes(),
                    ],
                    &mut c.buf,
                );
                c.buf.extend_from_slice(&retry.raw);
                self.cs.ryw.outstanding.fetch_add(1, Ordering::AcqRel);
                self.push(Slot::RywRead {
                    conn,
                    node: node.id.clone(),
                    seq,
                    retry,
                })
                .await?;
            }
        }
        Ok(true)
    }

    /// A plain read over a connection shared with other clients (see
    /// `pool.rs`): replies do not depend on this client's connection state
    /// beyond the db.
    /// `idx`: the node in `healthy`. Without read-your-writes there is no
    /// WAITSEQ to send first.
    async fn read_shared(&mut self, raw: Bytes, idx: usize, global: bool) -> Result<bool, Gone> {
        let db = self.db;
        let addr = &self.healthy[idx].addr;
        let found = self
            .batches
            .iter()
            .position(|b| b.mux.db == db && *b.mux.addr == **addr);
        let i = match found {
            Some(i) if !self.batches[i].mux.is_dead() => i,
            _ => {
                if let Some(i) = found {
                    // Requests already queued for the dead connection are
                    // lost (the collector re-sends them to the RW node).
                    let mut b = self.batches.swap_remove(i);
                    if let Some(tx) = b.tx.take() {
                        b.mux.submit(&b.buf, b.n, tx);
                    }
                }
                let lane = (self.client_id % self.shared.cfg.shared_ro_conns as u64) as usize;
                let shared = self.shared.clone();
                let addr = self.healthy[idx].addr.clone();
                match shared.pool.get(&shared, &addr, db, lane).await {
                    Ok(mux) => {
                        shared.health.mark_up(&addr);
                        self.batches.push(SharedBatch {
                            mux,
                            buf: BytesMut::with_capacity(4 * 1024),
                            n: 0,
                            tx: None,
                        });
                        self.batches.len() - 1
                    }
                    Err(why) => {
                        self.backend_failed(&addr, true, &why);
                        self.refresh_healthy();
                        return self.send_rw(&raw, false).await;
                    }
                }
            }
        };
        self.count_read(global);
        let b = &mut self.batches[i];
        let first = if b.tx.is_none() {
            let (tx, rx) = oneshot::channel();
            b.tx = Some(tx);
            Some((rx, b.mux.clone()))
        } else {
            None
        };
        b.buf.extend_from_slice(&raw);
        b.n += 1;
        let mux = b.mux.id;
        self.push(Slot::Shared {
            mux,
            first,
            retry: Retry { raw, db },
        })
        .await?;
        Ok(true)
    }

    /// MGET / multi-key EXISTS: one sub-request per RO node, merged in order.
    async fn split_read(&mut self, req: Request, kind: Class) -> Result<bool, Gone> {
        let keys = &req.args[1..];
        if self.in_multi || self.watching || self.healthy.is_empty() {
            return self.send_rw(&req.raw, false).await;
        }
        // Group key positions by node.
        let mut groups: Vec<(Node, Vec<usize>)> = Vec::new();
        for (pos, k) in keys.iter().enumerate() {
            let Some(n) = self.pick(k) else {
                return self.send_rw(&req.raw, false).await;
            };
            match groups.iter_mut().find(|(g, _)| g.id == n.id) {
                Some((_, v)) => v.push(pos),
                None => groups.push((n, vec![pos])),
            }
        }
        if groups.len() == 1 {
            return self.read(req.raw, &req.args[1], false).await;
        }
        // Read-your-writes across several RO nodes would need a WAITSEQ per
        // part; the RW node answers at once instead.
        for (n, _) in &groups {
            if self.ryw_need(n) != Ok(None) {
                return self.send_rw(&req.raw, false).await;
            }
        }
        // Open every connection before writing any part: a node failing
        // half way must not leave a part nobody collects on another one.
        let mut ids = Vec::with_capacity(groups.len());
        for (n, _) in &groups {
            let Some(i) = self.conn(n, true).await? else {
                self.refresh_healthy();
                return self.send_rw(&req.raw, false).await;
            };
            ids.push(self.conns[i].id);
        }
        let mut parts = Vec::with_capacity(groups.len());
        for ((_, positions), id) in groups.into_iter().zip(ids) {
            let mut args: Vec<&[u8]> = Vec::with_capacity(positions.len() + 1);
            args.push(&req.args[0]);
            args.extend(positions.iter().map(|&p| &keys[p][..]));
            let raw = resp::encode_command(&args);
            // Indices may have moved (a dead connection is swap-removed);
            // ids do not.
            let c = self
                .conns
                .iter_mut()
                .find(|c| c.id == id)
                .expect("connection opened above is still listed");
            c.buf.extend_from_slice(&raw);
            parts.push(Part {
                conn: id,
                retry: Retry { raw, db: self.db },
                positions,
            });
        }
        self.shared.metrics.split.inc();
        let kind = match kind {
            Class::Mget => MergeKind::Mget { keys: keys.len() },
            _ => MergeKind::Sum,
        };
        self.push(Slot::Merge { kind, parts }).await?;
        Ok(true)
    }

    /// Routes one request. `Ok(false)`: close the client after it.
    async fn dispatch(&mut self, req: Request) -> Result<bool, Gone> {
        let class = classify(&req.args);
        match class {
            Class::KeyRead => self.read(req.raw.clone(), &req.args[1], false).await,
            Class::KeyReadAt2 => self.read(req.raw.clone(), &req.args[2], false).await,
            Class::Global => self.read(req.raw, GLOBAL_ROUTE_KEY, true).await,
            Class::Mget | Class::Exists => self.split_read(req, class).await,
            Class::Rw => {
                self.settle_ryw().await;
                self.send_rw(&req.raw, true).await
            }
            Class::RwNoWrite => self.send_rw(&req.raw, false).await,
            Class::Multi => {
                self.settle_ryw().await;
                self.in_multi = true;
                self.send_rw(&req.raw, false).await
            }
            Class::Watch => {
                if !self.in_multi {
                    self.watching = true;
                }
                self.send_rw(&req.raw, false).await
            }
            Class::EndMulti => {
                let was_multi = self.in_multi;
                self.in_multi = false;
                self.watching = false;
                self.send_rw(&req.raw, was_multi).await
            }
            Class::Unwatch => {
                if !self.in_multi {
                    self.watching = false;
                }
                self.send_rw(&req.raw, false).await
            }
            Class::Select => {
                if let Some(db) = req
                    .args
                    .get(1)
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|&d| d <= MAX_DB && req.args.len() == 2 && !self.in_multi)
                {
                    self.db = db;
                }
                self.send_all(&req.raw).await
            }
            Class::Auth => {
                self.authed = true;
                *self.cs.auth.lock() = Some(req.raw.clone());
                self.send_all(&req.raw).await
            }
            Class::Reset => {
                self.db = 0;
                self.in_multi = false;
                self.watching = false;
                self.ryw = self.shared.cfg.read_your_writes;
                self.authed = false;
                *self.cs.auth.lock() = None;
                self.send_all(&req.raw).await
            }
            Class::Quit => {
                self.local(resp::status_reply("OK")).await?;
                self.push(Slot::Close).await?;
                Ok(false)
            }
            Class::Client => {
                if req
                    .args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"readyourwrites"))
                {
                    let reply = match req.args.get(2).map(|a| a.to_ascii_lowercase()) {
                        Some(v) if req.args.len() == 3 && v == b"on" => {
                            self.ryw = true;
                            resp::status_reply("OK")
                        }
                        Some(v) if req.args.len() == 3 && v == b"off" => {
                            self.ryw = false;
                            resp::status_reply("OK")
                        }
                        None if req.args.len() == 2 => {
                            resp::bulk_reply(if self.ryw { b"on" } else { b"off" })
                        }
                        _ => resp::error_reply("ERR syntax error: CLIENT READYOURWRITES [ON|OFF]"),
                    };
                    return self.local(reply).await;
                }
                self.send_rw(&req.raw, false).await
            }
            Class::Proxy => {
                let reply = self.admin(&req.args[1..]);
                self.local(reply).await
            }
        }
    }

    /// `PROXY TOPOLOGY`, `PROXY TOPOLOGY SET <rw|-> [ro ...]`,
    /// `PROXY ROUTE <key>`.
    fn admin(&mut self, args: &[Bytes]) -> Bytes {
        let up = |a: &Bytes| a.to_ascii_uppercase();
        match args {
            [t] if up(t) == b"TOPOLOGY" => {
                let mut out = BytesMut::new();
                out.extend_from_slice(b"*3\r\n");
                out.extend_from_slice(&resp::int_reply(self.topo.generation as i64));
                match &self.topo.rw {
                    Some(n) => out.extend_from_slice(&resp::bulk_reply(n.addr.as_bytes())),
                    None => out.extend_from_slice(b"$-1\r\n"),
                }
                out.extend_from_slice(format!("*{}\r\n", self.topo.ros.len()).as_bytes());
                for n in &self.topo.ros {
                    out.extend_from_slice(&resp::bulk_reply(n.addr.as_bytes()));
                }
                out.freeze()
            }
            [t, s, rest @ ..] if up(t) == b"TOPOLOGY" && up(s) == b"SET" && !rest.is_empty() => {
                if !self.shared.cfg.allow_topology_set {
                    return resp::error_reply(
                        "ERR proxy: PROXY TOPOLOGY SET is disabled (start the proxy with --allow-topology-set)",
                    );
                }
                let strs: Option<Vec<String>> = rest
                    .iter()
                    .map(|a| std::str::from_utf8(a).ok().map(str::to_string))
                    .collect();
                let Some(strs) = strs else {
                    return resp::error_reply("ERR proxy: addresses must be UTF-8");
                };
                let rw = (strs[0] != "-").then_some(strs[0].as_str());
                match self.shared.topology.set(rw, &strs[1..]) {
                    Ok(gen) => {
                        self.shared.metrics.topology_generation.set(gen as i64);
                        tracing::info!(generation = gen, rw = ?rw, ros = ?&strs[1..], "topology set by admin command");
                        // Apply to this connection's next request at once.
                        self.topo = self.shared.topology.subscribe().borrow().clone();
                        self.refresh_healthy();
                        resp::int_reply(gen as i64)
                    }
                    Err(e) => resp::error_reply(&format!("ERR proxy: {e}")),
                }
            }
            [r, key] if up(r) == b"ROUTE" => match self.pick(key) {
                Some(n) => resp::bulk_reply(n.addr.as_bytes()),
                None => match &self.topo.rw {
                    Some(n) => resp::bulk_reply(n.addr.as_bytes()),
                    None => b"$-1\r\n"[..].into(),
                },
            },
            _ => resp::error_reply(
                "ERR proxy: usage: PROXY TOPOLOGY | PROXY TOPOLOGY SET <rw|-> [ro ...] | PROXY ROUTE <key>",
            ),
        }
    }
}

async fn backend_writer(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    dead: Arc<AtomicBool>,
) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            dead.store(true, Ordering::Release);
            return;
        }
    }
}

/// One backend connection as the collector sees it.
struct RConn {
    read: OwnedReadHalf,
    buf: BytesMut,
    addr: Arc<str>,
    ro: bool,
    dead: Arc<AtomicBool>,
    failed: bool,
}

/// The collector's own connection to the RW node, for re-sending reads
/// whose RO node failed or lagged.
struct SideConn {
    addr: Arc<str>,
    sock: TcpStream,
    buf: BytesMut,
    db: u32,
}

struct Collector {
    shared: Arc<Shared>,
    cs: Arc<ClientShared>,
    client: OwnedWriteHalf,
    out: BytesMut,
    conns: HashMap<u32, RConn>,
    /// The replies of the current batch on each shared connection (by
    /// mux id) not forwarded yet; `None`: the batch was lost.
    batches: HashMap<u64, Option<Bytes>>,
    side: Option<SideConn>,
    /// Watched while a reply from the RW node is due (see `reply`).
    topo: watch::Receiver<Arc<Topology>>,
}

/// Why a backend reply is missing.
struct Lost;

impl Collector {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Vec<Slot>>, inflight: Arc<Semaphore>) {
        'batches: while let Some(batch) = rx.recv().await {
            let n = batch.len();
            for slot in batch {
                if !self.handle(slot).await {
                    break 'batches;
                }
                if self.out.len() >= 64 * 1024 && self.flush().await.is_err() {
                    break 'batches;
                }
            }
            inflight.add_permits(n);
            // Write out once the dispatcher has nothing more for us right
            // now: one write per pipeline instead of one per reply.
            if rx.is_empty() && self.flush().await.is_err() {
                break;
            }
        }
        // A dispatcher waiting for room must not wait forever.
        inflight.close();
        let _ = self.flush().await;
        let _ = self.client.shutdown().await;
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.client.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Handles one slot; `false` ends the client connection.
    async fn handle(&mut self, slot: Slot) -> bool {
        match slot {
            Slot::NewConn {
                id,
                read,
                addr,
                ro,
                dead,
            } => {
                self.conns.insert(
                    id,
                    RConn {
                        read,
                        buf: BytesMut::with_capacity(16 * 1024),
                        addr,
                        ro,
                        dead,
                        failed: false,
                    },
                );
            }
            Slot::Local(b) => self.out.extend_from_slice(&b),
            Slot::Close => return false,
            Slot::Fwd { conn, retry } => match self.reply(conn).await {
                Ok(b) => self.out.extend_from_slice(&b),
                Err(Lost) => {
                    let b = self.after_loss(conn, retry).await;
                    self.out.extend_from_slice(&b);
                }
            },
            Slot::Swallow { conn } => {
                let _ = self.reply(conn).await;
            }
            Slot::Seq { conn } => {
                let seq = match self.reply(conn).await {
                    Ok(b) => resp::as_int(&b)
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(u64::MAX),
                    Err(Lost) => u64::MAX,
                };
                let r = &self.cs.ryw;
                r.last_seq.store(seq, Ordering::Release);
                r.pending.fetch_sub(1, Ordering::AcqRel);
            }
            Slot::RywRead {
                conn,
                node,
                seq,
                retry,
            } => {
                let waited = self.reply(conn).await;
                let read = self.reply(conn).await;
                let b = match (waited, read) {
                    (Ok(w), Ok(r)) if resp::as_int(&w) == Some(1) => {
                        let mut applied = self.cs.ryw.applied.lock();
                        let e = applied.entry(node).or_insert(0);
                        *e = (*e).max(seq);
                        r
                    }
                    _ => {
                        self.shared.metrics.ryw_fallback.inc();
                        self.side_call(&retry).await
                    }
                };
                self.out.extend_from_slice(&b);
                let r = &self.cs.ryw;
                r.outstanding.fetch_sub(1, Ordering::AcqRel);
                r.resolved.notify_waiters();
            }
            Slot::Merge { kind, parts } => {
                let mut replies = Vec::with_capacity(parts.len());
                for p in &parts {
                    let b = match self.reply(p.conn).await {
                        Ok(b) => b,
                        Err(Lost) => self.after_loss(p.conn, Some(p.retry.clone())).await,
                    };
                    replies.push(b);
                }
                let merged = merge(&kind, &parts, replies);
                self.out.extend_from_slice(&merged);
            }
            Slot::Shared { mux, first, retry } => {
                if let Some((rx, m)) = first {
                    let got = self.shared_batch(rx, &m).await;
                    self.batches.insert(mux, got);
                }
                let (next, done) = match self.batches.get_mut(&mux) {
                    Some(Some(b)) => match resp::reply_len(b) {
                        Ok(Some(n)) => {
                            let r = b.split_to(n);
                            (Some(r), b.is_empty())
                        }
                        _ => (None, false),
                    },
                    _ => (None, false),
                };
                // An emptied batch still pins the shared reader's buffer:
                // let it go now, not at this client's next batch.
                if done {
                    self.batches.remove(&mux);
                }
                match next {
                    Some(r) => self.out.extend_from_slice(&r),
                    None => {
                        self.shared.metrics.retry_rw.inc();
                        let b = self.side_call(&retry).await;
                        self.out.extend_from_slice(&b);
                    }
                }
            }
        }
        true
    }

    /// The replies of one batch on a shared connection; `None` if the
    /// connection failed or did not answer within the RO timeout (then it
    /// is dropped for every client and the node marked down).
    async fn shared_batch(&mut self, mut rx: BatchReply, mux: &Mux) -> Option<Bytes> {
        // No client write of the replies gathered so far before waiting
        // (unlike `reply`): plain reads on an RO node answer within
        // milliseconds or hit the RO timeout, and one client write per
        // pipeline is what keeps the proxy cheap.
        match rx.try_recv() {
            Ok(b) => return Some(b),
            // Lost: the connection failed before this batch's replies.
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let limit = self.shared.cfg.ro_reply_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(b)) => Some(b),
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(node = %mux.addr, ?limit, "RO kv node did not answer; taking it for hung");
                self.shared.metrics.backend_error(&mux.addr);
                self.shared
                    .health
                    .mark_down(&mux.addr, self.shared.cfg.down_retry);
                mux.kill("no reply within the RO timeout");
                None
            }
        }
    }

    /// The reply for a request whose backend connection failed: re-sent to
    /// the RW node when it was a read on an RO node, else an error.
    async fn after_loss(&mut self, conn: u32, retry: Option<Retry>) -> Bytes {
        let (addr, ro) = match self.conns.get(&conn) {
            Some(c) => (c.addr.clone(), c.ro),
            None => (Arc::from("?"), false),
        };
        match retry {
            Some(r) if ro => {
                self.shared.metrics.retry_rw.inc();
                self.side_call(&r).await
            }
            _ => resp::error_reply(&format!(
                "ERR proxy: connection to kv node {addr} lost before its reply"
            )),
        }
    }

    /// The next complete reply on backend connection `id`.
    async fn reply(&mut self, id: u32) -> Result<Bytes, Lost> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Err(Lost);
        };
        if c.failed {
            return Err(Lost);
        }
        let mut yielded = false;
        loop {
            match resp::reply_len(&c.buf) {
                Ok(Some(n)) => return Ok(c.buf.split_to(n).freeze()),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %c.addr, "{e}; dropping the connection");
                    break;
                }
            }
            // The framer rescans an incomplete reply after every read, so
            // let a big reply come in chunks that grow with it (a few
            // rescans, not one per 16 KiB).
            let want = c.buf.len().clamp(16 * 1024, 4 * 1024 * 1024);
            if c.buf.capacity() - c.buf.len() < want / 4 {
                c.buf.reserve(want);
            }
            // Take what the socket already has without waiting.
            match c.read.try_read_buf(&mut c.buf) {
                Ok(0) => {
                    tracing::info!(node = %c.addr, "kv node closed the connection");
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::info!(node = %c.addr, "kv node connection: {e}");
                    break;
                }
            }
            // Nothing there yet. Give the other tasks one scheduler round
            // (the reply usually lands meanwhile) before paying for a client
            // write of the replies gathered so far; without that write a
            // pipeline stuck behind a slow command would hold back replies
            // that are ready.
            if !yielded {
                yielded = true;
                tokio::task::yield_now().await;
                continue;
            }
            yielded = false;
            if !self.out.is_empty() {
                let r = self.client.write_all(&self.out).await;
                self.out.clear();
                if r.is_err() {
                    return Err(Lost);
                }
            }
            let read = c.read.read_buf(&mut c.buf);
            let got = if c.ro {
                let limit = self.shared.cfg.ro_reply_timeout;
                match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(node = %c.addr, ?limit, "RO kv node did not answer; taking it for hung");
                        break;
                    }
                }
            } else {
                // A writer that hangs (SIGSTOP) keeps its socket open; once
                // ctrl has failed it over, its in-flight requests fail here
                // instead of holding this client's replies back forever.
                let addr = c.addr.clone();
                tokio::select! {
                    r = read => r,
                    _ = replaced_as_rw(&mut self.topo, &addr) => {
                        tracing::warn!(node = %addr, "RW kv node replaced in the topology while a reply was due; dropping its connection");
                        break;
                    }
                }
            };
            match got {
                Ok(0) => {
                    tracing::info!(node = %c.addr, "kv node closed the connection");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(node = %c.addr, "kv node connection: {e}");
                    break;
                }
            }
        }
        c.failed = true;
        c.dead.store(true, Ordering::Release);
        self.shared.metrics.backend_error(&c.addr);
        if c.ro {
            self.shared
                .health
                .mark_down(&c.addr, self.shared.cfg.down_retry);
        }
        Err(Lost)
    }

    /// Runs one read on the collector's own RW connection.
    async fn side_call(&mut self, r: &Retry) -> Bytes {
        match tokio::time::timeout(SIDE_CALL_TIMEOUT, self.side_call_inner(r)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.side = None;
                resp::error_reply(&format!("ERR proxy: re-sending a read to the RW node: {e}"))
            }
            Err(_) => {
                self.side = None;
                resp::error_reply("ERR proxy: re-sending a read to the RW node timed out")
            }
        }
    }

    async fn side_call_inner(&mut self, r: &Retry) -> Result<Bytes, String> {
        let topo = self.shared.topology.subscribe().borrow().clone();
        let Some(rw) = topo.rw.clone() else {
            return Err("no RW node in the topology".into());
        };
        if self.side.as_ref().is_some_and(|s| s.addr != rw.addr) {
            self.side = None;
        }
        let mut swallow = 0;
        let mut req = BytesMut::new();
        if self.side.is_none() {
            let sock = tokio::time::timeout(
                self.shared.cfg.connect_timeout,
                TcpStream::connect(&*rw.addr),
            )
            .await
            .map_err(|_| format!("connect {} timed out", rw.addr))?
            .map_err(|e| format!("connect {}: {e}", rw.addr))?;
            let _ = sock.set_nodelay(true);
            self.side = Some(SideConn {
                addr: rw.addr.clone(),
                sock,
                buf: BytesMut::new(),
                db: 0,
            });
            if let Some(a) = self.cs.auth.lock().clone() {
                req.extend_from_slice(&a);
                swallow += 1;
            }
        }
        let side = self.side.as_mut().expect("side connection set above");
        if side.db != r.db {
            resp::encode_command_into(&[&b"SELECT"[..], r.db.to_string().as_bytes()], &mut req);
            side.db = r.db;
            swallow += 1;
        }
        req.extend_from_slice(&r.raw);
        side.sock
            .write_all(&req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            match resp::reply_len(&side.buf) {
                Ok(Some(n)) => {
                    let b = side.buf.split_to(n).freeze();
                    if swallow == 0 {
                        return Ok(b);
                    }
                    swallow -= 1;
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if side
                .sock
                .read_buf(&mut side.buf)
                .await
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return Err(format!("{} closed the connection", rw.addr));
            }
        }
    }
}

/// Combines the parts of a split read. An error from any part is the
/// reply, unchanged (as the node would have answered the whole command).
fn merge(kind: &MergeKind, parts: &[Part], replies: Vec<Bytes>) -> Bytes {
    if let Some(e) = replies.iter().find(|b| resp::is_error(b)) {
        return e.clone();
    }
    match kind {
        MergeKind::Sum => {
            let mut sum = 0i64;
            for b in &replies {
                match resp::as_int(b) {
                    Some(n) => sum += n,
                    None => return resp::error_reply("ERR proxy: unexpected EXISTS reply"),
                }
            }
            resp::int_reply(sum)
        }
        MergeKind::Mget { keys } => {
            let mut slots: Vec<Option<Bytes>> = vec![None; *keys];
            for (p, b) in parts.iter().zip(&replies) {
                let Some(elems) = resp::array_elements(b) else {
                    return resp::error_reply("ERR proxy: unexpected MGET reply");
                };
                if elems.len() != p.positions.len() {
                    return resp::error_reply("ERR proxy: MGET reply of the wrong length");
                }
                for (&pos, e) in p.positions.iter().zip(elems) {
                    slots[pos] = Some(e);
                }
            }
            let mut out = BytesMut::new();
            out.extend_from_slice(format!("*{keys}\r\n").as_bytes());
            for s in slots {
                match s {
                    Some(b) => out.extend_from_slice(&b),
                    None => out.extend_from_slice(b"$-1\r\n"),
                }
            }
            out.freeze()
        }
    }
}

/// Resolves once the topology names a writer other than `addr` (never, if
/// the topology source is gone).
async fn replaced_as_rw(topo: &mut watch::Receiver<Arc<Topology>>, addr: &str) {
    loop {
        let replaced = match &topo.borrow_and_update().rw {
            Some(rw) => &*rw.addr != addr,
            None => false,
        };
        if replaced {
            return;
        }
        if topo.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
