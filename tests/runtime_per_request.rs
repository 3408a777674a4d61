//! A service that builds a runtime per request (the hazard stallscope flags) is measured
//! correctly for as long as it runs: dropped runtimes are forgotten (no longer sampled,
//! exported or counted), runtimes after the 64th are sampled, and stallscope's own way of
//! telling that a runtime was dropped shows nowhere in what it reports.

use std::time::{Duration, Instant};

/// One request: a current-thread runtime with stallscope's poll hooks, one task that waits
/// (as on I/O, so the runtime parks), on this thread as every request before it.
fn request(stallscope: &stallscope::StallscopeLayer) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    stallscope.instrument_runtime(&mut builder);
    let runtime = builder.enable_all().build().unwrap();
    runtime.block_on(async {
        tokio::spawn(tokio::time::sleep(Duration::from_micros(100)))
            .await
            .unwrap()
    });
    runtime
}

/// Waits (at most 5 s) until `done` holds for the guard's snapshot.
fn wait_for(guard: &stallscope::Guard, done: impl Fn(&stallscope::Snapshot) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if done(&guard.snapshot()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn dropped_runtimes_are_forgotten_and_later_ones_are_sampled() {
    let stallscope = stallscope::Builder::new()
        .sample_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let guard = stallscope.guard();
    // Far more requests than the 64 runtimes watched at once, each runtime dropped after it.
    for _ in 0..150 {
        drop(request(&stallscope));
    }
    assert!(
        wait_for(&guard, |s| s.runtimes.is_empty()),
        "every runtime was dropped; still watched: {:?}",
        guard.snapshot().runtimes
    );

    // A runtime that lives on, built after the 150 others: watched and sampled.
    let alive = request(&stallscope);
    let id = alive.handle().id().to_string();
    // Sampled, its task count the application's (its one task is done: none alive).
    assert!(
        wait_for(&guard, |s| s.runtimes.len() == 1
            && s.runtimes[0].runtime == id
            && s.runtimes[0].workers == 1
            && s.runtimes[0].alive_tasks == 0),
        "the live runtime {id} is sampled: {:?}",
        guard.snapshot().runtimes
    );
    // Every poll counted is the application's: one task per request, two polls each (the
    // sleep's first poll and the one it wakes for).
    let snapshot = guard.snapshot();
    let sites: Vec<&str> = snapshot
        .tasks
        .iter()
        .map(|t| t.location.file.as_str())
        .collect();
    assert_eq!(sites, ["tests/runtime_per_request.rs"], "{snapshot:#?}");
    assert_eq!(snapshot.tasks[0].polls.count, 2 * 151);
    assert_eq!(
        snapshot.runtimes_watched, 151,
        "every runtime counts as having run"
    );
    drop(alive);
    assert!(wait_for(&guard, |s| s.runtimes.is_empty()));
}
