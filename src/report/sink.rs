//! The log report as one of an instance's sinks: the engine's findings, worded into the
//! application's log (see the parent module for the shape of every line).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::engine::locks::LockSite;
use crate::engine::sink::{Measuring, Sink};
use crate::engine::sites::Site;
use crate::engine::stall::{Stall, StallKind};
use crate::engine::starvation::{EpisodeEnd, PoolState};
use crate::engine::{Engine, StallStack};
use crate::snapshot::Snapshot;

use super::RateLimiter;

/// Report lines an instance writes a second at most; the next line written says how many more
/// there were (or a line of its own when the instance ends).
const REPORT_LINES_PER_SECOND: u64 = 20;

/// One instance's log report: its own rate limit, so one instance's burst does not silence
/// another's.
#[derive(Debug)]
pub(crate) struct LogReport {
    limiter: RateLimiter,
}

impl LogReport {
    pub(crate) fn new() -> LogReport {
        LogReport {
            limiter: RateLimiter::new(REPORT_LINES_PER_SECOND),
        }
    }
}

impl Sink for LogReport {
    fn startup_note(&self, level: tracing::Level, note: &str) {
        if level == tracing::Level::WARN {
            tracing::warn!(target: "stallscope", "{note}");
        } else {
            tracing::info!(target: "stallscope", "{note}");
        }
    }

    fn runtimes_over_limit(&self, max: usize) {
        tracing::warn!(
            target: "stallscope",
            "more than {max} tokio runtimes alive at once in this process: \
             further runtimes are not sampled while that lasts; a runtime built per \
             thread or per request is usually a mistake"
        );
    }

    fn second_runtime(&self, ids: &[String]) {
        tracing::info!(
            target: "stallscope",
            "a second tokio runtime is running (ids {}): metrics and reports tell them apart by tokio.runtime.id",
            ids.join(", ")
        );
    }

    fn many_runtimes(&self, count: usize, ids: &[String]) {
        tracing::warn!(
            target: "stallscope",
            runtimes = count,
            "{count} tokio runtimes in this process (ids {}): threads that each build their own runtime \
             (the asyncio.run-per-thread mistake) split work that one runtime would balance, and block \
             each other through shared std locks; share one runtime (Handle::current, a global runtime) \
             and tokio::sync or atomics",
            ids.join(", ")
        );
    }

    fn measuring(&self, engine: &Engine, how: &Measuring) {
        super::measuring(engine, how);
    }

    fn guard_dropped_early(&self) {
        super::guard_dropped_early();
    }

    fn runtime_not_measured(&self, runtime: &str, seen_from: &str) {
        #[cfg(tokio_unstable)]
        super::runtime_not_measured(runtime, seen_from);
        #[cfg(not(tokio_unstable))]
        let _ = (runtime, seen_from);
    }

    fn stall(&self, engine: &Engine, stall: &Stall) {
        if engine.config.report_slow_polls {
            match stall.kind {
                StallKind::SlowPoll => super::slow_poll(&self.limiter, stall),
                StallKind::LockWait => super::blocking_lock_wait(&self.limiter, stall),
                // Reported per starvation episode, not per job.
                StallKind::BlockingQueueWait => {}
            }
        }
    }

    fn stall_in_progress(&self, engine: &Engine, site: &Site, thread: &str, elapsed: Duration) {
        #[cfg(tokio_unstable)]
        super::stall_in_progress(&self.limiter, site, thread, elapsed, &engine.config);
        #[cfg(not(tokio_unstable))]
        let _ = (engine, site, thread, elapsed);
    }

    fn stall_stack(
        &self,
        site: &Site,
        thread: &str,
        elapsed: Duration,
        sample: u32,
        stack: &StallStack,
    ) {
        super::stall_stack(&self.limiter, site, thread, elapsed, sample, stack);
    }

    fn guard_held_across_await(&self, lock: &LockSite, task: &Site) {
        super::guard_held_across_await(lock, task);
    }

    fn no_task_spans(&self, engine: &Engine, at_shutdown: bool) -> bool {
        super::warn_if_no_task_spans(engine, at_shutdown)
    }

    fn starvation_began(&self, state: &PoolState, wait: Option<Duration>) {
        super::starvation_began(state, wait);
    }

    fn starvation_ended(&self, end: &EpisodeEnd) {
        super::starvation_ended(end);
    }

    fn shutdown(&self, engine: &Engine, snapshot: &Snapshot) {
        // A burst at the very end: no later line would carry the count.
        let suppressed = self.limiter.take_suppressed();
        if suppressed > 0 {
            super::suppressed_at_the_end(suppressed, REPORT_LINES_PER_SECOND);
        }
        if engine.config.summary_on_drop && !engine.refused.load(Relaxed) {
            super::summary(snapshot);
        }
    }
}
