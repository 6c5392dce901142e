//! `pikafs status`: the cluster as ctrl sees it, with each volume's kv
//! nodes (role, applied sequence, lag, lease).

use anyhow::Context;
use pikafs_proto::ctrlpb::{Empty, KvRole, KvTopologyResponse, VolumeName};
use serde_json::{json, Value};

use crate::cluster::{connect, status_err, status_json};
use crate::units::fmt_size;

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn role_name(role: i32) -> &'static str {
    match KvRole::try_from(role) {
        Ok(KvRole::Rw) => "rw",
        Ok(KvRole::Ro) => "ro",
        Ok(KvRole::Promoting) => "promoting",
        _ => "?",
    }
}

fn kv_json(t: &KvTopologyResponse) -> Value {
    json!({
        "volume": t.volume,
        "generation": t.generation,
        "nodes": t.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "addr": n.addr,
            "role": role_name(n.role),
            "applied_seq": n.applied_seq,
            "lag_ms": n.lag_ms,
            "lease_remaining_ms": n.lease_remaining_ms,
        })).collect::<Vec<_>>(),
    })
}

/// Prints servers, copysets, volumes and kv nodes.
pub async fn run(ctrl_url: &str, json: bool) -> anyhow::Result<()> {
    let mut client = connect(ctrl_url).await?;
    let s = client
        .cluster_status(Empty {})
        .await
        .map_err(|e| status_err("cluster status", e))?
        .into_inner();
    // A ctrl without kv support (or a volume deleted meanwhile) just has
    // no kv section for that volume.
    let mut kv = Vec::new();
    for v in &s.volumes {
        match client
            .kv_topology(VolumeName {
                name: v.name.clone(),
            })
            .await
        {
            Ok(t) => {
                let t = t.into_inner();
                if !t.nodes.is_empty() {
                    kv.push(t);
                }
            }
            Err(e) => tracing::debug!(volume = %v.name, error = %e, "no kv topology"),
        }
    }
    if json {
        let mut out = status_json(&s);
        if let Value::Object(m) = &mut out {
            m.insert("kv".into(), kv.iter().map(kv_json).collect());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("encode json")?
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
    for t in &kv {
        println!();
        println!(
            "kv nodes of {} ({}, generation {})",
            t.volume,
            t.nodes.len(),
            t.generation
        );
        println!(
            "{:<22}  {:<9}  {:>12}  {:>8}  {:>8}",
            "node", "role", "applied seq", "lag", "lease"
        );
        for n in &t.nodes {
            println!(
                "{:<22}  {:<9}  {:>12}  {:>6}ms  {:>6}ms",
                n.addr,
                role_name(n.role),
                n.applied_seq,
                n.lag_ms,
                n.lease_remaining_ms
            );
        }
    }
    Ok(())
}
