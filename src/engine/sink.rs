//! What the engine hands its sinks: the one interface between measuring and telling.
//!
//! A sink (the log report, the OTLP exporter, a future Prometheus endpoint) implements [`Sink`]
//! and is handed to the engine once, when the instance is wired ([`Engine::set_sinks`]). The
//! engine then calls it, never the other way round through an import: adding a sink touches
//! no file under `engine/`.
//!
//! As in metrics-rs' `Recorder`, a sink binds a handle to each site and lock once, when the
//! engine makes it ([`Sink::bind_site`], [`Sink::bind_lock`]): recording a timed poll or a
//! lock wait is then a call on that handle, with no lookup. Stalls, starvation episodes and the
//! other findings arrive as calls, on the reporter thread (see [`super::deferred`]) unless a
//! method says otherwise; snapshots are pulled by the sink when it exports (an exporter holds
//! a weak reference to the engine), as console-subscriber's aggregator reads its tasks.
//!
//! [`Engine::set_sinks`]: super::Engine::set_sinks

use std::any::Any;
use std::time::Duration;

use super::locks::{LockOp, LockSite};
use super::sites::Site;
use super::stall::{Stall, TraceParent};
use super::starvation::{EpisodeEnd, PoolState};
use super::{Engine, StallStack};
use crate::snapshot::Snapshot;

/// How an instance measures, said once when it starts measuring.
#[derive(Clone, Debug)]
pub(crate) enum Measuring {
    /// Full mode: the layer reads tokio's task spans.
    TaskSpans,
    /// Production mode: poll hooks on the runtime with this id.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    PollHooks { runtime: String },
}

/// A sink's handle on one site, bound when the site is made: the timed measures of the site
/// go to it as they are recorded (fast polls are only counted, never handed over).
pub(crate) trait SiteRecorder: Send + Sync + std::fmt::Debug {
    /// A poll of at least two clock ticks.
    fn record_poll(&self, duration: Duration);
    /// A blocking job waited `wait` in the queue before a pool thread picked it up.
    fn record_queue_wait(&self, wait: Duration);
    /// A blocking job ran for `run`.
    fn record_blocking_run(&self, run: Duration);
    /// The handle as its sink's own type, for the sink that bound it (to read what it kept).
    // Only sinks that read their handles back call it (OTLP's observables read the attributes
    // they bound); a build without such a sink does not.
    #[allow(dead_code)]
    fn as_any(&self) -> &dyn Any;
}

/// A sink's handle on one lock, bound when the lock's site is made.
pub(crate) trait LockRecorder: Send + Sync + std::fmt::Debug {
    /// A contended acquisition obtained the lock after `wait` (at least two clock ticks).
    fn record_wait(&self, op: LockOp, wait: Duration);
    /// An acquisition was given up after waiting `wait`.
    fn record_cancelled_wait(&self, op: LockOp, wait: Duration);
    /// A guard was held `held` (at least two clock ticks).
    fn record_hold(&self, op: LockOp, held: Duration);
    /// The handle as its sink's own type, for the sink that bound it (to read what it kept).
    // Only sinks that read their handles back call it (OTLP's observables read the attributes
    // they bound); a build without such a sink does not.
    #[allow(dead_code)]
    fn as_any(&self) -> &dyn Any;
}

/// Where an instance's findings go. Every method has a default that ignores the finding, so a
/// sink implements what it tells and no more. Methods are called on the reporter thread unless
/// they say otherwise; none may block for long (a stuck sink would hold up the others).
pub(crate) trait Sink: Send + Sync {
    /// A handle for `site`, kept with it (called once per site, where it is made: on a worker).
    fn bind_site(&self, _site: &Site) -> Option<Box<dyn SiteRecorder>> {
        None
    }

    /// A handle for `lock`, kept with it (called once per lock, where it is made).
    fn bind_lock(&self, _lock: &LockSite) -> Option<Box<dyn LockRecorder>> {
        None
    }

    /// Whether this sink exports stalls as spans: stalls are then built, and their trace
    /// parent looked up, even with the log report off. Called on the thread that stalled.
    fn exports_stall_spans(&self) -> bool {
        false
    }

    /// The OpenTelemetry span at `span` or above (the current span when `None`), for a stall
    /// span's parent. Called on the thread that stalled, only when [`Sink::exports_stall_spans`].
    fn trace_parent(&self, _span: Option<&tracing::span::Id>) -> Option<TraceParent> {
        None
    }

    /// Where this sink sends what it exports, for the start-up line.
    fn describe_export(&self) -> Option<String> {
        None
    }

    /// A note for the start-up (a setting not applied, what this build cannot do), said when
    /// measuring starts.
    fn startup_note(&self, _level: tracing::Level, _note: &str) {}

    /// More than `max` runtimes are alive at once: the later ones are not sampled (once).
    fn runtimes_over_limit(&self, _max: usize) {}

    /// A second runtime runs in the process; `ids` are the runtimes watched (once).
    fn second_runtime(&self, _ids: &[String]) {}

    /// `count` runtimes run in the process, a sign of a runtime per thread (once).
    fn many_runtimes(&self, _count: usize, _ids: &[String]) {}

    /// The instance starts measuring, as `how` says (once).
    fn measuring(&self, _engine: &Engine, _how: &Measuring) {}

    /// The guard was dropped before anything was measured, and measuring goes on (once).
    fn guard_dropped_early(&self) {}

    /// Production mode found runtime `runtime` polling tasks without the poll hooks, from
    /// what `seen_from` describes (once per runtime).
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    fn runtime_not_measured(&self, _runtime: &str, _seen_from: &str) {}

    /// A stall ended, with its worker's stack when one was captured; `engine` is the
    /// instance's (its configuration says whether stalls are reported).
    fn stall(&self, _engine: &Engine, _stall: &Stall) {}

    /// The watchdog saw a poll of `site` on `thread` running `elapsed` past the threshold.
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    fn stall_in_progress(&self, _engine: &Engine, _site: &Site, _thread: &str, _elapsed: Duration) {
    }

    /// A stack captured `elapsed` into a stall of `site` on `thread` (`sample`-th of that
    /// stall), resolved.
    fn stall_stack(
        &self,
        _site: &Site,
        _thread: &str,
        _elapsed: Duration,
        _sample: u32,
        _stack: &StallStack,
    ) {
    }

    /// A poll of a task at `task` ended with a guard of `lock` still held (once per lock).
    fn guard_held_across_await(&self, _lock: &LockSite, _task: &Site) {}

    /// Tasks ran (or, `at_shutdown`, may have) and no task span was seen: returns whether the
    /// check is settled. Called on the sampler thread, and at shutdown.
    fn no_task_spans(&self, _engine: &Engine, _at_shutdown: bool) -> bool {
        true
    }

    /// A blocking-pool starvation episode began (`wait`: the slow queue wait that began it,
    /// `None` when the sampler saw the queue first).
    fn starvation_began(&self, _state: &PoolState, _wait: Option<Duration>) {}

    /// A blocking-pool starvation episode ended.
    fn starvation_ended(&self, _end: &EpisodeEnd) {}

    /// The instance ends (the last guard dropped): `snapshot` is everything it measured.
    /// Called on the thread that dropped the guard, once, sinks in the order they were set.
    fn shutdown(&self, _engine: &Engine, _snapshot: &Snapshot) {}
}
