//! One slot per thread that polls instrumented tasks: "this worker started polling a task of
//! site S at coarse time t0", written by the worker on every poll and read by the watchdog.
//! A slot is owned by one thread (single writer) and sits on its own cache lines.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Mutex, Weak};

use crate::engine::sites::Site;
use crate::engine::Engine;

/// Threads polling instrumented tasks at once; a thread beyond this is not measured (and the
/// watchdog reports that once).
pub(crate) const MAX_SLOTS: usize = 256;

#[repr(align(128))]
pub(crate) struct WorkerSlot {
    /// Coarse start of the poll in progress; 0 while the worker is not polling.
    pub(crate) start_ns: AtomicU64,
    pub(crate) site: AtomicPtr<Site>,
    /// `start_ns` of the poll the watchdog last reported as a live stall: one report per stall.
    pub(crate) reported_start: AtomicU64,
    /// `start_ns` of the poll whose stack the watchdog asked this worker for: its slow-poll
    /// report waits for that stack.
    pub(crate) stack_for: AtomicU64,
    /// The owner's fast-poll counters.
    pub(crate) counters: PollCounters,
    /// Odd while the owner moves counts from its counters to the histograms: a reader that
    /// saw it odd, or changed, read some counts twice or not at all and reads again.
    publishing: AtomicU64,
    /// The owner's histogram shard.
    pub(crate) shard: std::sync::atomic::AtomicUsize,
    /// Position in [`SLOTS`] (stack capture buffers are indexed alike).
    pub(crate) index: usize,
    /// With the CPU's counter: the stamp at which the owner last unparked (or started), 0 while
    /// it is parked or for an owner without park hooks (full mode). Read by the watchdog to
    /// know when it may sleep.
    pub(crate) unparked_at: AtomicU64,
    /// The stamp of the watchdog's last look that found the owner polling (watchdog only).
    pub(crate) seen_polling_at: AtomicU64,
    in_use: AtomicBool,
    /// Set when the slot is claimed; read by the watchdog.
    pub(crate) owner: Mutex<Option<Owner>>,
}

pub(crate) struct Owner {
    pub(crate) engine: Weak<Engine>,
    pub(crate) thread: String,
}

/// Counters per slot: a direct-mapped table from spawn location to site, so tasks spawned at a
/// few dozen places poll without evicting each other.
pub(crate) const COUNTERS: usize = 64;

/// Fast polls of one spawn location, counted by the slot's owner and not yet added to its
/// site's histogram. Single writer: the owner counts with a plain load and store (no locked
/// instruction); readers add `pending` to what they read, so snapshots are exact before the
/// owner publishes.
pub(crate) struct PollCounter {
    /// The `&'static Location` the counter belongs to, as an address (0: unused).
    location: AtomicUsize,
    site: AtomicPtr<Site>,
    pending: AtomicU64,
}

pub(crate) struct PollCounters([PollCounter; COUNTERS]);

impl PollCounters {
    /// The counter slot for `location` (an address), whichever location holds it now.
    #[inline]
    pub(crate) fn entry(&self, location: usize) -> &PollCounter {
        // Locations are 24-byte statics laid out side by side: the bits above the alignment
        // tell neighbours apart.
        &self.0[(location >> 3) % COUNTERS]
    }

    /// Every counter with polls pending, as (site, pending).
    pub(crate) fn pending(&self) -> impl Iterator<Item = (&'static Site, u64)> + '_ {
        self.0.iter().filter_map(|c| {
            let pending = c.pending.load(Relaxed);
            c.site().filter(|_| pending != 0).map(|s| (s, pending))
        })
    }
}

impl PollCounter {
    /// Whether this counter counts the polls of tasks spawned at `location`.
    #[inline]
    pub(crate) fn counts(&self, location: usize) -> bool {
        self.location.load(Relaxed) == location
    }

    /// One more fast poll (owner thread only).
    #[inline]
    pub(crate) fn count_one(&self) {
        self.pending.store(self.pending.load(Relaxed) + 1, Relaxed);
    }

    /// The site of the location counted here.
    pub(crate) fn site(&self) -> Option<&'static Site> {
        let site = self.site.load(Relaxed);
        // SAFETY: counters only ever hold pointers to sites, which are leaked (`&'static`) and
        // never freed, so a non-null pointer is valid for the rest of the process.
        (!site.is_null()).then(|| unsafe { &*site })
    }

