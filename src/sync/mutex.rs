use std::panic::Location;
use std::sync::{LockResult, TryLockResult};

use super::Measured;
use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `std::sync::Mutex`, measured. See the [module docs](crate::sync).
pub struct Mutex<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: std::sync::Mutex<T>,
}

/// The guard of a [`Mutex`]; its drop records the hold time.
pub type MutexGuard<'a, T> = Measured<std::sync::MutexGuard<'a, T>>;

impl<T> Mutex<T> {
    /// A mutex measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Mutex {
            site: super::site(None, LockKind::StdMutex, Location::caller(), None),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        Mutex {
            site: super::site(None, LockKind::StdMutex, Location::caller(), Some(name)),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        Mutex {
            site: super::site(Some(handle), LockKind::StdMutex, Location::caller(), None),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        Mutex {
            site: super::site(
                Some(handle),
                LockKind::StdMutex,
                Location::caller(),
                Some(name),
            ),
            inner: std::sync::Mutex::new(value),
        }
    }

    /// As [`std::sync::Mutex::into_inner`].
    pub fn into_inner(self) -> LockResult<T> {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// As [`std::sync::Mutex::lock`], measuring the wait.
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        super::acquire(
            self.site,
            LockOp::Lock,
            || super::unless_would_block(self.inner.try_lock()),
            || self.inner.lock(),
        )
        .transpose()
    }

    /// As [`std::sync::Mutex::try_lock`] (never waits, so never records a wait).
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        super::std_tried(self.inner.try_lock(), self.site, LockOp::Lock)
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

wrapper_impls!(Mutex);
