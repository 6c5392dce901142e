//! The `Ctrl` gRPC service: decodes requests, runs them on the [`Cluster`]
//! under its lock, encodes answers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pikafs_proto::ctrlpb::ctrl_server::Ctrl;
use pikafs_proto::ctrlpb::{
    AcquireMountRequest, AcquireMountResponse, ClusterStatusResponse, CreateVolumeRequest, Empty,
    GrowVolumeRequest, HeartbeatRequest, HeartbeatResponse, KvHeartbeatRequest,
    KvHeartbeatResponse, KvPromoteRequest, KvTopologyResponse, ListMountsResponse,
    ListVolumesResponse, RegisterServerRequest, RegisterServerResponse, ReleaseMountRequest,
    RenewMountRequest, RenewMountResponse, VolumeInfo, VolumeName,
};
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::cluster::Cluster;
use crate::error::CtrlError;
use crate::kvnodes::{Fence, KvRegistry, PromoteError};
use crate::metrics::Metrics;
use crate::mounts::MountTable;

/// Shared handle to the cluster map.
#[derive(Clone)]
pub struct CtrlService {
    cluster: Arc<Mutex<Cluster>>,
    // Lock order: `cluster` before `mounts`, so an RW grant can bump the
    // epoch durably and record the lease atomically.
    mounts: Arc<Mutex<MountTable>>,
    // Lock order: `cluster`, `mounts`, then `kv`: a kv lease lapse fences
    // (epoch bump, mount lease drop) under all three, before any node can
    // be told to promote.
    kv: Arc<Mutex<KvRegistry>>,
    metrics: Metrics,
}

impl CtrlService {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        mount_lease: Duration,
        kv_lease: Duration,
        kv_promote_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        let generation_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        CtrlService {
            cluster,
            mounts: Arc::new(Mutex::new(MountTable::new(mount_lease))),
            kv: Arc::new(Mutex::new(KvRegistry::new(
                kv_lease,
                kv_promote_timeout,
                generation_base,
            ))),
            metrics,
        }
    }

    fn lock_kv(&self) -> MutexGuard<'_, KvRegistry> {
        self.kv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires kv leases and fences lapsed writers; run by the check loop
    /// so a failover does not wait for some node's heartbeat.
    pub fn kv_check(&self, now: Instant) {
        let mut cluster = self.lock();
        let mut mounts = self.lock_mounts();
        let mut kv = self.lock_kv();
        let fences = kv.tick(now);
        self.apply_fences(&mut cluster, &mut mounts, fences, now);
        self.sync_kv_metrics(&kv);
    }

    fn sync_kv_metrics(&self, kv: &KvRegistry) {
        let done = kv.events().promotions;
        let seen = self.metrics.kv_promotions.get();
        if done > seen {
            self.metrics.kv_promotions.inc_by(done - seen);
        }
    }

    /// Fences former kv writers: the epoch bump is durable before this
    /// returns, so a node told to promote afterwards mounts past it.
    fn apply_fences(
        &self,
        cluster: &mut Cluster,
        mounts: &mut MountTable,
        fences: Vec<Fence>,
        now: Instant,
    ) {
        for f in fences {
            match cluster.bump_epoch(&f.volume, now) {
                Ok(v) => {
                    info!(volume = %f.volume, node = %f.node_id, mount = f.mount_id, epoch = v.epoch, "kv writer fenced");
                }
                // The next writer's RW mount bumps the epoch again, so
                // safety does not rest on this one; a human must look.
                Err(e) => {
                    error!(volume = %f.volume, node = %f.node_id, error = %e, "fencing a kv writer: epoch bump failed")
                }
            }
            if f.mount_id != 0 {
                mounts.release(&f.volume, f.mount_id);
            }
            self.metrics.kv_fences.inc();
        }
    }

    fn lock_mounts(&self) -> MutexGuard<'_, MountTable> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        // Memory is changed only after a successful commit, so a panic in
        // another request leaves a map consistent with the disk.
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Logs failures a human must look at; refusals are the caller's business.
fn status(e: CtrlError) -> Status {
    if matches!(e, CtrlError::Store(_) | CtrlError::MissingCopyset(_)) {
        tracing::error!(error = %e, "ctrl request failed");
    }
    e.into()
}

