//! The raft loop's inbox: one bounded channel every other task sends to.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use pikafs_proto::{ctrlpb::CopysetState, CopysetId, Epoch, ServerId, VolumeId};
use prometheus_client::metrics::gauge::Gauge;
use raft::eraftpb::Message;
use tokio::sync::oneshot;

use crate::copyset::{Command, ReadResponder, Responder};

/// Capacity of the inbox; when full, clients get `Busy`.
pub const INBOX_CAPACITY: usize = 8192;

/// Commands from ctrl, applied by the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// Bootstrap a replica with these initial voters (idempotent).
    Create {
        copyset: CopysetId,
        members: Vec<ServerId>,
    },
    /// Create an empty replica that waits for a snapshot (idempotent).
    Join { copyset: CopysetId },
    /// Drop the replica and its data.
    Destroy { copyset: CopysetId },
    /// Leader only: move voters toward `members`, one change at a time.
    SetMembers {
        copyset: CopysetId,
        members: Vec<ServerId>,
    },
    /// Newest epochs known to ctrl; leaders fence older ones.
    Epochs(Vec<(VolumeId, Epoch)>),
}

/// A message for the raft loop.
pub enum InboxMsg {
    /// Propose a command; `resp` (if any) gets the outcome once applied.
    Propose {
        copyset: CopysetId,
        cmd: Command,
        resp: Option<Responder>,
    },
    /// Linearizable read: answered once applied ≥ the read index.
    Read {
        copyset: CopysetId,
        resp: ReadResponder,
    },
    /// Raft messages received from a peer server.
    Raft {
        from: ServerId,
        msgs: Vec<(CopysetId, Message)>,
    },
    Admin(Admin),
    /// The data of a parked snapshot is local now.
    SnapshotFetched {
        copyset: CopysetId,
    },
    /// A peer could not be reached.
    Unreachable {
        to: ServerId,
    },
    /// Status of every replica, for the heartbeat.
    Status(oneshot::Sender<Vec<CopysetState>>),
    /// Finish the current iteration and stop.
    Shutdown,
}

/// Sending side of the inbox, cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    tx: SyncSender<InboxMsg>,
    depth: Gauge,
}

/// Receiving side, owned by the raft loop.
pub struct InboxRx {
    rx: Receiver<InboxMsg>,
    depth: Gauge,
    spin: std::time::Duration,
}

/// Creates the inbox; `depth` tracks the number of queued messages.
pub fn inbox(depth: Gauge) -> (Inbox, InboxRx) {
    let (tx, rx) = std::sync::mpsc::sync_channel(INBOX_CAPACITY);
    (
        Inbox {
            tx,
            depth: depth.clone(),
        },
        InboxRx {
            rx,
            depth,
            spin: std::time::Duration::ZERO,
        },
    )
}

impl Inbox {
    /// Enqueues without blocking; gives the message back when full or
    /// when the loop has stopped.
    ///
    /// # Errors
    /// The message, unsent.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, m: InboxMsg) -> Result<(), InboxMsg> {
        match self.tx.try_send(m) {
            Ok(()) => {
                self.depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// Enqueues, waiting for room; false if the loop has stopped. Blocks the
    /// thread: call from blocking contexts only.
    pub fn send_blocking(&self, m: InboxMsg) -> bool {
        self.depth.inc();
        if self.tx.send(m).is_err() {
            self.depth.dec();
            return false;
        }
        true
    }
}

impl InboxRx {
    /// Polls for up to `spin` before [`InboxRx::recv_timeout`] sleeps (see
    /// [`crate::Config::idle_spin`]).
    pub fn set_spin(&mut self, spin: std::time::Duration) {
        self.spin = spin;
    }

    /// Waits up to `timeout` for a message, polling for the first
    /// `spin` of it: a QD1 write crosses the loop three times (proposal,
    /// followers' answers, and on a follower the append), each about
    /// 100-200 µs after the loop went idle, and a parked thread's wake-up
    /// costs ~20 µs here. `yield_now` leaves the CPU to anything runnable.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<InboxMsg> {
        let spin = self.spin.min(timeout);
        if !spin.is_zero() {
            let start = std::time::Instant::now();
            loop {
                if let Some(m) = self.try_recv() {
                    return Some(m);
                }
                if start.elapsed() >= spin {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let m = self.rx.recv_timeout(timeout).ok()?;
        self.depth.dec();
        Some(m)
    }

    /// Takes a message if one is queued.
    pub fn try_recv(&self) -> Option<InboxMsg> {
        let m = self.rx.try_recv().ok()?;
        self.depth.dec();
        Some(m)
    }
}
