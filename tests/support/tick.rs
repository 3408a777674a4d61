//! A configured clock tick (`Builder::clock_tick`, `STALLSCOPE_CLOCK_TICK`): polls under two
//! ticks are counted, not timed, longer ones are timed to within a tick, and the clock's thread
//! wakes once a tick instead of every 0.5 ms.

use std::time::Duration;

use super::capture::{reports_with, stallscope_from, Mode};
use super::idle::count_clock_wakeups;

const TICK: Duration = Duration::from_millis(10);

/// The scenario, in either mode: its own test binary per mode (the tick is per process).
pub fn counted_timed_and_woken(mode: Mode) {
    let guard = stallscope_from(stallscope::Builder::new().clock_tick(TICK), mode);
    let runtime = super::capture::runtime(guard, mode);

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
    let wakeups = count_clock_wakeups(Duration::from_millis(150), Duration::from_millis(300));
    let long_site = line!() + 1;
    let long = runtime.spawn(async { std::thread::sleep(Duration::from_millis(600)) });
    runtime.block_on(long).unwrap();
    // The runtime's shutdown waits for the end of the tasks' last polls (production mode: the
    // after-poll hooks run after a join handle resolves).
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
            .tasks_in("support/tick.rs")
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
    // Counted, not timed: a poll that straddled a tick would add its coarse 10 ms.
    assert_eq!(short.sum, Duration::ZERO, "no poll was timed: {short:?}");
    let long = &site(long_site).polls;
    assert_eq!(long.count, 1);
    assert!(
        (Duration::from_millis(585)..Duration::from_millis(900)).contains(&long.max),
        "a 600 ms poll timed to within a 10 ms tick measured {:?}",
        long.max
    );
    let live = reports_with(&format!("support/tick.rs:{long_site}:"));
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
