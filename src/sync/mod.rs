//! Drop-in wrappers of `std::sync::{Mutex, RwLock}` that measure how long acquisitions wait and
//! guards are held, per lock (its creation site, or a name you give it).
//!
//! The API is `std`'s; only construction adds [`Mutex::named`] / [`RwLock::named`]. An
//! uncontended acquisition costs a `try_lock` and an atomic add; only a contended one reads the
//! clock twice. A wait at or over the slow threshold on a thread that is polling a tokio task
//! is reported: that is blocking inside async, every other task on that worker waited too.
#![cfg_attr(
    feature = "parking_lot",
    doc = "With feature `parking_lot`, [`parking_lot`](mod@parking_lot) wraps parking_lot's locks the same way;"
)]
#![cfg_attr(
    not(feature = "parking_lot"),
    doc = "With feature `parking_lot`, module `parking_lot` wraps parking_lot's locks the same way;"
)]
//! [`tokio`](mod@tokio) wraps `tokio::sync`'s for production mode.
//!
//! Every guard is a [`Measured`] guard around the wrapped lock's own.
//!
//! Each wrapper measures into the process's default instance (the first one started), or with
//! `new_in` / `named_in` into the instance of a [`Handle`](crate::Handle).
//!
//! Inside stallscope the wrappers are a measurement source, like full mode's layer and
//! production mode's poll hooks: each wait and hold goes to the instance's engine, which hands
//! what it finds to the log report and the exporters.
//!
//! ```
//! let stallscope = stallscope::Builder::new().build().unwrap();
//! let _guard = stallscope.guard();
//! let counter = stallscope::sync::Mutex::named("counter", 0u64);
//! *counter.lock().unwrap() += 1;
//! assert_eq!(*counter.lock().unwrap(), 1);
//! ```

/// The trait impls every wrapper `$wrapper<T>` (with `new` and an `inner` lock) shares with
/// the lock it wraps: `Default` and `From<T>` (created at the caller's site), `Debug`.
macro_rules! wrapper_impls {
    ($($wrapper:ident),*) => {$(
        impl<T: Default> Default for $wrapper<T> {
            #[track_caller]
            fn default() -> Self {
                $wrapper::new(T::default())
            }
        }

        impl<T> From<T> for $wrapper<T> {
            #[track_caller]
            fn from(value: T) -> Self {
                $wrapper::new(value)
            }
        }

        impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for $wrapper<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.inner.fmt(f)
            }
        }
    )*};
}

mod acquire_async;
mod mutex;
#[cfg(feature = "parking_lot")]
#[cfg_attr(stallscope_doc_cfg, doc(cfg(feature = "parking_lot")))]
pub mod parking_lot;
mod rwlock;
pub mod tokio;

pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{Arc, LockResult, PoisonError, TryLockError, TryLockResult};
use std::time::Duration;

use crate::clock;
use crate::engine::locks::{LockKind, LockOp, LockSite};
use crate::task::default_engine;

/// The site a new lock records into: in the instance of `handle`, or the default one, if it
/// lives.
fn site(
    handle: Option<&crate::Handle>,
    kind: LockKind,
    location: &'static Location<'static>,
    name: Option<&'static str>,
) -> Option<&'static LockSite> {
    let engine = match handle {
        Some(handle) => handle.engine()?,
        None => default_engine()?,
    };
    #[cfg(tokio_unstable)]
    engine.check_runtime_measured(|| format!("a {kind} created at {location}"));
    Some(engine.lock_site(kind, location, name))
}

/// A guard (or semaphore permit) of a measured lock: the wrapped lock's own guard, which it
/// derefs to, and when it was taken. Dropping it releases the lock, then records how long it
/// was held. Each wrapper names its guards after the ones it wraps ([`MutexGuard`],
/// [`tokio::RwLockWriteGuard`], [`tokio::SemaphorePermit`], ...).
#[must_use = "if unused the lock is released at once"]
pub struct Measured<G> {
    // Declared first: the lock is released before the hold is recorded.
    inner: G,
    hold: Hold,
}

