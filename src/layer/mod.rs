//! Full mode's measurement source: a `tracing_subscriber::Layer` that reads tokio's own task
//! spans (`--cfg tokio_unstable` + tokio's `tracing` feature). Each enter/exit of a
//! `runtime.spawn` span is one poll; a blocking job's first enter ends its queue wait.
//!
//! A source, in the flow sources → engine → sinks: the layer calls into the engine, which
//! imports nothing from here (it learns the task polling on this thread through
//! `engine::Sources`, registered by the builder). The layer uses production mode's worker
//! slots (`hooks::slots`) so the watchdog sees full mode's polls too, and keeps the drop-in
//! wrappers' guards held on this thread, which `sync` tells it of.

mod async_ops;
mod block_on;
mod callsites;
mod fields;
mod lock_holds;
mod poll_context;
mod resources;
mod scopes;
mod span_classes;
mod task_table;

pub(crate) use poll_context::{wrapper_guard_acquired, wrapper_guard_released};
pub(crate) use resources::{wrapper_creating, WrapperCreating};

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::clock;
use crate::engine::histogram::this_threads_shard;
use crate::engine::sites::{Site, SiteKey, TaskKind};
use crate::engine::{stall, Engine};
use crate::Guard;
use async_ops::OpOwner;
use callsites::Callsite;
use fields::TaskFields;
use poll_context::{PollEnd, PollKind};
use scopes::Scope;
use span_classes::SpanClass;
use task_table::{TaskEntry, TaskTable};

/// A culprit span must have covered at least this share of the slow poll to be named.
const CULPRIT_MIN_SHARE: f64 = 0.5;

/// The stallscope layer: compose it into a `tracing_subscriber::registry()` next to your own
/// layers. Create it with [`stallscope::layer()`](crate::layer()) or a [`Builder`](crate::Builder);
/// keep a [`Guard`] (from [`StallscopeLayer::guard`]) alive until the end of `main` so the
/// summary is logged and exporters flush.
pub struct StallscopeLayer {
    engine: Arc<Engine>,
    /// Async tasks' site and id, by span id (blocking jobs and `block_on`s keep theirs in a
    /// registry extension, [`TaskSpan`]). Boxed: kept inline, its 2 KB made tracing-subscriber's
    /// dispatch of every callback a little dearer (158 instructions per tokio Mutex lock).
    tasks: Box<TaskTable>,
    /// Whose slots in the table of acquisitions are this layer's.
    ops_owner: OpOwner,
    /// Another stallscope layer is in the same subscriber: this one does nothing. Two would
    /// each keep their state on the same spans (tracing-subscriber panics on the second insert
    /// of an extension) and time every poll twice.
    refused: bool,
}

impl std::fmt::Debug for StallscopeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallscopeLayer")
            .field("engine", &self.engine)
            .finish()
    }
}

/// What the layer keeps on the `runtime.spawn` span of each blocking job and `block_on`.
struct TaskSpan {
    site: &'static Site,
    task_id: u64,
    kind: TaskKind,
    /// Blocking jobs: when `spawn_blocking` queued the job.
    queued_at: Option<Instant>,
    /// Blocking jobs: whether a pool thread picked it up (later enters are tracing's
    /// `Instrumented` entering once more on drop, not a run). `block_on`s: whether it began.
    started: AtomicBool,
    /// `block_on` spans only: the caller's context (see [`block_on`]).
    block_on: Option<Box<block_on::BlockOn>>,
}

impl TaskSpan {
    /// How the span is remembered when made: async tasks poll from the cache; blocking jobs
    /// and `block_on`s, which act on their first enter, take the slow path.
    fn class(&self) -> SpanClass {
        match self.block_on {
            None => self.class_after_first_enter(),
            Some(_) => SpanClass::OtherTask,
        }
    }

