//! Data bytes a mount holds in memory because the device (at their home
//! blocks) may not have them yet.
//!
//! Two uses of [`PendingData`] (ranges by device offset; a newer write
//! replaces the overlapped bytes):
//! - *queued* (RW): small writes accepted by `append`/`pwrite`, waiting
//!   for the next commit. Why: the WAL pattern (append a few KiB, fsync)
//!   would otherwise cost two replicated round trips in sequence. The
//!   commit journals them (the bytes ride in the ring with the records,
//!   `Op::Journaled`) or, when too many, writes them home in its batch
//!   under a CRC guard (`Op::DataCrc`, see `journal::verified_inline`).
//! - *unhomed* (RW and RO): journaled bytes, tagged with the end lsn of
//!   their transaction, until a checkpoint has written them home and
//!   moved the journal start past the tag.
//!
//! Invariants:
//! - ranges never overlap;
//! - the queued map and the queued records are drained under the same
//!   metadata lock, so a committed record never refers to data left
//!   behind;
//! - reads copy unhomed, then queued bytes over what the device returns.

use std::collections::BTreeMap;

use crate::record::Lsn;

/// Device ranges with their bytes, keyed by device offset; each range
/// carries a tag (the lsn of the transaction that journaled it; 0 for
/// bytes only queued).
#[derive(Debug, Default)]
pub(crate) struct PendingData {
    segs: BTreeMap<u64, (Lsn, Vec<u8>)>,
    bytes: usize,
}

impl PendingData {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Total bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of disjoint ranges.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> usize {
        self.segs.len()
    }

    /// Records a write of `data` at `off`, replacing any overlapped bytes
    /// and merging with an adjacent range (appends stay one range).
    pub(crate) fn insert(&mut self, off: u64, data: Vec<u8>) {
        self.insert_tagged(off, data, 0);
    }

    /// [`PendingData::insert`] with a tag; ranges merge only with
    /// neighbours of the same tag.
    pub(crate) fn insert_tagged(&mut self, off: u64, data: Vec<u8>, tag: Lsn) {
        if data.is_empty() {
            return;
        }
        self.remove_range(off, data.len() as u64);
        self.bytes += data.len();
        let end = off + data.len() as u64;
        let mut off = off;
        let mut data = data;
        if let Some((&l_off, (l_tag, l))) = self.segs.range_mut(..off).next_back() {
            if l_off + l.len() as u64 == off && *l_tag == tag {
                l.extend_from_slice(&data);
                off = l_off;
                data = self.segs.remove(&l_off).expect("just found").1;
            }
        }
        if self.segs.get(&end).is_some_and(|(t, _)| *t == tag) {
            let (_, r) = self.segs.remove(&end).expect("just found");
            data.extend_from_slice(&r);
        }
        self.segs.insert(off, (tag, data));
    }

    /// Drops the bytes of `[off, off + len)`, trimming ranges that stick out.
    pub(crate) fn remove_range(&mut self, off: u64, len: u64) {
        let end = off + len;
        let hit: Vec<u64> = self
            .segs
            .range(..end)
            .rev()
            .take_while(|(&s, (_, d))| s + d.len() as u64 > off)
            .map(|(&s, _)| s)
            .collect();
        for s in hit {
            let (tag, d) = self.segs.remove(&s).expect("just listed");
            self.bytes -= d.len();
            let d_end = s + d.len() as u64;
            if s < off {
                let left = d[..(off - s) as usize].to_vec();
                self.bytes += left.len();
                self.segs.insert(s, (tag, left));
            }
            if d_end > end {
                let right = d[(end - s) as usize..].to_vec();
                self.bytes += right.len();
                self.segs.insert(end, (tag, right));
            }
        }
    }

    /// True when any held byte lies in `[off, off + len)`.
    pub(crate) fn overlaps(&self, off: u64, len: u64) -> bool {
        self.segs
            .range(..off + len)
            .next_back()
            .is_some_and(|(&s, (_, d))| s + d.len() as u64 > off)
    }

    /// Copies of the held pieces inside `[off, off + len)`, clipped to it.
    pub(crate) fn pieces_in(&self, off: u64, len: u64) -> Vec<(u64, Vec<u8>)> {
        let end = off + len;
        let mut out = Vec::new();
        for (&s, (_, d)) in self.segs.range(..end).rev() {
            let d_end = s + d.len() as u64;
            if d_end <= off {
                break;
            }
            let a = s.max(off);
            let b = d_end.min(end);
            out.push((a, d[(a - s) as usize..(b - s) as usize].to_vec()));
        }
        out
    }

