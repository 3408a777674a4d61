//! Production mode's measurement source: tokio's `on_before_task_poll` / `on_after_task_poll`
//! hooks (`--cfg tokio_unstable`, no `tracing` feature needed). They see every poll of every
//! task, LIFO-slot polls included, and give the task's id and spawn location.
//!
//! The per-poll path is built to be left on. Before a poll: one compare in this thread's
//! table of spawn locations, two stores into this thread's slot (site and start, for the
//! watchdog) and one read of the clock (the CPU's counter, or the coarse clock's value: see
//! [`clock`]). After it: the clock again and, for a poll under [`clock::fast_poll_ns`] (two
//! ticks), a plain increment of this thread's counter for the location. No allocation, no
//! lock, no locked instruction, no shared cache line written by two workers, no syscall: about
//! 59 instructions per poll inside both hooks
//! (`scripts/hot-path-guard.sh` counts them; tokio's own dispatch of the hooks adds about 22).
//! Counts reach the sites' histograms when a table entry is reused, when the worker parks and
//! when it exits; snapshots add what is pending. A watchdog thread watches the slots (and
//! advances the coarse clock, where that is the clock), so a poll that is still running past
//! the threshold is reported while it runs; it sleeps while no poll runs (see [`clock`]).
//!
//! A source, in the flow sources → engine → sinks: the hooks call into the engine, which
//! imports nothing from here. [`instrument_runtime`] is the one place runtime hooks are
//! installed; what the engine and the clock ask of the hooks (the task polling on this thread,
//! fast polls not yet published, the watchdog's look each tick) is registered with them by the
//! builder ([`sources`], [`upkeep`]). The watchdog's own findings for tokio-console
//! ([`console_hint`]) and the lines about stacks go straight to their sink.

pub(crate) mod console_hint;
pub(crate) mod slots;
pub(crate) mod stacks;
pub(crate) mod watchdog;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use tokio::runtime::TaskMeta;

use crate::clock;
use crate::engine::sites::{Site, SiteKey, TaskKind};
use crate::engine::Engine;

use slots::{PollCounter, WorkerSlot};

/// Installs production mode's poll hooks on `builder`: the one place runtime hooks are
/// installed (the layer's and the guard's `instrument_runtime` both come here).
pub(crate) fn instrument_runtime<'b>(
    engine: &Arc<Engine>,
    builder: &'b mut tokio::runtime::Builder,
) -> &'b mut tokio::runtime::Builder {
    Engine::start(engine);
    engine.hooks_installed.store(true, Relaxed);
    let (before, after) = (engine.clone(), engine.clone());
    let park = engine.clone();
    // This runtime's first park (on any of its threads) makes it known: a thread's first poll
    // does too, but a thread that builds a runtime per request polls the later ones with its
    // slot long claimed.
    let parked_before = AtomicBool::new(false);
    // The clock is fixed before any hook runs (the engine fixed it as it was made): the hooks
    // read the CPU's counter, or the coarse clock, without asking which per poll.
    if clock::precise() {
        builder
            .on_before_task_poll(move |meta| before_poll::<true>(&before, meta))
            .on_after_task_poll(move |meta| after_poll::<true>(&after, meta));
    } else {
        builder
            .on_before_task_poll(move |meta| before_poll::<false>(&before, meta))
            .on_after_task_poll(move |meta| after_poll::<false>(&after, meta));
    }
    builder
        .on_thread_park(move || {
            if !parked_before.load(Relaxed) && !parked_before.swap(true, Relaxed) {
                runtime_parks_first(&park);
            }
            on_park(&park)
        })
        .on_thread_unpark(on_unpark)
}

/// What the engine asks of the poll hooks: which task polls on this thread, and the fast polls
/// counted but not yet published. The wiring (`crate::builder`) registers it, with full mode's
/// lookup in `span_task`.
pub(crate) fn sources() -> crate::engine::Sources {
    crate::engine::Sources {
        span_task: || None,
        hooked_task: current_task_site,
        pending_fast_polls: |f| {
            for slot in slots::in_use() {
                for (site, n) in slot.counters.pending() {
                    f(site, n);
                }
            }
        },
        publications: slots::publications,
        publications_unchanged_since: slots::publications_unchanged_since,
    }
}

/// What the clock's upkeep thread asks of the hooks: the watchdog's look at the worker slots
/// each tick. The wiring registers it, with the report's line in `no_thread`.
pub(crate) fn upkeep() -> clock::Upkeep {
    clock::Upkeep {
        look: watchdog::scan,
        polling: watchdog::polling,
        unparked: watchdog::unparked,
        watching: true,
        no_thread: |_| {},
        counter_left: |_| {},
    }
}

