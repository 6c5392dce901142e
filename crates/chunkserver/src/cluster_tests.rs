//! In-process cluster test: three (then four) `run()` instances on
//! 127.0.0.1 with a tiny fake ctrl. Covers registration, CREATE, leader
//! election, replicated writes, linearizable reads, fencing, NotLeader
//! hints, membership change with a snapshot copy to a joining replica, clean
//! shutdown and restart from checkpoint + WAL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pikafs_proto::ctrlpb::copyset_command::Kind;
use pikafs_proto::ctrlpb::ctrl_server::{Ctrl, CtrlServer};
use pikafs_proto::ctrlpb::*;
use pikafs_proto::{ErrorCode, Request, Response};
use tokio_util::sync::CancellationToken;
use tonic::{Request as GReq, Response as GResp, Status};

use crate::snapshot::{PeerClient, PeerError};
use crate::Config;

#[derive(Default)]
struct FakeState {
    next_id: u64,
    servers: BTreeMap<u64, String>,
    states: BTreeMap<(u64, u64), CopysetState>,
    /// copyset → (members, servers that must JOIN rather than CREATE)
    want: BTreeMap<u64, (Vec<u64>, BTreeSet<u64>)>,
    epochs: Vec<VolumeEpoch>,
}

#[derive(Clone, Default)]
struct FakeCtrl(Arc<Mutex<FakeState>>);

fn unimpl<T>() -> Result<GResp<T>, Status> {
    Err(Status::unimplemented("fake ctrl"))
}

#[tonic::async_trait]
impl Ctrl for FakeCtrl {
    async fn register_server(
        &self,
        r: GReq<RegisterServerRequest>,
    ) -> Result<GResp<RegisterServerResponse>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().unwrap();
        s.next_id += 1;
        let id = s.next_id;
        s.servers.insert(id, r.addr);
        Ok(GResp::new(RegisterServerResponse { server_id: id }))
    }

    async fn heartbeat(
        &self,
        r: GReq<HeartbeatRequest>,
    ) -> Result<GResp<HeartbeatResponse>, Status> {
        let r = r.into_inner();
        let mut s = self.0.lock().unwrap();
        s.servers.insert(r.server_id, r.addr.clone());
        let me = r.server_id;
        let reported: BTreeSet<u64> = r.copysets.iter().map(|c| c.copyset_id).collect();
        for c in &r.copysets {
            s.states.insert((me, c.copyset_id), c.clone());
        }
        let peer = |id: u64| Peer {
            server_id: id,
            addr: s.servers.get(&id).cloned().unwrap_or_default(),
        };
        let mut commands = Vec::new();
        for (cs, (members, join)) in &s.want {
            let ms: Vec<Peer> = members.iter().map(|&m| peer(m)).collect();
            if members.contains(&me) && !reported.contains(cs) {
                let kind = if join.contains(&me) {
                    Kind::Join
                } else {
                    Kind::Create
                };
                commands.push(CopysetCommand {
                    copyset_id: *cs,
                    kind: kind as i32,
                    members: ms.clone(),
                });
            }
            if let Some(st) = r.copysets.iter().find(|c| c.copyset_id == *cs) {
                let mut v = st.voters.clone();
                v.sort_unstable();
                if st.role == Role::Leader as i32 && v != *members {
                    commands.push(CopysetCommand {
                        copyset_id: *cs,
                        kind: Kind::SetMembers as i32,
                        members: ms,
                    });
                }
            }
        }
        let peers = s.servers.keys().map(|&id| peer(id)).collect();
        Ok(GResp::new(HeartbeatResponse {
            commands,
            peers,
            epochs: s.epochs.clone(),
        }))
    }

    async fn create_volume(
        &self,
        _: GReq<CreateVolumeRequest>,
    ) -> Result<GResp<VolumeInfo>, Status> {
        unimpl()
    }
    async fn grow_volume(&self, _: GReq<GrowVolumeRequest>) -> Result<GResp<VolumeInfo>, Status> {
        unimpl()
    }
    async fn delete_volume(&self, _: GReq<VolumeName>) -> Result<GResp<Empty>, Status> {
        unimpl()
    }
    async fn list_volumes(&self, _: GReq<Empty>) -> Result<GResp<ListVolumesResponse>, Status> {
        unimpl()
    }
    async fn get_volume(&self, _: GReq<VolumeName>) -> Result<GResp<VolumeInfo>, Status> {
        unimpl()
    }
    async fn bump_epoch(&self, _: GReq<VolumeName>) -> Result<GResp<VolumeInfo>, Status> {
        unimpl()
    }
    async fn cluster_status(&self, _: GReq<Empty>) -> Result<GResp<ClusterStatusResponse>, Status> {
        unimpl()
    }
    async fn acquire_mount(
        &self,
        _: GReq<AcquireMountRequest>,
    ) -> Result<GResp<AcquireMountResponse>, Status> {
        unimpl()
    }
    async fn renew_mount(
        &self,
        _: GReq<RenewMountRequest>,
    ) -> Result<GResp<RenewMountResponse>, Status> {
        unimpl()
    }
    async fn release_mount(&self, _: GReq<ReleaseMountRequest>) -> Result<GResp<Empty>, Status> {
        unimpl()
    }
    async fn list_mounts(&self, _: GReq<VolumeName>) -> Result<GResp<ListMountsResponse>, Status> {
        unimpl()
    }
    async fn kv_heartbeat(
        &self,
        _: GReq<KvHeartbeatRequest>,
    ) -> Result<GResp<KvHeartbeatResponse>, Status> {
        unimpl()
    }
    async fn kv_topology(&self, _: GReq<VolumeName>) -> Result<GResp<KvTopologyResponse>, Status> {
        unimpl()
    }
    async fn kv_promote(
        &self,
        _: GReq<KvPromoteRequest>,
    ) -> Result<GResp<KvTopologyResponse>, Status> {
        unimpl()
    }
}

