//! The guard that ends a stallscope session: summary, final sample, exporter flush.

use std::sync::Arc;

use crate::engine::Engine;
use crate::snapshot::Snapshot;

/// Keeps stallscope's exporters running; dropping it logs the summary of the worst offenders
/// and flushes every exporter (bounded by the export timeout), so nothing recorded before exit
/// is lost. Hold it in `main` (`let _guard = ...;`, not `let _ = ...;`, which drops at once, nor
/// in a set-up function that returns). A guard dropped before anything was measured, while
/// stallscope goes on measuring, is said once in the log (`guard dropped early`).
///
/// Several guards of one instance (`guard()` called twice) end it together: the summary and
/// the flush come when the last of them drops, so dropping one never stops exporting for the
/// others.
///
/// ```
/// let layer = stallscope::Builder::new().build().unwrap();
/// let guard = layer.guard();
/// assert!(guard.snapshot().tasks.is_empty());
/// drop(guard); // logs "summary: no slow polls ..."
/// ```
#[must_use = "dropping the guard at once logs the summary and stops the exporters"]
#[derive(Debug)]
pub struct Guard {
    engine: Arc<Engine>,
}

impl Guard {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Engine::start(&engine);
        engine.guard_taken();
        Guard { engine }
    }

    /// Everything measured so far.
    ///
    /// In production mode, tokio completes a task's `JoinHandle` before it calls the
    /// after-poll hook of the task's last poll, so a snapshot taken right after awaiting a task
    /// may not count that poll yet. For exact counts (tests), take it after the runtime has
    /// shut down.
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }

    /// Waits (up to 5 seconds) until every report found so far is written to the log.
    ///
    /// Reports are written by a background thread, never by the worker or the clock thread that
    /// found them, so a stall's line reaches the log shortly after the stall ends (a slow poll
    /// waits for its worker's stack, at most a second). Dropping the guard flushes them before
    /// the summary; call this before reading the log at another moment (tests, or before
    /// `std::process::exit`). Never call it inside a task: it blocks the thread. Returns whether
    /// everything was written in time.
    ///
    /// ```
    /// let layer = stallscope::Builder::new().build().unwrap();
    /// let guard = layer.guard();
    /// assert!(guard.flush_reports());
    /// ```
    pub fn flush_reports(&self) -> bool {
        crate::engine::deferred::flush(crate::engine::SHUTDOWN_REPORTS_WAIT)
    }

    /// Samples the runtime-wide metrics of `handle`'s runtime. Runtimes whose tasks stallscope
    /// sees are watched automatically in full mode; call this for others, or when built without
    /// `--cfg tokio_unstable`.
    pub fn watch_runtime(&self, handle: &tokio::runtime::Handle) {
        Engine::watch_runtime(&self.engine, handle);
    }

    /// A [`Handle`](crate::Handle) on this guard's instance, for drop-in wrappers that should
    /// report to it rather than to the process's default instance.
    pub fn handle(&self) -> crate::Handle {
        crate::Handle::new(&self.engine)
    }
}

impl Guard {
    /// Production mode: installs stallscope's poll hooks on a runtime builder. See
    /// [`StallscopeLayer::instrument_runtime`](crate::StallscopeLayer::instrument_runtime).
    pub fn instrument_runtime<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        crate::hooks::instrument_runtime(&self.engine, builder)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.engine.guard_dropped() {
            self.engine.shutdown();
        }
    }
}
