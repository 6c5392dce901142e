//! `pikafs status`: the cluster as ctrl sees it.

use anyhow::Context;
use pikafs_proto::ctrlpb::Empty;

use crate::cluster::{connect, status_err, status_json};
use crate::units::fmt_size;

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Prints servers, copysets and volumes.
pub async fn run(ctrl_url: &str, json: bool) -> anyhow::Result<()> {
    let s = connect(ctrl_url)
        .await?
        .cluster_status(Empty {})
        .await
        .map_err(|e| status_err("cluster status", e))?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&s)).context("encode json")?
        );
        return Ok(());
    }
    println!("servers ({})", s.servers.len());
    println!(
        "{:>4}  {:<22}  {:<4}  {:>10}  {:>8}  {:>7}  {:>21}",
        "id", "addr", "up", "heartbeat", "replicas", "leaders", "used / capacity"
    );
    for v in &s.servers {
        println!(
            "{:>4}  {:<22}  {:<4}  {:>8}ms  {:>8}  {:>7}  {:>21}",
            v.server_id,
            v.addr,
            if v.up { "up" } else { "DOWN" },
            v.last_heartbeat_ms_ago,
            v.replicas,
            v.leaders,
            format!(
                "{} / {}",
                fmt_size(v.used_bytes),
                fmt_size(v.capacity_bytes)
            ),
        );
    }
    println!();
    println!("copysets ({})", s.copysets.len());
    println!(
        "{:>8}  {:<12}  {:<12}  {:>6}  {:>6}  {:>8}  healthy",
        "copyset", "members", "voters", "leader", "term", "commit"
    );
    for c in &s.copysets {
        println!(
            "{:>8}  {:<12}  {:<12}  {:>6}  {:>6}  {:>8}  {}",
            c.copyset_id,
            ids(&c.members),
            ids(&c.voters),
            c.leader_id,
            c.term,
            c.commit_index,
            if c.healthy { "yes" } else { "NO" }
        );
    }
    println!();
    println!("volumes ({})", s.volumes.len());
    for v in &s.volumes {
        println!(
            "{:>6}  {:<24}  {:>12}  epoch {}",
            v.volume_id,
            v.name,
            fmt_size(v.size_bytes),
            v.epoch
        );
    }
    Ok(())
}
