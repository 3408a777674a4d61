//! Drop-in wrappers of `tokio::sync::{Mutex, RwLock, Semaphore}` that measure waits and holds
//! without tokio's `tracing` feature: production mode's view of tokio locks. They record into
//! the same lock sites and metrics as full mode does from tokio's spans (kinds
//! `tokio::sync::Mutex`, `tokio::sync::RwLock`, `tokio::sync::Semaphore`; operations `lock`,
//! `read`, `write`, `acquire`), per creation site or name.
//!
//! The API is tokio's, plus `named` constructors. An acquisition that is ready at its first
//! poll costs an atomic add and two loads of the coarse clock (for the hold); one that has to
//! wait is timed from that poll until it completes, or until its future is dropped (a
//! cancelled wait, e.g. a `timeout` around `lock()` that fired). Every guard's and permit's
//! hold is recorded when it drops. Waiting for a tokio lock suspends the task, not the worker,
//! so these waits are never reported as blocking inside async. With tokio's `tracing` feature
//! on as well (full mode), the layer leaves these locks to the wrapper: each is counted once.
//!
//! The `_owned` acquisitions keep the `Arc` of the wrapper; for a `Mutex` or `RwLock` they
//! need `T: 'static`. Not wrapped: the `blocking_` acquisitions, guard mapping
//! (`MutexGuard::map`, ...), `downgrade`, permit `merge`/`split`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use stallscope::sync::tokio::{Mutex, Semaphore};
//!
//! let stallscope = stallscope::Builder::new().build().unwrap();
//! let guard = stallscope.guard();
//!
//! let sessions = Arc::new(Mutex::named("sessions", Vec::<u32>::new()));
//! sessions.lock().await.push(7);
//! let mut owned = sessions.clone().lock_owned().await;
//! owned.push(8);
//! drop(owned);
//!
//! let uploads = Semaphore::named("uploads", 2);
//! let permit = uploads.acquire().await.unwrap();
//! assert_eq!(uploads.available_permits(), 1);
//! drop(permit);
//!
//! let lock = guard.snapshot().locks.into_iter().find(|l| l.name.as_deref() == Some("sessions"));
//! assert_eq!(lock.unwrap().acquisitions, 2);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;

pub use ::tokio::sync::{AcquireError, TryAcquireError, TryLockError};

use super::acquire_async::MeasuredAcquire;
use super::{Measured, Owned};
use crate::engine::locks::{LockKind, LockOp, LockSite};

/// The site of a wrapper created at `location`. While it is built, tokio's resource spans for
/// the inner lock are marked as the wrapper's: full mode's layer does not count them again.
/// The inner lock is created by the caller, under the returned marker, by a `#[track_caller]`
/// chain, so tokio (and tokio-console) still see the user's creation site.
#[track_caller]
fn site(
    handle: Option<&crate::Handle>,
    kind: LockKind,
    name: Option<&'static str>,
) -> (Option<&'static LockSite>, crate::layer::WrapperCreating) {
    let creating = crate::layer::wrapper_creating();
    (
        super::site(handle, kind, Location::caller(), name),
        creating,
    )
}

/// The owned form of `guard` (a [`Measured`] tokio `$kind` borrowed from the inner lock of
/// `lock`, an `Arc` of a wrapper): the guard kept with that `Arc`.
macro_rules! owned {
    ($kind:ident $(<$t:ident>)?, $guard:expr, $lock:expr) => {{
        let (guard, hold) = Measured::into_parts($guard);
        // SAFETY: only the lifetime changes, to `'static`. The guard borrows nothing but the
        // inner lock of `*$lock`, which the `Arc` kept next to it in `Owned` holds at a fixed
        // address for as long as the `Owned` lives; `Owned` drops the guard before the `Arc`
        // and never gives the guard out, only borrows of what it derefs to, bounded by its own.
        let guard = unsafe {
            std::mem::transmute::<
                ::tokio::sync::$kind<'_, $($t)?>,
                ::tokio::sync::$kind<'static, $($t)?>,
            >(guard)
        };
        Measured::new(Owned { guard, lock: $lock }, hold)
    }};
}

/// `tokio::sync::Mutex`, measured. See the [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let counter = stallscope::sync::tokio::Mutex::new(0u64);
/// *counter.lock().await += 1;
/// assert_eq!(*counter.try_lock().unwrap(), 1);
/// # }
/// ```
pub struct Mutex<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: ::tokio::sync::Mutex<T>,
}

/// The guard of a [`Mutex`]; its drop records the hold time.
pub type MutexGuard<'a, T> = Measured<::tokio::sync::MutexGuard<'a, T>>;

/// The guard of a [`Mutex`] from [`Mutex::lock_owned`]: keeps the `Arc` of the mutex.
pub type OwnedMutexGuard<T> = Measured<Owned<::tokio::sync::MutexGuard<'static, T>, Mutex<T>>>;

