//! `tokio::sync` locks without code changes (full mode): tokio makes each `Mutex`, `RwLock` and
//! `Semaphore` created with `new` a `runtime.resource` span, and each `lock()`/`read()`/
//! `write()`/`acquire()` a `runtime.resource.async_op` span in its scope, alive from the
//! acquire future's first poll until it completes or is dropped: its lifetime is the wait.
//! `runtime::resource::poll_op` events say whether a poll was ready (acquired) or pending
//! (contended); `state_update` events with `locked`/`write_locked` give the hold time.
//!
//! The tokio lock inside a [`crate::sync::tokio`] wrapper makes the same spans when tokio's
//! `tracing` feature is on; the wrapper measures it already, so it is created under
//! [`wrapper_creating`] and ignored here.

use std::cell::Cell;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::clock;
use crate::engine::locks::{LockKind, LockOp};
use crate::engine::Engine;

use super::async_ops::{AsyncOpWait, OpOwner, ASYNC_OPS};
use super::callsites::{self, Callsite};
use super::lock_holds::{OpenHolds, TrackedLock};
use super::scopes::{self, Scope};

/// Kept on a tracked lock's `runtime.resource` span, for threads that find the span in the
/// registry (its class is remembered on the thread that made it).
struct ResourceLock(TrackedLock);

/// A tracked acquisition's [`AsyncOpWait`], reached without the registry: its slot in
/// [`ASYNC_OPS`], or (the table full) its address in the async-op span's extensions (a box,
/// which stays put until the span's data is freed after its close). Kept in the span-class
/// cache of the thread that made the span and in the scopes of its poll spans, which the
/// registry keeps the async op open for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct OpRef(NonNull<AsyncOpWait>);

impl OpRef {
    fn new(wait: &AsyncOpWait) -> OpRef {
        OpRef(NonNull::from(wait))
    }

    /// The acquisition's state.
    ///
    /// # Safety
    /// The async-op span `self` was taken from must still be open or closing (a slot is
    /// another span's after the close; an extension's box is freed). That holds for
    /// the scope of one of its poll spans (a child keeps its parent open), for the class
    /// remembered on the thread that made it, until that thread forgets it at the close
    /// (span ids are handed out again only by the thread that made them, which remembers the
    /// new span in the same entry), and during `on_close` (the registry frees the span's data
    /// after every layer's `on_close`).
    unsafe fn wait(&self) -> &AsyncOpWait {
        // SAFETY: the caller keeps the box alive (above).
        unsafe { self.0.as_ref() }
    }

    /// A distinct value, never read (tests of the scope stack).
    #[cfg(test)]
    pub(crate) fn for_tests(n: usize) -> OpRef {
        OpRef(NonNull::new(std::ptr::without_provenance_mut(n * 64)).expect("not null"))
    }
}

#[derive(Default)]
struct ResourceFields {
    concrete_type: String,
    file: String,
    line: u32,
    column: u32,
    is_internal: bool,
}

impl Visit for ResourceFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "concrete_type" => value.clone_into(&mut self.concrete_type),
            "loc.file" => value.clone_into(&mut self.file),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "loc.line" => self.line = value as u32,
            "loc.col" => self.column = value as u32,
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "is_internal" {
            self.is_internal = value;
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

thread_local! {
    /// Whether a stallscope wrapper is creating its tokio lock on this thread.
    static WRAPPER_CREATING: Cell<bool> = const { Cell::new(false) };
}

/// While this lives, the tokio locks created on this thread are the inner locks of
/// [`crate::sync::tokio`] wrappers, which measure them: the layer does not count them again.
/// (Span creation is synchronous, on the thread calling tokio's `new`; the wrappers pass their
/// caller's location on to it, so tokio-console still shows where the lock was created.)
pub(crate) struct WrapperCreating(bool);

/// Marks the tokio locks created on this thread until the returned value drops.
pub(crate) fn wrapper_creating() -> WrapperCreating {
    WrapperCreating(
        WRAPPER_CREATING
            .try_with(|c| c.replace(true))
            .unwrap_or(false),
    )
}

impl Drop for WrapperCreating {
    fn drop(&mut self) {
        let _ = WRAPPER_CREATING.try_with(|c| c.set(self.0));
    }
}

/// A `runtime.resource` span was created: a tracked lock if it is a tokio lock (not a
/// wrapper's), returned if so.
pub(crate) fn new_resource<S>(
    engine: &Engine,
    attrs: &Attributes<'_>,
    span: SpanRef<'_, S>,
) -> Option<TrackedLock>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if WRAPPER_CREATING.try_with(Cell::get).unwrap_or(false) {
        return None;
    }
    let mut f = ResourceFields::default();
    attrs.record(&mut f);
    let kind = match f.concrete_type.as_str() {
        "Mutex" => LockKind::TokioMutex,
        "RwLock" => LockKind::TokioRwLock,
        "Semaphore" => LockKind::TokioSemaphore,
        _ => return None,
    };
    // The semaphore inside every Mutex/RwLock is an internal resource: not a lock of its own.
    if f.is_internal || f.file.is_empty() {
        return None;
    }
    let lock = TrackedLock {
        site: engine.lock_site_at(kind, &f.file, f.line, f.column, None),
        holds: OpenHolds::take(),
    };
    span.extensions_mut().insert(ResourceLock(lock));
    Some(lock)
}

