//! Drop-in replacements for `tokio::task` functions that production mode measures itself.
//!
//! They measure into the process's default instance (the first one started), or with
//! [`spawn_blocking_in`] into the instance of a [`Handle`](crate::Handle).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use tokio::task::JoinHandle;

use crate::engine::sites::{SiteKey, TaskKind};
use crate::engine::stall::is_tokio_internal;
use crate::engine::Engine;

/// The instance drop-in functions report to by default: the first one started in the process.
static DEFAULT_ENGINE: OnceLock<Weak<Engine>> = OnceLock::new();

pub(crate) fn set_default_engine(engine: &Arc<Engine>) {
    let _ = DEFAULT_ENGINE.set(Arc::downgrade(engine));
}

/// The instance drop-ins (this module, [`crate::sync`]) report to, while it lives.
pub(crate) fn default_engine() -> Option<Arc<Engine>> {
    DEFAULT_ENGINE.get().and_then(Weak::upgrade)
}

/// [`tokio::task::spawn_blocking`], measured in production mode: records how long the job
/// waited for a pool thread and how long it ran, per call site, and feeds the blocking-pool
/// starvation report. In full mode (tokio's task spans) it is exactly `tokio::task::spawn_blocking`:
/// the layer measures the job already.
///
/// ```
/// # #[tokio::main] async fn main() {
/// let sum = stallscope::task::spawn_blocking(|| (1..=10u64).sum::<u64>()).await.unwrap();
/// assert_eq!(sum, 55);
/// # }
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_blocking_measured(default_engine(), f)
}

/// [`spawn_blocking`], measured in the instance of `handle` instead of the default one (see
/// [`Handle`](crate::Handle)).
///
/// ```
/// # #[tokio::main] async fn main() {
/// let stallscope = stallscope::Builder::new().build().unwrap();
/// let handle = stallscope.handle();
/// let sum = stallscope::task::spawn_blocking_in(|| (1..=10u64).sum::<u64>(), &handle);
/// assert_eq!(sum.await.unwrap(), 55);
/// # }
/// ```
#[track_caller]
pub fn spawn_blocking_in<F, R>(f: F, handle: &crate::Handle) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_blocking_measured(handle.engine(), f)
}

/// `f` on tokio's blocking pool, measured in `engine` when its runtime has the poll hooks.
#[track_caller]
fn spawn_blocking_measured<F, R>(engine: Option<Arc<Engine>>, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let engine = engine.filter(|e| e.hooks_installed.load(Relaxed));
    let Some(engine) = engine else {
        return tokio::task::spawn_blocking(f);
    };
    let location = std::panic::Location::caller();
    #[cfg(tokio_unstable)]
    engine.check_runtime_measured(|| format!("stallscope::task::spawn_blocking at {location}"));
    let site = engine.site(&SiteKey {
        kind: TaskKind::Blocking,
        file: location.file(),
        line: location.line(),
        column: location.column(),
        task_name: None,
    });
    site.queued.fetch_add(1, Relaxed);
    // The calling span, for the stall span of a long wait (its name and its trace): a handle
    // that keeps it open until the job starts. Only when stall spans are exported.
    let caller = engine
        .exports_stall_spans()
        .then(tracing::Span::current)
        .filter(|span| span.metadata().is_some_and(|m| !is_tokio_internal(m)));
    let queued = Instant::now();
    tokio::task::spawn_blocking(move || {
        /// Keeps the running count right even if `f` panics.
        struct Running(&'static crate::engine::sites::Site);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Relaxed);
            }
        }
        site.queued.fetch_sub(1, Relaxed);
        site.running.fetch_add(1, Relaxed);
        let _running = Running(site);
        engine.record_queue_wait(site, queued.elapsed(), |stall| {
            if let Some(caller) = &caller {
                stall.span = caller.metadata();
                stall.parent = engine.trace_parent(caller.id().as_ref());
            }
        });
        drop(caller);
        let started = Instant::now();
        let result = f();
        engine.record_blocking_run(site, started.elapsed());
        result
    })
}
