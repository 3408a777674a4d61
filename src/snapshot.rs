//! Point-in-time copies of everything stallscope measured, for tests, custom reports and the
//! shutdown summary. Obtained from [`Guard::snapshot`](crate::Guard::snapshot).

use std::fmt;
use std::time::Duration;

/// Everything measured so far by one stallscope instance: what the shutdown summary and the
/// exported metrics are made of, at one moment.
///
/// Obtained from [`Guard::snapshot`](crate::Guard::snapshot); every counter and histogram in it
/// counts from the instance's start, so two snapshots subtract to an interval. Durations are
/// [`Duration`]s; histogram buckets are bounded by [`histogram_bounds`](Self::histogram_bounds),
/// in seconds.
///
/// # Examples
///
/// A task that blocks its worker for 120 ms, in production mode with a 50 ms threshold:
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stallscope = stallscope::Builder::new()
///     .slow_poll_threshold(Duration::from_millis(50))
///     .build()?;
/// let guard = stallscope.guard();
/// let mut builder = tokio::runtime::Builder::new_current_thread();
/// stallscope.instrument_runtime(&mut builder);
/// let runtime = builder.enable_all().build()?;
/// runtime.block_on(async {
///     tokio::spawn(async { std::thread::sleep(Duration::from_millis(120)) })
///         .await
///         .unwrap();
/// });
/// drop(runtime); // every poll's hook has run: the counts are exact
///
/// let snapshot = guard.snapshot();
/// # if cfg!(tokio_unstable) { // poll hooks need `--cfg tokio_unstable`
/// let site = snapshot.tasks_in(".rs").find(|t| t.slow_polls > 0).expect("the sleeping task");
/// assert_eq!(site.slow_polls, 1);
/// // Timed on the coarse clock: a late clock thread only ever shortens a slow poll.
/// assert!(site.slow_poll_time >= Duration::from_millis(100));
/// assert!(site.polls.count >= 1);
/// // The 99th percentile of its polls, as the upper bound of its bucket.
/// let p99 = snapshot.quantile(&site.polls, 0.99).unwrap();
/// assert!(p99 >= Duration::from_millis(100));
/// println!("{} slow polls at {}, p99 {p99:?}", site.slow_polls, site.location);
/// # }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// One entry per site of async tasks: a spawn location and task name. At most
    /// `STALLSCOPE_MAX_SITES` sites (further ones share one whose file is `<other>`), and at
    /// most `STALLSCOPE_MAX_TASK_NAMES` names per location. Full mode knows a site from its
    /// first spawn; production mode from its first poll.
    pub tasks: Vec<TaskSiteStats>,
    /// One entry per `spawn_blocking` call site: every call in full mode, the calls through
    /// [`stallscope::task::spawn_blocking`](crate::task::spawn_blocking) in production mode.
    pub blocking: Vec<BlockingSiteStats>,
    /// One entry per lock site (its creation site, or its name): `tokio::sync` locks seen
    /// through tokio's spans (full mode), and the [`stallscope::sync`](crate::sync) wrappers.
    /// Bounded like [`tasks`](Self::tasks).
    pub locks: Vec<LockStats>,
    /// One entry per runtime stallscope watches, with its latest sampled interval and running
    /// totals, oldest first. A dropped runtime stays here with its final figures for two
    /// sampling intervals after its drop was seen (or two metric export intervals, when OTLP
    /// exports), then is left out; [`runtimes_watched`](Self::runtimes_watched) still counts it.
    pub runtimes: Vec<RuntimeStats>,
    /// Runtimes this instance has watched since it started, dropped ones included: at least
    /// `runtimes.len()`.
    pub runtimes_watched: usize,
    /// Upper bounds, in seconds, of the buckets of every [`HistogramSnapshot`] here: bucket `i`
    /// holds the samples at most `histogram_bounds[i]` (and over the previous bound); the last
    /// bucket, one more than there are bounds, holds the rest. `STALLSCOPE_HISTOGRAM_BOUNDS`.
    pub histogram_bounds: Vec<f64>,
    /// The slow-poll threshold in force (`STALLSCOPE_SLOW_POLL_THRESHOLD`): a poll, a
    /// blocking job's queue wait or a lock wait on a worker at least this long is slow.
    pub slow_threshold: Duration,
    /// The clock tick in force (`STALLSCOPE_CLOCK_TICK`), whichever clock timed everything
    /// here (the CPU's counter or the coarse clock, [resolution](crate::guide::modes)).
    /// Polls and lock holds under two ticks are counted in the bucket holding two ticks, not
    /// timed: they add to a histogram's `count` and `counts`, not to its `sum` or `max`.
    pub clock_tick: Duration,
    /// Stacks of stalled workers captured and resolved so far, samples of one stall included.
    /// Zero where stacks are off or unavailable ([stall stacks](crate::guide::stacks)).
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

