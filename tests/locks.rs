//! The std lock wrappers: wait and hold times attributed to the right lock, and a wait on a
//! tokio worker reported as blocking inside async.

mod support;

use std::sync::Arc;
use std::time::Duration;

use stallscope::sync::{Mutex, RwLock};
use support::capture::{hold_elsewhere, reports_with, Mode};

fn stallscope() -> &'static stallscope::Guard {
    support::capture::stallscope(Duration::from_millis(30), Mode::Production)
}

fn lock_stats(name: &str) -> stallscope::snapshot::LockStats {
    support::capture::lock_stats(stallscope(), name)
}

#[test]
fn a_mutex_held_50ms_makes_the_waiter_wait_about_50ms() {
    stallscope();
    let lock = Arc::new(Mutex::named("held-50ms", 0u32));
    let l = lock.clone();
    let holder = hold_elsewhere(move |held| {
        let _guard = l.lock().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(50));
    });
    *lock.lock().unwrap() += 1; // waits for the holder
    holder.join().unwrap();

    let stats = lock_stats("held-50ms");
    assert_eq!(stats.kind, stallscope::LockKind::StdMutex);
    assert!(
        stats.location.file.ends_with("tests/locks.rs"),
        "{:?}",
        stats.location
    );
    assert_eq!(stats.acquisitions, 2);
    assert_eq!(
        stats.contentions, 1,
        "the holder did not wait, the waiter did"
    );
    // The waiter started after the holder had the lock: it waited up to 50 ms, never more
    // than the hold plus scheduling delay on a loaded machine.
    assert!(
        stats.wait.max >= Duration::from_millis(35) && stats.wait.max < Duration::from_millis(250),
        "wait {:?}",
        stats.wait.max
    );
    assert!(
        stats.hold.max >= Duration::from_millis(49),
        "hold {:?}",
        stats.hold.max
    );
    assert_eq!(
        stats.blocking_waits, 0,
        "plain threads are not tokio workers"
    );
}

#[test]
fn rwlock_writers_and_readers_wait_on_the_same_lock() {
    stallscope();
    let lock = Arc::new(RwLock::named("config", String::from("v1")));
    let l = lock.clone();
    let writer = hold_elsewhere(move |held| {
        let _guard = l.write().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(50));
    });
    assert_eq!(*lock.read().unwrap(), "v1"); // waits for the writer
    writer.join().unwrap();
    let l = lock.clone();
    let reader = hold_elsewhere(move |held| {
        let _guard = l.read().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(50));
    });
    *lock.write().unwrap() = "v2".into(); // waits for the reader
    reader.join().unwrap();

    let stats = lock_stats("config");
    assert_eq!(stats.kind, stallscope::LockKind::StdRwLock);
    assert_eq!(stats.acquisitions, 4);
    assert_eq!(stats.contentions, 2);
    assert!(
        stats.wait.count == 2 && stats.wait.max >= Duration::from_millis(35),
        "{:?}",
        stats.wait
    );
}

#[test]
fn waiting_on_a_std_lock_inside_a_task_is_reported_as_blocking_the_worker() {
    let guard = stallscope();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();

    let lock = Arc::new(Mutex::named("shared-state", ()));
    let l = lock.clone();
    let holder = hold_elsewhere(move |held| {
        let _guard = l.lock().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(150));
    });
    let task_lock = lock.clone();
    runtime.block_on(async move {
        tokio::spawn(async move {
            // A std lock in async code: the worker thread waits for the holder.
            drop(task_lock.lock().unwrap());
        })
        .await
        .unwrap();
    });
    holder.join().unwrap();

    let stats = lock_stats("shared-state");
    assert_eq!(stats.blocking_waits, 1, "{stats:?}");
    let reports = reports_with("");
    let report = reports
        .iter()
        .find(|r| r.contains("blocking lock wait") && r.contains("\"shared-state\""))
        .unwrap_or_else(|| panic!("a blocking-wait report: {reports:?}"));
    assert!(
        report.contains("while polling a task spawned at tests/locks.rs:"),
        "{report}"
    );
    assert!(report.contains("tokio::sync"), "the hint: {report}");
}
