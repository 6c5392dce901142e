//! Snapshot install on a new or lagging replica, and the small
//! request/response client it uses.
//!
//! A raft snapshot carries no chunk data, only the leader's id and the epoch
//! map (see `raftlog`). The follower parks the Ready holding it and copies
//! every chunk from that leader with `ListChunks` + `ReadLocal`, then tells
//! the loop, which installs the snapshot and continues the Ready.
//!
//! Copying is done while the leader keeps applying writes, so the copy may
//! hold data *newer* than the snapshot index. That is safe: every entry after
//! the snapshot index is then applied on top, in log order, by idempotent
//! pwrites, so each byte ends at the value of the last write to it in the
//! log, exactly as on the leader. Data *older* than the snapshot index would
//! not be safe, which is why the source must be the server that cut the
//! snapshot (its applied index was ≥ the snapshot index when it did).

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pikafs_proto::{
    CopysetId, ErrorCode, FrameCodec, Request, Response, ServerId, CHUNK_SIZE, MAX_IO_LEN,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::chunk::ChunkStore;
use crate::inbox::{Inbox, InboxMsg};
use crate::Shared;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Present in a copyset directory while a snapshot copy may have written
/// chunk data whose CRCs are not yet durable (see `ChunkStore::recompute_crcs`).
pub const COPY_MARKER: &str = "SNAPSHOT_COPY_IN_PROGRESS";

/// Creates the copy marker durably.
///
/// # Errors
/// IO errors.
pub fn set_copy_marker(store: &ChunkStore) -> std::io::Result<()> {
    std::fs::File::create(store.dir().join(COPY_MARKER))?.sync_all()?;
    crate::chunk::fsync_dir(store.dir())
}

/// Removes the copy marker (after the snapshot is installed and
/// checkpointed).
pub fn clear_copy_marker(dir: &std::path::Path) {
    match std::fs::remove_file(dir.join(COPY_MARKER)) {
        Ok(()) => {
            let _ = crate::chunk::fsync_dir(dir);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove snapshot copy marker")
        }
    }
}

/// Errors of a peer call.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no address known for server {0}")]
    NoAddress(ServerId),
    #[error("io with {addr}: {detail}")]
    Io { addr: String, detail: String },
    #[error("peer answered {code}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected response {0}")]
    Unexpected(String),
}

/// One sequential request/response connection to a peer chunkserver.
pub struct PeerClient {
    addr: String,
    conn: Framed<TcpStream, FrameCodec>,
    next_id: u64,
}

impl PeerClient {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// Connect failure or timeout.
    ///
    /// # Cancel safety
    /// Safe: nothing is sent before it returns.
    pub async fn connect(addr: &str) -> Result<PeerClient, PeerError> {
        let io = |detail: String| PeerError::Io {
            addr: addr.to_string(),
            detail,
        };
        let s = tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io("connect timeout".into()))?
            .map_err(|e| io(e.to_string()))?;
        let _ = s.set_nodelay(true);
        Ok(PeerClient {
            addr: addr.to_string(),
            conn: Framed::new(s, FrameCodec),
            next_id: 1,
        })
    }

    /// Sends one request and waits for its response.
    ///
    /// # Errors
    /// IO errors, timeouts, error responses.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call leaves a response in flight; drop
    /// the client.
    pub async fn call(&mut self, req: Request) -> Result<Response, PeerError> {
        let id = self.next_id;
        self.next_id += 1;
        let addr = self.addr.clone();
        let io = move |detail: String| PeerError::Io {
            addr: addr.clone(),
            detail,
        };
        let fut = async {
            self.conn
                .send(req.to_frame(id))
                .await
                .map_err(|e| io(e.to_string()))?;
            loop {
                let f = self
                    .conn
                    .next()
                    .await
                    .ok_or_else(|| io("connection closed".into()))?
                    .map_err(|e| io(e.to_string()))?;
                if f.id != id {
                    continue;
                }
                return Response::from_frame(f).map_err(|e| io(e.to_string()));
            }
        };
        let resp = tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| PeerError::Io {
                addr: self.addr.clone(),
                detail: "timeout".into(),
            })??;
        if let Response::Error { code, message, .. } = resp {
            return Err(PeerError::Remote { code, message });
        }
        Ok(resp)
    }
}

/// Copies every chunk of `copyset` from server `source` into `store`, then
/// makes it durable.
///
/// # Errors
/// Any peer or local IO error; the caller retries.
///
/// # Cancel safety
/// Safe to drop: a partial copy is simply redone.
pub async fn copy_copyset(
    shared: &Shared,
    copyset: CopysetId,
    source: ServerId,
    store: &Arc<ChunkStore>,
) -> Result<u64, PeerError> {
    let addr = shared
        .peer_addr(source)
        .ok_or(PeerError::NoAddress(source))?;
    let mut client = PeerClient::connect(&addr).await?;
    let s = store.clone();
    tokio::task::spawn_blocking(move || set_copy_marker(&s))
        .await
        .map_err(|e| PeerError::Unexpected(e.to_string()))?
        .map_err(|e| PeerError::Io {
            addr: "local".into(),
            detail: e.to_string(),
        })?;
    let chunks = match client.call(Request::ListChunks { copyset }).await? {
        Response::Chunks(c) => c,
        other => return Err(PeerError::Unexpected(format!("{other:?}"))),
    };
    let mut copied = 0u64;
    for (volume, chunk) in chunks {
        let mut off = 0u64;
        while off < CHUNK_SIZE {
            let len = MAX_IO_LEN.min((CHUNK_SIZE - off) as usize);
            let data = match client
                .call(Request::ReadLocal {
                    copyset,
                    volume,
                    chunk,
                    offset: off as u32,
                    len: len as u32,
                })
                .await?
            {
                Response::Data(d) if d.len() == len => d,
                other => return Err(PeerError::Unexpected(format!("{other:?}"))),
            };
            let zeros = data.iter().all(|&b| b == 0);
            if !(zeros && store.is_unwritten(volume, chunk, off, len)) {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.write(volume, chunk, off, &data, false))
                    .await
                    .map_err(|e| PeerError::Unexpected(e.to_string()))?
                    .map_err(|e| PeerError::Io {
                        addr: "local".into(),
                        detail: e.to_string(),
                    })?;
                copied += len as u64;
            }
            off += len as u64;
        }
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.sync())
        .await
        .map_err(|e| PeerError::Unexpected(e.to_string()))?
        .map_err(|e| PeerError::Io {
            addr: "local".into(),
            detail: e.to_string(),
        })?;
    Ok(copied)
}

/// Runs [`copy_copyset`] until it succeeds (with backoff), then reports
/// `SnapshotFetched` to the loop.
pub async fn fetch_task(
    shared: Arc<Shared>,
    inbox: Inbox,
    copyset: CopysetId,
    source: ServerId,
    store: Arc<ChunkStore>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if shared.store(copyset).is_none() {
            return; // the replica was destroyed meanwhile
        }
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = copy_copyset(&shared, copyset, source, &store) => r,
        };
        match r {
            Ok(bytes) => {
                tracing::info!(copyset, source, bytes, "snapshot data copied");
                let mut msg = InboxMsg::SnapshotFetched { copyset };
                loop {
                    match inbox.try_send(msg) {
                        Ok(()) => return,
                        Err(m) => msg = m,
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(copyset, source, error = %e, "snapshot copy failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