/// Where a task or job was spawned, or a lock created: the `#[track_caller]` location of the
/// call (`tokio::spawn`, `spawn_blocking`, `Mutex::new`, ...), as exported in the `code.*`
/// attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SpawnLocation {
    /// Source file as the compiler names it (relative to the crate for the crate's own code);
    /// `<other>` for the site that collects what is past the sites' limit.
    pub file: String,
    /// 1-based line; 0 for the `<other>` site.
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
///
/// A poll holds its worker thread for as long as it runs: every other task queued on that
/// worker waits meanwhile. Well-behaved polls take microseconds; the hazards stallscope looks
/// for take milliseconds to seconds.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TaskSiteStats {
    /// Where the tasks were spawned.
    pub location: SpawnLocation,
    /// The name given with `tokio::task::Builder::name`, if any; `<other>` past
    /// `STALLSCOPE_MAX_TASK_NAMES` names at this location (full mode: production mode's hooks
    /// do not see names).
    pub task_name: Option<String>,
    /// Tasks spawned here (full mode; production mode sees polls, not spawns, and leaves it 0).
    pub tasks_spawned: u64,
    /// The duration of each poll. `count` is every poll, in both modes; polls under two clock
    /// ticks (1 ms by default) are counted in the bucket holding two ticks without a duration,
    /// so `sum` is the time spent in the timed polls (the busy time) and `max` the longest
    /// poll. `tokio.task.poll.duration`, `tokio.task.polls` and `tokio.task.busy.time`.
    ///
    /// A p99 ([`Snapshot::quantile`]) in the milliseconds means the site's polls hold their
    /// worker long enough to delay every task behind them.
    pub polls: HistogramSnapshot,
    /// Polls at or over the slow threshold: each one a stall of a worker, reported in the log.
    /// Any is worth a look; `tokio.task.slow_polls`.
    pub slow_polls: u64,
    /// The summed duration of those slow polls: the worker time they blocked, by which the
    /// summary ranks the sites.
    pub slow_poll_time: Duration,
    /// Where the latest stall here was blocked: the innermost frame of the application's own
    /// code in the stack captured while it ran, as `function (file:line)`. `None` until a
    /// stall's stack was captured.
    pub blocked_in: Option<String>,
}

/// `spawn_blocking` jobs from one call site.
///
/// Jobs run on the runtime's blocking pool; when more are running than it has threads, the
/// next ones wait in its queue, and so does every task awaiting them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BlockingSiteStats {
    /// Where `spawn_blocking` was called.
    pub location: SpawnLocation,
    /// Jobs spawned here (`tokio.blocking.jobs`).
    pub jobs_spawned: u64,
    /// The time each job waited in the queue for a pool thread, recorded when a thread starts
    /// it (`tokio.blocking.job.wait.duration`). Waits in the milliseconds mean the pool is
    /// starved: all its threads busy.
    pub queue_wait: HistogramSnapshot,
    /// The time each job ran on its pool thread (`tokio.blocking.job.run.duration`). Long runs
    /// are what the pool is for; many at once fill it.
    pub run: HistogramSnapshot,
    /// Queue waits at or over the slow threshold (`tokio.blocking.job.slow_waits`): each one
    /// part of a starvation episode the log reports.
    pub slow_queue_waits: u64,
    /// The summed duration of those waits.
    pub slow_queue_wait_time: Duration,
}

/// Acquisitions of the locks created at one site (or with one name).
///
/// An acquisition either finds the lock free, or waits (a contention); a waiting acquisition
/// is either obtained or given up (cancelled: a timeout, a dropped future). A std or
/// parking_lot lock's wait blocks the thread; a tokio lock's wait suspends the task.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockStats {
    /// The kind of lock (`tokio.lock.kind`).
    pub kind: LockKind,
    /// Where the lock was created.
    pub location: SpawnLocation,
    /// The name given with `named`, if any (`tokio.lock.name`).
    pub name: Option<String>,
    /// Acquisitions that obtained the lock, waiting or not (`tokio.lock.acquisitions`).
    pub acquisitions: u64,
    /// Acquisitions that found the lock taken and waited before obtaining it, however briefly
    /// (`tokio.lock.contentions`); `wait.count`. A share of
    /// [`acquisitions`](Self::acquisitions) that grows with load means the lock serializes
    /// the work.
    pub contentions: u64,
    /// Acquisitions given up before the lock was obtained: a timeout around a tokio lock's
    /// acquire future, a dropped future, `try_lock_for` running out.
    pub cancellations: u64,
    /// How long the cancelled acquisitions had waited.
    pub cancelled_wait: HistogramSnapshot,
    /// Waits at or over the slow threshold on a std or parking_lot lock by a thread polling a
    /// tokio task (`tokio.lock.blocking_waits`): each one a worker blocked, reported in the
    /// log. Any is worth fixing.
    pub blocking_waits: u64,
    /// Polls that ended with a guard of this lock still held, so held across an `.await`
    /// (`tokio.lock.held_across_await`; full mode, wrapped std and parking_lot locks).
    pub held_across_await: u64,
    /// The time each contended acquisition waited until it obtained the lock
    /// (`tokio.lock.wait.duration`, which exports the waits of two clock ticks and longer).
    pub wait: HistogramSnapshot,
    /// The time each guard was held (`tokio.lock.hold.duration`): tokio locks in full mode,
    /// exclusive holds; the wrappers, every guard and permit. Holds under two clock ticks
    /// (1 ms by default) are counted, not timed. Long holds make the waits.
    pub hold: HistogramSnapshot,
}

