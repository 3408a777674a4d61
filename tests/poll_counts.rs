//! Production mode counts every poll, per spawn location, exactly: each worker counts fast polls
//! in a small per-thread table (one entry per spawn location, direct-mapped) and publishes them
//! when an entry is reused, when it parks and when it exits; snapshots add what is still
//! pending. Here more locations than the table has entries share two workers, so entries are
//! reused while tasks from other locations are still running.

mod support;

use std::time::Duration;

use support::capture::Mode;

/// Yields per task: each task is polled this many times plus once.
const YIELDS: u64 = 300;

/// `tokio::spawn` from the caller's location (each call below is its own spawn location).
#[track_caller]
fn spawn_yielding() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        for _ in 0..YIELDS {
            tokio::task::yield_now().await;
        }
    })
}

/// 100 spawn locations (distinct columns on one line are distinct locations), 3 tasks each.
#[rustfmt::skip]
fn spawn_from_100_locations() -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
        handles.extend([spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding(), spawn_yielding()]);
    }
    handles
}

#[test]
fn every_poll_is_counted_at_its_spawn_location_with_more_locations_than_table_entries() {
    let guard = support::capture::stallscope(Duration::from_millis(100), Mode::Production);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();

    runtime.block_on(async {
        for handle in spawn_from_100_locations() {
            handle.await.unwrap();
        }
    });

    // Read while the workers are alive (what they still hold is added from their tables),
    // and again after they are gone (everything published).
    assert_every_poll_counted(guard, "workers alive");
    drop(runtime);
    assert_every_poll_counted(guard, "runtime dropped");
}

/// Every site's poll count, exactly. A task's last poll is counted when the after-poll hook
/// runs, which tokio calls just after the task completes and wakes its `JoinHandle`: the
/// awaiting thread can read before that, so the count may trail by a poll for an instant; it
/// never goes past, and it must arrive.
fn assert_every_poll_counted(guard: &stallscope::Guard, moment: &str) {
    let expected = 3 * (YIELDS + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let snapshot = guard.snapshot();
        let sites: Vec<_> = snapshot
            .tasks
            .iter()
            .filter(|t| t.location.file == "tests/poll_counts.rs")
            .collect();
        assert_eq!(
            sites.len(),
            100,
            "{moment}: one site per location: {sites:#?}"
        );
        for site in &sites {
            assert!(
                site.polls.count <= expected,
                "{moment}: counted twice at {:?}: {} polls",
                site.location,
                site.polls.count
            );
        }
        let short: Vec<_> = sites.iter().filter(|s| s.polls.count < expected).collect();
        if short.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{moment}: 3 tasks polled {} times each, fewer counted: {short:#?}",
            YIELDS + 1
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
