//! The read lease of an RO mount, as its file handles see it.
//!
//! An RO mount's open files are pinned at ctrl only while its mount lease
//! is live: once ctrl stops counting it, the RW may free and reuse the
//! blocks of files the RO still has open. So a read through an RO handle
//! is trusted only if the lease it relied on was valid for the whole read.
//!
//! - `valid_until` = the time the grant or renewal request was *sent* +
//!   lease − [`margin`]. ctrl starts counting when it *receives* the
//!   request, which is later, so this is conservative as long as both
//!   clocks run at the same rate (same host, or bounded drift smaller than
//!   the margin: the assumption the chunkservers' read leases make too).
//! - The *generation* is bumped whenever continuity is broken (ctrl
//!   answered that the lease lapsed, or no renewal was sent before
//!   `valid_until`). A handle opened under an older generation is dead for
//!   good; opening needs a valid lease, which the session grants only
//!   after a catch-up that followed the new grant (so a file the RW freed
//!   in the gap is no longer visible).
//! - A mount not driven by a session (a bare [`crate::Fs::mount`], tests,
//!   fsck) is unenforced: nobody frees blocks behind its back that it has
//!   not been told about.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The part of the lease not trusted, for clock drift and scheduling.
pub(crate) fn margin(lease: Duration) -> Duration {
    lease / 4
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct ReadLease {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    enforced: bool,
    generation: u64,
    /// `None`: no valid lease (lapsed, a new grant is being applied).
    valid_until: Option<Instant>,
}

impl State {
    fn valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }
}

/// Why the lease cannot back a read or an open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lapse {
    /// The handle belongs to a generation before a lapse.
    Stale { opened: u64, now: u64 },
    /// No lease currently known valid.
    Expired,
}

impl std::fmt::Display for Lapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lapse::Stale { opened, now } => write!(
                f,
                "opened under mount lease generation {opened}, which lapsed (now {now}); reopen it"
            ),
            Lapse::Expired => write!(f, "the RO mount lease is not known valid; retry later"),
        }
    }
}

impl ReadLease {
    /// Starts enforcing with a lease requested at `sent`.
    pub(crate) fn enforce(&self, sent: Instant, lease: Duration) {
        let mut s = self.state.lock();
        s.enforced = true;
        s.valid_until = Some(sent + lease - margin(lease));
    }

    /// The generation a handle opened now belongs to.
    pub(crate) fn open_generation(&self) -> Result<u64, Lapse> {
        let s = self.state.lock();
        if s.enforced && !s.valid(Instant::now()) {
            return Err(Lapse::Expired);
        }
        Ok(s.generation)
    }

    /// Ok when a handle of `generation` may trust what it read so far.
    pub(crate) fn check(&self, generation: u64) -> Result<(), Lapse> {
        let s = self.state.lock();
        if !s.enforced {
            return Ok(());
        }
        if s.generation != generation {
            return Err(Lapse::Stale {
                opened: generation,
                now: s.generation,
            });
        }
        if !s.valid(Instant::now()) {
            return Err(Lapse::Expired);
        }
        Ok(())
    }

    /// A renewal sent at `sent` succeeded. Returns false (and changes
    /// nothing) when it was sent after the lease had run out: continuity is
    /// broken and the caller must [`ReadLease::lapse`].
    pub(crate) fn extend(&self, sent: Instant, lease: Duration) -> bool {
        let mut s = self.state.lock();
        if !s.valid(sent) {
            return false;
        }
        let v = sent + lease - margin(lease);
        s.valid_until = Some(s.valid_until.map_or(v, |old| old.max(v)));
        true
    }

    /// Continuity is broken: kills every handle opened so far and refuses
    /// opens until [`ReadLease::grant`]. Returns the new generation.
    pub(crate) fn lapse(&self) -> u64 {
        let mut s = self.state.lock();
        s.generation += 1;
        s.valid_until = None;
        s.generation
    }

    /// A lease requested at `sent` is held again and the metadata was
    /// reloaded after it was granted: opens work again.
    pub(crate) fn grant(&self, sent: Instant, lease: Duration) {
        let mut s = self.state.lock();
        s.valid_until = Some(sent + lease - margin(lease));
    }

    /// True while enforced and not known valid.
    pub(crate) fn lapsed(&self) -> bool {
        let s = self.state.lock();
        s.enforced && !s.valid(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(4);

    #[test]
    fn unenforced_never_lapses() {
        let l = ReadLease::default();
        assert_eq!(l.open_generation(), Ok(0));
        assert_eq!(l.check(0), Ok(()));
        assert!(!l.lapsed());
    }

    #[test]
    fn valid_until_counts_from_the_send_time_minus_the_margin() {
        let l = ReadLease::default();
        let long_ago = Instant::now() - (LEASE - margin(LEASE));
        l.enforce(long_ago, LEASE);
        assert_eq!(l.check(0), Err(Lapse::Expired));
        assert_eq!(l.open_generation(), Err(Lapse::Expired));
        // A renewal sent after that point cannot repair continuity.
        assert!(!l.extend(Instant::now(), LEASE));
        assert_eq!(l.check(0), Err(Lapse::Expired));

        let l = ReadLease::default();
        l.enforce(Instant::now(), LEASE);
        assert_eq!(l.check(0), Ok(()));
        assert!(l.extend(Instant::now(), LEASE));
        assert_eq!(l.open_generation(), Ok(0));
    }

    #[test]
    fn a_lapse_kills_older_handles_for_good() {
        let l = ReadLease::default();
        l.enforce(Instant::now(), LEASE);
        let g = l.open_generation().unwrap();
        assert_eq!(l.lapse(), g + 1);
        assert_eq!(l.open_generation(), Err(Lapse::Expired));
        l.grant(Instant::now(), LEASE);
        assert_eq!(
            l.check(g),
            Err(Lapse::Stale {
                opened: g,
                now: g + 1
            })
        );
        assert_eq!(l.open_generation(), Ok(g + 1));
        assert_eq!(l.check(g + 1), Ok(()));
    }
}
