//! The `Ctrl` gRPC service: decodes requests, runs them on the [`Cluster`]
//! under its lock, encodes answers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pikafs_proto::ctrlpb::ctrl_server::Ctrl;
use pikafs_proto::ctrlpb::{
    AcquireMountRequest, AcquireMountResponse, ClusterStatusResponse, CreateVolumeRequest, Empty,
    GrowVolumeRequest, HeartbeatRequest, HeartbeatResponse, KvHeartbeatRequest,
    KvHeartbeatResponse, KvPromoteRequest, KvTopologyResponse, ListMountsResponse,
    ListVolumesResponse, RegisterServerRequest, RegisterServerResponse, ReleaseMountRequest,
    RenewMountRequest, RenewMountResponse, VolumeInfo, VolumeName,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::cluster::Cluster;
use crate::error::CtrlError;
use crate::mounts::MountTable;

/// Shared handle to the cluster map.
#[derive(Clone)]
pub struct CtrlService {
    cluster: Arc<Mutex<Cluster>>,
    // Lock order: `cluster` before `mounts`, so an RW grant can bump the
    // epoch durably and record the lease atomically.
    mounts: Arc<Mutex<MountTable>>,
}

impl CtrlService {
    pub fn new(cluster: Arc<Mutex<Cluster>>, mount_lease: std::time::Duration) -> Self {
        CtrlService {
            cluster,
            mounts: Arc::new(Mutex::new(MountTable::new(mount_lease))),
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

    // kv-node leases and failover: stubs until the kv registry lands.
    async fn kv_heartbeat(
        &self,
        _req: Request<KvHeartbeatRequest>,
    ) -> Result<Response<KvHeartbeatResponse>, Status> {
        Err(Status::unimplemented("kv heartbeats"))
    }

    async fn kv_topology(
        &self,
        _req: Request<VolumeName>,
    ) -> Result<Response<KvTopologyResponse>, Status> {
        Err(Status::unimplemented("kv topology"))
    }

    async fn kv_promote(
        &self,
        _req: Request<KvPromoteRequest>,
    ) -> Result<Response<KvTopologyResponse>, Status> {
        Err(Status::unimplemented("kv promote"))
    }
}
