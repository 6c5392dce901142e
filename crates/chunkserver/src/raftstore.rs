//! The raft loop: one thread that owns every copyset's `RawNode` and state
//! machine, and group-commits their logs through the shared WAL.
//!
//! One iteration: drain the inbox (bounded), tick if due, then for every
//! group with a Ready: send its `messages()` at once (the leader may send
//! before it persists), buffer its entries and hard state into the WAL;
//! then ONE write + ONE fdatasync for all of them; then send every group's
//! `persisted_messages()` (the acknowledgements leaders wait for), then per
//! group apply committed entries, `advance()`, handle the `LightReady` and
//! answer proposers and readers. Outgoing messages
//! are batched per destination server.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pikafs_proto::ctrlpb::{CopysetState, Role};
use pikafs_proto::{CopysetId, ErrorCode, Response, ServerId};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, HardState, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{Checkpoint, CheckpointJob, Checkpointer, CopysetCheckpoint};
use crate::chunk::{ChunkStore, FREE_SPACE_RESERVE};
use crate::copyset::{encode_context, ApplyError, Command, Group, Responder};
use crate::error::{CheckpointError, ChunkError, WalError};
use crate::inbox::{Admin, Inbox, InboxMsg, InboxRx};
use crate::raftlog::{decode_snapshot_data, CopysetStorage};
use crate::snapshot::fetch_task;
use crate::transport::Transport;
use crate::wal::{ReplayedLog, Wal};
use crate::Shared;

/// Inbox messages handled per iteration before the Readies are processed.
pub const MAX_DRAIN: usize = 4096;
/// Entries kept in memory below the applied index (compacted every tick),
/// so a follower that is slightly behind catches up from the log.
pub const COMPACT_MARGIN: u64 = 1024;
/// ... and at most about this many bytes of entry data per copyset.
pub const COMPACT_MARGIN_BYTES: u64 = 8 << 20;
/// A leader keeps more for recently active followers that have not matched
/// it yet, up to this many entries ...
pub const LAGGING_FOLLOWER_MAX_ENTRIES: u64 = 50_000;
/// ... and this many bytes per copyset, so 1 MiB writes to a slow follower
/// cannot pin gigabytes of memory (it gets a snapshot instead).
pub const LAGGING_FOLLOWER_MAX_BYTES: u64 = 64 << 20;
/// Checkpoint at least this often.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// A bootstrapped copyset's log starts after this index, so a joining
/// replica (log at 0) can only be brought up by a snapshot.
pub const BOOTSTRAP_INDEX: u64 = 5;
/// How long the replica designated by CREATE keeps re-campaigning while no
/// leader is known (leaders spread evenly over servers).
pub const DESIGNATED_CAMPAIGN_WINDOW: Duration = Duration::from_secs(10);
/// Ticks between two such campaigns (below the 10-tick election timeout).
pub const RECAMPAIGN_TICKS: u64 = 4;
/// Term of the bootstrap point.
pub const BOOTSTRAP_TERM: u64 = 5;