/// One runtime's latest sampled interval and running totals, from tokio's runtime metrics
/// (through tokio-metrics' `RuntimeMonitor`), sampled every `STALLSCOPE_SAMPLE_INTERVAL`.
///
/// Fields marked `tokio_unstable` stay zero without `--cfg tokio_unstable`.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// The runtime's id (`tokio::runtime::Id` with `tokio_unstable`, else a sequence number),
    /// as exported in `tokio.runtime.id`.
    pub runtime: String,
    /// Worker threads.
    pub workers: usize,
    /// Tasks alive at the latest sample. Growing without bound means tasks never finish.
    pub alive_tasks: usize,
    /// Tasks in the global (injection) queue at the latest sample. Staying above 0 means tasks
    /// wait to be scheduled: the workers are saturated or stalled.
    pub global_queue_depth: usize,
    /// Mean fraction of the latest interval the workers were busy, `0.0..=1.0`. Near 1 for long,
    /// the runtime is saturated.
    pub worker_utilization: f64,
    /// Busy time summed over workers since watching began.
    pub worker_busy_time: Duration,
    /// Times workers parked (went idle) since watching began.
    pub worker_parks: u64,
    /// Polls counted by tokio (`tokio_unstable`; misses LIFO-slot polls, see tokio#7106).
    pub worker_polls: u64,
    /// Tasks stolen between workers (`tokio_unstable`). A high rate means work is spawned
    /// unevenly.
    pub worker_steals: u64,
    /// Local-queue overflows into the global queue (`tokio_unstable`): bursts of spawns from
    /// one worker.
    pub worker_overflows: u64,
    /// Tasks scheduled from outside the runtime (`tokio_unstable`).
    pub remote_schedules: u64,
    /// Forced yields from exhausted coop budgets (`tokio_unstable`): tasks that loop over ready
    /// work and would otherwise hold their worker.
    pub budget_forced_yields: u64,
    /// Tasks in the workers' local queues, summed, at the latest sample (`tokio_unstable`).
    pub local_queue_depth: usize,
    /// tokio's moving average of poll duration (`tokio_unstable`).
    pub mean_poll_duration: Duration,
    /// Jobs waiting for a blocking-pool thread at the latest sample (`tokio_unstable`).
    pub blocking_queue_depth: usize,
    /// Largest blocking queue depth sampled (`tokio_unstable`). Above 0, jobs have waited for
    /// a thread.
    pub blocking_queue_depth_peak: usize,
    /// Blocking-pool threads, idle or busy, excluding the runtime's workers (`tokio_unstable`).
    pub blocking_threads: usize,
    /// Most blocking-pool threads sampled (`tokio_unstable`).
    pub blocking_threads_peak: usize,
    /// Idle blocking-pool threads (`tokio_unstable`).
    pub idle_blocking_threads: usize,
}

/// A point-in-time copy of a histogram of durations, with fixed buckets.
///
/// Its buckets are those of [`Snapshot::histogram_bounds`](crate::Snapshot::histogram_bounds);
/// [`Snapshot::quantile`](crate::Snapshot::quantile) reads a percentile from it. Samples too
/// short for the coarse clock (polls and lock holds under two clock ticks) are counted in the
/// bucket holding two ticks without a duration: they are in `counts` and `count`, not in `sum`
/// or `max`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Samples per bucket: `counts[i]` holds the samples at most `bounds[i]` and over the
    /// previous bound; the last one, past every bound, the rest.
    pub counts: Vec<u64>,
    /// Number of samples, timed or counted: the sum of `counts`.
    pub count: u64,
    /// Sum of the timed samples. `sum / count` underestimates the mean when short samples were
    /// only counted.
    pub sum: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding the `q` quantile (`0.0..=1.0`), capped at the
    /// largest sample: an upper estimate, exact to one bucket.
    pub fn quantile(&self, bounds_seconds: &[f64], q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = bounds_seconds
                    .get(i)
                    .map(|s| Duration::from_secs_f64(*s))
                    .unwrap_or(self.max);
                return Some(upper.min(self.max));
            }
        }
        Some(self.max)
    }
}

/// What kind of lock, as exported in `tokio.lock.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// `stallscope::sync::Mutex` (a `std::sync::Mutex`).
    StdMutex,
    /// `stallscope::sync::RwLock` (a `std::sync::RwLock`).
    StdRwLock,
    /// `tokio::sync::Mutex`, seen through tokio's resource spans (full mode).
    TokioMutex,
    /// `tokio::sync::RwLock`, seen through tokio's resource spans (full mode).
    TokioRwLock,
    /// `tokio::sync::Semaphore`, seen through tokio's resource spans (full mode).
    TokioSemaphore,
    /// `stallscope::sync::parking_lot::Mutex` (feature `parking_lot`).
    ParkingLotMutex,
    /// `stallscope::sync::parking_lot::RwLock` (feature `parking_lot`).
    ParkingLotRwLock,
}
