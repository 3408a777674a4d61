//! The open exclusive holds of each tokio lock the layer tracks, kept outside the registry: a
//! lock's `state_update` events reach them from the per-thread scope ([`super::scopes`]) with no
//! registry lookup. A lookup takes two atomic read-modify-writes on the lock's span slot, which
//! every worker touches, and the `locked = true` event comes inside the critical section.
//!
//! Entries are recycled when their lock's span closes, so the memory is the most tracked locks
//! alive at once (a few words each), never the number of locks ever made.

use std::sync::Mutex;

use crate::engine::locks::LockSite;

/// Holds open at once per lock; more means release events were lost (dropped events).
const MAX_OPEN_HOLDS: usize = 4;

/// A lock the layer tracks: where it was made, and its open holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrackedLock {
    pub(crate) site: &'static LockSite,
    pub(crate) holds: &'static OpenHolds,
}

impl PartialEq for TrackedLock {
    fn eq(&self, other: &TrackedLock) -> bool {
        std::ptr::eq(self.site, other.site) && std::ptr::eq(self.holds, other.holds)
    }
}

/// Coarse start times of exclusive holds not yet released, oldest first. At a handover the next
/// holder's `locked = true` can arrive (from another worker) before the previous holder's
/// `locked = false`, so two can be open at once; a release ends the oldest.
#[derive(Debug, Default)]
pub(crate) struct OpenHolds(Mutex<Ring>);

#[derive(Debug, Default)]
struct Ring {
    starts: [u64; MAX_OPEN_HOLDS],
    oldest: usize,
    len: usize,
}

/// Entries of locks whose span closed, for the next locks made.
static FREE: Mutex<Vec<&'static OpenHolds>> = Mutex::new(Vec::new());

impl OpenHolds {
    /// An entry for a lock just made: a recycled one, or a new one that lives as long as the
    /// process (it is recycled in turn when its lock's span closes).
    pub(crate) fn take() -> &'static OpenHolds {
        let recycled = FREE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        recycled.unwrap_or_else(|| Box::leak(Box::default()))
    }

    /// The lock's span closed: the entry, emptied, goes to the next lock made. Call once.
    pub(crate) fn give_back(&'static self) {
        *self.ring() = Ring::default();
        FREE.lock().unwrap_or_else(|e| e.into_inner()).push(self);
    }

    /// An exclusive hold began at `now` (coarse ns); the oldest open one is dropped if full.
    pub(crate) fn begin(&self, now: u64) {
        let mut ring = self.ring();
        if ring.len == MAX_OPEN_HOLDS {
            ring.oldest = (ring.oldest + 1) % MAX_OPEN_HOLDS;
            ring.len -= 1;
        }
        let at = (ring.oldest + ring.len) % MAX_OPEN_HOLDS;
        ring.starts[at] = now;
        ring.len += 1;
    }

    /// An exclusive hold ended at `now`: how long the oldest open one was held, if any is.
    pub(crate) fn end(&self, now: u64) -> Option<u64> {
        let mut ring = self.ring();
        if ring.len == 0 {
            return None;
        }
        let since = ring.starts[ring.oldest];
        ring.oldest = (ring.oldest + 1) % MAX_OPEN_HOLDS;
        ring.len -= 1;
        Some(now.saturating_sub(since))
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_ends_the_oldest_open_hold() {
        let holds = OpenHolds::default();
        assert_eq!(holds.end(5), None, "no hold open");
        holds.begin(10);
        holds.begin(20); // the next holder's event came first
        assert_eq!(holds.end(25), Some(15));
        assert_eq!(holds.end(40), Some(20));
        assert_eq!(holds.end(50), None);
    }

    #[test]
    fn lost_releases_keep_the_newest_holds() {
        let holds = OpenHolds::default();
        for start in 1..=MAX_OPEN_HOLDS as u64 + 2 {
            holds.begin(start * 10);
        }
        // The two oldest (10 and 20) were dropped.
        assert_eq!(holds.end(100), Some(70));
    }

    #[test]
    fn an_entry_given_back_is_empty_when_taken_again() {
        let holds = OpenHolds::take();
        holds.begin(1);
        holds.give_back();
        // Another test's entry may come first: take until this one is found, at most all.
        let mut taken = Vec::new();
        loop {
            let next = OpenHolds::take();
            taken.push(next);
            if std::ptr::eq(next, holds) || taken.len() > 64 {
                break;
            }
        }
        assert!(taken.iter().any(|h| std::ptr::eq(*h, holds)));
        assert_eq!(holds.end(5), None, "recycled empty");
        for h in taken {
            h.give_back();
        }
    }
}
