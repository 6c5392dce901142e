//! Which RO nodes recently failed.
//!
//! A node that refused a connect or dropped a connection is skipped for
//! `down_retry`; afterwards the next request that hashes to it tries it
//! again (and marks it down again if it still fails). Shared by all client
//! connections, so one client's failure spares the others a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct Health {
    down: Mutex<HashMap<Arc<str>, Instant>>,
}

impl Health {
    /// Skips `addr` until `now + retry`.
    pub fn mark_down(&self, addr: &Arc<str>, retry: Duration) {
        let mut d = self.down.lock();
        let first = !d.contains_key(addr);
        d.insert(addr.clone(), Instant::now() + retry);
        if first {
            tracing::warn!(node = %addr, ?retry, "kv node marked down");
        }
    }

    /// A node answered again.
    pub fn mark_up(&self, addr: &str) {
        let mut d = self.down.lock();
        if d.remove(addr).is_some() {
            tracing::info!(node = %addr, "kv node back up");
        }
    }

    /// The addresses currently skipped.
    pub fn down_now(&self) -> Vec<Arc<str>> {
        let now = Instant::now();
        let d = self.down.lock();
        d.iter()
            .filter(|(_, until)| **until > now)
            .map(|(a, _)| a.clone())
            .collect()
    }
}
