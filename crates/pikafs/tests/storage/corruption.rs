//! Flipped bytes in chunk files are never returned as data.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use pikafs_testkit::{wait_for, Cluster, ClusterOptions};

use crate::replication::open;

/// Every `<volume>_<chunk>.dat` file below `dir`.
fn chunk_files(dir: &Path, volume: u64, chunk: u64) -> Vec<PathBuf> {
    let name = format!("{volume}_{chunk}.dat");
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == name.as_str()) {
                out.push(p);
            }
        }
    }
    out
}

/// The chunk's file on every replica, once each holds `want` at `offset`:
/// followers apply a moment after the leader acknowledges, and a flip made
/// before that would be overwritten by the apply.
async fn replica_files(
    cluster: &Cluster,
    volume: u64,
    chunk: u64,
    offset: u64,
    want: &[u8],
) -> Vec<PathBuf> {
    wait_for(
        "3 replicas holding the data",
        Duration::from_secs(10),
        || async {
            let files = (0..cluster.server_count())
                .flat_map(|i| chunk_files(cluster.server_dir(i), volume, chunk))
                .collect::<Vec<_>>();
            let applied = files.iter().all(|f| {
                let file = std::fs::File::open(f).unwrap();
                let mut got = vec![0u8; want.len()];
                file.read_exact_at(&mut got, offset).is_ok() && got == want
            });
            (files.len() == 3 && applied).then_some(files)
        },
    )
    .await
    .unwrap()
}

fn flip(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, offset).unwrap();
    f.sync_all().unwrap();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_sectors_are_never_returned() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "1GiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let vol = client.volume_id();
    let chunk_size = 64u64 << 20;

    // Case 1: one replica corrupt. Reads give the right bytes (served or
    // repaired from a healthy replica) or an error, never the bad bytes.
    let one = pattern(1, 64 << 10);
    client.write(chunk_size, &one).await.unwrap();
    let files = replica_files(&cluster, vol, 1, 0, &one).await;
    flip(&files[0], 8192 + 17);
    for _ in 0..3 {
        match client.read(chunk_size, one.len()).await {
            Ok(got) => assert!(got[..] == one[..], "read returned wrong bytes"),
            Err(e) => eprintln!("single-replica corruption answered with an error: {e}"),
        }
    }

    // Case 2: every replica corrupt in the same sector: the read must fail.
    let two = pattern(2, 16 << 10);
    client.write(0, &two).await.unwrap();
    let files = replica_files(&cluster, vol, 0, 0, &two).await;
    for f in &files {
        flip(f, 4096 + 5);
    }
    let res = client.read(0, two.len()).await;
    assert!(
        res.is_err(),
        "read of a sector corrupt on every replica succeeded"
    );
    // Sectors around the bad one still read fine.
    assert_eq!(&client.read(0, 4096).await.unwrap()[..], &two[..4096]);
    assert_eq!(&client.read(8192, 8192).await.unwrap()[..], &two[8192..]);
    // Overwriting the whole bad sector heals it.
    client.write(4096, &two[4096..8192]).await.unwrap();
    assert_eq!(&client.read(0, two.len()).await.unwrap()[..], &two[..]);
}
