//! Per-thread state of the polls in progress: which task is being polled since when, and which
//! user spans were entered inside the poll, to name the innermost span that covered a slow poll.
//!
//! Fixed-size arrays in a thread-local: no allocation and no lock on the per-poll path.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Release},
};
use std::time::Duration;

use crate::clock;

use tracing::Metadata;

use crate::engine::locks::LockSite;
use crate::engine::sites::Site;
use crate::engine::stall::TraceParent;
use crate::report::Culprit;

use super::scopes::Scope;

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
}

#[derive(Clone, Copy)]
struct UserSpan {
    span: u64,
    meta: &'static Metadata<'static>,
    entered: u64,
}

/// A poll that just ended: what the layer records. The culprit (large, and needed only for
/// slow polls) is kept apart from the polls in progress so the per-poll path copies little.
pub(crate) struct EndedPoll {
    pub(crate) poll: ActivePoll,
    /// Coarse duration in nanoseconds.
    pub(crate) elapsed: u64,
    /// Where the poll was on this thread's stack, for [`take_culprit`].
    depth: usize,
    /// This thread's histogram shard.
    pub(crate) shard: usize,
}

/// This thread's polls in progress. Cells, not a `RefCell`: every access is a few plain loads
/// and stores with no borrow flag, and nothing here can be reentered mid-update.
struct ThreadPolls {
    polls: [Cell<Option<ActivePoll>>; MAX_NESTED_POLLS],
    /// Per poll in progress: the innermost user span that covered most of it, and its depth.
    culprits: [Cell<Option<(Culprit, usize)>>; MAX_NESTED_POLLS],
    polls_len: Cell<usize>,
    /// Whether this thread was registered ([`set_thread`]) by its first async poll.
    thread_set: Cell<bool>,
    spans: [Cell<Option<UserSpan>>; MAX_SPAN_DEPTH],
    spans_len: Cell<usize>,
    /// The task span whose poll ended last on this thread, if that poll was fast (counted, not
    /// timed); else 0. See [`drop_enter_counted`].
    last_fast_poll: Cell<u64>,
    /// This thread's histogram shard, set with the first poll (see [`set_thread`]).
    shard: Cell<usize>,
    /// This thread's worker slot, where the watchdog sees the outermost poll in progress.
    #[cfg(tokio_unstable)]
    slot: Cell<Option<&'static crate::hooks::slots::WorkerSlot>>,
}

thread_local! {
    static POLLS: ThreadPolls = const {
        ThreadPolls {
            polls: [const { Cell::new(None) }; MAX_NESTED_POLLS],
            culprits: [const { Cell::new(None) }; MAX_NESTED_POLLS],
            polls_len: Cell::new(0),
            thread_set: Cell::new(false),
            spans: [const { Cell::new(None) }; MAX_SPAN_DEPTH],
            spans_len: Cell::new(0),
            last_fast_poll: Cell::new(0),
            shard: Cell::new(0),
            #[cfg(tokio_unstable)]
            slot: Cell::new(None),
        }
    };
    /// 0 = not yet known, 1 = measured, 2 = ignored (a runtime of a library that exports for
    /// us or for the console: its tasks are not the application's).
    static THREAD_ROLE: Cell<u8> = const { Cell::new(0) };
}

