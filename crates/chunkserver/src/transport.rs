//! Outgoing raft traffic: one connection per peer server.
//!
//! The raft loop writes a batch straight into the peer's socket when the
//! connection is idle (nothing queued, no write in progress): a
//! non-blocking `try_write` from the loop thread, so a replicated write
//! costs no wake-up of the data-path runtime on the send side. Whatever
//! cannot be written at once (socket buffer full, partial write, not
//! connected) goes to that peer's connection task through a bounded
//! channel; the task writes it, and the loop writes directly again only
//! once the task has emptied the channel, so bytes never interleave. When
//! a channel is full the batch is dropped: raft retransmits, and blocking
//! the loop would stall every copyset.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pikafs_proto::msg::MAX_RAFT_BATCH;
use pikafs_proto::{CopysetId, Frame, FrameCodec, Request, ServerId};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use crate::inbox::{Inbox, InboxMsg};
use crate::sockout::SocketOut;
use crate::Shared;

/// Frames queued per peer before batches are dropped.
pub const PEER_QUEUE: usize = 256;
/// Soft cap on one `RaftBatch` frame; larger batches are split.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-peer senders, owned by the raft loop.
pub struct Transport {
    me: ServerId,
    peers: HashMap<ServerId, Arc<SocketOut>>,
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
    inbox: Inbox,
    cancel: CancellationToken,
}

/// Splits messages into frames under the size and count caps.
pub fn batch_frames(from: ServerId, msgs: Vec<(CopysetId, Bytes)>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for (cs, m) in msgs {
        if !cur.is_empty() && (size + m.len() + 12 > MAX_BATCH_BYTES || cur.len() >= MAX_RAFT_BATCH)
        {
            frames.push(
                Request::RaftBatch {
                    from,
                    msgs: std::mem::take(&mut cur),
                }
                .to_frame(0),
            );
            size = 0;
        }
        size += m.len() + 12;
        cur.push((cs, m));
    }
    if !cur.is_empty() {
        frames.push(Request::RaftBatch { from, msgs: cur }.to_frame(0));
    }
    frames
}

impl Transport {
    /// Creates the transport; peer tasks are spawned on `rt` lazily.
    pub fn new(
        me: ServerId,
        rt: tokio::runtime::Handle,
        shared: Arc<Shared>,
        inbox: Inbox,
        cancel: CancellationToken,
    ) -> Transport {
        Transport {
            me,
            peers: HashMap::new(),
            rt,
            shared,
            inbox,
            cancel,
        }
    }

    /// Sends messages to `to`, directly if its connection is idle, else
    /// through its task. Returns false if (some of) them were dropped
    /// because the peer's queue is full or a frame could not be encoded.
    pub fn send(&mut self, to: ServerId, msgs: Vec<(CopysetId, Bytes)>) -> bool {
        let out = self.peers.entry(to).or_insert_with(|| {
            let (out, rx) = SocketOut::new(PEER_QUEUE);
            let shared = self.shared.clone();
            let inbox = self.inbox.clone();
            let cancel = self.cancel.clone();
            let o = out.clone();
            self.rt
                .spawn(async move { peer_task(to, rx, o, shared, inbox, cancel).await });
            out
        });
        let mut buf = BytesMut::new();
        let mut ok = true;
        for f in batch_frames(self.me, msgs) {
            if let Err(e) = FrameCodec.encode(f, &mut buf) {
                tracing::warn!(peer = to, error = %e, "cannot encode raft batch");
                ok = false;
            }
        }
        if buf.is_empty() {
            return ok;
        }
        if !out.send(buf.freeze()) {
            ok = false;
        }
        ok
    }
}

async fn peer_task(
    to: ServerId,
    mut rx: mpsc::Receiver<Bytes>,
    out: Arc<SocketOut>,
    shared: Arc<Shared>,
    inbox: Inbox,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let addr = shared.peer_addr(to);
        let conn = match addr {
            Some(addr) => tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)) => {
                    match r {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                        Err(_) => Err(format!("connect {addr}: timeout")),
                    }
                }
            },
            None => Err("no address known".to_string()),
        };
        match conn {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                tracing::debug!(peer = to, "raft connection up");
                backoff = Duration::from_millis(50);
                let stream = Arc::new(stream);
                out.attach(stream.clone(), &rx);
                let r = out.write_queued(&stream, &mut rx, &cancel).await;
                out.detach();
                if r.is_ok() {
                    // Cancelled (or the transport is gone): stop.
                    return;
                }
                // A frame may have been cut mid-way: what is queued must
                // not go to the next connection. Raft retransmits.
                while rx.try_recv().is_ok() {}
                tracing::debug!(peer = to, "raft connection lost");
                let _ = inbox.try_send(InboxMsg::Unreachable { to });
            }
            Err(e) => {
                tracing::debug!(peer = to, error = %e, "raft peer unreachable");
                let _ = inbox.try_send(InboxMsg::Unreachable { to });
                // What was queued is stale by the time we reconnect.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_size() {
        let big = Bytes::from(vec![0u8; 3 << 20]);
        let msgs = vec![
            (1, big.clone()),
            (2, big.clone()),
            (3, big.clone()),
            (4, Bytes::new()),
        ];
        let frames = batch_frames(9, msgs);
        assert_eq!(frames.len(), 2);
        let mut n = 0;
        for f in frames {
            assert!(f.body.len() <= MAX_BATCH_BYTES + 64);
            match Request::from_frame(f).unwrap() {
                Request::RaftBatch { from, msgs } => {
                    assert_eq!(from, 9);
                    n += msgs.len();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n, 4);
    }
}
