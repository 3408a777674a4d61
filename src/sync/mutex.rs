use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `std::sync::Mutex`, measured. See the [module docs](crate::sync).
pub struct Mutex<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: std::sync::Mutex<T>,
}

/// The guard of a [`Mutex`]; its drop records the hold time.
pub struct MutexGuard<'a, T: ?Sized + 'a> {
    inner: std::sync::MutexGuard<'a, T>,
    site: Option<&'static LockSite>,
    acquired: u64,
}

impl<T> Mutex<T> {
    /// A mutex measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Mutex {
            site: super::site(LockKind::StdMutex, Location::caller(), None),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        Mutex {
            site: super::site(LockKind::StdMutex, Location::caller(), Some(name)),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// As [`std::sync::Mutex::into_inner`].
    pub fn into_inner(self) -> LockResult<T> {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    fn wrap<'a>(&'a self, inner: std::sync::MutexGuard<'a, T>, acquired: u64) -> MutexGuard<'a, T> {
        MutexGuard {
            inner,
            site: self.site,
            acquired,
        }
    }

    /// As [`std::sync::Mutex::lock`], measuring the wait.
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        let (result, acquired) = super::acquire(
            self.site,
            LockOp::Lock,
            || match self.inner.try_lock() {
                Ok(guard) => Some(Ok(guard)),
                Err(TryLockError::Poisoned(p)) => Some(Err(p)),
                Err(TryLockError::WouldBlock) => None,
            },
            || self.inner.lock(),
        );
        match result {
            Ok(guard) => Ok(self.wrap(guard, acquired)),
            Err(p) => Err(PoisonError::new(self.wrap(p.into_inner(), acquired))),
        }
    }

    /// As [`std::sync::Mutex::try_lock`] (never waits, so never records a wait).
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        let acquired = crate::clock::now_ns();
        match self.inner.try_lock() {
            Ok(guard) => {
                super::note_acquired(self.site);
                Ok(self.wrap(guard, acquired))
            }
            Err(TryLockError::Poisoned(p)) => {
                super::note_acquired(self.site);
                Err(TryLockError::Poisoned(PoisonError::new(
                    self.wrap(p.into_inner(), acquired),
                )))
            }
            Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
        }
    }

    /// As [`std::sync::Mutex::is_poisoned`].
    pub fn is_poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// As [`std::sync::Mutex::clear_poison`].
    pub fn clear_poison(&self) {
        self.inner.clear_poison();
    }

    /// As [`std::sync::Mutex::get_mut`].
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
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
        self.inner.fmt(f)
    }
}
