//! The recording engine both measurement sources feed: per-site histograms and counters,
//! slow-poll detection, the watched runtimes, and snapshots for the report and exporters.
//!
//! Data flows one way through it. Sources (full mode's tracing layer in `layer/`, production
//! mode's poll hooks in `hooks/`, the drop-in wrappers in `sync/` and `task.rs`) call
//! [`Engine::count_fast_polls`], [`Engine::record_timed_poll`] and friends. The engine hands
//! what it finds to its sinks (the log report in `report/`, OTLP in `export/`) through the
//! [`sink::Sink`] interface they implement, on the reporter thread of [`deferred`]; sinks pull
//! snapshots when they export. What the engine needs to know from a source (which task polls on
//! this thread, fast polls counted but not yet published) it asks through [`Sources`], a set
//! of functions the sources register once: nothing here imports a source or a sink, and
//! `tests/architecture.rs` keeps it so. Only `config`, `snapshot` and the clock are imported.

pub(crate) mod deferred;
pub(crate) mod histogram;
pub(crate) mod locks;
pub(crate) mod runtimes;
pub(crate) mod sink;
pub(crate) mod sites;
pub(crate) mod stall;
pub(crate) mod starvation;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;
use crate::snapshot::{BlockingSiteStats, Snapshot, SpawnLocation, TaskSiteStats};
use histogram::Bounds;
use locks::{LockKind, LockOp, LockSite, LockTable};
use runtimes::Runtimes;
use sink::{Measuring, Sink};
use sites::{BlockedIn, Site, SiteKey, SiteTable, TaskKind};
use stall::{Culprit, StackKey, Stall, StallKind, TraceParent};
use starvation::Starvation;

/// How long the guard's drop waits for reports still on their way to the log.
/// The first stack of a process can take a second or more to resolve (a large binary's debug
/// info, read once), and the log's writer may be slow.
pub(crate) const SHUTDOWN_REPORTS_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// Who measures this thread's polls, kept here so that the two sources agree without
    /// importing each other: 0 = not yet known, 1 = full mode's layer, 2 = not the layer
    /// (production mode's poll hooks measure them, or the thread runs a library's runtime that
    /// exports for us or for the console: its tasks are not the application's).
    pub(crate) static THREAD_ROLE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Production mode's poll hooks measure this thread's polls (a runtime built through
/// `instrument_runtime`): a layer in the subscriber leaves them alone, or a second instance's
/// hooks and the layer would time the same polls on one worker slot, and the hooks would lose
/// every one.
#[cfg(tokio_unstable)]
pub(crate) fn thread_measured_by_hooks() {
    let _ = THREAD_ROLE.try_with(|role| role.set(2));
}

/// What the engine asks the sources, registered once by the wiring (`crate::builder`): the
/// engine calls these instead of importing the sources. Until they are registered, no task is
/// known to poll and no fast poll is held back.
#[derive(Debug)]
pub(crate) struct Sources {
    /// The task whose poll full mode's layer sees in progress on this thread.
    pub(crate) span_task: fn() -> Option<&'static Site>,
    /// The task whose poll production mode's hooks see in progress on this thread.
    pub(crate) hooked_task: fn() -> Option<&'static Site>,
    /// Calls `f` with each site's fast polls that worker threads counted but have not yet
    /// published into its histogram.
    pub(crate) pending_fast_polls: fn(f: &mut dyn FnMut(&'static Site, u64)),
    /// Where the workers stand in publishing those counts: taken before reading them and
    /// compared after, so a read that raced a publication is retried.
    pub(crate) publications: fn() -> Vec<(usize, u64)>,
    /// True when no worker published since `before` (a stamp of `publications`).
    pub(crate) publications_unchanged_since: fn(before: &[(usize, u64)]) -> bool,
}

static SOURCES: OnceLock<Sources> = OnceLock::new();

impl Sources {
    /// Registers the sources' functions (the first registration stays).
    pub(crate) fn register(sources: Sources) {
        let _ = SOURCES.set(sources);
    }

    fn get() -> Option<&'static Sources> {
        SOURCES.get()
    }
}

/// The task polling on this thread, as full mode's layer or else production mode's hooks see it.
fn current_task_site() -> Option<&'static Site> {
    let sources = Sources::get()?;
    (sources.span_task)().or_else(|| (sources.hooked_task)())
}

/// The task polling on this thread as production mode's hooks see it.
#[cfg(tokio_unstable)]
fn hooked_task_site() -> Option<&'static Site> {
    Sources::get().and_then(|sources| (sources.hooked_task)())
}

