//! WATCH: which clients watch which keys, flagged dirty by the engine's
//! key-modified hook (Redis's `touchWatchedKey`). A dirty client's next
//! EXEC fails with a nil reply.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::Touch;

/// The node-wide watch registry.
#[derive(Default)]
pub struct Watches {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<(u8, Vec<u8>), HashSet<u64>>,
    clients: HashMap<u64, Watcher>,
}

struct Watcher {
    dirty: Arc<AtomicBool>,
    keys: HashSet<(u8, Vec<u8>)>,
}

impl Watches {
    /// Client `id` watches `key` in `db`; `dirty` is its flag.
    pub fn watch(&self, id: u64, dirty: &Arc<AtomicBool>, db: u8, key: &[u8]) {
        let mut g = self.inner.lock();
        let k = (db, key.to_vec());
        g.by_key.entry(k.clone()).or_default().insert(id);
        g.clients
            .entry(id)
            .or_insert_with(|| Watcher {
                dirty: dirty.clone(),
                keys: HashSet::new(),
            })
            .keys
            .insert(k);
    }

    /// Forgets all of client `id`'s watches (UNWATCH, EXEC, DISCARD, hang-up).
    pub fn unwatch_all(&self, id: u64) {
        let mut g = self.inner.lock();
        if let Some(w) = g.clients.remove(&id) {
            for k in w.keys {
                if let Some(set) = g.by_key.get_mut(&k) {
                    set.remove(&id);
                    if set.is_empty() {
                        g.by_key.remove(&k);
                    }
                }
            }
        }
    }

    /// The engine hook: flags every client watching a touched key.
    pub fn touched(&self, touches: &[Touch]) {
        let g = self.inner.lock();
        if g.clients.is_empty() {
            return;
        }
        for t in touches {
            match t {
                Touch::Key(db, key) => {
                    if let Some(ids) = g.by_key.get(&(*db, key.clone())) {
                        for id in ids {
                            if let Some(w) = g.clients.get(id) {
                                w.dirty.store(true, Ordering::Release);
                            }
                        }
                    }
                }
                Touch::Db(db) => {
                    for w in g.clients.values() {
                        if w.keys.iter().any(|(d, _)| d == db) {
                            w.dirty.store(true, Ordering::Release);
                        }
                    }
                }
                Touch::All => {
                    for w in g.clients.values() {
                        w.dirty.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Number of watched keys (INFO).
    pub fn watched_keys(&self) -> usize {
        self.inner.lock().by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touching_a_watched_key_flags_only_its_watchers() {
        let w = Watches::default();
        let (a, b) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        w.watch(1, &a, 0, b"k");
        w.watch(2, &b, 1, b"k");
        w.touched(&[Touch::Key(0, b"other".to_vec())]);
        assert!(!a.load(Ordering::Acquire));
        w.touched(&[Touch::Key(0, b"k".to_vec())]);
        assert!(a.load(Ordering::Acquire));
        assert!(!b.load(Ordering::Acquire), "same key in another db");
        w.touched(&[Touch::Db(1)]);
        assert!(b.load(Ordering::Acquire));
        w.unwatch_all(1);
        w.unwatch_all(2);
        assert_eq!(w.watched_keys(), 0);
    }
}