/// A failure that stops the server; a restart replays the WAL.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    #[error("apply: {0}")]
    Apply(#[from] ApplyError),
    #[error("chunk store: {0}")]
    Chunk(#[from] ChunkError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("io on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the loop (taken from the server config).
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub tick: Duration,
    pub checkpoint_wal_bytes: u64,
}

/// The loop's state. Built by [`RaftStore::open`], consumed by
/// [`RaftStore::run`] on its own thread.
pub struct RaftStore {
    shared: Arc<Shared>,
    cfg: LoopConfig,
    wal: Wal,
    groups: BTreeMap<CopysetId, Group>,
    rx: InboxRx,
    inbox: Inbox,
    transport: Transport,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    logger: slog::Logger,
    next_proposal: u64,
    last_tick: Instant,
    last_checkpoint: Instant,
    last_gc: Instant,
    ticks: u64,
    need_checkpoint: bool,
    /// Copysets whose snapshot is installed; their copy marker goes once
    /// the next checkpoint is durable.
    copy_markers: Vec<PathBuf>,
    checkpointer: Checkpointer,
    inflight: Option<InFlight>,
    outbox: HashMap<ServerId, Vec<(CopysetId, Bytes)>>,
    snapshots_sent: Vec<(CopysetId, ServerId)>,
    /// Reused every iteration, so a QD1 write allocates no list of groups
    /// or of Readies.
    scratch_ids: Vec<CopysetId>,
    scratch_readies: Vec<(CopysetId, raft::Ready)>,
    stopping: bool,
}

/// A checkpoint being made durable by the checkpoint thread.
struct InFlight {
    applied: HashMap<CopysetId, u64>,
    below_seq: u64,
    markers: Vec<PathBuf>,
    started: Instant,
}

fn raft_config(me: ServerId, applied: u64) -> raft::Config {
    raft::Config {
        id: me,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::LeaseBased,
        // A new commit index rides on the next append (or heartbeat)
        // instead of an empty append of its own: that broadcast and the
        // followers' answers to it were a third of all raft messages per
        // QD1 write (2 sends on the leader, 1 send + a receive, an inbox
        // wake and a loop iteration on each follower). Followers apply one
        // write later; nothing waits for a follower's apply (writes are
        // answered by the leader, reads are served by the leader).
        skip_bcast_commit: true,
        ..Default::default()
    }
}

/// Merges two hard states that are each durable: term and commit only grow,
/// and within one term the vote is set at most once.
fn merge_hard_state(a: &HardState, b: &HardState) -> HardState {
    let mut out = if (b.term, b.vote != 0) > (a.term, a.vote != 0) {
        b.clone()
    } else {
        a.clone()
    };
    out.commit = a.commit.max(b.commit);
    out
}

fn copyset_dir(shared: &Shared, id: CopysetId) -> PathBuf {
    shared.data_dir.join("copysets").join(id.to_string())
}

impl RaftStore {
    /// Loads the checkpoint, replays the WAL and rebuilds every copyset.
    /// Blocking: call from a blocking context.
    ///
    /// # Errors
    /// Malformed checkpoint or WAL, IO errors, raft refusing the state.
    pub fn open(
        shared: Arc<Shared>,
        cfg: LoopConfig,
        rx: InboxRx,
        inbox: Inbox,
        rt: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<RaftStore, FatalError> {
        let me = shared.me;
        let logger = crate::logger::raft_logger();
        let cp = Checkpoint::load(&shared.data_dir)?.unwrap_or_default();
        {
            let mut peers = shared.peers.write().expect("peer lock poisoned");
            for (id, addr) in &cp.peers {
                peers.entry(*id).or_insert_with(|| addr.clone());
            }
        }
        let (wal, mut logs) = Wal::open(&shared.data_dir.join("wal"), shared.metrics.clone())?;
        let mut groups = BTreeMap::new();
        for c in &cp.copysets {
            let log = logs.remove(&c.id).unwrap_or_default();
            let g = Self::restore_group(&shared, &logger, c, log)?;
            tracing::info!(
                copyset = c.id,
                applied = g.node.store().applied,
                last = g.node.store().last(),
                "copyset restored"
            );
            groups.insert(c.id, g);
        }
        let transport = Transport::new(
            me,
            rt.clone(),
            shared.clone(),
            inbox.clone(),
            cancel.clone(),
        );
        Ok(RaftStore {
            shared,
            cfg,
            wal,
            groups,
            rx,
            inbox,
            transport,
            rt,
            cancel,
            logger,
            next_proposal: rand::random::<u64>() >> 1,
            last_tick: Instant::now(),
            last_checkpoint: Instant::now(),
            last_gc: Instant::now(),
            ticks: 0,
            need_checkpoint: false,
            copy_markers: Vec::new(),
            checkpointer: Checkpointer::spawn().map_err(|source| FatalError::Io {
                path: "checkpoint thread".into(),
                source,
            })?,
            inflight: None,
            outbox: HashMap::new(),
            snapshots_sent: Vec::new(),
            scratch_ids: Vec::new(),
            scratch_readies: Vec::new(),
            stopping: false,
        })
    }

    fn restore_group(
        shared: &Arc<Shared>,
        logger: &slog::Logger,
        c: &CopysetCheckpoint,
        log: ReplayedLog,
    ) -> Result<Group, FatalError> {
        let me = shared.me;
        let dir = copyset_dir(shared, c.id);
        let store = Arc::new(ChunkStore::open(&dir, shared.metrics.clone())?);
        if dir.join(crate::snapshot::COPY_MARKER).exists() {
            tracing::warn!(
                copyset = c.id,
                "snapshot copy was interrupted; recomputing chunk CRCs until the leader resends it"
            );
            store.recompute_crcs()?;
        }
        let conf = ConfState::from((c.voters.clone(), c.learners.clone()));
        let mut s = CopysetStorage::new(me, c.applied, c.applied_term, conf);
        s.epochs = c.epochs.clone();
        let mut hs = HardState::default();
        hs.term = c.hs_term;
        hs.vote = c.hs_vote;
        hs.commit = c.hs_commit;
        if let Some(wal_hs) = &log.hard_state {
            hs = merge_hard_state(&hs, wal_hs);
        }
        if let Some(meta) = log.snapshot.as_ref().filter(|m| m.index > c.applied) {
            // Installed (data synced) after the last checkpoint.
            s.apply_snapshot(meta);
        }
        let base = s.applied;
        let ents: Vec<_> = log.entries.into_iter().filter(|e| e.index > base).collect();
        if let Some(first) = ents.first() {
            if first.index != base + 1 {
                tracing::error!(
                    copyset = c.id,
                    first = first.index,
                    applied = base,
                    "wal has a gap after the checkpoint; dropping the replayed tail"
                );
            } else {
                s.append(&ents);
            }
        }
        hs.term = hs.term.max(s.applied_term);
        hs.commit = hs.commit.max(s.applied).min(s.last());
        s.hard_state = hs;
        let replay_until = s.last();
        let applied = s.applied;
        shared
            .stores
            .write()
            .expect("store lock poisoned")
            .insert(c.id, store.clone());
        let logger = logger.new(slog::o!("copyset" => c.id));
        let node = RawNode::new(&raft_config(me, applied), s, &logger)?;
        Ok(Group {
            id: c.id,
            node,
            store,
            pending: HashMap::new(),
            reads: Vec::new(),
            parked: None,
            fetched: false,
            replay_until,
            campaign_until: None,
        })
    }

    /// Runs until `Shutdown` or a fatal error. On shutdown the current
    /// iteration finishes (its WAL batch is fsynced) first.
    ///
    /// # Errors
    /// A failed WAL write/fsync, a chunk IO error during apply, or a failed
    /// checkpoint: the process must exit and replay on restart.
    pub fn run(mut self) -> Result<(), FatalError> {
        let r = self.run_inner();
        let resp = Response::error(ErrorCode::ShuttingDown, 0, "server stopping");
        for g in self.groups.values_mut() {
            g.fail_all(&resp);
        }
        if let Err(e) = &r {
            tracing::error!(error = %e, "raft loop stopped on a fatal error");
        } else if let Err(e) = self
            .wal
            .sync_all()
            .map_err(FatalError::from)
            .and_then(|_| self.checkpoint())
        {
            tracing::warn!(error = %e, "final checkpoint failed; the WAL covers it");
        }
        r
    }

    fn run_inner(&mut self) -> Result<(), FatalError> {
        while !self.iterate()? {}
        Ok(())
    }

    /// One loop iteration; returns true when the loop should stop.
    fn iterate(&mut self) -> Result<bool, FatalError> {
        let due = self.last_tick + self.cfg.tick;
        let mut wait = due.saturating_duration_since(Instant::now());
        if self
            .groups
            .values()
            .any(|g| g.parked.is_none() && g.node.has_ready())
        {
            // Work left from the last iteration: only peek at the inbox.
            wait = Duration::ZERO;
        }
        if let Some(m) = self.rx.recv_timeout(wait) {
            self.handle(m);
            for _ in 0..MAX_DRAIN {
                match self.rx.try_recv() {
                    Some(m) => self.handle(m),
                    None => break,
                }
            }
        }
        if self.last_tick.elapsed() >= self.cfg.tick {
            self.last_tick = Instant::now();
            self.ticks = self.ticks.wrapping_add(1);
            let recampaign = self.ticks.is_multiple_of(RECAMPAIGN_TICKS);
            for g in self.groups.values_mut().filter(|g| g.parked.is_none()) {
                g.compact_log(
                    (COMPACT_MARGIN, COMPACT_MARGIN_BYTES),
                    (LAGGING_FOLLOWER_MAX_ENTRIES, LAGGING_FOLLOWER_MAX_BYTES),
                );
                g.node.tick();
                if let Some(until) = g.campaign_until {
                    if g.leader() != 0 || Instant::now() > until {
                        g.campaign_until = None;
                    } else if recampaign && g.node.raft.state != StateRole::Leader {
                        let _ = g.node.campaign();
                    }
                }
            }
        }
        self.process_readies()?;
        self.fail_lost_leadership();
        if self.last_gc.elapsed() >= Duration::from_secs(1) {
            // Clients that timed out are gone; their entries may still
            // apply, but nobody waits for the answer.
            self.last_gc = Instant::now();
            for g in self.groups.values_mut() {
                g.pending.retain(|_, tx| !tx.is_closed());
                // Answers that go straight to a connection have no task
                // enforcing the request timeout: do it here.
                let expired: Vec<u64> = g
                    .pending
                    .iter()
                    .filter(|(_, tx)| tx.expired(crate::server::REQUEST_TIMEOUT))
                    .map(|(id, _)| *id)
                    .collect();
                for id in expired {
                    if let Some(tx) = g.pending.remove(&id) {
                        let _ =
                            tx.send(Response::error(ErrorCode::Timeout, 0, "request timed out"));
                    }
                }
                g.reads.retain(|(_, tx)| !tx.is_closed());
            }
        }
        self.drive_checkpoint()?;
        Ok(self.stopping)
    }

    fn handle(&mut self, m: InboxMsg) {
        match m {
            InboxMsg::Propose { copyset, cmd, resp } => self.propose(copyset, cmd, resp),
            InboxMsg::Read { copyset, resp } => {
                let Some(g) = self.groups.get_mut(&copyset) else {
                    let _ = resp.send(Err(no_such(copyset)));
                    return;
                };
                if !g.is_leader() {
                    let _ = resp.send(Err(g.not_leader()));
                    return;
                }
                // Lease-based read index: a leader that has committed an
                // entry of its own term holds the lease (check_quorum).
                if !g.node.raft.commit_to_current_term() {
                    let _ = resp.send(Err(Response::error(
                        ErrorCode::Busy,
                        g.leader(),
                        "new leader not ready for reads",
                    )));
                    return;
                }
                let index = g.node.raft.raft_log.committed;
                g.reads.push((index, resp));
                g.release_reads();
            }
            InboxMsg::Raft { from, msgs } => {
                for (cs, msg) in msgs {
                    let Some(g) = self.groups.get_mut(&cs) else {
                        tracing::trace!(copyset = cs, from, "raft message for unknown copyset");
                        continue;
                    };
                    if g.parked.is_some() {
                        // raft-rs forbids stepping between ready() and
                        // advance(); the sender retransmits.
                        continue;
                    }
                    if let Err(e) = g.node.step(msg) {
                        tracing::debug!(copyset = cs, from, error = %e, "raft step failed");
                    }
                }
            }
            InboxMsg::Admin(a) => self.admin(a),
            InboxMsg::SnapshotFetched { copyset } => {
                if let Some(g) = self.groups.get_mut(&copyset) {
                    if g.parked.is_some() {
                        g.fetched = true;
                    }
                }
            }
            InboxMsg::Unreachable { to } => {
                for g in self.groups.values_mut() {
                    if g.is_leader() && g.node.raft.prs().get(to).is_some() {
                        g.node.report_unreachable(to);
                    }
                }
            }
            InboxMsg::Status(tx) => {
                let _ = tx.send(self.status());
            }
            InboxMsg::Shutdown => self.stopping = true,
        }
    }

    fn propose(&mut self, copyset: CopysetId, cmd: Command, resp: Option<Responder>) {
        let answer = |resp: Option<Responder>, r: Response| {
            if let Some(tx) = resp {
                let _ = tx.send(r);
            }
        };
        let me = self.shared.me;
        let capacity_left = self.shared.capacity_left();
        let Some(g) = self.groups.get_mut(&copyset) else {
            return answer(resp, no_such(copyset));
        };
        if !g.is_leader() {
            return answer(resp, g.not_leader());
        }
        let (volume, epoch) = (cmd.volume(), cmd.epoch());
        let newest = g.epoch_of(volume);
        if let Some(chunk) = cmd.write_chunk() {
            if epoch < newest {
                return answer(
                    resp,
                    Response::error(
                        ErrorCode::StaleEpoch,
                        newest,
                        format!("epoch {epoch} < {newest}"),
                    ),
                );
            }
            if g.store.lacks_space_for(volume, chunk, capacity_left) {
                return answer(
                    resp,
                    Response::error(
                        ErrorCode::Io,
                        0,
                        format!("no space for a new chunk (reserve {FREE_SPACE_RESERVE} bytes)"),
                    ),
                );
            }
        }
        self.next_proposal = self.next_proposal.wrapping_add(1);
        let id = self.next_proposal;
        match g.node.propose(encode_context(me, id), cmd.encode()) {
            Ok(()) => {
                if let Some(tx) = resp {
                    g.pending.insert(id, tx);
                }
            }
            Err(e) => {
                tracing::debug!(copyset, error = %e, "proposal dropped");
                answer(resp, g.not_leader());
            }
        }
    }

    fn new_group(&mut self, copyset: CopysetId, storage: CopysetStorage) -> Option<&mut Group> {
        let dir = copyset_dir(&self.shared, copyset);
        let store = match ChunkStore::open(&dir, self.shared.metrics.clone()) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!(copyset, error = %e, "cannot create copyset directory");
                return None;
            }
        };
        let applied = storage.applied;
        let logger = self.logger.new(slog::o!("copyset" => copyset));
        let node = match RawNode::new(&raft_config(self.shared.me, applied), storage, &logger) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(copyset, error = %e, "cannot create raft node");
                return None;
            }
        };
        self.shared
            .stores
            .write()
            .expect("store lock poisoned")
            .insert(copyset, store.clone());
        self.wal.append_create(copyset);
        self.need_checkpoint = true;
        self.groups.insert(
            copyset,
            Group {
                id: copyset,
                node,
                store,
                pending: HashMap::new(),
                reads: Vec::new(),
                parked: None,
                fetched: false,
                replay_until: 0,
                campaign_until: None,
            },
        );
        self.groups.get_mut(&copyset)
    }

    fn admin(&mut self, a: Admin) {
        let me = self.shared.me;
        match a {
            Admin::Create { copyset, members } => {
                if self.groups.contains_key(&copyset) {
                    return;
                }
                if !members.contains(&me) {
                    tracing::warn!(
                        copyset,
                        ?members,
                        "CREATE for a copyset this server is not a member of"
                    );
                    return;
                }
                let conf = ConfState::from((members.clone(), vec![]));
                let s = CopysetStorage::new(me, BOOTSTRAP_INDEX, BOOTSTRAP_TERM, conf);
                tracing::info!(copyset, ?members, "creating copyset replica");
                if let Some(g) = self.new_group(copyset, s) {
                    if members[(copyset % members.len() as u64) as usize] == me {
                        let _ = g.node.campaign();
                        g.campaign_until = Some(Instant::now() + DESIGNATED_CAMPAIGN_WINDOW);
                    }
                }
            }
            Admin::Join { copyset } => {
                if self.groups.contains_key(&copyset) {
                    return;
                }
                tracing::info!(copyset, "joining copyset as an empty replica");
                let s = CopysetStorage::new(me, 0, 0, ConfState::default());
                self.new_group(copyset, s);
            }
            Admin::Destroy { copyset } => {
                let Some(mut g) = self.groups.remove(&copyset) else {
                    return;
                };
                tracing::info!(copyset, "destroying copyset replica");
                g.fail_all(&no_such(copyset));
                self.shared
                    .stores
                    .write()
                    .expect("store lock poisoned")
                    .remove(&copyset);
                let dir = copyset_dir(&self.shared, copyset);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(copyset, error = %e, "cannot remove copyset directory");
                }
                self.need_checkpoint = true;
            }
            Admin::SetMembers { copyset, members } => {
                let Some(g) = self.groups.get_mut(&copyset) else {
                    return;
                };
                if !g.is_leader() || g.node.raft.has_pending_conf() || members.is_empty() {
                    return;
                }
                let voters = g.node.store().conf_state.voters.clone();
                let change = if let Some(&gone) = voters.iter().find(|v| !members.contains(v)) {
                    Some((ConfChangeType::RemoveNode, gone))
                } else {
                    members
                        .iter()
                        .find(|m| !voters.contains(m))
                        .map(|&new| (ConfChangeType::AddNode, new))
                };
                if let Some((kind, node)) = change {
                    let mut cc = ConfChange::default();
                    cc.set_change_type(kind);
                    cc.node_id = node;
                    tracing::info!(copyset, ?kind, node, "proposing membership change");
                    if let Err(e) = g.node.propose_conf_change(vec![], cc) {
                        tracing::info!(copyset, error = %e, "conf change not proposed");
                    }
                }
            }
            Admin::Epochs(list) => {
                let ids: Vec<CopysetId> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.is_leader())
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    for &(volume, epoch) in &list {
                        let known = self.groups[&id].node.store().epochs.get(&volume).copied();
                        if known.is_some_and(|k| k < epoch) {
                            tracing::info!(copyset = id, volume, epoch, "fencing older epoch");
                            self.propose(id, Command::Fence { volume, epoch }, None);
                        }
                    }
                }
            }
        }
    }

    fn queue_messages(&mut self, copyset: CopysetId, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push((copyset, m.to));
            }
            let b = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(copyset, error = %e, "cannot encode raft message");
                    continue;
                }
            };
            self.outbox
                .entry(m.to)
                .or_default()
                .push((copyset, Bytes::from(b)));
        }
    }

    fn flush_outbox(&mut self) {
        let mut failed = Vec::new();
        for (to, msgs) in self.outbox.drain() {
            if !self.transport.send(to, msgs) {
                self.shared.metrics.raft_messages_dropped_total.inc();
                failed.push(to);
            }
        }
        for (cs, to) in self.snapshots_sent.drain(..) {
            if let Some(g) = self.groups.get_mut(&cs).filter(|g| g.is_leader()) {
                let status = if failed.contains(&to) {
                    SnapshotStatus::Failure
                } else {
                    SnapshotStatus::Finish
                };
                g.node.report_snapshot(to, status);
            }
        }
        for to in failed {
            for g in self.groups.values_mut() {
                if g.is_leader() && g.node.raft.prs().get(to).is_some() {
                    g.node.report_unreachable(to);
                }
            }
        }
    }

    fn process_readies(&mut self) -> Result<(), FatalError> {
        let me = self.shared.me;
        let mut batch = std::mem::take(&mut self.scratch_readies);
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.groups.keys().copied());
        for &id in &ids {
            let g = self.groups.get_mut(&id).expect("id taken from the map");
            let resumed = g.parked.is_some();
            let mut rd = if resumed {
                if !g.fetched {
                    continue;
                }
                g.fetched = false;
                g.parked.take().expect("checked above")
            } else if g.node.has_ready() {
                g.node.ready()
            } else {
                continue;
            };
            let msgs = rd.take_messages();
            if !rd.snapshot().is_empty() && !resumed {
                self.queue_messages(id, msgs);
                self.park(id, rd);
                continue;
            }
            self.queue_messages(id, msgs);
            let g = self.groups.get_mut(&id).expect("id taken from the map");
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let meta = snap.get_metadata();
                let s = g.node.mut_store();
                s.apply_snapshot(meta);
                if let Some((_, epochs)) = decode_snapshot_data(&snap.data) {
                    s.epochs = epochs;
                }
                g.replay_until = 0;
                self.wal.append_snapshot(id, meta);
                self.need_checkpoint = true;
                self.copy_markers.push(g.store.dir().to_path_buf());
                tracing::info!(
                    copyset = id,
                    index = meta.index,
                    term = meta.term,
                    "snapshot installed"
                );
            }
            if !rd.entries().is_empty() {
                self.wal.append_entries(id, rd.entries());
                g.node.mut_store().append(rd.entries());
            }
            if let Some(hs) = rd.hs() {
                self.wal.append_hard_state(id, hs, rd.must_sync());
                g.node.mut_store().hard_state = hs.clone();
            }
            batch.push((id, rd));
        }
        // Leader messages go out while we fsync: followers persist in
        // parallel with us.
        self.flush_outbox();
        // A batch of commit-index updates needs no fsync and nothing waits
        // for it: the WAL keeps it in memory for the next synced batch
        // (`Wal::sync`), so the leader's commit round costs no syscall.
        let deferred = !self.wal.must_sync();
        if !deferred {
            self.wal.sync()?;
        }
        // Acknowledgements first, applies after: a follower's append
        // response is what the leader's commit waits for, and applying the
        // previous commit (chunk pwrites) must not delay it. The WAL is
        // synced (or nothing in it needs syncing), so they may go now.
        for (id, rd) in batch.iter_mut() {
            let persisted = rd.take_persisted_messages();
            self.queue_messages(*id, persisted);
        }
        self.flush_outbox();
        for (id, mut rd) in batch.drain(..) {
            let g = self
                .groups
                .get_mut(&id)
                .expect("groups do not vanish mid-iteration");
            let committed = rd.take_committed_entries();
            if g.apply(me, committed)? {
                self.need_checkpoint = true;
            }
            let mut light = g.node.advance(rd);
            if let Some(c) = light.commit_index() {
                g.node.mut_store().hard_state.commit = c;
            }
            let light_msgs = light.take_messages();
            if g.apply(me, light.take_committed_entries())? {
                self.need_checkpoint = true;
            }
            g.node.advance_apply();
            g.release_reads();
            self.queue_messages(id, light_msgs);
        }
        self.flush_outbox();
        self.scratch_readies = batch;
        self.scratch_ids = ids;
        if deferred {
            self.wal.sync()?;
        }
        Ok(())
    }

    fn park(&mut self, id: CopysetId, rd: raft::Ready) {
        let g = self.groups.get_mut(&id).expect("caller holds a valid id");
        let source = decode_snapshot_data(&rd.snapshot().data)
            .map(|(leader, _)| leader)
            .unwrap_or(0);
        tracing::info!(
            copyset = id,
            index = rd.snapshot().get_metadata().index,
            source,
            "snapshot received; copying chunk data"
        );
        g.parked = Some(rd);
        g.fetched = false;
        let store = g.store.clone();
        if source == 0 {
            tracing::warn!(
                copyset = id,
                "snapshot without a source server; cannot copy"
            );
            return;
        }
        self.rt.spawn(fetch_task(
            self.shared.clone(),
            self.inbox.clone(),
            id,
            source,
            store,
            self.cancel.clone(),
        ));
    }

    fn fail_lost_leadership(&mut self) {
        for g in self.groups.values_mut() {
            if !g.is_leader() && (!g.pending.is_empty() || !g.reads.is_empty()) {
                let r = g.not_leader();
                g.fail_all(&r);
            }
        }
    }

    /// Captures the state to checkpoint (cheap; the loop thread) and what
    /// to do once it is durable.
    fn build_checkpoint(&mut self) -> (CheckpointJob, InFlight) {
        let mut cp = Checkpoint {
            copysets: Vec::with_capacity(self.groups.len()),
            peers: self
                .shared
                .peers
                .read()
                .expect("peer lock poisoned")
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        };
        let mut applied = HashMap::new();
        let mut stores = Vec::with_capacity(self.groups.len());
        for (id, g) in &self.groups {
            let s = g.node.store();
            cp.copysets.push(CopysetCheckpoint {
                id: *id,
                applied: s.applied,
                applied_term: s.applied_term,
                hs_term: s.hard_state.term,
                hs_vote: s.hard_state.vote,
                hs_commit: s.hard_state.commit,
                voters: s.conf_state.voters.clone(),
                learners: s.conf_state.learners.clone(),
                epochs: s.epochs.clone(),
            });
            applied.insert(*id, s.applied);
            stores.push(g.store.clone());
        }
        self.last_checkpoint = Instant::now();
        self.need_checkpoint = false;
        let job = CheckpointJob {
            checkpoint: cp,
            stores,
            data_dir: self.shared.data_dir.clone(),
        };
        let inflight = InFlight {
            applied,
            below_seq: self.wal.active_seq(),
            markers: std::mem::take(&mut self.copy_markers),
            started: Instant::now(),
        };
        (job, inflight)
    }

    /// Applies the effects of a durable checkpoint: WAL truncation, log
    /// compaction, removal of snapshot-copy markers.
    fn finish_checkpoint(
        &mut self,
        done: InFlight,
        result: Result<(), CheckpointError>,
    ) -> Result<(), FatalError> {
        result?;
        let deleted = self.wal.truncate(&done.applied, done.below_seq)?;
        for g in self.groups.values_mut() {
            g.compact_log(
                (COMPACT_MARGIN, COMPACT_MARGIN_BYTES),
                (LAGGING_FOLLOWER_MAX_ENTRIES, LAGGING_FOLLOWER_MAX_BYTES),
            );
        }
        for dir in &done.markers {
            crate::snapshot::clear_copy_marker(dir);
        }
        self.shared.metrics.checkpoints_total.inc();
        self.shared
            .metrics
            .checkpoint_seconds
            .observe(done.started.elapsed().as_secs_f64());
        tracing::debug!(
            copysets = done.applied.len(),
            deleted_segments = deleted,
            elapsed = ?done.started.elapsed(),
            "checkpoint written"
        );
        Ok(())
    }

    /// Starts a background checkpoint when one is due and none is running;
    /// finishes the running one when it is done.
    fn drive_checkpoint(&mut self) -> Result<(), FatalError> {
        if self.inflight.is_some() {
            match self.checkpointer.try_done() {
                Some(r) => {
                    let done = self.inflight.take().expect("checked above");
                    self.finish_checkpoint(done, r)?;
                }
                None => return Ok(()),
            }
        }
        if self.need_checkpoint
            || self.wal.bytes_since_truncate() >= self.cfg.checkpoint_wal_bytes
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            let (job, inflight) = self.build_checkpoint();
            self.checkpointer.submit(job)?;
            self.inflight = Some(inflight);
        }
        Ok(())
    }

    /// Writes a checkpoint synchronously (after any running one): used at
    /// shutdown and by tests.
    ///
    /// # Errors
    /// IO errors (fatal).
    pub fn checkpoint(&mut self) -> Result<(), FatalError> {
        if let Some(done) = self.inflight.take() {
            let r = self.checkpointer.wait_done();
            self.finish_checkpoint(done, r)?;
        }
        let (job, inflight) = self.build_checkpoint();
        let r = job.run();
        self.finish_checkpoint(inflight, r)
    }

    fn status(&self) -> Vec<CopysetState> {
        self.groups
            .iter()
            .map(|(id, g)| {
                let r = &g.node.raft;
                let role = match r.state {
                    StateRole::Leader => Role::Leader,
                    StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                    StateRole::Follower if g.node.store().conf_state.learners.contains(&r.id) => {
                        Role::Learner
                    }
                    StateRole::Follower => Role::Follower,
                };
                let commit = r.raft_log.committed;
                let caught_up = if r.state == StateRole::Leader {
                    let mut v: Vec<u64> = r
                        .prs()
                        .iter()
                        .filter(|(_, p)| p.matched >= commit)
                        .map(|(id, _)| *id)
                        .collect();
                    v.sort_unstable();
                    v
                } else {
                    Vec::new()
                };
                CopysetState {
                    copyset_id: *id,
                    role: role as i32,
                    term: r.term,
                    leader_id: r.leader_id,
                    commit_index: commit,
                    applied_index: g.node.store().applied,
                    voters: g.node.store().conf_state.voters.clone(),
                    caught_up,
                }
            })
            .collect()
    }
}