impl<T> Mutex<T> {
    /// A mutex measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        let (site, _creating) = site(None, LockKind::TokioMutex, None);
        Mutex {
            site,
            inner: ::tokio::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        let (site, _creating) = site(None, LockKind::TokioMutex, Some(name));
        Mutex {
            site,
            inner: ::tokio::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioMutex, None);
        Mutex {
            site,
            inner: ::tokio::sync::Mutex::new(value),
        }
    }

    /// A mutex measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioMutex, Some(name));
        Mutex {
            site,
            inner: ::tokio::sync::Mutex::new(value),
        }
    }

    /// As [`tokio::sync::Mutex::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// As [`tokio::sync::Mutex::lock`], measuring the wait.
    pub fn lock(&self) -> impl Future<Output = MutexGuard<'_, T>> + '_ {
        MeasuredAcquire::<_, { LockOp::Lock as u8 }>::new(self.site, self.inner.lock())
    }

    /// As [`tokio::sync::Mutex::try_lock`] (never waits, so never records a wait).
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError> {
        let guard = self.inner.try_lock()?;
        Ok(Measured::tried(guard, self.site, LockOp::Lock))
    }

    /// As [`tokio::sync::Mutex::lock_owned`], measuring the wait.
    pub async fn lock_owned(self: Arc<Self>) -> OwnedMutexGuard<T>
    where
        T: 'static,
    {
        let guard = self.lock().await;
        owned!(MutexGuard<T>, guard, self)
    }

    /// As [`tokio::sync::Mutex::try_lock_owned`].
    pub fn try_lock_owned(self: Arc<Self>) -> Result<OwnedMutexGuard<T>, TryLockError>
    where
        T: 'static,
    {
        let guard = self.try_lock()?;
        Ok(owned!(MutexGuard<T>, guard, self))
    }

    /// As [`tokio::sync::Mutex::get_mut`].
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T: ?Sized + 'static> OwnedMutexGuard<T> {
    /// As [`tokio::sync::OwnedMutexGuard::mutex`]: the mutex this guard keeps alive.
    pub fn mutex(this: &Self) -> &Arc<Mutex<T>> {
        &this.inner.lock
    }
}

/// `tokio::sync::RwLock`, measured (reads and writes into the same lock site, by operation).
/// See the [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = stallscope::sync::tokio::RwLock::named("config", String::from("v1"));
/// assert_eq!(*config.read().await, "v1");
/// *config.write().await = "v2".into();
/// assert_eq!(config.into_inner(), "v2");
/// # }
/// ```
pub struct RwLock<T: ?Sized> {
    site: Option<&'static LockSite>,
    inner: ::tokio::sync::RwLock<T>,
}

/// The shared guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockReadGuard<'a, T> = Measured<::tokio::sync::RwLockReadGuard<'a, T>>;

/// The exclusive guard of a [`RwLock`]; its drop records the hold time.
pub type RwLockWriteGuard<'a, T> = Measured<::tokio::sync::RwLockWriteGuard<'a, T>>;

/// The shared guard of a [`RwLock`] from [`RwLock::read_owned`]: keeps the `Arc` of the lock.
pub type OwnedRwLockReadGuard<T> =
    Measured<Owned<::tokio::sync::RwLockReadGuard<'static, T>, RwLock<T>>>;

/// The exclusive guard of a [`RwLock`] from [`RwLock::write_owned`]: keeps the `Arc` of the
/// lock.
pub type OwnedRwLockWriteGuard<T> =
    Measured<Owned<::tokio::sync::RwLockWriteGuard<'static, T>, RwLock<T>>>;

impl<T> RwLock<T> {
    /// A lock measured under its creation site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        let (site, _creating) = site(None, LockKind::TokioRwLock, None);
        RwLock {
            site,
            inner: ::tokio::sync::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, value: T) -> Self {
        let (site, _creating) = site(None, LockKind::TokioRwLock, Some(name));
        RwLock {
            site,
            inner: ::tokio::sync::RwLock::new(value),
        }
    }

