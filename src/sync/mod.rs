//! Drop-in wrappers of `std::sync::{Mutex, RwLock}` that measure how long acquisitions wait and
//! guards are held, per lock (its creation site, or a name you give it).
//!
//! The API is `std`'s; only construction adds [`Mutex::named`] / [`RwLock::named`]. An
//! uncontended acquisition costs a `try_lock` and an atomic add; only a contended one reads the
//! clock twice. A wait at or over the slow threshold on a thread that is polling a tokio task
//! is reported: that is blocking inside async, every other task on that worker waited too.
//! With feature `parking_lot`, `stallscope::sync::parking_lot` wraps parking_lot's locks the
//! same way.
//!
//! ```
//! let stallscope = stallscope::Builder::new().build().unwrap();
//! let _guard = stallscope.guard();
//! let counter = stallscope::sync::Mutex::named("counter", 0u64);
//! *counter.lock().unwrap() += 1;
//! assert_eq!(*counter.lock().unwrap(), 1);
//! ```

mod mutex;
#[cfg(feature = "parking_lot")]
pub mod parking_lot;
mod rwlock;

pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::panic::Location;
use std::time::Duration;

use crate::clock;
use crate::engine::locks::{LockKind, LockOp, LockSite};
use crate::task::default_engine;

thread_local! {
    /// Guards of wrapped locks alive on this thread, and the site of the latest one: a guard
    /// still alive when a poll ends was held across an `.await`.
    /// The count, the latest guard's lock, and the poll (its span id) that took it.
    static HELD: std::cell::Cell<(u32, Option<&'static LockSite>, u64)> =
        const { std::cell::Cell::new((0, None, 0)) };
}

/// The lock whose guard was taken during the poll of span `poll` and is still held as that poll
/// ends, if any. (Other tasks polled on this thread while it is suspended are not blamed.)
#[inline]
pub(crate) fn guard_taken_in_poll_still_held(poll: u64) -> Option<&'static LockSite> {
    HELD.try_with(|h| match h.get() {
        (0, _, _) => None,
        (_, site, taken_in) => site.filter(|_| taken_in == poll),
    })
    .ok()
    .flatten()
}

fn note_acquired(site: Option<&'static LockSite>) {
    if site.is_some() {
        let poll = crate::layer::current_poll_span().unwrap_or(0);
        let _ = HELD.try_with(|h| h.set((h.get().0 + 1, site, poll)));
    }
}

fn note_released(site: Option<&'static LockSite>) {
    if site.is_some() {
        let _ = HELD.try_with(|h| {
            let (n, last, poll) = h.get();
            if n <= 1 {
                h.set((0, None, 0));
            } else {
                h.set((n - 1, last, poll));
            }
        });
    }
}

/// The site a new lock records into, if a stallscope instance exists.
fn site(
    kind: LockKind,
    location: &'static Location<'static>,
    name: Option<&'static str>,
) -> Option<&'static LockSite> {
    default_engine().map(|engine| engine.lock_site(kind, location, name))
}

/// Measures one acquisition: `try_acquire` first (no clock when uncontended), else `acquire`
/// timed with the coarse clock. Returns the guard's start time for the hold measurement.
#[inline]
fn acquire<G>(
    site: Option<&'static LockSite>,
    op: LockOp,
    try_acquire: impl FnOnce() -> Option<G>,
    acquire: impl FnOnce() -> G,
) -> (G, u64) {
    let Some(site) = site else {
        return (try_acquire().unwrap_or_else(acquire), 0);
    };
    note_acquired(Some(site));
    site.acquisitions
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(guard) = try_acquire() {
        return (guard, clock::now_ns());
    }
    let started = clock::now_ns();
    let guard = acquire();
    let acquired = clock::now_ns();
    if let Some(engine) = default_engine() {
        let waited = Duration::from_nanos(acquired.saturating_sub(started));
        engine.record_lock_wait(site, op, waited);
    }
    (guard, acquired)
}

/// [`acquire`] with a deadline: `try_acquire_for` gives up after its timeout (`None`), which is
/// recorded as a cancelled acquisition with its wait.
#[cfg(feature = "parking_lot")]
fn try_acquire_for<G>(
    site: Option<&'static LockSite>,
    op: LockOp,
    try_acquire: impl FnOnce() -> Option<G>,
    try_acquire_for: impl FnOnce() -> Option<G>,
) -> Option<(G, u64)> {
    let Some(site) = site else {
        return try_acquire().or_else(try_acquire_for).map(|g| (g, 0));
    };
    if let Some(guard) = try_acquire() {
        note_acquired(Some(site));
        site.acquisitions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Some((guard, clock::now_ns()));
    }
    let started = clock::now_ns();
    let guard = try_acquire_for();
    let ended = clock::now_ns();
    let waited = Duration::from_nanos(ended.saturating_sub(started));
    let engine = default_engine();
    match guard {
        Some(guard) => {
            note_acquired(Some(site));
            site.acquisitions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(engine) = engine {
                engine.record_lock_wait(site, op, waited);
            }
            Some((guard, ended))
        }
        None => {
            if let Some(engine) = engine {
                engine.record_async_acquisition(site, op, Some(waited), false);
            }
            None
        }
    }
}

/// Records a guard's hold time when it drops.
#[inline]
fn release(site: Option<&'static LockSite>, op: LockOp, acquired: u64) {
    note_released(site);
    if let Some(site) = site {
        let held = clock::now_ns().saturating_sub(acquired);
        if let Some(engine) = default_engine() {
            engine.record_lock_hold(site, op, held);
        }
    }
}
