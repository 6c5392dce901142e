//! The inode table: the fs's namespace calls take paths while the kernel
//! speaks in inode numbers, so this maps each inode the kernel holds
//! (looked up and not yet forgotten) to its current path. Only the paths
//! of directories (parents of namespace operations) are relied on; calls
//! on an existing inode go to the fs by number.
//!
//! Inode numbers are the fs's own (`Stat::ino`; the root is 1 in both), so
//! no translation is needed, only the path. Paths are refreshed by every
//! lookup, which is what keeps an RO mount right after the writer renames:
//! RO mounts use zero entry TTLs, so every path walk looks names up again.

use std::collections::HashMap;

use parking_lot::Mutex;
use pikafs_fs::{Ino, ROOT_INO};

struct Node {
    /// `None` once the name was removed (the inode may still be open).
    path: Option<String>,
    /// Kernel references (lookups minus forgets).
    lookups: u64,
}

/// Inode → path, with kernel lookup counts.
pub(crate) struct InodeTable {
    nodes: Mutex<HashMap<Ino, Node>>,
}

/// `parent/name` as an absolute fs path.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

impl InodeTable {
    pub(crate) fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                path: Some("/".into()),
                // The kernel never forgets the root.
                lookups: u64::MAX / 2,
            },
        );
        InodeTable {
            nodes: Mutex::new(nodes),
        }
    }

    /// The current path of `ino`, if the kernel may use it.
    pub(crate) fn path(&self, ino: Ino) -> Option<String> {
        self.nodes.lock().get(&ino).and_then(|n| n.path.clone())
    }

    /// Records a lookup reply: `ino` is at `path`, one more kernel ref.
    pub(crate) fn remember(&self, ino: Ino, path: String) {
        let mut nodes = self.nodes.lock();
        // A path names one inode (an inode may have several paths, but
        // only its directories' paths are used to build new ones), so a
        // stale holder of this path (renamed over by another mount's
        // writer) loses it.
        for (other, n) in nodes.iter_mut() {
            if *other != ino && n.path.as_deref() == Some(path.as_str()) {
                n.path = None;
            }
        }
        let n = nodes.entry(ino).or_insert(Node {
            path: None,
            lookups: 0,
        });
        n.path = Some(path);
        n.lookups = n.lookups.saturating_add(1);
    }

    /// The kernel dropped `count` references.
    pub(crate) fn forget(&self, ino: Ino, count: u64) {
        let mut nodes = self.nodes.lock();
        if let Some(n) = nodes.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
            if n.lookups == 0 && ino != ROOT_INO {
                nodes.remove(&ino);
            }
        }
    }

    /// The name `path` was removed (unlink, rmdir).
    pub(crate) fn detach(&self, path: &str) {
        for n in self.nodes.lock().values_mut() {
            if n.path.as_deref() == Some(path) {
                n.path = None;
            }
        }
    }

    /// `from` was renamed to `to`: what was at `to` is gone, everything
    /// at or under `from` moves.
    pub(crate) fn renamed(&self, from: &str, to: &str) {
        if from == to {
            return;
        }
        let mut nodes = self.nodes.lock();
        for n in nodes.values_mut() {
            if n.path.as_deref().is_some_and(|p| is_under(p, to)) {
                n.path = None;
            }
        }
        for n in nodes.values_mut() {
            if let Some(p) = &n.path {
                if is_under(p, from) {
                    n.path = Some(format!("{to}{}", &p[from.len()..]));
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }

    #[test]
    fn rename_moves_subtree_and_drops_target() {
        let t = InodeTable::new();
        t.remember(2, "/d".into());
        t.remember(3, "/d/f".into());
        t.remember(4, "/dx".into());
        t.remember(5, "/e".into());
        t.remember(6, "/e/old".into());
        t.renamed("/d", "/e");
        assert_eq!(t.path(2).as_deref(), Some("/e"));
        assert_eq!(t.path(3).as_deref(), Some("/e/f"));
        // A sibling sharing the prefix is not under /d.
        assert_eq!(t.path(4).as_deref(), Some("/dx"));
        assert_eq!(t.path(5), None);
        assert_eq!(t.path(6), None);
        assert_eq!(t.path(ROOT_INO).as_deref(), Some("/"));
    }

    #[test]
    fn forget_and_detach() {
        let t = InodeTable::new();
        t.remember(2, "/a".into());
        t.remember(2, "/a".into());
        t.forget(2, 1);
        assert_eq!(t.path(2).as_deref(), Some("/a"));
        t.detach("/a");
        assert_eq!(t.path(2), None);
        t.forget(2, 1);
        assert_eq!(t.len(), 1);
        // The root survives any forget.
        t.forget(ROOT_INO, u64::MAX);
        assert_eq!(t.path(ROOT_INO).as_deref(), Some("/"));
    }

    #[test]
    fn lookup_takes_path_from_stale_holder() {
        let t = InodeTable::new();
        t.remember(2, "/a".into());
        // Another mount's writer replaced /a with inode 3.
        t.remember(3, "/a".into());
        assert_eq!(t.path(2), None);
        assert_eq!(t.path(3).as_deref(), Some("/a"));
    }
}
