//! The data-path server: framed TCP, many requests in flight per connection.
//!
//! Writes and linearizable reads go through the raft loop's inbox; local
//! reads (`ReadLocal`, `ListChunks`) go straight to the chunk store. A bad
//! frame closes only its own connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pikafs_proto::msg::MAX_CHUNK_LIST;
use pikafs_proto::{ErrorCode, Frame, FrameCodec, Request, Response, CHUNK_SIZE, SECTOR_SIZE};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::chunk::ChunkStore;
use crate::copyset::{Command, ConnReply, ReadGrant, Responder};
use crate::error::ChunkError;
use crate::inbox::{Inbox, InboxMsg};
use crate::metrics::OpLabel;
use crate::snapshot::PeerClient;
use crate::sockout::SocketOut;
use crate::Shared;

/// A request not answered within this time gets `Timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses queued per connection.
pub const CONN_QUEUE: usize = 1024;
/// Spare read-buffer room kept per connection.
const READ_RESERVE: usize = 64 << 10;

/// What request handlers need.
#[derive(Clone)]
pub struct ServerCtx {
    pub shared: Arc<Shared>,
    pub inbox: Inbox,
}

/// Accepts connections until `cancel`; each gets its own task.
///
/// # Cancel safety
/// Meant to be spawned; returns when `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    ctx: ServerCtx,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut conn_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((sock, peer)) => {
                conn_id += 1;
                let _ = sock.set_nodelay(true);
                let span = tracing::debug_span!("conn", conn = conn_id, %peer);
                tracker.spawn(
                    connection(sock, ctx.clone(), cancel.clone(), tracker.clone()).instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    sock: TcpStream,
    ctx: ServerCtx,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    // One socket shared by the reader below, the writer task and the raft
    // loop, which writes write answers straight into it (see `sockout`).
    let sock = Arc::new(sock);
    let (out, mut rx) = SocketOut::new(CONN_QUEUE);
    out.attach(sock.clone(), &rx);
    let done = CancellationToken::new();
    let writer = {
        let (out, sock, done) = (out.clone(), sock.clone(), done.clone());
        tracker.spawn(async move {
            let _ = out.write_queued(&sock, &mut rx, &done).await;
            out.detach();
        })
    };
    let mut buf = BytesMut::with_capacity(READ_RESERVE);
    loop {
        let frame = match FrameCodec.decode(&mut buf) {
            Ok(Some(f)) => f,
            Ok(None) => {
                let ready = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = sock.readable() => r,
                };
                if ready.is_err() {
                    break;
                }
                // Room for a whole 4 KiB write frame and more: with no spare
                // capacity `try_read_buf` would read 64 bytes at a time.
                if buf.capacity() - buf.len() < READ_RESERVE / 2 {
                    buf.reserve(READ_RESERVE);
                }
                match sock.try_read_buf(&mut buf) {
                    Ok(0) => {
                        tracing::debug!("client hung up");
                        break;
                    }
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "connection read failed");
                        break;
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::info!(error = %e, "bad frame; closing connection");
                send_frame(
                    &out,
                    Response::error(ErrorCode::BadRequest, 0, e.to_string()).to_frame(0),
                );
                break;
            }
        };
        let id = frame.id;
        let req = match Request::from_frame(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(error = %e, "undecodable request; closing connection");
                send_frame(
                    &out,
                    Response::error(ErrorCode::BadRequest, 0, e.to_string()).to_frame(0),
                );
                break;
            }
        };
        let req = match req {
            Request::RaftBatch { from, msgs } => {
                raft_batch(&ctx, from, msgs);
                continue;
            }
            Request::Write {
                copyset,
                volume,
                epoch,
                chunk,
                offset,
                data,
            } if range_ok(offset, data.len()) && !data.is_empty() => {
                // The common case goes to the loop without a task: the loop
                // answers into the socket itself.
                propose_direct(
                    &ctx,
                    &out,
                    id,
                    copyset,
                    Command::Write {
                        volume,
                        epoch,
                        chunk,
                        offset,
                        data,
                    },
                );
                continue;
            }
            Request::WriteV {
                copyset,
                volume,
                epoch,
                chunk,
                extents,
            } if extents
                .iter()
                .all(|(off, d)| range_ok(*off, d.len()) && !d.is_empty()) =>
            {
                propose_direct(
                    &ctx,
                    &out,
                    id,
                    copyset,
                    Command::WriteV {
                        volume,
                        epoch,
                        chunk,
                        extents,
                    },
                );
                continue;
            }
            other => other,
        };
        let ctx = ctx.clone();
        let out = out.clone();
        tracker.spawn(async move {
            let op = op_name(&req);
            let start = Instant::now();
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, handle(&ctx, req)).await {
                Ok(r) => r,
                Err(_) => Response::error(ErrorCode::Timeout, 0, "request timed out"),
            };
            let label = OpLabel { op };
            ctx.shared
                .metrics
                .requests_total
                .get_or_create(&label)
                .inc();
            ctx.shared
                .metrics
                .request_seconds
                .get_or_create(&label)
                .observe(start.elapsed().as_secs_f64());
            send_frame(&out, resp.to_frame(id));
        });
    }
    done.cancel();
    let _ = writer.await;
}