    /// Takes everything, in device order.
    pub(crate) fn take(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.bytes = 0;
        std::mem::take(&mut self.segs)
            .into_iter()
            .map(|(o, (_, d))| (o, d))
            .collect()
    }

    /// Copies of every range in device order, adjacent ranges merged
    /// whatever their tags (what goes home: one write per run).
    pub(crate) fn copy_merged(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&o, (_, d)) in &self.segs {
            match out.last_mut() {
                Some((lo, l)) if *lo + l.len() as u64 == o => l.extend_from_slice(d),
                _ => out.push((o, d.clone())),
            }
        }
        out
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.segs.clear();
        self.bytes = 0;
    }

    /// Drops every range tagged at or below `lsn` (journaled bytes that
    /// are home once a checkpoint moved the journal start to `lsn`).
    pub(crate) fn drop_upto(&mut self, lsn: Lsn) {
        let gone: Vec<u64> = self
            .segs
            .iter()
            .filter(|(_, (t, _))| *t <= lsn)
            .map(|(&o, _)| o)
            .collect();
        for o in gone {
            if let Some((_, d)) = self.segs.remove(&o) {
                self.bytes -= d.len();
            }
        }
    }
}

/// True when `[off, off + len)` meets any of `ranges` (`(offset, len)`).
pub(crate) fn overlaps_any(ranges: &[(u64, u64)], off: u64, len: u64) -> bool {
    ranges.iter().any(|&(o, l)| o < off + len && off < o + l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: a flat image with a "held" mask.
    fn check(p: &PendingData, model: &[Option<u8>]) {
        let mut buf = vec![0xEEu8; model.len()];
        for (o, d) in p.pieces_in(0, model.len() as u64) {
            buf[o as usize..o as usize + d.len()].copy_from_slice(&d);
        }
        for (i, m) in model.iter().enumerate() {
            match m {
                Some(v) => assert_eq!(buf[i], *v, "byte {i}"),
                None => assert_eq!(buf[i], 0xEE, "byte {i} should not be held"),
            }
            assert_eq!(p.overlaps(i as u64, 1), m.is_some(), "overlaps at {i}");
        }
        assert_eq!(p.bytes(), model.iter().filter(|m| m.is_some()).count());
        // Ranges are disjoint and non-adjacent after merging only when
        // written adjacently; at least they never overlap.
        let mut last_end = 0;
        for (&s, (_, d)) in &p.segs {
            assert!(s >= last_end, "overlapping ranges");
            last_end = s + d.len() as u64;
        }
    }

    #[test]
    fn random_inserts_and_removals_match_a_flat_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut p = PendingData::default();
        let mut model: Vec<Option<u8>> = vec![None; 300];
        for step in 0..3000 {
            let off = rng.gen_range(0..280u64);
            let len = rng.gen_range(1..20u64);
            if rng.gen_bool(0.75) {
                let v = (step % 251) as u8;
                p.insert(off, vec![v; len as usize]);
                for m in &mut model[off as usize..(off + len) as usize] {
                    *m = Some(v);
                }
            } else {
                p.remove_range(off, len);
                for m in &mut model[off as usize..(off + len) as usize] {
                    *m = None;
                }
            }
            check(&p, &model);
        }
        let all = p.take();
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
        let held: usize = all.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(held, model.iter().filter(|m| m.is_some()).count());
    }

    #[test]
    fn appends_stay_one_range() {
        let mut p = PendingData::default();
        for i in 0..100u64 {
            p.insert(1000 + i * 30, vec![i as u8; 30]);
        }
        assert_eq!(p.ranges(), 1);
        assert_eq!(p.bytes(), 3000);
        // A write that bridges two ranges joins them.
        let mut q = PendingData::default();
        q.insert(0, vec![1; 10]);
        q.insert(20, vec![2; 10]);
        q.insert(10, vec![3; 10]);
        assert_eq!(q.ranges(), 1);
    }

    #[test]
    fn overlaps_any_is_half_open() {
        let r = [(100, 10)];
        assert!(!overlaps_any(&r, 90, 10));
        assert!(overlaps_any(&r, 90, 11));
        assert!(overlaps_any(&r, 109, 1));
        assert!(!overlaps_any(&r, 110, 5));
    }
}
