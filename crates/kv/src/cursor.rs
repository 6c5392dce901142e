//! SCAN-family cursors.
//!
//! Clients treat a cursor as an integer, but our natural resume point is a
//! key. A bounded table maps integer cursors to resume keys; the oldest
//! entries are forgotten first. A forgotten or unknown cursor restarts the
//! iteration from the beginning, which SCAN's contract allows (elements may
//! be returned more than once; elements present throughout are still
//! returned). `0` starts an iteration and ends it.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

/// How many live cursors the node remembers.
pub const MAX_CURSORS: usize = 16 * 1024;

/// The node-wide cursor table.
pub struct Cursors {
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    map: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl Default for Cursors {
    fn default() -> Self {
        Self::new()
    }
}

impl Cursors {
    /// A cursor inside one collection: the resume bytes are the key's
    /// version, then the next member, so a cursor from an older
    /// generation of the key restarts instead of resuming elsewhere.
    pub fn save_member(&self, version: u64, member: &[u8]) -> u64 {
        let mut r = version.to_be_bytes().to_vec();
        r.extend_from_slice(member);
        self.save(r)
    }

    /// The member to resume at for a [`Cursors::save_member`] cursor of
    /// the key's current `version`; `None` starts over.
    pub fn resume_member(&self, cursor: u64, version: u64) -> Option<Vec<u8>> {
        let r = self.resume(cursor)?;
        let (v, m) = r.split_at_checked(8)?;
        (u64::from_be_bytes(v.try_into().ok()?) == version).then(|| m.to_vec())
    }

    pub fn new() -> Cursors {
        // Start away from 0 and from small numbers a client might invent;
        // time-based so a restarted node does not resolve stale cursors.
        let seed = crate::engine::now_ms() % 1_000_000_000 * 1000 + 1;
        Cursors {
            inner: Mutex::new(Inner {
                next: seed,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Remembers `resume` and returns its cursor.
    pub fn save(&self, resume: Vec<u8>) -> u64 {
        let mut g = self.inner.lock();
        let id = g.next;
        g.next += 1;
        g.map.insert(id, resume);
        g.order.push_back(id);
        while g.order.len() > MAX_CURSORS {
            if let Some(old) = g.order.pop_front() {
                g.map.remove(&old);
            }
        }
        id
    }

    /// The resume point of `cursor`; `None` for 0 or an unknown cursor
    /// (start from the beginning).
    pub fn resume(&self, cursor: u64) -> Option<Vec<u8>> {
        if cursor == 0 {
            return None;
        }
        self.inner.lock().map.get(&cursor).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resolve_until_evicted() {
        let c = Cursors::new();
        let first = c.save(b"a".to_vec());
        assert_ne!(first, 0);
        assert_eq!(c.resume(first), Some(b"a".to_vec()));
        assert_eq!(c.resume(0), None);
        for i in 0..MAX_CURSORS {
            c.save(i.to_be_bytes().to_vec());
        }
        assert_eq!(c.resume(first), None, "oldest cursor is evicted");
    }
}
