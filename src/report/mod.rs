//! The embedded default: what stalled, where and for how long, written as `tracing` events with
//! target `stallscope` into the application's own log.
//!
//! One WARN per slow poll (rate-limited so a pathological loop cannot flood the log), one per
//! long blocking-queue wait, and a summary of the worst offenders when the guard drops.
//!
//! Every line is read in plain text and in JSON, so each has one shape: a short message that
//! says what happened, where and for how long, in words; the details as fields, each once (the
//! stack only in `stack`). The fields naming the subject (`spawned_at`, `task.name`,
//! `blocked_in`, `lock`, `block_on_at`) and the measures (`duration_ms`, ...) stay fields too,
//! under the names log queries use. The advice for a kind of report rides on the first report
//! of that kind in the process, as `hint`.
//!
//! A sink, in the flow sources → engine → sinks: [`LogReport`] implements
//! `engine::sink::Sink`, and the engine calls it (from its reporter thread, `engine::deferred`)
//! without importing anything from here. Each instance has its own `LogReport`, with its own
//! rate limit.

mod sink;

pub(crate) use sink::LogReport;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::Metadata;

use crate::engine::locks::LockSite;
use crate::engine::runtimes::BlockingPool;
use crate::engine::sink::Measuring;
use crate::engine::sites::Site;
use crate::engine::stall::Stall;
use crate::engine::starvation::{EpisodeEnd, PoolState};
use crate::engine::Engine;
use crate::snapshot::Snapshot;

/// `` `name` (file:line) `` of a span.
fn describe_span(meta: &Metadata<'_>) -> String {
    match (meta.file(), meta.line()) {
        (Some(file), Some(line)) => format!("`{}` ({file}:{line})", meta.name()),
        _ => format!("`{}`", meta.name()),
    }
}

