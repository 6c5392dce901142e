//! The topology from ctrl: `pikafs proxy --volume V` follows `KvTopology`.
//!
//! The kv nodes run on a local dir; the test heartbeats for them to ctrl
//! (`KvHeartbeat` with their RESP addresses), which is all ctrl knows of a
//! kv node. That keeps the test to the proxy's side of the contract.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{KvHeartbeatRequest, KvRole};
use pikafs_testkit::{wait_for, Cluster, ClusterOptions};
use redis::Value;

use crate::common::{KvNode, ProxyNode};

const VOL: &str = "proxyvol";

type Shared<T> = Arc<std::sync::Mutex<T>>;

async fn topology(c: &mut redis::aio::MultiplexedConnection) -> (Option<String>, Vec<String>) {
    let v: Value = redis::cmd("PROXY")
        .arg("TOPOLOGY")
        .query_async(c)
        .await
        .expect("PROXY TOPOLOGY");
    let Value::Array(items) = v else {
        panic!("PROXY TOPOLOGY: {v:?}")
    };
    let rw: Option<String> = redis::from_redis_value(&items[1]).expect("rw");
    let ros: Vec<String> = redis::from_redis_value(&items[2]).expect("ros");
    (rw, ros)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_the_kv_topology_from_ctrl() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    cluster.create_volume(VOL, "1GiB").await.expect("volume");
    let tmp = tempfile::tempdir().expect("tempdir");
    let rw = KvNode::start(tmp.path(), "rw", &[]).await;
    let ro1 = KvNode::start(tmp.path(), "ro", &[]).await;
    let ro2 = KvNode::start(tmp.path(), "ro", &[]).await;

    let live: Shared<Vec<(String, KvRole)>> = Arc::new(std::sync::Mutex::new(vec![
        (rw.addr(), KvRole::Rw),
        (ro1.addr(), KvRole::Ro),
        (ro2.addr(), KvRole::Ro),
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let (live, stop, url) = (live.clone(), stop.clone(), cluster.ctrl_url());
        tokio::spawn(async move {
            let mut c = CtrlClient::connect(url).await.expect("connect ctrl");
            while !stop.load(Ordering::Relaxed) {
                let nodes = live.lock().expect("lock").clone();
                for (addr, role) in nodes {
                    let r = c
                        .kv_heartbeat(KvHeartbeatRequest {
                            volume: VOL.into(),
                            node_id: addr.clone(),
                            addr,
                            role: role as i32,
                            ..Default::default()
                        })
                        .await
                        .expect("kv heartbeat")
                        .into_inner();
                    assert!(r.ok, "heartbeat refused: {}", r.message);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let url = cluster.ctrl_url();
    let proxy = ProxyNode::start(tmp.path(), None, &[], &["--volume", VOL, "--ctrl", &url]).await;
    let mut c = proxy.conn().await;
    let want_ros = {
        let mut v = vec![ro1.addr(), ro2.addr()];
        v.sort();
        v
    };
    wait_for("proxy learns the topology", Duration::from_secs(20), || {
        let mut c = c.clone();
        let (rw, want_ros) = (rw.addr(), want_ros.clone());
        async move {
            let (r, mut ros) = topology(&mut c).await;
            ros.sort();
            (r.as_deref() == Some(rw.as_str()) && ros == want_ros).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; proxy log:\n{}", proxy.log()));

    // Writes reach the RW node; reads spread over both RO nodes.
    let _: () = redis::cmd("SET")
        .arg("ctrl:k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("SET");
    wait_for("read through an RO node", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg("ctrl:k")
                .query_async(&mut c)
                .await
                .ok()?;
            (v.as_deref() == Some("v")).then_some(())
        }
    })
    .await
    .expect("value visible through the proxy");
    let before = (
        ro1.commands_processed().await,
        ro2.commands_processed().await,
    );
    for i in 0..200 {
        let _: Option<String> = redis::cmd("GET")
            .arg(format!("ctrl:{i}"))
            .query_async(&mut c)
            .await
            .expect("GET");
    }
    let after = (
        ro1.commands_processed().await,
        ro2.commands_processed().await,
    );
    assert!(
        after.0 - before.0 > 40 && after.1 - before.1 > 40,
        "reads not spread: {before:?} -> {after:?}"
    );

    // ro2 stops heartbeating: its lease lapses, ctrl drops it, the proxy
    // follows and stops sending it reads.
    live.lock().expect("lock").retain(|(a, _)| *a != ro2.addr());
    wait_for(
        "proxy drops the silent RO node",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            let ro1 = ro1.addr();
            async move {
                let (_, ros) = topology(&mut c).await;
                (ros == vec![ro1.clone()]).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; proxy log:\n{}", proxy.log()));
    for i in 0..50 {
        let r: String = redis::cmd("PROXY")
            .arg("ROUTE")
            .arg(format!("ctrl:{i}"))
            .query_async(&mut c)
            .await
            .expect("ROUTE");
        assert_eq!(r, ro1.addr());
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stops")
        .expect("agent task");
}
