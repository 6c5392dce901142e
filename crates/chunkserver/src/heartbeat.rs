//! ctrl interaction: registration and the periodic heartbeat.
//!
//! IO never waits for ctrl: a server that has persisted its id starts
//! serving at once, and heartbeats simply retry while ctrl is down.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pikafs_proto::ctrlpb::copyset_command::Kind;
use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{HeartbeatRequest, HeartbeatResponse, RegisterServerRequest};
use pikafs_proto::ServerId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::chunk::write_atomic;
use crate::inbox::{Admin, Inbox, InboxMsg};
use crate::Shared;

/// File in the data directory holding the server id (decimal).
pub const SERVER_ID_FILE: &str = "server_id";
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the ctrl interaction.
#[derive(Debug, thiserror::Error)]
pub enum CtrlError {
    #[error("ctrl unreachable at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("ctrl call failed: {0}")]
    Rpc(String),
    #[error("server id file {path}: {detail}")]
    IdFile { path: String, detail: String },
}

/// Reads the persisted server id, if any.
///
/// # Errors
/// The file exists but cannot be read or parsed.
pub fn load_server_id(data_dir: &Path) -> Result<Option<ServerId>, CtrlError> {
    let path = data_dir.join(SERVER_ID_FILE);
    let err = |detail: String| CtrlError::IdFile {
        path: path.display().to_string(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id: ServerId = s.trim().parse().map_err(|e| err(format!("{e}")))?;
            if id == 0 {
                return Err(err("server id 0".into()));
            }
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Persists the server id durably.
///
/// # Errors
/// IO errors.
pub fn store_server_id(data_dir: &Path, id: ServerId) -> Result<(), CtrlError> {
    let path = data_dir.join(SERVER_ID_FILE);
    write_atomic(&path, format!("{id}\n").as_bytes())
        .and_then(|_| crate::chunk::fsync_dir(data_dir))
        .map_err(|e| CtrlError::IdFile {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

async fn connect(endpoint: &str) -> Result<CtrlClient<Channel>, CtrlError> {
    let fut = CtrlClient::connect(endpoint.to_string());
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(CtrlError::Unreachable {
            endpoint: endpoint.to_string(),
            detail: e.to_string(),
        }),
        Err(_) => Err(CtrlError::Unreachable {
            endpoint: endpoint.to_string(),
            detail: "connect timeout".into(),
        }),
    }
}

/// Registers with ctrl as a new server, retrying with backoff until it
/// succeeds; `None` if `cancel` fires first.
///
/// # Cancel safety
/// Safe: an id granted but not yet persisted is simply never used.
pub async fn register(
    endpoint: &str,
    addr: &str,
    capacity: u64,
    cancel: &CancellationToken,
) -> Option<ServerId> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut c = connect(endpoint).await?;
            let r = tokio::time::timeout(
                RPC_TIMEOUT,
                c.register_server(RegisterServerRequest {
                    server_id: 0,
                    addr: addr.to_string(),
                    capacity_bytes: capacity,
                }),
            )
            .await
            .map_err(|_| CtrlError::Rpc("register timeout".into()))?
            .map_err(|s| CtrlError::Rpc(s.to_string()))?;
            Ok::<_, CtrlError>(r.into_inner().server_id)
        };
        match attempt.await {
            Ok(id) if id != 0 => return Some(id),
            Ok(_) => tracing::warn!("ctrl granted server id 0; retrying"),
            Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Capacity to advertise: configured, else the file system's size.
pub fn capacity(configured: u64, data_dir: &Path) -> u64 {
    if configured > 0 {
        return configured;
    }
    rustix::fs::statvfs(data_dir)
        .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

/// Settings of the heartbeat task.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub endpoint: String,
    pub addr: String,
    pub interval: Duration,
    pub capacity_bytes: u64,
}

/// Sends a heartbeat every interval and applies ctrl's answer, until
/// `cancel`.
///
/// # Cancel safety
/// Meant to be spawned; returns when `cancel` fires.
pub async fn run(
    cfg: HeartbeatConfig,
    shared: Arc<Shared>,
    inbox: Inbox,
    cancel: CancellationToken,
) {
    let mut client: Option<CtrlClient<Channel>> = None;
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (tx, rx) = oneshot::channel();
        if inbox.try_send(InboxMsg::Status(tx)).is_err() {
            continue;
        }
        let copysets = match tokio::time::timeout(RPC_TIMEOUT, rx).await {
            Ok(Ok(s)) => s,
            _ => continue,
        };
        let req = HeartbeatRequest {
            server_id: shared.me,
            addr: cfg.addr.clone(),
            capacity_bytes: capacity(cfg.capacity_bytes, &shared.data_dir),
            used_bytes: shared.used_bytes(),
            copysets,
        };
        if client.is_none() {
            match connect(&cfg.endpoint).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    failures += 1;
                    log_failure(failures, &e);
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("set above");
        match tokio::time::timeout(RPC_TIMEOUT, c.heartbeat(req)).await {
            Ok(Ok(resp)) => {
                failures = 0;
                apply_response(&shared, &inbox, resp.into_inner());
            }
            Ok(Err(s)) => {
                failures += 1;
                log_failure(failures, &CtrlError::Rpc(s.to_string()));
                client = None;
            }
            Err(_) => {
                failures += 1;
                log_failure(failures, &CtrlError::Rpc("heartbeat timeout".into()));
                client = None;
            }
        }
    }
}

fn log_failure(n: u32, e: &CtrlError) {
    // ctrl being down is expected during failover; say so once, then rarely.
    if n == 1 || n.is_multiple_of(30) {
        tracing::warn!(error = %e, failures = n, "heartbeat failed; IO continues without ctrl");
    } else {
        tracing::debug!(error = %e, failures = n, "heartbeat failed");
    }
}

/// Applies ctrl's heartbeat answer: address book, epochs, commands.
pub fn apply_response(shared: &Shared, inbox: &Inbox, resp: HeartbeatResponse) {
    if !resp.peers.is_empty() {
        let mut peers = shared.peers.write().expect("peer lock poisoned");
        for p in &resp.peers {
            if p.server_id != 0 && !p.addr.is_empty() {
                peers.insert(p.server_id, p.addr.clone());
            }
        }
    }
    let mut admin = Vec::new();
    if !resp.epochs.is_empty() {
        admin.push(Admin::Epochs(
            resp.epochs.iter().map(|e| (e.volume_id, e.epoch)).collect(),
        ));
    }
    for c in resp.commands {
        let members: Vec<ServerId> = c.members.iter().map(|p| p.server_id).collect();
        {
            let mut peers = shared.peers.write().expect("peer lock poisoned");
            for p in &c.members {
                if p.server_id != 0 && !p.addr.is_empty() {
                    peers.insert(p.server_id, p.addr.clone());
                }
            }
        }
        let copyset = c.copyset_id;
        let a = match Kind::try_from(c.kind) {
            Ok(Kind::Create) => Admin::Create { copyset, members },
            Ok(Kind::Join) => Admin::Join { copyset },
            Ok(Kind::Destroy) => Admin::Destroy { copyset },
            Ok(Kind::SetMembers) => Admin::SetMembers { copyset, members },
            Err(_) => {
                tracing::warn!(copyset, kind = c.kind, "unknown copyset command from ctrl");
                continue;
            }
        };
        admin.push(a);
    }
    for a in admin {
        if inbox.try_send(InboxMsg::Admin(a)).is_err() {
            tracing::debug!("inbox full; ctrl will repeat the command");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_persists() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_server_id(dir.path()).unwrap(), None);
        store_server_id(dir.path(), 42).unwrap();
        assert_eq!(load_server_id(dir.path()).unwrap(), Some(42));
        std::fs::write(dir.path().join(SERVER_ID_FILE), "x").unwrap();
        assert!(load_server_id(dir.path()).is_err());
    }
}
