//! Talking to ctrl from the command line: connecting, and the JSON shapes
//! of its answers (field names are the proto field names, so scripts can
//! rely on `ctrl.proto` as the schema).

use anyhow::Context;
use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{
    ClusterStatusResponse, CopysetRoute, CopysetStatus, Peer, ServerStatus, VolumeInfo,
};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

/// Adds `http://` when the user gave a bare `host:port`.
pub fn normalize_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Connects to ctrl at `endpoint`.
///
/// # Errors
/// A malformed URL or an unreachable ctrl.
pub async fn connect(endpoint: &str) -> anyhow::Result<CtrlClient<Channel>> {
    let url = normalize_url(endpoint);
    let channel = Endpoint::from_shared(url.clone())
        .with_context(|| format!("parse ctrl endpoint {endpoint:?}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connect to ctrl at {url}"))?;
    Ok(CtrlClient::new(channel))
}

/// Turns a gRPC status into an error with its code and message.
pub fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

fn peer(p: &Peer) -> Value {
    json!({ "server_id": p.server_id, "addr": p.addr })
}

fn route(r: &CopysetRoute) -> Value {
    json!({
        "copyset_id": r.copyset_id,
        "members": r.members.iter().map(peer).collect::<Vec<_>>(),
        "leader_id": r.leader_id,
    })
}

/// `VolumeInfo` as JSON.
pub fn volume_json(v: &VolumeInfo) -> Value {
    json!({
        "volume_id": v.volume_id,
        "name": v.name,
        "size_bytes": v.size_bytes,
        "chunk_size": v.chunk_size,
        "epoch": v.epoch,
        "copysets": v.copysets.iter().map(route).collect::<Vec<_>>(),
        "created_unix_secs": v.created_unix_secs,
    })
}

fn server_json(s: &ServerStatus) -> Value {
    json!({
        "server_id": s.server_id,
        "addr": s.addr,
        "up": s.up,
        "last_heartbeat_ms_ago": s.last_heartbeat_ms_ago,
        "capacity_bytes": s.capacity_bytes,
        "used_bytes": s.used_bytes,
        "replicas": s.replicas,
        "leaders": s.leaders,
    })
}

fn copyset_json(c: &CopysetStatus) -> Value {
    json!({
        "copyset_id": c.copyset_id,
        "members": c.members,
        "voters": c.voters,
        "leader_id": c.leader_id,
        "term": c.term,
        "commit_index": c.commit_index,
        "healthy": c.healthy,
    })
}

/// `ClusterStatusResponse` as JSON.
pub fn status_json(s: &ClusterStatusResponse) -> Value {
    json!({
        "servers": s.servers.iter().map(server_json).collect::<Vec<_>>(),
        "copysets": s.copysets.iter().map(copyset_json).collect::<Vec<_>>(),
        "volumes": s.volumes.iter().map(volume_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_json_uses_proto_field_names() {
        let v = VolumeInfo {
            volume_id: 3,
            name: "vol0".into(),
            size_bytes: 1 << 30,
            chunk_size: 64 << 20,
            epoch: 2,
            copysets: vec![CopysetRoute {
                copyset_id: 9,
                members: vec![Peer {
                    server_id: 1,
                    addr: "127.0.0.1:7100".into(),
                }],
                leader_id: 1,
            }],
            created_unix_secs: 5,
        };
        let j = volume_json(&v);
        assert_eq!(j["volume_id"], 3);
        assert_eq!(j["size_bytes"], 1u64 << 30);
        assert_eq!(j["copysets"][0]["members"][0]["addr"], "127.0.0.1:7100");
        assert_eq!(j["copysets"][0]["leader_id"], 1);
    }

    #[test]
    fn bare_host_port_gets_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(normalize_url("http://h:1"), "http://h:1");
    }
}
