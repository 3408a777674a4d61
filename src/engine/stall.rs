//! One stall over the threshold, described once for every sink: the log report words it, the
//! OTLP sink exports it as a span (`stallscope.slow_poll`, `stallscope.blocking_queue_wait`,
//! `stallscope.lock_wait`).
//!
//! A source builds a [`Stall`] with [`Stall::new`] on the thread that stalled (which fills in
//! the wall-clock end, the thread, the runtime and the tokio task), sets what it knows on top,
//! and hands it to [`Engine::emit_stall`](super::Engine::emit_stall). Building one is the cold
//! path: only stalls at or over the threshold get here.

use std::time::{Duration, SystemTime};

use tracing::Metadata;

use super::locks::{LockOp, LockSite};
use super::sites::Site;

/// What stalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StallKind {
    /// A poll of an async task blocked its worker thread.
    SlowPoll,
    /// A `spawn_blocking` job waited for a pool thread.
    BlockingQueueWait,
    /// A thread polling a task waited on a wrapped std (or parking_lot) lock.
    LockWait,
}

impl StallKind {
    /// The span name the OTLP sink exports the stall under.
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn span_name(self) -> &'static str {
        match self {
            StallKind::SlowPoll => "stallscope.slow_poll",
            StallKind::BlockingQueueWait => "stallscope.blocking_queue_wait",
            StallKind::LockWait => "stallscope.lock_wait",
        }
    }
}

/// The OpenTelemetry span a stall span is parented to: the user's span that was active on the
/// thread that stalled (read through tracing-opentelemetry, feature `tracing-opentelemetry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tracing-opentelemetry"), allow(dead_code))]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

/// Names one stalled poll for pairing it with its own worker's stack: the worker slot it ran
/// in and its start on the clock (two workers never share a slot; one worker's polls never
/// share a start, since a poll ends before the next begins and the clock only moves on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StackKey {
    pub(crate) slot: usize,
    pub(crate) start: u64,
}

/// One stall at or over the threshold, as every sink sees it.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
pub(crate) struct Stall {
    pub(crate) kind: StallKind,
    /// When the stall ended (wall clock); it began `duration` earlier.
    pub(crate) ended: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) threshold: Duration,
    /// Slow poll and lock wait: the task being polled. Queue wait: the `spawn_blocking` call
    /// site. Gives the spawn location and the task name.
    pub(crate) site: &'static Site,
    /// The tokio task (or blocking job) id, when known.
    pub(crate) task_id: Option<u64>,
    /// The innermost user span active during the stall (queue wait: where `spawn_blocking` was
    /// called).
    pub(crate) span: Option<&'static Metadata<'static>>,
    /// Lock wait: the lock and the operation that waited.
    pub(crate) lock: Option<(&'static LockSite, LockOp)>,
    /// `tokio.runtime.id` of the runtime the stalled thread belongs to.
    pub(crate) runtime_id: Option<String>,
    /// Name of the thread that stalled.
    pub(crate) thread: Option<String>,
    /// The user's OpenTelemetry span to parent the stall span to; a root span when `None`.
    pub(crate) parent: Option<TraceParent>,
    /// A stack of the stalled thread, when one was captured: exported as `code.stacktrace`.
    pub(crate) stack: Option<String>,
    /// The innermost frame of the application's own code in that stack, `function (file:line)`.
    pub(crate) blocked_in: Option<String>,
    /// Slow poll: the watchdog asked the stalled worker for its stack while this poll ran; the
    /// report waits for that stack (filled into `stack` and `blocked_in`).
    pub(crate) stack_of: Option<StackKey>,
}

impl Stall {
    /// A stall that just ended on this thread, after `duration`.
    pub(crate) fn new(
        kind: StallKind,
        site: &'static Site,
        duration: Duration,
        threshold: Duration,
    ) -> Stall {
        #[cfg(tokio_unstable)]
        let runtime_id = tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.id().to_string());
        #[cfg(not(tokio_unstable))]
        let runtime_id = None;
        Stall {
            kind,
            ended: SystemTime::now(),
            duration,
            threshold,
            site,
            task_id: tokio::task::try_id().and_then(|id| id.to_string().parse().ok()),
            span: None,
            lock: None,
            runtime_id,
            thread: std::thread::current().name().map(str::to_owned),
            parent: None,
            stack: None,
            blocked_in: None,
            stack_of: None,
        }
    }

    /// When the stall began (wall clock).
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn started(&self) -> SystemTime {
        self.ended.checked_sub(self.duration).unwrap_or(self.ended)
    }
}

/// Whether a span is one of tokio's own (`runtime.spawn`, `runtime.resource`, ...), never a
/// user span.
pub(crate) fn is_tokio_internal(meta: &Metadata<'_>) -> bool {
    meta.name().starts_with("runtime.")
}

/// The user span active on this thread right now, if any (tokio's own spans are not).
pub(crate) fn current_user_span() -> Option<&'static Metadata<'static>> {
    tracing::dispatcher::get_default(|dispatch| {
        dispatch
            .current_span()
            .metadata()
            .filter(|meta| !is_tokio_internal(meta))
    })
}

/// The innermost user span that covered (most of) a slow poll.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Culprit {
    /// The span's id (`tracing::span::Id::into_u64`).
    pub(crate) span: u64,
    pub(crate) meta: &'static Metadata<'static>,
    /// Time spent inside the span during the poll.
    pub(crate) inclusive: Duration,
    /// Its OpenTelemetry span, read when it exited (it may be closed by the end of the poll).
    pub(crate) trace_parent: Option<TraceParent>,
}
