use std::panic::Location;
use std::sync::{LockResult, TryLockResult};

use super::Measured;
use crate::engine::locks::{LockKind, LockOp, LockSite};

/// `std::sync::RwLock`, measured (reads and writes into the same lock site). See the
/// [module docs](crate::sync).
pub struct RwLock<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: std::sync::RwLock<T>,
}

/// The shared guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockReadGuard<'a, T> = Measured<std::sync::RwLockReadGuard<'a, T>>;

/// The exclusive guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockWriteGuard<'a, T> = Measured<std::sync::RwLockWriteGuard<'a, T>>;

impl<T> RwLock<T> {
    /// A lock measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        RwLock {
            site: super::site(None, LockKind::StdRwLock, Location::caller(), None),
            inner: std::sync::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        RwLock {
            site: super::site(None, LockKind::StdRwLock, Location::caller(), Some(name)),
            inner: std::sync::RwLock::new(value),
        }
    }

    /// A lock measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        RwLock {
            site: super::site(Some(handle), LockKind::StdRwLock, Location::caller(), None),
            inner: std::sync::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        RwLock {
            site: super::site(
                Some(handle),
                LockKind::StdRwLock,
                Location::caller(),
                Some(name),
            ),
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
        super::acquire(
            self.site,
            LockOp::Read,
            || super::unless_would_block(self.inner.try_read()),
            || self.inner.read(),
        )
        .transpose()
    }

    /// As [`std::sync::RwLock::write`], measuring the wait.
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        super::acquire(
            self.site,
            LockOp::Write,
            || super::unless_would_block(self.inner.try_write()),
            || self.inner.write(),
        )
        .transpose()
    }

    /// As [`std::sync::RwLock::try_read`] (never waits, so never records a wait).
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        super::std_tried(self.inner.try_read(), self.site, LockOp::Read)
    }

    /// As [`std::sync::RwLock::try_write`] (never waits, so never records a wait).
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        super::std_tried(self.inner.try_write(), self.site, LockOp::Write)
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

wrapper_impls!(RwLock);
