//! The `pikafs volume` and `pikafs status` commands.

use pikafs_testkit::{Cluster, ClusterOptions};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_through_the_cli() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let ok = |o: &std::process::Output| assert!(o.status.success(), "{}", stderr(o));

    ok(&cluster
        .cli(&["volume", "create", "alpha", "--size", "256MiB"])
        .await
        .unwrap());
    let dup = cluster
        .cli(&["volume", "create", "alpha", "--size", "256MiB"])
        .await
        .unwrap();
    assert!(!dup.status.success());
    assert!(
        stderr(&dup).to_lowercase().contains("exist"),
        "{}",
        stderr(&dup)
    );
    let bad = cluster
        .cli(&["volume", "create", "beta", "--size", "12banana"])
        .await
        .unwrap();
    assert!(!bad.status.success());

    let info = cluster
        .cli(&["volume", "info", "alpha", "--json"])
        .await
        .unwrap();
    ok(&info);
    let v: serde_json::Value = serde_json::from_str(&stdout(&info)).unwrap();
    assert_eq!(v["size_bytes"].as_u64(), Some(256 << 20));
    assert!(!v["copysets"].as_array().unwrap().is_empty());

    ok(&cluster
        .cli(&["volume", "grow", "alpha", "--size", "1GiB"])
        .await
        .unwrap());
    let shrink = cluster
        .cli(&["volume", "grow", "alpha", "--size", "128MiB"])
        .await
        .unwrap();
    assert!(!shrink.status.success());
    let info = cluster
        .cli(&["volume", "info", "alpha", "--json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&info)).unwrap();
    assert_eq!(v["size_bytes"].as_u64(), Some(1 << 30));

    // Scripted IO: write stdin at an offset past the old end, read it back.
    let payload = b"hello, pikafs\n".repeat(1000);
    let w = cluster
        .cli_with_stdin(
            &["volume", "write", "alpha", "--offset", "536870000"],
            &payload,
        )
        .await
        .unwrap();
    ok(&w);
    let len = payload.len().to_string();
    let r = cluster
        .cli(&[
            "volume",
            "read",
            "alpha",
            "--offset",
            "536870000",
            "--len",
            &len,
        ])
        .await
        .unwrap();
    ok(&r);
    assert_eq!(r.stdout, payload);

    let ls = cluster.cli(&["volume", "ls", "--json"]).await.unwrap();
    ok(&ls);
    assert!(stdout(&ls).contains("alpha"));
    let st = cluster.cli(&["status", "--json"]).await.unwrap();
    ok(&st);
    let s: serde_json::Value = serde_json::from_str(&stdout(&st)).unwrap();
    assert_eq!(s["servers"].as_array().unwrap().len(), 3);

    ok(&cluster.cli(&["volume", "rm", "alpha"]).await.unwrap());
    let gone = cluster.cli(&["volume", "info", "alpha"]).await.unwrap();
    assert!(!gone.status.success());
    assert!(
        stderr(&gone).contains("alpha"),
        "error should name the volume: {}",
        stderr(&gone)
    );
}