    /// How the span is remembered once entered: a blocking job's later enters are not runs
    /// (the slow path tells), a `block_on`'s are polls.
    fn class_after_first_enter(&self) -> SpanClass {
        match self.kind {
            TaskKind::Async => SpanClass::Task {
                site: self.site,
                task_id: self.task_id,
            },
            TaskKind::Blocking => SpanClass::OtherTask,
        }
    }
}

impl StallscopeLayer {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        StallscopeLayer {
            engine,
            tasks: Box::default(),
            ops_owner: OpOwner::new(),
            refused: false,
        }
    }

    /// A guard over this layer's measurements: its drop logs the summary and flushes exporters.
    /// Keep one alive until the end of `main`.
    pub fn guard(&self) -> Guard {
        Guard::new(self.engine.clone())
    }

    /// A [`Handle`](crate::Handle) on this instance, for drop-in wrappers that should report
    /// to it rather than to the process's default instance.
    pub fn handle(&self) -> crate::Handle {
        crate::Handle::new(&self.engine)
    }

    /// Production mode: installs stallscope's poll hooks (`on_before_task_poll` /
    /// `on_after_task_poll`) on a runtime builder, so every poll of that runtime's tasks is
    /// measured without tokio's `tracing` feature, at a few nanoseconds per poll. The layer
    /// itself need not be in a subscriber for this; reports still go to the app's log.
    ///
    /// Needs `--cfg tokio_unstable`; without it this does nothing and says so once at start-up.
    /// It also sets `on_thread_park` and `on_thread_unpark` (a worker brings stallscope's clock
    /// to the time as it parks and unparks, so the clock's thread ticks less often on a busy
    /// runtime). These hooks replace any poll, park and unpark hooks set on `builder` before:
    /// call this after setting your own, or chain yours in stallscope's place.
    ///
    /// ```
    /// let stallscope = stallscope::Builder::new().build().unwrap();
    /// let _guard = stallscope.guard();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// stallscope.instrument_runtime(&mut builder);
    /// let runtime = builder.enable_all().build().unwrap();
    /// runtime.block_on(async { tokio::spawn(async {}).await.unwrap() });
    /// ```
    pub fn instrument_runtime<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        crate::hooks::instrument_runtime(&self.engine, builder)
    }
}

