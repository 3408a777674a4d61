//! Per-thread state of the polls in progress: which task is being polled since when, and which
//! user spans were entered inside the poll, to name the innermost span that covered a slow poll.
//!
//! Fixed-size arrays in a thread-local: no allocation and no lock on the per-poll path.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use crate::clock;

use tracing::Metadata;

use crate::engine::sites::Site;
use crate::engine::stall::TraceParent;
use crate::report::Culprit;

/// Nested polls on one thread happen with `block_in_place` + `block_on`; deeper is ignored.
const MAX_NESTED_POLLS: usize = 4;
/// User spans open at once inside one poll; deeper spans are not tracked.
const MAX_SPAN_DEPTH: usize = 32;

/// An inner span replaces the current culprit if it covered at least this share of it.
const INNER_SHARE: f64 = 0.9;

#[derive(Clone, Copy)]
pub(crate) enum PollKind {
    Async { task_id: u64 },
    BlockingJob,
}

#[derive(Clone, Copy)]
pub(crate) struct ActivePoll {
    pub(crate) span: u64,
    pub(crate) site: &'static Site,
    pub(crate) kind: PollKind,
    /// Coarse clock at the start of the poll.
    pub(crate) start: u64,
    /// Depth of the user-span stack when the poll began.
    span_base: usize,
    pub(crate) culprit: Option<(Culprit, usize)>,
}

#[derive(Clone, Copy)]
struct UserSpan {
    span: u64,
    meta: &'static Metadata<'static>,
    entered: u64,
}

struct ThreadPolls {
    polls: [Option<ActivePoll>; MAX_NESTED_POLLS],
    polls_len: usize,
    spans: [Option<UserSpan>; MAX_SPAN_DEPTH],
    spans_len: usize,
    /// This thread's worker slot, where the watchdog sees the outermost poll in progress.
    #[cfg(tokio_unstable)]
    slot: Option<&'static crate::hooks::slots::WorkerSlot>,
}

thread_local! {
    static POLLS: RefCell<ThreadPolls> = const {
        RefCell::new(ThreadPolls {
            polls: [None; MAX_NESTED_POLLS],
            polls_len: 0,
            spans: [None; MAX_SPAN_DEPTH],
            spans_len: 0,
            #[cfg(tokio_unstable)]
            slot: None,
        })
    };
    /// 0 = not yet known, 1 = measured, 2 = ignored (a runtime of a library that exports for
    /// us or for the console: its tasks are not the application's).
    static THREAD_ROLE: Cell<u8> = const { Cell::new(0) };
    /// Whether this thread's runtime was handed to the runtime sampler.
    static RUNTIME_WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// What a span that is not a task is, cached per thread from `on_new_span` (where its metadata
/// comes free) so `on_enter`/`on_exit` skip the registry lookup: tokio creates and enters its
/// resource and async-op spans on the same thread, several per lock or channel operation.
#[derive(Clone, Copy)]
pub(crate) enum SpanClass {
    /// tokio's own resource/async-op spans: never a culprit.
    Internal,
    /// An acquisition of a tracked tokio lock: internal, but its close ends a wait.
    AsyncOp,
    /// A user span: a culprit candidate inside a poll.
    User(&'static Metadata<'static>),
}

const CLASS_CACHE_SIZE: usize = 256;

thread_local! {
    static CLASSES: [Cell<(u64, Option<SpanClass>)>; CLASS_CACHE_SIZE] =
        const { [const { Cell::new((0, None)) }; CLASS_CACHE_SIZE] };
}

fn class_slot(span: u64) -> usize {
    (span as usize) % CLASS_CACHE_SIZE
}

/// Remembers what `span` is (a span id is never reused with the same generation).
#[inline]
pub(crate) fn remember_class(span: u64, class: SpanClass) {
    let _ = CLASSES.try_with(|c| c[class_slot(span)].set((span, Some(class))));
}

/// What `span` is, if it was created on this thread and is still remembered.
#[inline]
pub(crate) fn class_of(span: u64) -> Option<SpanClass> {
    CLASSES
        .try_with(|c| match c[class_slot(span)].get() {
            (id, class) if id == span => class,
            _ => None,
        })
        .ok()
        .flatten()
}

/// Forgets a closed span.
#[inline]
pub(crate) fn forget_class(span: u64) {
    let _ = CLASSES.try_with(|c| {
        let slot = &c[class_slot(span)];
        if slot.get().0 == span {
            slot.set((0, None));
        }
    });
}

/// Threads whose tasks belong to exporters, not to the application.
const IGNORED_THREAD_PREFIXES: &[&str] = &["reqwest-internal-sync-runtime", "stallscope-"];

/// Whether polls on this thread are the application's (decided once per thread).
#[inline]
pub(crate) fn thread_is_measured() -> bool {
    THREAD_ROLE.with(|role| match role.get() {
        1 => true,
        2 => false,
        _ => {
            let ignored = std::thread::current()
                .name()
                .is_some_and(|n| IGNORED_THREAD_PREFIXES.iter().any(|p| n.starts_with(p)));
            role.set(if ignored { 2 } else { 1 });
            !ignored
        }
    })
}

/// Gives this thread's polls a worker slot, so the watchdog sees them while they run.
#[cfg(tokio_unstable)]
pub(crate) fn set_slot(slot: &'static crate::hooks::slots::WorkerSlot) {
    POLLS.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.slot = Some(slot);
        }
    });
}

