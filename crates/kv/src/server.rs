//! The TCP server: accept loop, one task per connection, the background
//! tasks (active expiry on RW, catch-up on RO) and startup/shutdown.
//!
//! Per connection: read what is there, parse every complete request (a
//! pipeline), execute the batch on a blocking thread, wait until the WAL is
//! synced past everything the batch wrote or read (group commit), then
//! write all the replies at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blocking::{timeout_reply, Blocking};
use crate::config::{KvConfig, Runtime};
use crate::encoding::{meta_key, DBS};
use crate::engine::{Engine, EngineConfig, Role};
use crate::error::KvError;
use crate::resp::{parse_request, Reply};
use crate::session::{Blocked, Session, Shared};
use crate::txn::{decode_meta_row, Space};
use crate::watch::Watches;

/// Most requests executed per batch; the rest of a long pipeline waits for
/// the next round so one client cannot hold a thread forever.
const MAX_BATCH: usize = 1024;
/// Most pipelined commands run as one group (one WriteBatch, or one read
/// snapshot): bounds how long one connection holds the engine's write lock
/// (or, on RO, delays a catch-up).
const MAX_GROUP: usize = 128;
/// How often active expiry runs, and how many records it examines per db
/// per run.
const EXPIRE_INTERVAL: Duration = Duration::from_millis(100);
const EXPIRE_SCAN: usize = 256;

/// A bound, running kv server.
pub struct KvServer {
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    cfg: KvConfig,
    registry: Arc<Registry>,
}

