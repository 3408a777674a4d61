use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `std::sync::RwLock`, measured (reads and writes into the same lock site). See the
/// [module docs](crate::sync).
pub struct RwLock<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: std::sync::RwLock<T>,
}

/// The shared guard of a [`RwLock`]; its drop records the hold time.
pub struct RwLockReadGuard<'a, T: ?Sized + 'a> {
    inner: std::sync::RwLockReadGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

/// The exclusive guard of a [`RwLock`]; its drop records the hold time.
pub struct RwLockWriteGuard<'a, T: ?Sized + 'a> {
    inner: std::sync::RwLockWriteGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

impl<T> RwLock<T> {
    /// A lock measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        RwLock {
            site: super::site(LockKind::StdRwLock, Location::caller(), None),
            inner: std::sync::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        RwLock {
            site: super::site(LockKind::StdRwLock, Location::caller(), Some(name)),
            inner: std::sync::RwLock::new(value),
        }
    }

    /// As [`std::sync::RwLock::into_inner`].
    pub fn into_inner(self) -> LockResult<T> {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// As [`std::sync::RwLock::read`], measuring the wait.
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        let (result, acquired) = super::acquire(
            self.site,
            LockOp::Read,
            || match self.inner.try_read() {
                Ok(guard) => Some(Ok(guard)),
                Err(TryLockError::Poisoned(p)) => Some(Err(p)),
                Err(TryLockError::WouldBlock) => None,
            },
            || self.inner.read(),
        );
        let wrap = |inner| RwLockReadGuard {
            inner,
            site: self.site,
            acquired,
        };
        match result {
            Ok(guard) => Ok(wrap(guard)),
            Err(p) => Err(PoisonError::new(wrap(p.into_inner()))),
        }
    }

    /// As [`std::sync::RwLock::write`], measuring the wait.
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        let (result, acquired) = super::acquire(
            self.site,
            LockOp::Write,
            || match self.inner.try_write() {
                Ok(guard) => Some(Ok(guard)),
                Err(TryLockError::Poisoned(p)) => Some(Err(p)),
                Err(TryLockError::WouldBlock) => None,
            },
            || self.inner.write(),
        );
        let wrap = |inner| RwLockWriteGuard {
            inner,
            site: self.site,
            acquired,
        };
        match result {
            Ok(guard) => Ok(wrap(guard)),
            Err(p) => Err(PoisonError::new(wrap(p.into_inner()))),
        }
    }

    /// As [`std::sync::RwLock::try_read`] (never waits, so never records a wait).
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        let wrap = |inner| {
            super::note_acquired(self.site);
            RwLockReadGuard {
                inner,
                site: self.site,
                acquired,
            }
        };
        match self.inner.try_read() {
            Ok(guard) => Ok(wrap(guard)),
            Err(TryLockError::Poisoned(p)) => Err(TryLockError::Poisoned(PoisonError::new(wrap(
                p.into_inner(),
            )))),
            Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
        }
    }

    /// As [`std::sync::RwLock::try_write`] (never waits, so never records a wait).
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        let wrap = |inner| {
            super::note_acquired(self.site);
            RwLockWriteGuard {
                inner,
                site: self.site,
                acquired,
            }
        };
        match self.inner.try_write() {
            Ok(guard) => Ok(wrap(guard)),
            Err(TryLockError::Poisoned(p)) => Err(TryLockError::Poisoned(PoisonError::new(wrap(
                p.into_inner(),
            )))),
            Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
        }
    }

    /// As [`std::sync::RwLock::is_poisoned`].
    pub fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// As [`std::sync::RwLock::clear_poison`].
    pub fn clear_poison(&self) {
        self.inner.clear_poison();
    }

    /// As [`std::sync::RwLock::get_mut`].
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
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
