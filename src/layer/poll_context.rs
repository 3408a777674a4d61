//! Per-thread state of the polls in progress: which task is being polled since when, and which
//! user spans were entered inside the poll, to name the innermost span that covered a slow poll.
//!
//! Fixed-size arrays in a thread-local: no allocation and no lock on the per-poll path.

use std::cell::Cell;
use std::time::Duration;

use crate::clock;

use tracing::Metadata;

use crate::engine::locks::LockSite;
use crate::engine::sites::Site;
use crate::engine::stall::Culprit;
use crate::engine::stall::TraceParent;
use crate::engine::THREAD_ROLE;

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
    /// The clock's stamp at the start of the poll (see [`clock::stamp`]).
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
    /// Duration in stamps (see [`clock::stamp_ns`]).
    pub(crate) elapsed: u64,
    /// Where the poll was on this thread's stack, for [`take_culprit`].
    depth: usize,
    /// This thread's histogram shard.
    pub(crate) shard: usize,
    /// The poll, when the watchdog asked its worker for a stack while it ran.
    pub(crate) stack_of: Option<crate::engine::stall::StackKey>,
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
    /// The coarse duration of the poll that ended last, if it was timed (see [`ended_poll`]).
    ended_elapsed: Cell<u64>,
    /// This thread's worker slot, where the watchdog sees the outermost poll in progress.
    #[cfg(tokio_unstable)]
    slot: Cell<Option<&'static crate::hooks::slots::WorkerSlot>>,
    /// Guards of the drop-in wrappers' locks (`crate::sync`) alive on this thread: the count,
    /// the latest guard's lock, and the poll (its span id) that took it. A guard still alive
    /// when a poll ends was held across an `.await`. Kept with the polls, so that the end of
    /// every poll reads the count through the thread-local it already holds.
    held: Cell<(u32, Option<&'static LockSite>, u64)>,
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
            ended_elapsed: Cell::new(0),
            #[cfg(tokio_unstable)]
            slot: Cell::new(None),
            held: Cell::new((0, None, 0)),
        }
    };
}

/// Threads whose tasks belong to exporters, not to the application.
const IGNORED_THREAD_PREFIXES: &[&str] = &["reqwest-internal-sync-runtime", "stallscope-"];

/// Whether polls on this thread are the application's (decided once per thread, unless
/// production mode's hooks claimed it first: see [`THREAD_ROLE`]).
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
            let start = clock::stamp();
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
            // Checked last: the fast path keeps no registers live across the cold calls.
            // (A stamp of the CPU's counter never has the idle mark's bit set in practice;
            // `start_after_idle` checks.) With the CPU's counter, a watchdog asleep for want of
            // polls is woken: this one is watched from now on.
            if clock::is_idle(start) {
                start_after_idle(p, i);
            } else if clock::watcher_idle() {
                clock::wake_watcher();
            }
            true
        })
        .unwrap_or(true)
}

