//! Replication and failover: SIGKILL a leader mid-workload, SIGKILL the
//! whole cluster, lose a server for good.

use std::time::{Duration, Instant};

use pikafs_proto::{Request, Response, CHUNK_SIZE};
use pikafs_testkit::{wait_for, Cluster, ClusterOptions, RawConn};
use pikafs_volume::{OpenOptions, VolumeClient};

use crate::workload::{Workload, BLOCK};

pub async fn open(cluster: &Cluster, name: &str) -> VolumeClient {
    let opts = OpenOptions {
        retry_deadline: Duration::from_secs(30),
        ..OpenOptions::default()
    };
    VolumeClient::open(&cluster.ctrl_url(), name, opts)
        .await
        .unwrap_or_else(|e| panic!("open volume {name}: {e}\n{}", cluster.logs(30)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_workload_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let wl = Workload::new(512, client.size());

    let writers = wl.spawn_writers(&client, 8);
    let verifier = wl.spawn_verifier(&client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        wl.acked_count() > 0,
        "no write acknowledged before the kill\n{}",
        cluster.logs(40)
    );

    // Kill a server that leads at least one copyset.
    let leaders = cluster.leaders().await.unwrap();
    let victim = leaders
        .iter()
        .find_map(|(_, l)| *l)
        .expect("some copyset has a known leader");
    cluster.kill_server(victim);
    let killed_at = Instant::now();
    let acked_at_kill = wl.acked_count();

    // IO must go on with 2 of 3 replicas.
    wait_for(
        "writes acknowledged after the kill",
        Duration::from_secs(30),
        || {
            let wl = wl.clone();
            async move { (wl.acked_count() > acked_at_kill + 200).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(40)));
    eprintln!(
        "writes resumed {:?} after killing cs{victim}",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    wl.stop();
    for w in writers {
        w.await.unwrap();
    }
    let read_errors = verifier.await.unwrap().expect("verifier saw wrong data");
    eprintln!(
        "acked={} failed={} verified_reads={} read_errors={read_errors}",
        wl.acked_count(),
        wl.failed.load(std::sync::atomic::Ordering::SeqCst),
        wl.verified_reads.load(std::sync::atomic::Ordering::SeqCst)
    );
    wl.verify_all(&client).await.unwrap();

    // The killed server comes back, catches up, and the data still verifies.
    cluster.start_server(victim).unwrap();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    wl.verify_all(&client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_cluster_sigkill_and_restart_keeps_acknowledged_data() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let wl = Workload::new(256, client.size());
    let writers = wl.spawn_writers(&client, 8);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Kill everything while writes are in flight.
    for i in 0..cluster.server_count() {
        cluster.kill_server(i);
    }
    cluster.kill_ctrl();
    wl.stop();
    for w in writers {
        w.await.unwrap();
    }
    let acked = wl.acked_count();
    assert!(acked > 50, "too few writes acknowledged ({acked})");
    drop(client);

    cluster.start_ctrl().unwrap();
    for i in 0..cluster.server_count() {
        cluster.start_server(i).unwrap();
    }
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    let client = open(&cluster, "v").await;
    wl.verify_all(&client)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs(40)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanently_lost_server_is_replaced_and_data_verifies() {
    let opts = ClusterOptions {
        servers: 4,
        server_lease: Duration::from_secs(3),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(opts).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let wl = Workload::new(256, client.size());
    for k in 0..wl.slots.len() {
        assert!(wl.write_slot(&client, k).await, "initial write of slot {k}");
    }

    let before = cluster.status().await.unwrap();
    let victim_id = before.servers[0].server_id;
    let victim = cluster.server_index(&before.servers[0].addr).unwrap();
    cluster.kill_server(victim);

    // Keep writing while ctrl notices and rebuilds.
    let writers = wl.spawn_writers(&client, 4);
    let st = wait_for(
        "every copyset rebuilt on live servers",
        Duration::from_secs(90),
        || async {
            let st = cluster.status().await.ok()?;
            let ok = st.copysets.iter().all(|c| {
                c.healthy && !c.members.contains(&victim_id) && !c.voters.contains(&victim_id)
            });
            ok.then_some(st)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(40)));
    wl.stop();
    for w in writers {
        w.await.unwrap();
    }
    wl.verify_all(&client).await.unwrap();

    // Every replica, including the new ones, holds the same bytes: compare
    // each slot's block on every member with ReadLocal (no raft, CRC
    // checked), allowing followers a bounded time to apply.
    let info = cluster.status().await.unwrap();
    let vol = info.volumes.iter().find(|v| v.name == "v").unwrap();
    for k in 0..wl.slots.len() {
        let off = wl.offset(k);
        let chunk = off / CHUNK_SIZE;
        let route = &vol.copysets[(chunk as usize) % vol.copysets.len()];
        let want = client.read(off, BLOCK).await.unwrap();
        for m in &route.members {
            let addr = st
                .servers
                .iter()
                .find(|s| s.server_id == m.server_id)
                .unwrap()
                .addr
                .clone();
            wait_for(
                &format!("slot {k} on server {}", m.server_id),
                Duration::from_secs(20),
                || {
                    let addr = addr.clone();
                    let want = want.clone();
                    async move {
                        let mut c = RawConn::connect(&addr).await.ok()?;
                        let r = c
                            .call(Request::ReadLocal {
                                copyset: route.copyset_id,
                                volume: vol.volume_id,
                                chunk,
                                offset: (off % CHUNK_SIZE) as u32,
                                len: BLOCK as u32,
                            })
                            .await
                            .ok()?;
                        matches!(r, Response::Data(d) if d == want).then_some(())
                    }
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(30)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn io_goes_on_with_ctrl_down_even_across_a_leader_failover() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let wl = Workload::new(256, client.size());
    let writers = wl.spawn_writers(&client, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // ctrl is off the IO path: routes are cached in the client and leaders
    // are found through NotLeader hints and the member list.
    let victim = cluster
        .leaders()
        .await
        .unwrap()
        .iter()
        .find_map(|(_, l)| *l)
        .expect("a known leader");
    cluster.kill_ctrl();
    let before = wl.acked_count();
    wait_for("writes with ctrl down", Duration::from_secs(20), || {
        let wl = wl.clone();
        async move { (wl.acked_count() > before + 100).then_some(()) }
    })
    .await
    .unwrap();

    // A leader dies while ctrl is still down: raft elects a new one and the
    // client finds it without ctrl.
    cluster.kill_server(victim);
    let before = wl.acked_count();
    wait_for(
        "writes after a failover with ctrl down",
        Duration::from_secs(30),
        || {
            let wl = wl.clone();
            async move { (wl.acked_count() > before + 100).then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs(30)));
    wl.stop();
    for w in writers {
        w.await.unwrap();
    }
    wl.verify_all(&client).await.unwrap();

    // Everything comes back and heals.
    cluster.start_ctrl().unwrap();
    cluster.start_server(victim).unwrap();
    cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    wl.verify_all(&client).await.unwrap();
}
