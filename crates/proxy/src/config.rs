//! Settings of one proxy process.

use std::net::SocketAddr;
use std::time::Duration;

/// Default bound of a read-your-writes wait on an RO node (`--ryw-wait`).
pub const DEFAULT_RYW_WAIT: Duration = Duration::from_millis(50);
/// How long an RO node that failed is skipped before being tried again.
pub const DEFAULT_DOWN_RETRY: Duration = Duration::from_secs(1);
/// How long a read may wait on an RO node's reply before the node is
/// taken for hung (SIGSTOPped, partitioned): the read goes to the RW node
/// and the RO node is skipped for `down_retry`. RO nodes only serve plain
/// reads, so a healthy one answers in milliseconds; RW connections carry
/// blocking commands and have no such bound.
pub const DEFAULT_RO_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound of a backend connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests one client may have in flight before the proxy stops reading
/// from it (backpressure instead of unbounded buffering).
pub const MAX_INFLIGHT_PER_CLIENT: usize = 4096;
/// Shared connections per (RO node, db) that carry the plain reads of all
/// clients (see `pool.rs`); clients are spread over them by client id.
pub const DEFAULT_SHARED_RO_CONNS: usize = 2;

/// Settings of one proxy process.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// RESP listen address.
    pub listen: SocketAddr,
    /// Read-your-writes on for every new connection.
    pub read_your_writes: bool,
    /// How long a read waits for an RO node to apply the client's last
    /// write before it is sent to the RW node instead.
    pub ryw_wait: Duration,
    /// How long a failed RO node is skipped.
    pub down_retry: Duration,
    /// Bound of a read's wait for an RO node's reply.
    pub ro_reply_timeout: Duration,
    /// Bound of a backend connect.
    pub connect_timeout: Duration,
    /// Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// Shared connections per (RO node, db) for plain reads of clients
    /// without AUTH or read-your-writes; 0 = every client uses its own RO
    /// connections only.
    pub shared_ro_conns: usize,
    /// Whether `PROXY TOPOLOGY SET` is accepted (static topology only). Off
    /// by default: the proxy does not check AUTH itself, so any client
    /// could otherwise send writes to an address of its choosing.
    pub allow_topology_set: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6380)),
            read_your_writes: false,
            ryw_wait: DEFAULT_RYW_WAIT,
            down_retry: DEFAULT_DOWN_RETRY,
            ro_reply_timeout: DEFAULT_RO_REPLY_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            metrics: None,
            shared_ro_conns: DEFAULT_SHARED_RO_CONNS,
            allow_topology_set: false,
        }
    }
}
