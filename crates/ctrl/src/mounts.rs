//! File-system mount leases.
//!
//! A volume has at most one live read-write (RW) mount and any number of
//! read-only (RO) mounts. Leases are kept in memory only: after a ctrl
//! restart every mount's next renewal fails (`ok = false`) and it mounts
//! anew. That cannot let two writers corrupt a volume, because granting an
//! RW lease bumps the volume epoch durably first (see `Cluster::bump_epoch`)
//! and the chunkservers reject writes from older epochs; the lease gives
//! exclusivity in the normal case, the epoch gives safety in every case.
//!
//! RO mounts publish their journal replay position and the inodes they
//! hold open; the RW learns the minimum position and the union of open
//! inodes in every renewal and reuses an orphan's blocks only past both. An
//! expired RO lease pins nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use pikafs_proto::ctrlpb::MountInfo;

/// Why a mount request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    /// Another RW mount holds a live lease.
    #[error(
        "volume {volume:?} is already mounted read-write by mount {holder} ({host}); \
         its lease lapses in {remaining_ms} ms unless renewed"
    )]
    RwHeld {
        volume: String,
        holder: u64,
        host: String,
        remaining_ms: u64,
    },
}

#[derive(Debug, Clone)]
struct Mount {
    rw: bool,
    host: String,
    notify_addr: String,
    replay_lsn: u64,
    open_inodes: BTreeSet<u64>,
    expires: Instant,
}

/// What a renewal tells the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub rw_notify_addr: String,
    pub min_ro_lsn: u64,
    pub pinned_inodes: Vec<u64>,
}

/// All mount leases, per volume name.
#[derive(Debug)]
pub struct MountTable {
    lease: Duration,
    next_id: u64,
    volumes: HashMap<String, BTreeMap<u64, Mount>>,
}