/// Encodes and sends one frame on a connection's output.
fn send_frame(out: &SocketOut, f: Frame) {
    let mut b = BytesMut::new();
    match FrameCodec.encode(f, &mut b) {
        // Dropped only when the client stopped reading (queue full) or left.
        Ok(()) => {
            let _ = out.send(b.freeze());
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode response"),
    }
}

/// Proposes a client write whose answer the raft loop writes into `out`.
fn propose_direct(ctx: &ServerCtx, out: &Arc<SocketOut>, id: u64, copyset: u64, cmd: Command) {
    let label = OpLabel { op: "write" };
    let m = &ctx.shared.metrics;
    let reply = ConnReply {
        id,
        out: out.clone(),
        start: Instant::now(),
        requests_total: m.requests_total.get_or_create(&label).clone(),
        request_seconds: m.request_seconds.get_or_create(&label).clone(),
        answered: false,
    };
    if let Err(InboxMsg::Propose {
        resp: Some(resp), ..
    }) = ctx.inbox.try_send(InboxMsg::Propose {
        copyset,
        cmd,
        resp: Some(Responder::Conn(reply)),
    }) {
        let _ = resp.send(busy());
    }
}

fn op_name(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Write { .. } | Request::WriteV { .. } => "write",
        Request::Read { .. } => "read",
        Request::Fence { .. } => "fence",
        Request::RaftBatch { .. } => "raft_batch",
        Request::ReadLocal { .. } => "read_local",
        Request::ListChunks { .. } => "list_chunks",
    }
}

fn raft_batch(ctx: &ServerCtx, from: u64, msgs: Vec<(u64, bytes::Bytes)>) {
    let mut decoded = Vec::with_capacity(msgs.len());
    for (cs, b) in msgs {
        match Message::parse_from_bytes(&b) {
            Ok(m) => decoded.push((cs, m)),
            Err(e) => {
                tracing::info!(from, copyset = cs, error = %e, "undecodable raft message dropped")
            }
        }
    }
    if ctx
        .inbox
        .try_send(InboxMsg::Raft {
            from,
            msgs: decoded,
        })
        .is_err()
    {
        // Raft retransmits; a full inbox must not stall the connection.
        ctx.shared.metrics.raft_messages_dropped_total.inc();
    }
}

fn busy() -> Response {
    Response::error(ErrorCode::Busy, 0, "raft loop inbox full")
}

fn range_ok(offset: u32, len: usize) -> bool {
    offset as u64 + len as u64 <= CHUNK_SIZE
}

async fn propose(ctx: &ServerCtx, copyset: u64, cmd: Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if ctx
        .inbox
        .try_send(InboxMsg::Propose {
            copyset,
            cmd,
            resp: Some(tx.into()),
        })
        .is_err()
    {
        return busy();
    }
    rx.await
        .unwrap_or_else(|_| Response::error(ErrorCode::ShuttingDown, 0, "server stopping"))
}

