//! Where a tracked acquisition keeps its state while its `runtime.resource.async_op` span is
//! open: a slot of a fixed table, claimed by span id at the span's creation and given back at
//! its close. A registry extension per acquisition cost a box, a map insert and their drop at
//! the close: about 350 instructions per tokio `lock()` over the slot (callgrind: 4,939 ->
//! 4,587 added by the layer). A slot costs a compare-and-swap to claim and a store to give back,
//! and any thread finds it from the span id alone, without the registry.
//!
//! The table is bounded ([`SLOTS`] in flight, 128 KB of zeroed memory touched as slots are
//! used); an acquisition that finds its few candidate slots taken keeps its state in a
//! registry extension instead, as before. One table serves every layer in the process: span
//! ids are only unique within one registry, so a slot also names the layer that claimed it
//! ([`OpOwner`]).

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use super::span_classes::mix;
use crate::engine::locks::{LockOp, LockSite};

/// Acquisitions in flight the process-wide table holds.
const SLOTS: usize = 2048;

/// Slots an acquisition may take, from the one its span id hashes to: a full neighbourhood
/// sends it to the registry rather than searching on.
const PROBES: usize = 8;

/// A slot being filled in: taken, its owner not yet published.
const FILLING: u64 = u64::MAX;

/// A tracked acquisition: which lock and operation, when its wait began, and what its polls
/// said. On its own cache line: workers polling different acquisitions write their flags.
#[repr(align(64))]
pub(crate) struct AsyncOpWait {
    /// The async-op span this slot belongs to (0: free; [`FILLING`]: being claimed). Always 0
    /// for a state kept in a registry extension.
    span: AtomicU64,
    /// The layer that claimed the slot ([`OpOwner`]).
    owner: AtomicUsize,
    site: AtomicPtr<LockSite>,
    op: AtomicU8,
    /// When the acquisition began (coarse clock).
    pub(crate) created: AtomicU64,
    /// A poll of it was ready: the lock was obtained.
    pub(crate) ready: AtomicBool,
    /// A poll of it was pending: it waited.
    pub(crate) pending: AtomicBool,
}

impl AsyncOpWait {
    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: AsyncOpWait = AsyncOpWait {
        span: AtomicU64::new(0),
        owner: AtomicUsize::new(0),
        site: AtomicPtr::new(ptr::null_mut()),
        op: AtomicU8::new(0),
        created: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        pending: AtomicBool::new(false),
    };

    /// The state of an acquisition kept outside the table (a registry extension).
    pub(crate) fn unlisted(site: &'static LockSite, op: LockOp, created: u64) -> AsyncOpWait {
        let wait = AsyncOpWait::FREE;
        wait.fill(site, op, created);
        wait
    }

    fn fill(&self, site: &'static LockSite, op: LockOp, created: u64) {
        self.site
            .store(site as *const LockSite as *mut LockSite, Relaxed);
        self.op.store(op as u8, Relaxed);
        self.created.store(created, Relaxed);
        self.ready.store(false, Relaxed);
        self.pending.store(false, Relaxed);
    }

    /// The lock acquired.
    pub(crate) fn site(&self) -> &'static LockSite {
        // SAFETY: set by `fill` before the state is reachable (a claimed slot is published with
        // Release after it, found with Acquire), and lock sites are leaked, never freed.
        unsafe { &*self.site.load(Relaxed) }
    }

    /// The operation (lock, read, write, acquire).
    pub(crate) fn op(&self) -> LockOp {
        LockOp::from_u8(self.op.load(Relaxed))
    }
}

/// A layer, as the owner of the slots it claims: span ids are only unique within one registry.
/// Numbered from a process-wide counter, never reused (a layer's address could be, by a layer
/// made after it was dropped, while its spans that never closed still held slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpOwner(usize);

impl OpOwner {
    pub(crate) fn new() -> OpOwner {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        OpOwner(NEXT.fetch_add(1, Relaxed))
    }
}

/// A fixed table of acquisition states, found by span id.
pub(crate) struct AsyncOpTable<const N: usize> {
    slots: [AsyncOpWait; N],
}

/// The process's table (every layer shares it: span ids are the registry's, and a slot is
/// claimed by the layer that sees the span made).
pub(crate) static ASYNC_OPS: AsyncOpTable<SLOTS> = AsyncOpTable::new();

impl<const N: usize> AsyncOpTable<N> {
    pub(crate) const fn new() -> Self {
        assert!(N.is_power_of_two() && N >= PROBES);
        AsyncOpTable {
            slots: [AsyncOpWait::FREE; N],
        }
    }

    /// The slots span `span` may occupy, in order.
    fn candidates(&self, span: u64) -> impl Iterator<Item = &AsyncOpWait> {
        // Span ids hold a slab index in their low bits and a shard and generation higher up:
        // the class cache's hash spreads them all.
        let home = (mix(span) >> 32) as usize;
        (0..PROBES).map(move |i| &self.slots[(home + i) & (N - 1)])
    }

    /// Claims a slot for the acquisition of span `span` of `owner`'s registry; `None` when its
    /// neighbourhood is full.
    pub(crate) fn claim(
        &self,
        owner: OpOwner,
        span: u64,
        site: &'static LockSite,
        op: LockOp,
        created: u64,
    ) -> Option<&AsyncOpWait> {
        let slot = self.candidates(span).find(|slot| {
            slot.span.load(Relaxed) == 0
                && slot
                    .span
                    .compare_exchange(0, FILLING, Acquire, Relaxed)
                    .is_ok()
        })?;
        slot.owner.store(owner.0, Relaxed);
        slot.fill(site, op, created);
        slot.span.store(span, Release);
        Some(slot)
    }

