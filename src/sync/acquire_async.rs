//! The future of a measured async acquisition ([`tokio`](super::tokio) wrappers): tokio's own
//! acquire future, polled in place, with the wait timed around it.
//!
//! A hand-written future rather than an `async fn`: in a lock convoy every acquisition waits,
//! and each one is a poll on the convoy's serial path, so the layers of state machine an
//! `async fn` wrapper adds are paid once per lock.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use super::{Hold, Measured};
use crate::clock;
use crate::engine::locks::{LockOp, LockSite};

/// What a tokio acquire future returns: a guard or permit, or (a closed semaphore) an error,
/// and the same with the guard measured.
pub(super) trait AcquireOutput: Sized {
    type Guard;
    type Measured;
    /// The guard, or the failure passed through as the measured output.
    fn into_guard(self) -> Result<Self::Guard, Self::Measured>;
    fn measured(guard: Measured<Self::Guard>) -> Self::Measured;
}

/// Guards whose acquisition cannot fail.
macro_rules! infallible {
    ($($guard:ident),*) => {$(
        impl<'a, T: ?Sized> AcquireOutput for ::tokio::sync::$guard<'a, T> {
            type Guard = Self;
            type Measured = Measured<Self>;
            #[inline]
            fn into_guard(self) -> Result<Self, Measured<Self>> {
                Ok(self)
            }
            #[inline]
            fn measured(guard: Measured<Self>) -> Measured<Self> {
                guard
            }
        }
    )*};
}

infallible!(MutexGuard, RwLockReadGuard, RwLockWriteGuard);

impl<'a> AcquireOutput for Result<::tokio::sync::SemaphorePermit<'a>, ::tokio::sync::AcquireError> {
    type Guard = ::tokio::sync::SemaphorePermit<'a>;
    type Measured = Result<Measured<Self::Guard>, ::tokio::sync::AcquireError>;
    #[inline]
    fn into_guard(self) -> Result<Self::Guard, Self::Measured> {
        self.map_err(Err)
    }
    #[inline]
    fn measured(guard: Measured<Self::Guard>) -> Self::Measured {
        Ok(guard)
    }
}

/// An async acquisition of operation `OP` (a [`LockOp`] as `u8`), measured. The acquire
/// future is polled as tokio would poll it: ready at once is uncontended (no wait to time);
/// pending is a wait, timed until it is ready or the future is dropped (a cancelled wait). An
/// error (a closed semaphore) ends a wait as given up.
///
/// Two words beside tokio's future: it is stored in every task awaiting a lock, and in a convoy
/// each extra cache line of those tasks is a miss on every handoff (padding tokio's own
/// `lock()` future by 40 bytes slowed the mutex benchmark by 8%).
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub(super) struct MeasuredAcquire<F, const OP: u8> {
    /// Pinned whenever `self` is (see [`Self::project`]).
    acquire: F,
    site: Option<&'static LockSite>,
    /// When the wait began (coarse clock, never 0); 0 while not waiting.
    waiting_since: u64,
}

impl<F, const OP: u8> Drop for MeasuredAcquire<F, OP> {
    fn drop(&mut self) {
        if let (Some(site), since @ 1..) = (self.site, self.waiting_since) {
            super::gave_up(site, LockOp::from_u8(OP), since);
        }
    }
}

impl<F, const OP: u8> MeasuredAcquire<F, OP> {
    #[inline]
    pub(super) fn new(site: Option<&'static LockSite>, acquire: F) -> Self {
        MeasuredAcquire {
            acquire,
            site,
            waiting_since: 0,
        }
    }

    /// The pinned acquire future, and the wait's start.
    #[inline]
    fn project(self: Pin<&mut Self>) -> (Pin<&mut F>, Option<&'static LockSite>, &mut u64) {
        // SAFETY: `acquire` is structurally pinned: nothing moves it out of a pinned `Self`
        // (`Drop` reads only the other fields), and `Self` is `Unpin` only when `F` is.
        unsafe {
            let this = self.get_unchecked_mut();
            (
                Pin::new_unchecked(&mut this.acquire),
                this.site,
                &mut this.waiting_since,
            )
        }
    }
}

impl<F: Future, const OP: u8> Future for MeasuredAcquire<F, OP>
where
    F::Output: AcquireOutput,
{
    type Output = <F::Output as AcquireOutput>::Measured;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (acquire, site, waiting_since) = self.project();
        let op = LockOp::from_u8(OP);
        let Some(site) = site else {
            let output = ready!(acquire.poll(cx));
            return Poll::Ready(match output.into_guard() {
                Ok(guard) => F::Output::measured(Measured::new(guard, Hold::start(None, op))),
                Err(failed) => failed,
            });
        };
        let waiting = *waiting_since != 0;
        // tokio's acquire futures yield when the task's coop budget is spent, lock taken or not.
        // A task out of budget yields here first, so that a pending poll below is contention.
        if !waiting
            && !::tokio::task::coop::has_budget_remaining()
            && pin!(::tokio::task::coop::consume_budget())
                .poll(cx)
                .is_pending()
        {
            return Poll::Pending;
        }
        let Poll::Ready(output) = acquire.poll(cx) else {
            if !waiting {
                *waiting_since = clock::now_ns();
            }
            return Poll::Pending;
        };
        let since = std::mem::take(waiting_since);
        Poll::Ready(match output.into_guard() {
            Ok(guard) => {
                let hold = match since {
                    0 => Hold::uncontended(site, op),
                    since => super::waited(site, op, since),
                };
                F::Output::measured(Measured::new(guard, hold))
            }
            Err(failed) => {
                if since != 0 {
                    super::gave_up(site, op, since);
                }
                failed
            }
        })
    }
}
