//! The watchdog does not sleep while a worker is busy outside its polls. A worker with park
//! hooks that has not parked since it last ran keeps the watchdog awake, even when its looks
//! find no poll in progress. So a stall that begins after a long stretch of such work is still
//! reported live within a look of passing the threshold, not up to a sleeping watchdog's
//! 100 ms in. Production mode; its own test binary, as the clock and its watchdog are per process.

mod support;

use std::time::{Duration, Instant};

use support::capture::{reports_with, Mode};

/// Under the watchdog's 100 ms look while it sleeps (at 100 ms and over, that look alone finds a
/// stall before it passes the threshold).
const THRESHOLD: Duration = Duration::from_millis(20);

/// Stalls after a stretch without polls; the first one also starts the worker's measuring.
const STALLS: usize = 6;

/// A live report may come this long after the threshold: the watchdog looks every 2 ms at this
/// threshold, and a sleeping one only every 100 ms.
const LIVE_WITHIN: Duration = Duration::from_millis(25);

fn spin(d: Duration) {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

#[test]
fn a_worker_busy_outside_its_polls_keeps_the_watchdog_awake() {
    let guard = support::capture::stallscope(THRESHOLD, Mode::Production);
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();
    let site = line!() + 8;
    runtime.block_on(async {
        for _ in 0..STALLS {
            // The runtime's one thread runs `block_on`'s own future, which is no task: for
            // 250 ms no poll is in progress, and the thread does not park. (Not a multiple of
            // a sleeping watchdog's 100 ms looks: one would land just as the stall begins.)
            spin(Duration::from_millis(250));
            // Then a task blocks it for 150 ms.
            tokio::spawn(async { spin(Duration::from_millis(150)) })
                .await
                .unwrap();
        }
    });
    drop(runtime);

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
}
