//! tokio-console sees what stallscope sees: a client speaking the console's own gRPC protocol
//! (`console-api`, as `tokio-console` itself does) watches a running scenario.

mod support;

use std::time::Duration;

use support::console::{start, watch, Seen};
use support::examples;

#[test]
fn the_console_shows_the_blocking_task_with_its_busy_time() {
    let port = examples::free_port();
    let _scenario = start("blocking_in_async", &["--variant", "sleep"], port);
    let task = examples::spawn_site("slow_sleep");
    let seen = watch(port, Duration::from_secs(25), |s| {
        s.busy_at(&task) >= Duration::from_millis(1990)
    });
    let busy = seen.busy_at(&task);
    assert!(
        busy >= Duration::from_millis(1990) && busy < Duration::from_secs(3),
        "busy time of the task at {task}: {busy:?}; tasks seen: {:?}",
        seen.task_locations.values().collect::<Vec<_>>()
    );
}

#[test]
fn the_console_shows_the_blocking_pool_and_its_queue_depth_changing() {
    let port = examples::free_port();
    let _scenario = start(
        "blocking_pool_starvation",
        &["--jobs", "6", "--pool", "2", "--job-ms", "300"],
        port,
    );
    let depths = |s: &Seen| -> Vec<u64> {
        s.resource_attributes
            .iter()
            .filter(|((id, name), _)| {
                name == "queue_depth"
                    && s.resource_types
                        .get(id)
                        .is_some_and(|t| t == "BlockingPool")
            })
            .flat_map(|(_, values)| values.iter().filter_map(|v| v.parse().ok()))
            .collect()
    };
    let seen = watch(port, Duration::from_secs(25), |s| {
        let d = depths(s);
        d.iter().any(|v| *v >= 3) && d.contains(&0)
    });
    let d = depths(&seen);
    assert!(
        d.iter().any(|v| *v >= 3) && d.contains(&0),
        "queue_depth values seen on the BlockingPool resource: {d:?}; resources: {:?}; attributes: {:?}",
        seen.resource_types,
        seen.resource_attributes.keys().collect::<Vec<_>>()
    );
    let busy_threads: Vec<&String> = seen
        .resource_attributes
        .iter()
        .filter(|((_, name), _)| name == "busy_threads")
        .flat_map(|(_, v)| v)
        .collect();
    assert!(
        busy_threads.iter().any(|v| *v == "2"),
        "busy_threads: {busy_threads:?}"
    );
}

#[test]
fn the_console_shows_the_stalled_worker_and_its_blocking_line_live() {
    let port = examples::free_port();
    let _scenario = start("blocking_in_async", &["--variant", "sleep"], port);
    let attribute = |s: &Seen, attribute: &str| -> Vec<String> {
        s.resource_attributes
            .iter()
            .filter(|((id, name), _)| {
                name == attribute
                    && s.resource_types
                        .get(id)
                        .is_some_and(|t| t == "WorkerStalls")
            })
            .flat_map(|(_, values)| values.clone())
            .collect()
    };
    let blocked_in_slow_operation = |s: &Seen| {
        attribute(s, "blocked_in")
            .iter()
            .any(|v| v.contains("slow_operation") && v.contains("examples/blocking_in_async.rs:"))
    };
    let seen = watch(port, Duration::from_secs(25), |s| {
        blocked_in_slow_operation(s) && attribute(s, "stalled_workers").contains(&"1".into())
    });
    assert!(
        blocked_in_slow_operation(&seen),
        "blocked_in on the WorkerStalls resource: {:?}; resources: {:?}",
        attribute(&seen, "blocked_in"),
        seen.resource_types
    );
    assert!(
        attribute(&seen, "stalled_workers").contains(&"1".into()),
        "stalled_workers: {:?}",
        attribute(&seen, "stalled_workers")
    );
    let task = examples::spawn_site("slow_sleep");
    assert!(
        attribute(&seen, "stalled_task")
            .iter()
            .any(|t| t.starts_with(&task)),
        "stalled_task: {:?}",
        attribute(&seen, "stalled_task")
    );
}

#[test]
fn the_console_follows_a_stall_while_it_lasts() {
    let port = examples::free_port();
    // A 2 s sleep on the only worker; the threshold is 100 ms.
    let _scenario = start("blocking_in_async", &["--variant", "sleep"], port);
    let is_stalls = |s: &Seen, id: &u64| {
        s.resource_types
            .get(id)
            .is_some_and(|t| t == "WorkerStalls")
    };
    // Every state of the resource the console published: (stall_ms, stalled_workers).
    let states = |s: &Seen| -> Vec<(Option<u64>, Option<String>)> {
        s.resource_states
            .iter()
            .filter(|(_, id, _)| is_stalls(s, id))
            .map(|(_, _, attributes)| {
                (
                    attributes.get("stall_ms").and_then(|v| v.parse().ok()),
                    attributes.get("stalled_workers").cloned(),
                )
            })
            .collect()
    };
    let late_in_the_stall = |s: &Seen| {
        states(s)
            .iter()
            .any(|(ms, workers)| ms.is_some_and(|ms| ms >= 1500) && workers.as_deref() == Some("1"))
    };
    let seen = watch(port, Duration::from_secs(25), late_in_the_stall);
    let states = states(&seen);
    // The duration so far follows the stall, past the value it had when found (100 ms) and
    // when its stack was sampled again (1.1 s).
    assert!(
        late_in_the_stall(&seen),
        "no state 1.5 s into the stall with the worker counted: {states:?}"
    );
    // Whenever the duration grew, the stalled worker was counted in the same state.
    for pair in states.windows(2) {
        let [(before, _), (after, workers)] = pair else {
            unreachable!()
        };
        if after.is_some_and(|a| before.is_none_or(|b| a > b)) {
            assert_eq!(
                workers.as_deref(),
                Some("1"),
                "stall_ms grew to {after:?} with stalled_workers {workers:?}: {states:?}"
            );
        }
    }
}
