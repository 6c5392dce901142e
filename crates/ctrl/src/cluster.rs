//! The cluster map: persistent records mirrored in memory, plus what the
//! heartbeats tell (liveness, reported copyset states, leaders).
//!
//! One owner: the [`Cluster`] sits behind one mutex in the service, and every
//! operation runs to completion under it. A mutation is committed to the
//! store first and applied to memory only after the commit succeeded, so the
//! in-memory map never runs ahead of the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pikafs_proto::ctrlpb::{
    copyset_command, ClusterStatusResponse, CopysetCommand, CopysetRoute, CopysetState,
    CopysetStatus, HeartbeatRequest, HeartbeatResponse, Peer, Role, ServerStatus, VolumeEpoch,
    VolumeInfo,
};
use pikafs_proto::{
    CopysetId, ServerId, CHUNK_SIZE, MAX_VOLUME_SIZE, MIN_VOLUME_SIZE, REPLICAS, SECTOR_SIZE,
};
use tracing::{debug, info, warn};

use crate::error::{CtrlError, StoreError};
use crate::metrics::Metrics;
use crate::placement;
use crate::record::{CopysetRecord, ServerRecord, VolumeRecord, MAX_ADDR_LEN};
use crate::store::{Counter, Counters, Mutation, Store};

/// Longest volume name accepted, in bytes.
pub const MAX_VOLUME_NAME_LEN: usize = 255;

/// A registered server: its record and what its heartbeats said.
struct Server {
    rec: ServerRecord,
    /// Last heartbeat or registration; ctrl start for servers not heard
    /// from since, which gives every known server a full lease of grace.
    last_seen: Instant,
    used_bytes: u64,
    /// Copyset states from the last heartbeat, by copyset.
    reports: BTreeMap<CopysetId, CopysetState>,
    /// Whether the last check saw it down (to log transitions once).
    marked_down: bool,
}

/// The leader of a copyset as the up servers report it.
struct LeaderView<'a> {
    server: ServerId,
    state: &'a CopysetState,
}

/// See the module docs.
pub struct Cluster {
    store: Store,
    lease: Duration,
    copysets_per_server: u32,
    counters: Counters,
    servers: BTreeMap<ServerId, Server>,
    copysets: BTreeMap<CopysetId, CopysetRecord>,
    volumes: BTreeMap<String, VolumeRecord>,
    metrics: Metrics,
}

fn same_set(a: &[u64], b: &[u64]) -> bool {
    let a: BTreeSet<_> = a.iter().collect();
    let b: BTreeSet<_> = b.iter().collect();
    a == b
}

impl Cluster {
    /// Wraps a loaded store. `now` starts every known server's grace period.
    pub fn new(
        store: Store,
        snap: crate::store::Snapshot,
        lease: Duration,
        copysets_per_server: u32,
        metrics: Metrics,
        now: Instant,
    ) -> Cluster {
        let servers = snap
            .servers
            .into_iter()
            .map(|(id, rec)| {
                (
                    id,
                    Server {
                        rec,
                        last_seen: now,
                        used_bytes: 0,
                        reports: BTreeMap::new(),
                        marked_down: false,
                    },
                )
            })
            .collect();
        Cluster {
            store,
            lease,
            copysets_per_server,
            counters: snap.counters,
            servers,
            copysets: snap.copysets,
            volumes: snap.volumes,
            metrics,
        }
    }

    fn is_up(&self, s: &Server, now: Instant) -> bool {
        now.saturating_duration_since(s.last_seen) <= self.lease
    }

    fn server_up(&self, id: ServerId, now: Instant) -> bool {
        self.servers.get(&id).is_some_and(|s| self.is_up(s, now))
    }

    fn up_servers(&self, now: Instant) -> Vec<ServerId> {
        self.servers
            .iter()
            .filter(|(_, s)| self.is_up(s, now))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Target replicas per server.
    fn replica_counts(&self) -> BTreeMap<ServerId, usize> {
        let mut m: BTreeMap<ServerId, usize> = self.servers.keys().map(|id| (*id, 0)).collect();
        for c in self.copysets.values() {
            for s in &c.members {
                *m.entry(*s).or_insert(0) += 1;
            }
        }
        m
    }

    /// The up server reporting itself leader of `cs` with the highest term.
    fn leader_of(&self, cs: CopysetId, now: Instant) -> Option<LeaderView<'_>> {
        self.servers
            .iter()
            .filter(|(_, s)| self.is_up(s, now))
            .filter_map(|(id, s)| {
                s.reports
                    .get(&cs)
                    .filter(|st| st.role() == Role::Leader)
                    .map(|st| LeaderView {
                        server: *id,
                        state: st,
                    })
            })
            .max_by_key(|l| (l.state.term, l.server))
    }