impl MountTable {
    pub fn new(lease: Duration) -> Self {
        MountTable {
            lease,
            next_id: 1,
            volumes: HashMap::new(),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn expire(&mut self, volume: &str, now: Instant) {
        if let Some(m) = self.volumes.get_mut(volume) {
            m.retain(|id, mount| {
                let live = mount.expires > now;
                if !live {
                    tracing::info!(volume, mount = id, rw = mount.rw, "mount lease lapsed");
                }
                live
            });
        }
    }

    /// Checks that an RW lease may be granted now, without granting it, so
    /// the caller can bump the epoch durably in between.
    ///
    /// # Errors
    /// [`MountError::RwHeld`] while another RW lease is live.
    pub fn check_rw_free(&mut self, volume: &str, now: Instant) -> Result<(), MountError> {
        self.expire(volume, now);
        if let Some((id, m)) = self
            .volumes
            .get(volume)
            .and_then(|ms| ms.iter().find(|(_, m)| m.rw))
        {
            return Err(MountError::RwHeld {
                volume: volume.to_string(),
                holder: *id,
                host: m.host.clone(),
                remaining_ms: m.expires.saturating_duration_since(now).as_millis() as u64,
            });
        }
        Ok(())
    }

    /// Grants a lease and returns the mount id. For RW the caller must have
    /// called [`MountTable::check_rw_free`] under the same lock.
    pub fn grant(
        &mut self,
        volume: &str,
        rw: bool,
        host: &str,
        notify_addr: &str,
        now: Instant,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.volumes.entry(volume.to_string()).or_default().insert(
            id,
            Mount {
                rw,
                host: host.to_string(),
                notify_addr: notify_addr.to_string(),
                replay_lsn: 0,
                open_inodes: BTreeSet::new(),
                expires: now + self.lease,
            },
        );
        id
    }

    /// The live RW mount's notify address, or "".
    pub fn rw_notify_addr(&mut self, volume: &str, now: Instant) -> String {
        self.expire(volume, now);
        self.volumes
            .get(volume)
            .and_then(|ms| ms.values().find(|m| m.rw))
            .map(|m| m.notify_addr.clone())
            .unwrap_or_default()
    }

    /// Extends a live lease and records what an RO mount publishes. `None`
    /// when the lease is unknown or has lapsed.
    pub fn renew(
        &mut self,
        volume: &str,
        id: u64,
        replay_lsn: u64,
        open_inodes: &[u64],
        now: Instant,
    ) -> Option<Renewal> {
        self.expire(volume, now);
        let mounts = self.volumes.get_mut(volume)?;
        let m = mounts.get_mut(&id)?;
        m.expires = now + self.lease;
        if !m.rw {
            m.replay_lsn = replay_lsn;
            m.open_inodes = open_inodes.iter().copied().collect();
        }
        let ro = mounts.values().filter(|m| !m.rw);
        let min_ro_lsn = ro.clone().map(|m| m.replay_lsn).min().unwrap_or(u64::MAX);
        let pinned: BTreeSet<u64> = ro.flat_map(|m| m.open_inodes.iter().copied()).collect();
        let rw_notify_addr = mounts
            .values()
            .find(|m| m.rw)
            .map(|m| m.notify_addr.clone())
            .unwrap_or_default();
        Some(Renewal {
            rw_notify_addr,
            min_ro_lsn,
            pinned_inodes: pinned.into_iter().collect(),
        })
    }

    /// Drops a lease (a clean unmount). Unknown ids are ignored.
    pub fn release(&mut self, volume: &str, id: u64) {
        if let Some(m) = self.volumes.get_mut(volume) {
            m.remove(&id);
        }
    }

    /// Live mounts of a volume.
    pub fn list(&mut self, volume: &str, now: Instant) -> Vec<MountInfo> {
        self.expire(volume, now);
        self.volumes
            .get(volume)
            .map(|ms| {
                ms.iter()
                    .map(|(id, m)| MountInfo {
                        mount_id: *id,
                        rw: m.rw,
                        host: m.host.clone(),
                        notify_addr: m.notify_addr.clone(),
                        replay_lsn: m.replay_lsn,
                        open_inodes: m.open_inodes.iter().copied().collect(),
                        expires_in_ms: m.expires.saturating_duration_since(now).as_millis() as u64,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets every lease of a deleted volume.
    pub fn forget(&mut self, volume: &str) {
        self.volumes.remove(volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(10);

    #[test]
    fn rw_is_exclusive_until_its_lease_lapses() {
        let mut t = MountTable::new(LEASE);
        let t0 = Instant::now();
        t.check_rw_free("v", t0).unwrap();
        let a = t.grant("v", true, "host-a", "127.0.0.1:1", t0);
        let err = t
            .check_rw_free("v", t0 + Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(err, MountError::RwHeld { holder, .. } if holder == a));
        assert!(err.to_string().contains("host-a"), "{err}");
        // Renewal keeps it.
        assert!(t
            .renew("v", a, 0, &[], t0 + Duration::from_secs(9))
            .is_some());
        assert!(t.check_rw_free("v", t0 + Duration::from_secs(15)).is_err());
        // Silence past the lease frees it, and the old holder learns it lost.
        let later = t0 + Duration::from_secs(30);
        t.check_rw_free("v", later).unwrap();
        assert!(t.renew("v", a, 0, &[], later).is_none());
        // Other volumes are independent.
        t.check_rw_free("w", t0).unwrap();
    }

    #[test]
    fn ro_mounts_publish_positions_and_dead_ones_pin_nothing() {
        let mut t = MountTable::new(LEASE);
        let t0 = Instant::now();
        let rw = t.grant("v", true, "w", "127.0.0.1:9", t0);
        let r1 = t.grant("v", false, "r1", "", t0);
        let r2 = t.grant("v", false, "r2", "", t0);
        t.renew("v", r1, 100, &[7, 8], t0).unwrap();
        t.renew("v", r2, 50, &[8, 9], t0 + Duration::from_secs(1))
            .unwrap();
        let r = t
            .renew("v", rw, 0, &[], t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(r.min_ro_lsn, 50);
        assert_eq!(r.pinned_inodes, vec![7, 8, 9]);
        assert_eq!(r.rw_notify_addr, "127.0.0.1:9");
        assert_eq!(t.rw_notify_addr("v", t0), "127.0.0.1:9");
        // r1 keeps renewing; r2 dies.
        t.renew("v", r1, 120, &[7], t0 + Duration::from_secs(8))
            .unwrap();
        t.renew("v", rw, 0, &[], t0 + Duration::from_secs(8))
            .unwrap();
        let r = t
            .renew("v", rw, 0, &[], t0 + Duration::from_secs(12))
            .unwrap();
        assert_eq!(r.min_ro_lsn, 120);
        assert_eq!(r.pinned_inodes, vec![7]);
        // No RO at all: nothing pins.
        t.release("v", r1);
        let r = t
            .renew("v", rw, 0, &[], t0 + Duration::from_secs(13))
            .unwrap();
        assert_eq!(r.min_ro_lsn, u64::MAX);
        assert!(r.pinned_inodes.is_empty());
        assert_eq!(t.list("v", t0 + Duration::from_secs(13)).len(), 1);
    }
}
