//! RO backend connections shared by all clients for plain reads.
//!
//! With one backend connection per client, every 16-command client
//! pipeline split over n RO nodes becomes n small backend batches: n
//! writes, n reads and n wake-ups in the proxy *and* in the kv nodes per
//! client batch. Plain reads carry no connection state except the database,
//! so the proxy sends them over a few connections per (RO node, db) shared
//! by all clients instead: the batches of many clients queued while a write
//! is in progress go out in one write, and their replies come back in one
//! read.
//!
//! A [`Mux`] is one such connection: a writer task and a reader task around
//! a FIFO of pending batches. A client submits a batch (its requests for that
//! node, raw and contiguous, and how many there are) with a oneshot sender;
//! since the batch's bytes are written contiguously and in queue order, its
//! replies are contiguous in the reply stream, and the reader hands them over
//! as one `Bytes` (no copy) once all of them are in.
//!
//! Only requests whose reply does not depend on per-client connection state
//! use it: reads (routed to RO nodes anyway) from clients without AUTH and
//! without read-your-writes. The db is part of the key (the connection sends
//! `SELECT db` first).
//!
//! Failure: a connection that fails (EOF, garbage, [`Mux::kill`] after a
//! client timed out on it) drops every pending batch's sender, so each
//! waiting client sees its reads lost and re-sends them to the RW node; the
//! next read opens a new connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::resp;
use crate::server::Shared;

/// The replies of one submitted batch, contiguous.
pub(crate) type BatchReply = oneshot::Receiver<Bytes>;

struct Pending {
    n: usize,
    /// `None`: replies read and dropped (the `SELECT` sent at connect).
    tx: Option<oneshot::Sender<Bytes>>,
}

#[derive(Default)]
struct State {
    out: BytesMut,
    pending: VecDeque<Pending>,
    dead: bool,
}

/// One shared connection to an RO node.
pub(crate) struct Mux {
    pub id: u64,
    pub addr: Arc<str>,
    pub db: u32,
    state: parking_lot::Mutex<State>,
    wake_writer: Notify,
    dead: AtomicBool,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("db", &self.db)
            .finish()
    }
}