    fn healthy(&self, cs: CopysetId, rec: &CopysetRecord, now: Instant) -> bool {
        let Some(l) = self.leader_of(cs, now) else {
            return false;
        };
        l.state.voters.len() == REPLICAS
            && same_set(&l.state.voters, &rec.members)
            && rec.members.iter().all(|m| self.server_up(*m, now))
    }

    fn peer(&self, id: ServerId) -> Peer {
        Peer {
            server_id: id,
            addr: self
                .servers
                .get(&id)
                .map(|s| s.rec.addr.clone())
                .unwrap_or_default(),
        }
    }

    fn next_id(&self, c: Counter) -> Result<(u64, Mutation), CtrlError> {
        let id = self.counters.get(c);
        let next = id.checked_add(1).ok_or(CtrlError::IdsExhausted(match c {
            Counter::Server => "server",
            Counter::Copyset => "copyset",
            Counter::Volume => "volume",
        }))?;
        Ok((id, Mutation::Counter(c, next)))
    }

    fn commit(&mut self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.store.apply(&batch)?;
        self.apply_in_memory(batch);
        Ok(())
    }

    /// Mirrors a committed batch. Server mutations only update entries that
    /// exist: registration inserts the live entry itself.
    fn apply_in_memory(&mut self, batch: Vec<Mutation>) {
        for m in batch {
            match m {
                Mutation::Counter(c, v) => self.counters.set(c, v),
                Mutation::Server(id, rec) => {
                    if let Some(s) = self.servers.get_mut(&id) {
                        s.rec = rec;
                    }
                }
                Mutation::Copyset(id, rec) => {
                    self.copysets.insert(id, rec);
                }
                Mutation::Volume(name, rec) => {
                    self.volumes.insert(name, rec);
                }
                Mutation::DeleteVolume(name) => {
                    self.volumes.remove(&name);
                }
            }
        }
    }

