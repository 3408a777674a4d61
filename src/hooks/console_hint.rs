//! tokio-console's live view of stalls: one `WorkerStalls` resource per process whose
//! attributes say how many workers are stalled right now, what the latest stall is polling,
//! how long it has lasted so far and the line it is blocked in. console-subscriber shows any
//! `runtime.resource` span with string-literal `concrete_type` and `kind`, and takes
//! state-update events emitted in its scope as attributes (one attribute per event; numbers
//! need their `.op`).
//!
//! The console shows what the attributes were when it last published (every second by
//! default), so they follow the stall as it goes: the watchdog updates them on its ticks while
//! a stall lasts, not only when it is found. Each state the console can catch is consistent:
//! `stall_ms` grows only while `stalled_workers` counts the stall.
//!
//! Emitted from the watchdog and symbolizer threads only, never from a subscriber callback.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::slots;
use crate::engine::sites::Site;

/// While a stall lasts, `stall_ms` moves when it has grown this much (a few events a second
/// per stall, and the console never lags the stall by more).
const STALL_MS_STEP: u64 = 10;

fn resource() -> &'static tracing::Span {
    static SPAN: OnceLock<tracing::Span> = OnceLock::new();
    SPAN.get_or_init(|| {
        tracing::trace_span!(
            target: "stallscope::stalls",
            parent: None,
            "runtime.resource",
            concrete_type = "WorkerStalls",
            kind = "Watchdog",
        )
    })
}

/// The stall the console's `stalled_task`, `stall_ms` and `blocked_in` describe: the latest
/// one the watchdog found.
struct Latest {
    slot: usize,
    /// Coarse start of the stalled poll: identifies the stall in its slot.
    start: u64,
    /// The site, as an address: which stack belongs to this stall.
    // Stacks are captured only with the `stacks` feature.
    #[cfg_attr(not(feature = "stacks"), allow(dead_code))]
    site: usize,
    location: String,
    /// Found since the last scan: its attributes are not published yet.
    fresh: bool,
    /// How long it had run when the watchdog last saw it running, and what `stall_ms` says.
    seen_ms: u64,
    shown_ms: u64,
    over: bool,
}

fn latest() -> &'static Mutex<Option<Latest>> {
    static LATEST: Mutex<Option<Latest>> = Mutex::new(None);
    &LATEST
}

/// The watchdog found slot `slot`'s poll of `site`, started at stamp `start`, running past
/// the threshold: it is the latest stall from now on (published by the next [`scanned`]).
pub(crate) fn stall_began(slot: usize, site: &Site, start: u64) {
    *latest().lock().unwrap_or_else(|e| e.into_inner()) = Some(Latest {
        slot,
        start,
        site: site as *const Site as usize,
        location: site.location.to_string(),
        fresh: true,
        seen_ms: 0,
        shown_ms: 0,
        over: false,
    });
}

/// The watchdog's scan at stamp `now` found `stalled` workers past the threshold: publishes
/// the count and how long the latest stall has lasted. Ordered so no state the console
/// publishes shows `stall_ms` growing beside a count without the stall: the final duration of
/// a stall that ended goes out before the count drops, the first and growing ones after the
/// count includes it.
pub(crate) fn scanned(now: u64, stalled: u64) {
    let mut guard = latest().lock().unwrap_or_else(|e| e.into_inner());
    let Some(stall) = guard.as_mut().filter(|s| !s.over) else {
        drop(guard);
        return stalled_workers(stalled);
    };
    let running = slots::at(stall.slot).is_some_and(|s| s.start_ns.load(Relaxed) == stall.start);
    if !running {
        stall.over = true;
        if stall.seen_ms > stall.shown_ms {
            stall.shown_ms = stall.seen_ms;
            stall_ms(stall.shown_ms);
        }
        drop(guard);
        return stalled_workers(stalled);
    }
    let seen = crate::clock::stamp_ns(now.saturating_sub(stall.start));
    stall.seen_ms = Duration::from_nanos(seen).as_millis() as u64;
    stalled_workers(stalled);
    if std::mem::take(&mut stall.fresh) {
        stall.shown_ms = stall.seen_ms;
        let location = stall.location.as_str();
        resource().in_scope(|| {
            tracing::trace!(target: "runtime::resource::state_update", stalled_task = location);
            // Its stack comes later, from the symbolizer.
            tracing::trace!(target: "runtime::resource::state_update", blocked_in = "-");
        });
        stall_ms(stall.shown_ms);
    } else if stall.seen_ms >= stall.shown_ms + STALL_MS_STEP {
        stall.shown_ms = stall.seen_ms;
        stall_ms(stall.shown_ms);
    }
}

/// Workers stalled past the threshold now (on change only).
fn stalled_workers(n: u64) {
    static SHOWN: AtomicU64 = AtomicU64::new(u64::MAX);
    if SHOWN.swap(n, Relaxed) == n {
        return;
    }
    resource().in_scope(|| {
        tracing::trace!(
            target: "runtime::resource::state_update",
            stalled_workers = n,
            stalled_workers.op = "override",
        );
    });
}

fn stall_ms(ms: u64) {
    resource().in_scope(|| {
        tracing::trace!(
            target: "runtime::resource::state_update",
            stall_ms = ms,
            stall_ms.op = "override",
        );
    });
}

/// The stack of the stall of `site` that started at `start` is resolved: where it is blocked,
/// shown if that stall is still the latest.
#[cfg_attr(not(feature = "stacks"), allow(dead_code))]
pub(crate) fn stack_resolved(site: &Site, start: u64, blocked_in: Option<&str>) {
    let guard = latest().lock().unwrap_or_else(|e| e.into_inner());
    let is_latest = guard
        .as_ref()
        .is_some_and(|s| s.start == start && s.site == site as *const Site as usize && !s.fresh);
    if let (true, Some(frame)) = (is_latest, blocked_in) {
        resource().in_scope(|| {
            tracing::trace!(target: "runtime::resource::state_update", blocked_in = frame);
        });
    }
}
