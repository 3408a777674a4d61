//! The watchdog thread (one per process): advances the coarse clock every tick and looks at
//! every worker slot, reporting a poll that has run past the threshold while it still runs, and
//! asking the stalled worker for its stack (see [`stacks`]). While no poll runs it sleeps, the
//! clock marked idle (see [`clock`]).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{console_hint, slots, stacks};
use crate::clock;
use crate::engine::sites::Site;

/// Slots are looked at once the poll is at least this old, before taking the owner lock.
const LOOK_AFTER: Duration = Duration::from_millis(10);

/// Watching starts with the clock's upkeep thread; the reporter thread, which writes what the
/// watchdog finds, starts with it, and resolves a first stack to have the symbolizer warm.
pub(crate) fn start(engine: &crate::engine::Engine) {
    clock::start_upkeep();
    crate::engine::deferred::start();
    stacks::warm_up(engine);
}

/// One look at every worker slot (called by the clock's upkeep thread each tick), at stamp
/// `now` (slots hold stamps: see [`clock::stamp`]). Returns
/// whether anything needs the clock kept ticking: a poll in progress, or a stall whose stack
/// is being taken.
pub(crate) fn scan(now: u64) -> bool {
    let look_after = LOOK_AFTER.as_nanos() as u64;
    let mut stalled = 0;
    let mut polling = false;
    {
        for (index, slot) in slots::in_use_indexed() {
            let start = slot.start_ns.load(Relaxed);
            if start != 0 {
                polling = true;
                slot.seen_polling_at.store(now, Relaxed);
            }
            if start == 0 || clock::stamp_ns(now.saturating_sub(start)) < look_after {
                continue;
            }
            if slot.reported_start.load(Relaxed) == start {
                stalled += 1;
                continue;
            }
            let Some((Some(engine), thread)) = slot.owner() else {
                continue;
            };
            // Not `now - start`: a start read while the clock stood still may be a late
            // spell's first value; only the time since the spell ended is certain.
            let threshold = engine.config.slow_poll_threshold;
            let elapsed = Duration::from_nanos(clock::stamps_at_least(start, now, threshold));
            if elapsed < engine.config.slow_poll_threshold {
                continue;
            }
            let site = slot.site.load(Relaxed);
            if site.is_null() || slot.start_ns.load(Relaxed) != start {
                continue;
            }
            // SAFETY: slots only ever hold pointers to sites, which are leaked (`&'static`) and
            // never freed, so a non-null pointer is valid for the rest of the process.
            let site: &'static Site = unsafe { &*site };
            slot.reported_start.store(start, Relaxed);
            stalled += 1;
            engine.report_stall_in_progress(site, thread.clone(), elapsed);
            console_hint::stall_began(index, site, start);
            stacks::stall_began(&engine, index, site, thread, start, now);
        }
    }
    console_hint::scanned(now, stalled);
    let watching = stacks::tick(now);
    polling || watching
}

/// Whether any worker is polling now (a quick look, without reporting).
pub(crate) fn polling() -> bool {
    slots::in_use().any(|slot| slot.start_ns.load(Relaxed) != 0)
}

/// How long a worker that has not parked since it unparked keeps the watchdog awake after its
/// unpark or the last look that found it polling, whichever is later: a busy worker keeps it
/// awake for good, a thread that left its runtime without parking (a current-thread runtime's
/// `block_on` returns without a park) only this long.
const UNPARKED_FOR: Duration = Duration::from_secs(1);

/// Whether a worker with park hooks is unparked and active: it may poll at any moment, and it
/// wakes the watchdog only as it unparks, so the watchdog stays awake while one is (see
/// [`UNPARKED_FOR`]).
pub(crate) fn unparked() -> bool {
    let now = clock::stamp_now();
    let within = UNPARKED_FOR.as_nanos() as u64;
    slots::in_use().any(|slot| {
        let unparked_at = slot.unparked_at.load(Relaxed);
        let active_at = unparked_at.max(slot.seen_polling_at.load(Relaxed));
        unparked_at != 0 && clock::stamp_ns(now.saturating_sub(active_at)) < within
    })
}