impl<S> Layer<S> for StallscopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_layer(&mut self, subscriber: &mut S) {
        // The instance starts as its layer goes into a subscriber. Here, not in
        // `on_register_dispatch`: tracing-core may hold its dispatchers' lock there, and starting
        // spawns tasks whose spans would register callsites under it.
        Engine::start(&self.engine);
        let Some(first) = downcast_layer(subscriber) else {
            return;
        };
        self.refused = true;
        self.engine.refused.store(true, Relaxed);
        // Said by the first layer as it starts measuring: this subscriber is not installed yet.
        first
            .engine
            .add_startup_note(tracing::Level::WARN, crate::report::SECOND_LAYER.to_owned());
    }

    fn on_register_dispatch(&self, _subscriber: &tracing::Dispatch) {
        // In a subscriber: if none lets TRACE through, tokio's task spans can never come.
        if !self.refused {
            self.engine.in_subscriber.store(true, Relaxed);
        }
    }

    // Never emit events from `on_new_span` or `on_event`: a nested dispatch there corrupts
    // tracing-subscriber's per-layer filter state for the span or event in flight (a filtered
    // fmt layer then panics with "Span not found"). `on_enter`/`on_exit` are safe.
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.refused {
            return;
        }
        let meta = attrs.metadata();
        let callsite = callsites::of(meta);
        // Task spans first, with one compare: the rest apart.
        if callsite != Callsite::Spawn {
            return self.new_span_not_a_task(callsite, attrs, id, &ctx);
        }
        span_classes::note_new_span(id.into_u64(), false);
        let ignored = |id: &Id| span_classes::remember_class(id.into_u64(), SpanClass::IgnoredTask);
        if !poll_context::thread_is_measured() {
            return ignored(id);
        }
        // Measured through poll hooks instead (production mode): don't count polls twice.
        if self.engine.hooks_installed.load(Relaxed) {
            return ignored(id);
        }
        let task = TaskFields::read(attrs, |fields| {
            let kind = match fields.kind.as_str() {
                "blocking" => TaskKind::Blocking,
                _ => TaskKind::Async,
            };
            // The multi-thread runtime starts its workers as blocking jobs that run for the
            // runtime's whole life: they are not user jobs.
            if kind == TaskKind::Blocking && fields.function.contains("worker::Launch") {
                return None;
            }
            if !self.engine.task_spans_seen.load(Relaxed) {
                self.engine.task_spans_seen.store(true, Relaxed);
            }
            let site = self.engine.site(&SiteKey {
                kind,
                file: &fields.file,
                line: fields.line,
                column: fields.column,
                task_name: Some(fields.name.as_str()).filter(|n| !n.is_empty()),
            });
            if kind == TaskKind::Blocking {
                site.queued.fetch_add(1, Relaxed);
            }
            Some(TaskSpan {
                site,
                task_id: fields.id,
                kind,
                // (A precise clock read, for blocking jobs' queue wait only.)
                queued_at: (kind == TaskKind::Blocking).then(Instant::now),
                started: AtomicBool::new(false),
                block_on: block_on::created(&fields.kind),
            })
        });
        let Some(task) = task else {
            return ignored(id);
        };
        span_classes::remember_class(id.into_u64(), task.class());
        if let SpanClass::Task { site, task_id } = task.class() {
            return self
                .tasks
                .insert(id.into_u64(), TaskEntry { site, task_id });
        }
        if let Some(span) = ctx.span(id) {
            // Replaced, not inserted: a second stallscope layer that `on_layer` could not see
            // (two layers side by side in a `Vec`) finds this span's extension already there,
            // and inserting it again would panic in tracing-subscriber.
            if span.extensions_mut().replace(task).is_some()
                && !self.engine.refused.swap(true, Relaxed)
            {
                crate::engine::deferred::line(
                    || tracing::warn!(target: "stallscope", "{}", crate::report::SECOND_LAYER),
                );
            }
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if self.refused {
            return;
        }
        match span_classes::class_of(id.into_u64()) {
            // The per-poll path: a task remembered on this thread, on a thread already set up.
            Some(SpanClass::Task { site, task_id })
                if poll_context::begin_poll(id.into_u64(), site, PollKind::Async { task_id }) => {}
            // tokio's own spans, entered many times per lock or channel operation: kept while
            // entered, so their exits match at once and their events find their scope.
            Some(class) if class.enter_exit_ignored() => {
                scopes::enter(id.into_u64(), class.scope())
            }
            _ => self.enter_other(id, ctx),
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        if self.refused {
            return;
        }
        let span = id.into_u64();
        // tokio's own spans, most exits under a lock: the innermost one kept ends.
        if scopes::exit_innermost(span) {
            return;
        }
        self.exit_not_scope(id);
    }

    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // Classified once here; the interest stays `always` (what a layer without `enabled`
        // says): a layer's `never` would hide the callsite from every other layer too.
        callsites::register(metadata);
        tracing::subscriber::Interest::always()
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        // Records only: never emit events from here (see on_new_span).
        match resources::event_kind(event.metadata()) {
            resources::EventKind::Other => {}
            // (A refused layer is asked here, past tokio's waker events on every poll.)
            kind if !self.refused => self.resource_event(kind, event, &ctx),
            _ => {}
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.refused {
            return;
        }
        match span_classes::class_of(id.into_u64()) {
            Some(SpanClass::AsyncOp { op }) => {
                span_classes::forget_class(id.into_u64());
                return resources::close_async_op(&self.engine, op);
            }
            // An async task's span ends with nothing to record but the drop's enter, which
            // was counted as a poll.
            Some(SpanClass::Task { site, .. }) => {
                self.tasks.remove(id.into_u64());
                self.task_span_closed(id.into_u64(), site);
                return span_classes::shared_span_closed(id.into_u64());
            }
            Some(SpanClass::Resource { lock }) => {
                if let Some(lock) = lock {
                    resources::lock_closed(lock);
                }
                return span_classes::shared_span_closed(id.into_u64());
            }
            Some(SpanClass::IgnoredTask) => {
                return span_classes::shared_span_closed(id.into_u64());
            }
            Some(SpanClass::OtherTask) => span_classes::shared_span_closed(id.into_u64()),
            Some(_) => {
                span_classes::forget_class(id.into_u64());
                return;
            }
            None => {
                if let Some(task) = self.tasks.remove(id.into_u64()) {
                    self.task_span_closed(id.into_u64(), task.site);
                    return span_classes::shared_span_closed(id.into_u64());
                }
            }
        }
        let Some(span) = ctx.span(&id) else { return };
        let callsite = callsites::of(span.metadata());
        if callsite == Callsite::Resource {
            if let Some(lock) = resources::tracked_lock(&span) {
                resources::lock_closed(lock);
            }
            return span_classes::shared_span_closed(id.into_u64());
        }
        if callsite == Callsite::AsyncOp {
            if let Some(op) = resources::tracked_async_op(self.ops_owner, &span) {
                resources::close_async_op(&self.engine, op);
            }
            return;
        }
        if callsite != Callsite::Spawn {
            return;
        }
        span_classes::shared_span_closed(id.into_u64());
        let extensions = span.extensions();
        let Some(task) = extensions.get::<TaskSpan>() else {
            return;
        };
        match task.kind {
            TaskKind::Async => self.task_span_closed(id.into_u64(), task.site),
            // A job dropped before any thread ran it (runtime shutdown) leaves the queue too.
            TaskKind::Blocking if !task.started.load(Relaxed) => {
                task.site.queued.fetch_sub(1, Relaxed);
            }
            TaskKind::Blocking => {}
        }
    }
}

