//! Runtime-wide metrics: one sampler thread per instance walks every watched runtime's
//! tokio-metrics `RuntimeMonitor` each interval and keeps the latest interval and running totals
//! for the exporters and the report.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio_metrics::{RuntimeIntervals, RuntimeMonitor};

use super::sink::Sink;
use super::Engine;
use crate::snapshot::RuntimeStats;

/// Tells each of `engine`'s sinks with `tell`, on the reporter thread: the watch that found it
/// runs on a worker's first poll, inside the subscriber.
fn tell_sinks(engine: Weak<Engine>, tell: impl Fn(&dyn Sink) + Send + 'static) {
    if let Some(engine) = engine.upgrade() {
        engine.tell_later(move |engine| {
            for sink in engine.sinks() {
                tell(sink.as_ref());
            }
        });
    }
}

/// Runtimes alive at once beyond this many are not watched (a runtime built per thread in a
/// loop must not grow memory without bound); the report says so once. Dropped runtimes are
/// forgotten (see [`Liveness`]), so a runtime per request is watched for days.
const MAX_RUNTIMES: usize = 64;

/// Runtimes watched by any instance in this process (reports name the runtime when it is > 1).
static WATCHED_IN_PROCESS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many runtimes stallscope has watched in this process.
pub(crate) fn watched_in_process() -> usize {
    WATCHED_IN_PROCESS.load(Relaxed)
}

/// This many runtimes at once is flagged as a runtime per thread (or per request).
const MANY_RUNTIMES: usize = 4;

/// Blocking-pool gauges at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockingPool {
    /// Jobs waiting for a thread.
    pub(crate) queue_depth: usize,
    pub(crate) busy_threads: usize,
    /// Threads the pool has now, busy or idle (not the runtime's workers).
    pub(crate) threads: usize,
}

/// Latest interval and running totals of one runtime.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuntimeSample {
    pub(crate) stats: RuntimeStats,
}

/// Whether a watched runtime still runs. tokio says nothing when a runtime is dropped, but it
/// drops every task it holds: a task of stallscope's that never completes is dropped exactly
/// then. The task is spawned with no subscriber current, so it has no span (invisible to
/// tokio-console and to full mode), production mode's hooks skip it ([`is_liveness_task`]),
/// and the task count stallscope reports leaves it out.
struct Liveness {
    dropped: Arc<AtomicBool>,
}

/// Sets its flag when the runtime drops the task holding it.
struct DroppedWithRuntime(Arc<AtomicBool>);

impl Drop for DroppedWithRuntime {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// Where the liveness task is spawned (tokio records it as the task's spawn location).
static LIVENESS_TASK_AT: std::sync::OnceLock<&'static std::panic::Location<'static>> =
    std::sync::OnceLock::new();

/// Whether a task spawned at `location` is stallscope's liveness task (production mode's
/// hooks leave it unmeasured; called once per location per thread, off the per-poll path).
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) fn is_liveness_task(location: &std::panic::Location<'_>) -> bool {
    LIVENESS_TASK_AT.get().is_some_and(|at| {
        at.file() == location.file()
            && at.line() == location.line()
            && at.column() == location.column()
    })
}

impl Liveness {
    /// Spawns the liveness task on `handle`'s runtime (on one already shut down, tokio drops
    /// it at once, and the runtime reads as dropped).
    fn spawn(handle: &Handle) -> Liveness {
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DroppedWithRuntime(dropped.clone());
        // `Dispatch::none()`: no registration (a new dispatcher rebuilds every callsite's
        // interest, and this may run inside the subscriber's own callback).
        tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            spawn_liveness_task(handle, async move {
                let _guard = guard;
                std::future::pending::<()>().await
            })
        });
        Liveness { dropped }
    }

    fn runtime_dropped(&self) -> bool {
        self.dropped.load(Relaxed)
    }
}

/// Spawns `task`; tokio records this function's caller as its spawn location.
#[track_caller]
fn spawn_liveness_task(
    handle: &Handle,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let at = std::panic::Location::caller();
    LIVENESS_TASK_AT.get_or_init(|| at);
    drop(handle.spawn(task));
}