/// A stalled worker's stack, resolved: what the report and exporters say of it.
#[derive(Clone, Debug, Default)]
pub(crate) struct StallStack {
    /// The innermost frame of the application's own code, `function (file:line)`.
    pub(crate) culprit: Option<String>,
    /// The frame just inside it: the call that blocks, e.g. `std::thread::sleep`.
    pub(crate) callee: Option<String>,
    /// The innermost frames down to a few callers of the culprit, `" <- "`-separated.
    pub(crate) summary: String,
    /// Every frame, one per line (exported whole with the stall's span).
    #[cfg_attr(not(all(tokio_unstable, feature = "stacks")), allow(dead_code))]
    pub(crate) full: String,
}

/// Production mode's view of the process's runtimes: which run some instance's poll hooks.
#[cfg(tokio_unstable)]
#[derive(Debug)]
struct HookedRuntimes {
    hooked: std::collections::VecDeque<tokio::runtime::Id>,
    /// Runtimes found polling tasks without the hooks, already reported.
    reported_unhooked: std::collections::VecDeque<tokio::runtime::Id>,
}

/// Runtimes remembered in each list of [`HookedRuntimes`]: a process that builds a runtime per
/// request must not grow them for days. The oldest are forgotten first; a forgotten runtime
/// still running is at worst reported once more.
#[cfg(tokio_unstable)]
const RUNTIMES_REMEMBERED: usize = 1024;

/// Remembers `runtime` in `list`, forgetting the oldest beyond [`RUNTIMES_REMEMBERED`].
#[cfg(tokio_unstable)]
fn remember(
    list: &mut std::collections::VecDeque<tokio::runtime::Id>,
    runtime: tokio::runtime::Id,
) {
    if list.len() >= RUNTIMES_REMEMBERED {
        list.pop_front();
    }
    list.push_back(runtime);
}

/// Process-wide: a runtime another instance hooks is measured (by that one), and one without
/// hooks is reported once however many instances notice.
#[cfg(tokio_unstable)]
static HOOKED_RUNTIMES: std::sync::Mutex<HookedRuntimes> = std::sync::Mutex::new(HookedRuntimes {
    hooked: std::collections::VecDeque::new(),
    reported_unhooked: std::collections::VecDeque::new(),
});

/// Shared state of one stallscope instance; the layer and the guard hold it.
pub(crate) struct Engine {
    /// This engine, for handing it to the reporter thread with a report.
    me: std::sync::Weak<Engine>,
    pub(crate) config: Config,
    pub(crate) bounds: Bounds,
    /// Bucket that untimed fast polls are counted in.
    fast_poll_bucket: usize,
    /// The process's clock tick, as fixed when this engine was made.
    pub(crate) clock_tick: std::time::Duration,
    /// The process's clock, fixed by the first instance.
    pub(crate) clock_source: crate::clock::Source,
    pub(crate) sites: SiteTable,
    pub(crate) locks: LockTable,
    pub(crate) runtimes: Runtimes,
    pub(crate) starvation: Starvation,
    /// Stacks of stalled workers captured and resolved.
    stall_stacks: AtomicU64,
    /// Whether a `runtime.spawn` span was seen: none after tasks ran means tokio's `tracing`
    /// feature is off. Set once (a read of a line no one writes, not an add per spawn).
    pub(crate) task_spans_seen: AtomicBool,
    /// A second layer in a subscriber that has one: it measures nothing, and its guard
    /// logs no summary of nothing.
    pub(crate) refused: AtomicBool,
    /// This instance's layer went into a subscriber.
    pub(crate) in_subscriber: AtomicBool,
    /// "No tokio task spans seen" was said.
    pub(crate) no_task_spans_said: AtomicBool,
    /// Guards alive: the last one to drop ends the instance (an earlier drop would stop the
    /// exporters while the others still expect them).
    guards: AtomicUsize,
    shut_down: AtomicBool,
    /// Said once, from a place where emitting an event is safe (never from inside
    /// `on_new_span`/`on_event`); the flag is set before logging, which may re-enter us.
    startup_notes: std::sync::Mutex<Vec<(tracing::Level, String)>>,
    startup_said: AtomicBool,
    /// The start-up line (the mode, once measuring starts) was said.
    measuring_said: AtomicBool,
    /// The guard dropped before anything was measured: measuring after that means it was
    /// dropped early (a guard local to a set-up function), which is said once.
    dropped_before_measuring: AtomicBool,
    early_drop_said: AtomicBool,
    /// Production mode's poll hooks are installed on some runtime.
    pub(crate) hooks_installed: AtomicBool,
    /// Where findings go (see [`sink`]), in order: set once when the instance is wired.
    sinks: OnceLock<Box<[Arc<dyn Sink>]>>,
    /// What starts with the instance (threads, exporters, the default instance), run by
    /// [`Engine::start`] at the first use, not when it is built.
    starter: std::sync::Mutex<Option<Starter>>,
    started: std::sync::Once,
}

