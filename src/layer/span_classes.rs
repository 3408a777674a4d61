//! What each span is to the layer, cached per thread so `on_enter`/`on_exit` skip the registry
//! lookup (a sharded-slab get, a ref-count guard and the extensions lock), and the epochs that
//! tell when an entry remembered on another thread than the span's own can no longer be trusted.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Release},
};

use tracing::Metadata;

use crate::engine::sites::Site;

use super::lock_holds::TrackedLock;
use super::resources::OpRef;
use super::scopes::Scope;

/// What a span is, cached per thread so `on_enter`/`on_exit` skip the registry lookup (a
/// sharded-slab get, a ref-count guard and the extensions lock): remembered in `on_new_span`
/// (where its metadata comes free) for every span created on this thread, and for tasks also
/// after a lookup on another thread (work stealing moves tasks between workers).
#[derive(Clone, Copy)]
pub(crate) enum SpanClass {
    /// tokio's own resource/async-op spans: never a culprit.
    Internal,
    /// An acquisition of a tracked tokio lock: internal, but its close ends a wait.
    AsyncOp { op: OpRef },
    /// An async op's poll span, where tokio emits the op's `poll_op` events (`op`: its
    /// acquisition, the parent async op, if the layer tracks it).
    OpPoll { op: Option<OpRef> },
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
    Resource { lock: Option<TrackedLock> },
}

impl SpanClass {
    /// Spans whose enters and exits the layer ignores: tokio's own (never culprits, nothing to
    /// record) and tasks it does not measure.
    #[inline]
    pub(crate) fn enter_exit_ignored(self) -> bool {
        matches!(
            self,
            SpanClass::Internal
                | SpanClass::AsyncOp { .. }
                | SpanClass::OpPoll { .. }
                | SpanClass::IgnoredTask
                | SpanClass::Resource { .. }
        )
    }

