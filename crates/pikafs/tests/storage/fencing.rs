//! Epoch fencing: a writer whose epoch was superseded cannot write.

use std::time::Duration;

use pikafs_testkit::{wait_for, Cluster, ClusterOptions};
use pikafs_volume::{OpenOptions, VolumeClient, VolumeError};

async fn open_at(cluster: &Cluster, epoch: Option<u64>) -> VolumeClient {
    let opts = OpenOptions {
        epoch,
        retry_deadline: Duration::from_secs(20),
        ..OpenOptions::default()
    };
    VolumeClient::open(&cluster.ctrl_url(), "v", opts)
        .await
        .unwrap()
}

async fn bump(cluster: &Cluster) -> u64 {
    let out = cluster.cli(&["volume", "bump-epoch", "v"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_epoch_writes_are_rejected_everywhere() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let old = open_at(&cluster, None).await;
    let e1 = old.epoch();
    // Writes land in several chunks, so on several copysets.
    let offsets: Vec<u64> = (0..8).map(|i| i * (64 << 20) + 4096).collect();
    for &o in &offsets {
        old.write(o, b"old writer").await.unwrap();
    }

    let e2 = bump(&cluster).await;
    assert_eq!(e2, e1 + 1);
    let new = open_at(&cluster, Some(e2)).await;
    new.fence().await.unwrap();

    for &o in &offsets {
        match old.write(o, b"zombie!!!!").await {
            Err(VolumeError::StaleEpoch { newest, .. }) => assert!(newest >= e2),
            other => panic!("stale writer at {o}: expected StaleEpoch, got {other:?}"),
        }
        new.write(o, b"new writer").await.unwrap();
        assert_eq!(&new.read(o, 10).await.unwrap()[..], b"new writer");
        assert_eq!(&old.read(o, 10).await.unwrap()[..], b"new writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_epoch_reaches_copysets_without_the_new_writer() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let old = open_at(&cluster, None).await;
    old.write(0, b"before").await.unwrap();
    let e2 = bump(&cluster).await;
    // No new writer fences; the chunkservers learn the epoch from ctrl's
    // heartbeat answers and replicate the fence themselves.
    wait_for(
        "the old writer to be fenced",
        Duration::from_secs(20),
        || {
            let old = old.clone();
            async move {
                match old.write(0, b"zombie").await {
                    Err(VolumeError::StaleEpoch { newest, .. }) if newest >= e2 => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await
    .unwrap();
    let fresh = open_at(&cluster, None).await;
    assert_eq!(fresh.epoch(), e2);
    fresh.write(0, b"after!").await.unwrap();
    assert_eq!(&fresh.read(0, 6).await.unwrap()[..], b"after!");
}
