//! Point-in-time copies of everything stallscope measured, for tests, custom reports and the
//! shutdown summary. Obtained from [`Guard::snapshot`](crate::Guard::snapshot).

use std::fmt;
use std::time::Duration;

pub use crate::engine::histogram::HistogramSnapshot;

/// Everything measured so far by one stallscope instance.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per spawn location (and task name) of async tasks.
    pub tasks: Vec<TaskSiteStats>,
    /// Per `spawn_blocking` call site.
    pub blocking: Vec<BlockingSiteStats>,
    /// Per wrapped lock site (`stallscope::sync`).
    pub locks: Vec<LockStats>,
    /// Per watched runtime.
    pub runtimes: Vec<RuntimeStats>,
    /// Upper bounds (seconds) of the histogram buckets; the last bucket is unbounded.
    pub histogram_bounds: Vec<f64>,
    /// The slow-poll threshold in force.
    pub slow_threshold: Duration,
    /// The tick of the coarse clock that timed everything here: polls, waits and holds under
    /// two ticks are counted in the bucket holding two ticks, not timed.
    pub clock_tick: Duration,
    /// Stacks of stalled workers captured and resolved so far.
    pub stall_stacks: u64,
}

impl Snapshot {
    /// Task sites whose spawn location's file ends with `file_suffix`.
    pub fn tasks_in<'a>(&'a self, file_suffix: &'a str) -> impl Iterator<Item = &'a TaskSiteStats> {
        self.tasks
            .iter()
            .filter(move |t| t.location.file.ends_with(file_suffix))
    }

    /// Blocking sites whose spawn location's file ends with `file_suffix`.
    pub fn blocking_in<'a>(
        &'a self,
        file_suffix: &'a str,
    ) -> impl Iterator<Item = &'a BlockingSiteStats> {
        self.blocking
            .iter()
            .filter(move |t| t.location.file.ends_with(file_suffix))
    }

    /// The `q` quantile of `histogram` as an upper bucket bound (see
    /// [`HistogramSnapshot::quantile`]).
    pub fn quantile(&self, histogram: &HistogramSnapshot, q: f64) -> Option<Duration> {
        histogram.quantile(&self.histogram_bounds, q)
    }
}

/// Where a task or job was spawned (tokio's `#[track_caller]` location of the spawn call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpawnLocation {
    /// Source file as the compiler names it (relative to the crate for the crate's own code).
    pub file: String,
    /// 1-based line; 0 for the overflow site `<other>`.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl fmt::Display for SpawnLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Polls of the async tasks spawned at one location (with one task name).
#[derive(Clone, Debug)]
pub struct TaskSiteStats {
    /// Spawn location.
    pub location: SpawnLocation,
    /// The task name given with `tokio::task::Builder::name`, if any (`<other>` past the
    /// per-location cap).
    pub task_name: Option<String>,
    /// Tasks spawned here.
    pub tasks_spawned: u64,
    /// Every poll's duration.
    pub polls: HistogramSnapshot,
    /// Polls at or over the slow threshold.
    pub slow_polls: u64,
    /// Summed duration of those slow polls: worker time blocked.
    pub slow_poll_time: Duration,
    /// Where the latest stall here was blocked: the innermost frame of the application's own
    /// code in the stack captured while it ran, as `function (file:line)`.
    pub blocked_in: Option<String>,
}

/// `spawn_blocking` jobs from one call site.
#[derive(Clone, Debug)]
pub struct BlockingSiteStats {
    /// Call site of `spawn_blocking`.
    pub location: SpawnLocation,
    /// Jobs spawned here.
    pub jobs_spawned: u64,
    /// Time each job waited for a pool thread.
    pub queue_wait: HistogramSnapshot,
    /// Time each job ran.
    pub run: HistogramSnapshot,
    /// Queue waits at or over the slow threshold.
    pub slow_queue_waits: u64,
    /// Summed duration of those waits.
    pub slow_queue_wait_time: Duration,
}

/// Acquisitions of the wrapped locks created at one site (or with one name).
#[derive(Clone, Debug)]
pub struct LockStats {
    /// Which lock type.
    pub kind: crate::engine::locks::LockKind,
    /// Where the lock was created.
    pub location: SpawnLocation,
    /// The name given with `named`, if any.
    pub name: Option<String>,
    /// Acquisitions (`lock`, `read`, `write`).
    pub acquisitions: u64,
    /// Acquisitions that found the lock taken and waited.
    pub contentions: u64,
    /// Acquisitions given up before the lock was obtained (tokio locks: the future dropped).
    pub cancellations: u64,
    /// How long the cancelled acquisitions had waited.
    pub cancelled_wait: HistogramSnapshot,
    /// Waits at or over the slow threshold on a thread polling a tokio task.
    pub blocking_waits: u64,
    /// Polls that ended with a guard of this lock still held (held across `.await`).
    pub held_across_await: u64,
    /// Time each contended acquisition waited.
    pub wait: HistogramSnapshot,
    /// Time each guard was held (holds under two clock ticks, 1 ms by default, are counted,
    /// not timed).
    pub hold: HistogramSnapshot,
}

/// One runtime's latest sampled interval and running totals (tokio-metrics `RuntimeMonitor`).
#[derive(Clone, Debug, Default)]
pub struct RuntimeStats {
    /// The runtime's id (`tokio::runtime::Id` with `tokio_unstable`, else a sequence number).
    pub runtime: String,
    /// Worker threads.
    pub workers: usize,
    /// Tasks alive now.
    pub alive_tasks: usize,
    /// Tasks in the global (injection) queue.
    pub global_queue_depth: usize,
    /// Mean fraction of the last interval the workers were busy, `0.0..=1.0`.
    pub worker_utilization: f64,
    /// Busy time summed over workers since watching began.
    pub worker_busy_time: Duration,
    /// Times workers parked.
    pub worker_parks: u64,
    /// Polls counted by tokio (`tokio_unstable`; misses LIFO-slot polls, see tokio#7106).
    pub worker_polls: u64,
    /// Tasks stolen between workers (`tokio_unstable`).
    pub worker_steals: u64,
    /// Local-queue overflows into the global queue (`tokio_unstable`).
    pub worker_overflows: u64,
    /// Tasks scheduled from outside the runtime (`tokio_unstable`).
    pub remote_schedules: u64,
    /// Forced yields from exhausted coop budgets (`tokio_unstable`).
    pub budget_forced_yields: u64,
    /// Tasks in the workers' local queues, summed (`tokio_unstable`).
    pub local_queue_depth: usize,
    /// tokio's moving average of poll duration (`tokio_unstable`).
    pub mean_poll_duration: Duration,
    /// Jobs waiting for a blocking-pool thread (`tokio_unstable`).
    pub blocking_queue_depth: usize,
    /// Largest blocking queue depth sampled (`tokio_unstable`).
    pub blocking_queue_depth_peak: usize,
    /// Blocking-pool threads, idle or busy, excluding the runtime's workers (`tokio_unstable`).
    pub blocking_threads: usize,
    /// Most blocking-pool threads sampled (`tokio_unstable`).
    pub blocking_threads_peak: usize,
    /// Idle blocking-pool threads (`tokio_unstable`).
    pub idle_blocking_threads: usize,
}
