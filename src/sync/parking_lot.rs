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

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::time::Duration;

use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `parking_lot::Mutex`, measured. See the [module docs](self).
pub struct Mutex<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: parking_lot::Mutex<T>,
}

/// The guard of a [`Mutex`]; its drop records the hold time.
pub struct MutexGuard<'a, T: ?Sized + 'a> {
    inner: parking_lot::MutexGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

impl<T> Mutex<T> {
    /// A mutex measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Mutex {
            site: super::site(LockKind::ParkingLotMutex, Location::caller(), None),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        Mutex {
            site: super::site(LockKind::ParkingLotMutex, Location::caller(), Some(name)),
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// As [`parking_lot::Mutex::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    fn wrap<'a>(
        &'a self,
        inner: parking_lot::MutexGuard<'a, T>,
        acquired: u64,
    ) -> MutexGuard<'a, T> {
        MutexGuard {
            inner,
            site: self.site,
            acquired,
        }
    }

    /// As [`parking_lot::Mutex::lock`], measuring the wait.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let (guard, acquired) = super::acquire(
            self.site,
            LockOp::Lock,
            || self.inner.try_lock(),
            || self.inner.lock(),
        );
        self.wrap(guard, acquired)
    }

    /// As [`parking_lot::Mutex::try_lock`] (never waits, so never records a wait).
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        let guard = self.inner.try_lock()?;
        super::note_acquired(self.site);
        Some(self.wrap(guard, acquired))
    }

    /// As [`parking_lot::Mutex::try_lock_for`]: a wait of up to `timeout`, measured when it
    /// succeeds after waiting.
    pub fn try_lock_for(&self, timeout: Duration) -> Option<MutexGuard<'_, T>> {
        let (guard, acquired) = super::try_acquire_for(
            self.site,
            LockOp::Lock,
            || self.inner.try_lock(),
            || self.inner.try_lock_for(timeout),
        )?;
        Some(self.wrap(guard, acquired))
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

impl<T: Default> Default for Mutex<T> {
    #[track_caller]
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        super::release(self.site, LockOp::Lock, self.acquired);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (*self.inner).fmt(f)
    }
}

/// `parking_lot::RwLock`, measured (reads and writes into the same lock site, by operation).
/// See the [module docs](self).
pub struct RwLock<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: parking_lot::RwLock<T>,
}

/// The shared guard of a [`RwLock`]; its drop records the hold time.
pub struct RwLockReadGuard<'a, T: ?Sized + 'a> {
    inner: parking_lot::RwLockReadGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

/// The exclusive guard of a [`RwLock`]; its drop records the hold time.
pub struct RwLockWriteGuard<'a, T: ?Sized + 'a> {
    inner: parking_lot::RwLockWriteGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

impl<T> RwLock<T> {
    /// A lock measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        RwLock {
            site: super::site(LockKind::ParkingLotRwLock, Location::caller(), None),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        RwLock {
            site: super::site(LockKind::ParkingLotRwLock, Location::caller(), Some(name)),
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// As [`parking_lot::RwLock::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    fn wrap_read<'a>(
        &'a self,
        inner: parking_lot::RwLockReadGuard<'a, T>,
        acquired: u64,
    ) -> RwLockReadGuard<'a, T> {
        RwLockReadGuard {
            inner,
            site: self.site,
            acquired,
        }
    }

    fn wrap_write<'a>(
        &'a self,
        inner: parking_lot::RwLockWriteGuard<'a, T>,
        acquired: u64,
    ) -> RwLockWriteGuard<'a, T> {
        RwLockWriteGuard {
            inner,
            site: self.site,
            acquired,
        }
    }

    /// As [`parking_lot::RwLock::read`], measuring the wait.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        let (guard, acquired) = super::acquire(
            self.site,
            LockOp::Read,
            || self.inner.try_read(),
            || self.inner.read(),
        );
        self.wrap_read(guard, acquired)
    }

    /// As [`parking_lot::RwLock::write`], measuring the wait.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        let (guard, acquired) = super::acquire(
            self.site,
            LockOp::Write,
            || self.inner.try_write(),
            || self.inner.write(),
        );
        self.wrap_write(guard, acquired)
    }

    /// As [`parking_lot::RwLock::try_read`] (never waits, so never records a wait).
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        let guard = self.inner.try_read()?;
        super::note_acquired(self.site);
        Some(self.wrap_read(guard, acquired))
    }

    /// As [`parking_lot::RwLock::try_write`] (never waits, so never records a wait).
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        let guard = self.inner.try_write()?;
        super::note_acquired(self.site);
        Some(self.wrap_write(guard, acquired))
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

impl<T: Default> Default for RwLock<T> {
    #[track_caller]
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        super::release(self.site, LockOp::Read, self.acquired);
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        super::release(self.site, LockOp::Write, self.acquired);
    }
}