impl StallscopeLayer {
    /// A new span that is not a `runtime.spawn` span: tokio's resources and async ops, its
    /// other spans, user spans. Apart from [`Layer::on_new_span`], so a task's span reaches its
    /// own path with one compare of its callsite's class.
    #[inline]
    fn new_span_not_a_task<S>(
        &self,
        callsite: Callsite,
        attrs: &Attributes<'_>,
        id: &Id,
        ctx: &Context<'_, S>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let previous_op = span_classes::note_new_span(id.into_u64(), callsite == Callsite::AsyncOp);
        match callsite {
            Callsite::Resource => {
                let lock = ctx
                    .span(id)
                    .and_then(|span| resources::new_resource(&self.engine, attrs, span));
                span_classes::remember_class(id.into_u64(), SpanClass::Resource { lock });
            }
            Callsite::AsyncOp => {
                let class = match resources::new_async_op(self.ops_owner, attrs, id, ctx) {
                    Some(op) => SpanClass::AsyncOp { op },
                    None => SpanClass::Internal,
                };
                span_classes::remember_class(id.into_u64(), class);
            }
            Callsite::OpPoll => {
                let class = op_poll_class(self.ops_owner, attrs, previous_op, ctx);
                span_classes::remember_class(id.into_u64(), class);
            }
            Callsite::Internal => {
                span_classes::remember_class(id.into_u64(), SpanClass::Internal);
            }
            _ => {
                span_classes::remember_class(id.into_u64(), SpanClass::User(attrs.metadata()));
            }
        }
    }