/// True the first time it is called on a thread (to register that thread's runtime).
#[inline]
pub(crate) fn first_poll_on_thread() -> bool {
    RUNTIME_WATCHED.with(|w| !w.replace(true))
}

pub(crate) fn begin_poll(span: u64, site: &'static Site, kind: PollKind) {
    POLLS.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.polls_len == MAX_NESTED_POLLS {
            return;
        }
        let i = p.polls_len;
        let start = clock::now_ns();
        #[cfg(tokio_unstable)]
        if let (0, Some(slot), PollKind::Async { .. }) = (i, p.slot, kind) {
            slot.site.store(
                site as *const Site as *mut Site,
                std::sync::atomic::Ordering::Relaxed,
            );
            slot.start_ns
                .store(start, std::sync::atomic::Ordering::Relaxed);
        }
        p.polls[i] = Some(ActivePoll {
            span,
            site,
            kind,
            start,
            span_base: p.spans_len,
            culprit: None,
        });
        p.polls_len += 1;
    });
}

/// Ends the poll of `span` if it is the innermost one in progress on this thread; returns it
/// with its coarse duration in nanoseconds.
pub(crate) fn end_poll(span: u64) -> Option<(ActivePoll, u64)> {
    POLLS.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let i = p.polls_len.checked_sub(1)?;
        let poll = p.polls[i].filter(|poll| poll.span == span)?;
        let elapsed = clock::now_ns().saturating_sub(poll.start);
        #[cfg(tokio_unstable)]
        if let (0, Some(slot), PollKind::Async { .. }) = (i, p.slot, poll.kind) {
            slot.start_ns.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        p.polls[i] = None;
        p.polls_len = i;
        // Spans still open belonged to this poll; forget them.
        p.spans_len = p.spans_len.min(poll.span_base);
        Some((poll, elapsed))
    })
}

/// A user span was entered; tracked only while a poll is in progress.
pub(crate) fn enter_span(span: u64, meta: &'static Metadata<'static>) {
    POLLS.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        if p.polls_len == 0 || p.spans_len == MAX_SPAN_DEPTH {
            return;
        }
        let i = p.spans_len;
        p.spans[i] = Some(UserSpan {
            span,
            meta,
            entered: clock::now_ns(),
        });
        p.spans_len += 1;
    });
}

/// The span id of the async task poll in progress on this thread, if any.
pub(crate) fn current_poll_span() -> Option<u64> {
    POLLS
        .try_with(|p| {
            let p = p.try_borrow().ok()?;
            let poll = p.polls[p.polls_len.checked_sub(1)?]?;
            matches!(poll.kind, PollKind::Async { .. }).then_some(poll.span)
        })
        .ok()
        .flatten()
}

/// The site of the async task whose poll is in progress on this thread, if any.
pub(crate) fn current_task_site() -> Option<&'static Site> {
    POLLS
        .try_with(|p| {
            let p = p.try_borrow().ok()?;
            let poll = p.polls[p.polls_len.checked_sub(1)?]?;
            matches!(poll.kind, PollKind::Async { .. }).then_some(poll.site)
        })
        .ok()
        .flatten()
}

/// Whether any poll is in progress on this thread (cheap pre-check before span lookups).
#[inline]
pub(crate) fn polling() -> bool {
    POLLS.with(|p| p.try_borrow().map(|p| p.polls_len > 0).unwrap_or(false))
}

/// A user span was exited: credit its time to the current poll's culprit candidate. Returns
/// the time spent inside it when it became the candidate.
pub(crate) fn exit_span(span: u64) -> Option<Duration> {
    POLLS.with(|p| {
        let mut p = p.try_borrow_mut().ok()?;
        let i = p.spans_len.checked_sub(1)?;
        let user = p.spans[i].filter(|s| s.span == span)?;
        p.spans[i] = None;
        p.spans_len = i;
        let pi = p.polls_len.checked_sub(1)?;
        let poll = p.polls[pi].as_mut()?;
        if i < poll.span_base {
            return None;
        }
        let depth = i - poll.span_base;
        let inclusive = Duration::from_nanos(clock::now_ns().saturating_sub(user.entered));
        let candidate = Culprit {
            span,
            meta: user.meta,
            inclusive,
            trace_parent: None,
        };
        // Inner spans exit first. Keep the innermost span that covered most of the time: a
        // shallower span replaces it only if it covered clearly more, a sibling if it covered more.
        let replace = match poll.culprit {
            None => true,
            Some((best, best_depth)) => {
                let (new, old) = (inclusive.as_secs_f64(), best.inclusive.as_secs_f64());
                match depth.cmp(&best_depth) {
                    std::cmp::Ordering::Less => new * INNER_SHARE > old,
                    std::cmp::Ordering::Equal => new > old,
                    std::cmp::Ordering::Greater => new >= old * INNER_SHARE,
                }
            }
        };
        replace.then(|| {
            poll.culprit = Some((candidate, depth));
            inclusive
        })
    })
}

/// Sets the OpenTelemetry span of the current poll's culprit, if `span` still is the culprit.
pub(crate) fn set_culprit_trace_parent(span: u64, parent: Option<TraceParent>) {
    POLLS.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        let Some(pi) = p.polls_len.checked_sub(1) else {
            return;
        };
        if let Some(poll) = p.polls[pi].as_mut() {
            if let Some((culprit, _)) = poll.culprit.as_mut().filter(|(c, _)| c.span == span) {
                culprit.trace_parent = parent;
            }
        }
    });
}