fn no_such(copyset: CopysetId) -> Response {
    Response::error(
        ErrorCode::NoSuchCopyset,
        0,
        format!("no replica of copyset {copyset}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_merge_is_monotonic() {
        let hs = |term, vote, commit| {
            let mut h = HardState::default();
            h.term = term;
            h.vote = vote;
            h.commit = commit;
            h
        };
        let m = merge_hard_state(&hs(3, 0, 10), &hs(2, 1, 12));
        assert_eq!((m.term, m.vote, m.commit), (3, 0, 12));
        let m = merge_hard_state(&hs(3, 0, 10), &hs(3, 2, 9));
        assert_eq!((m.term, m.vote, m.commit), (3, 2, 10));
        let m = merge_hard_state(&hs(4, 1, 1), &hs(4, 1, 0));
        assert_eq!((m.term, m.vote, m.commit), (4, 1, 1));
    }

    fn open_store(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> (RaftStore, Inbox) {
        let metrics = crate::metrics::Metrics::unregistered();
        let shared = Arc::new(Shared::new(1, dir.to_path_buf(), 0, metrics.clone()));
        let (inbox, rx) = crate::inbox::inbox(metrics.inbox_depth.clone());
        let cfg = LoopConfig {
            tick: Duration::from_millis(5),
            checkpoint_wal_bytes: 1 << 30,
        };
        let rs = RaftStore::open(
            shared,
            cfg,
            rx,
            inbox.clone(),
            rt.handle().clone(),
            CancellationToken::new(),
        )
        .unwrap();
        (rs, inbox)
    }

    fn until<T>(rs: &mut RaftStore, mut f: impl FnMut(&mut RaftStore) -> Option<T>) -> T {
        for _ in 0..2000 {
            if let Some(v) = f(rs) {
                return v;
            }
            rs.iterate().unwrap();
        }
        panic!("condition never met");
    }

    fn propose_write(rs: &mut RaftStore, epoch: u64, offset: u32, data: &'static [u8]) -> Response {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Write {
            volume: 3,
            epoch,
            chunk: 1,
            offset,
            data: Bytes::from_static(data),
        };
        rs.handle(InboxMsg::Propose {
            copyset: 9,
            cmd,
            resp: Some(tx.into()),
        });
        until(rs, |_| rx.try_recv().ok())
    }

    /// Creates copyset `cs` with this server (id 1) as its only voter and
    /// waits until it leads and the checkpoint that follows CREATE is done.
    fn create_single_replica_leader(rs: &mut RaftStore, cs: CopysetId) {
        rs.handle(InboxMsg::Admin(Admin::Create {
            copyset: cs,
            members: vec![1],
        }));
        until(rs, |rs| rs.groups[&cs].is_leader().then_some(()));
        until(rs, |rs| {
            (!rs.need_checkpoint && rs.inflight.is_none()).then_some(())
        });
    }

    /// A single-replica copyset survives a crash that loses every chunk
    /// file written since its last checkpoint: the WAL replays them, and
    /// the epoch map is rebuilt by re-applying the log.
    #[test]
    fn crash_after_fsync_replays_wal_into_chunks() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut rs, _inbox) = open_store(dir.path(), &rt);
            // The checkpoint after CREATE is done; everything below is WAL only.
            create_single_replica_leader(&mut rs, 9);
            assert_eq!(propose_write(&mut rs, 2, 10, b"first"), Response::Ok);
            assert_eq!(propose_write(&mut rs, 2, 4094, b"second"), Response::Ok);
            let stale = propose_write(&mut rs, 1, 0, b"stale");
            assert!(
                matches!(
                    stale,
                    Response::Error {
                        code: ErrorCode::StaleEpoch,
                        aux: 2,
                        ..
                    }
                ),
                "{stale:?}"
            );
            // Crash: no final checkpoint, and the unsynced chunk data is lost.
            drop(rs);
        }
        let cs_dir = dir.path().join("copysets").join("9");
        for e in std::fs::read_dir(&cs_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let (mut rs, _inbox) = open_store(dir.path(), &rt);
        until(&mut rs, |rs| rs.groups[&9].is_leader().then_some(()));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        rs.handle(InboxMsg::Read {
            copyset: 9,
            resp: tx,
        });
        let store = until(&mut rs, |_| rx.try_recv().ok()).unwrap().store;
        assert_eq!(store.read(3, 1, 10, 5).unwrap().as_ref(), b"first");
        assert_eq!(store.read(3, 1, 4094, 6).unwrap().as_ref(), b"second");
        assert_eq!(store.read(3, 1, 0, 10).unwrap().as_ref(), &[0u8; 10]);
        let stale = propose_write(&mut rs, 1, 0, b"stale");
        assert!(
            matches!(
                stale,
                Response::Error {
                    code: ErrorCode::StaleEpoch,
                    aux: 2,
                    ..
                }
            ),
            "{stale:?}"
        );
        // A clean checkpoint then truncates the WAL and a reopen still reads.
        rs.checkpoint().unwrap();
        drop(rs);
        let (mut rs, _inbox) = open_store(dir.path(), &rt);
        until(&mut rs, |rs| rs.groups[&9].is_leader().then_some(()));
        assert_eq!(
            rs.groups[&9].store.read(3, 1, 4094, 6).unwrap().as_ref(),
            b"second"
        );
    }

    /// The in-memory log is compacted by ticks alone (no checkpoint runs
    /// here: the WAL threshold is 1 GiB and the 30 s timer is far), down to
    /// the margin below `applied`, and the data stays readable.
    #[test]
    fn ticks_bound_the_in_memory_log() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (mut rs, _inbox) = open_store(dir.path(), &rt);
        create_single_replica_leader(&mut rs, 9);
        let checkpoints = rs.shared.metrics.checkpoints_total.get();
        let n = COMPACT_MARGIN as usize * 3;
        let mut waiting = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = tokio::sync::oneshot::channel();
            rs.handle(InboxMsg::Propose {
                copyset: 9,
                cmd: Command::Write {
                    volume: 3,
                    epoch: 1,
                    chunk: 0,
                    offset: (i % 1024) as u32 * 8,
                    data: Bytes::copy_from_slice(&(i as u64).to_le_bytes()),
                },
                resp: Some(tx.into()),
            });
            waiting.push(rx);
        }
        for mut rx in waiting {
            assert_eq!(until(&mut rs, |_| rx.try_recv().ok()), Response::Ok);
        }
        assert!(rs.groups[&9].node.store().len() >= n);
        // Two ticks (5 ms each) later the log is back to the margin.
        std::thread::sleep(Duration::from_millis(12));
        rs.iterate().unwrap();
        let len = rs.groups[&9].node.store().len() as u64;
        assert!(len <= COMPACT_MARGIN + 1, "{len} entries kept");
        assert_eq!(rs.shared.metrics.checkpoints_total.get(), checkpoints);
        let last = (n - 1) as u64;
        let off = (n - 1) % 1024 * 8;
        assert_eq!(
            rs.groups[&9]
                .store
                .read(3, 0, off as u64, 8)
                .unwrap()
                .as_ref(),
            &last.to_le_bytes()
        );
    }
}