impl Mux {
    /// Whether the connection failed (new batches would be refused).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Queues `n` requests (`raw`, contiguous) whose replies go to `tx` in
    /// one piece. On a dead connection `tx` is dropped at once, which the
    /// receiver sees as a lost batch.
    pub fn submit(&self, raw: &[u8], n: usize, tx: oneshot::Sender<Bytes>) {
        let mut st = self.state.lock();
        if st.dead {
            return;
        }
        let was_empty = st.out.is_empty();
        st.out.extend_from_slice(raw);
        st.pending.push_back(Pending { n, tx: Some(tx) });
        drop(st);
        // The writer takes everything queued, so one wake-up per non-empty
        // transition is enough (a stored permit covers a writer that is
        // busy writing the previous lot).
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    /// Drops the connection: every pending batch is lost.
    pub fn kill(&self, why: &str) {
        let pending = {
            let mut st = self.state.lock();
            if st.dead {
                return;
            }
            st.dead = true;
            st.out.clear();
            std::mem::take(&mut st.pending)
        };
        self.dead.store(true, Ordering::Release);
        self.cancel.cancel();
        tracing::info!(node = %self.addr, db = self.db, lost = pending.len(), "shared RO connection dropped: {why}");
        // Dropping the senders wakes every waiting client with an error.
        drop(pending);
    }
}

/// (node address, db, lane).
type MuxKey = (Arc<str>, u32, usize);

/// The shared connections of one proxy.
#[derive(Default)]
pub(crate) struct Pool {
    muxes: tokio::sync::Mutex<HashMap<MuxKey, Arc<Mux>>>,
    next_id: AtomicU64,
}

impl Pool {
    /// The live shared connection for reads of db `db` on `addr` in lane
    /// `lane`, connecting if needed; `Err` says why the connect failed.
    pub async fn get(
        &self,
        shared: &Arc<Shared>,
        addr: &Arc<str>,
        db: u32,
        lane: usize,
    ) -> Result<Arc<Mux>, String> {
        let key = (addr.clone(), db, lane);
        // Held across the connect: concurrent clients wait for one connect
        // instead of opening several connections to the same node.
        let mut muxes = self.muxes.lock().await;
        if let Some(m) = muxes.get(&key) {
            if !m.is_dead() {
                return Ok(m.clone());
            }
        }
        let sock = tokio::time::timeout(shared.cfg.connect_timeout, TcpStream::connect(&**addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = sock.set_nodelay(true);
        let (read, write) = sock.into_split();
        let mux = Arc::new(Mux {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            addr: addr.clone(),
            db,
            state: parking_lot::Mutex::new(State::default()),
            wake_writer: Notify::new(),
            dead: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        });
        if db != 0 {
            let mut st = mux.state.lock();
            resp::encode_command_into(&[&b"SELECT"[..], db.to_string().as_bytes()], &mut st.out);
            st.pending.push_back(Pending { n: 1, tx: None });
        }
        tokio::spawn(writer(mux.clone(), write));
        tokio::spawn(reader(mux.clone(), read, shared.clone()));
        mux.wake_writer.notify_one();
        muxes.insert(key, mux.clone());
        Ok(mux)
    }
}

async fn writer(mux: Arc<Mux>, mut w: OwnedWriteHalf) {
    let mut spare = BytesMut::with_capacity(16 * 1024);
    loop {
        tokio::select! {
            _ = mux.cancel.cancelled() => return,
            _ = mux.wake_writer.notified() => {}
        }
        // Let the other clients woken by the same readiness event queue
        // their batches first: one write carries all of them.
        tokio::task::yield_now().await;
        {
            let mut st = mux.state.lock();
            if st.dead {
                return;
            }
            std::mem::swap(&mut st.out, &mut spare);
        }
        if spare.is_empty() {
            continue;
        }
        let r = tokio::select! {
            _ = mux.cancel.cancelled() => return,
            r = w.write_all(&spare) => r,
        };
        spare.clear();
        if let Err(e) = r {
            mux.kill(&format!("write: {e}"));
            return;
        }
    }
}

async fn reader(mux: Arc<Mux>, mut r: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // Scan position and replies counted in `buf` for the front batch, so a
    // batch whose replies arrive in several reads is not rescanned.
    let mut pos = 0usize;
    let mut count = 0usize;
    let why = 'conn: loop {
        let want = buf.len().clamp(16 * 1024, 4 * 1024 * 1024);
        if buf.capacity() - buf.len() < want / 4 {
            buf.reserve(want);
        }
        let got = tokio::select! {
            _ = mux.cancel.cancelled() => return,
            g = r.read_buf(&mut buf) => g,
        };
        match got {
            Ok(0) => break 'conn "kv node closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break 'conn format!("read: {e}"),
        }
        loop {
            let need = match mux.state.lock().pending.front() {
                Some(p) => p.n,
                None if buf.is_empty() => break,
                None => break 'conn "reply without a request".to_string(),
            };
            while count < need {
                match resp::reply_len(&buf[pos..]) {
                    Ok(Some(n)) => {
                        pos += n;
                        count += 1;
                    }
                    Ok(None) => break,
                    Err(e) => break 'conn e.to_string(),
                }
            }
            if count < need {
                break;
            }
            let replies = buf.split_to(pos).freeze();
            pos = 0;
            count = 0;
            let p = mux.state.lock().pending.pop_front();
            if let Some(Pending { tx: Some(tx), .. }) = p {
                // The client may have gone (or timed out): nothing to do.
                let _ = tx.send(replies);
            }
        }
    };
    shared.metrics.backend_error(&mux.addr);
    shared.health.mark_down(&mux.addr, shared.cfg.down_retry);
    mux.kill(&why);
}
