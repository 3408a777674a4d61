//! Production mode's measurement source: tokio's `on_before_task_poll` / `on_after_task_poll`
//! hooks (`--cfg tokio_unstable`, no `tracing` feature needed). They see every poll of every
//! task, LIFO-slot polls included, and give the task's id and spawn location.
//!
//! The per-poll path is built to be left on: a thread-local slot and site cache, one relaxed
//! load of a coarse clock at each end, stores into this thread's own slot, and one atomic add
//! into this thread's histogram shard. No allocation, no lock, no shared cache line written by
//! two workers, no syscall. A watchdog thread advances the clock and watches the slots, so a
//! poll that is still running past the threshold is reported while it runs.

pub(crate) mod console_hint;
pub(crate) mod slots;
pub(crate) mod stacks;
pub(crate) mod watchdog;

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::runtime::TaskMeta;

use crate::clock;
use crate::engine::histogram::this_threads_shard;
use crate::engine::sites::{Site, SiteKey, TaskKind};
use crate::engine::Engine;

const SITE_CACHE_SIZE: usize = 64;

/// Fast polls of one site are added up in the worker's slot and published in one atomic add:
/// every [`PENDING_FLUSH`] polls, when the thread polls another site, when the worker parks
/// and when the thread exits. Readers add what is still pending (see `Engine::site_polls`).
const PENDING_FLUSH: u64 = 64;

/// Everything the hooks touch per poll, in one thread-local without a destructor (so reaching
/// it is a plain TLS access, no lazy-initialisation check).
struct Hot {
    /// 0: first poll not seen yet; 1: measuring; 2: not measured (no slot).
    state: Cell<u8>,
    slot: Cell<Option<&'static slots::WorkerSlot>>,
    shard: Cell<usize>,
    /// Site and coarse start of the poll in progress (start 0: none).
    current: Cell<Option<&'static Site>>,
    start: Cell<u64>,
    /// Direct-mapped cache from spawn location to site: one compare per poll once warm.
    cache: [Cell<(usize, Option<&'static Site>)>; SITE_CACHE_SIZE],
}

thread_local! {
    static HOT: Hot = const {
        Hot {
            state: Cell::new(0),
            slot: Cell::new(None),
            shard: Cell::new(0),
            current: Cell::new(None),
            start: Cell::new(0),
            cache: [const { Cell::new((0, None)) }; SITE_CACHE_SIZE],
        }
    };
}

#[inline]
fn site_of(
    hot: &Hot,
    engine: &Engine,
    location: &'static std::panic::Location<'static>,
) -> &'static Site {
    let key = location as *const _ as usize;
    let entry = &hot.cache[(key >> 3) % SITE_CACHE_SIZE];
    match entry.get() {
        (k, Some(site)) if k == key => site,
        _ => {
            let site = intern(engine, location);
            entry.set((key, Some(site)));
            site
        }
    }
}

#[cold]
fn intern(engine: &Engine, location: &'static std::panic::Location<'static>) -> &'static Site {
    engine.site(&SiteKey {
        kind: TaskKind::Async,
        file: location.file(),
        line: location.line(),
        column: location.column(),
        task_name: None,
    })
}

#[inline]
pub(crate) fn before_poll(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    HOT.with(|hot| {
        if hot.state.get() != 1 && !first_poll_on_thread(hot, engine) {
            return;
        }
        let Some(slot) = hot.slot.get() else { return };
        let site = site_of(hot, engine, meta.spawned_at());
        let now = clock::now_ns();
        hot.current.set(Some(site));
        hot.start.set(now);
        // Published for the watchdog; this thread is the slot's only writer.
        slot.site.store(site as *const Site as *mut Site, Relaxed);
        slot.start_ns.store(now, Relaxed);
    })
}

#[inline]
pub(crate) fn after_poll(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    HOT.with(|hot| {
        let start = hot.start.replace(0);
        let (Some(slot), Some(site), true) = (hot.slot.get(), hot.current.get(), start != 0) else {
            return;
        };
        slot.start_ns.store(0, Relaxed);
        let elapsed = clock::now_ns().saturating_sub(start);
        if elapsed < clock::FAST_POLL_NS {
            let site_ptr = site as *const Site as *mut Site;
            if slot.pending_site.load(Relaxed) != site_ptr {
                slot.publish_pending(engine);
                slot.pending_site.store(site_ptr, Relaxed);
            }
            // Single writer: a plain load and store, no locked instruction.
            let pending = slot.pending.load(Relaxed) + 1;
            slot.pending.store(pending, Relaxed);
            if pending >= PENDING_FLUSH {
                slot.publish_pending(engine);
            }
            return;
        }
        engine.record_timed_poll(
            site,
            hot.shard.get(),
            start,
            elapsed,
            || meta.id().to_string().parse().unwrap_or(0),
            None,
        );
    })
}

/// The site of the task this thread is polling (production mode), if any.
pub(crate) fn current_task_site() -> Option<&'static Site> {
    HOT.try_with(|hot| {
        if hot.start.get() == 0 {
            None
        } else {
            hot.current.get()
        }
    })
    .ok()
    .flatten()
}

/// The worker is about to park: publish what it counted so idle workers hold nothing back.
pub(crate) fn on_park(engine: &Engine) {
    let _ = HOT.try_with(|hot| {
        if let Some(slot) = hot.slot.get() {
            slot.publish_pending(engine);
        }
    });
}

#[cold]
fn first_poll_on_thread(hot: &Hot, engine: &Arc<Engine>) -> bool {
    if hot.state.get() == 2 {
        return false;
    }
    engine.say_startup_notes();
    watchdog::start();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        Engine::watch_runtime(engine, &handle);
    }
    match slots::claim_for_this_thread(engine) {
        Some(slot) => {
            hot.slot.set(Some(slot));
            hot.shard.set(this_threads_shard());
            hot.state.set(1);
            true
        }
        None => {
            hot.state.set(2);
            false
        }
    }
}