    /// Site pointer as published in the slot for the watchdog.
    #[inline]
    pub(crate) fn site_ptr(&self) -> *mut Site {
        self.site.load(Relaxed)
    }

    /// Adds the pending count to the site's histogram (owner thread only).
    fn publish(&self, engine: &Engine, shard: usize) {
        let pending = self.pending.load(Relaxed);
        if pending == 0 {
            return;
        }
        if let Some(site) = self.site() {
            engine.count_fast_polls(site, shard, pending);
        }
        self.pending.store(0, Relaxed);
    }
}

impl WorkerSlot {
    /// The owner unparked or started (with the CPU's counter; owner thread only): the watchdog
    /// stays awake while it runs. Paired with the watchdog's fence as it goes to sleep: it sees
    /// this, or the owner sees it asleep and wakes it.
    pub(crate) fn mark_unparked(&self) {
        if crate::clock::precise() {
            self.unparked_at.store(crate::clock::stamp_now(), Relaxed);
            fence(std::sync::atomic::Ordering::SeqCst);
            crate::clock::wake_watcher();
        }
    }

    /// The owner is about to park (owner thread only).
    pub(crate) fn mark_parked(&self) {
        self.unparked_at.store(0, Relaxed);
    }

    /// Adds every pending count to its site's histogram (owner thread only).
    pub(crate) fn publish_pending(&self, engine: &Engine) {
        let shard = self.shard.load(Relaxed);
        self.publish(|| {
            for counter in &self.counters.0 {
                counter.publish(engine, shard);
            }
        });
    }

    /// Runs `moves` (counts moved from counters to histograms) as a seqlock writer, so readers
    /// see each count in exactly one place.
    fn publish(&self, moves: impl FnOnce()) {
        let seq = self.publishing.load(Relaxed);
        self.publishing.store(seq + 1, Relaxed);
        fence(Release);
        moves();
        self.publishing.store(seq + 2, Release);
    }

    /// The poll that began at `start` in this slot, if the watchdog asked for its stack while
    /// it ran (read by the owner as the poll ends).
    pub(crate) fn stack_of(&self, start: u64) -> Option<crate::engine::stall::StackKey> {
        (self.stack_for.load(Relaxed) == start).then_some(crate::engine::stall::StackKey {
            slot: self.index,
            start,
        })
    }

    /// The engine and thread name of the slot's owner.
    pub(crate) fn owner(&self) -> Option<(Option<std::sync::Arc<Engine>>, String)> {
        let owner = self.owner.lock().unwrap_or_else(|e| e.into_inner());
        owner
            .as_ref()
            .map(|o| (o.engine.upgrade(), o.thread.clone()))
    }

    /// Makes `counter` count the polls of `location`, at `site`: the location it counted
    /// before is published first (owner thread only).
    #[cold]
    pub(crate) fn recount(
        &self,
        engine: &Engine,
        counter: &PollCounter,
        location: usize,
        site: &'static Site,
    ) {
        self.publish(|| {
            counter.publish(engine, self.shard.load(Relaxed));
            counter
                .site
                .store(site as *const Site as *mut Site, Relaxed);
            counter.location.store(location, Relaxed);
        });
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const UNUSED: PollCounter = PollCounter {
    location: AtomicUsize::new(0),
    site: AtomicPtr::new(ptr::null_mut()),
    pending: AtomicU64::new(0),
};

/// Slots, allocated when a thread first claims one at that index and kept for later owners: at
/// most [`MAX_SLOTS`] (~1.7 KB each), however many threads come and go. The array itself is
/// zeroes, so a process that never polls costs nothing here.
static SLOTS: [AtomicPtr<WorkerSlot>; MAX_SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAX_SLOTS];

/// The slot at `index`, if a thread ever claimed it.
pub(crate) fn at(index: usize) -> Option<&'static WorkerSlot> {
    let slot = SLOTS.get(index)?.load(Acquire);
    // SAFETY: slots are leaked when allocated and never freed.
    (!slot.is_null()).then(|| unsafe { &*slot })
}

/// The slot at `index`, allocated if no thread claimed it before.
fn at_or_new(index: usize) -> &'static WorkerSlot {
    if let Some(slot) = at(index) {
        return slot;
    }
    let new = Box::into_raw(Box::new(WorkerSlot {
        start_ns: AtomicU64::new(0),
        site: AtomicPtr::new(ptr::null_mut()),
        reported_start: AtomicU64::new(0),
        stack_for: AtomicU64::new(0),
        counters: PollCounters([UNUSED; COUNTERS]),
        publishing: AtomicU64::new(0),
        shard: std::sync::atomic::AtomicUsize::new(0),
        index,
        unparked_at: AtomicU64::new(0),
        seen_polling_at: AtomicU64::new(0),
        in_use: AtomicBool::new(false),
        owner: Mutex::new(None),
    }));
    match SLOTS[index].compare_exchange(ptr::null_mut(), new, AcqRel, Acquire) {
        // SAFETY: just leaked; never freed.
        Ok(_) => unsafe { &*new },
        Err(winner) => {
            // SAFETY: `new` was never shared; `winner` is leaked like every slot.
            drop(unsafe { Box::from_raw(new) });
            unsafe { &*winner }
        }
    }
}

