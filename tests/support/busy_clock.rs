//! A saturated runtime: the workers poll short tasks back to back, so a poll is always in
//! progress. The clock's thread then lets the clock stand for up to 4 ms between ticks instead
//! of waking every 0.5 ms. What that must not cost, checked poll by poll against the precise
//! clock: a short poll that spans the end of such a spell is never timed as long (it would
//! read as long as the spell), and a 20 ms poll among them is timed at most one spell short and
//! never long. What it buys: the clock's thread wakes far less often than every tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::capture::Mode;

/// The clock's tick (the default) and the longest spell it is let stand while the workers
/// are busy with short polls.
const TICK: Duration = Duration::from_micros(500);
const SPELL: Duration = Duration::from_millis(4);

/// How late the clock's thread may tick without the spell being recorded (four ticks): a
/// poll's end can read that stale on workers that keep every core busy.
const UNRECORDED_LATENESS: Duration = Duration::from_millis(2);

/// How much longer than the precise clock saw stallscope may time a group of polls because a
/// worker was preempted just outside the part of the poll the precise clock covers.
const PREEMPTED: Duration = Duration::from_millis(10);

/// Context switches of the clock's thread so far (`stallscope-watchdog`, cut to 15 bytes).
fn clock_thread_switches() -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "stallscope-watc" {
            return None;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        Some(
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum(),
        )
    })
}

/// Spins for `d` of wall time.
fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

/// What the short tasks saw of their own polls on the precise clock.
#[derive(Default)]
struct Precise {
    /// Polls longer than one tick: the only ones the coarse clock could time (two ticks or
    /// more) without a spell in the way.
    timable: AtomicU64,
    /// Their total length.
    timable_ns: AtomicU64,
}

pub fn busy_workers_keep_durations_true(mode: Mode) {
    let guard = super::capture::stallscope(Duration::from_millis(100), mode);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if mode == Mode::Production {
        guard.instrument_runtime(&mut builder);
    }
    let runtime = builder.build().unwrap();
    // The first poll starts the clock's thread.
    runtime.block_on(async { tokio::spawn(async {}).await.unwrap() });

    let precise = Arc::new(Precise::default());
    let busy = Arc::new(AtomicBool::new(true));
    let short_polls = line!() + 4;
    let shorts: Vec<_> = (0..8)
        .map(|_| {
            let (precise, busy) = (precise.clone(), busy.clone());
            runtime.spawn(async move {
                while busy.load(Relaxed) {
                    let began = Instant::now();
                    spin(Duration::from_micros(20));
                    let took = began.elapsed();
                    if took > TICK {
                        precise.timable.fetch_add(1, Relaxed);
                        precise
                            .timable_ns
                            .fetch_add(took.as_nanos() as u64, Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Let the clock settle into its busy rhythm, then count its thread's wakeups.
    std::thread::sleep(Duration::from_millis(300));
    let (switches_before, counted_from) = (clock_thread_switches(), Instant::now());

    // Among them, a poll of 20 ms every 200 ms: each one's real length on the precise clock.
    let long_polls = line!() + 1;
    let long = runtime.spawn(async {
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let began = Instant::now();
            spin(Duration::from_millis(20));
            lengths.push(began.elapsed());
            tokio::time::sleep(Duration::from_millis(180)).await;
        }
        lengths
    });
    let lengths = runtime.block_on(long).unwrap();
    let (switches_after, counted_for) = (clock_thread_switches(), counted_from.elapsed());
    busy.store(false, Relaxed);
    for short in shorts {
        runtime.block_on(short).unwrap();
    }
    drop(runtime);

    let snapshot = guard.snapshot();
    let site = |line: u32| {
        snapshot
            .tasks_in("support/busy_clock.rs")
            .find(|t| t.location.line == line)
            .unwrap_or_else(|| panic!("the site at line {line}: {snapshot:#?}"))
            .polls
            .clone()
    };

    // Short polls: whatever stallscope timed, the precise clock saw at least as long, within a
    // tick per poll (a poll can start up to a tick after the value it read), and a margin for
    // a worker preempted in the few instructions of a poll the precise clock does not cover.
    // Timing the spells' ends as polls would add about a spell per spell: seconds here.
    let shorts = site(short_polls);
    let timable = precise.timable.load(Relaxed);
    let timable_time = Duration::from_nanos(precise.timable_ns.load(Relaxed));
    assert!(
        shorts.count > 10_000,
        "the short tasks kept the workers busy: {shorts:?}"
    );
    assert!(
        shorts.sum <= timable_time + TICK * timable as u32 + PREEMPTED,
        "stallscope timed {:?} of the short polls; on the precise clock only {timable} polls \
         were longer than a tick, {timable_time:?} in all: short polls that spanned a spell \
         of the standing clock were timed as long",
        shorts.sum
    );

    // The 20 ms polls: each timed, never long, and short by at most the spell it began in
    // (timed from the spell's end) and an end read up to four ticks late.
    let long = site(long_polls);
    let real: Duration = lengths.iter().sum();
    let n = lengths.len() as u32;
    assert!(
        long.count >= u64::from(n)
            && long.sum >= real.saturating_sub((SPELL + UNRECORDED_LATENESS + TICK) * n),
        "the {n} polls of 20 ms ({lengths:?}) were timed {:?} in all: more than a spell short",
        long.sum
    );
    assert!(
        long.sum <= real + TICK * n + PREEMPTED,
        "the {n} polls of 20 ms ({lengths:?}) were timed {:?} in all: longer than they were",
        long.sum
    );

    // The clock's thread woke far less often than every tick (2,000 times a second, two
    // context switches each when it takes a worker's core).
    let (Some(before), Some(after)) = (switches_before, switches_after) else {
        panic!("the clock's thread is running");
    };
    let per_second = (after - before) as f64 / counted_for.as_secs_f64();
    assert!(
        per_second < 1_000.0,
        "the clock's thread switched {per_second:.0} times a second while the workers were busy \
         with short polls"
    );
}
