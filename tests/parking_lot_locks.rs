//! The parking_lot wrappers (feature `parking_lot`): waits attributed to the right lock and
//! operation, timed-out waits counted as given up, a wait on a tokio worker reported.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use stallscope::sync::parking_lot::{Mutex, RwLock};
use support::capture::{hold_elsewhere, reports_with, Mode};

fn stallscope() -> &'static stallscope::Guard {
    support::capture::stallscope(Duration::from_millis(30), Mode::Production)
}

fn lock_stats(name: &str) -> stallscope::snapshot::LockStats {
    support::capture::lock_stats(stallscope(), name)
}

#[test]
fn a_parking_lot_mutex_wait_matches_the_waiters_own_timing() {
    stallscope();
    let line = line!() + 1;
    let lock = Arc::new(Mutex::named("pl-held-50ms", 0u32));
    let l = lock.clone();
    let holder = hold_elsewhere(move |held| {
        let _guard = l.lock();
        held();
        std::thread::sleep(Duration::from_millis(50));
    });
    let started = Instant::now();
    *lock.lock() += 1;
    let truth = started.elapsed();
    holder.join().unwrap();

    let stats = lock_stats("pl-held-50ms");
    assert_eq!(stats.kind, stallscope::LockKind::ParkingLotMutex);
    assert_eq!(
        (stats.location.file.as_str(), stats.location.line),
        ("tests/parking_lot_locks.rs", line)
    );
    assert_eq!((stats.acquisitions, stats.contentions), (2, 1));
    let diff = stats.wait.sum.abs_diff(truth);
    assert!(
        diff < Duration::from_millis(10) && truth >= Duration::from_millis(25),
        "stallscope {:?}, the waiter's own timing {truth:?}",
        stats.wait.sum
    );
    assert!(
        stats.hold.max >= Duration::from_millis(48),
        "{:?}",
        stats.hold
    );
}

#[test]
fn a_timed_out_try_lock_for_is_a_given_up_wait() {
    stallscope();
    let lock = Arc::new(Mutex::named("pl-timeout", ()));
    let l = lock.clone();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = hold_elsewhere(move |held| {
        let _guard = l.lock();
        held();
        let _ = release_rx.recv();
    });
    assert!(lock.try_lock_for(Duration::from_millis(20)).is_none());
    assert!(lock.try_lock().is_none());
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(lock.try_lock_for(Duration::from_millis(20)).is_some());

    let stats = lock_stats("pl-timeout");
    assert_eq!(stats.cancellations, 1, "{stats:?}");
    assert!(
        stats.cancelled_wait.max >= Duration::from_millis(18)
            && stats.cancelled_wait.max < Duration::from_millis(300),
        "{:?}",
        stats.cancelled_wait
    );
    assert_eq!(stats.contentions, 0, "{stats:?}");
}

#[test]
fn a_parking_lot_rwlock_reader_waits_for_the_writer() {
    stallscope();
    let lock = Arc::new(RwLock::named("pl-config", 1u32));
    let l = lock.clone();
    let writer = hold_elsewhere(move |held| {
        let _guard = l.write();
        held();
        std::thread::sleep(Duration::from_millis(40));
    });
    assert_eq!(*lock.read(), 1);
    writer.join().unwrap();
    *lock.write() += 1;
    assert_eq!(*lock.try_read().unwrap(), 2);

    let stats = lock_stats("pl-config");
    assert_eq!(stats.kind, stallscope::LockKind::ParkingLotRwLock);
    assert_eq!((stats.acquisitions, stats.contentions), (3, 1), "{stats:?}");
    assert!(
        stats.wait.max >= Duration::from_millis(20),
        "{:?}",
        stats.wait
    );
}

#[test]
fn waiting_on_a_parking_lot_mutex_inside_a_task_blocks_the_worker() {
    let guard = stallscope();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();

    let lock = Arc::new(Mutex::named("pl-shared", ()));
    let l = lock.clone();
    let holder = hold_elsewhere(move |held| {
        let _guard = l.lock();
        held();
        std::thread::sleep(Duration::from_millis(100));
    });
    let task_lock = lock.clone();
    runtime.block_on(async move {
        tokio::spawn(async move { drop(task_lock.lock()) })
            .await
            .unwrap();
    });
    holder.join().unwrap();

    assert_eq!(lock_stats("pl-shared").blocking_waits, 1);
    let reports = reports_with("");
    assert!(
        reports.iter().any(|r| r.contains("blocking lock wait")
            && r.contains(r#"parking_lot::Mutex "pl-shared""#)
            && r.contains("while polling a task spawned at tests/parking_lot_locks.rs:")),
        "{reports:?}"
    );
}