pub(crate) struct WatchedRuntime {
    pub(crate) label: String,
    liveness: Liveness,
    #[cfg(tokio_unstable)]
    pub(crate) id: tokio::runtime::Id,
    /// tokio's live gauges, for a reading of the blocking pool at one moment (see
    /// [`Runtimes::blocking_pools_now`]).
    #[cfg(tokio_unstable)]
    metrics: tokio::runtime::RuntimeMetrics,
    intervals: Mutex<RuntimeIntervals>,
    pub(crate) sample: Mutex<RuntimeSample>,
    /// The blocking pool as a tokio-console resource, created by the sampler thread.
    #[cfg(tokio_unstable)]
    console_resource: std::sync::OnceLock<tracing::Span>,
}

impl WatchedRuntime {
    /// Publishes the pool's state to tokio-console: a `runtime.resource` span (string-literal
    /// `concrete_type` and `kind`, as console-subscriber requires) whose state-update events
    /// become the resource's attributes. Only from the sampler thread, never from inside a
    /// subscriber callback.
    #[cfg(tokio_unstable)]
    fn publish_to_console(&self) {
        let stats = self
            .sample
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats
            .clone();
        let span = self.console_resource.get_or_init(|| {
            tracing::trace_span!(
                target: "tokio::runtime::blocking",
                parent: None,
                "runtime.resource",
                concrete_type = "BlockingPool",
                kind = "Pool",
                runtime.id = self.label.as_str(),
            )
        });
        let busy = stats
            .blocking_threads
            .saturating_sub(stats.idle_blocking_threads) as u64;
        // console-subscriber keeps one attribute per state-update event: one event each.
        span.in_scope(|| {
            tracing::trace!(
                target: "runtime::resource::state_update",
                queue_depth = stats.blocking_queue_depth as u64,
                queue_depth.op = "override",
            );
            tracing::trace!(
                target: "runtime::resource::state_update",
                busy_threads = busy,
                busy_threads.op = "override",
            );
            tracing::trace!(
                target: "runtime::resource::state_update",
                idle_threads = stats.idle_blocking_threads as u64,
                idle_threads.op = "override",
            );
        });
    }

    fn sample(&self) {
        let Some(m) = self
            .intervals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next()
        else {
            return;
        };
        let mut s = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut s.stats;
        st.workers = m.workers_count;
        // Not stallscope's liveness task.
        st.alive_tasks = m
            .live_tasks_count
            .saturating_sub(usize::from(!self.liveness.runtime_dropped()));
        st.global_queue_depth = m.global_queue_depth;
        // tokio-metrics sums busy time over workers; divide to get 0..=1.
        st.worker_utilization = if m.workers_count == 0 || m.elapsed.is_zero() {
            0.0
        } else {
            (m.busy_ratio() / m.workers_count as f64).clamp(0.0, 1.0)
        };
        st.worker_busy_time += m.total_busy_duration;
        st.worker_parks += m.total_park_count;
        #[cfg(tokio_unstable)]
        {
            st.worker_polls += m.total_polls_count;
            st.worker_steals += m.total_steal_count;
            st.worker_overflows += m.total_overflow_count;
            st.remote_schedules += m.num_remote_schedules;
            st.budget_forced_yields += m.budget_forced_yield_count;
            st.local_queue_depth = m.total_local_queue_depth;
            st.mean_poll_duration = m.mean_poll_duration;
            st.blocking_queue_depth = m.blocking_queue_depth;
            st.blocking_threads = m.blocking_threads_count;
            st.idle_blocking_threads = m.idle_blocking_threads_count;
            st.blocking_queue_depth_peak = st.blocking_queue_depth_peak.max(m.blocking_queue_depth);
            st.blocking_threads_peak = st.blocking_threads_peak.max(m.blocking_threads_count);
        }
    }
}

/// A dropped runtime, kept for its last figures until every reader has seen them.
struct Retired {
    runtime: Arc<WatchedRuntime>,
    dropped_at: Instant,
}

