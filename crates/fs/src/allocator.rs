//! The data block allocator: a bitmap over the data region.
//!
//! The bitmap is never written to the volume: it is derived on load from
//! the block maps of all inodes plus the pending-free lists, so it cannot
//! disagree with the metadata. Blocks reserved for a write in progress are
//! set here before their mapping is journaled; a crash simply forgets them.

/// A run of physical blocks: (first, count).
pub(crate) type Run = (u64, u64);

#[derive(Debug, Clone, Default)]
pub(crate) struct Allocator {
    words: Vec<u64>,
    nblocks: u64,
    used: u64,
    /// Next-fit cursor: new files land after the previous ones, which keeps
    /// files contiguous and spreads reuse.
    cursor: u64,
}

impl Allocator {
    pub(crate) fn new(nblocks: u64) -> Allocator {
        Allocator {
            words: vec![0; nblocks.div_ceil(64) as usize],
            nblocks,
            used: 0,
            cursor: 0,
        }
    }

    pub(crate) fn nblocks(&self) -> u64 {
        self.nblocks
    }
    pub(crate) fn used(&self) -> u64 {
        self.used
    }
    pub(crate) fn free(&self) -> u64 {
        self.nblocks - self.used
    }

    pub(crate) fn is_used(&self, b: u64) -> bool {
        b < self.nblocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Marks `b` used; false if it was already used or is out of range.
    pub(crate) fn set(&mut self, b: u64) -> bool {
        if b >= self.nblocks || self.is_used(b) {
            return false;
        }
        self.words[(b / 64) as usize] |= 1 << (b % 64);
        self.used += 1;
        true
    }

    /// Marks `b` free; false if it was already free or is out of range.
    pub(crate) fn clear(&mut self, b: u64) -> bool {
        if !self.is_used(b) {
            return false;
        }
        self.words[(b / 64) as usize] &= !(1 << (b % 64));
        self.used -= 1;
        true
    }

    pub(crate) fn grow(&mut self, nblocks: u64) {
        if nblocks > self.nblocks {
            self.words.resize(nblocks.div_ceil(64) as usize, 0);
            self.nblocks = nblocks;
        }
    }

    /// Allocates `n` blocks, as few runs as next-fit finds; all or nothing.
    pub(crate) fn alloc(&mut self, n: u64) -> Option<Vec<Run>> {
        if n > self.free() {
            return None;
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut left = n;
        let mut b = if self.cursor >= self.nblocks {
            0
        } else {
            self.cursor
        };
        let mut scanned = 0;
        while left > 0 && scanned < self.nblocks {
            // Skip full words quickly.
            if b % 64 == 0 && self.words[(b / 64) as usize] == u64::MAX {
                let step = 64.min(self.nblocks - b);
                scanned += step;
                b += step;
            } else {
                if !self.is_used(b) {
                    self.set(b);
                    left -= 1;
                    match runs.last_mut() {
                        Some((s, c)) if *s + *c == b => *c += 1,
                        _ => runs.push((b, 1)),
                    }
                }
                scanned += 1;
                b += 1;
            }
            if b >= self.nblocks {
                b = 0;
            }
        }
        assert_eq!(left, 0, "allocator: free count says {n} blocks are free");
        self.cursor = b;
        Some(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    #[test]
    fn alloc_free_reuse() {
        let mut a = Allocator::new(100);
        let r = a.alloc(10).unwrap();
        assert_eq!(r, vec![(0, 10)]);
        assert!(a.alloc(91).is_none());
        assert_eq!(a.used(), 10, "a failed alloc takes nothing");
        for b in 2..5 {
            assert!(a.clear(b));
        }
        assert!(!a.clear(3), "double free is refused");
        let r = a.alloc(92).unwrap();
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 92);
        assert_eq!(a.free(), 1);
        a.grow(130);
        assert_eq!(a.free(), 31);
        assert!(a.alloc(31).is_some());
        assert_eq!(a.free(), 0);
    }

    #[test]
    fn random_ops_match_model() {
        let seed: u64 = std::env::var("PIKAFS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("allocator seed {seed} (replay with PIKAFS_SEED={seed})");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut n = 500u64;
        let mut a = Allocator::new(n);
        let mut model: BTreeSet<u64> = BTreeSet::new();
        for step in 0..5000 {
            match rng.gen_range(0..10) {
                0..=4 => {
                    let want = rng.gen_range(1..40);
                    match a.alloc(want) {
                        Some(runs) => {
                            let mut got = 0;
                            for (s, c) in runs {
                                for b in s..s + c {
                                    assert!(
                                        b < n,
                                        "seed {seed} step {step}: block {b} out of range"
                                    );
                                    assert!(
                                        model.insert(b),
                                        "seed {seed} step {step}: block {b} allocated twice"
                                    );
                                    got += 1;
                                }
                            }
                            assert_eq!(got, want);
                        }
                        None => assert!(
                            n - (model.len() as u64) < want,
                            "seed {seed} step {step}: refused with room"
                        ),
                    }
                }
                5..=8 => {
                    if let Some(&b) = model.iter().nth(rng.gen_range(0..model.len().max(1))) {
                        model.remove(&b);
                        assert!(a.clear(b));
                    }
                }
                _ => {
                    if rng.gen_bool(0.1) {
                        n += rng.gen_range(1..70);
                        a.grow(n);
                    }
                }
            }
            assert_eq!(a.used(), model.len() as u64, "seed {seed} step {step}");
        }
        for b in 0..n {
            assert_eq!(a.is_used(b), model.contains(&b), "seed {seed}: block {b}");
        }
    }
}
