//! Placement rules: how many copysets, which servers hold them, which
//! copysets a new volume spreads over. Pure functions over counts, so the
//! rules are testable without a cluster.

use std::collections::BTreeMap;

use pikafs_proto::{CopysetId, ServerId, REPLICAS};

/// Most copysets one volume is spread over.
pub const MAX_VOLUME_COPYSETS: usize = 16;

/// Copysets the cluster should have with `up` servers:
/// `max(1, up * per_server / 3)`.
pub fn target_copysets(up: usize, per_server: u32) -> usize {
    (up.saturating_mul(per_server as usize) / REPLICAS).max(1)
}

/// The `n` candidates holding the fewest replicas, ties broken by the lower
/// server id (deterministic). `None` when there are fewer than `n`.
pub fn least_loaded(
    candidates: &[ServerId],
    replicas: &BTreeMap<ServerId, usize>,
    n: usize,
) -> Option<Vec<ServerId>> {
    if candidates.len() < n {
        return None;
    }
    let mut c: Vec<(usize, ServerId)> = candidates
        .iter()
        .map(|s| (replicas.get(s).copied().unwrap_or(0), *s))
        .collect();
    c.sort_unstable();
    c.dedup_by_key(|(_, s)| *s);
    if c.len() < n {
        return None;
    }
    Some(c.into_iter().take(n).map(|(_, s)| s).collect())
}

/// The copysets a new volume uses: among `eligible` (copyset, volumes
/// already using it), the [`MAX_VOLUME_COPYSETS`] least used (ties by lower
/// id), returned sorted by id. Chunk i then lives on `result[i % len]`.
pub fn volume_copysets(eligible: &[(CopysetId, usize)]) -> Vec<CopysetId> {
    let mut c: Vec<(usize, CopysetId)> = eligible.iter().map(|(id, n)| (*n, *id)).collect();
    c.sort_unstable();
    let mut out: Vec<CopysetId> = c
        .into_iter()
        .take(MAX_VOLUME_COPYSETS)
        .map(|(_, id)| id)
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_follows_the_formula() {
        assert_eq!(target_copysets(0, 6), 1);
        assert_eq!(target_copysets(1, 1), 1);
        assert_eq!(target_copysets(3, 6), 6);
        assert_eq!(target_copysets(4, 6), 8);
        assert_eq!(target_copysets(5, 1), 1);
    }

    #[test]
    fn least_loaded_prefers_low_counts_then_low_ids() {
        let load = BTreeMap::from([(1, 5), (2, 1), (3, 1), (4, 0)]);
        assert_eq!(least_loaded(&[1, 2, 3, 4], &load, 3), Some(vec![4, 2, 3]));
        assert_eq!(least_loaded(&[1, 3], &load, 3), None);
        // Unknown servers count as empty.
        assert_eq!(least_loaded(&[9, 1], &load, 1), Some(vec![9]));
    }

    #[test]
    fn repeated_placement_balances_replicas() {
        let servers = [1, 2, 3, 4, 5];
        let mut load = BTreeMap::new();
        for _ in 0..10 {
            let pick = least_loaded(&servers, &load, 3).unwrap();
            assert_eq!(pick.len(), 3);
            for s in pick {
                *load.entry(s).or_insert(0) += 1;
            }
        }
        // 30 replicas on 5 servers: exactly 6 each.
        assert!(load.values().all(|&n| n == 6), "{load:?}");
    }

    #[test]
    fn volume_copysets_caps_and_sorts() {
        let eligible: Vec<(CopysetId, usize)> = (1..=20).map(|id| (id, 0)).collect();
        let picked = volume_copysets(&eligible);
        assert_eq!(picked, (1..=16).collect::<Vec<_>>());
        // Busier copysets are left out first.
        let mut eligible = eligible;
        eligible[0].1 = 3;
        let picked = volume_copysets(&eligible);
        assert!(!picked.contains(&1));
        assert_eq!(picked.len(), 16);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
    }
}