async fn start_ctrl(ctrl: FakeCtrl) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CtrlServer::new(ctrl))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

struct Node {
    dir: std::path::PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_node(dir: &std::path::Path, ctrl: &str) -> Node {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        ctrl: ctrl.to_string(),
        heartbeat_interval: Duration::from_millis(50),
        raft_tick: Duration::from_millis(20),
        capacity_bytes: 0,
        checkpoint_wal_bytes: 1 << 20,
        ..Config::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(crate::run(config, cancel.clone()));
    Node {
        dir: dir.to_path_buf(),
        cancel,
        task,
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leader_of(ctrl: &FakeCtrl, cs: u64, voters: &[u64]) -> Option<(u64, String)> {
    let s = ctrl.0.lock().unwrap();
    s.states
        .iter()
        .filter(|((_, c), st)| *c == cs && st.role == Role::Leader as i32)
        .find(|(_, st)| {
            let mut v = st.voters.clone();
            v.sort_unstable();
            v == voters
        })
        .map(|((srv, _), _)| (*srv, s.servers[srv].clone()))
}

async fn call(addr: &str, req: Request) -> Result<Response, PeerError> {
    PeerClient::connect(addr).await?.call(req).await
}

fn write(offset: u32, epoch: u64, data: &'static [u8]) -> Request {
    Request::Write {
        copyset: 1,
        volume: 7,
        epoch,
        chunk: 0,
        offset,
        data: Bytes::from_static(data),
    }
}

fn read(offset: u32, len: u32) -> Request {
    Request::Read {
        copyset: 1,
        volume: 7,
        chunk: 0,
        offset,
        len,
    }
}

/// Retries writes/reads across leader changes.
async fn call_leader(ctrl: &FakeCtrl, voters: &[u64], req: Request) -> Result<Response, PeerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((_, addr)) = leader_of(ctrl, 1, voters) {
            match call(&addr, req.clone()).await {
                Err(PeerError::Remote { code, .. }) if code.is_retryable() => {}
                Err(PeerError::Io { .. }) => {}
                other => return other,
            }
        }
        assert!(Instant::now() < deadline, "no leader answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_write_read_fence_join_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let ctrl = FakeCtrl::default();
    ctrl.0
        .lock()
        .unwrap()
        .want
        .insert(1, (vec![1, 2, 3], BTreeSet::new()));
    let endpoint = start_ctrl(ctrl.clone()).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let d = tmp.path().join(format!("n{i}"));
        nodes.push(start_node(&d, &endpoint));
        // Register one at a time so ids follow directory order.
        wait_for("registration", || {
            (ctrl.0.lock().unwrap().servers.len() == i + 1).then_some(())
        })
        .await;
    }
    let (leader, leader_addr) = wait_for("a leader", || leader_of(&ctrl, 1, &[1, 2, 3])).await;

    // Replicated write and linearizable read back, at unaligned offsets.
    let r = call_leader(&ctrl, &[1, 2, 3], write(4090, 3, b"hello, pikafs")).await;
    assert_eq!(r.unwrap(), Response::Ok);
    let r = call_leader(&ctrl, &[1, 2, 3], read(4090, 13))
        .await
        .unwrap();
    assert_eq!(r, Response::Data(Bytes::from_static(b"hello, pikafs")));
    let r = call_leader(&ctrl, &[1, 2, 3], read(0, 16)).await.unwrap();
    assert_eq!(r, Response::Data(Bytes::from(vec![0u8; 16])));

    // Fencing: older epochs are rejected, a fence raises the epoch.
    match call_leader(&ctrl, &[1, 2, 3], write(0, 2, b"zombie")).await {
        Err(PeerError::Remote {
            code: ErrorCode::StaleEpoch,
            ..
        }) => {}
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    let fence = Request::Fence {
        copyset: 1,
        volume: 7,
        epoch: 5,
    };
    assert_eq!(
        call_leader(&ctrl, &[1, 2, 3], fence).await.unwrap(),
        Response::Ok
    );
    match call_leader(&ctrl, &[1, 2, 3], write(0, 3, b"old writer")).await {
        Err(PeerError::Remote {
            code: ErrorCode::StaleEpoch,
            ..
        }) => {}
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    // Epochs from ctrl make leaders fence on their own.
    ctrl.0.lock().unwrap().epochs = vec![VolumeEpoch {
        volume_id: 7,
        epoch: 6,
    }];
    wait_for("ctrl epoch fence", || {
        let rt = tokio::runtime::Handle::current();
        let c = ctrl.clone();
        let r =
            std::thread::spawn(move || rt.block_on(call_leader(&c, &[1, 2, 3], write(0, 5, b"x"))))
                .join()
                .unwrap();
        matches!(
            r,
            Err(PeerError::Remote {
                code: ErrorCode::StaleEpoch,
                ..
            })
        )
        .then_some(())
    })
    .await;
    assert_eq!(
        call_leader(&ctrl, &[1, 2, 3], write(8192, 6, b"epoch six"))
            .await
            .unwrap(),
        Response::Ok
    );

    // WriteV: extents applied together; a stale epoch or one extent
    // outside the chunk writes none of them.
    let writev = |epoch: u64, extents: &[(u32, &'static [u8])]| Request::WriteV {
        copyset: 1,
        volume: 7,
        epoch,
        chunk: 0,
        extents: extents
            .iter()
            .map(|(off, d)| (*off, Bytes::from_static(d)))
            .collect(),
    };
    let r = call_leader(
        &ctrl,
        &[1, 2, 3],
        writev(6, &[(20000, b"head"), (16384, b"ring")]),
    )
    .await;
    assert_eq!(r.unwrap(), Response::Ok);
    let r = call_leader(&ctrl, &[1, 2, 3], read(16384, 3620))
        .await
        .unwrap();
    let mut want = vec![0u8; 3620];
    want[..4].copy_from_slice(b"ring");
    want[3616..].copy_from_slice(b"head");
    assert_eq!(r, Response::Data(Bytes::from(want.clone())));
    let r = call_leader(&ctrl, &[1, 2, 3], writev(5, &[(16384, b"ZOMB")])).await;
    assert!(
        matches!(
            r,
            Err(PeerError::Remote {
                code: ErrorCode::StaleEpoch,
                ..
            })
        ),
        "{r:?}"
    );
    let r = call_leader(
        &ctrl,
        &[1, 2, 3],
        writev(6, &[(16384, b"XXXX"), (u32::MAX - 3, b"too far")]),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(PeerError::Remote {
                code: ErrorCode::OutOfRange,
                ..
            })
        ),
        "{r:?}"
    );
    let r = call_leader(&ctrl, &[1, 2, 3], read(16384, 3620))
        .await
        .unwrap();
    assert_eq!(
        r,
        Response::Data(Bytes::from(want)),
        "nothing of the refused WriteVs landed"
    );

    // A corrupt sector on the leader is repaired from a follower whose copy
    // matches the leader's CRC; the read returns the right bytes.
    {
        let (leader_now, _) = wait_for("a leader", || leader_of(&ctrl, 1, &[1, 2, 3])).await;
        let dat = nodes[(leader_now - 1) as usize]
            .dir
            .join("copysets/1/7_0.dat");
        let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"X", 4095).unwrap();
        let r = call_leader(&ctrl, &[1, 2, 3], read(4090, 13))
            .await
            .unwrap();
        assert_eq!(r, Response::Data(Bytes::from_static(b"hello, pikafs")));
    }

    // A follower answers NotLeader with the leader's id.
    let follower_addr = {
        let s = ctrl.0.lock().unwrap();
        s.servers
            .iter()
            .find(|(id, _)| **id != leader && **id <= 3)
            .map(|(_, a)| a.clone())
            .unwrap()
    };
    match call(&follower_addr, read(0, 1)).await {
        Err(PeerError::Remote {
            code: ErrorCode::NotLeader,
            ..
        }) => {}
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // Unknown copysets and bad ranges.
    let r = call(&leader_addr, Request::ListChunks { copyset: 99 }).await;
    assert!(
        matches!(
            r,
            Err(PeerError::Remote {
                code: ErrorCode::NoSuchCopyset,
                ..
            })
        ),
        "{r:?}"
    );
    let r = call(&leader_addr, write(u32::MAX - 3, 6, b"too far")).await;
    assert!(
        matches!(
            r,
            Err(PeerError::Remote {
                code: ErrorCode::OutOfRange,
                ..
            })
        ),
        "{r:?}"
    );

    // Replace server 3 by a new server 4: JOIN + SET_MEMBERS, snapshot copy.
    let d4 = tmp.path().join("n3");
    nodes.push(start_node(&d4, &endpoint));
    wait_for("registration of 4", || {
        ctrl.0
            .lock()
            .unwrap()
            .servers
            .contains_key(&4)
            .then_some(())
    })
    .await;
    ctrl.0
        .lock()
        .unwrap()
        .want
        .insert(1, (vec![1, 2, 4], [4].into_iter().collect()));
    wait_for("new configuration", || leader_of(&ctrl, 1, &[1, 2, 4])).await;
    let addr4 = ctrl.0.lock().unwrap().servers[&4].clone();
    let local = Request::ReadLocal {
        copyset: 1,
        volume: 7,
        chunk: 0,
        offset: 4090,
        len: 13,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Response::Data(d)) = call(&addr4, local.clone()).await {
            if d.as_ref() == b"hello, pikafs" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "joined replica never got the data"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes after the join reach the new replica through the log, once the
    // snapshot copy is done and installed.
    assert_eq!(
        call_leader(&ctrl, &[1, 2, 4], write(100, 6, b"after join"))
            .await
            .unwrap(),
        Response::Ok
    );
    let after = Request::ReadLocal {
        copyset: 1,
        volume: 7,
        chunk: 0,
        offset: 100,
        len: 10,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Response::Data(d)) = call(&addr4, after.clone()).await {
            if d.as_ref() == b"after join" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "joined replica never applied the log after its snapshot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied4 = wait_for("replica 4 applied", || {
        let s = ctrl.0.lock().unwrap();
        s.states
            .get(&(4, 1))
            .map(|st| st.applied_index)
            .filter(|a| *a > 0)
    })
    .await;
    assert!(applied4 > crate::raftstore::BOOTSTRAP_INDEX);

    // Clean shutdown of everything, then restart 1, 2, 4 from disk.
    for n in &nodes {
        n.cancel.cancel();
    }
    let mut dirs = Vec::new();
    for n in nodes.drain(..) {
        n.task.await.unwrap().unwrap();
        dirs.push(n.dir);
    }
    ctrl.0.lock().unwrap().states.clear();
    for i in [0, 1, 3] {
        nodes.push(start_node(&dirs[i], &endpoint));
    }
    let r = call_leader(&ctrl, &[1, 2, 4], read(4090, 13))
        .await
        .unwrap();
    assert_eq!(r, Response::Data(Bytes::from_static(b"hello, pikafs")));
    let r = call_leader(&ctrl, &[1, 2, 4], read(100, 10)).await.unwrap();
    assert_eq!(r, Response::Data(Bytes::from_static(b"after join")));
    let r = call_leader(&ctrl, &[1, 2, 4], read(8192, 9)).await.unwrap();
    assert_eq!(r, Response::Data(Bytes::from_static(b"epoch six")));
    for n in &nodes {
        n.cancel.cancel();
    }
    for n in nodes {
        n.task.await.unwrap().unwrap();
    }
}
