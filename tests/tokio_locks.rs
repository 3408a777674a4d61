//! `tokio::sync` locks measured without code changes (full mode): wait and hold times per lock
//! creation site, read from tokio's own resource and async-op spans.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use stallscope::snapshot::LockStats;
use stallscope::LockKind;
use tracing_subscriber::prelude::*;

fn stallscope() -> &'static stallscope::Guard {
    static GUARD: OnceLock<stallscope::Guard> = OnceLock::new();
    GUARD.get_or_init(|| {
        let layer = stallscope::Builder::new().build().unwrap();
        let guard = layer.guard();
        tracing_subscriber::registry().with(layer).init();
        guard
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn lock_at(kind: LockKind, line: u32) -> LockStats {
    let snapshot = stallscope().snapshot();
    snapshot
        .locks
        .iter()
        .find(|l| {
            l.kind == kind && l.location.line == line && l.location.file.ends_with("tokio_locks.rs")
        })
        .cloned()
        .unwrap_or_else(|| panic!("{kind} created at line {line}: {:?}", snapshot.locks))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The longest wait at the lock lasted at least `at_least`, and not absurdly longer (a
/// margin that holds on a loaded 2-core machine).
fn assert_longest_wait(stats: &LockStats, at_least: Duration) {
    assert!(
        stats.wait.max >= at_least && stats.wait.max < ms(400),
        "longest wait {:?}, expected at least {at_least:?}: {stats:?}",
        stats.wait.max
    );
}

/// Holds `mutex` (an `Arc` of a tokio Mutex, or of stallscope's wrapper: the same API, no
/// common trait) across an await for 70 ms while a task waits for it, and gives up another
/// acquisition after 20 ms.
macro_rules! contend {
    ($mutex:expr) => {
        runtime().block_on(async {
            let held = $mutex.clone().lock_owned().await;
            let waiter = {
                let mutex = $mutex.clone();
                tokio::spawn(async move { *mutex.lock().await += 1 })
            };
            // An acquisition given up after 20 ms.
            assert!(tokio::time::timeout(ms(20), $mutex.lock()).await.is_err());
            tokio::time::sleep(ms(50)).await; // held across an await: the waiter waits ~70 ms
            drop(held);
            waiter.await.unwrap();
        })
    };
}

#[test]
fn a_tokio_mutex_held_across_an_await_makes_others_wait_and_cancelled_waits_count() {
    stallscope();
    let (mutex, line) = (Arc::new(tokio::sync::Mutex::new(0u32)), line!());
    contend!(mutex);
    let stats = lock_at(LockKind::TokioMutex, line);
    assert_eq!(stats.acquisitions, 2, "{stats:?}");
    assert_eq!(
        stats.contentions, 1,
        "only the spawned waiter waited: {stats:?}"
    );
    assert_longest_wait(&stats, ms(65));
    assert_eq!(stats.cancellations, 1, "{stats:?}");
    assert!(
        stats.cancelled_wait.max >= ms(19) && stats.cancelled_wait.max < ms(300),
        "cancelled after {:?}",
        stats.cancelled_wait.max
    );
    assert!(stats.hold.max >= ms(69), "held {:?}", stats.hold.max);
}

#[test]
fn tokio_rwlock_readers_wait_for_the_writer() {
    stallscope();
    let (lock, line) = (Arc::new(tokio::sync::RwLock::new(1u32)), line!());
    runtime().block_on(async {
        let writing = lock.clone().write_owned().await;
        let reader = {
            let lock = lock.clone();
            tokio::spawn(async move { *lock.read().await })
        };
        tokio::time::sleep(ms(50)).await;
        drop(writing);
        assert_eq!(reader.await.unwrap(), 1);
    });
    let stats = lock_at(LockKind::TokioRwLock, line);
    assert_eq!(stats.contentions, 1, "{stats:?}");
    assert_longest_wait(&stats, ms(45));
    assert!(stats.hold.max >= ms(49), "write held {:?}", stats.hold.max);
}

#[test]
fn tokio_semaphore_acquires_wait_for_a_permit() {
    stallscope();
    let (permits, line) = (Arc::new(tokio::sync::Semaphore::new(1)), line!());
    runtime().block_on(async {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let waiter = {
            let permits = permits.clone();
            tokio::spawn(async move { drop(permits.acquire().await.unwrap()) })
        };
        tokio::time::sleep(ms(50)).await;
        drop(permit);
        waiter.await.unwrap();
    });
    let stats = lock_at(LockKind::TokioSemaphore, line);
    assert_eq!(stats.acquisitions, 2, "{stats:?}");
    assert_eq!(stats.contentions, 1, "{stats:?}");
    assert_longest_wait(&stats, ms(45));
}

#[test]
fn a_std_guard_held_across_an_await_is_found_at_the_end_of_the_poll() {
    stallscope();
    let held = stallscope::sync::Mutex::named("held-across-await", 0u32);
    let well_used = stallscope::sync::Mutex::named("released-before-await", 0u32);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            {
                *well_used.lock().unwrap() += 1; // released before the await: fine
            }
            tokio::time::sleep(ms(5)).await;
            let guard = held.lock().unwrap();
            tokio::time::sleep(ms(20)).await; // the poll ends here with the guard held
            drop(guard);
        });
    let find = |name: &str| {
        stallscope()
            .snapshot()
            .locks
            .into_iter()
            .find(|l| l.name.as_deref() == Some(name))
            .unwrap()
    };
    assert!(find("held-across-await").held_across_await >= 1);
    assert_eq!(find("released-before-await").held_across_await, 0);
}

#[test]
fn a_wrapped_tokio_mutex_in_full_mode_is_counted_once() {
    stallscope();
    // tokio's `tracing` feature is on in this build: the inner tokio Mutex makes resource spans
    // too, at this same creation site (the wrapper passes its caller's location on).
    let line = line!() + 1;
    let mutex = Arc::new(stallscope::sync::tokio::Mutex::new(0u32));
    contend!(mutex);
    let snapshot = stallscope().snapshot();
    let here: Vec<_> = snapshot
        .locks
        .iter()
        .filter(|l| l.location.file.ends_with("tokio_locks.rs") && l.location.line == line)
        .collect();
    assert_eq!(here.len(), 1, "one lock site: {here:?}");
    let stats = here[0];
    assert_eq!(stats.kind, LockKind::TokioMutex);
    assert_eq!(
        (stats.acquisitions, stats.contentions, stats.cancellations),
        (2, 1, 1),
        "each acquisition once: {stats:?}"
    );
    assert_eq!(
        (stats.wait.count, stats.cancelled_wait.count),
        (1, 1),
        "{stats:?}"
    );
    assert_longest_wait(stats, ms(65));
    assert_eq!(stats.hold.count, 2, "every guard's hold once: {stats:?}");
    assert!(
        !snapshot
            .locks
            .iter()
            .any(|l| l.location.file.contains("src/sync/")),
        "no lock attributed to stallscope's own files: {:?}",
        snapshot.locks
    );
}

/// An acquisition first polled (and left waiting) on one thread and polled to the end on
/// another: the second thread never saw its spans made, and must still find the wait. No
/// runtime ran before the lock was made, so the clock that times the wait is started by the
/// lock itself.
#[test]
fn an_acquisition_polled_on_two_threads_is_one_contended_wait() {
    stallscope();
    let (mutex, line) = (Arc::new(tokio::sync::Mutex::new(0u32)), line!());
    let held = mutex.clone().try_lock_owned().unwrap();
    let mut acquire = Box::pin(mutex.clone().lock_owned());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(acquire.as_mut().poll(&mut cx).is_pending());
    std::thread::sleep(ms(30));
    drop(held);
    let guard = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(acquire)
    })
    .join()
    .unwrap();
    drop(guard);
    let stats = lock_at(LockKind::TokioMutex, line);
    // (A `try_lock` is no acquisition: tokio makes no async op for it.)
    assert_eq!(stats.acquisitions, 1, "{stats:?}");
    assert_eq!(stats.contentions, 1, "{stats:?}");
    assert_longest_wait(&stats, ms(29));
    assert_eq!(stats.cancellations, 0, "{stats:?}");
}

/// More acquisitions waiting at once than the layer's table of acquisitions holds (2,048): those
/// beyond it keep their state in the registry, and every one is counted once, as a wait.
#[test]
fn thousands_of_waiting_acquisitions_are_each_one_contended_wait() {
    stallscope();
    const WAITERS: usize = 3_000;
    let (permits, line) = (Arc::new(tokio::sync::Semaphore::new(0)), line!());
    runtime().block_on(async {
        // Each polled once here, so all wait at once before a permit exists.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let waiters: Vec<_> = (0..WAITERS)
            .map(|_| {
                let mut acquire = Box::pin(permits.clone().acquire_owned());
                assert!(acquire.as_mut().poll(&mut cx).is_pending());
                tokio::spawn(async move { drop(acquire.await.unwrap()) })
            })
            .collect();
        permits.add_permits(1);
        for waiter in waiters {
            waiter.await.unwrap();
        }
    });
    let stats = lock_at(LockKind::TokioSemaphore, line);
    assert_eq!(stats.acquisitions, WAITERS as u64, "{stats:?}");
    assert_eq!(stats.contentions, WAITERS as u64, "{stats:?}");
    assert_eq!(stats.cancellations, 0, "{stats:?}");
}