impl<G> Measured<G> {
    fn new(inner: G, hold: Hold) -> Self {
        Measured { inner, hold }
    }

    /// A guard obtained by a `try_*` call: timed from now, not counted as an acquisition (in
    /// full mode tokio's `try_lock` makes no acquisition either).
    #[inline]
    fn tried(inner: G, site: Option<&'static LockSite>, op: LockOp) -> Self {
        Measured::new(inner, Hold::start(site, op))
    }

    // Not a method: it would shadow a method of the same name on what the guard derefs to.
    fn into_parts(this: Self) -> (G, Hold) {
        (this.inner, this.hold)
    }
}

impl<G> Measured<LockResult<G>> {
    /// std's poisoning on the outside, as std's `lock` returns it.
    fn transpose(self) -> LockResult<Measured<G>> {
        let (inner, hold) = Measured::into_parts(self);
        match inner {
            Ok(guard) => Ok(Measured::new(guard, hold)),
            Err(poisoned) => Err(PoisonError::new(Measured::new(poisoned.into_inner(), hold))),
        }
    }
}

impl<G: Deref> Deref for Measured<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.inner
    }
}

impl<G: DerefMut> DerefMut for Measured<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.inner
    }
}

impl<G: fmt::Debug> fmt::Debug for Measured<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<G: fmt::Display> fmt::Display for Measured<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// A guard (or permit) kept with the `Arc` of the lock it was taken from: what the `_owned`
/// acquisitions of the [`tokio`](mod@tokio) wrappers hold, so it can outlive the `Arc` they
/// were called on. Derefs to what the guard derefs to.
pub struct Owned<G, L: ?Sized> {
    // Declared before `lock`: the guard borrows from `*lock` and is dropped first.
    guard: G,
    lock: Arc<L>,
}

impl<G: Deref, L: ?Sized> Deref for Owned<G, L> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut, L: ?Sized> DerefMut for Owned<G, L> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

impl<G: fmt::Debug, L: ?Sized> fmt::Debug for Owned<G, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.guard.fmt(f)
    }
}

impl<G: fmt::Display, L: ?Sized> fmt::Display for Owned<G, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.guard.fmt(f)
    }
}

/// Which lock a guard was taken from and when (coarse clock): recorded as a hold when it drops.
struct Hold {
    site: Option<&'static LockSite>,
    op: LockOp,
    since: u64,
}

impl Hold {
    /// A guard taken now.
    #[inline]
    fn start(site: Option<&'static LockSite>, op: LockOp) -> Hold {
        match site {
            Some(site) => Hold::at(site, op, clock::now_ns()),
            None => Hold {
                site: None,
                op,
                since: 0,
            },
        }
    }

    /// A guard obtained now by an acquisition that did not wait: counted, no wait to record.
    #[inline]
    fn uncontended(site: &'static LockSite, op: LockOp) -> Hold {
        site.uncontended.add(1);
        Hold::at(site, op, clock::now_ns())
    }

    #[inline]
    fn at(site: &'static LockSite, op: LockOp, since: u64) -> Hold {
        // A guard of a lock that blocks threads, held across an `.await`, is a hazard to find;
        // tokio's guards are made to be held there.
        if site.kind.blocks_thread() {
            crate::layer::wrapper_guard_acquired(site);
        }
        Hold {
            site: Some(site),
            op,
            since,
        }
    }
}

impl Drop for Hold {
    #[inline]
    fn drop(&mut self) {
        let Some(site) = self.site else { return };
        if site.kind.blocks_thread() {
            crate::layer::wrapper_guard_released();
        }
        site.record_hold(self.op, clock::now_ns().saturating_sub(self.since));
    }
}

/// A contended acquisition, timed on the coarse clock from the attempt that found the lock
/// taken until [`Wait::acquired`], or until it drops: a wait given up (a timeout, an acquire
/// future dropped). Every wrapper times and records its waits here.
struct Wait {
    site: &'static LockSite,
    op: LockOp,
    started: u64,
}

