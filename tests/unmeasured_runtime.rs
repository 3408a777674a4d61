//! Production mode sees only the runtimes built through `instrument_runtime`. When stallscope
//! runs on another runtime's thread (a drop-in called there, or the sampler watching it) after
//! that runtime polled tasks, it says once that the runtime is not measured; runtimes with
//! hooks, their blocking threads included, are never named.

mod support;

use std::time::{Duration, Instant};

use support::capture::{reports_with, Mode};

/// The process's instance, in production mode from the start: hooks go on a builder (never
/// built), as in a service whose instrumented runtime is the one it runs on.
fn stallscope() -> &'static stallscope::Guard {
    let guard = support::capture::stallscope_from(
        stallscope::Builder::new().sample_interval(Duration::from_millis(20)),
        Mode::Production,
    );
    guard.instrument_runtime(&mut tokio::runtime::Builder::new_current_thread());
    guard
}

/// A runtime without hooks, as a thread per connection builds one.
fn runtime_without_hooks() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs a few tasks on `runtime` and lets its worker park, which publishes its poll count.
async fn some_polls() {
    for _ in 0..3 {
        tokio::spawn(async {}).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn not_measured(runtime: &tokio::runtime::Runtime) -> Vec<String> {
    reports_with(&format!(
        "runtime {} is not measured",
        runtime.handle().id()
    ))
}

#[test]
fn spawn_blocking_on_a_runtime_without_hooks_names_it() {
    let measured = support::capture::runtime(stallscope(), Mode::Production);
    measured.block_on(some_polls());

    let connection = runtime_without_hooks();
    let line = line!() + 4;
    connection.block_on(async {
        some_polls().await;
        tokio::spawn(async {
            stallscope::task::spawn_blocking(|| ()).await.unwrap();
            stallscope::task::spawn_blocking(|| ()).await.unwrap();
        })
        .await
        .unwrap();
    });
    let reports = not_measured(&connection);
    assert_eq!(reports.len(), 1, "once per runtime: {reports:?}");
    assert!(
        reports[0].contains(&format!(
            "seen_from=\"stallscope::task::spawn_blocking at tests/unmeasured_runtime.rs:{line}:"
        )),
        "{}",
        reports[0]
    );
    assert!(
        reports_with("not measured")
            .iter()
            .any(|r| r.contains("instrument_runtime")),
        "the hint says what to do"
    );
    assert!(not_measured(&measured).is_empty());
}

#[test]
fn a_lock_made_on_a_runtime_without_hooks_names_it() {
    stallscope();
    let connection = runtime_without_hooks();
    connection.block_on(async {
        some_polls().await;
        tokio::spawn(async {
            let lock = stallscope::sync::Mutex::named("per-connection", 0);
            *lock.lock().unwrap() += 1;
        })
        .await
        .unwrap();
    });
    let reports = not_measured(&connection);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0]
            .contains("seen_from=\"a std::sync::Mutex created at tests/unmeasured_runtime.rs:"),
        "{}",
        reports[0]
    );
}

#[test]
fn the_sampler_names_a_watched_runtime_without_hooks() {
    let guard = stallscope();
    let main_runtime = runtime_without_hooks();
    guard.watch_runtime(main_runtime.handle());
    main_runtime.block_on(some_polls());
    let deadline = Instant::now() + Duration::from_secs(5);
    while not_measured(&main_runtime).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reports = not_measured(&main_runtime);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains("seen_from=\"the runtime sampler\""),
        "{}",
        reports[0]
    );
}

#[test]
fn drop_ins_on_a_runtime_with_hooks_name_nothing() {
    let guard = stallscope();
    let measured = support::capture::runtime(guard, Mode::Production);
    guard.watch_runtime(measured.handle());
    measured.block_on(async {
        some_polls().await;
        // From a task, from the runtime's blocking thread, and from block_on.
        tokio::spawn(async {
            stallscope::task::spawn_blocking(|| {
                let _lock = stallscope::sync::Mutex::new(());
                let nested = stallscope::task::spawn_blocking(|| ());
                drop(nested);
            })
            .await
            .unwrap();
        })
        .await
        .unwrap();
        stallscope::task::spawn_blocking(|| ()).await.unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        not_measured(&measured).is_empty(),
        "{:?}",
        not_measured(&measured)
    );
}
