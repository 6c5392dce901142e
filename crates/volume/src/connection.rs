//! One pipelined TCP connection to a chunkserver.
//!
//! All requests to an address share one connection: a writer task drains a
//! bounded queue of frames into the socket (flushing once per burst, so
//! concurrent requests share syscalls), and a reader task matches response
//! frames to waiting requests by request id. When either side fails, every
//! request in flight fails with [`ConnError::Closed`] (retryable) and the
//! connection is marked dead; the pool dials a new one on next use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pikafs_proto::{Frame, FrameCodec, Request, Response};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::debug;

/// Frames queued for the writer task before senders wait.
const SEND_QUEUE_DEPTH: usize = 1024;

/// Why a request got no response on this connection. All are retryable on
/// another replica or a new connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    #[error("connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("connection to {addr} closed: {message}")]
    Closed { addr: String, message: String },
    #[error("no response from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

type Waiter = oneshot::Sender<Result<Response, ConnError>>;

/// The write half, shared by the writer task and callers that find it free.
type Sink = Arc<tokio::sync::Mutex<FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>>>;

/// What callers queue for the writer task: a burst of several frames is one
/// queue entry, so it cannot be split across socket writes by the writer
/// running between two senders' pushes.
#[derive(Debug)]
enum Outgoing {
    One(Frame),
    Burst(Vec<Frame>),
}

/// Requests waiting for a response; `None` once the connection is dead, so a
/// late request cannot register after the failure sweep and wait forever.
type Pending = Arc<Mutex<Option<HashMap<u64, Waiter>>>>;

/// A live connection; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Connection {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
    sink: Sink,
    pending: Pending,
    next_id: AtomicU64,
    dead: Arc<AtomicBool>,
}

impl Connection {
    /// Dials `addr` within `timeout`.
    ///
    /// # Errors
    /// [`ConnError::Connect`] when the dial fails or times out.
    pub async fn dial(addr: &str, timeout: Duration) -> Result<Arc<Connection>, ConnError> {
        let connect_err = |message: String| ConnError::Connect {
            addr: addr.to_string(),
            message,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("timed out after {timeout:?}")))?
            .map_err(|e| connect_err(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| connect_err(format!("set TCP_NODELAY: {e}")))?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(SEND_QUEUE_DEPTH);
        let sink: Sink = Arc::new(tokio::sync::Mutex::new(FramedWrite::new(wr, FrameCodec)));
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(write_loop(
            addr.to_string(),
            sink.clone(),
            rx,
            pending.clone(),
            dead.clone(),
        ));
        tokio::spawn(read_loop(
            addr.to_string(),
            FramedRead::new(rd, FrameCodec),
            pending.clone(),
            dead.clone(),
        ));
        debug!(addr, "connected to chunkserver");
        Ok(Arc::new(Connection {
            addr: addr.to_string(),
            tx,
            sink,
            pending,
            next_id: AtomicU64::new(1),
            dead,
        }))
    }