/// What a span is, cached per thread so `on_enter`/`on_exit` skip the registry lookup (a
/// sharded-slab get, a ref-count guard and the extensions lock): remembered in `on_new_span`
/// (where its metadata comes free) for every span created on this thread, and for tasks also
/// after a lookup on another thread (work stealing moves tasks between workers).
#[derive(Clone, Copy)]
pub(crate) enum SpanClass {
    /// tokio's own resource/async-op spans: never a culprit.
    Internal,
    /// An acquisition of a tracked tokio lock: internal, but its close ends a wait.
    AsyncOp,
    /// An async op's poll span, where tokio emits the op's `poll_op` events (`op`: its
    /// acquisition's async-op span, if the layer tracks that acquisition).
    OpPoll { op: Option<u64> },
    /// A user span: a culprit candidate inside a poll.
    User(&'static Metadata<'static>),
    /// An async task's `runtime.spawn` span (not a `block_on`): each enter/exit is a poll.
    Task { site: &'static Site, task_id: u64 },
    /// A `runtime.spawn` span that takes the slow path: blocking jobs, `block_on`s.
    OtherTask,
    /// A `runtime.spawn` span this layer does not measure (ignored threads, production mode).
    IgnoredTask,
    /// A tokio resource span (lock, channel, timer...): internal, and entered from every
    /// worker, not only the thread that created it. `lock`: the lock, if the layer tracks it.
    Resource { lock: Option<&'static LockSite> },
}

impl SpanClass {
    /// Spans whose enters and exits the layer ignores: tokio's own (never culprits, nothing to
    /// record) and tasks it does not measure.
    #[inline]
    pub(crate) fn enter_exit_ignored(self) -> bool {
        matches!(
            self,
            SpanClass::Internal
                | SpanClass::AsyncOp
                | SpanClass::OpPoll { .. }
                | SpanClass::IgnoredTask
                | SpanClass::Resource { .. }
        )
    }

    /// The spans whose events the layer reads, kept while entered (see [`super::scopes`]).
    #[inline]
    pub(crate) fn scope(self) -> Option<Scope> {
        match self {
            SpanClass::Resource { lock } => Some(Scope::Resource(lock)),
            SpanClass::OpPoll { op } => Some(Scope::OpPoll(op)),
            _ => None,
        }
    }

    /// Task and resource spans can be remembered on threads other than their own:
    /// epoch-checked, and their close bumps the epoch ([`shared_span_closed`]).
    #[inline]
    pub(crate) fn is_shared(self) -> bool {
        matches!(
            self,
            SpanClass::Task { .. }
                | SpanClass::OtherTask
                | SpanClass::IgnoredTask
                | SpanClass::Resource { .. }
        )
    }
}

const CLASS_CACHE_SIZE: usize = 256;

thread_local! {
    /// The span last created on this thread if it was an async op, else 0.
    static LAST_NEW_ASYNC_OP: Cell<u64> = const { Cell::new(0) };
}

/// Notes the span being created on this thread (`async_op`: whether it is an async op);
/// returns the async op created just before it, if the span before was one. tokio creates an
/// async op's poll span right after the op, with the op entered: its parent.
#[inline]
pub(crate) fn note_new_span(span: u64, async_op: bool) -> Option<u64> {
    let previous = LAST_NEW_ASYNC_OP
        .try_with(|last| last.replace(if async_op { span } else { 0 }))
        .unwrap_or(0);
    (previous != 0).then_some(previous)
}

thread_local! {
    /// (span id, epoch of its bucket when remembered, class).
    static CLASSES: [Cell<(u64, u32, Option<SpanClass>)>; CLASS_CACHE_SIZE] =
        const { [const { Cell::new((0, 0, None)) }; CLASS_CACHE_SIZE] };
}

/// Close counts of task and resource spans, by span-id bucket. Such an entry remembered on
/// another thread than the span's own can outlive the span there; the registry reuses a span
/// id (slot and generation) after enough reuses of its slot, so the entry is trusted only while
/// no such span of its bucket closed since. Written once per close, read once per poll.
const EPOCH_BUCKETS: usize = 1024;
static CLOSES: [AtomicU32; EPOCH_BUCKETS] = [const { AtomicU32::new(0) }; EPOCH_BUCKETS];

#[inline]
fn class_slot(span: u64) -> usize {
    (span as usize) % CLASS_CACHE_SIZE
}

#[inline]
fn epoch_of(span: u64) -> u32 {
    CLOSES[(span as usize) % EPOCH_BUCKETS].load(Acquire)
}

/// Remembers what `span` is (a span id is never reused with the same generation while an
/// entry for it on its creating thread survives: every span created there is remembered).
#[inline]
pub(crate) fn remember_class(span: u64, class: SpanClass) {
    let epoch = if class.is_shared() { epoch_of(span) } else { 0 };
    let _ = CLASSES.try_with(|c| c[class_slot(span)].set((span, epoch, Some(class))));
}

/// The epoch of `span`'s bucket, read before a registry lookup whose result is then
/// remembered with [`remember_looked_up`].
#[inline]
pub(crate) fn epoch(span: u64) -> u32 {
    epoch_of(span)
}

/// Remembers a task or resource span found by a registry lookup (on any thread) that began at
/// `epoch`.
#[inline]
pub(crate) fn remember_looked_up(span: u64, epoch: u32, class: SpanClass) {
    debug_assert!(class.is_shared());
    let _ = CLASSES.try_with(|c| c[class_slot(span)].set((span, epoch, Some(class))));
}

/// What `span` is, if remembered on this thread (and, for a task, still that task).
#[inline]
pub(crate) fn class_of(span: u64) -> Option<SpanClass> {
    CLASSES
        .try_with(|c| match c[class_slot(span)].get() {
            (id, epoch, Some(class)) if id == span && class.is_shared() => {
                (epoch == epoch_of(span)).then_some(class)
            }
            (id, _, class) if id == span => class,
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
            slot.set((0, 0, None));
        }
    });
}

/// A task or resource span closes: entries for it on other threads stop being trusted. Runs
/// before the registry frees the span's slot, so before its id can be handed out again.
#[inline]
pub(crate) fn shared_span_closed(span: u64) {
    CLOSES[(span as usize) % EPOCH_BUCKETS].fetch_add(1, Release);
    forget_class(span);
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

/// Registers this thread's first poll: its histogram shard, and (with `tokio_unstable`) its
/// worker slot, where the watchdog sees its polls while they run.
pub(crate) fn set_thread(
    shard: usize,
    #[cfg(tokio_unstable)] slot: Option<&'static crate::hooks::slots::WorkerSlot>,
) {
    let _ = POLLS.try_with(|p| {
        p.thread_set.set(true);
        p.shard.set(shard);
        #[cfg(tokio_unstable)]
        p.slot.set(slot);
    });
}

/// Begins a poll of `span` on this thread, except an async poll on a thread not yet registered:
/// that returns false without beginning, so the caller registers the thread (its runtime, its
/// shard, its worker slot; [`set_thread`]) first and calls again.
#[inline(always)]
pub(crate) fn begin_poll(span: u64, site: &'static Site, kind: PollKind) -> bool {
    POLLS
        .try_with(|p| {
            if matches!(kind, PollKind::Async { .. }) && !p.thread_set.get() {
                return false;
            }
            let i = p.polls_len.get();
            if i >= MAX_NESTED_POLLS {
                return true;
            }
            let start = clock::now_ns();
            #[cfg(tokio_unstable)]
            if let (0, Some(slot), PollKind::Async { .. }) = (i, p.slot.get(), kind) {
                slot.site.store(
                    site as *const Site as *mut Site,
                    std::sync::atomic::Ordering::Relaxed,
                );
                slot.start_ns
                    .store(start, std::sync::atomic::Ordering::Relaxed);
            }
            p.polls[i].set(Some(ActivePoll {
                span,
                site,
                kind,
                start,
                span_base: p.spans_len.get(),
            }));
            p.culprits[i].set(None);
            p.polls_len.set(i + 1);
            true
        })
        .unwrap_or(true)
}

/// Ends the poll of `span` if it is the innermost one in progress on this thread.
#[inline(always)]
pub(crate) fn end_poll(span: u64) -> Option<EndedPoll> {
    POLLS
        .try_with(|p| {
            let i = p.polls_len.get().checked_sub(1)?;
            let poll = p.polls[i].get().filter(|poll| poll.span == span)?;
            let elapsed = clock::now_ns().saturating_sub(poll.start);
            #[cfg(tokio_unstable)]
            if let (0, Some(slot), PollKind::Async { .. }) = (i, p.slot.get(), poll.kind) {
                slot.start_ns.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            p.polls_len.set(i);
            p.last_fast_poll.set(match poll.kind {
                PollKind::Async { .. } if elapsed < clock::FAST_POLL_NS => span,
                _ => 0,
            });
            // Spans still open belonged to this poll; forget them.
            if p.spans_len.get() > poll.span_base {
                p.spans_len.set(poll.span_base);
            }
            Some(EndedPoll {
                poll,
                elapsed,
                depth: i,
                shard: p.shard.get(),
            })
        })
        .ok()
        .flatten()
}

/// Whether the last thing this thread counted was a fast poll of task span `span`, now
/// closing: then that was no poll. tracing's `Instrumented` enters its span once more to drop
/// the finished (or aborted) future, and tokio drops it inside the task's last poll, so the
/// enter that precedes the span's close is the drop's. Production mode's hooks see the drop
/// inside that last poll. (A drop of 1 ms or longer stays counted, timed: it held the worker.)
/// Returns this thread's shard, where that poll was counted.
pub(crate) fn drop_enter_counted(span: u64) -> Option<usize> {
    POLLS
        .try_with(|p| {
            let counted = p.last_fast_poll.replace(0) == span;
            counted.then(|| p.shard.get())
        })
        .ok()
        .flatten()
}

/// The culprit candidate of a poll that just ended (for slow polls only).
pub(crate) fn take_culprit(ended: &EndedPoll) -> Option<Culprit> {
    POLLS
        .try_with(|p| p.culprits[ended.depth].take().map(|(c, _)| c))
        .ok()
        .flatten()
}

/// A user span was entered; tracked only while a poll is in progress.
pub(crate) fn enter_span(span: u64, meta: &'static Metadata<'static>) {
    let _ = POLLS.try_with(|p| {
        let i = p.spans_len.get();
        if p.polls_len.get() == 0 || i == MAX_SPAN_DEPTH {
            return;
        }
        p.spans[i].set(Some(UserSpan {
            span,
            meta,
            entered: clock::now_ns(),
        }));
        p.spans_len.set(i + 1);
    });
}

/// The poll in progress on this thread, if it is an async task's.
fn current_async_poll() -> Option<ActivePoll> {
    POLLS
        .try_with(|p| {
            let poll = p.polls[p.polls_len.get().checked_sub(1)?].get()?;
            matches!(poll.kind, PollKind::Async { .. }).then_some(poll)
        })
        .ok()
        .flatten()
}

/// The span id of the async task poll in progress on this thread, if any.
pub(crate) fn current_poll_span() -> Option<u64> {
    current_async_poll().map(|poll| poll.span)
}

/// The site of the async task whose poll is in progress on this thread, if any.
pub(crate) fn current_task_site() -> Option<&'static Site> {
    current_async_poll().map(|poll| poll.site)
}

/// Whether any poll is in progress on this thread (cheap pre-check before span lookups).
#[inline]
pub(crate) fn polling() -> bool {
    POLLS.try_with(|p| p.polls_len.get() > 0).unwrap_or(false)
}

/// A user span was exited: credit its time to the current poll's culprit candidate. Returns
/// the time spent inside it when it became the candidate.
pub(crate) fn exit_span(span: u64) -> Option<Duration> {
    POLLS
        .try_with(|p| {
            let i = p.spans_len.get().checked_sub(1)?;
            let user = p.spans[i].get().filter(|s| s.span == span)?;
            p.spans_len.set(i);
            let pi = p.polls_len.get().checked_sub(1)?;
            let span_base = p.polls[pi].get()?.span_base;
            if i < span_base {
                return None;
            }
            let depth = i - span_base;
            let inclusive = Duration::from_nanos(clock::now_ns().saturating_sub(user.entered));
            let candidate = Culprit {
                span,
                meta: user.meta,
                inclusive,
                trace_parent: None,
            };
            // Inner spans exit first. Keep the innermost span that covered most of the time: a
            // shallower span replaces it only if it covered clearly more, a sibling if it
            // covered more.
            let replace = match p.culprits[pi].get() {
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
                p.culprits[pi].set(Some((candidate, depth)));
                inclusive
            })
        })
        .ok()
        .flatten()
}

/// Sets the OpenTelemetry span of the current poll's culprit, if `span` still is the culprit.
pub(crate) fn set_culprit_trace_parent(span: u64, parent: Option<TraceParent>) {
    let _ = POLLS.try_with(|p| {
        let Some(pi) = p.polls_len.get().checked_sub(1) else {
            return;
        };
        if let Some((mut culprit, depth)) = p.culprits[pi].get().filter(|(c, _)| c.span == span) {
            culprit.trace_parent = parent;
            p.culprits[pi].set(Some((culprit, depth)));
        }
    });
}