    /// Any enter but a later poll of a remembered task on a set-up thread or a remembered
    /// span the layer ignores: a task's first poll on this thread, tasks first seen here,
    /// blocking jobs, `block_on`s, user spans.
    #[inline(never)]
    fn enter_other<S>(&self, id: &Id, ctx: Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.engine.say_startup_notes();
        // Remembered spans need no registry lookup: a task's poll starts from the cache.
        let meta = match span_classes::class_of(id.into_u64()) {
            Some(SpanClass::Task { site, task_id }) => {
                return self.poll_begins(id.into_u64(), site, task_id);
            }
            Some(SpanClass::User(meta)) => meta,
            class @ (Some(SpanClass::OtherTask) | None) => {
                let epoch = span_classes::epoch(id.into_u64());
                // An async task first polled here (spawned elsewhere, or long before it ran).
                // (Blocking jobs and `block_on`s, `OtherTask`, are not in the task table.)
                if class.is_none() && poll_context::thread_is_measured() {
                    if let Some(TaskEntry { site, task_id }) = self.tasks.get(id.into_u64()) {
                        let class = SpanClass::Task { site, task_id };
                        span_classes::remember_looked_up(id.into_u64(), epoch, class);
                        span_classes::task_poll_missed(clock::now_ns());
                        return self.poll_begins(id.into_u64(), site, task_id);
                    }
                }
                let Some(span) = ctx.span(id) else { return };
                let meta = span.metadata();
                let callsite = callsites::of(meta);
                match callsite {
                    Callsite::Spawn if poll_context::thread_is_measured() => {
                        return self.enter_task(id, epoch, &span)
                    }
                    // Locks and channels made elsewhere are entered on every worker. Scopes
                    // are kept on every thread: an event must never be taken for an outer one's.
                    Callsite::Resource => {
                        let lock = resources::tracked_lock(&span);
                        let class = SpanClass::Resource { lock };
                        span_classes::remember_looked_up(id.into_u64(), epoch, class);
                        return scopes::enter(id.into_u64(), Scope::Resource(lock));
                    }
                    // An acquisition polled on another thread than the one that began it
                    // (rare: its task moved between the two).
                    Callsite::OpPoll => {
                        let op = resources::tracked_op_of_poll(self.ops_owner, &span);
                        return scopes::enter(id.into_u64(), Scope::OpPoll(op));
                    }
                    _ if !poll_context::thread_is_measured() => return,
                    _ => {}
                }
                match callsite {
                    Callsite::Other => meta,
                    _ => return,
                }
            }
            // Ignored classes (see `enter_exit_ignored`).
            Some(class) => return scopes::enter(id.into_u64(), class.scope()),
        };
        if poll_context::polling() {
            poll_context::enter_span(id.into_u64(), meta);
        }
    }

    /// An event of tokio's resources that the layer reads. Apart from [`Layer::on_event`],
    /// so the events it ignores (two waker events on every poll) return without this call's
    /// setup.
    #[inline(never)]
    fn resource_event<S>(
        &self,
        kind: resources::EventKind,
        event: &tracing::Event<'_>,
        ctx: &Context<'_, S>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        resources::on_event(self.ops_owner, kind, event, ctx)
    }

    /// Any exit but the innermost kept scope's. Apart from [`Layer::on_exit`], so scope exits
    /// (most exits under a lock) end without this frame's setup.
    #[inline(never)]
    fn exit_not_scope(&self, id: &Id) {
        let span = id.into_u64();
        // The per-poll path: a task span's exit ends the innermost poll, with no class lookup.
        let count_fast = |site, shard| self.engine.count_fast_polls(site, shard, 1);
        match poll_context::end_poll(span, count_fast) {
            PollEnd::Fast(site) => {
                if let Some(lock) = poll_context::guard_taken_in_poll_still_held(span) {
                    self.engine.guard_held_across_await(lock, site);
                }
            }
            PollEnd::Timed(depth) => self.poll_ended(span, depth),
            PollEnd::NotAPoll => self.exit_other(id),
        }
    }

    /// Any exit but a poll's end or the innermost kept scope's: user spans (culprit
    /// candidates), ignored spans exited out of order or beyond the kept depth.
    #[inline(never)]
    fn exit_other(&self, id: &Id) {
        if let Some(class) = span_classes::class_of(id.into_u64()) {
            if class.enter_exit_ignored() {
                return scopes::exit_not_innermost(id.into_u64());
            }
        }
        if let Some(inclusive) = poll_context::exit_span(id.into_u64()) {
            self.culprit_exited(id, inclusive);
        }
    }

