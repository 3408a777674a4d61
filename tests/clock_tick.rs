//! A configured clock tick (`Builder::clock_tick`, `STALLSCOPE_CLOCK_TICK`): polls under two
//! ticks are counted, not timed, longer ones are timed to within a tick, and the clock's thread
//! wakes once a tick instead of every 0.5 ms. Its own test binary: the tick is per process.

mod support;

use std::time::Duration;

use support::capture::{reports_with, stallscope_from, Mode};
use support::idle::clock_thread_wakeups;

const TICK: Duration = Duration::from_millis(10);

#[test]
fn a_longer_tick_counts_short_polls_times_long_ones_and_wakes_less() {
    let guard = stallscope_from(
        stallscope::Builder::new().clock_tick(TICK),
        Mode::Production,
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();

    // Polls of 2 ms: under two ticks, so counted in the bucket holding 20 ms, whether or not
    // a tick fell inside them.
    let short_site = line!() + 1;
    let short = runtime.spawn(async {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(2));
            tokio::task::yield_now().await;
        }
    });
    runtime.block_on(short).unwrap();

    // One poll of 600 ms, with the clock's thread's wakeups counted while it runs.
    let wakeups = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(150));
        let before = clock_thread_wakeups();
        std::thread::sleep(Duration::from_millis(300));
        clock_thread_wakeups() - before
    });
    let long_site = line!() + 1;
    let long = runtime.spawn(async { std::thread::sleep(Duration::from_millis(600)) });
    runtime.block_on(long).unwrap();
    // The runtime's shutdown waits for the after-poll hooks of the tasks' last polls.
    drop(runtime);

    // Every 0.5 ms it would wake ~600 times in 300 ms; every 10 ms, ~30.
    let wakeups = wakeups.join().unwrap();
    assert!(
        wakeups <= 90,
        "the clock's thread woke {wakeups} times in 300 ms with a 10 ms tick"
    );

    let snapshot = guard.snapshot();
    let site = |line| {
        snapshot
            .tasks_in("tests/clock_tick.rs")
            .find(|t| t.location.line == line)
            .unwrap_or_else(|| panic!("the task spawned at line {line}"))
    };
    assert_eq!(snapshot.clock_tick, TICK);
    let bounds = &snapshot.histogram_bounds;
    let fast_bucket = bounds.iter().position(|b| *b >= 0.020).unwrap();
    let short = &site(short_site).polls;
    assert_eq!(
        short.count, 6,
        "5 sleeping polls and the last one: {short:?}"
    );
    assert_eq!(
        short.counts[fast_bucket], 6,
        "polls under two ticks are counted in the bucket holding {}s: {short:?}",
        bounds[fast_bucket]
    );
    let long = &site(long_site).polls;
    assert_eq!(long.count, 1);
    assert!(
        (Duration::from_millis(585)..Duration::from_millis(900)).contains(&long.max),
        "a 600 ms poll timed to within a 10 ms tick measured {:?}",
        long.max
    );
    let live = reports_with(&format!("tests/clock_tick.rs:{long_site}:"));
    assert!(
        live.iter().any(|r| r.contains("stall in progress")),
        "the clock's thread watched the stall while it ran: {live:?}"
    );

    let said = reports_with("timing to a 10ms clock tick: polls, lock waits and holds under 20ms");
    assert_eq!(said.len(), 1, "the tick is said at start-up: {said:?}");

    // A later instance cannot change the process's tick, and says so when it starts.
    let later = stallscope::Builder::new()
        .clock_tick(Duration::from_millis(2))
        .build()
        .unwrap()
        .guard();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    later.instrument_runtime(&mut builder);
    builder.build().unwrap().block_on(async {
        tokio::spawn(async {}).await.unwrap();
    });
    let said = reports_with("clock tick 2ms not applied");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("already ticks every 10ms"), "{said:?}");
}