async fn read_store(
    store: Arc<ChunkStore>,
    volume: u64,
    chunk: u64,
    offset: u32,
    len: u32,
) -> Response {
    read_or_corrupt_sector(store, volume, chunk, offset, len)
        .await
        .unwrap_or_else(|(_, resp)| resp)
}

/// Like [`read_store`], but a CRC failure comes back as `Err((sector,
/// response))` so the caller may repair that sector.
async fn read_or_corrupt_sector(
    store: Arc<ChunkStore>,
    volume: u64,
    chunk: u64,
    offset: u32,
    len: u32,
) -> Result<Response, (usize, Response)> {
    let r =
        tokio::task::spawn_blocking(move || store.read(volume, chunk, offset as u64, len as usize))
            .await;
    Ok(match r {
        Ok(Ok(d)) => Response::Data(d),
        Ok(Err(e @ ChunkError::Corrupt { sector, .. })) => {
            return Err((
                sector,
                Response::error(ErrorCode::Corrupt, 0, e.to_string()),
            ));
        }
        Ok(Err(e @ ChunkError::OutOfRange { .. })) => {
            Response::error(ErrorCode::OutOfRange, 0, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "chunk read failed");
            Response::error(ErrorCode::Io, 0, e.to_string())
        }
        Err(e) => Response::error(ErrorCode::Internal, 0, e.to_string()),
    })
}

/// Sectors one read may repair before giving up with `Corrupt`.
const MAX_REPAIRS_PER_READ: usize = 16;

/// A leader read that repairs corrupt sectors from the other voters: a
/// copy is accepted only if it matches the CRC the leader expects for the
/// sector now, so a stale replica cannot feed it old bytes.
async fn read_repairing(
    ctx: &ServerCtx,
    copyset: u64,
    grant: ReadGrant,
    volume: u64,
    chunk: u64,
    offset: u32,
    len: u32,
) -> Response {
    let mut repaired = 0;
    loop {
        let store = grant.store.clone();
        let (sector, resp) = match read_or_corrupt_sector(store, volume, chunk, offset, len).await {
            Ok(resp) => return resp,
            Err(bad) => bad,
        };
        if repaired >= MAX_REPAIRS_PER_READ
            || !repair_from_peers(ctx, copyset, &grant, volume, chunk, sector).await
        {
            return resp;
        }
        repaired += 1;
    }
}

async fn repair_from_peers(
    ctx: &ServerCtx,
    copyset: u64,
    grant: &ReadGrant,
    volume: u64,
    chunk: u64,
    sector: usize,
) -> bool {
    for &peer in &grant.peers {
        let Some(addr) = ctx.shared.peer_addr(peer) else {
            continue;
        };
        let req = Request::ReadLocal {
            copyset,
            volume,
            chunk,
            offset: (sector * SECTOR_SIZE) as u32,
            len: SECTOR_SIZE as u32,
        };
        let data = match PeerClient::connect(&addr).await {
            Ok(mut c) => match c.call(req).await {
                Ok(Response::Data(d)) => d,
                _ => continue,
            },
            Err(_) => continue,
        };
        let store = grant.store.clone();
        let r =
            tokio::task::spawn_blocking(move || store.repair_sector(volume, chunk, sector, &data))
                .await;
        match r {
            Ok(Ok(true)) => {
                ctx.shared.metrics.crc_repairs_total.inc();
                return true;
            }
            Ok(Err(e)) => {
                tracing::error!(copyset, volume, chunk, sector, error = %e, "writing a repaired sector failed");
                return false;
            }
            _ => {}
        }
    }
    false
}