/// The lock of a `runtime.resource` span, if the layer tracks it.
pub(crate) fn tracked_lock<S>(span: &SpanRef<'_, S>) -> Option<TrackedLock>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span.extensions().get::<ResourceLock>().map(|r| r.0)
}

/// A lock's `runtime.resource` span closed: its open holds go to the next lock made.
pub(crate) fn lock_closed(lock: TrackedLock) {
    lock.holds.give_back();
}

/// The acquisition of a `runtime.resource.async_op.poll` span (its parent), if tracked.
pub(crate) fn tracked_op_of_poll<S>(owner: OpOwner, span: &SpanRef<'_, S>) -> Option<OpRef>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracked_async_op(owner, &span.parent()?)
}

/// The operation of a RwLock's async op, from its `source` (`RwLock::write_owned`, ...).
struct OpSource(LockOp);

impl Visit for OpSource {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "source" {
            self.0 = LockOp::from_tokio_source(LockKind::TokioRwLock, value);
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// A `runtime.resource.async_op` span was created in a lock's scope: an acquisition begins.
/// Returns its state if it belongs to a tracked lock.
pub(crate) fn new_async_op<S>(
    owner: OpOwner,
    attrs: &Attributes<'_>,
    id: &Id,
    ctx: &Context<'_, S>,
) -> Option<OpRef>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // tokio makes it with its resource entered: that is the innermost scope.
    let site = match scopes::innermost() {
        Some((_, Scope::Resource(lock))) if attrs.is_contextual() => lock.map(|l| l.site),
        _ => ctx
            .span(id)
            .and_then(|span| span.parent())
            .and_then(|p| tracked_lock(&p).map(|l| l.site)),
    };
    let site = site?;
    let span = ctx.span(id)?;
    let op = match site.kind {
        // Only a RwLock's operations need telling apart.
        LockKind::TokioRwLock => {
            let mut source = OpSource(LockOp::Read);
            attrs.record(&mut source);
            source.0
        }
        kind => kind.operations()[0],
    };
    let created = clock::now_ns();
    if let Some(wait) = ASYNC_OPS.claim(owner, id.into_u64(), site, op, created) {
        return Some(OpRef::new(wait));
    }
    let mut extensions = span.extensions_mut();
    extensions.insert(AsyncOpWait::unlisted(site, op, created));
    extensions
        .get_mut::<AsyncOpWait>()
        .map(|wait| OpRef::new(wait))
}

/// The acquisition of async-op span `span` if it belongs to a tracked lock.
pub(crate) fn tracked_async_op<S>(owner: OpOwner, span: &SpanRef<'_, S>) -> Option<OpRef>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let Some(wait) = ASYNC_OPS.find(owner, span.id().into_u64()) {
        return Some(OpRef::new(wait));
    }
    span_extension(span)
}

/// The acquisition of the async-op span with id `span`, if tracked: found in the table
/// without the registry.
pub(crate) fn tracked_async_op_of<S>(
    owner: OpOwner,
    span: u64,
    ctx: &Context<'_, S>,
) -> Option<OpRef>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    match ASYNC_OPS.find(owner, span) {
        Some(wait) => Some(OpRef::new(wait)),
        None => span_extension(&ctx.span(&Id::from_u64(span))?),
    }
}

/// The acquisition kept in the async-op span's extensions (the table was full).
fn span_extension<S>(span: &SpanRef<'_, S>) -> Option<OpRef>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    span.extensions().get::<AsyncOpWait>().map(OpRef::new)
}

/// A tracked async op span closes (this is its `on_close`): the acquisition ended, obtained or
/// given up.
pub(crate) fn close_async_op(engine: &Engine, op: OpRef) {
    // SAFETY: called from the span's `on_close`.
    let op = unsafe { op.wait() };
    let waited = Duration::from_nanos(clock::at_least(
        op.created.load(Relaxed),
        clock::now_ns(),
        engine.config.slow_poll_threshold,
    ));
    let acquired = op.ready.load(Relaxed);
    let contended = op.pending.load(Relaxed);
    let (site, lock_op) = (op.site(), op.op());
    ASYNC_OPS.release(op);
    let wait = (contended || !acquired).then_some(waited);
    engine.record_async_acquisition(site, lock_op, wait, acquired);
}

#[derive(Default)]
struct StateFields {
    is_ready: Option<bool>,
    locked: Option<bool>,
}