#[derive(Default)]
pub(crate) struct Runtimes {
    watched: Mutex<Vec<Arc<WatchedRuntime>>>,
    /// Runtimes seen dropped, oldest first, at most [`MAX_RUNTIMES`]: still in snapshots (the
    /// summary, the exporters) for [`Self::keep_dropped_for`] after the drop was seen, so the
    /// export after a runtime ends still carries its final interval and a process whose
    /// runtimes all end before the last flush exports every one of them. Then forgotten: a
    /// runtime per request leaves no series behind.
    retired: Mutex<VecDeque<Retired>>,
    /// Nanoseconds a dropped runtime stays in snapshots: two sampling intervals, or two
    /// intervals of the slowest reader that asked for longer ([`Self::keep_dropped_visible_for`]).
    keep_dropped_for: AtomicU64,
    /// Runtimes this instance has watched since it started, dropped ones included.
    watched_total: AtomicUsize,
    sampler: Mutex<Option<Sampler>>,
    over_limit_reported: AtomicBool,
    /// "A second runtime" and "many runtimes" were said (once each: runtimes come and go).
    second_said: AtomicBool,
    many_said: AtomicBool,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Runtimes {
    /// Starts watching `handle`'s runtime (once per runtime) and the sampler thread.
    pub(crate) fn watch(&self, handle: &Handle, engine: Weak<Engine>, interval: Duration) {
        self.keep_dropped_visible_for(interval * 2);
        let tell = engine.clone();
        self.forget_dropped();
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(tokio_unstable)]
        if watched.iter().any(|w| w.id == handle.id()) {
            return;
        }
        if watched.len() >= MAX_RUNTIMES {
            drop(watched);
            if !self.over_limit_reported.swap(true, Relaxed) {
                // Written by the reporter: this runs on a worker's first poll.
                tell_sinks(tell, |sink| sink.runtimes_over_limit(MAX_RUNTIMES));
            }
            return;
        }
        #[cfg(tokio_unstable)]
        let label = handle.id().to_string();
        #[cfg(not(tokio_unstable))]
        let label = (WATCHED_IN_PROCESS.load(Relaxed) + 1).to_string();
        let runtime = Arc::new(WatchedRuntime {
            label,
            liveness: Liveness::spawn(handle),
            #[cfg(tokio_unstable)]
            id: handle.id(),
            #[cfg(tokio_unstable)]
            metrics: handle.metrics(),
            intervals: Mutex::new(RuntimeMonitor::new(handle).intervals()),
            sample: Mutex::new(RuntimeSample::default()),
            #[cfg(tokio_unstable)]
            console_resource: std::sync::OnceLock::new(),
        });
        // The first interval starts now, so the first real sample covers one whole interval.
        runtime.sample();
        watched.push(runtime);
        WATCHED_IN_PROCESS.fetch_add(1, Relaxed);
        self.watched_total.fetch_add(1, Relaxed);
        let count = watched.len();
        let ids: Vec<String> = watched.iter().map(|w| w.label.clone()).collect();
        drop(watched);
        // Written by the reporter: this runs on a worker's first poll, inside the subscriber.
        if count == 2 && !self.second_said.swap(true, Relaxed) {
            tell_sinks(tell, move |sink| sink.second_runtime(&ids));
        } else if count == MANY_RUNTIMES && !self.many_said.swap(true, Relaxed) {
            tell_sinks(tell, move |sink| sink.many_runtimes(count, &ids));
        }
        self.start_sampler(engine, interval);
    }

    /// A reader of snapshots that pulls every `period` (an exporter) asks for dropped runtimes
    /// to stay in snapshots long enough for it to see their final figures.
    pub(crate) fn keep_dropped_visible_for(&self, period: Duration) {
        let nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        self.keep_dropped_for.fetch_max(nanos, Relaxed);
    }