    /// A lock measured under its creation site, in the instance of `handle` instead of the
    /// default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(value: T, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioRwLock, None);
        RwLock {
            site,
            inner: ::tokio::sync::RwLock::new(value),
        }
    }

    /// A lock measured under `name` (and its creation site), in the instance of `handle`
    /// instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, value: T, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioRwLock, Some(name));
        RwLock {
            site,
            inner: ::tokio::sync::RwLock::new(value),
        }
    }

    /// As [`tokio::sync::RwLock::into_inner`].
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// As [`tokio::sync::RwLock::read`], measuring the wait.
    pub fn read(&self) -> impl Future<Output = RwLockReadGuard<'_, T>> + '_ {
        MeasuredAcquire::<_, { LockOp::Read as u8 }>::new(self.site, self.inner.read())
    }

    /// As [`tokio::sync::RwLock::write`], measuring the wait.
    pub fn write(&self) -> impl Future<Output = RwLockWriteGuard<'_, T>> + '_ {
        MeasuredAcquire::<_, { LockOp::Write as u8 }>::new(self.site, self.inner.write())
    }

    /// As [`tokio::sync::RwLock::try_read`] (never waits, so never records a wait).
    pub fn try_read(&self) -> Result<RwLockReadGuard<'_, T>, TryLockError> {
        let guard = self.inner.try_read()?;
        Ok(Measured::tried(guard, self.site, LockOp::Read))
    }

    /// As [`tokio::sync::RwLock::try_write`] (never waits, so never records a wait).
    pub fn try_write(&self) -> Result<RwLockWriteGuard<'_, T>, TryLockError> {
        let guard = self.inner.try_write()?;
        Ok(Measured::tried(guard, self.site, LockOp::Write))
    }

    /// As [`tokio::sync::RwLock::read_owned`], measuring the wait.
    pub async fn read_owned(self: Arc<Self>) -> OwnedRwLockReadGuard<T>
    where
        T: 'static,
    {
        let guard = self.read().await;
        owned!(RwLockReadGuard<T>, guard, self)
    }

    /// As [`tokio::sync::RwLock::write_owned`], measuring the wait.
    pub async fn write_owned(self: Arc<Self>) -> OwnedRwLockWriteGuard<T>
    where
        T: 'static,
    {
        let guard = self.write().await;
        owned!(RwLockWriteGuard<T>, guard, self)
    }

    /// As [`tokio::sync::RwLock::try_read_owned`].
    pub fn try_read_owned(self: Arc<Self>) -> Result<OwnedRwLockReadGuard<T>, TryLockError>
    where
        T: 'static,
    {
        let guard = self.try_read()?;
        Ok(owned!(RwLockReadGuard<T>, guard, self))
    }

    /// As [`tokio::sync::RwLock::try_write_owned`].
    pub fn try_write_owned(self: Arc<Self>) -> Result<OwnedRwLockWriteGuard<T>, TryLockError>
    where
        T: 'static,
    {
        let guard = self.try_write()?;
        Ok(owned!(RwLockWriteGuard<T>, guard, self))
    }

    /// As [`tokio::sync::RwLock::get_mut`].
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

/// `tokio::sync::Semaphore`, measured: waits for permits, and how long permits are held. See
/// the [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let uploads = std::sync::Arc::new(stallscope::sync::tokio::Semaphore::named("uploads", 4));
/// let permit = uploads.clone().acquire_many_owned(3).await.unwrap();
/// assert_eq!((permit.num_permits(), uploads.available_permits()), (3, 1));
/// assert!(uploads.try_acquire_many(2).is_err());
/// # }
/// ```
pub struct Semaphore {
    site: Option<&'static LockSite>,
    inner: ::tokio::sync::Semaphore,
}

/// Permits of a [`Semaphore`]; their drop returns them and records the hold time.
pub type SemaphorePermit<'a> = Measured<::tokio::sync::SemaphorePermit<'a>>;

/// Permits of a [`Semaphore`] from [`Semaphore::acquire_owned`]: keep the `Arc` of the
/// semaphore.
pub type OwnedSemaphorePermit = Measured<Owned<::tokio::sync::SemaphorePermit<'static>, Semaphore>>;

impl Semaphore {
    /// As [`tokio::sync::Semaphore::MAX_PERMITS`].
    pub const MAX_PERMITS: usize = ::tokio::sync::Semaphore::MAX_PERMITS;

    /// A semaphore with `permits` permits, measured under its creation site.
    #[track_caller]
    pub fn new(permits: usize) -> Self {
        let (site, _creating) = site(None, LockKind::TokioSemaphore, None);
        Semaphore {
            site,
            inner: ::tokio::sync::Semaphore::new(permits),
        }
    }

    /// A semaphore with `permits` permits, measured under `name` (and its creation site).
    #[track_caller]
    pub fn named(name: &'static str, permits: usize) -> Self {
        let (site, _creating) = site(None, LockKind::TokioSemaphore, Some(name));
        Semaphore {
            site,
            inner: ::tokio::sync::Semaphore::new(permits),
        }
    }