async fn handle(ctx: &ServerCtx, req: Request) -> Response {
    match req {
        Request::Ping => Response::Ok,
        Request::Write {
            copyset,
            volume,
            epoch,
            chunk,
            offset,
            data,
        } => {
            if !range_ok(offset, data.len()) {
                return Response::error(ErrorCode::OutOfRange, 0, "write outside the chunk");
            }
            if data.is_empty() {
                return match ctx.shared.store(copyset) {
                    Some(_) => Response::Ok,
                    None => no_such(copyset),
                };
            }
            propose(
                ctx,
                copyset,
                Command::Write {
                    volume,
                    epoch,
                    chunk,
                    offset,
                    data,
                },
            )
            .await
        }
        Request::WriteV {
            copyset,
            volume,
            epoch,
            chunk,
            mut extents,
        } => {
            if !extents.iter().all(|(off, d)| range_ok(*off, d.len())) {
                return Response::error(ErrorCode::OutOfRange, 0, "write outside the chunk");
            }
            extents.retain(|(_, d)| !d.is_empty());
            if extents.is_empty() {
                return match ctx.shared.store(copyset) {
                    Some(_) => Response::Ok,
                    None => no_such(copyset),
                };
            }
            let cmd = Command::WriteV {
                volume,
                epoch,
                chunk,
                extents,
            };
            propose(ctx, copyset, cmd).await
        }
        Request::Fence {
            copyset,
            volume,
            epoch,
        } => propose(ctx, copyset, Command::Fence { volume, epoch }).await,
        Request::Read {
            copyset,
            volume,
            chunk,
            offset,
            len,
        } => {
            if !range_ok(offset, len as usize) {
                return Response::error(ErrorCode::OutOfRange, 0, "read outside the chunk");
            }
            let (tx, rx) = oneshot::channel();
            if ctx
                .inbox
                .try_send(InboxMsg::Read { copyset, resp: tx })
                .is_err()
            {
                return busy();
            }
            match rx.await {
                Ok(Ok(grant)) => {
                    read_repairing(ctx, copyset, grant, volume, chunk, offset, len).await
                }
                Ok(Err(resp)) => resp,
                Err(_) => Response::error(ErrorCode::ShuttingDown, 0, "server stopping"),
            }
        }
        Request::ReadLocal {
            copyset,
            volume,
            chunk,
            offset,
            len,
        } => {
            if !range_ok(offset, len as usize) {
                return Response::error(ErrorCode::OutOfRange, 0, "read outside the chunk");
            }
            match ctx.shared.store(copyset) {
                Some(store) => read_store(store, volume, chunk, offset, len).await,
                None => no_such(copyset),
            }
        }
        Request::ListChunks { copyset } => match ctx.shared.store(copyset) {
            Some(store) => {
                let mut list = store.list();
                list.truncate(MAX_CHUNK_LIST);
                Response::Chunks(list)
            }
            None => no_such(copyset),
        },
        Request::RaftBatch { .. } => {
            Response::error(ErrorCode::BadRequest, 0, "raft batch is one-way")
        }
    }
}