    /// Stops watching the runtimes that were dropped: they are no longer sampled and make room
    /// for new ones. Their final interval is sampled now and they stay in snapshots for a while
    /// ([`Self::retired`]); those retired long enough are forgotten.
    fn forget_dropped(&self) {
        let dropped: Vec<_> = {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            let (dropped, alive) = std::mem::take(&mut *watched)
                .into_iter()
                .partition(|w| w.liveness.runtime_dropped());
            *watched = alive;
            dropped
        };
        let now = Instant::now();
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        for runtime in dropped {
            // tokio's metrics of a dropped runtime stay readable: this is its last interval.
            runtime.sample();
            if retired.len() == MAX_RUNTIMES {
                retired.pop_front();
            }
            retired.push_back(Retired {
                runtime,
                dropped_at: now,
            });
        }
        let keep = Duration::from_nanos(self.keep_dropped_for.load(Relaxed));
        while retired
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.dropped_at) > keep)
        {
            retired.pop_front();
        }
    }

    /// Runtimes in a snapshot now: those watched and those dropped recently (the number of
    /// runtimes the exporters' per-runtime series describe).
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn in_snapshots(&self) -> usize {
        self.forget_dropped();
        self.watched().len() + self.retired.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Runtimes this instance has watched since it started, dropped ones included.
    pub(crate) fn watched_total(&self) -> usize {
        self.watched_total.load(Relaxed)
    }

    fn start_sampler(&self, engine: Weak<Engine>, interval: Duration) {
        let mut sampler = self.sampler.lock().unwrap_or_else(|e| e.into_inner());
        if sampler.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("stallscope-sampler".into())
            .spawn(move || sampler_loop(engine, interval, &stop_flag));
        match spawned {
            Ok(thread) => *sampler = Some(Sampler { stop, thread }),
            Err(e) => tracing::warn!(
                target: "stallscope",
                "cannot start the runtime-metrics sampler thread ({e}); runtime metrics are off"
            ),
        }
    }

    pub(crate) fn stop_sampler(&self) {
        let sampler = self
            .sampler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = sampler {
            s.stop.store(true, Relaxed);
            s.thread.thread().unpark();
            let _ = s.thread.join();
        }
        // A final sample so the summary and the last export see the end state.
        self.sample_all();
    }

    fn sample_all(&self) {
        for runtime in self.watched() {
            runtime.sample();
        }
    }

    fn publish_to_console(&self) {
        #[cfg(tokio_unstable)]
        for runtime in self.watched() {
            runtime.publish_to_console();
        }
    }

    pub(crate) fn watched(&self) -> Vec<Arc<WatchedRuntime>> {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The blocking pools of every watched runtime, summed, read now from tokio's gauges (not
    /// from the last sample, which may be an interval old or precede the pool's first thread):
    /// read at the same moment as the call sites' counts, the two tell one story. The peaks
    /// the samples keep take these readings in too, so the summary never says less than an
    /// episode's report did. `None` while no runtime is watched, and without
    /// `--cfg tokio_unstable` (tokio has no blocking-pool gauges then).
    pub(crate) fn blocking_pools_now(&self) -> Option<BlockingPool> {
        #[cfg(tokio_unstable)]
        {
            let watched = self.watched();
            if watched.is_empty() {
                return None;
            }
            let mut total = BlockingPool::default();
            for runtime in &watched {
                let m = &runtime.metrics;
                let threads = m.num_blocking_threads();
                let pool = BlockingPool {
                    queue_depth: m.blocking_queue_depth(),
                    busy_threads: threads.saturating_sub(m.num_idle_blocking_threads()),
                    threads,
                };
                let mut sample = runtime.sample.lock().unwrap_or_else(|e| e.into_inner());
                let st = &mut sample.stats;
                st.blocking_queue_depth_peak = st.blocking_queue_depth_peak.max(pool.queue_depth);
                st.blocking_threads_peak = st.blocking_threads_peak.max(pool.threads);
                total.queue_depth += pool.queue_depth;
                total.busy_threads += pool.busy_threads;
                total.threads += pool.threads;
            }
            Some(total)
        }
        #[cfg(not(tokio_unstable))]
        None
    }

    /// The runtimes watched and those dropped recently ([`Self::retired`]), oldest first.
    pub(crate) fn snapshot(&self) -> Vec<RuntimeStats> {
        self.forget_dropped();
        let retired: Vec<_> = self
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.runtime.clone())
            .collect();
        retired
            .iter()
            .chain(self.watched().iter())
            .map(|r| {
                let mut stats = r
                    .sample
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stats
                    .clone();
                stats.runtime = r.label.clone();
                stats
            })
            .collect()
    }
}

fn sampler_loop(engine: Weak<Engine>, interval: Duration, stop: &AtomicBool) {
    let mut warned_no_spans = false;
    loop {
        std::thread::park_timeout(interval);
        if stop.load(Relaxed) {
            return;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.say_startup_notes();
        engine.runtimes.forget_dropped();
        engine.runtimes.sample_all();
        engine.runtimes.publish_to_console();
        if engine.config.report_slow_polls {
            engine
                .starvation
                .sample(&engine.sites, &engine.runtimes, engine.sinks());
        }
        if !warned_no_spans {
            warned_no_spans = engine.check_task_spans(false);
        }
        #[cfg(tokio_unstable)]
        if engine.hooks_installed.load(Relaxed) {
            for runtime in engine.runtimes.watched() {
                let polled = runtime
                    .sample
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .stats
                    .worker_polls
                    > 0;
                engine.check_measured(runtime.id, polled, || "the runtime sampler".to_owned());
            }
        }
    }
}