/// What [`Engine::start`] runs, once.
pub(crate) type Starter = Box<dyn FnOnce(&Arc<Engine>) + Send>;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new instance: its clock tick is the process's, fixed by the first instance (see
    /// [`Engine::clock_tick`]). It tells no one anything until [`Engine::set_sinks`].
    pub(crate) fn new(config: Config) -> Arc<Engine> {
        // Before any bucket for fast polls is chosen: they are the polls under two ticks.
        let (tick, clock_source) = crate::clock::fix_tick(config.clock_tick, config.coarse_clock);
        crate::clock::watch_for(config.slow_poll_threshold);
        let bounds = Bounds::new(&config.histogram_bounds);
        let locks = LockTable::new(config.max_sites, &bounds, config.slow_poll_threshold);
        Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            fast_poll_bucket: bounds.bucket(crate::clock::fast_poll_ns()),
            clock_tick: tick,
            clock_source,
            startup_notes: std::sync::Mutex::new(Vec::new()),
            startup_said: AtomicBool::new(false),
            measuring_said: AtomicBool::new(false),
            dropped_before_measuring: AtomicBool::new(false),
            early_drop_said: AtomicBool::new(false),
            bounds,
            sites: SiteTable::new(config.max_sites, config.max_task_names_per_location),
            locks,
            runtimes: Runtimes::default(),
            starvation: Starvation::default(),
            task_spans_seen: AtomicBool::new(false),
            stall_stacks: AtomicU64::new(0),
            guards: AtomicUsize::new(0),
            refused: AtomicBool::new(false),
            in_subscriber: AtomicBool::new(false),
            no_task_spans_said: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            hooks_installed: AtomicBool::new(false),
            sinks: OnceLock::new(),
            starter: std::sync::Mutex::new(None),
            started: std::sync::Once::new(),
            config,
        })
    }

    /// Sets what [`Engine::start`] runs (the first call stays).
    pub(crate) fn set_starter(&self, starter: Starter) {
        let mut slot = self.starter.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() && !self.started.is_completed() {
            *slot = Some(starter);
        }
    }

    /// Starts what the instance runs (its exporters, the runtime sampler, the default instance
    /// for the drop-in wrappers) the first time it is called: when the layer is registered with
    /// a subscriber, a guard is taken or a runtime instrumented, whichever comes first. Later
    /// calls return at once.
    pub(crate) fn start(engine: &Arc<Engine>) {
        engine.started.call_once(|| {
            let starter = engine
                .starter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(starter) = starter {
                starter(engine);
            }
        });
    }

    /// Hands the instance its sinks (the first call stays): from now on what it finds goes to
    /// them, in this order. Sites and locks made before are bound to no sink.
    pub(crate) fn set_sinks(&self, sinks: Vec<Arc<dyn Sink>>) {
        let _ = self.sinks.set(sinks.into_boxed_slice());
    }

    /// The instance's sinks, in order (none before [`Engine::set_sinks`]).
    #[inline]
    pub(crate) fn sinks(&self) -> &[Arc<dyn Sink>] {
        self.sinks.get().map_or(&[], |sinks| sinks)
    }

    /// Runs `tell` with this instance on the reporter thread (see [`deferred`]): for findings
    /// made on a worker or inside the subscriber, where writing a log line must not happen.
    fn tell_later(&self, tell: impl FnOnce(&Engine) + Send + 'static) {
        if let Some(engine) = self.me.upgrade() {
            deferred::line(move || tell(&engine));
        }
    }

    /// Queues a note for [`Engine::say_startup_notes`].
    pub(crate) fn add_startup_note(&self, level: tracing::Level, note: String) {
        self.startup_notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((level, note));
    }

    /// Logs the start-up notes the first time it is called.
    #[inline]
    pub(crate) fn say_startup_notes(&self) {
        if self.startup_said.load(Relaxed) || self.startup_said.swap(true, Relaxed) {
            return;
        }
        // Taken out of the lock before logging: logging may dispatch back into us. Written by
        // the reporter: this may run on a worker's first poll.
        let notes =
            std::mem::take(&mut *self.startup_notes.lock().unwrap_or_else(|e| e.into_inner()));
        self.tell_later(move |engine| {
            for sink in engine.sinks() {
                for (level, note) in &notes {
                    sink.startup_note(*level, note);
                }
            }
        });
    }

    /// Says once how this instance measures (the start-up line), then the start-up notes: called
    /// where measuring starts, a source's first poll on a thread.
    #[cold]
    pub(crate) fn measuring_started(&self, how: Measuring) {
        if !self.measuring_said.swap(true, Relaxed) {
            // Written by the reporter thread: this runs on a worker's first poll.
            self.tell_later(move |engine| {
                for sink in engine.sinks() {
                    sink.measuring(engine, &how);
                }
            });
        }
        self.say_startup_notes();
    }

    /// Something is being measured: if the guard was dropped before anything was, say once that
    /// it was dropped early. Called from paths every measured program takes soon (a source's
    /// first poll on each thread, timed polls, new locks, blocking jobs), never per poll.
    #[inline]
    fn note_measuring(&self) {
        if self.dropped_before_measuring.load(Relaxed) && !self.early_drop_said.swap(true, Relaxed)
        {
            self.tell_later(|engine| {
                for sink in engine.sinks() {
                    sink.guard_dropped_early();
                }
            });
        }
    }

    /// Samples `handle`'s runtime from now on (once per runtime).
    pub(crate) fn watch_runtime(engine: &Arc<Engine>, handle: &tokio::runtime::Handle) {
        engine.note_measuring();
        if engine.is_shut_down() {
            return;
        }
        engine.runtimes.watch(
            handle,
            Arc::downgrade(engine),
            engine.config.sample_interval,
        );
    }

    /// Production mode: the poll hooks ran on a worker of `runtime`, so its tasks are measured.
    #[cfg(tokio_unstable)]
    pub(crate) fn runtime_hooked(runtime: tokio::runtime::Id) {
        let mut runtimes = HOOKED_RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
        if !runtimes.hooked.contains(&runtime) {
            remember(&mut runtimes.hooked, runtime);
        }
    }

    /// Production mode, called where stallscope runs on a runtime's thread outside the poll
    /// hooks (a drop-in, a lock wait): a runtime whose workers polled tasks without ever
    /// running the hooks was built without `instrument_runtime`, and its tasks go unmeasured;
    /// said once per runtime, naming what `seen_from` describes.
    #[cfg(tokio_unstable)]
    pub(crate) fn check_runtime_measured(&self, seen_from: impl FnOnce() -> String) {
        if !self.hooks_installed.load(Relaxed) || hooked_task_site().is_some() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let metrics = handle.metrics();
            let polled = (0..metrics.num_workers()).any(|w| metrics.worker_poll_count(w) > 0);
            self.check_measured(handle.id(), polled, seen_from);
        }
    }

    /// [`Engine::check_runtime_measured`] for `runtime`, whose workers have `polled` tasks or
    /// not: until they have there is no telling (a runtime with hooks registers at its first
    /// poll).
    #[cfg(tokio_unstable)]
    #[cold]
    pub(crate) fn check_measured(
        &self,
        runtime: tokio::runtime::Id,
        polled: bool,
        seen_from: impl FnOnce() -> String,
    ) {
        {
            let mut runtimes = HOOKED_RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
            if !polled
                || runtimes.hooked.contains(&runtime)
                || runtimes.reported_unhooked.contains(&runtime)
            {
                return;
            }
            remember(&mut runtimes.reported_unhooked, runtime);
        }
        // Written by the reporter thread: this runs on the runtime's own threads.
        let (runtime, seen_from) = (runtime.to_string(), seen_from());
        self.tell_later(move |engine| {
            for sink in engine.sinks() {
                sink.runtime_not_measured(&runtime, &seen_from);
            }
        });
    }

    /// The site for a newly spawned task or job; counts the spawn.
    pub(crate) fn site(&self, key: &SiteKey<'_>) -> &'static Site {
        let site = self.site_seen(key);
        site.spawned.fetch_add(1, Relaxed);
        site
    }

    /// The site of a task seen polling (production mode's hooks see polls, not spawns).
    pub(crate) fn site_seen(&self, key: &SiteKey<'_>) -> &'static Site {
        self.sites.intern(key, &self.bounds, &|site| {
            site.recorders = self
                .sinks()
                .iter()
                .filter_map(|sink| sink.bind_site(site))
                .collect();
        })
    }

    /// `n` polls shorter than [`fast_poll_ns`](crate::clock::fast_poll_ns) by the coarse clock:
    /// counted in the bucket holding that limit, not timed. The per-poll hot path of both modes.
    #[inline]
    pub(crate) fn count_fast_polls(&self, site: &Site, shard: usize, n: u64) {
        site.busy.count_in_bucket(shard, self.fast_poll_bucket, n);
    }

    /// Takes back one fast poll this thread counted in `shard` (full mode: an enter of a task's
    /// span that was no poll).
    pub(crate) fn uncount_fast_poll(&self, site: &Site, shard: usize) {
        site.busy.uncount_in_bucket(shard, self.fast_poll_bucket);
    }

    /// One poll of at least `fast_poll_ns`, timed to the coarse clock's tick; reported when slow.
    /// `stack_of` names the poll when the watchdog asked its worker for a stack while it ran.
    #[cold]
    pub(crate) fn record_timed_poll(
        &self,
        site: &'static Site,
        shard: usize,
        stack_of: Option<StackKey>,
        elapsed_ns: u64,
        task_id: impl FnOnce() -> u64,
        culprit: Option<Culprit>,
    ) {
        self.note_measuring();
        site.busy.record_in_shard(shard, &self.bounds, elapsed_ns);
        let duration = Duration::from_nanos(elapsed_ns);
        for recorder in site.recorders.iter() {
            recorder.record_poll(duration);
        }
        if duration >= self.config.slow_poll_threshold {
            self.note_slow(site, duration);
            if let Some(mut stall) = self.stall(StallKind::SlowPoll, site, duration) {
                stall.task_id = Some(task_id());
                stall.span = culprit.map(|c| c.meta);
                // The report waits for this worker's own stack, if one was asked for.
                stall.stack_of = stack_of;
                stall.parent = culprit
                    .and_then(|c| c.trace_parent)
                    .or_else(|| self.trace_parent(None));
                self.emit_stall(stall);
            }
        }
    }

    /// A stall of `site` that just ended on this thread after `duration`, to fill in and hand
    /// to [`Engine::emit_stall`]; `None` when no sink wants stalls (the log report and stall
    /// spans both off).
    pub(crate) fn stall(
        &self,
        kind: StallKind,
        site: &'static Site,
        duration: Duration,
    ) -> Option<Stall> {
        (self.config.report_slow_polls || self.exports_stall_spans())
            .then(|| Stall::new(kind, site, duration, self.config.slow_poll_threshold))
    }

    /// Whether a sink exports stall spans (OTLP on, `STALLSCOPE_STALL_SPANS` on).
    #[inline]
    pub(crate) fn exports_stall_spans(&self) -> bool {
        self.sinks().iter().any(|sink| sink.exports_stall_spans())
    }

    /// The user's OpenTelemetry span at `span` or above (the current span when `None`), when
    /// stall spans are exported and tracing-opentelemetry's layer is in the subscriber. Only
    /// for stalls: it looks spans up in the registry.
    pub(crate) fn trace_parent(&self, span: Option<&tracing::span::Id>) -> Option<TraceParent> {
        if self.exports_stall_spans() {
            self.sinks().iter().find_map(|sink| sink.trace_parent(span))
        } else {
            None
        }
    }

    /// Hands a stall at or over the threshold to every sink, through the reporter thread (see
    /// [`deferred`]): nothing here waits on the log's writer or an exporter. Call it on
    /// the thread that stalled, right when the stall ends.
    pub(crate) fn emit_stall(&self, stall: Stall) {
        if let Some(engine) = self.me.upgrade() {
            deferred::send(deferred::Job::Stall {
                engine,
                stall: Box::new(stall),
            });
        }
    }

    /// [`Engine::emit_stall`], on the reporter thread: to every sink (the log report
    /// rate-limits it, OTLP exports it as a span). A slow queue wait is reported per
    /// starvation episode, not per job.
    pub(crate) fn emit_stall_now(&self, stall: Stall) {
        if self.config.report_slow_polls && stall.kind == StallKind::BlockingQueueWait {
            self.starvation
                .slow_wait(stall.duration, &self.sites, &self.runtimes, self.sinks());
        }
        for sink in self.sinks() {
            sink.stall(self, &stall);
        }
    }

    /// The watchdog saw a poll running past the threshold.
    #[cfg(tokio_unstable)]
    pub(crate) fn report_stall_in_progress(
        &self,
        site: &'static Site,
        thread: String,
        elapsed: Duration,
    ) {
        if self.config.report_slow_polls {
            self.tell_later(move |engine| {
                for sink in engine.sinks() {
                    sink.stall_in_progress(engine, site, &thread, elapsed);
                }
            });
        }
    }

    /// A stack captured while a poll of `site` was stalled, `elapsed` into it: reported, and
    /// kept for the summary (on the reporter thread).
    #[cfg_attr(not(all(tokio_unstable, feature = "stacks")), allow(dead_code))]
    pub(crate) fn report_stall_stack(
        &self,
        site: &Site,
        thread: &str,
        elapsed: Duration,
        sample: u32,
        stack: &StallStack,
    ) {
        self.stall_stacks.fetch_add(1, Relaxed);
        if let Some(frame) = &stack.culprit {
            *site.blocked_in.lock().unwrap_or_else(|e| e.into_inner()) = Some(BlockedIn {
                frame: frame.clone(),
            });
        }
        if self.config.report_slow_polls {
            for sink in self.sinks() {
                sink.stall_stack(site, thread, elapsed, sample, stack);
            }
        }
    }

    /// The site of a wrapped lock created at `location`.
    pub(crate) fn lock_site(
        &self,
        kind: LockKind,
        location: &'static std::panic::Location<'static>,
        name: Option<&'static str>,
    ) -> &'static LockSite {
        self.lock_site_at(
            kind,
            location.file(),
            location.line(),
            location.column(),
            name,
        )
    }

    /// The site of a lock created at `file:line:column` (a tokio lock's resource span); starts
    /// the clock it is timed with (a lock can be used before any runtime polls a task).
    pub(crate) fn lock_site_at(
        &self,
        kind: LockKind,
        file: &str,
        line: u32,
        column: u32,
        name: Option<&'static str>,
    ) -> &'static LockSite {
        self.note_measuring();
        crate::clock::start_upkeep();
        self.locks
            .intern(kind, file, line, column, name, &|lock: &mut LockSite| {
                lock.owner = self.me.clone();
                lock.recorders = self
                    .sinks()
                    .iter()
                    .filter_map(|sink| sink.bind_lock(lock))
                    .collect();
            })
    }

    /// A contended acquisition obtained its lock after waiting `wait` (see
    /// [`LockSite::record_wait`]).
    pub(crate) fn record_lock_wait(&self, site: &'static LockSite, op: LockOp, wait: Duration) {
        if site.record_wait(op, wait) {
            self.blocking_lock_wait(site, op, wait);
        }
    }

    /// A wait that held up a thread past the threshold: blocking inside async if the thread was
    /// polling a task, reported.
    #[cold]
    pub(crate) fn blocking_lock_wait(&self, site: &'static LockSite, op: LockOp, wait: Duration) {
        let task = current_task_site();
        #[cfg(tokio_unstable)]
        if task.is_none() {
            self.check_runtime_measured(|| {
                format!("a {wait:.3?} wait for the {}", site.describe())
            });
        }
        if let Some(task) = task {
            site.blocking_waits.fetch_add(1, Relaxed);
            if let Some(mut stall) = self.stall(StallKind::LockWait, task, wait) {
                stall.lock = Some((site, op));
                stall.span = stall::current_user_span();
                stall.parent = self.trace_parent(None);
                self.emit_stall(stall);
            }
        }
    }

    /// An async acquisition (a tokio lock's async op) ended: obtained after `wait` (`None`:
    /// at once, uncontended), or given up after `wait` (the future was dropped).
    pub(crate) fn record_async_acquisition(
        &self,
        site: &'static LockSite,
        op: LockOp,
        wait: Option<Duration>,
        acquired: bool,
    ) {
        if acquired {
            match wait {
                Some(wait) => self.record_lock_wait(site, op, wait),
                None => site.uncontended.add(1),
            }
        } else {
            site.record_cancelled_wait(op, wait.unwrap_or_default());
        }
    }

    /// A poll of a task at `task` ended with a guard of `lock` still held: reported once per lock.
    #[cold]
    pub(crate) fn guard_held_across_await(&self, lock: &'static LockSite, task: &'static Site) {
        if lock.held_across_await.fetch_add(1, Relaxed) == 0 && self.config.report_slow_polls {
            self.tell_later(move |engine| {
                for sink in engine.sinks() {
                    sink.guard_held_across_await(lock, task);
                }
            });
        }
    }

    /// A blocking job was picked up by a pool thread after waiting `wait` in the queue; on a
    /// slow wait, `describe` adds what the source knows to the [`Stall`] (job id, the span
    /// and trace that called `spawn_blocking`).
    pub(crate) fn record_queue_wait(
        &self,
        site: &'static Site,
        wait: Duration,
        describe: impl FnOnce(&mut Stall),
    ) {
        self.note_measuring();
        site.queue_wait.record(&self.bounds, wait);
        for recorder in site.recorders.iter() {
            recorder.record_queue_wait(wait);
        }
        if wait >= self.config.slow_poll_threshold {
            self.note_slow(site, wait);
            if let Some(mut stall) = self.stall(StallKind::BlockingQueueWait, site, wait) {
                describe(&mut stall);
                self.emit_stall(stall);
            }
        }
    }

    /// A blocking job ran for `run` (expected to be long: not a hazard in itself).
    pub(crate) fn record_blocking_run(&self, site: &Site, run: Duration) {
        site.busy.record(&self.bounds, run);
        for recorder in site.recorders.iter() {
            recorder.record_blocking_run(run);
        }
    }

    fn note_slow(&self, site: &Site, duration: Duration) {
        site.slow_count.fetch_add(1, Relaxed);
        site.slow_ns.fetch_add(
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// A site's poll histogram, including production mode's fast polls that worker threads
    /// have counted but not yet published.
    /// Every async site's poll histogram, including production mode's fast polls that worker
    /// threads have counted but not yet published. A worker publishing meanwhile moves counts
    /// from its table to the histogram: the read is retried so each poll is counted once.
    pub(crate) fn async_site_polls(
        &self,
    ) -> HashMap<*const Site, crate::snapshot::HistogramSnapshot> {
        let sites = self.sites.all();
        let read = || {
            #[cfg_attr(not(tokio_unstable), allow(unused_mut))]
            let mut polls: HashMap<*const Site, _> = sites
                .iter()
                .filter(|s| s.kind == TaskKind::Async)
                .map(|&s| (s as *const Site, s.busy.snapshot()))
                .collect();
            if let Some(sources) = Sources::get() {
                (sources.pending_fast_polls)(&mut |site, n| {
                    if let Some(histogram) = polls.get_mut(&(site as *const Site)) {
                        if let Some(bucket) = histogram.counts.get_mut(self.fast_poll_bucket) {
                            *bucket += n;
                            histogram.count += n;
                        }
                    }
                });
            }
            polls
        };
        if let Some(sources) = Sources::get() {
            for _ in 0..100 {
                let before = (sources.publications)();
                let polls = read();
                if (sources.publications_unchanged_since)(&before) {
                    return polls;
                }
                std::thread::yield_now();
            }
        }
        read()
    }

    /// Everything measured so far.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            histogram_bounds: self.bounds.seconds().to_vec(),
            slow_threshold: self.config.slow_poll_threshold,
            clock_tick: self.clock_tick,
            stall_stacks: self.stall_stacks.load(Relaxed),
            ..Snapshot::default()
        };
        let mut async_polls = self.async_site_polls();
        for site in self.sites.all() {
            let location = SpawnLocation {
                file: site.location.file.to_owned(),
                line: site.location.line,
                column: site.location.column,
            };
            let slow_count = site.slow_count.load(Relaxed);
            let slow_time = Duration::from_nanos(site.slow_ns.load(Relaxed));
            let spawned = site.spawned.load(Relaxed);
            match site.kind {
                TaskKind::Async => snapshot.tasks.push(TaskSiteStats {
                    location,
                    task_name: site.task_name.map(str::to_owned),
                    tasks_spawned: spawned,
                    polls: async_polls
                        .remove(&(site as *const Site))
                        .unwrap_or_else(|| site.busy.snapshot()),
                    slow_polls: slow_count,
                    slow_poll_time: slow_time,
                    blocked_in: site.blocked_in().map(|b| b.frame),
                }),
                TaskKind::Blocking => snapshot.blocking.push(BlockingSiteStats {
                    location,
                    jobs_spawned: spawned,
                    queue_wait: site.queue_wait.snapshot(),
                    run: site.busy.snapshot(),
                    slow_queue_waits: slow_count,
                    slow_queue_wait_time: slow_time,
                }),
            }
        }
        snapshot.locks = self
            .locks
            .all()
            .into_iter()
            .map(|lock| {
                let wait = lock.wait.snapshot();
                crate::snapshot::LockStats {
                    kind: lock.kind,
                    location: SpawnLocation {
                        file: lock.location.file.to_owned(),
                        line: lock.location.line,
                        column: lock.location.column,
                    },
                    name: lock.name.map(str::to_owned),
                    // Each contended acquisition is one wait sample.
                    acquisitions: wait.count + lock.uncontended.load(Relaxed),
                    contentions: wait.count,
                    cancellations: lock.cancellations.load(Relaxed),
                    cancelled_wait: lock.cancelled_wait.snapshot(),
                    blocking_waits: lock.blocking_waits.load(Relaxed),
                    held_across_await: lock.held_across_await.load(Relaxed),
                    wait,
                    hold: lock.hold.snapshot(),
                }
            })
            .collect();
        snapshot.runtimes = self.runtimes.snapshot();
        snapshot.runtimes_watched = self.runtimes.watched_total().max(snapshot.runtimes.len());
        snapshot
    }

    /// A guard was made.
    pub(crate) fn guard_taken(&self) {
        self.guards.fetch_add(1, Relaxed);
    }

    /// A guard dropped: whether it was the last one, which ends the instance.
    pub(crate) fn guard_dropped(&self) -> bool {
        self.guards.fetch_sub(1, Relaxed) == 1
    }

    /// Stops sampling, flushes every exporter and logs the summary; runs once.
    pub(crate) fn shutdown(&self) {
        if self.shut_down.swap(true, Relaxed) {
            return;
        }
        self.say_startup_notes();
        self.runtimes.stop_sampler();
        // Reports still on their way (a stall waiting for its stack among them) come before
        // the summary, and the stacks they resolved are in it. Not inside a task: a guard
        // dropped there would hold up its worker (the summary then comes before them).
        if tokio::task::try_id().is_none() {
            deferred::flush(SHUTDOWN_REPORTS_WAIT);
        }
        let snapshot = self.snapshot();
        let measured_nothing = snapshot.tasks.iter().all(|t| t.polls.count == 0)
            && snapshot.blocking.iter().all(|b| b.jobs_spawned == 0)
            && snapshot.locks.iter().all(|l| l.acquisitions == 0);
        self.dropped_before_measuring
            .store(measured_nothing, Relaxed);
        if !self.refused.load(Relaxed) {
            self.check_task_spans(true);
        }
        for sink in self.sinks() {
            sink.shutdown(self, &snapshot);
        }
    }

    /// Once tasks ran, no `runtime.spawn` span means tokio's `tracing` feature (or the global
    /// subscriber) is missing: the sinks say so. Returns whether the check is settled.
    pub(crate) fn check_task_spans(&self, at_shutdown: bool) -> bool {
        self.sinks()
            .iter()
            .all(|sink| sink.no_task_spans(self, at_shutdown))
    }

    /// Whether `shutdown` ran (a later sample or export would only add noise).
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Relaxed)
    }
}
