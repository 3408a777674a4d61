//! One slot per thread that polls instrumented tasks: "this worker started polling a task of
//! site S at coarse time t0", written by the worker on every poll and read by the watchdog.
//! A slot is owned by one thread (single writer) and sits on its own cache lines.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::Relaxed};
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
    /// Fast polls of `pending_site` counted by this thread and not yet added to the site's
    /// histogram. Single writer (plain load + store, no locked instruction); readers add it to
    /// what they read so snapshots are exact even before the owner publishes.
    pub(crate) pending: AtomicU64,
    pub(crate) pending_site: AtomicPtr<Site>,
    /// The owner's histogram shard.
    pub(crate) shard: std::sync::atomic::AtomicUsize,
    in_use: AtomicBool,
    /// Set when the slot is claimed; read by the watchdog.
    pub(crate) owner: Mutex<Owner>,
}

pub(crate) struct Owner {
    pub(crate) engine: Weak<Engine>,
    pub(crate) thread: String,
}

impl WorkerSlot {
    /// The site whose fast polls are pending, if any.
    pub(crate) fn pending_site(&self) -> Option<&'static Site> {
        let site = self.pending_site.load(Relaxed);
        // SAFETY: slots only ever hold pointers to sites, which are leaked (`&'static`) and
        // never freed, so a non-null pointer is valid for the rest of the process.
        (!site.is_null()).then(|| unsafe { &*site })
    }

    /// Adds the pending count to its site's histogram (owner thread only).
    #[inline]
    pub(crate) fn publish_pending(&self, engine: &Engine) {
        let pending = self.pending.load(Relaxed);
        if pending == 0 {
            return;
        }
        if let Some(site) = self.pending_site() {
            engine.count_fast_polls(site, self.shard.load(Relaxed), pending);
        }
        self.pending.store(0, Relaxed);
    }
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: WorkerSlot = WorkerSlot {
    start_ns: AtomicU64::new(0),
    site: AtomicPtr::new(ptr::null_mut()),
    reported_start: AtomicU64::new(0),
    pending: AtomicU64::new(0),
    pending_site: AtomicPtr::new(ptr::null_mut()),
    shard: std::sync::atomic::AtomicUsize::new(0),
    in_use: AtomicBool::new(false),
    owner: Mutex::new(Owner {
        engine: Weak::new(),
        thread: String::new(),
    }),
};

pub(crate) static SLOTS: [WorkerSlot; MAX_SLOTS] = [FREE_SLOT; MAX_SLOTS];

/// Gives the thread's slot back when the thread exits.
struct Claim(Cell<Option<&'static WorkerSlot>>);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(slot) = self.0.get() {
            slot.start_ns.store(0, Relaxed);
            let engine = slot
                .owner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .engine
                .upgrade();
            if let Some(engine) = engine {
                slot.publish_pending(&engine);
            }
            super::stacks::set_owner(index_of(slot), false);
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
    let slot = SLOTS.iter().find(|s| {
        s.in_use
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok()
    });
    let Some(slot) = slot else {
        crate::report::out_of_worker_slots(MAX_SLOTS);
        return None;
    };
    let mut owner = slot.owner.lock().unwrap_or_else(|e| e.into_inner());
    owner.engine = std::sync::Arc::downgrade(engine);
    owner.thread = std::thread::current()
        .name()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:?}", std::thread::current().id()));
    drop(owner);
    slot.reported_start.store(0, Relaxed);
    slot.pending.store(0, Relaxed);
    slot.pending_site.store(ptr::null_mut(), Relaxed);
    slot.shard
        .store(crate::engine::histogram::this_threads_shard(), Relaxed);
    super::stacks::set_owner(index_of(slot), true);
    Some(slot)
}

/// Slots in use now (watchdog).
pub(crate) fn in_use() -> impl Iterator<Item = &'static WorkerSlot> {
    SLOTS.iter().filter(|s| s.in_use.load(Relaxed))
}

/// Slots in use now, with their index (watchdog: stack capture buffers share it).
pub(crate) fn in_use_indexed() -> impl Iterator<Item = (usize, &'static WorkerSlot)> {
    SLOTS
        .iter()
        .enumerate()
        .filter(|(_, s)| s.in_use.load(Relaxed))
}

fn index_of(slot: &'static WorkerSlot) -> usize {
    (slot as *const WorkerSlot as usize - SLOTS.as_ptr() as usize)
        / std::mem::size_of::<WorkerSlot>()
}
