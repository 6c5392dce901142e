//! The `Ctrl` service over real gRPC on 127.0.0.1, with fake chunkservers
//! that are just heartbeat calls from the test.

use std::net::SocketAddr;
use std::time::Duration;

use pikafs_ctrl::{connect, Config, CtrlClient};
use pikafs_proto::ctrlpb::copyset_command::Kind;
use pikafs_proto::ctrlpb::{
    AcquireMountRequest, CopysetCommand, CopysetState, CreateVolumeRequest, Empty,
    GrowVolumeRequest, HeartbeatRequest, KvCommand, KvHeartbeatRequest, KvPromoteRequest, KvRole,
    RegisterServerRequest, ReleaseMountRequest, RenewMountRequest, Role, VolumeName,
};
use pikafs_proto::{CHUNK_SIZE, MIN_VOLUME_SIZE};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

const LEASE: Duration = Duration::from_millis(500);
const MOUNT_LEASE: Duration = Duration::from_millis(800);
/// Bound on every wait for the ctrl to react.
const WAIT: Duration = Duration::from_secs(10);

struct Ctrl {
    addr: SocketAddr,
    metrics: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start(dir: &std::path::Path, copysets_per_server: u32) -> Ctrl {
    start_with_lease(dir, copysets_per_server, LEASE).await
}

async fn start_with_lease(
    dir: &std::path::Path,
    copysets_per_server: u32,
    lease: Duration,
) -> Ctrl {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = free_addr();
    let config = Config {
        listen: addr,
        metrics_listen: Some(metrics),
        data_dir: dir.to_path_buf(),
        server_lease: lease,
        copysets_per_server,
        check_interval: Duration::from_millis(50),
        mount_lease: MOUNT_LEASE,
        ..Config::default()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(pikafs_ctrl::run_with_listener(
        config,
        listener,
        stop.clone(),
    ));
    Ctrl {
        addr,
        metrics,
        stop,
        task,
    }
}

impl Ctrl {
    async fn client(&self) -> CtrlClient<Channel> {
        tokio::time::timeout(WAIT, connect(&self.addr.to_string()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("ctrl stops in time")
            .expect("ctrl task")
            .expect("ctrl returns Ok");
    }

    async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }
}

async fn register(c: &mut CtrlClient<Channel>, id: u64, addr: &str) -> u64 {
    c.register_server(RegisterServerRequest {
        server_id: id,
        addr: addr.into(),
        capacity_bytes: 1 << 40,
    })
    .await
    .unwrap()
    .into_inner()
    .server_id
}

async fn heartbeat(
    c: &mut CtrlClient<Channel>,
    id: u64,
    states: Vec<CopysetState>,
) -> Vec<CopysetCommand> {
    c.heartbeat(HeartbeatRequest {
        server_id: id,
        addr: format!("127.0.0.1:{}", 9000 + id),
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        copysets: states,
    })
    .await
    .unwrap()
    .into_inner()
    .commands
}

fn state(cs: u64, leader: u64, me: u64, voters: &[u64]) -> CopysetState {
    CopysetState {
        copyset_id: cs,
        role: if leader == me {
            Role::Leader
        } else {
            Role::Follower
        } as i32,
        term: 3,
        leader_id: leader,
        commit_index: 10,
        applied_index: 10,
        voters: voters.to_vec(),
        caught_up: voters.to_vec(),
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => s.code(),
    }
}

fn kinds(cmds: &[CopysetCommand]) -> Vec<(u64, Kind)> {
    cmds.iter().map(|c| (c.copyset_id, c.kind())).collect()
}

/// Registers three servers and waits until the check loop placed a copyset.
async fn three_servers(c: &mut CtrlClient<Channel>) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(register(c, 0, &format!("127.0.0.1:{}", 9000 + i)).await);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
        if !st.copysets.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no copyset placed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

#[tokio::test]
async fn registration_assigns_distinct_ids_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    let a = register(&mut c, 0, "127.0.0.1:9001").await;
    let b = register(&mut c, 0, "127.0.0.1:9002").await;
    assert_ne!(a, 0);
    assert_ne!(b, 0);
    assert_ne!(a, b);
    // Re-registration with a new address keeps the id and updates the book.
    assert_eq!(register(&mut c, a, "127.0.0.1:9101").await, a);
    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    let s = st.servers.iter().find(|s| s.server_id == a).unwrap();
    assert_eq!(s.addr, "127.0.0.1:9101");
    assert_eq!(st.servers.len(), 2);
    // An unknown server's heartbeat is refused so it re-registers.
    let err = c
        .heartbeat(HeartbeatRequest {
            server_id: 77,
            addr: "x:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // An empty address is refused.
    let err = c
        .register_server(RegisterServerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    drop(c);
    ctrl.stop().await;
}

#[tokio::test]
async fn three_servers_get_copysets_and_create_commands() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    let ids = three_servers(&mut c).await;
    // 3 servers * 6 / 3 = 6 copysets, each on the 3 distinct servers.
    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(st.copysets.len(), 6);
    for cs in &st.copysets {
        let mut m = cs.members.clone();
        m.sort_unstable();
        assert_eq!(m, ids);
        assert!(!cs.healthy);
    }
    for id in &ids {
        let resp = c
            .heartbeat(HeartbeatRequest {
                server_id: *id,
                addr: format!("127.0.0.1:{}", 9000 + id),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.commands.len(), 6);
        for cmd in &resp.commands {
            assert_eq!(cmd.kind(), Kind::Create);
            assert_eq!(cmd.members.len(), 3);
            assert!(cmd.members.iter().all(|p| !p.addr.is_empty()));
        }
        assert_eq!(resp.peers.len(), 3);
    }
    // Once reported, CREATE stops; a leader that reports all 3 voters makes
    // the copyset healthy.
    for id in &ids {
        let states = (1..=6).map(|cs| state(cs, ids[0], *id, &ids)).collect();
        assert!(heartbeat(&mut c, *id, states).await.is_empty());
    }
    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert!(st
        .copysets
        .iter()
        .all(|cs| cs.healthy && cs.leader_id == ids[0]));
    let leader = st.servers.iter().find(|s| s.server_id == ids[0]).unwrap();
    assert_eq!((leader.replicas, leader.leaders), (6, 6));
    let m = ctrl.scrape().await;
    assert!(m.contains("pikafs_ctrl_servers{state=\"up\"} 3"), "{m}");
    assert!(m.contains("pikafs_ctrl_heartbeats_total 6"), "{m}");
    drop(c);
    ctrl.stop().await;
}

#[tokio::test]
async fn volume_lifecycle_and_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    let create = |name: &str, size: u64| CreateVolumeRequest {
        name: name.into(),
        size_bytes: size,
    };
    let vn = |name: &str| VolumeName { name: name.into() };

    // Too few servers.
    register(&mut c, 0, "127.0.0.1:9001").await;
    let err = c
        .create_volume(create("v", MIN_VOLUME_SIZE))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "need 3 chunkservers up, have 1");
    register(&mut c, 0, "127.0.0.1:9002").await;
    register(&mut c, 0, "127.0.0.1:9003").await;

    let v = c
        .create_volume(create("v", 10 * CHUNK_SIZE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.name, "v");
    assert_ne!(v.volume_id, 0);
    assert_eq!(v.epoch, 1);
    assert_eq!(v.chunk_size, CHUNK_SIZE);
    assert!(!v.copysets.is_empty() && v.copysets.len() <= 16);
    assert!(v
        .copysets
        .windows(2)
        .all(|w| w[0].copyset_id < w[1].copyset_id));
    assert!(v
        .copysets
        .iter()
        .all(|r| r.members.len() == 3 && r.leader_id == 0));

    assert_eq!(
        code(c.create_volume(create("v", MIN_VOLUME_SIZE)).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(c.create_volume(create("w", MIN_VOLUME_SIZE - 4096)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.create_volume(create("w", MIN_VOLUME_SIZE + 1)).await),
        Code::InvalidArgument
    );
    assert_eq!(code(c.get_volume(vn("nope")).await), Code::NotFound);
    assert_eq!(code(c.delete_volume(vn("nope")).await), Code::NotFound);
    assert_eq!(code(c.bump_epoch(vn("nope")).await), Code::NotFound);
    assert_eq!(
        code(
            c.grow_volume(GrowVolumeRequest {
                name: "v".into(),
                new_size_bytes: 5 * CHUNK_SIZE,
            })
            .await
        ),
        Code::InvalidArgument
    );

    let grown = c
        .grow_volume(GrowVolumeRequest {
            name: "v".into(),
            new_size_bytes: 20 * CHUNK_SIZE,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.size_bytes, 20 * CHUNK_SIZE);
    assert_eq!(grown.epoch, 1);
    let ids: Vec<_> = grown.copysets.iter().map(|r| r.copyset_id).collect();
    let before: Vec<_> = v.copysets.iter().map(|r| r.copyset_id).collect();
    assert_eq!(ids, before, "growing must not move chunks");

    c.create_volume(create("w", MIN_VOLUME_SIZE)).await.unwrap();
    let list = c.list_volumes(Empty {}).await.unwrap().into_inner().volumes;
    let names: Vec<_> = list.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, vec!["v", "w"]);
    assert_ne!(list[0].volume_id, list[1].volume_id);

    // Heartbeats carry every volume's epoch.
    let resp = c
        .heartbeat(HeartbeatRequest {
            server_id: 1,
            addr: "127.0.0.1:9001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.epochs.len(), 2);

    let bumped = c.bump_epoch(vn("w")).await.unwrap().into_inner();
    assert_eq!(bumped.epoch, 2);
    assert_eq!(c.get_volume(vn("w")).await.unwrap().into_inner().epoch, 2);
    let m = ctrl.scrape().await;
    assert!(m.contains("pikafs_ctrl_epoch_bumps_total 1"), "{m}");

    c.delete_volume(vn("w")).await.unwrap();
    assert_eq!(code(c.get_volume(vn("w")).await), Code::NotFound);
    let info = c.get_volume(vn("v")).await.unwrap().into_inner();
    assert_eq!(info.size_bytes, 20 * CHUNK_SIZE);
    drop(c);
    ctrl.stop().await;
}

#[tokio::test]
async fn state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    let ids = three_servers(&mut c).await;
    let created = c
        .create_volume(CreateVolumeRequest {
            name: "v".into(),
            size_bytes: MIN_VOLUME_SIZE,
        })
        .await
        .unwrap()
        .into_inner();
    let bumped = c
        .bump_epoch(VolumeName { name: "v".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bumped.epoch, 2);
    let before = c.cluster_status(Empty {}).await.unwrap().into_inner();
    drop(c);
    ctrl.stop().await;

    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    let after = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(after.volumes, before.volumes);
    let v = c
        .get_volume(VolumeName { name: "v".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.epoch, 2);
    assert_eq!(v.volume_id, created.volume_id);
    let members = |s: &pikafs_proto::ctrlpb::ClusterStatusResponse| {
        s.copysets
            .iter()
            .map(|c| (c.copyset_id, c.members.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(members(&after), members(&before));
    let servers: Vec<_> = after
        .servers
        .iter()
        .map(|s| (s.server_id, s.addr.clone()))
        .collect();
    let servers_before: Vec<_> = before
        .servers
        .iter()
        .map(|s| (s.server_id, s.addr.clone()))
        .collect();
    assert_eq!(servers, servers_before);
    // A fresh grace period: nobody is down right after the restart.
    assert!(after.servers.iter().all(|s| s.up));
    // Ids keep counting after the restart.
    let d = register(&mut c, 0, "127.0.0.1:9004").await;
    assert!(ids.iter().all(|i| *i < d));
    let w = c
        .create_volume(CreateVolumeRequest {
            name: "w".into(),
            size_bytes: MIN_VOLUME_SIZE,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(w.volume_id > v.volume_id);
    drop(c);
    ctrl.stop().await;
}

#[tokio::test]
async fn dead_member_is_replaced_without_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    // 1 per server: a single copyset on the first three servers. A longer
    // lease so a loaded test machine does not make the live servers look
    // dead between two of their heartbeats.
    let ctrl = start_with_lease(dir.path(), 1, Duration::from_millis(1500)).await;
    let mut c = ctrl.client().await;
    let ids = three_servers(&mut c).await;
    let spare = register(&mut c, 0, "127.0.0.1:9004").await;
    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(st.copysets.len(), 1);
    let cs = st.copysets[0].copyset_id;
    let old = ids.clone();
    let (leader, follower, victim) = (ids[0], ids[1], ids[2]);
    for id in &ids {
        heartbeat(&mut c, *id, vec![state(cs, leader, *id, &old)]).await;
    }

    // The victim goes silent; the others keep heartbeating until the spare
    // is told to JOIN.
    let deadline = tokio::time::Instant::now() + WAIT;
    let join = loop {
        heartbeat(&mut c, leader, vec![state(cs, leader, leader, &old)]).await;
        heartbeat(&mut c, follower, vec![state(cs, leader, follower, &old)]).await;
        let cmds = heartbeat(&mut c, spare, vec![]).await;
        if !cmds.is_empty() {
            break cmds;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no JOIN for the spare"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(kinds(&join), vec![(cs, Kind::Join)]);
    let mut target: Vec<u64> = join[0].members.iter().map(|p| p.server_id).collect();
    target.sort_unstable();
    let mut want = vec![leader, follower, spare];
    want.sort_unstable();
    assert_eq!(target, want);

    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert!(
        !st.servers
            .iter()
            .find(|s| s.server_id == victim)
            .unwrap()
            .up
    );
    let mut members = st.copysets[0].members.clone();
    members.sort_unstable();
    assert_eq!(members, want);

    // The leader is told to change the membership.
    let cmds = heartbeat(&mut c, leader, vec![state(cs, leader, leader, &old)]).await;
    assert_eq!(kinds(&cmds), vec![(cs, Kind::SetMembers)]);
    assert_eq!(cmds[0].members.len(), 3);

    // The victim comes back before the removal is applied: nothing for it.
    assert!(
        heartbeat(&mut c, victim, vec![state(cs, leader, victim, &old)])
            .await
            .is_empty()
    );
    // The leader reports the new voters; the victim is now told to DESTROY.
    let new = vec![leader, follower, spare];
    assert!(
        heartbeat(&mut c, leader, vec![state(cs, leader, leader, &new)])
            .await
            .is_empty()
    );
    heartbeat(&mut c, spare, vec![state(cs, leader, spare, &new)]).await;
    heartbeat(&mut c, follower, vec![state(cs, leader, follower, &new)]).await;
    let cmds = heartbeat(&mut c, victim, vec![state(cs, leader, victim, &old)]).await;
    assert_eq!(kinds(&cmds), vec![(cs, Kind::Destroy)]);

    let st = c.cluster_status(Empty {}).await.unwrap().into_inner();
    assert!(st.copysets[0].healthy, "{:?}", st.copysets[0]);
    let m = ctrl.scrape().await;
    assert!(m.contains("pikafs_ctrl_replacements_total 1"), "{m}");
    drop(c);
    ctrl.stop().await;
}

#[tokio::test]
async fn shutdown_returns_with_clients_still_connected() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 6).await;
    let mut c = ctrl.client().await;
    register(&mut c, 0, "127.0.0.1:9001").await;
    // `stop` bounds the wait: a connected client must not hold ctrl up.
    ctrl.stop().await;
    // And the store is released: a new ctrl opens the same directory.
    let ctrl = start(dir.path(), 6).await;
    let mut c2 = ctrl.client().await;
    let st = c2.cluster_status(Empty {}).await.unwrap().into_inner();
    assert_eq!(st.servers.len(), 1);
    drop((c, c2));
    ctrl.stop().await;
}

#[tokio::test]
async fn mount_leases_fence_and_gate_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 3).await;
    let mut c = ctrl.client().await;
    three_servers(&mut c).await;
    let v = c
        .create_volume(CreateVolumeRequest {
            name: "v".into(),
            size_bytes: 4 * CHUNK_SIZE,
        })
        .await
        .unwrap()
        .into_inner();
    let acquire = |rw: bool, host: &str| AcquireMountRequest {
        volume: "v".into(),
        rw,
        host: host.into(),
        notify_addr: if rw {
            format!("{host}:1")
        } else {
            String::new()
        },
    };
    let renew = |id: u64, lsn: u64, open: Vec<u64>| RenewMountRequest {
        volume: "v".into(),
        mount_id: id,
        replay_lsn: lsn,
        open_inodes: open,
    };

    // The RW grant bumps the epoch before the writer gets it.
    let a = c
        .acquire_mount(acquire(true, "a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.epoch, v.epoch + 1);
    assert_eq!(a.volume.as_ref().unwrap().epoch, a.epoch);
    // A second writer is refused while the lease is live, with a clear error.
    let err = c.acquire_mount(acquire(true, "b")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("read-write"), "{}", err.message());
    // Unknown volume.
    let mut bad = acquire(false, "x");
    bad.volume = "nope".into();
    assert_eq!(
        c.acquire_mount(bad).await.unwrap_err().code(),
        Code::NotFound
    );

    // RO mounts learn the writer's notify address and publish positions.
    let r1 = c
        .acquire_mount(acquire(false, "r1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r1.rw_notify_addr, "a:1");
    assert_eq!(r1.epoch, a.epoch, "RO mounts do not bump the epoch");
    let r2 = c
        .acquire_mount(acquire(false, "r2"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        c.renew_mount(renew(r1.mount_id, 40, vec![5, 6]))
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    assert!(
        c.renew_mount(renew(r2.mount_id, 30, vec![6, 7]))
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    let ra = c
        .renew_mount(renew(a.mount_id, 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(ra.ok);
    assert_eq!(ra.min_ro_lsn, 30);
    assert_eq!(ra.pinned_inodes, vec![5, 6, 7]);
    let listed = c
        .list_mounts(VolumeName { name: "v".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mounts.len(), 3);
    // A mounted volume cannot be deleted.
    let err = c
        .delete_volume(VolumeName { name: "v".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // r2 releases cleanly; r1 dies silently. Keep the writer renewing until
    // r1's lease lapses: then nothing pins.
    c.release_mount(ReleaseMountRequest {
        volume: "v".into(),
        mount_id: r2.mount_id,
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ra = c
            .renew_mount(renew(a.mount_id, 0, vec![]))
            .await
            .unwrap()
            .into_inner();
        assert!(ra.ok, "the renewing writer keeps its lease");
        if ra.min_ro_lsn == u64::MAX && ra.pinned_inodes.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "dead RO still pins");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The writer goes silent: after its lease a new writer gets the volume
    // with a higher epoch, and the old one learns it has lost.
    let deadline = tokio::time::Instant::now() + WAIT;
    let b = loop {
        match c.acquire_mount(acquire(true, "b")).await {
            Ok(b) => break b.into_inner(),
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition),
        }
        assert!(tokio::time::Instant::now() < deadline, "lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(b.epoch, a.epoch + 1);
    let old = c
        .renew_mount(renew(a.mount_id, 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(!old.ok);
    assert_eq!(old.epoch, b.epoch);
    ctrl.stop().await;
}

#[tokio::test]
async fn kv_lapse_fences_the_writer_and_promotes_an_ro_node() {
    let dir = tempfile::tempdir().unwrap();
    let ctrl = start(dir.path(), 3).await;
    let mut c = ctrl.client().await;
    three_servers(&mut c).await;
    c.create_volume(CreateVolumeRequest {
        name: "v".into(),
        size_bytes: 4 * CHUNK_SIZE,
    })
    .await
    .unwrap();
    let a = c
        .acquire_mount(AcquireMountRequest {
            volume: "v".into(),
            rw: true,
            host: "a".into(),
            notify_addr: "a:1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let hb = |node: &str, role: KvRole, mount: u64| KvHeartbeatRequest {
        volume: "v".into(),
        node_id: node.into(),
        addr: node.into(),
        role: role as i32,
        applied_seq: 5,
        lag_ms: 0,
        mount_id: mount,
        leaving: false,
    };
    let topo = |c: &mut CtrlClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.kv_topology(VolumeName { name: "v".into() })
                .await
                .unwrap()
                .into_inner()
        }
    };

    let mut bad = hb("x", KvRole::Ro, 0);
    bad.volume = "nope".into();
    assert!(!c.kv_heartbeat(bad).await.unwrap().into_inner().ok);
    let ra = c
        .kv_heartbeat(hb("a", KvRole::Rw, a.mount_id))
        .await
        .unwrap()
        .into_inner();
    assert!(ra.ok);
    assert_eq!(ra.command, KvCommand::None as i32);
    assert_eq!(ra.lease_ms, 2000);
    c.kv_heartbeat(hb("b", KvRole::Ro, 0)).await.unwrap();
    let t0 = topo(&mut c).await;
    assert_eq!(t0.nodes.len(), 2);
    assert_eq!(t0.nodes[0].role, KvRole::Rw as i32);

    // a stops heartbeating as a kv node while its fs mount keeps renewing;
    // b keeps renewing until it is told to promote.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let _ = c
            .renew_mount(RenewMountRequest {
                volume: "v".into(),
                mount_id: a.mount_id,
                ..Default::default()
            })
            .await
            .unwrap();
        let rb = c
            .kv_heartbeat(hb("b", KvRole::Ro, 0))
            .await
            .unwrap()
            .into_inner();
        if rb.command == KvCommand::Promote as i32 {
            break;
        }
        assert_eq!(rb.command, KvCommand::None as i32);
        assert!(tokio::time::Instant::now() < deadline, "no promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fence came first: a's mount lease is gone and the epoch moved.
    let old = c
        .renew_mount(RenewMountRequest {
            volume: "v".into(),
            mount_id: a.mount_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!old.ok, "the dead writer's mount lease was dropped");
    assert!(old.epoch > a.epoch);
    // So b mounts RW at once, then reports in.
    let bm = c
        .acquire_mount(AcquireMountRequest {
            volume: "v".into(),
            rw: true,
            host: "b".into(),
            notify_addr: "b:1".into(),
        })
        .await
        .expect("the new writer mounts without waiting")
        .into_inner();
    assert!(bm.epoch > old.epoch);
    for role in [KvRole::Promoting, KvRole::Rw] {
        let r = c
            .kv_heartbeat(hb("b", role, bm.mount_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.command, KvCommand::None as i32, "{role:?}");
    }
    let t1 = topo(&mut c).await;
    assert!(t1.generation > t0.generation);
    assert_eq!(t1.nodes.len(), 1);
    assert_eq!(t1.nodes[0].node_id, "b");
    assert_eq!(t1.nodes[0].role, KvRole::Rw as i32);

    // The old writer wakes up: fenced, told to step down, not listed.
    let z = c
        .kv_heartbeat(hb("a", KvRole::Rw, a.mount_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(z.command, KvCommand::StepDown as i32);
    assert!(z.fenced);
    assert_eq!(topo(&mut c).await.nodes.len(), 1);

    // Planned switchover needs a live RO node.
    let e = c
        .kv_promote(KvPromoteRequest {
            volume: "v".into(),
            node_id: "zz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .kv_promote(KvPromoteRequest {
            volume: "v".into(),
            node_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    let m = ctrl.scrape().await;
    assert!(m.contains("pikafs_ctrl_kv_fences_total 1"), "{m}");
    assert!(m.contains("pikafs_ctrl_kv_promotions_total 1"), "{m}");
    ctrl.stop().await;
}
