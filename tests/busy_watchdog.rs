//! The watchdog does not sleep while a worker is busy outside its polls. A worker with park
//! hooks that has not parked since it last ran keeps the watchdog awake, even when its looks
//! find no poll in progress. So a stall that begins after a long stretch of such work is still
//! reported live within a look of passing the threshold, not up to a sleeping watchdog's
//! 100 ms in. And a thread that leaves its runtime without parking (a current-thread
//! runtime's `block_on` returns without a park) keeps the watchdog awake for a second at most.
//! Production mode; its own test binary, as the clock and its watchdog are per process.

mod support;

use std::time::Duration;

use support::capture::{reports_with, Mode};
use support::idle::count_clock_wakeups;
use support::spin;

/// Under the watchdog's 100 ms look while it sleeps (at 100 ms and over, that look alone finds a
/// stall before it passes the threshold).
const THRESHOLD: Duration = Duration::from_millis(20);

/// Stalls after a stretch without polls; the first one also starts the worker's measuring.
const STALLS: usize = 6;

/// A live report may come this long after the threshold: the watchdog looks every 2 ms at this
/// threshold, and a sleeping one only every 100 ms.
const LIVE_WITHIN: Duration = Duration::from_millis(40);

#[test]
fn a_worker_busy_outside_its_polls_keeps_the_watchdog_awake() {
    let guard = support::capture::stallscope(THRESHOLD, Mode::Production);
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();
    let site = line!() + 9;
    runtime.block_on(async {
        for i in 0..STALLS as u64 {
            // The runtime's one thread runs `block_on`'s own future, which is no task: for a
            // quarter of a second or so no poll is in progress, and the thread does not park.
            // (Of varying length: a sleeping watchdog's 100 ms looks land at a different point
            // of each stall, well after the threshold in some.)
            spin(Duration::from_millis(250 + 17 * i));
            // Then a task blocks it for 150 ms.
            tokio::spawn(async { spin(Duration::from_millis(150)) })
                .await
                .unwrap();
        }
    });
    drop(runtime);
    // This thread left the runtime unparked. Its last poll ended just now; a second later it
    // no longer keeps the watchdog awake (which would look every 2 ms at this threshold).
    let wakeups = count_clock_wakeups(Duration::from_millis(1500), Duration::from_millis(1000));

    let live = reports_with(&format!("busy_watchdog.rs:{site}:"));
    let live: Vec<_> = live
        .iter()
        .filter(|r| r.contains("stall in progress"))
        .collect();
    assert_eq!(live.len(), STALLS, "one live report per stall: {live:#?}");
    for report in live {
        let elapsed_ms: f64 = report
            .split("elapsed_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no elapsed_ms in {report}"));
        assert!(
            elapsed_ms < (THRESHOLD + LIVE_WITHIN).as_secs_f64() * 1e3,
            "a stall was reported live only {elapsed_ms} ms in (threshold {THRESHOLD:?}): the \
             watchdog slept while the worker was busy\n{report}"
        );
    }
    let wakeups = wakeups.join().unwrap();
    assert!(
        wakeups <= 30,
        "the watchdog woke {wakeups} times in a second after the worker left its runtime: a \
         thread that will never poll again keeps it awake"
    );
}