    /// The state of the acquisition of span `span` of `owner`'s registry, if it holds a slot.
    /// (The span is open: its slot stays its own meanwhile.)
    pub(crate) fn find(&self, owner: OpOwner, span: u64) -> Option<&AsyncOpWait> {
        self.candidates(span).find(|slot| {
            // Another registry's span of the same id may hold a slot too. Its slot can be given
            // back and claimed again between the two loads: the second look at the span says
            // whether the owner read belongs to it.
            slot.span.load(Acquire) == span
                && slot.owner.load(Relaxed) == owner.0
                && slot.span.load(Acquire) == span
        })
    }

    /// Gives `wait`'s slot back (its span closed); nothing for a state kept elsewhere.
    pub(crate) fn release(&self, wait: &AsyncOpWait) {
        if self
            .slots
            .as_ptr_range()
            .contains(&(wait as *const AsyncOpWait))
        {
            wait.span.store(0, Release);
        }
    }

    /// Slots `owner` holds now (tests).
    #[cfg(test)]
    pub(crate) fn held_by(&self, owner: OpOwner) -> usize {
        self.slots
            .iter()
            .filter(|s| s.span.load(Relaxed) != 0 && s.owner.load(Relaxed) == owner.0)
            .count()
    }

    /// Slots taken now (tests).
    #[cfg(test)]
    fn taken(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.span.load(Relaxed) != 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::locks::{LockKind, LockTable};

    fn site() -> &'static LockSite {
        let bounds = crate::engine::histogram::Bounds::new(&[0.1]);
        let table = Box::leak(Box::new(LockTable::new(
            8,
            &bounds,
            std::time::Duration::from_millis(100),
        )));
        table.intern(LockKind::TokioMutex, "src/x.rs", 1, 2, None, &|_| {})
    }

    #[test]
    fn a_claimed_slot_is_found_by_its_span_until_released() {
        let table = AsyncOpTable::<16>::new();
        let site = site();
        let wait = table
            .claim(OpOwner(1), 42, site, LockOp::Lock, 7)
            .expect("a free slot");
        wait.pending.store(true, Relaxed);
        let found = table.find(OpOwner(1), 42).expect("found by span id");
        assert!(ptr::eq(found, wait));
        assert!(ptr::eq(found.site(), site));
        assert_eq!(found.op(), LockOp::Lock);
        assert_eq!(found.created.load(Relaxed), 7);
        assert!(found.pending.load(Relaxed));
        assert!(table.find(OpOwner(1), 43).is_none());

        table.release(wait);
        assert!(table.find(OpOwner(1), 42).is_none());
        assert_eq!(table.taken(), 0);
        // Reused, its flags start clear.
        let again = table
            .claim(OpOwner(1), 42, site, LockOp::Lock, 9)
            .expect("free again");
        assert!(!again.pending.load(Relaxed) && !again.ready.load(Relaxed));
    }

    #[test]
    fn the_same_span_id_of_two_registries_holds_two_slots() {
        let table = AsyncOpTable::<16>::new();
        let site = site();
        let first = table
            .claim(OpOwner(1), 42, site, LockOp::Lock, 1)
            .expect("room");
        let second = table
            .claim(OpOwner(2), 42, site, LockOp::Write, 2)
            .expect("room");
        assert!(!ptr::eq(first, second));
        assert!(ptr::eq(table.find(OpOwner(1), 42).expect("first"), first));
        assert!(ptr::eq(table.find(OpOwner(2), 42).expect("second"), second));
        assert!(table.find(OpOwner(3), 42).is_none());
        table.release(first);
        assert!(table.find(OpOwner(1), 42).is_none());
        assert!(ptr::eq(table.find(OpOwner(2), 42).expect("second"), second));
    }

    #[test]
    fn a_full_neighbourhood_refuses_and_states_outside_are_not_released_into_it() {
        let table = AsyncOpTable::<8>::new();
        let site = site();
        // Eight slots, eight probes: every span's neighbourhood is the whole table.
        let claimed: Vec<_> = (1..=8)
            .map(|span| {
                table
                    .claim(OpOwner(1), span, site, LockOp::Lock, 1)
                    .expect("room")
            })
            .collect();
        assert!(table.claim(OpOwner(1), 9, site, LockOp::Lock, 1).is_none());
        for span in 1..=8 {
            assert!(table.find(OpOwner(1), span).is_some(), "span {span}");
        }
        let outside = AsyncOpWait::unlisted(site, LockOp::Write, 3);
        table.release(&outside);
        assert_eq!(table.taken(), 8);
        assert_eq!(outside.op(), LockOp::Write);

        table.release(claimed[3]);
        assert!(table.claim(OpOwner(1), 9, site, LockOp::Lock, 1).is_some());
    }

    #[test]
    fn threads_claim_distinct_slots() {
        let table = AsyncOpTable::<256>::new();
        let site = site();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let table = &table;
                s.spawn(move || {
                    for round in 0..1_000u64 {
                        let span = 1 + t * 1_000_000 + round;
                        let wait = table
                            .claim(OpOwner(1), span, site, LockOp::Lock, span)
                            .expect("room");
                        let found = table.find(OpOwner(1), span).expect("own slot");
                        assert_eq!(found.created.load(Relaxed), span);
                        table.release(wait);
                    }
                });
            }
        });
        assert_eq!(table.taken(), 0);
    }
}
