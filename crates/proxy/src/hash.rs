//! Rendezvous (highest random weight) hashing of keys onto RO nodes.
//!
//! Each (node, key) pair gets a pseudo-random score and a key goes to the
//! node with the highest score. Adding a node moves exactly the keys that
//! node now wins (about 1/n of them) and removing one moves only its keys,
//! so each RO node's block cache keeps its share across topology changes.
//! The hash is fixed (FNV-1a + splitmix64), not seeded per process, so every
//! proxy routes a key to the same node.

/// FNV-1a, 64 bit.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the word.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of `key` on the node whose id hashes to `node_hash`.
pub fn score(node_hash: u64, key_hash: u64) -> u64 {
    mix(node_hash ^ mix(key_hash))
}

/// Index of the node in `node_hashes` that wins `key`; `None` if empty.
pub fn pick(node_hashes: impl IntoIterator<Item = u64>, key: &[u8]) -> Option<usize> {
    let kh = fnv1a(key);
    let mut best: Option<(u64, usize)> = None;
    for (i, nh) in node_hashes.into_iter().enumerate() {
        let s = score(nh, kh);
        // Ties (astronomically rare) go to the lower index, deterministically.
        match best {
            Some((b, _)) if s <= b => {}
            _ => best = Some((s, i)),
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| fnv1a(format!("127.0.0.1:{}", 7000 + i).as_bytes()))
            .collect()
    }

    #[test]
    fn keys_spread_evenly() {
        for n in 1..=5 {
            let nodes = ids(n);
            let mut count = vec![0usize; n];
            let keys = 30_000;
            for k in 0..keys {
                let i = pick(nodes.iter().copied(), format!("key:{k}").as_bytes()).unwrap();
                count[i] += 1;
            }
            let fair = keys / n;
            for c in &count {
                assert!(
                    c.abs_diff(fair) < fair / 10,
                    "n={n}: counts {count:?} not within 10% of {fair}"
                );
            }
        }
    }

    #[test]
    fn routing_is_stable_and_order_independent() {
        let nodes = ids(3);
        let mut rev = nodes.clone();
        rev.reverse();
        for k in 0..1000 {
            let key = format!("k{k}");
            let a = pick(nodes.iter().copied(), key.as_bytes()).unwrap();
            let b = pick(rev.iter().copied(), key.as_bytes()).unwrap();
            assert_eq!(nodes[a], rev[b], "key {key}");
            assert_eq!(a, pick(nodes.iter().copied(), key.as_bytes()).unwrap());
        }
        assert_eq!(pick(std::iter::empty(), b"k"), None);
    }

    #[test]
    fn adding_a_node_moves_only_its_share() {
        let three = ids(3);
        let four = ids(4);
        let keys = 40_000;
        let mut moved = 0usize;
        for k in 0..keys {
            let key = format!("user:{k}");
            let before = pick(three.iter().copied(), key.as_bytes()).unwrap();
            let after = pick(four.iter().copied(), key.as_bytes()).unwrap();
            if before != after {
                // A key only ever moves to the new node.
                assert_eq!(after, 3, "key {key} moved between old nodes");
                moved += 1;
            }
        }
        let share = keys / 4;
        assert!(
            moved.abs_diff(share) < share / 10,
            "moved {moved}, expected about {share}"
        );
    }
}