    /// Registers a server: id 0 gets a new id; a known id gets its address
    /// and capacity updated. An unknown non-zero id (a chunkserver that
    /// outlived ctrl's data directory) is adopted as is.
    ///
    /// # Errors
    /// A bad address, or the store failed.
    pub fn register(
        &mut self,
        server_id: ServerId,
        addr: &str,
        capacity_bytes: u64,
        now: Instant,
    ) -> Result<ServerId, CtrlError> {
        if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
            return Err(CtrlError::InvalidArgument(format!(
                "server address must be 1..={MAX_ADDR_LEN} bytes, got {}",
                addr.len()
            )));
        }
        let rec = ServerRecord {
            addr: addr.to_owned(),
            capacity_bytes,
        };
        let mut batch = Vec::new();
        let id = if server_id == 0 {
            let (id, m) = self.next_id(Counter::Server)?;
            batch.push(m);
            id
        } else {
            if !self.servers.contains_key(&server_id) {
                warn!(
                    server = server_id,
                    addr, "unknown server id registers; adopting it"
                );
                if server_id >= self.counters.next_server {
                    let next = server_id
                        .checked_add(1)
                        .ok_or(CtrlError::IdsExhausted("server"))?;
                    batch.push(Mutation::Counter(Counter::Server, next));
                }
            }
            server_id
        };
        let changed = self.servers.get(&id).is_none_or(|s| s.rec != rec);
        if changed {
            batch.push(Mutation::Server(id, rec.clone()));
        }
        // Insert the live entry only once the record is durable.
        if !batch.is_empty() {
            self.store.apply(&batch)?;
        }
        self.servers.entry(id).or_insert_with(|| Server {
            rec: rec.clone(),
            last_seen: now,
            used_bytes: 0,
            reports: BTreeMap::new(),
            marked_down: false,
        });
        self.apply_in_memory(batch);
        if let Some(s) = self.servers.get_mut(&id) {
            s.last_seen = now;
            s.marked_down = false;
        }
        info!(server = id, addr, capacity_bytes, "server registered");
        Ok(id)
    }

    /// Records a heartbeat and answers with the address book, the volume
    /// epochs and the commands for this server.
    ///
    /// # Errors
    /// [`CtrlError::ServerNotFound`] for an unregistered id; the store failed.
    pub fn heartbeat(
        &mut self,
        req: HeartbeatRequest,
        now: Instant,
    ) -> Result<HeartbeatResponse, CtrlError> {
        let sid = req.server_id;
        let Some(server) = self.servers.get(&sid) else {
            return Err(CtrlError::ServerNotFound(sid));
        };
        self.metrics.heartbeats.inc();
        let mut batch = Vec::new();
        let addr_ok = !req.addr.is_empty() && req.addr.len() <= MAX_ADDR_LEN;
        if addr_ok
            && (server.rec.addr != req.addr || server.rec.capacity_bytes != req.capacity_bytes)
        {
            batch.push(Mutation::Server(
                sid,
                ServerRecord {
                    addr: req.addr.clone(),
                    capacity_bytes: req.capacity_bytes,
                },
            ));
        }
        for st in &req.copysets {
            if st.leader_id == 0 && st.role() != Role::Leader {
                continue;
            }
            if let Some(rec) = self.copysets.get(&st.copyset_id) {
                let queued = batch
                    .iter()
                    .any(|m| matches!(m, Mutation::Copyset(id, _) if *id == st.copyset_id));
                if !rec.bootstrapped && !queued {
                    info!(copyset = st.copyset_id, "copyset has a leader");
                    batch.push(Mutation::Copyset(
                        st.copyset_id,
                        CopysetRecord {
                            members: rec.members.clone(),
                            bootstrapped: true,
                        },
                    ));
                }
            }
        }
        self.commit(batch)?;

        let server = self
            .servers
            .get_mut(&sid)
            .expect("checked above and servers are never removed");
        if server.marked_down {
            info!(server = sid, "server is back");
            server.marked_down = false;
        }
        server.last_seen = now;
        server.used_bytes = req.used_bytes;
        server.reports = req
            .copysets
            .into_iter()
            .map(|st| (st.copyset_id, st))
            .collect();

        Ok(HeartbeatResponse {
            commands: self.commands_for(sid, now),
            peers: self.servers.keys().map(|id| self.peer(*id)).collect(),
            epochs: self
                .volumes
                .values()
                .map(|v| VolumeEpoch {
                    volume_id: v.id,
                    epoch: v.epoch,
                })
                .collect(),
        })
    }

    fn command(
        &self,
        cs: CopysetId,
        kind: copyset_command::Kind,
        members: &[ServerId],
    ) -> CopysetCommand {
        CopysetCommand {
            copyset_id: cs,
            kind: kind as i32,
            members: members.iter().map(|m| self.peer(*m)).collect(),
        }
    }

    /// The work for server `sid`, given its last report.
    fn commands_for(&self, sid: ServerId, now: Instant) -> Vec<CopysetCommand> {
        use copyset_command::Kind;
        let Some(server) = self.servers.get(&sid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (cs, rec) in &self.copysets {
            let member = rec.members.contains(&sid);
            let reported = server.reports.get(cs);
            match (member, reported) {
                (true, None) => {
                    let kind = if rec.bootstrapped {
                        Kind::Join
                    } else {
                        Kind::Create
                    };
                    out.push(self.command(*cs, kind, &rec.members));
                }
                (true, Some(st)) => {
                    let is_leader = st.role() == Role::Leader
                        && self.leader_of(*cs, now).is_some_and(|l| l.server == sid);
                    if is_leader && !same_set(&st.voters, &rec.members) {
                        out.push(self.command(*cs, Kind::SetMembers, &rec.members));
                    }
                }
                (false, Some(_)) => {
                    // Destroy only once the removal is done: the leader no
                    // longer counts this server as a voter.
                    let removed = self
                        .leader_of(*cs, now)
                        .is_some_and(|l| l.server != sid && !l.state.voters.contains(&sid));
                    if removed {
                        out.push(self.command(*cs, Kind::Destroy, &rec.members));
                    } else if let Some(st) = reported.filter(|st| st.role() == Role::Leader) {
                        // A leader driving its own removal.
                        if !same_set(&st.voters, &rec.members) {
                            out.push(self.command(*cs, Kind::SetMembers, &rec.members));
                        }
                    }
                }
                (false, None) => {}
            }
        }
        for cs in server.reports.keys() {
            if !self.copysets.contains_key(cs) {
                debug!(
                    server = sid,
                    copyset = cs,
                    "server reports an unknown copyset"
                );
            }
        }
        out
    }

    fn route(&self, cs: CopysetId, now: Instant) -> Result<CopysetRoute, CtrlError> {
        let rec = self
            .copysets
            .get(&cs)
            .ok_or(CtrlError::MissingCopyset(cs))?;
        Ok(CopysetRoute {
            copyset_id: cs,
            members: rec.members.iter().map(|m| self.peer(*m)).collect(),
            leader_id: self.leader_of(cs, now).map_or(0, |l| l.server),
        })
    }

    fn volume_info(
        &self,
        name: &str,
        v: &VolumeRecord,
        now: Instant,
    ) -> Result<VolumeInfo, CtrlError> {
        Ok(VolumeInfo {
            volume_id: v.id,
            name: name.to_owned(),
            size_bytes: v.size_bytes,
            chunk_size: CHUNK_SIZE,
            epoch: v.epoch,
            copysets: v
                .copysets
                .iter()
                .map(|cs| self.route(*cs, now))
                .collect::<Result<_, _>>()?,
            created_unix_secs: v.created_unix_secs,
        })
    }

    fn check_name(name: &str) -> Result<(), CtrlError> {
        if name.is_empty() || name.len() > MAX_VOLUME_NAME_LEN {
            return Err(CtrlError::InvalidArgument(format!(
                "volume name must be 1..={MAX_VOLUME_NAME_LEN} bytes, got {}",
                name.len()
            )));
        }
        if name.chars().any(|c| c.is_control() || c == '/') {
            return Err(CtrlError::InvalidArgument(format!(
                "volume name {name:?} contains '/' or a control character"
            )));
        }
        Ok(())
    }

    fn check_size(size: u64) -> Result<(), CtrlError> {
        if size < MIN_VOLUME_SIZE {
            return Err(CtrlError::InvalidArgument(format!(
                "volume size {size} is below the minimum of {MIN_VOLUME_SIZE} bytes"
            )));
        }
        if size > MAX_VOLUME_SIZE {
            return Err(CtrlError::InvalidArgument(format!(
                "volume size {size} is above the maximum of {MAX_VOLUME_SIZE} bytes"
            )));
        }
        if !size.is_multiple_of(SECTOR_SIZE as u64) {
            return Err(CtrlError::InvalidArgument(format!(
                "volume size {size} is not a multiple of {SECTOR_SIZE}"
            )));
        }
        Ok(())
    }

    /// Creates a volume over the least used healthy-enough copysets (a
    /// quorum of members up), placing missing copysets first.
    ///
    /// # Errors
    /// Bad name or size, the name exists, fewer than 3 servers up or no
    /// copyset with a live quorum, the store failed.
    pub fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        now: Instant,
        unix_secs: u64,
    ) -> Result<VolumeInfo, CtrlError> {
        Self::check_name(name)?;
        Self::check_size(size_bytes)?;
        if self.volumes.contains_key(name) {
            return Err(CtrlError::VolumeExists(name.to_owned()));
        }
        let up = self.up_servers(now).len();
        if up < REPLICAS {
            return Err(CtrlError::NotEnoughServers { up });
        }
        // Normally a no-op; places the first copysets when the check loop
        // has not run since the servers came up.
        self.place_copysets(now)?;
        let mut users: BTreeMap<CopysetId, usize> = BTreeMap::new();
        for v in self.volumes.values() {
            for cs in &v.copysets {
                *users.entry(*cs).or_insert(0) += 1;
            }
        }
        let quorum = REPLICAS / 2 + 1;
        let eligible: Vec<(CopysetId, usize)> = self
            .copysets
            .iter()
            .filter(|(_, rec)| {
                rec.members
                    .iter()
                    .filter(|m| self.server_up(**m, now))
                    .count()
                    >= quorum
            })
            .map(|(id, _)| (*id, users.get(id).copied().unwrap_or(0)))
            .collect();
        let copysets = placement::volume_copysets(&eligible);
        if copysets.is_empty() {
            return Err(CtrlError::NotEnoughServers { up });
        }
        let (id, counter) = self.next_id(Counter::Volume)?;
        let rec = VolumeRecord {
            id,
            size_bytes,
            epoch: 1,
            created_unix_secs: unix_secs,
            copysets,
        };
        self.commit(vec![
            counter,
            Mutation::Volume(name.to_owned(), rec.clone()),
        ])?;
        info!(volume = id, name, size_bytes, copysets = ?rec.copysets, "volume created");
        self.volume_info(name, &rec, now)
    }

    fn volume(&self, name: &str) -> Result<&VolumeRecord, CtrlError> {
        self.volumes
            .get(name)
            .ok_or_else(|| CtrlError::VolumeNotFound(name.to_owned()))
    }

    /// Grows a volume online; only its size changes.
    ///
    /// # Errors
    /// Unknown volume, a smaller or invalid size, the store failed.
    pub fn grow_volume(
        &mut self,
        name: &str,
        new_size: u64,
        now: Instant,
    ) -> Result<VolumeInfo, CtrlError> {
        let v = self.volume(name)?.clone();
        if new_size < v.size_bytes {
            return Err(CtrlError::InvalidArgument(format!(
                "volume {name:?} cannot shrink from {} to {new_size} bytes",
                v.size_bytes
            )));
        }
        Self::check_size(new_size)?;
        if new_size != v.size_bytes {
            let rec = VolumeRecord {
                size_bytes: new_size,
                ..v
            };
            self.commit(vec![Mutation::Volume(name.to_owned(), rec)])?;
            info!(name, new_size, "volume grown");
        }
        self.volume_info(name, self.volume(name)?, now)
    }

    /// Deletes a volume's record. Its chunks stay on the copysets (space
    /// reclamation is not implemented).
    ///
    /// # Errors
    /// Unknown volume, the store failed.
    pub fn delete_volume(&mut self, name: &str) -> Result<(), CtrlError> {
        let id = self.volume(name)?.id;
        self.commit(vec![Mutation::DeleteVolume(name.to_owned())])?;
        info!(volume = id, name, "volume deleted");
        Ok(())
    }

    /// Every volume with its routes, by name.
    ///
    /// # Errors
    /// A volume refers to an unknown copyset (broken invariant).
    pub fn list_volumes(&self, now: Instant) -> Result<Vec<VolumeInfo>, CtrlError> {
        self.volumes
            .iter()
            .map(|(name, v)| self.volume_info(name, v, now))
            .collect()
    }

    /// One volume with its routes.
    ///
    /// # Errors
    /// Unknown volume.
    pub fn get_volume(&self, name: &str, now: Instant) -> Result<VolumeInfo, CtrlError> {
        self.volume_info(name, self.volume(name)?, now)
    }

    /// Raises the volume's epoch by one, durably.
    ///
    /// # Errors
    /// Unknown volume, the store failed.
    pub fn bump_epoch(&mut self, name: &str, now: Instant) -> Result<VolumeInfo, CtrlError> {
        let v = self.volume(name)?.clone();
        let epoch = v
            .epoch
            .checked_add(1)
            .ok_or(CtrlError::IdsExhausted("epoch"))?;
        let rec = VolumeRecord { epoch, ..v };
        self.commit(vec![Mutation::Volume(name.to_owned(), rec)])?;
        self.metrics.epoch_bumps.inc();
        info!(name, epoch, "volume epoch bumped");
        self.volume_info(name, self.volume(name)?, now)
    }

    /// Servers, copysets and volumes as ctrl sees them now.
    ///
    /// # Errors
    /// A volume refers to an unknown copyset (broken invariant).
    pub fn status(&self, now: Instant) -> Result<ClusterStatusResponse, CtrlError> {
        let replicas = self.replica_counts();
        let mut leaders: BTreeMap<ServerId, u32> = BTreeMap::new();
        let mut copysets = Vec::with_capacity(self.copysets.len());
        for (cs, rec) in &self.copysets {
            let leader = self.leader_of(*cs, now);
            if let Some(l) = &leader {
                *leaders.entry(l.server).or_insert(0) += 1;
            }
            copysets.push(CopysetStatus {
                copyset_id: *cs,
                members: rec.members.clone(),
                voters: leader
                    .as_ref()
                    .map(|l| l.state.voters.clone())
                    .unwrap_or_default(),
                leader_id: leader.as_ref().map_or(0, |l| l.server),
                term: leader.as_ref().map_or(0, |l| l.state.term),
                commit_index: leader.as_ref().map_or(0, |l| l.state.commit_index),
                healthy: self.healthy(*cs, rec, now),
            });
        }
        let servers = self
            .servers
            .iter()
            .map(|(id, s)| ServerStatus {
                server_id: *id,
                addr: s.rec.addr.clone(),
                up: self.is_up(s, now),
                last_heartbeat_ms_ago: u64::try_from(
                    now.saturating_duration_since(s.last_seen).as_millis(),
                )
                .unwrap_or(u64::MAX),
                capacity_bytes: s.rec.capacity_bytes,
                used_bytes: s.used_bytes,
                replicas: replicas.get(id).copied().unwrap_or(0) as u32,
                leaders: leaders.get(id).copied().unwrap_or(0),
            })
            .collect();
        Ok(ClusterStatusResponse {
            servers,
            copysets,
            volumes: self.list_volumes(now)?,
        })
    }

    /// Creates copysets on up servers until the target count is reached.
    /// Returns how many were created.
    fn place_copysets(&mut self, now: Instant) -> Result<usize, CtrlError> {
        let up = self.up_servers(now);
        if up.len() < REPLICAS {
            return Ok(0);
        }
        let target = placement::target_copysets(up.len(), self.copysets_per_server);
        let have = self.copysets.len();
        if have >= target {
            return Ok(0);
        }
        let mut load = self.replica_counts();
        let mut next = self.counters.next_copyset;
        let mut batch = Vec::new();
        for _ in have..target {
            let members = placement::least_loaded(&up, &load, REPLICAS)
                .expect("at least REPLICAS distinct up servers");
            for m in &members {
                *load.entry(*m).or_insert(0) += 1;
            }
            info!(copyset = next, ?members, "placing copyset");
            batch.push(Mutation::Copyset(
                next,
                CopysetRecord {
                    members,
                    bootstrapped: false,
                },
            ));
            next = next
                .checked_add(1)
                .ok_or(CtrlError::IdsExhausted("copyset"))?;
        }
        batch.push(Mutation::Counter(Counter::Copyset, next));
        self.commit(batch)?;
        Ok(target - have)
    }

    /// Replaces one dead member of each copyset whose membership is settled
    /// (the leader's voters equal the target members). Returns how many
    /// replacements were made.
    fn replace_dead_members(&mut self, now: Instant) -> Result<usize, CtrlError> {
        let up = self.up_servers(now);
        let mut load = self.replica_counts();
        let mut batch = Vec::new();
        for (cs, rec) in &self.copysets {
            let Some(dead) = rec
                .members
                .iter()
                .copied()
                .find(|m| !self.server_up(*m, now))
            else {
                continue;
            };
            // One change at a time: wait until the last one is applied, which
            // also needs a live leader to carry it out.
            let Some(leader) = self.leader_of(*cs, now) else {
                debug!(copyset = cs, dead, "degraded, no leader known yet");
                continue;
            };
            if !same_set(&leader.state.voters, &rec.members) {
                debug!(
                    copyset = cs,
                    dead, "degraded, a membership change is in flight"
                );
                continue;
            }
            let candidates: Vec<ServerId> = up
                .iter()
                .copied()
                .filter(|s| !rec.members.contains(s))
                .collect();
            let Some(pick) = placement::least_loaded(&candidates, &load, 1) else {
                debug!(copyset = cs, dead, "degraded, no spare server");
                continue;
            };
            let new = pick[0];
            *load.entry(new).or_insert(0) += 1;
            if let Some(n) = load.get_mut(&dead) {
                *n = n.saturating_sub(1);
            }
            let members: Vec<ServerId> = rec
                .members
                .iter()
                .map(|m| if *m == dead { new } else { *m })
                .collect();
            info!(copyset = cs, dead, new, ?members, "replacing dead member");
            batch.push(Mutation::Copyset(
                *cs,
                CopysetRecord {
                    members,
                    bootstrapped: rec.bootstrapped,
                },
            ));
        }
        let n = batch.len();
        self.commit(batch)?;
        self.metrics.replacements.inc_by(n as u64);
        Ok(n)
    }

    /// The periodic check: marks silent servers down, places copysets,
    /// replaces dead members, updates the gauges.
    ///
    /// # Errors
    /// The store failed; the next check retries.
    pub fn check(&mut self, now: Instant) -> Result<(), CtrlError> {
        let lease = self.lease;
        let mut up = 0;
        for (id, s) in self.servers.iter_mut() {
            let silent = now.saturating_duration_since(s.last_seen);
            if silent <= lease {
                up += 1;
            } else if !s.marked_down {
                s.marked_down = true;
                warn!(server = id, addr = %s.rec.addr, silent_ms = silent.as_millis() as u64, "server is down");
            }
        }
        self.metrics.set_servers(up, self.servers.len() - up);
        self.place_copysets(now)?;
        self.replace_dead_members(now)?;
        let degraded = self
            .copysets
            .iter()
            .filter(|(cs, rec)| !self.healthy(**cs, rec, now))
            .count();
        self.metrics.copysets_degraded.set(degraded as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copyset_command::Kind;

    struct Fixture {
        _dir: tempfile::TempDir,
        c: Cluster,
        t0: Instant,
    }

    const LEASE: Duration = Duration::from_secs(10);

    fn fixture(per_server: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (store, snap) = Store::open(&dir.path().join("ctrl.redb")).unwrap();
        let t0 = Instant::now();
        let c = Cluster::new(store, snap, LEASE, per_server, Metrics::default(), t0);
        Fixture { _dir: dir, c, t0 }
    }

    fn hb(
        c: &mut Cluster,
        id: ServerId,
        states: Vec<CopysetState>,
        now: Instant,
    ) -> Vec<CopysetCommand> {
        c.heartbeat(
            HeartbeatRequest {
                server_id: id,
                addr: format!("h:{id}"),
                capacity_bytes: 1,
                used_bytes: 0,
                copysets: states,
            },
            now,
        )
        .unwrap()
        .commands
    }

    fn state(cs: CopysetId, leader: ServerId, me: ServerId, voters: &[ServerId]) -> CopysetState {
        CopysetState {
            copyset_id: cs,
            role: if leader == me {
                Role::Leader
            } else {
                Role::Follower
            } as i32,
            term: 2,
            leader_id: leader,
            commit_index: 5,
            applied_index: 5,
            voters: voters.to_vec(),
            caught_up: vec![],
        }
    }

    fn kinds(cmds: &[CopysetCommand]) -> Vec<(CopysetId, Kind)> {
        cmds.iter().map(|c| (c.copyset_id, c.kind())).collect()
    }

    #[test]
    fn three_servers_get_balanced_copysets_and_create_commands() {
        let mut f = fixture(2);
        for i in 0..3 {
            assert_eq!(
                f.c.register(0, &format!("h:{}", i + 1), 1, f.t0).unwrap(),
                i + 1
            );
        }
        f.c.check(f.t0).unwrap();
        // 3 up servers * 2 / 3 = 2 copysets, each on all three servers.
        assert_eq!(f.c.copysets.len(), 2);
        for s in 1..=3 {
            let cmds = hb(&mut f.c, s, vec![], f.t0);
            assert_eq!(kinds(&cmds), vec![(1, Kind::Create), (2, Kind::Create)]);
            assert_eq!(cmds[0].members.len(), 3);
        }
    }

    #[test]
    fn settled_copyset_gets_no_commands() {
        let mut f = fixture(1);
        for i in 1..=3 {
            f.c.register(0, &format!("h:{i}"), 1, f.t0).unwrap();
        }
        f.c.check(f.t0).unwrap();
        let members = f.c.copysets[&1].members.clone();
        for s in 1..=3 {
            let cmds = hb(&mut f.c, s, vec![state(1, 1, s, &members)], f.t0);
            assert!(cmds.is_empty(), "{cmds:?}");
        }
        assert!(f.c.copysets[&1].bootstrapped);
        let st = f.c.status(f.t0).unwrap();
        assert!(st.copysets[0].healthy);
        assert_eq!(st.copysets[0].leader_id, 1);
        assert_eq!(st.servers[0].leaders, 1);
    }

    #[test]
    fn dead_member_is_replaced_then_destroyed() {
        let mut f = fixture(1);
        for i in 1..=3 {
            f.c.register(0, &format!("h:{i}"), 1, f.t0).unwrap();
        }
        f.c.check(f.t0).unwrap();
        assert_eq!(f.c.copysets.len(), 1);
        f.c.register(0, "h:4", 1, f.t0).unwrap();
        let old = vec![1, 2, 3];
        for s in 1..=3 {
            hb(&mut f.c, s, vec![state(1, 1, s, &old)], f.t0);
        }
        // Server 3 goes silent; 1, 2 and 4 keep reporting.
        let t1 = f.t0 + LEASE + Duration::from_secs(1);
        hb(&mut f.c, 1, vec![state(1, 1, 1, &old)], t1);
        hb(&mut f.c, 2, vec![state(1, 1, 2, &old)], t1);
        hb(&mut f.c, 4, vec![], t1);
        f.c.check(t1).unwrap();
        assert_eq!(f.c.copysets[&1].members, vec![1, 2, 4]);
        assert_eq!(f.c.metrics.replacements.get(), 1);
        // A second check does not replace again.
        f.c.check(t1).unwrap();
        assert_eq!(f.c.metrics.replacements.get(), 1);

        assert_eq!(kinds(&hb(&mut f.c, 4, vec![], t1)), vec![(1, Kind::Join)]);
        let cmds = hb(&mut f.c, 1, vec![state(1, 1, 1, &old)], t1);
        assert_eq!(kinds(&cmds), vec![(1, Kind::SetMembers)]);
        let addrs: Vec<_> = cmds[0].members.iter().map(|p| p.addr.as_str()).collect();
        assert_eq!(addrs, vec!["h:1", "h:2", "h:4"]);
        assert!(hb(&mut f.c, 2, vec![state(1, 1, 2, &old)], t1).is_empty());

        // Server 3 comes back before the leader removed it: no DESTROY yet.
        assert!(hb(&mut f.c, 3, vec![state(1, 1, 3, &old)], t1).is_empty());
        // The leader reports the new voters: now 3 is told to destroy.
        let new = vec![1, 2, 4];
        assert!(hb(&mut f.c, 1, vec![state(1, 1, 1, &new)], t1).is_empty());
        assert_eq!(
            kinds(&hb(&mut f.c, 3, vec![state(1, 1, 3, &old)], t1)),
            vec![(1, Kind::Destroy)]
        );
        hb(&mut f.c, 4, vec![state(1, 1, 4, &new)], t1);
        f.c.check(t1).unwrap();
        assert!(f.c.status(t1).unwrap().copysets[0].healthy);
        assert_eq!(f.c.metrics.copysets_degraded.get(), 0);
    }

    #[test]
    fn no_spare_server_leaves_copyset_degraded() {
        let mut f = fixture(1);
        for i in 1..=3 {
            f.c.register(0, &format!("h:{i}"), 1, f.t0).unwrap();
        }
        f.c.check(f.t0).unwrap();
        let t1 = f.t0 + LEASE + Duration::from_secs(1);
        hb(&mut f.c, 1, vec![state(1, 1, 1, &[1, 2, 3])], t1);
        hb(&mut f.c, 2, vec![state(1, 1, 2, &[1, 2, 3])], t1);
        f.c.check(t1).unwrap();
        assert_eq!(f.c.copysets[&1].members, vec![1, 2, 3]);
        assert_eq!(f.c.metrics.copysets_degraded.get(), 1);
        assert_eq!(
            f.c.metrics
                .servers
                .get_or_create(&vec![("state", "down")])
                .get(),
            1
        );
    }

    #[test]
    fn volume_rules() {
        let mut f = fixture(6);
        let err = f.c.create_volume("v", CHUNK_SIZE, f.t0, 0).unwrap_err();
        assert!(matches!(err, CtrlError::NotEnoughServers { up: 0 }));
        for i in 1..=3 {
            f.c.register(0, &format!("h:{i}"), 1, f.t0).unwrap();
        }
        // Copysets are created on demand.
        let v = f.c.create_volume("v", CHUNK_SIZE, f.t0, 9).unwrap();
        assert_eq!(v.epoch, 1);
        assert_eq!(v.copysets.len(), 6);
        assert_eq!(v.created_unix_secs, 9);
        assert!(matches!(
            f.c.create_volume("v", CHUNK_SIZE, f.t0, 0),
            Err(CtrlError::VolumeExists(_))
        ));
        for bad in [CHUNK_SIZE - 4096, CHUNK_SIZE + 1, MAX_VOLUME_SIZE + 4096] {
            assert!(matches!(
                f.c.create_volume("w", bad, f.t0, 0),
                Err(CtrlError::InvalidArgument(_))
            ));
        }
        assert!(f.c.create_volume("", CHUNK_SIZE, f.t0, 0).is_err());
        assert!(f.c.grow_volume("v", CHUNK_SIZE - 4096, f.t0).is_err());
        assert_eq!(
            f.c.grow_volume("v", 2 * CHUNK_SIZE, f.t0)
                .unwrap()
                .size_bytes,
            2 * CHUNK_SIZE
        );
        assert_eq!(f.c.bump_epoch("v", f.t0).unwrap().epoch, 2);
        assert!(matches!(
            f.c.get_volume("x", f.t0),
            Err(CtrlError::VolumeNotFound(_))
        ));
        f.c.delete_volume("v").unwrap();
        assert!(f.c.list_volumes(f.t0).unwrap().is_empty());
    }
}