    /// True once the connection failed; the pool replaces it.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Sends `req` and waits up to `timeout` for its response.
    ///
    /// # Errors
    /// [`ConnError`] when the connection fails or no answer comes in time.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that dropping the future leaves the
    /// connection usable; the request may still be executed by the server.
    pub async fn call(&self, req: &Request, timeout: Duration) -> Result<Response, ConnError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut guard = self.pending.lock().expect("pending map lock poisoned");
            match guard.as_mut() {
                Some(map) => {
                    map.insert(id, done_tx);
                }
                None => return Err(self.closed("connection already failed")),
            }
        }
        // Removes the waiter if this future is dropped or times out, so the
        // map does not grow with abandoned requests.
        let _forget = Forget {
            pending: &self.pending,
            id,
        };
        let frame = req.to_frame(id);
        let fut = async {
            self.send(Outgoing::One(frame)).await?;
            done_rx.await.map_err(|_| self.closed("response dropped"))?
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }

    /// Sends every request of `reqs` in one burst and waits up to `timeout`
    /// (in total) for their responses, returned in the order of `reqs`.
    ///
    /// Why: a chunkserver that reads the burst in one go proposes all of it
    /// in one raft round (one WAL fsync per replica); requests sent one by
    /// one can straddle two rounds. The fs commits a journal header and its
    /// ring copy, two writes to one chunk, this way.
    ///
    /// # Cancel safety
    /// As [`Connection::call`].
    pub async fn call_many(
        &self,
        reqs: &[Request],
        timeout: Duration,
    ) -> Vec<Result<Response, ConnError>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::with_capacity(reqs.len());
        let mut waits = Vec::with_capacity(reqs.len());
        let mut forgets = Vec::with_capacity(reqs.len());
        {
            let mut guard = self.pending.lock().expect("pending map lock poisoned");
            let Some(map) = guard.as_mut() else {
                return reqs
                    .iter()
                    .map(|_| Err(self.closed("connection already failed")))
                    .collect();
            };
            for req in reqs {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let (done_tx, done_rx) = oneshot::channel();
                map.insert(id, done_tx);
                frames.push(req.to_frame(id));
                waits.push(done_rx);
                forgets.push(Forget {
                    pending: &self.pending,
                    id,
                });
            }
        }
        let timed_out = || ConnError::Timeout {
            addr: self.addr.clone(),
            timeout,
        };
        match tokio::time::timeout_at(deadline, self.send(Outgoing::Burst(frames))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return waits.iter().map(|_| Err(e.clone())).collect(),
            Err(_) => return waits.iter().map(|_| Err(timed_out())).collect(),
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(self.closed("response dropped")),
                Err(_) => Err(timed_out()),
            });
        }
        drop(forgets);
        out
    }

    /// Writes `out` into the socket right here when no one else is writing
    /// (no hand-off to the writer task: one thread wake-up less per request,
    /// which is ~10-25 µs on a busy VM), else queues it for the writer task,
    /// which batches everything queued meanwhile into one flush.
    async fn send(&self, out: Outgoing) -> Result<(), ConnError> {
        if let Ok(mut sink) = self.sink.try_lock() {
            let res = match feed(&mut sink, out).await {
                Ok(()) => sink.flush().await,
                Err(e) => Err(e),
            };
            return res.map_err(|e| {
                let message = format!("write: {e}");
                fail_all(&self.addr, &self.pending, &self.dead, &message);
                self.closed(&message)
            });
        }
        self.tx
            .send(out)
            .await
            .map_err(|_| self.closed("writer stopped"))
    }

    fn closed(&self, message: &str) -> ConnError {
        ConnError::Closed {
            addr: self.addr.clone(),
            message: message.to_string(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer task ends when `tx` drops, which closes the write half;
        // the server then closes and the reader ends too.
        self.dead.store(true, Ordering::Release);
    }
}

struct Forget<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.pending.lock() {
            if let Some(map) = g.as_mut() {
                map.remove(&self.id);
            }
        }
    }
}

/// Marks the connection dead and fails every waiting request.
fn fail_all(addr: &str, pending: &Pending, dead: &AtomicBool, message: &str) {
    dead.store(true, Ordering::Release);
    let waiters = pending
        .lock()
        .map(|mut g| g.take())
        .unwrap_or_default()
        .unwrap_or_default();
    if !waiters.is_empty() {
        debug!(
            addr,
            in_flight = waiters.len(),
            message,
            "failing in-flight requests"
        );
    }
    for (_, w) in waiters {
        let _ = w.send(Err(ConnError::Closed {
            addr: addr.to_string(),
            message: message.to_string(),
        }));
    }
}

async fn feed(
    sink: &mut FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>,
    out: Outgoing,
) -> Result<(), pikafs_proto::ProtoError> {
    match out {
        Outgoing::One(f) => sink.feed(f).await,
        Outgoing::Burst(fs) => {
            for f in fs {
                sink.feed(f).await?;
            }
            Ok(())
        }
    }
}

