//! Workers that park between short bursts of polls keep the clock fresh themselves (they bring
//! it to the time when they park and unpark), so the clock's thread ticks every two ticks
//! instead of every tick. What that must not cost, checked poll by poll against the precise
//! clock: no short poll is timed as long, and a 20 ms poll among them is timed to within the
//! few ticks the clock promises. The coarse clock (the fallback where the CPU's counter is not
//! trusted), production mode (poll hooks: the park hooks are theirs); its own test binary, as
//! the clock is per process.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::capture::Mode;
use support::spin;

/// The clock's default tick, and how late its thread may tick without the spell being recorded
/// (four ticks): a duration may read that much long or short.
const TICK: Duration = Duration::from_micros(500);
const UNRECORDED: Duration = Duration::from_millis(2);

/// How much longer than the precise clock saw stallscope may time a group of polls because a
/// worker was preempted just outside the part of the poll the precise clock covers.
const PREEMPTED: Duration = Duration::from_millis(10);

/// Context switches so far of the clock's thread (`stallscope-watchdog`, cut to 15 bytes).
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

#[test]
fn parking_workers_keep_the_clock_fresh_and_durations_true() {
    // The clock these workers keep fresh: the coarse one (the CPU's counter needs no keeping).
    support::capture::use_coarse_clock();
    let guard = support::capture::stallscope(Duration::from_millis(100), Mode::Production);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();
    // The first poll starts the clock's thread.
    runtime.block_on(async { tokio::spawn(async {}).await.unwrap() });

    // Sixteen tasks polled every millisecond for 20 µs: the workers poll in short bursts and
    // park between them. Each poll that took longer than a tick on the precise clock (the
    // only ones the coarse clock could time) is counted with its length.
    let (timable, timable_ns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let running = Arc::new(AtomicBool::new(true));
    let short_polls = line!() + 5;
    let shorts: Vec<_> = (0..16)
        .map(|_| {
            let (timable, timable_ns, running) =
                (timable.clone(), timable_ns.clone(), running.clone());
            runtime.spawn(async move {
                while running.load(Relaxed) {
                    let began = Instant::now();
                    spin(Duration::from_micros(20));
                    let took = began.elapsed();
                    if took > TICK {
                        timable.fetch_add(1, Relaxed);
                        timable_ns.fetch_add(took.as_nanos() as u64, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
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
    running.store(false, Relaxed);
    for short in shorts {
        runtime.block_on(short).unwrap();
    }
    drop(runtime);

    let snapshot = guard.snapshot();
    let site = |line: u32| {
        snapshot
            .tasks_in("tests/parking_workers_clock.rs")
            .find(|t| t.location.line == line)
            .unwrap_or_else(|| panic!("the site at line {line}: {snapshot:#?}"))
            .polls
            .clone()
    };

    // Short polls: whatever stallscope timed, the precise clock saw as long, within the few
    // ticks the clock promises per poll, and a margin for a worker preempted in the few
    // instructions of a poll the precise clock does not cover.
    let shorts = site(short_polls);
    let (timable, timable_time) = (
        timable.load(Relaxed),
        Duration::from_nanos(timable_ns.load(Relaxed)),
    );
    assert!(
        shorts.count > 5_000,
        "the short tasks were polled: {shorts:?}"
    );
    assert!(
        shorts.sum <= timable_time + (UNRECORDED + TICK) * timable as u32 + PREEMPTED,
        "stallscope timed {:?} of the short polls; on the precise clock {timable} were longer \
         than a tick, {timable_time:?} in all: short polls were timed as long",
        shorts.sum
    );

    // The 20 ms polls: each timed, to within the clock's few ticks.
    let long = site(long_polls);
    let real: Duration = lengths.iter().sum();
    let n = lengths.len() as u32;
    assert!(
        long.count >= u64::from(n) && long.sum >= real.saturating_sub((UNRECORDED + TICK) * n),
        "the {n} polls of 20 ms ({lengths:?}) were timed {:?} in all: too short",
        long.sum
    );
    assert!(
        long.sum <= real + (UNRECORDED + TICK) * n + PREEMPTED,
        "the {n} polls of 20 ms ({lengths:?}) were timed {:?} in all: too long",
        long.sum
    );

    // The clock's thread ticked every two ticks (measured: 960 to 1,000 switches a second), not
    // every tick (1,400 to 1,570 measured; a sleep of half a millisecond lasts longer): the
    // bound lies between the two.
    let (Some(before), Some(after)) = (switches_before, switches_after) else {
        panic!("the clock's thread is running");
    };
    let per_second = (after - before) as f64 / counted_for.as_secs_f64();
    eprintln!("the clock's thread switched {per_second:.0} times a second");
    assert!(
        per_second < 1_250.0,
        "the clock's thread switched {per_second:.0} times a second while the workers parked \
         between short bursts of polls"
    );
}