/// Everything the hooks touch per poll, in one thread-local without a destructor (so reaching
/// it is a plain TLS access, no lazy-initialisation check).
struct Hot {
    /// This thread's slot, once its first poll claimed one.
    slot: Cell<Option<&'static WorkerSlot>>,
    /// The counter of the poll in progress, set before it and used after it.
    counter: Cell<Option<&'static PollCounter>>,
    /// The first poll on this thread found no free slot: its polls are not measured.
    unmeasured: Cell<bool>,
    /// This thread parked before (see [`on_park`]).
    parked_before: Cell<bool>,
}

thread_local! {
    static HOT: Hot = const {
        Hot {
            slot: Cell::new(None),
            counter: Cell::new(None),
            unmeasured: Cell::new(false),
            parked_before: Cell::new(false),
        }
    };
}

/// A stamp for the hooks: the CPU's counter (`PRECISE`), or the coarse clock as stored.
#[inline(always)]
fn stamp<const PRECISE: bool>() -> u64 {
    if PRECISE {
        clock::counter_stamp()
    } else {
        clock::raw_ns()
    }
}

/// A poll begins: one lookup in this thread's counters (a compare once warm), two stores into
/// this thread's slot for the watchdog, one read of the clock (`PRECISE`: the CPU's counter).
#[inline]
pub(crate) fn before_poll<const PRECISE: bool>(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    HOT.with(|hot| {
        let Some(slot) = hot.slot.get() else {
            return first_poll_on_thread::<PRECISE>(hot, engine, meta);
        };
        let location = meta.spawned_at() as *const std::panic::Location<'static> as usize;
        let counter = slot.counters.entry(location);
        if !counter.counts(location) {
            return new_location::<PRECISE>(hot, slot, counter, engine, meta.spawned_at());
        }
        begin::<PRECISE>(hot, slot, counter);
    })
}

/// Starts timing a poll counted by `counter`.
#[inline(always)]
fn begin<const PRECISE: bool>(hot: &Hot, slot: &'static WorkerSlot, counter: &'static PollCounter) {
    hot.counter.set(Some(counter));
    // Published for the watchdog; this thread is the slot's only writer.
    slot.site.store(counter.site_ptr(), Relaxed);
    let start = stamp::<PRECISE>();
    slot.start_ns.store(start, Relaxed);
    // Checked last, where the cold call is a jump: the fast path saves no registers for it.
    if !PRECISE && clock::is_idle(start) {
        start_after_idle(slot);
    }
}

/// The poll began while the clock was idle: its start is the precise time (which wakes the
/// clock's thread).
#[cold]
#[inline(never)]
fn start_after_idle(slot: &WorkerSlot) {
    slot.start_ns.store(clock::now_ns(), Relaxed);
}

/// A poll ended: under [`clock::fast_poll_ns`] (two ticks) it is counted in this thread's
/// counter (a plain load and store); longer, it is timed and recorded
/// ([`Engine::record_timed_poll`]).
#[inline]
pub(crate) fn after_poll<const PRECISE: bool>(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    HOT.with(|hot| {
        let (Some(slot), Some(counter)) = (hot.slot.get(), hot.counter.get()) else {
            return;
        };
        let start = slot.start_ns.load(Relaxed);
        slot.start_ns.store(0, Relaxed);
        // The clock only moves forward; `start` 0 (a nested runtime's poll on this thread
        // ended ours) and an idle clock's mark both give a large value, sorted out off the
        // fast path.
        let elapsed = stamp::<PRECISE>().wrapping_sub(start);
        if elapsed < clock::fast_poll_stamps() {
            counter.count_one();
            return;
        }
        timed_poll::<PRECISE>(slot, counter, engine, meta, start, elapsed);
    })
}

/// Polls of a spawn location this thread's counter has not seen (or has evicted).
#[cold]
#[inline(never)]
fn new_location<const PRECISE: bool>(
    hot: &Hot,
    slot: &'static WorkerSlot,
    counter: &'static PollCounter,
    engine: &Engine,
    location: &'static std::panic::Location<'static>,
) {
    if crate::engine::runtimes::is_liveness_task(location) {
        // Not the application's: unmeasured (after_poll finds no counter).
        return hot.counter.set(None);
    }
    let site = engine.site_seen(&SiteKey {
        kind: TaskKind::Async,
        file: location.file(),
        line: location.line(),
        column: location.column(),
        task_name: None,
    });
    slot.recount(
        engine,
        counter,
        location as *const std::panic::Location<'static> as usize,
        site,
    );
    begin::<PRECISE>(hot, slot, counter);
}

