//! kv-node leases and failover: the state machine behind `KvHeartbeat`,
//! `KvTopology` and `KvPromote`.
//!
//! Per volume ctrl keeps, in memory, the kv nodes that renew a lease
//! (default 2 s; nodes heartbeat every lease/4), the node it considers the
//! writer (`rw`), an optional promotion in progress and a generation that
//! changes whenever a node joins, leaves or changes role.
//!
//! Rules, each enforced here:
//! - at most one node holds the RW seat. A node reporting RW gets it only
//!   when the seat is free and nobody is being promoted (the first writer,
//!   or a writer restarted after a crash), or when it is the node being
//!   promoted. Any other RW reporter is a zombie: it is fenced and told
//!   `STEP_DOWN`;
//! - whenever a node loses the RW seat (lease lapse, goodbye, demotion,
//!   failed promotion) it is fenced first: the caller bumps the volume
//!   epoch durably and drops the node's fs mount lease ([`Fence`]), so the
//!   chunkservers reject its writes and the next writer can mount RW at
//!   once instead of waiting out the 10 s mount lease;
//! - a promotion is offered only after that fence (the caller applies the
//!   fences a call returns before it answers anybody, under the same lock),
//!   to the live RO node with the highest applied sequence (the one with the
//!   least WAL left to replay), in its next heartbeat answer. A candidate
//!   that does not report RW within the promote timeout, or dies, is fenced
//!   and excluded, and the next one is chosen;
//! - a planned switchover (`KvPromote`) asks the RW to step down and stops
//!   extending its lease; once it says goodbye (or its lease lapses) the
//!   chosen node is promoted as above;
//! - after a ctrl restart the table is empty: the live writer reclaims the
//!   seat with its next heartbeat. ctrl promotes on its own only after a
//!   lapse it observed, or when a volume's nodes have had no writer for two
//!   leases (the writer died while ctrl was down).
//!
//! Time comes in as `now` on every call, so the unit tests drive a fake
//! clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pikafs_proto::ctrlpb::{KvCommand, KvHeartbeatRequest, KvNode, KvRole, KvTopologyResponse};
use tracing::{info, warn};

/// Fence a former writer: bump the volume epoch durably, then drop its fs
/// mount lease (`mount_id` 0: none known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub volume: String,
    pub node_id: String,
    pub mount_id: u64,
}

/// What a heartbeat answer carries (besides the lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub command: KvCommand,
    /// With `StepDown`: the node was fenced and must not touch the volume.
    pub fenced: bool,
    pub generation: u64,
    pub message: String,
}

/// Why `KvPromote` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromoteError {
    #[error("volume {volume:?}: kv node {node:?} is not a live node")]
    UnknownNode { volume: String, node: String },
    #[error("volume {volume:?}: kv node {node:?} is {role}, not a read-only node")]
    NotReadOnly {
        volume: String,
        node: String,
        role: &'static str,
    },
    #[error("volume {volume:?}: no live read-only kv node to promote")]
    NoCandidate { volume: String },
    #[error("volume {volume:?}: kv node {node:?} is already being promoted")]
    InProgress { volume: String, node: String },
}

/// Human name of a role, for logs and errors.
pub fn role_name(r: KvRole) -> &'static str {
    match r {
        KvRole::Rw => "rw",
        KvRole::Ro => "ro",
        KvRole::Promoting => "promoting",
        KvRole::Unspecified => "unspecified",
    }
}