/// Gives the thread's slot back when the thread exits.
struct Claim(Cell<Option<&'static WorkerSlot>>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(slot) = self.0.get() {
            slot.start_ns.store(0, Relaxed);
            if let Some((Some(engine), _)) = slot.owner() {
                slot.publish_pending(&engine);
            }
            super::stacks::set_owner(slot.index, false);
            slot.in_use.store(false, Relaxed);
        }
    }
}

thread_local! {
    static CLAIM: Claim = const { Claim(Cell::new(None)) };
}

/// Claims a slot for this thread, released when the thread exits; `None` if all are taken.
pub(crate) fn claim_for_this_thread(
    engine: &std::sync::Arc<Engine>,
) -> Option<&'static WorkerSlot> {
    CLAIM
        .try_with(|c| {
            if let Some(slot) = c.0.get() {
                return Some(slot);
            }
            let slot = claim(engine)?;
            c.0.set(Some(slot));
            Some(slot)
        })
        .ok()
        .flatten()
}

#[cold]
fn claim(engine: &std::sync::Arc<Engine>) -> Option<&'static WorkerSlot> {
    let slot = (0..MAX_SLOTS).map(at_or_new).find(|s| {
        s.in_use
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok()
    });
    let Some(slot) = slot else {
        crate::engine::deferred::line(|| crate::report::out_of_worker_slots(MAX_SLOTS));
        return None;
    };
    *slot.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(Owner {
        engine: std::sync::Arc::downgrade(engine),
        thread: std::thread::current()
            .name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{:?}", std::thread::current().id())),
    });
    slot.reported_start.store(0, Relaxed);
    slot.stack_for.store(0, Relaxed);
    slot.unparked_at.store(0, Relaxed);
    slot.seen_polling_at.store(0, Relaxed);
    // A previous owner published what it counted when its thread exited; its sites may
    // belong to another stallscope instance, so every counter starts unused.
    for counter in &slot.counters.0 {
        counter.pending.store(0, Relaxed);
        counter.location.store(0, Relaxed);
        counter.site.store(ptr::null_mut(), Relaxed);
    }
    slot.shard
        .store(crate::engine::histogram::this_threads_shard(), Relaxed);
    super::stacks::set_owner(slot.index, true);
    Some(slot)
}

/// Slots in use now (watchdog).
pub(crate) fn in_use() -> impl Iterator<Item = &'static WorkerSlot> {
    (0..MAX_SLOTS)
        .map_while(at)
        .filter(|s| s.in_use.load(Relaxed))
}

/// Slots in use now, with their index (watchdog: stack capture buffers share it).
pub(crate) fn in_use_indexed() -> impl Iterator<Item = (usize, &'static WorkerSlot)> {
    in_use().map(|s| (s.index, s))
}

/// Where each slot in use stands in its publications: taken before reading counters and
/// histograms, compared after ([`publications_unchanged_since`]).
pub(crate) fn publications() -> Vec<(usize, u64)> {
    in_use()
        .map(|s| (s.index, s.publishing.load(Acquire)))
        .collect()
}

/// True when no slot published (or was claimed or released) since `before` and none was in
/// the middle of it: what was read in between counts each poll once.
pub(crate) fn publications_unchanged_since(before: &[(usize, u64)]) -> bool {
    fence(Acquire);
    before.iter().all(|&(_, seq)| seq % 2 == 0)
        && in_use()
            .map(|s| (s.index, s.publishing.load(Relaxed)))
            .eq(before.iter().copied())
}