#[tonic::async_trait]
impl Ctrl for CtrlService {
    async fn register_server(
        &self,
        req: Request<RegisterServerRequest>,
    ) -> Result<Response<RegisterServerResponse>, Status> {
        let r = req.into_inner();
        let id = self
            .lock()
            .register(r.server_id, &r.addr, r.capacity_bytes, Instant::now())
            .map_err(status)?;
        Ok(Response::new(RegisterServerResponse { server_id: id }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let id = r.server_id;
        let res = self.lock().heartbeat(r, Instant::now());
        match res {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e @ CtrlError::ServerNotFound(_)) => {
                // Normal after ctrl lost its data dir; the server re-registers.
                info!(server = id, "heartbeat from unregistered server");
                Err(e.into())
            }
            Err(e) => Err(status(e)),
        }
    }

    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<VolumeInfo>, Status> {
        let r = req.into_inner();
        let info = self
            .lock()
            .create_volume(&r.name, r.size_bytes, Instant::now(), unix_now())
            .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn grow_volume(
        &self,
        req: Request<GrowVolumeRequest>,
    ) -> Result<Response<VolumeInfo>, Status> {
        let r = req.into_inner();
        let info = self
            .lock()
            .grow_volume(&r.name, r.new_size_bytes, Instant::now())
            .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn delete_volume(&self, req: Request<VolumeName>) -> Result<Response<Empty>, Status> {
        let name = req.into_inner().name;
        let mut cluster = self.lock();
        let mut mounts = self.lock_mounts();
        if !mounts.list(&name, Instant::now()).is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {name:?} is mounted; unmount it first"
            )));
        }
        cluster.delete_volume(&name).map_err(status)?;
        mounts.forget(&name);
        self.lock_kv().forget(&name);
        Ok(Response::new(Empty {}))
    }

    async fn list_volumes(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let volumes = self.lock().list_volumes(Instant::now()).map_err(status)?;
        Ok(Response::new(ListVolumesResponse { volumes }))
    }

    async fn get_volume(&self, req: Request<VolumeName>) -> Result<Response<VolumeInfo>, Status> {
        let info = self
            .lock()
            .get_volume(&req.into_inner().name, Instant::now())
            .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn bump_epoch(&self, req: Request<VolumeName>) -> Result<Response<VolumeInfo>, Status> {
        let info = self
            .lock()
            .bump_epoch(&req.into_inner().name, Instant::now())
            .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn cluster_status(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let st = self.lock().status(Instant::now()).map_err(status)?;
        Ok(Response::new(st))
    }

    async fn acquire_mount(
        &self,
        req: Request<AcquireMountRequest>,
    ) -> Result<Response<AcquireMountResponse>, Status> {
        let r = req.into_inner();
        let now = Instant::now();
        let mut cluster = self.lock();
        let mut mounts = self.lock_mounts();
        let volume = if r.rw {
            mounts
                .check_rw_free(&r.volume, now)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            // Durable before the writer learns it: from here on a previous
            // writer's epoch is stale.
            cluster.bump_epoch(&r.volume, now).map_err(status)?
        } else {
            cluster.get_volume(&r.volume, now).map_err(status)?
        };
        let id = mounts.grant(&r.volume, r.rw, &r.host, &r.notify_addr, now);
        info!(volume = %r.volume, mount = id, rw = r.rw, host = %r.host, epoch = volume.epoch, "mount granted");
        Ok(Response::new(AcquireMountResponse {
            mount_id: id,
            epoch: volume.epoch,
            lease_ms: mounts.lease().as_millis() as u64,
            rw_notify_addr: mounts.rw_notify_addr(&r.volume, now),
            volume: Some(volume),
        }))
    }

    async fn renew_mount(
        &self,
        req: Request<RenewMountRequest>,
    ) -> Result<Response<RenewMountResponse>, Status> {
        let r = req.into_inner();
        let now = Instant::now();
        let epoch = self
            .lock()
            .get_volume(&r.volume, now)
            .map_err(status)?
            .epoch;
        let mut mounts = self.lock_mounts();
        let lease_ms = mounts.lease().as_millis() as u64;
        let resp = match mounts.renew(&r.volume, r.mount_id, r.replay_lsn, &r.open_inodes, now) {
            Some(ren) => RenewMountResponse {
                ok: true,
                lease_ms,
                epoch,
                rw_notify_addr: ren.rw_notify_addr,
                min_ro_lsn: ren.min_ro_lsn,
                pinned_inodes: ren.pinned_inodes,
            },
            None => RenewMountResponse {
                ok: false,
                lease_ms,
                epoch,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn release_mount(
        &self,
        req: Request<ReleaseMountRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        self.lock_mounts().release(&r.volume, r.mount_id);
        info!(volume = %r.volume, mount = r.mount_id, "mount released");
        Ok(Response::new(Empty {}))
    }

    async fn list_mounts(
        &self,
        req: Request<VolumeName>,
    ) -> Result<Response<ListMountsResponse>, Status> {
        let name = req.into_inner().name;
        let now = Instant::now();
        self.lock().get_volume(&name, now).map_err(status)?;
        let mounts = self.lock_mounts().list(&name, now);
        Ok(Response::new(ListMountsResponse { mounts }))
    }

    async fn kv_heartbeat(
        &self,
        req: Request<KvHeartbeatRequest>,
    ) -> Result<Response<KvHeartbeatResponse>, Status> {
        let r = req.into_inner();
        if r.node_id.is_empty() || r.volume.is_empty() {
            return Err(Status::invalid_argument("volume and node_id are required"));
        }
        let now = Instant::now();
        let mut cluster = self.lock();
        let mut mounts = self.lock_mounts();
        let mut kv = self.lock_kv();
        let lease_ms = kv.lease().as_millis() as u64;
        match cluster.get_volume(&r.volume, now) {
            Ok(_) => {}
            Err(e @ CtrlError::VolumeNotFound(_)) => {
                return Ok(Response::new(KvHeartbeatResponse {
                    ok: false,
                    lease_ms,
                    message: e.to_string(),
                    ..Default::default()
                }))
            }
            Err(e) => return Err(status(e)),
        }
        let (ans, fences) = kv.heartbeat(&r, now);
        self.apply_fences(&mut cluster, &mut mounts, fences, now);
        self.sync_kv_metrics(&kv);
        Ok(Response::new(KvHeartbeatResponse {
            ok: true,
            lease_ms,
            command: ans.command as i32,
            generation: ans.generation,
            message: ans.message,
            fenced: ans.fenced,
        }))
    }

    async fn kv_topology(
        &self,
        req: Request<VolumeName>,
    ) -> Result<Response<KvTopologyResponse>, Status> {
        let name = req.into_inner().name;
        let now = Instant::now();
        let mut cluster = self.lock();
        cluster.get_volume(&name, now).map_err(status)?;
        let mut mounts = self.lock_mounts();
        let mut kv = self.lock_kv();
        let (topo, fences) = kv.topology(&name, now);
        self.apply_fences(&mut cluster, &mut mounts, fences, now);
        Ok(Response::new(topo))
    }

    async fn kv_promote(
        &self,
        req: Request<KvPromoteRequest>,
    ) -> Result<Response<KvTopologyResponse>, Status> {
        let r = req.into_inner();
        let now = Instant::now();
        let mut cluster = self.lock();
        cluster.get_volume(&r.volume, now).map_err(status)?;
        let mut mounts = self.lock_mounts();
        let mut kv = self.lock_kv();
        let (topo, fences) = kv
            .promote(&r.volume, &r.node_id, now)
            .map_err(|e| match e {
                PromoteError::UnknownNode { .. } => Status::not_found(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            })?;
        self.apply_fences(&mut cluster, &mut mounts, fences, now);
        info!(volume = %r.volume, target = %r.node_id, "kv switchover requested");
        Ok(Response::new(topo))
    }
}