/// The poll at `depth` began while the clock was idle: its start is the precise time (which
/// wakes the clock's thread).
#[cold]
#[inline(never)]
fn start_after_idle(p: &ThreadPolls, depth: usize) {
    if clock::precise() {
        // A stamp of the CPU's counter with its top bit set: a time like any other.
        return;
    }
    let Some(mut poll) = p.polls[depth].get() else {
        return;
    };
    poll.start = clock::now_ns();
    p.polls[depth].set(Some(poll));
    #[cfg(tokio_unstable)]
    if let (0, Some(slot), PollKind::Async { .. }) = (depth, p.slot.get(), poll.kind) {
        slot.start_ns
            .store(poll.start, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How an exit ended a poll, if it did. Two words, so it comes back in registers.
pub(crate) enum PollEnd {
    /// The span was not the innermost poll in progress on this thread.
    NotAPoll,
    /// A poll of an async task at this site, shorter than [`clock::fast_poll_ns`]: counted by
    /// [`end_poll`]'s `count_fast`, not timed (the per-poll path).
    Fast(&'static Site),
    /// Any other poll, at this depth of the thread's polls: timed, or a blocking job's run.
    /// [`ended_poll`] tells the rest.
    Timed(usize),
}

/// Ends the poll of `span` if it is the innermost one in progress on this thread; a fast one
/// is counted with `count_fast(site, shard)`.
#[inline(always)]
pub(crate) fn end_poll(span: u64, count_fast: impl FnOnce(&'static Site, usize)) -> PollEnd {
    POLLS
        .try_with(|p| {
            let Some(i) = p.polls_len.get().checked_sub(1) else {
                return PollEnd::NotAPoll;
            };
            let Some(poll) = p.polls[i].get().filter(|poll| poll.span == span) else {
                return PollEnd::NotAPoll;
            };
            // An idle clock's mark gives a duration with the top bit set: never fast, so it
            // is read precisely in `ended_poll`.
            let elapsed = clock::stamp().saturating_sub(poll.start);
            #[cfg(tokio_unstable)]
            if let (0, Some(slot), PollKind::Async { .. }) = (i, p.slot.get(), poll.kind) {
                slot.start_ns.store(0, std::sync::atomic::Ordering::Relaxed);
            }
            p.polls_len.set(i);
            // Spans still open belonged to this poll; forget them.
            if p.spans_len.get() > poll.span_base {
                p.spans_len.set(poll.span_base);
            }
            let fast =
                matches!(poll.kind, PollKind::Async { .. }) && elapsed < clock::fast_poll_stamps();
            p.last_fast_poll.set(if fast { span } else { 0 });
            if fast {
                count_fast(poll.site, p.shard.get());
                return PollEnd::Fast(poll.site);
            }
            p.ended_elapsed.set(elapsed);
            PollEnd::Timed(i)
        })
        .unwrap_or(PollEnd::NotAPoll)
}

/// The poll [`end_poll`] just ended as [`PollEnd::Timed`] at `depth` (its entry is left in
/// place until the next poll begins on this thread).
pub(crate) fn ended_poll(depth: usize) -> Option<EndedPoll> {
    POLLS
        .try_with(|p| {
            let poll = p.polls[depth].get()?;
            let elapsed = p.ended_elapsed.get();
            let end = if !clock::precise() && clock::is_idle(elapsed) {
                // The clock went idle during the poll: the precise end. (A poll that turns out
                // fast is timed rather than counted: the same in the histogram.)
                clock::now_ns()
            } else {
                poll.start.saturating_add(elapsed)
            };
            // Corrected for a late clock against the threshold by the layer, which knows it.
            let elapsed = end.saturating_sub(poll.start);
            // Only a task's outermost poll on a thread is in the worker's slot.
            #[cfg(tokio_unstable)]
            let stack_of = match (depth, p.slot.get(), poll.kind) {
                (0, Some(slot), PollKind::Async { .. }) => slot.stack_of(poll.start),
                _ => None,
            };
            #[cfg(not(tokio_unstable))]
            let stack_of = None;
            Some(EndedPoll {
                poll,
                elapsed,
                depth,
                shard: p.shard.get(),
                stack_of,
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

/// The lock whose guard was taken during the poll of span `poll` and is still held as that poll
/// ends, if any. (Other tasks polled on this thread while it is suspended are not blamed.)
#[inline]
pub(crate) fn guard_taken_in_poll_still_held(poll: u64) -> Option<&'static LockSite> {
    POLLS
        .try_with(|p| match p.held.get() {
            (0, _, _) => None,
            (_, site, taken_in) => site.filter(|_| taken_in == poll),
        })
        .ok()
        .flatten()
}

/// A drop-in wrapper's guard of `site` was taken on this thread.
#[inline]
pub(crate) fn wrapper_guard_acquired(site: &'static LockSite) {
    let poll = current_poll_span().unwrap_or(0);
    let _ = POLLS.try_with(|p| p.held.set((p.held.get().0 + 1, Some(site), poll)));
}

/// A drop-in wrapper's guard was released on this thread.
#[inline]
pub(crate) fn wrapper_guard_released() {
    let _ = POLLS.try_with(|p| {
        let (n, last, poll) = p.held.get();
        if n <= 1 {
            p.held.set((0, None, 0));
        } else {
            p.held.set((n - 1, last, poll));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::histogram::Bounds;
    use crate::engine::sites::{SiteKey, SiteTable, TaskKind};

    /// A poll that begins and ends while the clock's thread sleeps is timed on the precise
    /// clock: its start wakes the clock, its end reads past the idle mark.
    #[test]
    fn a_poll_on_an_idle_clock_is_timed_precisely() {
        let sites = SiteTable::new(4, 1);
        let key = SiteKey {
            kind: TaskKind::Async,
            file: "idle.rs",
            line: 1,
            column: 1,
            task_name: None,
        };
        let site = sites.intern(&key, &Bounds::new(&[0.1]), &|_| {});
        std::thread::spawn(move || {
            set_thread(
                0,
                #[cfg(tokio_unstable)]
                None,
            );
            let span = 0x51;
            clock::go_idle_now();
            assert!(begin_poll(span, site, PollKind::Async { task_id: 1 }));
            std::thread::sleep(Duration::from_millis(20));
            clock::go_idle_now();
            let PollEnd::Timed(depth) = end_poll(span, |_, _| {}) else {
                panic!("a 20 ms poll on an idle clock ended as fast");
            };
            let elapsed = clock::stamp_ns(ended_poll(depth).expect("the ended poll").elapsed);
            assert!(
                (19_000_000..1_000_000_000).contains(&elapsed),
                "a 20 ms poll on an idle clock measured {elapsed} ns"
            );
        })
        .join()
        .unwrap();
    }
}