    /// A semaphore with `permits` permits, measured under its creation site, in the instance
    /// of `handle` instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn new_in(permits: usize, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioSemaphore, None);
        Semaphore {
            site,
            inner: ::tokio::sync::Semaphore::new(permits),
        }
    }

    /// A semaphore with `permits` permits, measured under `name` (and its creation site), in
    /// the instance of `handle` instead of the default one (see [`Handle`](crate::Handle)).
    #[track_caller]
    pub fn named_in(name: &'static str, permits: usize, handle: &crate::Handle) -> Self {
        let (site, _creating) = site(Some(handle), LockKind::TokioSemaphore, Some(name));
        Semaphore {
            site,
            inner: ::tokio::sync::Semaphore::new(permits),
        }
    }

    /// As [`tokio::sync::Semaphore::available_permits`].
    pub fn available_permits(&self) -> usize {
        self.inner.available_permits()
    }

    /// As [`tokio::sync::Semaphore::add_permits`].
    pub fn add_permits(&self, n: usize) {
        self.inner.add_permits(n);
    }

    /// As [`tokio::sync::Semaphore::forget_permits`].
    pub fn forget_permits(&self, n: usize) -> usize {
        self.inner.forget_permits(n)
    }

    /// As [`tokio::sync::Semaphore::acquire`], measuring the wait.
    pub fn acquire(&self) -> impl Future<Output = Result<SemaphorePermit<'_>, AcquireError>> + '_ {
        MeasuredAcquire::<_, { LockOp::Acquire as u8 }>::new(self.site, self.inner.acquire())
    }

    /// As [`tokio::sync::Semaphore::acquire_many`], measuring the wait.
    pub fn acquire_many(
        &self,
        n: u32,
    ) -> impl Future<Output = Result<SemaphorePermit<'_>, AcquireError>> + '_ {
        MeasuredAcquire::<_, { LockOp::Acquire as u8 }>::new(self.site, self.inner.acquire_many(n))
    }

    /// As [`tokio::sync::Semaphore::try_acquire`] (never waits, so never records a wait).
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        let permit = self.inner.try_acquire()?;
        Ok(Measured::tried(permit, self.site, LockOp::Acquire))
    }

    /// As [`tokio::sync::Semaphore::try_acquire_many`] (never waits, so never records a wait).
    pub fn try_acquire_many(&self, n: u32) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        let permit = self.inner.try_acquire_many(n)?;
        Ok(Measured::tried(permit, self.site, LockOp::Acquire))
    }

    /// As [`tokio::sync::Semaphore::acquire_owned`], measuring the wait.
    pub async fn acquire_owned(self: Arc<Self>) -> Result<OwnedSemaphorePermit, AcquireError> {
        let permit = self.acquire().await?;
        Ok(owned!(SemaphorePermit, permit, self))
    }

    /// As [`tokio::sync::Semaphore::acquire_many_owned`], measuring the wait.
    pub async fn acquire_many_owned(
        self: Arc<Self>,
        n: u32,
    ) -> Result<OwnedSemaphorePermit, AcquireError> {
        let permit = self.acquire_many(n).await?;
        Ok(owned!(SemaphorePermit, permit, self))
    }

    /// As [`tokio::sync::Semaphore::try_acquire_owned`].
    pub fn try_acquire_owned(self: Arc<Self>) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        let permit = self.try_acquire()?;
        Ok(owned!(SemaphorePermit, permit, self))
    }

    /// As [`tokio::sync::Semaphore::try_acquire_many_owned`].
    pub fn try_acquire_many_owned(
        self: Arc<Self>,
        n: u32,
    ) -> Result<OwnedSemaphorePermit, TryAcquireError> {
        let permit = self.try_acquire_many(n)?;
        Ok(owned!(SemaphorePermit, permit, self))
    }

    /// As [`tokio::sync::Semaphore::close`]: pending acquisitions fail (recorded as given up).
    pub fn close(&self) {
        self.inner.close();
    }

    /// As [`tokio::sync::Semaphore::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl SemaphorePermit<'_> {
    /// As [`tokio::sync::SemaphorePermit::num_permits`].
    pub fn num_permits(&self) -> usize {
        self.inner.num_permits()
    }

    /// As [`tokio::sync::SemaphorePermit::forget`]: the permits are not returned, and no hold
    /// is recorded (it never ends).
    pub fn forget(self) {
        let (permit, hold) = Measured::into_parts(self);
        std::mem::forget(hold);
        permit.forget();
    }
}

impl OwnedSemaphorePermit {
    /// As [`tokio::sync::OwnedSemaphorePermit::num_permits`].
    pub fn num_permits(&self) -> usize {
        self.inner.guard.num_permits()
    }

    /// As [`tokio::sync::OwnedSemaphorePermit::semaphore`].
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.inner.lock
    }

    /// As [`tokio::sync::OwnedSemaphorePermit::forget`]: the permits are not returned, and no
    /// hold is recorded (it never ends).
    pub fn forget(self) {
        let (Owned { guard, lock }, hold) = Measured::into_parts(self);
        std::mem::forget(hold);
        guard.forget();
        drop(lock);
    }
}

wrapper_impls!(Mutex, RwLock);