#[derive(Debug, Clone)]
struct Node {
    addr: String,
    role: KvRole,
    applied_seq: u64,
    lag_ms: u64,
    mount_id: u64,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Promotion {
    node: String,
    deadline: Instant,
}

#[derive(Debug)]
struct VolumeKv {
    nodes: BTreeMap<String, Node>,
    rw: Option<String>,
    promoting: Option<Promotion>,
    /// Planned switchover: the writer asked to step down.
    stepping_down: Option<String>,
    /// Planned switchover: the node to promote once the seat is free.
    preferred: Option<String>,
    /// From when ctrl may pick a candidate for the free RW seat.
    promote_after: Option<Instant>,
    /// Nodes that failed a promotion; never chosen again until they leave.
    failed: BTreeSet<String>,
    /// fs mounts already fenced: an RW report carrying one is a zombie.
    fenced_mounts: BTreeSet<u64>,
    generation: u64,
    /// "No candidate" was logged for the current free seat.
    logged_no_candidate: bool,
}

impl VolumeKv {
    fn new(generation: u64, promote_after: Instant) -> Self {
        VolumeKv {
            nodes: BTreeMap::new(),
            rw: None,
            promoting: None,
            stepping_down: None,
            preferred: None,
            promote_after: Some(promote_after),
            failed: BTreeSet::new(),
            fenced_mounts: BTreeSet::new(),
            generation,
            logged_no_candidate: false,
        }
    }
}

/// Counters the service exports as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvEvents {
    /// Promotions completed (the candidate reported RW).
    pub promotions: u64,
}

/// Every volume's kv nodes.
#[derive(Debug)]
pub struct KvRegistry {
    lease: Duration,
    promote_timeout: Duration,
    /// First generation of a volume's table: ctrl's start time in ms, so
    /// generations keep rising across ctrl restarts.
    generation_base: u64,
    volumes: HashMap<String, VolumeKv>,
    events: KvEvents,
}