    /// How a span whose enters and exits are ignored is kept while entered (see
    /// [`super::scopes`]): those whose events the layer reads as their scope, the rest as
    /// [`Scope::Ignored`].
    #[inline]
    pub(crate) fn scope(self) -> Scope {
        match self {
            SpanClass::Resource { lock } => Scope::Resource(lock),
            SpanClass::OpPoll { op } => Scope::OpPoll(op),
            _ => Scope::Ignored,
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

/// Entries of a thread's cache at first; it doubles, up to [`MAX_CLASSES`], while task polls
/// keep missing it (more tasks take turns on the thread than it holds).
const INITIAL_CLASSES: usize = 256;
const MAX_CLASSES: usize = 16_384;

/// A span's class as remembered, with the epoch of its bucket then. Separate cells, so a
/// lookup reads the span id alone before anything else.
struct Entry {
    span: Cell<u64>,
    epoch: Cell<u32>,
    class: Cell<Option<SpanClass>>,
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            span: Cell::new(0),
            epoch: Cell::new(0),
            class: Cell::new(None),
        }
    }

    #[inline]
    fn set(&self, span: u64, epoch: u32, class: Option<SpanClass>) {
        self.span.set(span);
        self.epoch.set(epoch);
        self.class.set(class);
    }
}

/// This thread's cache, a direct-mapped table by span id ([`slot_of`]), as the hot path reads it: where its
/// entries are and the mask of its size (a power of two). Null until the thread's first span
/// (threads that never see one cost nothing). No destructor, so it stays readable while the
/// thread's other thread-locals are torn down (dropping tasks there closes spans).
struct CacheView {
    entries: Cell<*const Entry>,
    mask: Cell<usize>,
    /// Task polls that missed the cache since `window_start` (coarse ns).
    misses: Cell<usize>,
    window_start: Cell<u64>,
}

/// The entries [`CacheView`] points into; dropped (at thread exit) only after clearing it.
struct OwnedEntries(RefCell<Vec<Entry>>);

impl Drop for OwnedEntries {
    fn drop(&mut self) {
        let _ = VIEW.try_with(|v| {
            v.entries.set(std::ptr::null());
            v.mask.set(0);
        });
    }
}

thread_local! {
    static VIEW: CacheView = const {
        CacheView {
            entries: Cell::new(std::ptr::null()),
            mask: Cell::new(0),
            misses: Cell::new(0),
            window_start: Cell::new(0),
        }
    };
    static OWNED: OwnedEntries = const { OwnedEntries(RefCell::new(Vec::new())) };
}

/// Runs `f` on `span`'s entry of this thread's cache, if the thread has one.
#[inline]
fn with_entry<R>(span: u64, f: impl FnOnce(&Entry) -> R) -> Option<R> {
    VIEW.try_with(|v| {
        let entries = v.entries.get();
        if entries.is_null() {
            return None;
        }
        // SAFETY: `entries` points to this thread's `OWNED` vector of `mask + 1` entries:
        // `resize`, which alone replaces that vector, sets both after replacing it (and
        // clears them before), and `OwnedEntries::drop` clears them before the vector is
        // freed. The entries are `Cell`s touched by this thread only, and every `f` here
        // only gets or sets the one entry.
        Some(f(unsafe { &*entries.add(slot_of(span) & v.mask.get()) }))
    })
    .ok()
    .flatten()
}

/// A span id with its bits mixed (a Fibonacci multiply), for tables indexed by span id: its
/// high bits depend on every bit of the id. tracing-subscriber's span ids carry the slot
/// address in their low bits and the creating thread's shard above bit 38, and every thread's
/// shard hands out addresses from 0 up, so the id's own low bits would put spans made on
/// different threads on the same entries.
#[inline(always)]
pub(super) fn mix(span: u64) -> u64 {
    span.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Where `span` goes in a cache (before the mask): indexed by the low bits alone, a worker's
/// spans took the entries of tasks spawned from another thread, so that every poll of those
/// tasks missed.
#[inline(always)]
fn slot_of(span: u64) -> usize {
    (mix(span) >> 32) as usize
}

/// Writes `span`'s entry, making the cache on the thread's first span.
#[inline]
fn set_entry(span: u64, epoch: u32, class: SpanClass) {
    if with_entry(span, |e| e.set(span, epoch, Some(class))).is_none() {
        resize(INITIAL_CLASSES);
        with_entry(span, |e| e.set(span, epoch, Some(class)));
    }
}

/// Replaces this thread's cache with an empty one of `len` entries (a power of two), if that
/// is larger than the one it has.
#[cold]
fn resize(len: usize) {
    debug_assert!(len.is_power_of_two());
    let _ = OWNED.try_with(|owned| {
        let Ok(mut entries) = owned.0.try_borrow_mut() else {
            return;
        };
        if entries.len() >= len {
            return;
        }
        let _ = VIEW.try_with(|v| {
            v.entries.set(std::ptr::null());
            *entries = (0..len).map(|_| Entry::empty()).collect();
            v.entries.set(entries.as_ptr());
            v.mask.set(len - 1);
        });
    });
}

/// A task poll on this thread missed the cache (the task's span was looked up in the
/// registry). Many misses within a second, against the cache's size, mean more tasks take
/// turns here than it holds: it doubles, and starts empty.
#[cold]
pub(crate) fn task_poll_missed(now: u64) {
    let grow = VIEW.try_with(|v| {
        if now.saturating_sub(v.window_start.get()) > 1_000_000_000 {
            v.window_start.set(now);
            v.misses.set(0);
        }
        v.misses.set(v.misses.get() + 1);
        let len = if v.entries.get().is_null() {
            0
        } else {
            v.mask.get() + 1
        };
        let grow = v.misses.get() >= len / 2 && (INITIAL_CLASSES..MAX_CLASSES).contains(&len);
        if grow {
            v.misses.set(0);
            v.window_start.set(now);
        }
        grow.then_some(len * 2)
    });
    if let Ok(Some(len)) = grow {
        resize(len);
    }
}

/// This thread's cache size (tests).
#[cfg(test)]
fn cache_len() -> usize {
    OWNED.with(|o| o.0.borrow().len())
}

/// Close counts of task and resource spans, by span-id bucket. Such an entry remembered on
/// another thread than the span's own can outlive the span there; the registry reuses a span
/// id (slot and generation) after enough reuses of its slot, so the entry is trusted only while
/// no such span of its bucket closed since. Written once per close, read once per poll.
const EPOCH_BUCKETS: usize = 1024;
static CLOSES: [AtomicU32; EPOCH_BUCKETS] = [const { AtomicU32::new(0) }; EPOCH_BUCKETS];

#[inline]
fn epoch_of(span: u64) -> u32 {
    CLOSES[(span as usize) % EPOCH_BUCKETS].load(Acquire)
}

/// Remembers what `span` is (a span id is never reused with the same generation while an
/// entry for it on its creating thread survives: every span created there is remembered).
#[inline]
pub(crate) fn remember_class(span: u64, class: SpanClass) {
    let epoch = if class.is_shared() { epoch_of(span) } else { 0 };
    set_entry(span, epoch, class);
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
    set_entry(span, epoch, class);
}

/// What `span` is, if remembered on this thread (and, for a task, still that task).
#[inline]
pub(crate) fn class_of(span: u64) -> Option<SpanClass> {
    with_entry(span, |entry| {
        if entry.span.get() != span {
            return None;
        }
        let class = entry.class.get()?;
        if class.is_shared() && entry.epoch.get() != epoch_of(span) {
            return None;
        }
        Some(class)
    })
    .flatten()
}

/// Forgets a closed span.
#[inline]
pub(crate) fn forget_class(span: u64) {
    with_entry(span, |entry| {
        if entry.span.get() == span {
            entry.set(0, 0, None);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_other_threads_shards_do_not_evict_a_threads_tasks() {
        std::thread::spawn(|| {
            // Ids as tracing-subscriber's registry makes them: the slot address in the low
            // bits, the creating thread's shard from bit 38. Tasks spawned from one thread
            // (shard 0), then the spans a worker (shard 1) makes while polling them, at the
            // same addresses.
            let shard = |n: u64| n << 38;
            let tasks: Vec<u64> = (1..=20).collect();
            for &task in &tasks {
                remember_class(task, SpanClass::IgnoredTask);
            }
            for address in 1..=40 {
                remember_class(shard(1) | address, SpanClass::Internal);
            }
            let kept = tasks.iter().filter(|&&t| class_of(t).is_some()).count();
            assert!(kept >= 15, "only {kept} of 20 tasks kept");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_cache_grows_while_task_polls_keep_missing_it_and_stops_at_its_bound() {
        std::thread::spawn(|| {
            assert_eq!(cache_len(), 0, "no span seen: no cache");
            remember_class(1, SpanClass::Internal);
            assert_eq!(cache_len(), INITIAL_CLASSES);
            assert!(matches!(class_of(1), Some(SpanClass::Internal)));
            // A few misses a second: no growth.
            for second in 1..=4u64 {
                for _ in 0..INITIAL_CLASSES / 4 {
                    task_poll_missed(second * 2_000_000_000);
                }
            }
            assert_eq!(cache_len(), INITIAL_CLASSES);
            // Half the cache's size in misses within a second: it doubles, and starts empty.
            for _ in 0..INITIAL_CLASSES / 2 {
                task_poll_missed(10_000_000_000);
            }
            assert_eq!(cache_len(), 2 * INITIAL_CLASSES);
            assert!(class_of(1).is_none(), "a grown cache starts empty");
            for _ in 0..100_000 {
                task_poll_missed(10_000_000_000);
            }
            assert_eq!(cache_len(), MAX_CLASSES);
        })
        .join()
        .unwrap();
    }
}