impl KvServer {
    /// Opens the engine (local directory with the default Env, or the given
    /// Env), binds the listener and the metrics endpoint.
    ///
    /// # Errors
    /// Invalid config, RocksDB cannot open, or an address cannot be bound.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled bind may leave the engine opening on a
    /// blocking thread.
    pub async fn bind(cfg: KvConfig, env: Option<rocksdb::Env>) -> Result<KvServer, KvError> {
        cfg.validate()?;
        let ecfg = EngineConfig {
            path: cfg.dir.clone(),
            role: cfg.role,
            secondary_path: cfg.secondary_dir.clone(),
            memory_bytes: cfg.memory_bytes,
            env,
            fsync: cfg.appendfsync,
            group_commit: cfg.group_commit,
        };
        let engine = tokio::task::spawn_blocking(move || Engine::open(ecfg))
            .await
            .map_err(|e| KvError::Config(format!("engine open task: {e}")))??;
        let (registry, metrics) = crate::metrics::registry();
        if let Some(w) = engine.wal() {
            w.set_observer(metrics.wal_observer());
        }
        let watches = Arc::new(Watches::default());
        {
            let w = watches.clone();
            engine.add_key_modified_hook(Arc::new(move |t| w.touched(t)));
        }
        let blocking = Arc::new(Blocking::default());
        {
            let b = blocking.clone();
            engine.add_key_modified_hook(Arc::new(move |t| b.touched(t)));
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| KvError::Bind {
                addr: cfg.listen.to_string(),
                source,
            })?;
        let local = listener.local_addr()?;
        if let Some(m) = cfg.metrics {
            pikafs_proto::metrics_http::serve(m, registry.clone())
                .await
                .map_err(|source| KvError::Bind {
                    addr: m.to_string(),
                    source,
                })?;
        }
        let shared = Arc::new(Shared {
            engine,
            runtime: Runtime {
                requirepass: RwLock::new(cfg.requirepass.clone()),
                maxmemory: RwLock::new(cfg.memory_bytes as u64),
                max_clients: RwLock::new(cfg.max_clients),
                ignored: RwLock::new(Default::default()),
            },
            watches,
            blocking,
            metrics,
            clients: Mutex::new(Default::default()),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            run_id: format!("{:040x}", rand::random::<u128>()),
            listen: local,
            commands_processed: AtomicU64::new(0),
            connections_received: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
        });
        Ok(KvServer {
            shared,
            listener,
            local,
            cfg,
            registry,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The engine: the lead wires fs journal notifications to
    /// `engine().catch_up_trigger()`.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Serves until `shutdown` is cancelled, then closes connections, syncs
    /// the WAL a last time and stops the engine's background work.
    ///
    /// # Errors
    /// None today once bound; reserved for fatal engine errors.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancel through `shutdown` instead.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), KvError> {
        let tracker = TaskTracker::new();
        let shared = self.shared.clone();
        match self.cfg.role {
            Role::Rw => {
                tracker.spawn(expire_loop(shared.clone(), shutdown.clone()));
                tracker.spawn(unblock_loop(shared.clone(), shutdown.clone()));
            }
            Role::Ro => {
                tracker.spawn(catch_up_loop(
                    shared.clone(),
                    self.cfg.catch_up_interval,
                    shutdown.clone(),
                ));
            }
        }
        tracing::info!(addr = %self.local, role = self.cfg.role.name(), dir = %self.cfg.dir.display(), "kv server listening");
        loop {
            let (sock, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            shared.connections_received.fetch_add(1, Ordering::Relaxed);
            shared.metrics.connections_total.inc();
            let _ = sock.set_nodelay(true);
            if shared.clients.lock().len() >= *shared.runtime.max_clients.read() {
                shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                tracker.spawn(async move {
                    let mut sock = sock;
                    let _ = sock
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
                continue;
            }
            let kill = shutdown.child_token();
            let session = Session::new(shared.clone(), peer, kill.clone());
            tracker.spawn(connection(shared.clone(), sock, peer, session, kill));
        }
        tracker.close();
        // Connections notice the cancelled parent token and finish their
        // current batch (including its durability wait).
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        let engine = shared.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        tracing::info!("kv server stopped");
        Ok(())
    }
}

/// Binds and serves `cfg` until `shutdown`.
///
/// # Errors
/// As [`KvServer::bind`].
///
/// # Cancel safety
/// Not cancel safe; cancel through `shutdown`.
pub async fn run(
    cfg: KvConfig,
    env: Option<rocksdb::Env>,
    shutdown: CancellationToken,
) -> Result<(), KvError> {
    KvServer::bind(cfg, env).await?.serve(shutdown).await
}

#[tracing::instrument(skip_all, fields(conn = session.id(), peer = %peer))]
async fn connection(
    shared: Arc<Shared>,
    mut sock: TcpStream,
    peer: SocketAddr,
    session: Session,
    kill: CancellationToken,
) {
    shared.metrics.connections.inc();
    let mut session = Some(session);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    // Requests parsed but not executed yet (those pipelined behind a
    // blocked command).
    let mut pending: VecDeque<Vec<bytes::Bytes>> = VecDeque::new();
    'conn: loop {
        // Parse every complete request already buffered.
        let mut batch = Vec::new();
        let mut proto_err = None;
        while batch.len() < MAX_BATCH {
            if let Some(req) = pending.pop_front() {
                batch.push(req);
                continue;
            }
            match parse_request(&mut buf) {
                Ok(Some(req)) => {
                    if !req.is_empty() {
                        batch.push(req);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    proto_err = Some(e);
                    break;
                }
            }
        }
        if batch.is_empty() && proto_err.is_none() {
            let n = tokio::select! {
                _ = kill.cancelled() => break 'conn,
                r = sock.read_buf(&mut buf) => r,
            };
            match n {
                Ok(0) => {
                    tracing::debug!("client closed the connection");
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    break;
                }
            }
        }
        let mut s = session
            .take()
            .expect("session is returned after each batch");
        // A pipeline of cheap reads served from memory runs right here:
        // handing it to a blocking thread and back costs more than the
        // reads (two futex wake-ups and a thread switch per batch). Anything
        // else, or a read that would need the disk, goes to a blocking
        // thread as before.
        // Cheap writes too: RocksDB's unsynced write is a memtable insert
        // and a WAL append into the fs's memory; the sync is shared and
        // awaited below, not here.
        let inline = if proto_err.is_some() || batch.len() > MAX_GROUP {
            None
        } else if batch.iter().all(|r| s.is_inline_read(r)) {
            s.execute_reads_in_memory(&batch)
        } else if batch.iter().all(|r| s.is_inline_write(r)) {
            s.execute_writes_in_memory(&batch).map(|(r, _)| r)
        } else {
            None
        };
        let engine = shared.engine.clone();
        let res = if let Some(replies) = inline {
            // Everything the batch wrote or read is at or below this.
            let seq = Some(engine.applied_sequence());
            Ok((s, (replies, seq, None, Vec::new())))
        } else {
            tokio::task::spawn_blocking(move || {
                let mut replies = Vec::with_capacity(batch.len());
                let mut touched = false;
                let mut blocked = None;
                let mut rest = Vec::new();
                let mut reqs = batch.into_iter().peekable();
                while let Some(req) = reqs.next() {
                    let kind = s.group_kind(&req);
                    if kind.is_some() && reqs.peek().is_some_and(|n| s.group_kind(n) == kind) {
                        let write = kind == Some(true);
                        let mut group = vec![req];
                        while group.len() < MAX_GROUP {
                            match reqs.next_if(|n| s.group_kind(n) == kind) {
                                Some(n) => group.push(n),
                                None => break,
                            }
                        }
                        let (r, _) = s.execute_group(group, write);
                        touched = true;
                        replies.extend(r);
                        continue;
                    }
                    let o = s.execute(req);
                    touched |= o.touched_data || o.seq.is_some();
                    if o.blocked.is_some() {
                        // Everything behind a blocked command waits for it.
                        blocked = o.blocked;
                        break;
                    }
                    if let Some(r) = o.reply {
                        replies.push(r);
                    }
                    if s.closing {
                        break;
                    }
                }
                if blocked.is_some() {
                    rest.extend(reqs);
                }
                // Everything the batch wrote or read is at or below this.
                let seq = touched.then(|| engine.applied_sequence());
                (s, (replies, seq, blocked, rest))
            })
            .await
        };
        let (s, (mut replies, mut seq, mut blocked, rest)) = match res {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "command execution panicked; closing the connection");
                break;
            }
        };
        let closing = s.closing;
        session = Some(s);
        for r in rest.into_iter().rev() {
            pending.push_front(r);
        }
        if let Some(b) = blocked.take() {
            // Answer what came before the blocked command first.
            if !replies.is_empty() {
                if !flush_replies(&shared, &mut sock, &mut out, &replies, seq).await {
                    break;
                }
                replies.clear();
            }
            match wait_blocked(&shared, &mut sock, &mut buf, &kill, b).await {
                Some((r, s)) => {
                    replies.push(r);
                    seq = s;
                }
                None => break,
            }
        }
        if let (Some(seq), Some(w)) = (seq, shared.engine.wal()) {
            let t = Instant::now();
            let r = w.wait_durable(seq).await;
            shared
                .metrics
                .durable_wait_seconds
                .observe(t.elapsed().as_secs_f64());
            if let Err(e) = r {
                // Never acknowledge what may not be on disk.
                let _ = sock.write_all(format!("-ERR {e}\r\n").as_bytes()).await;
                break;
            }
        }
        out.clear();
        for r in &replies {
            r.encode(&mut out);
        }
        if let Some(e) = &proto_err {
            shared.metrics.protocol_errors.inc();
            tracing::info!(error = %e, "protocol error; closing the connection");
            Reply::Error(format!("ERR {e}")).encode(&mut out);
        }
        if let Err(e) = sock.write_all(&out).await {
            tracing::debug!(error = %e, "write failed");
            break;
        }
        if proto_err.is_some() {
            // Closing with unread bytes makes the kernel send RST, which can
            // destroy the error reply before the client reads it: half-close
            // and drain briefly first.
            let _ = sock.shutdown().await;
            let mut sink = [0u8; 16 * 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.read(&mut sink)).await {
                if n == 0 {
                    break;
                }
            }
            break;
        }
        if closing {
            break;
        }
        // Do not let a huge idle buffer linger after a big request.
        if buf.is_empty() && buf.capacity() > (1 << 20) {
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
    let _ = sock.shutdown().await;
    shared.metrics.connections.dec();
    // Session drop (unwatch, client registry) may block briefly: do it here.
    drop(session);
}

/// Waits for the durability of `seq` (if any), then writes `replies`.
/// `false`: the connection must close.
async fn flush_replies(
    shared: &Shared,
    sock: &mut TcpStream,
    out: &mut BytesMut,
    replies: &[Reply],
    seq: Option<u64>,
) -> bool {
    if let (Some(seq), Some(w)) = (seq, shared.engine.wal()) {
        if let Err(e) = w.wait_durable(seq).await {
            let _ = sock.write_all(format!("-ERR {e}\r\n").as_bytes()).await;
            return false;
        }
    }
    out.clear();
    for r in replies {
        r.encode(out);
    }
    sock.write_all(out).await.is_ok()
}

/// Most bytes buffered from a blocked client before we stop reading it
/// (we still notice a close once it is under the limit again).
const BLOCKED_READ_LIMIT: usize = 1 << 20;

/// Waits for a blocked request's answer without holding a thread. `None`:
/// the client went away or was killed (the waiter is forgotten).
async fn wait_blocked(
    shared: &Shared,
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    kill: &CancellationToken,
    b: Blocked,
) -> Option<(Reply, Option<u64>)> {
    match b {
        Blocked::Pop {
            ticket,
            mut rx,
            timeout,
        } => {
            let deadline = timeout.map(|d| tokio::time::Instant::now() + d);
            let gone = loop {
                tokio::select! {
                    r = &mut rx => {
                        return Some(match r {
                            Ok(s) => (s.reply, s.seq),
                            Err(_) => (timeout_reply(), None),
                        });
                    }
                    _ = sleep_until_opt(deadline) => break false,
                    _ = kill.cancelled() => break true,
                    r = sock.read_buf(buf), if buf.len() < BLOCKED_READ_LIMIT => match r {
                        Ok(0) | Err(_) => break true,
                        Ok(_) => continue,
                    },
                }
            };
            if shared.blocking.cancel(ticket) {
                return (!gone).then(|| (timeout_reply(), None));
            }
            // The unblocker claimed it just now: its reply is on the way.
            let r = rx.await.ok();
            if gone {
                return None;
            }
            Some(r.map_or((timeout_reply(), None), |s| (s.reply, s.seq)))
        }
        Blocked::Seq { seq, timeout } => {
            let eng = &shared.engine;
            let mut w = eng.applied_watch();
            eng.catch_up_trigger().notify_one();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if eng.applied_sequence() >= seq {
                    return Some((Reply::Int(1), None));
                }
                tokio::select! {
                    r = w.changed() => if r.is_err() { return Some((Reply::Int(0), None)); },
                    _ = tokio::time::sleep_until(deadline) => {
                        let ok = eng.applied_sequence() >= seq;
                        return Some((Reply::Int(i64::from(ok)), None));
                    }
                    _ = kill.cancelled() => return None,
                    r = sock.read_buf(buf), if buf.len() < BLOCKED_READ_LIMIT => match r {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    },
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// RW: serves blocked clients whenever a key they wait on was written.
async fn unblock_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.blocking.woken() => {}
        }
        let sh = shared.clone();
        let r = tokio::task::spawn_blocking(move || sh.blocking.serve_ready(&sh.engine)).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "unblocking task panicked");
        }
    }
}

/// RW: removes expired keys in the background, so they stop counting and
/// their space is reclaimed even if never read again.
async fn expire_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut cursors: Vec<Vec<u8>> = (0..DBS).map(|db| vec![db]).collect();
    let mut tick = tokio::time::interval(EXPIRE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sh = shared.clone();
        let cur = std::mem::take(&mut cursors);
        let r = tokio::task::spawn_blocking(move || expire_pass(&sh, cur)).await;
        match r {
            Ok((c, n)) => {
                cursors = c;
                if n > 0 {
                    shared.expired_keys.fetch_add(n, Ordering::Relaxed);
                    shared.metrics.expired_keys.inc_by(n);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "active expiry panicked");
                cursors = (0..DBS).map(|db| vec![db]).collect();
            }
        }
    }
}

/// One pass over up to `EXPIRE_SCAN` records per db from each db's cursor.
fn expire_pass(shared: &Shared, mut cursors: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, u64) {
    let eng = &shared.engine;
    let mut removed = 0;
    for db in 0..DBS {
        let hi = vec![db + 1];
        let expired: Vec<Vec<u8>> = {
            let t = eng.read_txn(db);
            let rows = match t.scan_raw(
                Space::Meta,
                &cursors[db as usize],
                Some(&hi),
                EXPIRE_SCAN,
                false,
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "active expiry scan failed");
                    continue;
                }
            };
            cursors[db as usize] = match rows.last() {
                Some((k, _)) if rows.len() == EXPIRE_SCAN => {
                    let mut n = k.clone();
                    n.push(0);
                    n
                }
                _ => vec![db],
            };
            let now = t.now_ms();
            rows.iter()
                .filter_map(|(k, v)| decode_meta_row(k, v).ok())
                .filter(|(_, m)| m.is_expired(now))
                .map(|(k, _)| k)
                .collect()
        };
        if expired.is_empty() {
            continue;
        }
        let mut t = eng.write_txn(db);
        for k in &expired {
            // Re-check under the write lock: the key may have been rewritten.
            let still = t
                .get_raw(Space::Meta, &meta_key(db, k))
                .ok()
                .flatten()
                .and_then(|raw| crate::encoding::Meta::decode(&raw).ok())
                .is_some_and(|m| m.is_expired(t.now_ms()));
            if still {
                t.delete_key(k);
                removed += 1;
            }
        }
        if let Err(e) = t.commit() {
            tracing::warn!(error = %e, "active expiry commit failed");
        }
    }
    (cursors, removed)
}

/// RO: catches up with the primary on every trigger notification, or at
/// least every `interval` (the local-directory fallback).
async fn catch_up_loop(shared: Arc<Shared>, interval: Duration, shutdown: CancellationToken) {
    let trigger = shared.engine.catch_up_trigger();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = trigger.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let eng = shared.engine.clone();
        let t = Instant::now();
        let r = tokio::task::spawn_blocking(move || eng.catch_up()).await;
        match r {
            Ok(Ok(())) => {
                shared.metrics.catch_ups.inc();
                shared
                    .metrics
                    .catch_up_seconds
                    .observe(t.elapsed().as_secs_f64());
                if failing {
                    tracing::info!("catch-up with the primary recovered");
                    failing = false;
                }
            }
            Ok(Err(e)) => {
                shared.metrics.catch_up_errors.inc();
                if !failing {
                    tracing::warn!(error = %e, "catch-up with the primary failed; retrying");
                    failing = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "catch-up task panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(cmds: &[&[&str]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cmds {
            out.extend(format!("*{}\r\n", c.len()).bytes());
            for a in *c {
                out.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
            }
        }
        out
    }

    /// Sends `cmds` in one write (so the server parses them as one
    /// pipelined batch) and reads until `want` bytes arrived.
    async fn roundtrip(sock: &mut TcpStream, cmds: &[&[&str]], want: &str) {
        sock.write_all(&resp(cmds)).await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < want.len() {
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, sock.read(&mut b))
                .await
                .expect("replies in time")
                .unwrap();
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    /// Sends `GET key` and returns the raw reply (a nil or a short bulk).
    async fn get_raw(sock: &mut TcpStream, key: &str) -> String {
        sock.write_all(&resp(&[&["GET", key]])).await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let s = String::from_utf8_lossy(&got).to_string();
            if s == "$-1\r\n" || (s.starts_with('$') && s.matches("\r\n").count() == 2) {
                return s;
            }
            let mut b = [0u8; 256];
            let n = tokio::time::timeout_at(deadline, sock.read(&mut b))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "server closed the connection");
            got.extend_from_slice(&b[..n]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ro_catches_up_when_notified_without_waiting_for_its_timer() {
        let dir = tempfile::tempdir().unwrap();
        let sec = tempfile::tempdir().unwrap();
        let mut cfg = KvConfig::new("127.0.0.1:0".parse().unwrap(), Role::Rw, dir.path().into());
        cfg.memory_bytes = 32 << 20;
        let rw = KvServer::bind(cfg, None).await.unwrap();
        let rw_addr = rw.local_addr();
        let mut cfg = KvConfig::new("127.0.0.1:0".parse().unwrap(), Role::Ro, dir.path().into());
        cfg.memory_bytes = 32 << 20;
        cfg.secondary_dir = Some(sec.path().into());
        // The timer alone would take an hour: only the notification can
        // make the write visible within the test's bound.
        cfg.catch_up_interval = Duration::from_secs(3600);
        let ro = KvServer::bind(cfg, None).await.unwrap();
        let (ro_addr, ro_engine) = (ro.local_addr(), ro.engine().clone());
        let stop = CancellationToken::new();
        let rw_task = tokio::spawn(rw.serve(stop.clone()));
        let ro_task = tokio::spawn(ro.serve(stop.clone()));

        let mut w = TcpStream::connect(rw_addr).await.unwrap();
        let mut r = TcpStream::connect(ro_addr).await.unwrap();
        roundtrip(&mut r, &[&["PING"]], "+PONG\r\n").await;
        // The secondary opened before this write (acknowledged = synced to
        // the WAL it tails) and its loop waits for a trigger.
        roundtrip(&mut w, &[&["SET", "k", "v"]], "+OK\r\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get_raw(&mut r, "k").await, "$-1\r\n", "not caught up yet");
        let notified = Instant::now();
        ro_engine.catch_up_trigger().notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = get_raw(&mut r, "k").await;
            if got == "$1\r\nv\r\n" {
                break;
            }
            assert_eq!(got, "$-1\r\n");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the notified catch-up did not land within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tracing::debug!(took = ?notified.elapsed(), "visible after the notification");

        stop.cancel();
        drop((w, r));
        for t in [rw_task, ro_task] {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("server stops")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_writes_grouped_keep_per_command_replies_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = KvConfig::new("127.0.0.1:0".parse().unwrap(), Role::Rw, dir.path().into());
        cfg.memory_bytes = 32 << 20;
        let srv = KvServer::bind(cfg, None).await.unwrap();
        let addr = srv.local_addr();
        let stop = CancellationToken::new();
        let task = tokio::spawn(srv.serve(stop.clone()));
        let mut sock = TcpStream::connect(addr).await.unwrap();
        // Authenticates the session (groups need it), then a pipeline of
        // writes with failures in the middle and reads between them.
        roundtrip(&mut sock, &[&["PING"]], "+PONG\r\n").await;
        let not_int = "-ERR value is not an integer or out of range\r\n";
        let wrongtype = "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
        let want = format!(
            "+OK\r\n+OK\r\n{not_int}:2\r\n:1\r\n{wrongtype}:3\r\n$1\r\n3\r\n\
             +OK\r\n{wrongtype}:11\r\n$2\r\n11\r\n$5\r\nhello\r\n+hash\r\n"
        );
        roundtrip(
            &mut sock,
            &[
                &["SET", "a", "1"],
                &["SET", "s", "hello"],
                &["INCR", "s"],
                &["INCR", "a"],
                &["HSET", "h", "f", "v"],
                &["LPUSH", "s", "x"],
                &["INCR", "a"],
                &["GET", "a"],
                &["SET", "a", "10"],
                &["HSET", "a", "f", "v"],
                &["INCR", "a"],
                &["GET", "a"],
                &["GET", "s"],
                &["TYPE", "h"],
            ],
            &want,
        )
        .await;
        // A second connection sees all of it (committed, not just overlaid).
        let mut other = TcpStream::connect(addr).await.unwrap();
        roundtrip(
            &mut other,
            &[&["MGET", "a", "s"]],
            "*2\r\n$2\r\n11\r\n$5\r\nhello\r\n",
        )
        .await;
        stop.cancel();
        drop(sock);
        drop(other);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}