    /// First or later enter of a `runtime.spawn` span: a poll begins (or a blocking job starts).
    /// `epoch`: the task epoch of the span's bucket before the lookup that found `span`.
    fn enter_task<S>(
        &self,
        id: &Id,
        epoch: u32,
        span: &tracing_subscriber::registry::SpanRef<'_, S>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let extensions = span.extensions();
        let Some(task) = extensions.get::<TaskSpan>() else {
            // Not measured (made on an ignored thread, or in production mode).
            span_classes::remember_looked_up(id.into_u64(), epoch, SpanClass::IgnoredTask);
            return scopes::enter(id.into_u64(), Scope::Ignored);
        };
        if let Some(b) = &task.block_on {
            if !task.started.swap(true, Relaxed) {
                block_on::first_enter(&self.engine, task.site, b);
            }
        }
        // Later polls on this thread start from the cache; a `block_on`'s, once it began, are
        // those of any async task.
        span_classes::remember_looked_up(id.into_u64(), epoch, task.class_after_first_enter());
        match task.kind {
            TaskKind::Async => {
                span_classes::task_poll_missed(clock::now_ns());
                self.poll_begins(id.into_u64(), task.site, task.task_id)
            }
            TaskKind::Blocking => {
                if !task.started.swap(true, Relaxed) {
                    self.engine
                        .measuring_started(crate::engine::sink::Measuring::TaskSpans);
                    task.site.queued.fetch_sub(1, Relaxed);
                    task.site.running.fetch_add(1, Relaxed);
                    self.engine
                        .record_queue_wait(task.site, queue_wait(task.queued_at), |stall| {
                            stall.task_id = Some(task.task_id);
                            // The job's span is a child of the span that called spawn_blocking.
                            let caller = span
                                .scope()
                                .skip(1)
                                .find(|s| !stall::is_tokio_internal(s.metadata()));
                            if let Some(caller) = caller {
                                stall.span = Some(caller.metadata());
                                stall.parent = self.engine.trace_parent(Some(&caller.id()));
                            }
                        });
                    poll_context::begin_poll(id.into_u64(), task.site, PollKind::BlockingJob);
                }
            }
        }
    }

    /// An async task's span closed: the enter just before, which dropped its future, was
    /// counted as a poll and is taken back.
    fn task_span_closed(&self, span: u64, site: &'static Site) {
        if let Some(shard) = poll_context::drop_enter_counted(span) {
            self.engine.uncount_fast_poll(site, shard);
        }
    }

    /// A poll of an async task (not a `block_on`) begins: the per-poll hot path.
    #[inline]
    fn poll_begins(&self, span: u64, site: &'static Site, task_id: u64) {
        // (Pool threads running blocking jobs get no worker slot: long jobs are expected there.)
        let kind = PollKind::Async { task_id };
        if !poll_context::begin_poll(span, site, kind) {
            self.first_poll_on_thread();
            poll_context::begin_poll(span, site, kind);
        }
    }

    /// The exit of task span `span` ended a poll on this thread, at `depth` of its polls, that
    /// was not a fast async poll: record it.
    #[cold]
    #[inline(never)]
    fn poll_ended(&self, span: u64, depth: usize) {
        let Some(ended) = poll_context::ended_poll(depth) else {
            return;
        };
        // The lock whose guard, taken during this poll, is still held as it ends.
        let held = poll_context::guard_taken_in_poll_still_held(span);
        let poll = ended.poll;
        // A start read while the clock stood still is bounded by the spell's end, once the
        // poll looks slow.
        let elapsed = clock::stamps_at_least(
            poll.start,
            poll.start.saturating_add(ended.elapsed),
            self.engine.config.slow_poll_threshold,
        );
        if let (PollKind::Async { .. }, Some(lock)) = (poll.kind, held) {
            self.engine.guard_held_across_await(lock, poll.site);
        }
        match poll.kind {
            PollKind::Async { task_id } => {
                let culprit = poll_context::take_culprit(&ended)
                    .filter(|c| covered(c.inclusive, Duration::from_nanos(elapsed)));
                self.engine.record_timed_poll(
                    poll.site,
                    ended.shard,
                    ended.stack_of,
                    elapsed,
                    || task_id,
                    culprit,
                );
            }
            PollKind::BlockingJob => {
                poll.site.running.fetch_sub(1, Relaxed);
                self.engine
                    .record_blocking_run(poll.site, Duration::from_nanos(elapsed))
            }
        }
    }

