//! Full mode counts every poll of a task exactly once, as production mode does: tokio enters a
//! task's span for each poll, and once more to drop the finished future (tracing's
//! `Instrumented` enters its span around the drop); that last enter is no poll.

mod support;

use std::time::Duration;

use support::capture::Mode;

/// Yields per task: each task is polled this many times plus once.
const YIELDS: u64 = 50;
const TASKS: u64 = 20;

#[test]
fn each_poll_of_a_task_counts_once_and_dropping_the_finished_future_does_not() {
    let guard = support::capture::stallscope(Duration::from_millis(100), Mode::Full);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    runtime.block_on(async {
        let yielding: Vec<_> = (0..TASKS)
            .map(|_| {
                named("yielding", async {
                    for _ in 0..YIELDS {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let at_once: Vec<_> = (0..TASKS).map(|_| named("at once", async {})).collect();
        for handle in yielding.into_iter().chain(at_once) {
            handle.await.unwrap();
        }
    });

    // tokio drops a task's future (and closes its span) before it wakes the JoinHandle: every
    // count is final once the handles are awaited.
    let snapshot = guard.snapshot();
    let polls_of = |name: &str| {
        let sites: Vec<_> = snapshot
            .tasks
            .iter()
            .filter(|t| t.task_name.as_deref() == Some(name))
            .collect();
        assert_eq!(
            sites.len(),
            1,
            "one site for {name:?}: {:#?}",
            snapshot.tasks
        );
        sites[0].polls.count
    };
    assert_eq!(polls_of("yielding"), TASKS * (YIELDS + 1), "yielding tasks");
    assert_eq!(polls_of("at once"), TASKS, "tasks done at their first poll");
}

/// A task named `name` (its site is the name and this spawn location).
fn named<F>(name: &str, future: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::task::Builder::new()
        .name(name)
        .spawn(future)
        .unwrap()
}