impl Wait {
    #[cold]
    fn start(site: &'static LockSite, op: LockOp) -> Wait {
        Wait {
            site,
            op,
            started: clock::now_ns(),
        }
    }

    /// The lock was obtained: records the wait (which counts the acquisition), starts the hold.
    fn acquired(self) -> Hold {
        let wait = ManuallyDrop::new(self);
        waited(wait.site, wait.op, wait.started)
    }
}

/// A contended acquisition that started waiting at `started` (coarse clock) obtained its lock
/// now: records the wait, and reports it when it blocked a thread polling a task. The hold
/// starts.
#[inline]
fn waited(site: &'static LockSite, op: LockOp, started: u64) -> Hold {
    let now = clock::now_ns();
    let waited = Duration::from_nanos(clock::at_least(started, now, site.slow_threshold()));
    if site.record_wait(op, waited) {
        if let Some(engine) = site.owner.upgrade() {
            engine.blocking_lock_wait(site, op, waited);
        }
    }
    Hold::at(site, op, now)
}

impl Drop for Wait {
    fn drop(&mut self) {
        gave_up(self.site, self.op, self.started);
    }
}

/// A wait that began at `started` (coarse clock) was given up now: recorded as cancelled.
fn gave_up(site: &'static LockSite, op: LockOp, started: u64) {
    let waited = Duration::from_nanos(clock::now_ns().saturating_sub(started));
    site.record_cancelled_wait(op, waited);
}

/// A blocking acquisition, measured: `try_acquire` first (uncontended: no wait to time), else
/// `acquire`, timed.
#[inline]
fn acquire<G>(
    site: Option<&'static LockSite>,
    op: LockOp,
    try_acquire: impl FnOnce() -> Option<G>,
    acquire: impl FnOnce() -> G,
) -> Measured<G> {
    let Some(site) = site else {
        return Measured::new(acquire(), Hold::start(None, op));
    };
    if let Some(guard) = try_acquire() {
        return Measured::new(guard, Hold::uncontended(site, op));
    }
    let wait = Wait::start(site, op);
    let guard = acquire();
    Measured::new(guard, wait.acquired())
}

/// [`acquire`] with a deadline: `try_acquire_for` gives up after its timeout (`None`), which is
/// recorded as a cancelled acquisition with its wait.
#[cfg(feature = "parking_lot")]
fn try_acquire_for<G>(
    site: Option<&'static LockSite>,
    op: LockOp,
    try_acquire: impl FnOnce() -> Option<G>,
    try_acquire_for: impl FnOnce() -> Option<G>,
) -> Option<Measured<G>> {
    let Some(site) = site else {
        return try_acquire_for().map(|guard| Measured::new(guard, Hold::start(None, op)));
    };
    if let Some(guard) = try_acquire() {
        return Some(Measured::new(guard, Hold::uncontended(site, op)));
    }
    let wait = Wait::start(site, op);
    // Timed out: `wait` drops, a given-up wait.
    let guard = try_acquire_for()?;
    Some(Measured::new(guard, wait.acquired()))
}

/// std's `try_*` result as [`acquire`] takes it: `None` when it would block.
fn unless_would_block<G>(result: TryLockResult<G>) -> Option<LockResult<G>> {
    match result {
        Ok(guard) => Some(Ok(guard)),
        Err(TryLockError::Poisoned(poisoned)) => Some(Err(poisoned)),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// std's `try_*` result, measured (a try never waits, so never records a wait).
fn std_tried<G>(
    result: TryLockResult<G>,
    site: Option<&'static LockSite>,
    op: LockOp,
) -> TryLockResult<Measured<G>> {
    match unless_would_block(result) {
        Some(guard) => Measured::tried(guard, site, op)
            .transpose()
            .map_err(TryLockError::Poisoned),
        None => Err(TryLockError::WouldBlock),
    }
}