impl KvRegistry {
    pub fn new(lease: Duration, promote_timeout: Duration, generation_base: u64) -> Self {
        KvRegistry {
            lease,
            promote_timeout,
            generation_base,
            volumes: HashMap::new(),
            events: KvEvents::default(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Totals since start.
    pub fn events(&self) -> KvEvents {
        self.events
    }

    fn vol(&mut self, volume: &str, now: Instant) -> &mut VolumeKv {
        let base = self.generation_base;
        // Two leases of grace: after a ctrl restart the live writer
        // reclaims its seat well within that.
        let after = now + 2 * self.lease;
        self.volumes
            .entry(volume.to_string())
            .or_insert_with(|| VolumeKv::new(base, after))
    }

    /// Expires leases, fences lapsed writers and failed candidates, and
    /// picks a candidate for a free RW seat, on every volume. The caller
    /// applies the returned fences.
    pub fn tick(&mut self, now: Instant) -> Vec<Fence> {
        let names: Vec<String> = self.volumes.keys().cloned().collect();
        let mut fences = Vec::new();
        for v in names {
            fences.extend(self.tick_volume(&v, now));
        }
        fences
    }

    fn tick_volume(&mut self, volume: &str, now: Instant) -> Vec<Fence> {
        let promote_timeout = self.promote_timeout;
        let mut fences = Vec::new();
        let v = self.vol(volume, now);
        let expired: Vec<String> = v
            .nodes
            .iter()
            .filter(|(_, n)| n.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let Some(n) = v.nodes.remove(&id) else {
                continue;
            };
            v.generation += 1;
            v.failed.remove(&id);
            if v.rw.as_deref() == Some(id.as_str()) {
                warn!(volume, node = %id, addr = %n.addr, "RW kv node's lease lapsed: fencing it and promoting a read-only node");
                v.rw = None;
                v.stepping_down = None;
                v.promote_after = Some(now);
                fences.push(fence(volume, &id, n.mount_id, v));
            } else if v.promoting.as_ref().is_some_and(|p| p.node == id) {
                warn!(volume, node = %id, "kv node died while being promoted: fencing it, choosing another");
                v.promoting = None;
                v.promote_after = Some(now);
                fences.push(fence(volume, &id, n.mount_id, v));
            } else {
                info!(volume, node = %id, role = role_name(n.role), "kv node lease lapsed");
            }
        }
        if let Some(p) = v.promoting.clone() {
            if p.deadline <= now {
                warn!(volume, node = %p.node, "kv node did not finish its promotion in time: fencing it, choosing another");
                v.promoting = None;
                v.failed.insert(p.node.clone());
                v.promote_after = Some(now);
                let mount = v.nodes.get(&p.node).map_or(0, |n| n.mount_id);
                fences.push(fence(volume, &p.node, mount, v));
            }
        }
        choose(volume, v, now, promote_timeout);
        fences
    }

    /// Registers or renews a node and answers it. The caller has checked
    /// that the volume exists and applies the returned fences before it
    /// answers.
    pub fn heartbeat(&mut self, req: &KvHeartbeatRequest, now: Instant) -> (Answer, Vec<Fence>) {
        let volume = req.volume.as_str();
        let mut fences = self.tick_volume(volume, now);
        let lease = self.lease;
        let promote_timeout = self.promote_timeout;
        let v = self.vol(volume, now);
        let id = req.node_id.as_str();
        let role = KvRole::try_from(req.role).unwrap_or(KvRole::Unspecified);
        let mut answer = Answer {
            command: KvCommand::None,
            fenced: false,
            generation: 0,
            message: String::new(),
        };
        let mut promoted = false;
        let is_rw = v.rw.as_deref() == Some(id);
        let is_candidate = v.promoting.as_ref().is_some_and(|p| p.node == id);

        if req.leaving {
            if v.nodes.remove(id).is_some() {
                v.generation += 1;
            }
            v.failed.remove(id);
            if is_rw || is_candidate {
                info!(
                    volume,
                    node = id,
                    "kv writer left: promoting a read-only node"
                );
                v.rw = None;
                v.promoting = None;
                v.stepping_down = None;
                v.promote_after = Some(now);
                fences.push(fence(volume, id, req.mount_id, v));
            } else {
                info!(volume, node = id, "kv node left");
            }
        } else {
            match role {
                KvRole::Rw => {
                    if is_rw {
                        if v.stepping_down.as_deref() == Some(id) {
                            // Planned switchover: no renewal, so a node that
                            // ignores the order still loses the seat.
                            update(v, id, req, role, None);
                            answer.command = KvCommand::StepDown;
                            answer.message = "planned switchover: step down".into();
                        } else {
                            update(v, id, req, role, Some(now + lease));
                        }
                    } else if is_candidate {
                        info!(volume, node = id, "kv node promoted: it is the RW node now");
                        v.rw = Some(id.to_string());
                        v.promoting = None;
                        v.preferred = None;
                        v.promote_after = None;
                        update(v, id, req, role, Some(now + lease));
                        promoted = true;
                    } else if v.rw.is_none()
                        && v.promoting.is_none()
                        && !v.fenced_mounts.contains(&req.mount_id)
                    {
                        info!(volume, node = id, addr = %req.addr, "kv node takes the free RW seat");
                        v.rw = Some(id.to_string());
                        v.promote_after = None;
                        v.logged_no_candidate = false;
                        update(v, id, req, role, Some(now + lease));
                    } else {
                        warn!(volume, node = id, mount = req.mount_id, writer = ?v.rw, "a kv node that is not the writer reports RW: fencing it");
                        answer.command = KvCommand::StepDown;
                        answer.fenced = true;
                        answer.message = "another node holds the RW seat; you are fenced".into();
                        if v.nodes.remove(id).is_some() {
                            v.generation += 1;
                        }
                        if req.mount_id != 0 && !v.fenced_mounts.contains(&req.mount_id) {
                            fences.push(fence(volume, id, req.mount_id, v));
                        }
                    }
                }
                KvRole::Promoting => {
                    if is_candidate {
                        update(v, id, req, role, Some(now + lease));
                    } else {
                        warn!(
                            volume,
                            node = id,
                            "a kv node promotes itself without being chosen: fencing it"
                        );
                        answer.command = KvCommand::StepDown;
                        answer.fenced = true;
                        answer.message = "you are not being promoted; you are fenced".into();
                        if v.nodes.remove(id).is_some() {
                            v.generation += 1;
                        }
                        if req.mount_id != 0 && !v.fenced_mounts.contains(&req.mount_id) {
                            fences.push(fence(volume, id, req.mount_id, v));
                        }
                    }
                }
                KvRole::Ro | KvRole::Unspecified => {
                    if is_rw {
                        // The writer demoted itself (it restarted as RO, or
                        // stepped down and rejoined).
                        info!(
                            volume,
                            node = id,
                            "RW kv node now reports RO: the seat is free"
                        );
                        let old_mount = v.nodes.get(id).map_or(0, |n| n.mount_id);
                        v.rw = None;
                        v.stepping_down = None;
                        v.promote_after = Some(now);
                        fences.push(fence(volume, id, old_mount, v));
                    }
                    update(v, id, req, KvRole::Ro, Some(now + lease));
                }
            }
        }
        choose(volume, v, now, promote_timeout);
        if !req.leaving
            && matches!(role, KvRole::Ro | KvRole::Unspecified)
            && v.promoting.as_ref().is_some_and(|p| p.node == id)
        {
            answer.command = KvCommand::Promote;
            answer.message = "the RW node is gone: become the writer".into();
        }
        answer.generation = v.generation;
        if promoted {
            self.events.promotions += 1;
        }
        (answer, fences)
    }

    /// Live nodes of a volume (the caller applies the fences).
    pub fn topology(&mut self, volume: &str, now: Instant) -> (KvTopologyResponse, Vec<Fence>) {
        let fences = self.tick_volume(volume, now);
        (self.snapshot(volume, now), fences)
    }

    fn snapshot(&mut self, volume: &str, now: Instant) -> KvTopologyResponse {
        let v = self.vol(volume, now);
        KvTopologyResponse {
            volume: volume.to_string(),
            generation: v.generation,
            nodes: v
                .nodes
                .iter()
                .map(|(id, n)| KvNode {
                    node_id: id.clone(),
                    addr: n.addr.clone(),
                    role: n.role as i32,
                    applied_seq: n.applied_seq,
                    lag_ms: n.lag_ms,
                    lease_remaining_ms: n.expires.saturating_duration_since(now).as_millis() as u64,
                })
                .collect(),
        }
    }

    /// Planned switchover: the writer is asked to step down and `node`
    /// (or the best RO node when empty) is promoted once it has.
    ///
    /// # Errors
    /// `node` is not a live RO node, no RO node is live, or a promotion is
    /// already under way.
    pub fn promote(
        &mut self,
        volume: &str,
        node: &str,
        now: Instant,
    ) -> Result<(KvTopologyResponse, Vec<Fence>), PromoteError> {
        let fences = self.tick_volume(volume, now);
        let promote_timeout = self.promote_timeout;
        let v = self.vol(volume, now);
        if let Some(p) = &v.promoting {
            return Err(PromoteError::InProgress {
                volume: volume.into(),
                node: p.node.clone(),
            });
        }
        if node.is_empty() {
            let any = v
                .nodes
                .iter()
                .any(|(id, n)| n.role == KvRole::Ro && !v.failed.contains(id));
            if !any {
                return Err(PromoteError::NoCandidate {
                    volume: volume.into(),
                });
            }
            v.preferred = None;
        } else {
            let n = v.nodes.get(node).ok_or_else(|| PromoteError::UnknownNode {
                volume: volume.into(),
                node: node.into(),
            })?;
            if n.role != KvRole::Ro {
                return Err(PromoteError::NotReadOnly {
                    volume: volume.into(),
                    node: node.into(),
                    role: role_name(n.role),
                });
            }
            v.failed.remove(node);
            v.preferred = Some(node.to_string());
        }
        match v.rw.clone() {
            Some(rw) => {
                info!(volume, writer = %rw, target = node, "planned switchover: asking the RW node to step down");
                v.stepping_down = Some(rw);
            }
            None => v.promote_after = Some(now),
        }
        choose(volume, v, now, promote_timeout);
        Ok((self.snapshot(volume, now), fences))
    }

    /// Forgets a deleted volume.
    pub fn forget(&mut self, volume: &str) {
        self.volumes.remove(volume);
    }

    /// Names of the volumes with any kv node.
    pub fn volumes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .volumes
            .iter()
            .filter(|(_, v)| !v.nodes.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }
}

/// Records what a heartbeat reports; `expires` None keeps the old expiry
/// (a writer asked to step down gets no renewal).
fn update(
    v: &mut VolumeKv,
    id: &str,
    req: &KvHeartbeatRequest,
    role: KvRole,
    expires: Option<Instant>,
) {
    let Some(expires) = expires.or_else(|| v.nodes.get(id).map(|n| n.expires)) else {
        return;
    };
    let changed = match v.nodes.get(id) {
        None => true,
        Some(n) => n.role != role || n.addr != req.addr,
    };
    if changed {
        v.generation += 1;
        info!(volume = %req.volume, node = id, addr = %req.addr, role = role_name(role), "kv node registered");
    }
    v.nodes.insert(
        id.to_string(),
        Node {
            addr: req.addr.clone(),
            role,
            applied_seq: req.applied_seq,
            lag_ms: req.lag_ms,
            mount_id: req.mount_id,
            expires,
        },
    );
}

fn fence(volume: &str, node: &str, mount_id: u64, v: &mut VolumeKv) -> Fence {
    if mount_id != 0 {
        v.fenced_mounts.insert(mount_id);
    }
    Fence {
        volume: volume.to_string(),
        node_id: node.to_string(),
        mount_id,
    }
}

/// Picks a candidate for a free RW seat when ctrl may: the preferred node
/// of a planned switchover if live, else the live RO node with the highest
/// applied sequence (ties: the lowest id, so the choice is deterministic).
fn choose(volume: &str, v: &mut VolumeKv, now: Instant, promote_timeout: Duration) {
    if v.rw.is_some() || v.promoting.is_some() {
        return;
    }
    let Some(after) = v.promote_after else {
        return;
    };
    if after > now || v.nodes.is_empty() {
        return;
    }
    let eligible = |id: &String, n: &Node| n.role == KvRole::Ro && !v.failed.contains(id);
    let preferred = v
        .preferred
        .clone()
        .filter(|p| v.nodes.get(p).is_some_and(|n| eligible(p, n)));
    let pick = preferred.or_else(|| {
        v.nodes
            .iter()
            .filter(|(id, n)| eligible(id, n))
            .max_by(|a, b| a.1.applied_seq.cmp(&b.1.applied_seq).then(b.0.cmp(a.0)))
            .map(|(id, _)| id.clone())
    });
    match pick {
        Some(id) => {
            let seq = v.nodes.get(&id).map_or(0, |n| n.applied_seq);
            info!(volume, node = %id, applied_seq = seq, "promoting kv node");
            v.promoting = Some(Promotion {
                node: id,
                deadline: now + promote_timeout,
            });
            v.preferred = None;
            v.logged_no_candidate = false;
        }
        None => {
            if !v.logged_no_candidate {
                warn!(volume, "no live read-only kv node to promote; writes are unavailable until one registers");
                v.logged_no_candidate = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);
    const PROMOTE: Duration = Duration::from_secs(10);

    fn hb(node: &str, role: KvRole, seq: u64, mount: u64) -> KvHeartbeatRequest {
        KvHeartbeatRequest {
            volume: "v".into(),
            node_id: node.into(),
            addr: node.into(),
            role: role as i32,
            applied_seq: seq,
            lag_ms: 0,
            mount_id: mount,
            leaving: false,
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn role_of(r: &mut KvRegistry, node: &str, now: Instant) -> Option<KvRole> {
        r.topology("v", now)
            .0
            .nodes
            .iter()
            .find(|n| n.node_id == node)
            .map(|n| KvRole::try_from(n.role).unwrap())
    }

    /// rw "a" (mount 1) and ro "b" (seq 5), "c" (seq 9), all renewed at t.
    fn three(r: &mut KvRegistry, t: Instant) {
        for (n, role, seq, m) in [
            ("a", KvRole::Rw, 10, 1),
            ("b", KvRole::Ro, 5, 2),
            ("c", KvRole::Ro, 9, 3),
        ] {
            let (ans, f) = r.heartbeat(&hb(n, role, seq, m), t);
            assert_eq!(ans.command, KvCommand::None, "{n}");
            assert!(f.is_empty());
        }
    }

    #[test]
    fn first_rw_takes_the_seat_and_a_second_is_fenced() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 100);
        let t0 = Instant::now();
        let (a, f) = r.heartbeat(&hb("a", KvRole::Rw, 1, 1), t0);
        assert_eq!(a.command, KvCommand::None);
        assert!(f.is_empty());
        assert!(a.generation > 100);
        let (b, f) = r.heartbeat(&hb("b", KvRole::Rw, 1, 2), ms(t0, 100));
        assert_eq!(b.command, KvCommand::StepDown);
        assert!(b.fenced);
        assert_eq!(
            f,
            vec![Fence {
                volume: "v".into(),
                node_id: "b".into(),
                mount_id: 2
            }]
        );
        let topo = r.topology("v", ms(t0, 200)).0;
        assert_eq!(topo.nodes.len(), 1, "the zombie is not listed");
        assert_eq!(topo.nodes[0].role, KvRole::Rw as i32);
    }

    #[test]
    fn lapse_fences_the_writer_and_promotes_the_most_caught_up_ro() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        three(&mut r, t0);
        let g0 = r.topology("v", t0).0.generation;
        // b and c keep renewing; a is silent.
        for t in [500, 1000, 1500] {
            for (n, s, m) in [("b", 5, 2), ("c", 9, 3)] {
                let (ans, f) = r.heartbeat(&hb(n, KvRole::Ro, s, m), ms(t0, t));
                assert_eq!(ans.command, KvCommand::None);
                assert!(f.is_empty());
            }
        }
        // The timer notices the lapse: fence a's mount.
        let f = r.tick(ms(t0, 2001));
        assert_eq!(
            f,
            vec![Fence {
                volume: "v".into(),
                node_id: "a".into(),
                mount_id: 1
            }]
        );
        assert!(r.topology("v", ms(t0, 2001)).0.generation > g0);
        // b is told nothing; c (higher seq) is told to promote, again until
        // it reports.
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 2100));
        assert_eq!(ans.command, KvCommand::None);
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 2100));
        assert_eq!(ans.command, KvCommand::Promote);
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 2200));
        assert_eq!(ans.command, KvCommand::Promote);
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Promoting, 9, 4), ms(t0, 2300));
        assert_eq!(ans.command, KvCommand::None);
        assert_eq!(role_of(&mut r, "c", ms(t0, 2300)), Some(KvRole::Promoting));
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Rw, 9, 4), ms(t0, 2600));
        assert_eq!(ans.command, KvCommand::None);
        assert_eq!(role_of(&mut r, "c", ms(t0, 2600)), Some(KvRole::Rw));
        assert_eq!(r.events().promotions, 1);
        // The old writer wakes up (SIGCONT) and reports RW: step down,
        // fenced, and no second fence of an already fenced mount.
        let (ans, f) = r.heartbeat(&hb("a", KvRole::Rw, 10, 1), ms(t0, 2700));
        assert_eq!(ans.command, KvCommand::StepDown);
        assert!(ans.fenced);
        assert!(f.is_empty());
        assert_eq!(role_of(&mut r, "a", ms(t0, 2700)), None);
        assert_eq!(role_of(&mut r, "c", ms(t0, 2700)), Some(KvRole::Rw));
    }

    #[test]
    fn a_writer_restarted_after_a_crash_with_no_ro_gets_the_seat_back() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        r.heartbeat(&hb("a", KvRole::Rw, 1, 1), t0);
        assert_eq!(r.tick(ms(t0, 2500)).len(), 1);
        // Same address, new process: a new mount.
        let (ans, f) = r.heartbeat(&hb("a", KvRole::Rw, 1, 7), ms(t0, 3000));
        assert_eq!(ans.command, KvCommand::None);
        assert!(f.is_empty());
        assert_eq!(role_of(&mut r, "a", ms(t0, 3000)), Some(KvRole::Rw));
    }

    #[test]
    fn promote_timeout_moves_on_to_the_next_candidate() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        three(&mut r, t0);
        r.tick(ms(t0, 2001));
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 2100));
        assert_eq!(ans.command, KvCommand::Promote);
        // c keeps heartbeating as PROMOTING but never gets there; b renews.
        let mut t = 2100;
        while t < 11_500 {
            t += 500;
            r.heartbeat(&hb("c", KvRole::Promoting, 9, 8), ms(t0, t));
            let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, t));
            assert_eq!(ans.command, KvCommand::None, "at {t} ms");
        }
        let f = r.tick(ms(t0, 12_200));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].node_id, "c");
        assert_eq!(f[0].mount_id, 8);
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Promoting, 9, 8), ms(t0, 12_300));
        assert_eq!(ans.command, KvCommand::StepDown);
        assert!(ans.fenced);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 12_300));
        assert_eq!(ans.command, KvCommand::Promote);
        // c restarts as RO: it is not chosen again while b works on it.
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 9), ms(t0, 12_400));
        assert_eq!(ans.command, KvCommand::None);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Rw, 9, 10), ms(t0, 12_500));
        assert_eq!(ans.command, KvCommand::None);
        assert_eq!(role_of(&mut r, "b", ms(t0, 12_500)), Some(KvRole::Rw));
    }

    #[test]
    fn a_candidate_that_dies_is_fenced_and_replaced() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        three(&mut r, t0);
        r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 1500));
        r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 1500));
        r.tick(ms(t0, 2001));
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 2100));
        assert_eq!(ans.command, KvCommand::Promote);
        for t in [2500, 3000, 3500, 4000] {
            let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, t));
            assert_eq!(ans.command, KvCommand::None);
        }
        // c went silent at 2100: its lease ends at 4100.
        let f = r.tick(ms(t0, 4101));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].node_id, "c");
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 4200));
        assert_eq!(ans.command, KvCommand::Promote);
    }

    #[test]
    fn planned_switchover_waits_for_the_writer_to_leave() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        three(&mut r, t0);
        assert!(matches!(
            r.promote("v", "a", t0),
            Err(PromoteError::NotReadOnly { .. })
        ));
        assert!(matches!(
            r.promote("v", "zz", t0),
            Err(PromoteError::UnknownNode { .. })
        ));
        r.promote("v", "b", ms(t0, 100)).unwrap();
        // b is not told yet: the writer has not stepped down.
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 200));
        assert_eq!(ans.command, KvCommand::None);
        let (ans, f) = r.heartbeat(&hb("a", KvRole::Rw, 11, 1), ms(t0, 300));
        assert_eq!(ans.command, KvCommand::StepDown);
        assert!(!ans.fenced, "a planned step-down is not a fence");
        assert!(f.is_empty());
        // a says goodbye; ctrl fences its mount (already released) and b,
        // not the more caught-up c, is promoted.
        let mut bye = hb("a", KvRole::Rw, 11, 1);
        bye.leaving = true;
        let (_, f) = r.heartbeat(&bye, ms(t0, 400));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].mount_id, 1);
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 11, 3), ms(t0, 500));
        assert_eq!(ans.command, KvCommand::None);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 11, 2), ms(t0, 500));
        assert_eq!(ans.command, KvCommand::Promote);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Rw, 11, 5), ms(t0, 900));
        assert_eq!(ans.command, KvCommand::None);
        assert_eq!(role_of(&mut r, "b", ms(t0, 900)), Some(KvRole::Rw));
    }

    #[test]
    fn a_writer_ignoring_step_down_loses_the_seat_at_its_lease_end() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        three(&mut r, t0);
        r.promote("v", "", ms(t0, 100)).unwrap();
        for t in [500, 1000, 1500] {
            let (ans, _) = r.heartbeat(&hb("a", KvRole::Rw, 10, 1), ms(t0, t));
            assert_eq!(ans.command, KvCommand::StepDown);
            r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, t));
            r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, t));
        }
        // Its lease was not extended past t0 + 2 s.
        let f = r.tick(ms(t0, 2001));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].node_id, "a");
        let (ans, _) = r.heartbeat(&hb("c", KvRole::Ro, 9, 3), ms(t0, 2100));
        assert_eq!(ans.command, KvCommand::Promote);
    }

    #[test]
    fn after_a_ctrl_restart_ro_nodes_wait_for_the_writer() {
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let t0 = Instant::now();
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), t0);
        assert_eq!(ans.command, KvCommand::None);
        for t in [400, 2000, 3600] {
            let (ans, _) = r.heartbeat(&hb("a", KvRole::Rw, 5, 1), ms(t0, t));
            assert_eq!(ans.command, KvCommand::None);
        }
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 4500));
        assert_eq!(ans.command, KvCommand::None);
        // Without any writer, after two leases an RO node is promoted.
        let mut r = KvRegistry::new(LEASE, PROMOTE, 0);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), t0);
        assert_eq!(ans.command, KvCommand::None);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 1000));
        assert_eq!(ans.command, KvCommand::None);
        let (ans, _) = r.heartbeat(&hb("b", KvRole::Ro, 5, 2), ms(t0, 4100));
        assert_eq!(ans.command, KvCommand::Promote);
    }
}