impl Visit for StateFields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        match field.name() {
            "is_ready" => self.is_ready = Some(value),
            "locked" | "write_locked" => self.locked = Some(value),
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

/// What an event's callsite is to the layer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// Not read: most events, tokio's own included (wakers, semaphore permits, async-op state).
    Other,
    /// `runtime::resource::poll_op` with `is_ready`: an acquisition's poll outcome.
    PollOp,
    /// `runtime::resource::state_update` with `locked`/`write_locked`: a hold begins or ends.
    LockState,
}

/// The kind of events from `meta`'s callsite (decided once, at its registration: the fields
/// read are named in the metadata).
#[inline]
pub(crate) fn event_kind(meta: &'static Metadata<'static>) -> EventKind {
    if !callsites::event_may_be_read(meta) {
        return EventKind::Other;
    }
    event_kind_looked_up(meta)
}

#[inline(never)]
fn event_kind_looked_up(meta: &'static Metadata<'static>) -> EventKind {
    match callsites::of(meta) {
        Callsite::PollOpEvent => EventKind::PollOp,
        Callsite::LockStateEvent => EventKind::LockState,
        _ => EventKind::Other,
    }
}

/// `runtime::resource::*` events of `kind` (not [`EventKind::Other`]): poll outcomes of
/// acquisitions, lock state changes.
pub(crate) fn on_event<S>(owner: OpOwner, kind: EventKind, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Emitted in the op's poll span (`poll_op`) or the lock's resource span (`state_update`):
    // the innermost scope, when it is the kind expected.
    match (kind, scopes::innermost()) {
        (EventKind::PollOp, Some((_, Scope::OpPoll(op)))) => {
            if let Some(op) = op {
                // SAFETY: the scope of one of its poll spans, entered now.
                poll_outcome(event, unsafe { op.wait() });
            }
        }
        (EventKind::LockState, Some((_, Scope::Resource(lock)))) => {
            if let Some(lock) = lock {
                lock_state(event, lock);
            }
        }
        // No scope kept (or an unexpected one): ask the registry.
        _ => on_event_looked_up(owner, kind, event, ctx),
    }
}

#[cold]
fn on_event_looked_up<S>(owner: OpOwner, kind: EventKind, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(current) = ctx.lookup_current() else {
        return;
    };
    match kind {
        EventKind::PollOp => {
            if let Some(op) = tracked_op_of_poll(owner, &current) {
                // SAFETY: the parent of the poll span entered now.
                poll_outcome(event, unsafe { op.wait() });
            }
        }
        EventKind::LockState => {
            if let Some(lock) = tracked_lock(&current) {
                lock_state(event, lock);
            }
        }
        EventKind::Other => {}
    }
}

/// A `poll_op` event: whether the poll of acquisition `op` was ready.
fn poll_outcome(event: &Event<'_>, op: &AsyncOpWait) {
    let mut f = StateFields::default();
    event.record(&mut f);
    match f.is_ready {
        Some(true) => op.ready.store(true, Relaxed),
        Some(false) => op.pending.store(true, Relaxed),
        None => {}
    }
}

/// A `state_update` event of a tracked lock: an exclusive hold begins or ends.
fn lock_state(event: &Event<'_>, lock: TrackedLock) {
    let mut f = StateFields::default();
    event.record(&mut f);
    let Some(locked) = f.locked else { return };
    let now = clock::now_ns();
    if locked {
        lock.holds.begin(now);
    } else if let Some(held) = lock.holds.end(now) {
        // Exclusive holds only: a Mutex's `locked`, a RwLock's `write_locked`.
        let op = match lock.site.kind {
            LockKind::TokioRwLock => LockOp::Write,
            _ => LockOp::Lock,
        };
        lock.site.record_hold(op, held);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tracing_subscriber::prelude::*;

    use super::*;

    /// Waiting acquisitions hold slots of the table; each gives its slot back when it ends,
    /// obtained or given up.
    #[test]
    fn every_acquisition_gives_its_slot_back() {
        let layer = crate::Builder::new()
            .report_slow_polls(false)
            .summary_on_drop(false)
            .build()
            .unwrap();
        let owner = layer.ops_owner;
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mutex = Arc::new(tokio::sync::Mutex::new(0u32));
            let held = mutex.clone().lock_owned().await;
            let waiters: Vec<_> = (0..10)
                .map(|_| {
                    let mutex = mutex.clone();
                    tokio::spawn(async move { *mutex.lock().await += 1 })
                })
                .collect();
            let given_up = {
                let mutex = mutex.clone();
                tokio::spawn(async move {
                    let wait =
                        tokio::time::timeout(std::time::Duration::from_millis(5), mutex.lock());
                    assert!(wait.await.is_err());
                })
            };
            tokio::task::yield_now().await;
            assert_eq!(ASYNC_OPS.held_by(owner), 11, "every waiter holds a slot");
            given_up.await.unwrap();
            drop(held);
            for waiter in waiters {
                waiter.await.unwrap();
            }
            assert_eq!(*mutex.lock().await, 10);
        });
        drop(runtime);
        assert_eq!(ASYNC_OPS.held_by(owner), 0);
    }
}