/// At most `per_second` report lines per second; the next line says how many were dropped.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: u64,
    origin: Instant,
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u64) -> Self {
        RateLimiter {
            per_second,
            origin: Instant::now(),
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last allowed one)` when a line may be written.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = crate::engine::deferred::happened_at()
            .saturating_duration_since(self.origin)
            .as_secs();
        if self.window.swap(now, Relaxed) != now {
            self.in_window.store(0, Relaxed);
        }
        if self.in_window.fetch_add(1, Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

impl RateLimiter {
    /// Lines suppressed since the last one written, now said by the caller (none follows).
    pub(crate) fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Relaxed)
    }
}

/// Said when the instance ends with lines suppressed since the last one written: no later line
/// carries their count in its `suppressed` field.
pub(crate) fn suppressed_at_the_end(n: u64, per_second: u64) {
    tracing::warn!(
        target: "stallscope",
        suppressed = n,
        "{n} more report lines were suppressed by the rate limit ({per_second} a second) after the \
         last one written; the summary counts every stall"
    );
}

/// The `suppressed` field: report lines the rate limit dropped since the last one written.
fn suppressed(n: u64) -> Option<u64> {
    (n > 0).then_some(n)
}

/// The advice for one kind of report: given with the first report of that kind in the process
/// (field `hint`), since it reads the same every time.
struct Hint {
    text: &'static str,
    given: AtomicBool,
}

impl Hint {
    const fn new(text: &'static str) -> Self {
        Hint {
            text,
            given: AtomicBool::new(false),
        }
    }

    /// The text, the first time only.
    fn once(&self) -> Option<&'static str> {
        (!self.given.load(Relaxed) && !self.given.swap(true, Relaxed)).then_some(self.text)
    }
}

/// Slow polls, and stalls reported while they run: the same hazard.
static BLOCKING_IN_ASYNC: Hint = Hint::new(
    "every other task on that worker waits while the poll runs: move the synchronous call \
     (std::thread::sleep, CPU-bound work, blocking I/O, a std Mutex) to spawn_blocking or use its \
     async form",
);
static BLOCKING_LOCK_WAIT: Hint = Hint::new(
    "every other task on that worker waited too: shorten the critical section, use tokio::sync \
     for locks held across .await, or use message passing or atomics",
);
static HELD_ACROSS_AWAIT: Hint = Hint::new(
    "anything else that locks it blocks its thread until this task runs again: drop the guard \
     before the .await, or use tokio::sync::Mutex (reported once per lock)",
);
static RUNTIME_PER_THREAD: Hint = Hint::new(
    "a runtime is built per thread or per iteration (the asyncio.run-per-thread mistake): each \
     has its own workers, timers and blocking pool, their tasks cannot balance across them, and \
     they block each other through shared std locks. Build one runtime, share its Handle \
     (Handle::spawn, Handle::block_on), and use tokio::sync or atomics for shared state \
     (reported once per call site)",
);
static NESTED_BLOCK_ON: Hint = Hint::new(
    "the task and its thread wait until that future completes: await the future in the task \
     instead, or spawn it on the other runtime (Handle::spawn) and await the JoinHandle \
     (reported once per call site)",
);
static STARVATION: Hint = Hint::new(
    "size the pool (Builder::max_blocking_threads), bound concurrency with a Semaphore, or use \
     an async API for the long jobs",
);
static RUNTIMES: Hint = Hint::new(
    "metrics carry tokio.runtime.id; unless they are isolated on purpose, one shared runtime \
     balances the work across its workers",
);

/// `task "name" spawned at file:line:col`, or `a task spawned at ...` for an unnamed one.
fn describe_task(site: &Site) -> String {
    match site.task_name {
        Some(name) => format!("task {name:?} spawned at {}", site.location),
        None => format!("a task spawned at {}", site.location),
    }
}

/// One slow poll (a [`Stall`] of kind `SlowPoll`).
pub(crate) fn slow_poll(limiter: &RateLimiter, stall: &Stall) {
    let Some(suppressed_lines) = limiter.allow() else {
        return;
    };
    let site = stall.site;
    tracing::warn!(
        target: "stallscope",
        duration_ms = ms(stall.duration),
        threshold_ms = ms(stall.threshold),
        task.id = stall.task_id,
        task.name = site.task_name,
        spawned_at = %site.location,
        span = stall.span.map(describe_span),
        blocked_in = stall.blocked_in.as_deref(),
        runtime = several_runtimes(stall.runtime_id.as_deref()),
        suppressed = suppressed(suppressed_lines),
        hint = BLOCKING_IN_ASYNC.once(),
        "slow poll: {} blocked its worker for {:.3?}",
        describe_task(site),
        stall.duration,
    );
}

fn list_sites(sites: &[(&'static Site, i64)], what: &str) -> String {
    if sites.is_empty() {
        return "none seen".to_owned();
    }
    sites
        .iter()
        .take(5)
        .map(|(site, n)| format!("{} ({n} {what})", site.location))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why per-job queue waits may be missing: production mode sees only the drop-in's jobs.
const UNMEASURED_JOBS: &str = "production mode measures only jobs spawned with \
    stallscope::task::spawn_blocking, not tokio::task::spawn_blocking";

/// `N jobs queued, B of T threads busy` from tokio's gauges, or that they are unknown.
fn describe_pool(pool: Option<BlockingPool>) -> String {
    match pool {
        Some(p) => format!(
            "{} jobs queued, {} of {} threads busy (tokio's gauges)",
            p.queue_depth, p.busy_threads, p.threads
        ),
        None => {
            "queue and threads unknown (tokio's blocking-pool gauges need --cfg tokio_unstable \
                 and a runtime stallscope watches)"
                .to_owned()
        }
    }
}

/// The call sites' counts, said to be stallscope's, with a word where they exceed tokio's.
fn describe_sites(state: &PoolState) -> String {
    if state.occupying.is_empty() && state.waiting.is_empty() {
        return format!("Which call sites these jobs come from is not known: {UNMEASURED_JOBS}");
    }
    let mut sites = format!(
        "By call site (jobs stallscope saw spawned, counted at the same moment): running: {}; \
         queued: {}",
        list_sites(&state.occupying, "jobs"),
        list_sites(&state.waiting, "jobs"),
    );
    let exceeds = state.pool.is_some_and(|p| {
        state.queued_at_sites() > p.queue_depth as i64
            || state.running_at_sites() > p.busy_threads as i64
    });
    if exceeds {
        sites.push_str(
            " (more than tokio's gauges show: some of these jobs are on runtimes stallscope does \
             not watch, or were being handed to a thread)",
        );
    }
    sites
}

/// Once per starvation episode, when it begins.
pub(crate) fn starvation_began(state: &PoolState, wait: Option<Duration>) {
    let trigger = match wait {
        Some(w) => format!("a spawn_blocking job waited {w:.3?} for a pool thread"),
        None => "spawn_blocking jobs are queueing".to_owned(),
    };
    tracing::warn!(
        target: "stallscope",
        queue_depth = state.pool.map(|p| p.queue_depth),
        busy_threads = state.pool.map(|p| p.busy_threads),
        threads = state.pool.map(|p| p.threads),
        pool = %describe_pool(state.pool),
        call_sites = %describe_sites(state),
        hint = STARVATION.once(),
        "blocking pool starved: {trigger}; the pool now: {}",
        describe_pool(state.pool),
    );
}

/// Once per starvation episode, when the queue has drained.
pub(crate) fn starvation_ended(end: &EpisodeEnd) {
    let waits = match end.waits_measured {
        0 => format!("how long its jobs waited is not known ({UNMEASURED_JOBS})"),
        n if end.slow_waits == 0 => {
            format!("none of the {n} jobs measured at their call sites waited over the threshold")
        }
        n => format!(
            "{} of the {n} jobs measured at their call sites waited over the threshold, longest {:.3?}",
            end.slow_waits, end.longest_wait
        ),
    };
    let peak = match end.peak {
        Some(p) => format!(
            "up to {} jobs queued, {} threads at most (tokio's gauges)",
            p.queue_depth, p.threads
        ),
        None => "queue depth unknown".to_owned(),
    };
    let measured = end.waits_measured > 0;
    tracing::info!(
        target: "stallscope",
        jobs_measured = end.waits_measured,
        slow_waits = measured.then_some(end.slow_waits),
        longest_wait_ms = (end.slow_waits > 0).then(|| ms(end.longest_wait)),
        peak_queue_depth = end.peak.map(|p| p.queue_depth),
        "blocking pool starvation over after {:.3?}: {waits}; {peak}",
        end.lasted,
    );
}

/// The blocking pools, for the summary, when jobs ever queued: what tokio's gauges showed
/// and whether per-job waits were measured (the worst sites follow in their own lines).
fn blocking_pool_summary(snapshot: &Snapshot) {
    let queued: Vec<_> = snapshot
        .runtimes
        .iter()
        .filter(|r| r.blocking_queue_depth_peak > 0)
        .collect();
    let slow_waits: u64 = snapshot.blocking.iter().map(|b| b.slow_queue_waits).sum();
    if queued.is_empty() && slow_waits == 0 {
        return;
    }
    let pools = if queued.is_empty() {
        "no queue seen by tokio's gauges".to_owned()
    } else {
        let several = snapshot.runtimes.len() > 1;
        queued
            .iter()
            .map(|r| {
                let runtime = if several {
                    format!("runtime {}: ", r.runtime)
                } else {
                    String::new()
                };
                format!(
                    "{runtime}up to {} jobs queued, {} threads at most",
                    r.blocking_queue_depth_peak, r.blocking_threads_peak
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
            + " (tokio's gauges)"
    };
    let jobs: u64 = snapshot.blocking.iter().map(|b| b.queue_wait.count).sum();
    let waits = if jobs == 0 {
        format!("how long jobs waited is not known ({UNMEASURED_JOBS})")
    } else {
        let sites = match snapshot.blocking.len() {
            1 => "1 call site".to_owned(),
            n => format!("{n} call sites"),
        };
        format!("{slow_waits} of the {jobs} jobs measured at {sites} waited over the threshold")
    };
    tracing::warn!(
        target: "stallscope",
        "summary: blocking pool: {pools}; {waits}"
    );
}

#[cfg(tokio_unstable)]
/// The watchdog saw a poll still running past the threshold (production mode).
pub(crate) fn stall_in_progress(
    limiter: &RateLimiter,
    site: &Site,
    thread: &str,
    elapsed: Duration,
    config: &crate::config::Config,
) {
    let Some(suppressed_lines) = limiter.allow() else {
        return;
    };
    tracing::warn!(
        target: "stallscope",
        elapsed_ms = ms(elapsed),
        threshold_ms = ms(config.slow_poll_threshold),
        thread = thread,
        task.name = site.task_name,
        spawned_at = %site.location,
        suppressed = suppressed(suppressed_lines),
        hint = BLOCKING_IN_ASYNC.once(),
        "stall in progress: {} has blocked its worker for {elapsed:.3?} so far",
        describe_task(site),
    );
}

/// A stalled worker's stack, captured while the stall runs: the line that blocks.
#[cfg_attr(not(all(tokio_unstable, feature = "stacks")), allow(dead_code))]
pub(crate) fn stall_stack(
    limiter: &RateLimiter,
    site: &Site,
    thread: &str,
    elapsed: Duration,
    sample: u32,
    stack: &crate::engine::StallStack,
) {
    let Some(suppressed_lines) = limiter.allow() else {
        return;
    };
    let blocked = match &stack.culprit {
        Some(culprit) => format!("is blocked in {culprit}"),
        None => "is blocked outside the application's own code".to_owned(),
    };
    tracing::warn!(
        target: "stallscope",
        elapsed_ms = ms(elapsed),
        sample,
        thread = thread,
        task.name = site.task_name,
        spawned_at = %site.location,
        blocked_in = stack.culprit.as_deref(),
        calling = stack.callee.as_deref(),
        stack = stack.summary.as_str(),
        suppressed = suppressed(suppressed_lines),
        "stall stack: {} {blocked}",
        describe_task(site),
    );
}

/// Stack capture cannot run in this process (said once).
#[cfg(tokio_unstable)]
pub(crate) fn stacks_unavailable(why: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            target: "stallscope",
            "stall stacks unavailable: {why}; stalls are still reported while they run, without the blocking line"
        );
    }
}

/// A stalled thread did not run the stack handler in time (said once per process).
#[cfg(all(tokio_unstable, feature = "stacks"))]
pub(crate) fn stack_capture_timed_out(thread: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            target: "stallscope",
            "stall stack: thread {thread:?} did not answer the stack signal within 250ms (it blocks the signal, \
             or waits in the kernel uninterruptibly); its stall is reported without a stack"
        );
    }
}

#[cfg(tokio_unstable)]
/// More threads poll instrumented tasks than there are worker slots.
pub(crate) fn out_of_worker_slots(max: usize) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, Relaxed) {
        tracing::warn!(
            target: "stallscope",
            "more than {max} threads poll instrumented tasks at once: polls on the extra threads are not measured"
        );
    }
}

/// The clock's upkeep thread could not start: every read of the clock is a precise one.
pub(crate) fn no_clock_thread(e: &std::io::Error) {
    if crate::clock::precise() {
        tracing::warn!(
            target: "stallscope",
            "cannot start the stallscope-watchdog thread ({e}): stalls are reported when they \
             end, not while they run"
        );
        return;
    }
    tracing::warn!(
        target: "stallscope",
        "cannot start the stallscope-watchdog thread ({e}): every poll and lock is timed on the \
         precise clock instead (slower), and stalls are reported when they end, not while they run"
    );
}

/// The kernel stopped timing with the CPU's time-stamp counter after stallscope chose it (it
/// found the CPUs' counters disagreeing): durations may be off from now on.
pub(crate) fn counter_left(source: &str) {
    tracing::warn!(
        target: "stallscope",
        clocksource = source,
        hint = "restart with STALLSCOPE_CLOCK=coarse",
        "the kernel stopped timing with the CPU's time-stamp counter, which stallscope times \
         with: durations it measures may be off from now on"
    );
}

/// A poll ended with a wrapped std lock's guard still held (once per lock).
pub(crate) fn guard_held_across_await(lock: &LockSite, task: &Site) {
    tracing::warn!(
        target: "stallscope",
        lock = lock.describe(),
        task.name = task.task_name,
        spawned_at = %task.location,
        hint = HELD_ACROSS_AWAIT.once(),
        "lock held across .await: a poll of {} ended holding the {}",
        describe_task(task),
        lock.describe(),
    );
}

/// One `block_on` call site ran on many different runtimes (once per call site).
pub(crate) fn runtime_per_thread(block_on: &Site, runtimes: &[String]) {
    tracing::warn!(
        target: "stallscope",
        block_on_at = %block_on.location,
        runtimes = runtimes.len(),
        runtime_ids = runtimes.join(", "),
        hint = RUNTIME_PER_THREAD.once(),
        "runtime per thread: block_on at {} has run on {} different tokio runtimes",
        block_on.location,
        runtimes.len(),
    );
}

/// A `block_on` started while its thread was polling a task of another runtime (once per call
/// site).
pub(crate) fn nested_block_on(block_on: &Site, inner: &str, task: &Site, outer: &str) {
    tracing::warn!(
        target: "stallscope",
        block_on_at = %block_on.location,
        runtime = inner,
        outer_runtime = outer,
        task.name = task.task_name,
        spawned_at = %task.location,
        hint = NESTED_BLOCK_ON.once(),
        "block_on inside another runtime's task: {} on runtime {outer} called block_on at {} on \
         runtime {inner}",
        describe_task(task),
        block_on.location,
    );
}

/// The stalled thread's runtime, when the process runs several (one needs no naming).
fn several_runtimes(runtime_id: Option<&str>) -> Option<&str> {
    runtime_id.filter(|_| crate::engine::runtimes::watched_in_process() >= 2)
}

/// A thread polling a tokio task waited on a wrapped std lock past the threshold (a [`Stall`]
/// of kind `LockWait`).
pub(crate) fn blocking_lock_wait(limiter: &RateLimiter, stall: &Stall) {
    let Some((lock, _)) = stall.lock else {
        return;
    };
    let Some(suppressed_lines) = limiter.allow() else {
        return;
    };
    tracing::warn!(
        target: "stallscope",
        wait_ms = ms(stall.duration),
        threshold_ms = ms(stall.threshold),
        lock = lock.describe(),
        task.name = stall.site.task_name,
        spawned_at = %stall.site.location,
        runtime = several_runtimes(stall.runtime_id.as_deref()),
        suppressed = suppressed(suppressed_lines),
        hint = BLOCKING_LOCK_WAIT.once(),
        "blocking lock wait: a tokio worker waited {:.3?} for the {} while polling {}",
        stall.duration,
        lock.describe(),
        describe_task(stall.site),
    );
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The worst offenders, logged when the guard drops.
pub(crate) fn summary(snapshot: &Snapshot) {
    const TOP: usize = 10;
    let mut slow: Vec<_> = snapshot.tasks.iter().filter(|t| t.slow_polls > 0).collect();
    slow.sort_by_key(|t| std::cmp::Reverse(t.slow_poll_time));
    let polls: u64 = snapshot.tasks.iter().map(|t| t.polls.count).sum();
    if slow.is_empty() {
        tracing::info!(
            target: "stallscope",
            threshold_ms = ms(snapshot.slow_threshold),
            polls,
            spawn_locations = snapshot.tasks.len(),
            "summary: no slow polls",
        );
    } else {
        let blocked: Duration = slow.iter().map(|t| t.slow_poll_time).sum();
        let count: u64 = slow.iter().map(|t| t.slow_polls).sum();
        tracing::warn!(
            target: "stallscope",
            threshold_ms = ms(snapshot.slow_threshold),
            spawn_locations = slow.len(),
            "summary: {count} slow polls blocked workers for {blocked:.3?} in all, worst first",
        );
        for (rank, t) in slow.iter().take(TOP).enumerate() {
            let task = match &t.task_name {
                Some(name) => format!("task {name:?}"),
                None => "a task".to_owned(),
            };
            tracing::warn!(
                target: "stallscope",
                slow_polls = t.slow_polls,
                max_ms = ms(t.polls.max),
                blocked_ms = ms(t.slow_poll_time),
                polls = t.polls.count,
                blocked_in = t.blocked_in.as_deref(),
                "summary: #{} {task} spawned at {}",
                rank + 1,
                t.location,
            );
        }
    }
    lock_summary(snapshot);
    runtime_summary(snapshot);
    blocking_pool_summary(snapshot);
    let mut waits: Vec<_> = snapshot
        .blocking
        .iter()
        .filter(|b| b.slow_queue_waits > 0)
        .collect();
    waits.sort_by_key(|b| std::cmp::Reverse(b.queue_wait.max));
    for (rank, b) in waits.iter().take(TOP).enumerate() {
        tracing::warn!(
            target: "stallscope",
            slow_waits = b.slow_queue_waits,
            jobs = b.jobs_spawned,
            max_ms = ms(b.queue_wait.max),
            p99_ms = ms(snapshot.quantile(&b.queue_wait, 0.99).unwrap_or_default()),
            "summary: blocking-pool queue wait #{} at {}",
            rank + 1,
            b.location,
        );
    }
}

/// Several runtimes: one line naming each, for the summary.
fn runtime_summary(snapshot: &Snapshot) {
    const TOP: usize = 16;
    if snapshot.runtimes_watched < 2 {
        return;
    }
    let mut each: Vec<String> = snapshot
        .runtimes
        .iter()
        .take(TOP)
        .map(|r| {
            format!(
                "runtime {} ({} workers, busy {:.3?})",
                r.runtime, r.workers, r.worker_busy_time
            )
        })
        .collect();
    // Runtimes dropped long ago are no longer in the snapshot, but they ran.
    let more = snapshot.runtimes_watched.saturating_sub(each.len());
    if more > 0 {
        each.push(format!("and {more} more"));
    }
    tracing::info!(
        target: "stallscope",
        runtimes = snapshot.runtimes_watched,
        each = each.join(", "),
        hint = RUNTIMES.once(),
        "summary: {} tokio runtimes ran",
        snapshot.runtimes_watched,
    );
}

/// The most contended wrapped locks, for the summary; the advice once per kind of lock.
fn lock_summary(snapshot: &Snapshot) {
    const TOP: usize = 10;
    let mut locks: Vec<_> = snapshot
        .locks
        .iter()
        .filter(|l| l.contentions > 0)
        .collect();
    locks.sort_by_key(|l| std::cmp::Reverse(l.wait.sum));
    let mut advised = Vec::new();
    for (rank, l) in locks.iter().take(TOP).enumerate() {
        let name = l
            .name
            .as_deref()
            .map(|n| format!(" {n:?}"))
            .unwrap_or_default();
        let hint = (!advised.contains(&l.kind)).then(|| l.kind.contention_hint());
        advised.push(l.kind);
        tracing::warn!(
            target: "stallscope",
            contended = l.contentions,
            acquisitions = l.acquisitions,
            wait_total_ms = ms(l.wait.sum),
            wait_p99_ms = ms(snapshot.quantile(&l.wait, 0.99).unwrap_or_default()),
            wait_max_ms = ms(l.wait.max),
            blocking_waits = (l.blocking_waits > 0).then_some(l.blocking_waits),
            hint,
            "summary: lock #{} {}{name} created at {}",
            rank + 1,
            l.kind,
            l.location,
        );
    }
}

/// tokio-console could not start (its port taken): said once, when stallscope's log is up.
static CONSOLE_UNAVAILABLE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps `line` (why tokio-console could not start) for [`say_console_unavailable`]: the
/// console's layer is built before the subscriber it goes into is installed, so saying it then
/// would say it to no one.
#[cfg_attr(not(feature = "console"), allow(dead_code))]
pub(crate) fn console_unavailable(line: String) {
    *CONSOLE_UNAVAILABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(line);
}

/// Says once, as a WARN, why tokio-console could not start, if it could not.
fn say_console_unavailable() {
    let line = CONSOLE_UNAVAILABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(line) = line {
        tracing::warn!(target: "stallscope", "{line}");
    }
}

/// The start-up line: the mode, the threshold, the clock, stacks, where exports go and (full
/// mode, feature `console`) whether tokio-console runs, so a reader knows stallscope is on and
/// what it sees.
pub(crate) fn measuring(engine: &Engine, how: &Measuring) {
    let config = &engine.config;
    let stacks = if !config.capture_stacks {
        "off"
    } else if cfg!(all(
        tokio_unstable,
        feature = "stacks",
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        "on"
    } else {
        "unavailable in this build"
    };
    let exporting = engine
        .sinks()
        .iter()
        .find_map(|sink| sink.describe_export());
    let mode = match how {
        Measuring::TaskSpans => "full mode (tokio task spans)".to_owned(),
        Measuring::PollHooks { runtime } => {
            format!("production mode (poll hooks on runtime {runtime})")
        }
    };
    say_console_unavailable();
    // Read before the event is dispatched, when the dispatcher is in reach.
    let console = console_state(how);
    tracing::info!(
        target: "stallscope",
        threshold_ms = ms(config.slow_poll_threshold),
        clock = clock_source(engine.clock_source),
        stacks,
        exporting,
        console,
        "measuring in {mode}",
    );
}

/// tokio-console as the start-up line tells it: whether its layer is in the subscriber (full
/// mode), or that its feature brings tokio's task spans back (production mode).
#[cfg(feature = "console")]
fn console_state(how: &Measuring) -> Option<&'static str> {
    Some(match how {
        Measuring::TaskSpans => {
            let composed = tracing::dispatcher::get_default(|dispatch| {
                dispatch
                    .downcast_ref::<console_subscriber::ConsoleLayer>()
                    .is_some()
            });
            use crate::config::{parse_bool, vars::CONSOLE};
            let switched_off =
                std::env::var(CONSOLE).is_ok_and(|v| parse_bool(CONSOLE, &v).ok() == Some(false));
            if composed {
                "on"
            } else if switched_off {
                "off (STALLSCOPE_CONSOLE=off)"
            } else {
                "off: its layer is not in the subscriber; add .with(stallscope::console_layer())"
            }
        }
        Measuring::PollHooks { .. } => {
            "feature `console` turns tokio's `tracing` feature on, so every task makes spans \
             again; production mode needs neither"
        }
    })
}

#[cfg(not(feature = "console"))]
fn console_state(_how: &Measuring) -> Option<&'static str> {
    None
}

/// The guard was dropped before anything was measured, and measuring goes on: the summary was
/// logged at start-up and the exporters stopped (said once per instance).
pub(crate) fn guard_dropped_early() {
    tracing::warn!(
        target: "stallscope",
        hint = "keep the guard for the program's whole life: `let _guard = stallscope.guard();` \
                (or `stallscope::init()`) in main, not `let _ = ...` or a guard local to a \
                set-up function",
        "guard dropped early: stallscope measures on, but it logged its summary before anything \
         ran and its exporters have stopped",
    );
}

/// Production mode found a runtime without its poll hooks: its tasks are not measured (said once
/// per runtime).
#[cfg(tokio_unstable)]
pub(crate) fn runtime_not_measured(runtime: &str, seen_from: &str) {
    static HINT: Hint = Hint::new(
        "production mode measures the runtimes whose builder went through instrument_runtime: \
         call stallscope.instrument_runtime(&mut builder) for every runtime you build (a runtime \
         per connection or per thread included), or share one instrumented runtime",
    );
    tracing::warn!(
        target: "stallscope",
        runtime,
        seen_from,
        hint = HINT.once(),
        "runtime {runtime} is not measured: its tasks run without stallscope's poll hooks",
    );
}

/// Once tasks ran, no `runtime.spawn` span means tokio's `tracing` feature (or the global
/// subscriber) is missing. Returns whether the check is settled.
pub(crate) fn warn_if_no_task_spans(engine: &Engine, at_shutdown: bool) -> bool {
    if engine.task_spans_seen.load(Relaxed) || engine.hooks_installed.load(Relaxed) {
        return true;
    }
    let tasks_ran = engine
        .runtimes
        .snapshot()
        .iter()
        .any(|r| r.alive_tasks > 0 || r.worker_busy_time > Duration::ZERO);
    // No subscriber in the process lets a TRACE span through (a filter on the whole registry):
    // no task span can come. A layer built before its runtime never learns of the runtime (it
    // learns of runtimes from their task spans), so this is said at the latest when the guard
    // drops.
    let level = tracing::level_filters::LevelFilter::current();
    let hidden_by = (engine.in_subscriber.load(Relaxed)
        && level < tracing::level_filters::LevelFilter::TRACE)
        .then_some(level);
    if !cfg!(tokio_unstable) || !(tasks_ran || (at_shutdown && hidden_by.is_some())) {
        return false;
    }
    if engine.no_task_spans_said.swap(true, Relaxed) {
        return true;
    }
    match hidden_by {
        Some(level) => tracing::warn!(
            target: "stallscope",
            max_level = %level,
            "no tokio task spans seen: a filter on the whole subscriber lets nothing more verbose \
             than {level} through, and tokio's task spans are TRACE spans of target `tokio`; put \
             the filter on your fmt layer (fmt::layer().with_filter(stallscope::log_filter())), \
             not on the registry; slow-poll detection is off until then"
        ),
        None => tracing::warn!(
            target: "stallscope",
            "no tokio task spans seen although tasks ran: enable tokio's `tracing` feature \
             (tokio = {{ features = [\"tracing\"] }}), make the subscriber with the stallscope layer the \
             global default, and do not filter out TRACE spans of target `tokio` globally; slow-poll \
             detection is off until then"
        ),
    }
    true
}

/// Said once at start-up when the clock's tick is not the default.
pub(crate) fn clock_tick(tick: std::time::Duration, coarse: bool) -> String {
    let timed = if coarse {
        format!("longer ones are timed to within {tick:?}")
    } else {
        "longer ones are timed by the CPU's counter".to_owned()
    };
    format!(
        "timing to a {tick:?} clock tick: polls, lock waits and holds under {:?} are counted, \
         not timed, {timed}",
        tick * 2
    )
}

/// The start-up line's `clock` field: which clock times polls, lock waits and holds.
fn clock_source(source: crate::clock::Source) -> String {
    match source {
        crate::clock::Source::Counter { .. } => "tsc".to_owned(),
        crate::clock::Source::Coarse { why } => format!("coarse ({why})"),
    }
}

/// Said once at start-up by an instance whose clock tick was not applied: the process's clock
/// ticks as the first instance asked.
pub(crate) fn tick_already_fixed(
    requested: std::time::Duration,
    tick: std::time::Duration,
) -> String {
    format!(
        "clock tick {requested:?} not applied: this process's clock already ticks every {tick:?} \
         (the first stallscope instance fixes it for the whole process), so polls under {:?} are \
         counted, not timed",
        tick * 2
    )
}

/// Said at start-up by an instance built while another exports over OTLP.
#[cfg(feature = "_otlp")]
pub(crate) const SECOND_EXPORTER: &str =
    "OTLP export is off for this stallscope instance: another \
    instance in this process exports already, and the two would write the same series (same names, \
    same labels) with different values. Use one instance: the guard init() returns has \
    instrument_runtime and watch_runtime";

/// Said when a second stallscope layer is composed into a subscriber that has one.
pub(crate) const SECOND_LAYER: &str = "a second stallscope layer in one subscriber is ignored: the \
    first one measures. Compose one stallscope layer per subscriber (stallscope::layer() or init(), \
    not both) and keep its guard";

/// Said once at start-up when built without `--cfg tokio_unstable`.
pub(crate) const WITHOUT_TOKIO_UNSTABLE: &str = "built without `--cfg tokio_unstable`: tokio emits no task \
    spans, so slow polls, per-task busy time and blocking-pool waits cannot be measured, and tokio-console \
    is unavailable; the stable runtime metrics (workers, alive tasks, global queue depth, worker \
    utilization, parks) keep flowing. Add `rustflags = [\"--cfg\", \"tokio_unstable\"]` under [build] in \
    .cargo/config.toml to get the rest";
