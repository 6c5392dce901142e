//! The `Ctrl` gRPC service: decodes requests, runs them on the [`Cluster`]
//! under its lock, encodes answers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use pikafs_proto::ctrlpb::ctrl_server::Ctrl;
use pikafs_proto::ctrlpb::{
    ClusterStatusResponse, CreateVolumeRequest, Empty, GrowVolumeRequest, HeartbeatRequest,
    HeartbeatResponse, ListVolumesResponse, RegisterServerRequest, RegisterServerResponse,
    VolumeInfo, VolumeName,
};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::cluster::Cluster;
use crate::error::CtrlError;

/// Shared handle to the cluster map.
#[derive(Clone)]
pub struct CtrlService {
    cluster: Arc<Mutex<Cluster>>,
}

impl CtrlService {
    pub fn new(cluster: Arc<Mutex<Cluster>>) -> Self {
        CtrlService { cluster }
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
        self.lock()
            .delete_volume(&req.into_inner().name)
            .map_err(status)?;
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
}
