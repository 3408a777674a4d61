//! Drop-in wrappers of `parking_lot::{Mutex, RwLock}` (feature `parking_lot`), measured like
//! the std ones: wait and hold times per lock, blocking waits on tokio workers reported, guards
//! held across `.await` found. The API is parking_lot's common subset: `lock`/`try_lock`/
//! `try_lock_for`, `read`/`write`/`try_read`/`try_write`, `is_locked`, `get_mut`, `into_inner`.
//!
//! ```
//! let stallscope = stallscope::Builder::new().build().unwrap();
//! let _guard = stallscope.guard();
//! let sessions = stallscope::sync::parking_lot::Mutex::named("sessions", Vec::<u32>::new());
//! sessions.lock().push(7);
//! assert_eq!(sessions.lock().len(), 1);
//! ```

use std::panic::Location;
use std::time::Duration;

use super::Measured;
use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `parking_lot::Mutex`, measured. See the [module docs](self).
pub struct Mutex<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: parking_lot::Mutex<T>,
}

/// The guard of a [`Mutex`]; its drop records the hold time.
pub type MutexGuard<'a, T> = Measured<parking_lot::MutexGuard<'a, T>>;

impl<T> Mutex<T> {
    /// A mutex measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Mutex {
            site: super::site(None, LockKind::ParkingLotMutex, Location::caller(), None),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        Mutex {
            site: super::site(
                None,
                LockKind::ParkingLotMutex,
                Location::caller(),
                Some(name),
            ),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// A mutex measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        Mutex {
            site: super::site(
                Some(handle),
                LockKind::ParkingLotMutex,
                Location::caller(),
                None,
            ),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        Mutex {
            site: super::site(
                Some(handle),
                LockKind::ParkingLotMutex,
                Location::caller(),
                Some(name),
            ),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// As [`parking_lot::Mutex::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// As [`parking_lot::Mutex::lock`], measuring the wait.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        super::acquire(
            self.site,
            LockOp::Lock,
            || self.inner.try_lock(),
            || self.inner.lock(),
        )
    }

    /// As [`parking_lot::Mutex::try_lock`] (never waits, so never records a wait).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let guard = self.inner.try_lock()?;
        Some(Measured::tried(guard, self.site, LockOp::Lock))
    }

    /// As [`parking_lot::Mutex::try_lock_for`]: a wait of up to `timeout`, measured when it
    /// succeeds after waiting, and as a cancelled wait when it times out.
    pub fn try_lock_for(&self, timeout: Duration) -> Option<MutexGuard<'_, T>> {
        super::try_acquire_for(
            self.site,
            LockOp::Lock,
            || self.inner.try_lock(),
            || self.inner.try_lock_for(timeout),
        )
    }

    /// As [`parking_lot::Mutex::is_locked`].
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// As [`parking_lot::Mutex::get_mut`].
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

/// `parking_lot::RwLock`, measured (reads and writes into the same lock site, by operation).
/// See the [module docs](self).
pub struct RwLock<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: parking_lot::RwLock<T>,
}

/// The shared guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockReadGuard<'a, T> = Measured<parking_lot::RwLockReadGuard<'a, T>>;

/// The exclusive guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockWriteGuard<'a, T> = Measured<parking_lot::RwLockWriteGuard<'a, T>>;

impl<T> RwLock<T> {
    /// A lock measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        RwLock {
            site: super::site(None, LockKind::ParkingLotRwLock, Location::caller(), None),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        RwLock {
            site: super::site(
                None,
                LockKind::ParkingLotRwLock,
                Location::caller(),
                Some(name),
            ),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// A lock measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        RwLock {
            site: super::site(
                Some(handle),
                LockKind::ParkingLotRwLock,
                Location::caller(),
                None,
            ),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        RwLock {
            site: super::site(
                Some(handle),
                LockKind::ParkingLotRwLock,
                Location::caller(),
                Some(name),
            ),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// As [`parking_lot::RwLock::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// As [`parking_lot::RwLock::read`], measuring the wait.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        super::acquire(
            self.site,
            LockOp::Read,
            || self.inner.try_read(),
            || self.inner.read(),
        )
    }

    /// As [`parking_lot::RwLock::write`], measuring the wait.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        super::acquire(
            self.site,
            LockOp::Write,
            || self.inner.try_write(),
            || self.inner.write(),
        )
    }

    /// As [`parking_lot::RwLock::try_read`] (never waits, so never records a wait).
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let guard = self.inner.try_read()?;
        Some(Measured::tried(guard, self.site, LockOp::Read))
    }

    /// As [`parking_lot::RwLock::try_write`] (never waits, so never records a wait).
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let guard = self.inner.try_write()?;
        Some(Measured::tried(guard, self.site, LockOp::Write))
    }

    /// As [`parking_lot::RwLock::is_locked`].
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// As [`parking_lot::RwLock::get_mut`].
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

wrapper_impls!(Mutex, RwLock);