fn no_such(copyset: u64) -> Response {
    Response::error(
        ErrorCode::NoSuchCopyset,
        0,
        format!("no replica of copyset {copyset}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::inbox;
    use crate::metrics::Metrics;
    use crate::snapshot::{PeerClient, PeerError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> (
        String,
        Inbox,
        crate::inbox::InboxRx,
        tempfile::TempDir,
        CancellationToken,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::unregistered();
        let shared = Arc::new(Shared::new(1, dir.path().to_path_buf(), 0, metrics.clone()));
        let store = ChunkStore::open(&dir.path().join("cs5"), metrics.clone()).unwrap();
        store.write(2, 0, 10, b"local", true).unwrap();
        shared.stores.write().unwrap().insert(5, Arc::new(store));
        let (inbox, rx) = inbox(metrics.inbox_depth.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cancel = CancellationToken::new();
        let ctx = ServerCtx {
            shared,
            inbox: inbox.clone(),
        };
        tokio::spawn(serve(listener, ctx, cancel.clone(), TaskTracker::new()));
        (addr, inbox, rx, dir, cancel)
    }

    /// Takes the next proposal off the inbox (as the raft loop would),
    /// waiting up to 10 s.
    fn next_proposal(rx: &crate::inbox::InboxRx) -> Option<crate::copyset::Responder> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(InboxMsg::Propose { resp, .. }) = rx.recv_timeout(Duration::from_millis(50))
            {
                return resp;
            }
        }
        None
    }

    /// Write answers come from the loop's thread straight into the socket;
    /// an answer dropped unanswered still reaches the client.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_answers_go_from_the_loop_into_the_socket() {
        let (addr, _inbox, rx, _dir, cancel) = start().await;
        let mut c = PeerClient::connect(&addr).await.unwrap();
        let write = |offset| Request::Write {
            copyset: 5,
            volume: 2,
            epoch: 1,
            chunk: 0,
            offset,
            data: bytes::Bytes::from_static(b"abcd"),
        };
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let loop_thread = {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let rx = rx.lock().unwrap();
                let first = next_proposal(&rx).expect("first write reaches the loop");
                assert!(matches!(first, crate::copyset::Responder::Conn(_)));
                first.send(Response::Ok).unwrap();
                // Dropped unanswered, as when a group goes away.
                drop(next_proposal(&rx).expect("second write reaches the loop"));
            })
        };
        let bound = Duration::from_secs(10);
        let r = tokio::time::timeout(bound, c.call(write(0))).await;
        assert_eq!(r.expect("answered in time").unwrap(), Response::Ok);
        let r = tokio::time::timeout(bound, c.call(write(8)))
            .await
            .expect("answered in time");
        assert!(
            matches!(
                r,
                Err(PeerError::Remote {
                    code: ErrorCode::ShuttingDown,
                    ..
                })
            ),
            "{r:?}"
        );
        loop_thread.join().unwrap();
        // The connection still works for other requests.
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Ok);
        cancel.cancel();
    }

    #[tokio::test]
    async fn local_requests_busy_and_bad_frames() {
        let (addr, inbox, _rx, _dir, cancel) = start().await;
        let mut c = PeerClient::connect(&addr).await.unwrap();
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Ok);
        let r = c
            .call(Request::ReadLocal {
                copyset: 5,
                volume: 2,
                chunk: 0,
                offset: 10,
                len: 5,
            })
            .await
            .unwrap();
        assert_eq!(r, Response::Data(bytes::Bytes::from_static(b"local")));
        assert_eq!(
            c.call(Request::ListChunks { copyset: 5 }).await.unwrap(),
            Response::Chunks(vec![(2, 0)])
        );
        let r = c.call(Request::ListChunks { copyset: 6 }).await;
        assert!(
            matches!(
                r,
                Err(PeerError::Remote {
                    code: ErrorCode::NoSuchCopyset,
                    ..
                })
            ),
            "{r:?}"
        );
        let r = c
            .call(Request::Read {
                copyset: 5,
                volume: 2,
                chunk: 0,
                offset: (CHUNK_SIZE - 1) as u32,
                len: 2,
            })
            .await;
        assert!(
            matches!(
                r,
                Err(PeerError::Remote {
                    code: ErrorCode::OutOfRange,
                    ..
                })
            ),
            "{r:?}"
        );

        // Nobody drains the inbox: once full, writes get Busy.
        while inbox.try_send(InboxMsg::Shutdown).is_ok() {}
        let r = c
            .call(Request::Write {
                copyset: 5,
                volume: 2,
                epoch: 1,
                chunk: 0,
                offset: 0,
                data: bytes::Bytes::from_static(b"x"),
            })
            .await;
        assert!(
            matches!(
                r,
                Err(PeerError::Remote {
                    code: ErrorCode::Busy,
                    ..
                })
            ),
            "{r:?}"
        );

        // A lying length prefix: an error frame with id 0, then that
        // connection (only) is closed.
        let mut raw = TcpStream::connect(&addr).await.unwrap();
        raw.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        raw.write_all(&[1u8; 9]).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let mut bm = bytes::BytesMut::from(&buf[..]);
        let f = tokio_util::codec::Decoder::decode(&mut FrameCodec, &mut bm)
            .unwrap()
            .unwrap();
        assert_eq!(f.id, 0);
        assert!(matches!(
            Response::from_frame(f).unwrap(),
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
        assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Ok);
        cancel.cancel();
    }
}
