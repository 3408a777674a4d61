//! Several runtimes in one process (full mode): a `block_on` inside another runtime's task and
//! a runtime built per iteration are reported, naming the call site; reports name the runtime.

mod support;

use std::time::Duration;

use support::capture::{reports_with, Mode};

fn stallscope() -> &'static stallscope::Guard {
    support::capture::stallscope(Duration::from_millis(50), Mode::Full)
}

fn multi_thread(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn block_on_of_another_runtime_inside_a_task_is_reported_with_both_runtimes() {
    stallscope();
    let outer = multi_thread(2);
    let inner = std::sync::Arc::new(current_thread());
    let inner_id = inner.handle().id().to_string();
    let outer_id = outer.handle().id().to_string();
    // The last reference must not drop inside a task (tokio forbids dropping a runtime there).
    let keep = inner.clone();
    let (task_line, block_on_line) = outer.block_on(async move {
        let line = line!() + 1;
        let task = tokio::spawn(async move {
            tokio::task::block_in_place(|| {
                let line = line!() + 1;
                inner.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
                line
            })
        });
        (line, task.await.unwrap())
    });
    drop(keep);
    let reports = reports_with("block_on inside another runtime's task");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert!(
        report.contains(&format!(
            "spawned at tests/runtimes_in_runtimes.rs:{task_line}:"
        )) && report.contains(&format!("on runtime {outer_id} called block_on at tests/runtimes_in_runtimes.rs:{block_on_line}:"))
            && report.contains(&format!("on runtime {inner_id} ")),
        "{report}"
    );
}

#[test]
fn block_on_of_the_same_runtime_inside_block_in_place_is_not_flagged() {
    stallscope();
    let runtime = multi_thread(2);
    let line = runtime.block_on(async {
        tokio::spawn(async {
            tokio::task::block_in_place(|| {
                let line = line!() + 1;
                tokio::runtime::Handle::current().block_on(async {});
                line
            })
        })
        .await
        .unwrap()
    });
    let needle = format!("block_on at tests/runtimes_in_runtimes.rs:{line}:");
    assert!(
        reports_with(&needle).is_empty(),
        "{:?}",
        reports_with(&needle)
    );
}

#[test]
fn a_runtime_built_per_iteration_is_flagged_at_the_fourth_with_its_block_on_site() {
    stallscope();
    let mut line = 0;
    for i in 0..5u64 {
        let runtime = current_thread();
        line = line!() + 1;
        runtime.block_on(async move { tokio::time::sleep(Duration::from_millis(i)).await });
    }
    let needle = format!("block_on at tests/runtimes_in_runtimes.rs:{line}:");
    let reports: Vec<_> = reports_with(&needle)
        .into_iter()
        .filter(|r| r.starts_with("runtime per thread"))
        .collect();
    assert_eq!(reports.len(), 1, "once per call site: {reports:?}");
    assert!(
        reports[0].contains("has run on 4 different tokio runtimes"),
        "{}",
        reports[0]
    );
}

#[test]
fn two_runtimes_sharing_a_block_on_helper_are_not_flagged() {
    stallscope();
    fn run(runtime: &tokio::runtime::Runtime) -> u32 {
        let line = line!() + 1;
        runtime.block_on(async {});
        line
    }
    let line = run(&current_thread());
    run(&current_thread());
    let needle = format!("block_on at tests/runtimes_in_runtimes.rs:{line}:");
    assert!(
        reports_with(&needle).is_empty(),
        "{:?}",
        reports_with(&needle)
    );
}