async fn write_loop(
    addr: String,
    sink: Sink,
    mut rx: mpsc::Receiver<Outgoing>,
    pending: Pending,
    dead: Arc<AtomicBool>,
) {
    while let Some(out) = rx.recv().await {
        let mut sink = sink.lock().await;
        // Feed everything already queued, then flush once.
        let mut res = feed(&mut sink, out).await;
        while res.is_ok() {
            match rx.try_recv() {
                Ok(o) => res = feed(&mut sink, o).await,
                Err(_) => break,
            }
        }
        if let Err(e) = res {
            fail_all(&addr, &pending, &dead, &format!("write: {e}"));
            return;
        }
        if let Err(e) = sink.flush().await {
            fail_all(&addr, &pending, &dead, &format!("write: {e}"));
            return;
        }
    }
}

async fn read_loop(
    addr: String,
    mut stream: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    pending: Pending,
    dead: Arc<AtomicBool>,
) {
    let message = loop {
        match stream.next().await {
            Some(Ok(frame)) => {
                let id = frame.id;
                let resp = match Response::from_frame(frame) {
                    Ok(r) => r,
                    // A frame we cannot decode means we no longer agree on
                    // the stream; drop the connection.
                    Err(e) => break format!("undecodable response: {e}"),
                };
                let waiter = pending
                    .lock()
                    .ok()
                    .and_then(|mut g| g.as_mut().and_then(|m| m.remove(&id)));
                match waiter {
                    Some(w) => {
                        let _ = w.send(Ok(resp));
                    }
                    None => debug!(addr, id, "response for an abandoned request"),
                }
            }
            Some(Err(e)) => break format!("read: {e}"),
            None => break "closed by peer".to_string(),
        }
    };
    fail_all(&addr, &pending, &dead, &message);
}

/// After a failed dial, callers within this window get the same error
/// instead of dialling again, so a burst of requests to a dead or
/// black-holed server does not queue up one dial timeout each.
const DIAL_FAILURE_MEMORY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<Arc<Connection>>,
    last_failure: Option<(std::time::Instant, ConnError)>,
}

/// The connection to one address; the async lock serialises dialling.
type Slot = Arc<tokio::sync::Mutex<SlotState>>;

/// Connections by address, dialled lazily and replaced when dead.
#[derive(Debug, Default)]
pub struct Pool {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Pool {
    /// Returns a live connection to `addr`, dialling if needed. Concurrent
    /// callers for the same address wait for one dial.
    ///
    /// # Errors
    /// [`ConnError::Connect`], also when a dial failed moments ago.
    ///
    /// # Cancel safety
    /// Cancel safe: a dial cut short leaves the slot empty.
    pub async fn get(&self, addr: &str, timeout: Duration) -> Result<Arc<Connection>, ConnError> {
        let slot = {
            let mut slots = self.slots.lock().expect("pool lock poisoned");
            slots.entry(addr.to_string()).or_default().clone()
        };
        let mut slot = tokio::time::timeout(timeout, slot.lock())
            .await
            .map_err(|_| ConnError::Connect {
                addr: addr.to_string(),
                message: format!("another dial still pending after {timeout:?}"),
            })?;
        if let Some(c) = slot.conn.as_ref() {
            if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        if let Some((at, err)) = &slot.last_failure {
            if at.elapsed() < DIAL_FAILURE_MEMORY {
                return Err(err.clone());
            }
        }
        match Connection::dial(addr, timeout).await {
            Ok(c) => {
                slot.conn = Some(c.clone());
                slot.last_failure = None;
                Ok(c)
            }
            Err(e) => {
                slot.conn = None;
                slot.last_failure = Some((std::time::Instant::now(), e.clone()));
                Err(e)
            }
        }
    }
}