    /// A user span that may name a slow poll exited: read its OpenTelemetry span now, while it
    /// is alive (an `#[instrument]`ed future's span closes before its task's poll ends), so the
    /// stall span can be its child. Only for spans long enough to cover a slow poll.
    #[cold]
    fn culprit_exited(&self, id: &Id, inclusive: Duration) {
        let may_cover_a_slow_poll = covered(inclusive, self.engine.config.slow_poll_threshold);
        if may_cover_a_slow_poll && self.engine.exports_stall_spans() {
            poll_context::set_culprit_trace_parent(
                id.into_u64(),
                self.engine.trace_parent(Some(id)),
            );
        }
    }

    /// Once per thread: watch its runtime, and (with `tokio_unstable`) give it a worker slot
    /// and start the watchdog, so a poll still running past the threshold is reported live.
    #[cold]
    fn first_poll_on_thread(&self) {
        // A thread whose polls the poll hooks measure (see `thread_measured_by_hooks`).
        if !poll_context::thread_is_measured() {
            return;
        }
        self.engine
            .measuring_started(crate::engine::sink::Measuring::TaskSpans);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            Engine::watch_runtime(&self.engine, &handle);
        }
        #[cfg(tokio_unstable)]
        {
            crate::hooks::watchdog::start(&self.engine);
            let slot = crate::hooks::slots::claim_for_this_thread(&self.engine);
            poll_context::set_thread(this_threads_shard(), slot);
        }
        #[cfg(not(tokio_unstable))]
        poll_context::set_thread(this_threads_shard());
    }
}

/// The stallscope layer already in `subscriber`, if any.
fn downcast_layer<S: Subscriber>(subscriber: &S) -> Option<&StallscopeLayer> {
    // SAFETY: `downcast_raw` answers a pointer to a value of the type asked for, borrowed from
    // `subscriber` (what `<dyn Subscriber>::downcast_ref` does for a trait object).
    unsafe {
        subscriber
            .downcast_raw(std::any::TypeId::of::<StallscopeLayer>())
            .map(|p| &*(p as *const StallscopeLayer))
    }
}

/// The site of the task this thread is polling (full mode), if any.
pub(crate) fn current_task_site() -> Option<&'static Site> {
    poll_context::current_task_site()
}

/// An async op's poll span, with its parent if that is a tracked acquisition, so its `poll_op`
/// events find the acquisition without asking for the current span (and the untracked ones,
/// such as the semaphore's inside every tokio lock, are dropped at once).
fn op_poll_class<S>(
    owner: OpOwner,
    attrs: &Attributes<'_>,
    previous_op: Option<u64>,
    ctx: &Context<'_, S>,
) -> SpanClass
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let parent = match attrs.parent() {
        Some(parent) => Some(parent.into_u64()),
        None if attrs.is_contextual() => {
            previous_op.or_else(|| ctx.current_span().id().map(Id::into_u64))
        }
        None => None,
    };
    let op = parent.and_then(|parent| match span_classes::class_of(parent) {
        Some(SpanClass::AsyncOp { op }) => Some(op),
        Some(_) => None,
        None => resources::tracked_async_op_of(owner, parent, ctx),
    });
    SpanClass::OpPoll { op }
}

/// How long a blocking job queued (from when `spawn_blocking` queued it).
fn queue_wait(queued_at: Option<Instant>) -> Duration {
    queued_at.map_or(Duration::ZERO, |at| at.elapsed())
}

fn covered(span_time: Duration, poll: Duration) -> bool {
    span_time.as_secs_f64() >= poll.as_secs_f64() * CULPRIT_MIN_SHARE
}