/// A poll that lasted `stamps` (from `start`) or began before a nested runtime's poll ended it.
#[cold]
#[inline(never)]
fn timed_poll<const PRECISE: bool>(
    slot: &WorkerSlot,
    counter: &PollCounter,
    engine: &Engine,
    meta: &TaskMeta<'_>,
    start: u64,
    stamps: u64,
) {
    if start == 0 {
        // A nested runtime's poll on this thread ended ours: its time is unknown.
        return;
    }
    let elapsed = if PRECISE {
        if stamps > u64::MAX / 2 {
            // The end read a counter a few counts behind the start's (the thread moved to a
            // CPU whose counter reads a hair behind): a fast poll.
            return counter.count_one();
        }
        clock::stamp_ns(stamps)
    } else {
        let mut end = start.wrapping_add(stamps);
        if clock::is_idle(end) {
            // The clock went idle during the poll: the precise end.
            end = clock::now_ns();
        }
        // A start read while the clock stood still (its thread not scheduled) is bounded by
        // the spell's end: a poll is timed to what it can be shown to have lasted.
        clock::at_least(start, end, engine.config.slow_poll_threshold)
    };
    if elapsed < clock::fast_poll_ns() {
        return counter.count_one();
    }
    let Some(site) = counter.site() else {
        return;
    };
    engine.record_timed_poll(
        site,
        slot.shard.load(Relaxed),
        slot.stack_of(start),
        elapsed,
        || meta.id().to_string().parse().unwrap_or(0),
        None,
    );
}

/// The site of the task this thread is polling (production mode), if any.
pub(crate) fn current_task_site() -> Option<&'static Site> {
    HOT.try_with(|hot| {
        let slot = hot.slot.get()?;
        if slot.start_ns.load(Relaxed) == 0 {
            return None;
        }
        hot.counter.get()?.site()
    })
    .ok()
    .flatten()
}

/// The worker is about to park: publish what it counted so idle workers hold nothing back.
///
/// The first park of a thread also makes its runtime known, in case no task ever polls there:
/// a current-thread runtime that only drives `block_on` (a runtime per connection or per
/// request) runs the hooks on no poll, but parks.
/// A worker of a runtime with the hooks unparked: it is about to poll, and brings the clock to
/// the time first, so the clock's thread need not tick while every worker is parked.
pub(crate) fn on_unpark() {
    let _ = HOT.try_with(|hot| {
        if let Some(slot) = hot.slot.get() {
            clock::refresh();
            slot.mark_unparked();
        }
    });
}

pub(crate) fn on_park(engine: &Arc<Engine>) {
    let _ = HOT.try_with(|hot| {
        if let Some(slot) = hot.slot.get() {
            clock::refresh();
            slot.mark_parked();
            slot.publish_pending(engine);
        } else if !hot.parked_before.replace(true) {
            first_park_on_thread(engine);
        }
    });
}

/// A runtime with the hooks parked for the first time: it is watched from now on.
#[cold]
#[inline(never)]
pub(crate) fn runtime_parks_first(engine: &Arc<Engine>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        Engine::runtime_hooked(handle.id());
        Engine::watch_runtime(engine, &handle);
    }
}

/// A thread parked before it polled a task: its runtime is watched, and known to have the
/// hooks, from now on.
#[cold]
#[inline(never)]
fn first_park_on_thread(engine: &Arc<Engine>) {
    crate::engine::thread_measured_by_hooks();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        Engine::runtime_hooked(handle.id());
        Engine::watch_runtime(engine, &handle);
    }
}

/// Claims a slot on the thread's first poll, then measures that poll.
#[cold]
#[inline(never)]
fn first_poll_on_thread<const PRECISE: bool>(hot: &Hot, engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    if hot.unmeasured.get() {
        return;
    }
    crate::engine::thread_measured_by_hooks();
    watchdog::start(engine);
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        Engine::runtime_hooked(handle.id());
        engine.measuring_started(crate::engine::sink::Measuring::PollHooks {
            runtime: handle.id().to_string(),
        });
        Engine::watch_runtime(engine, &handle);
    }
    match slots::claim_for_this_thread(engine) {
        Some(slot) => {
            hot.slot.set(Some(slot));
            // A new worker polls without unparking first: as on an unpark.
            slot.mark_unparked();
            before_poll::<PRECISE>(engine, meta);
        }
        None => hot.unmeasured.set(true),
    }
}
