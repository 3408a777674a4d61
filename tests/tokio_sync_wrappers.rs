//! The `tokio::sync` wrappers (`stallscope::sync::tokio`) in production mode (poll hooks, no
//! layer reading tokio's spans): waits attributed to the right lock, kind and creation site,
//! against the waiters' own timing; given-up acquisitions counted as cancelled; uncontended
//! acquisitions counted without a wait, keeping tokio's cooperative yields.

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stallscope::snapshot::LockStats;
use stallscope::sync::tokio::{Mutex, RwLock, Semaphore};
use stallscope::LockKind;
use support::capture::Mode;

/// Each contended lock below is held this long while one acquisition waits for it.
const HOLD_MS: u64 = 60;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The test process's instance. Each test calls it before creating its locks: a lock records
/// into the instance that exists when it is created.
fn stallscope() -> &'static stallscope::Guard {
    support::capture::stallscope(ms(100), Mode::Production)
}

fn lock_stats(name: &str) -> LockStats {
    support::capture::lock_stats(stallscope(), name)
}

/// A production-mode runtime: stallscope's poll hooks on two workers.
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    stallscope().instrument_runtime(&mut builder);
    builder.build().unwrap()
}

/// Times `f`'s future as its caller sees it.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// The lock was created at `tests/tokio_sync_wrappers.rs:line`, as `kind`.
fn assert_site(stats: &LockStats, kind: LockKind, line: u32) {
    assert_eq!(stats.kind, kind, "{stats:?}");
    assert_eq!(
        (stats.location.file.as_str(), stats.location.line),
        ("tests/tokio_sync_wrappers.rs", line),
        "{stats:?}"
    );
}

/// stallscope's summed waits against the waiters' own timing: equal within the coarse clock's
/// error (its 0.5 ms tick per reading, plus however late its thread runs on a loaded machine),
/// and each waiter waited for most of the hold.
fn assert_waited(what: &str, stats: &LockStats, truths: &[Duration]) {
    assert_eq!(stats.wait.count, truths.len() as u64, "{what}: {stats:?}");
    let truth: Duration = truths.iter().sum();
    let diff = stats.wait.sum.abs_diff(truth);
    assert!(
        diff < ms(5) * truths.len() as u32,
        "{what}: stallscope says {:?}, the waiters timed {truth:?}",
        stats.wait.sum
    );
    for t in truths {
        assert!(
            *t >= ms(HOLD_MS / 2) && *t < ms(HOLD_MS + 300),
            "{what}: a waiter waited {t:?}, nominally {HOLD_MS} ms"
        );
    }
    eprintln!(
        "{what}: stallscope {:.1} ms, the waiters' own timing {:.1} ms ({} waits, held {HOLD_MS} ms)",
        stats.wait.sum.as_secs_f64() * 1e3,
        truth.as_secs_f64() * 1e3,
        truths.len()
    );
}

#[test]
fn a_wrapped_tokio_mutex_held_60ms_makes_the_waiter_wait_about_60ms() {
    stallscope();
    let line = line!() + 1;
    let mutex = Arc::new(Mutex::named("tokio-held-60ms", 0u32));
    let truth = runtime().block_on(async {
        let held = mutex.clone().lock_owned().await;
        let waiter = {
            let mutex = mutex.clone();
            tokio::spawn(async move { timed(mutex.lock()).await.1 })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(held);
        let truth = waiter.await.unwrap();
        *mutex.lock().await += 1;
        truth
    });

    let stats = lock_stats("tokio-held-60ms");
    assert_site(&stats, LockKind::TokioMutex, line);
    assert_eq!(
        (stats.acquisitions, stats.contentions, stats.cancellations),
        (3, 1, 0),
        "the holder and the last lock did not wait, the waiter did: {stats:?}"
    );
    assert_waited("tokio Mutex lock", &stats, &[truth]);
    assert!(stats.hold.max >= ms(HOLD_MS - 2), "{:?}", stats.hold);
    assert_eq!(stats.hold.count, 3, "every guard's hold: {:?}", stats.hold);
    assert_eq!(
        stats.blocking_waits, 0,
        "a tokio lock suspends the task only"
    );
}

#[test]
fn wrapped_tokio_rwlock_readers_wait_for_the_writer_and_writers_for_readers() {
    stallscope();
    let line = line!() + 1;
    let lock = Arc::new(RwLock::named("tokio-config", 1u32));
    let (read, write) = runtime().block_on(async {
        let writing = lock.clone().write_owned().await;
        let reader = {
            let lock = lock.clone();
            tokio::spawn(async move { timed(async { *lock.read().await }).await })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(writing);
        let (value, read) = reader.await.unwrap();
        assert_eq!(value, 1);

        let reading = lock.clone().read_owned().await;
        let writer = {
            let lock = lock.clone();
            tokio::spawn(async move { timed(async { *lock.write().await += 1 }).await.1 })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(reading);
        (read, writer.await.unwrap())
    });
    assert_eq!(*lock.try_read().unwrap(), 2);

    let stats = lock_stats("tokio-config");
    assert_site(&stats, LockKind::TokioRwLock, line);
    assert_eq!((stats.acquisitions, stats.contentions), (4, 2), "{stats:?}");
    assert_waited("tokio RwLock read, then write", &stats, &[read, write]);
    assert!(stats.hold.max >= ms(HOLD_MS - 2), "{:?}", stats.hold);
}

#[test]
fn wrapped_semaphore_acquires_wait_for_permits() {
    stallscope();
    let line = line!() + 1;
    let permits = Arc::new(Semaphore::named("tokio-permits", 1));
    let truth = runtime().block_on(async {
        let permit = permits.clone().acquire_owned().await.unwrap();
        assert_eq!(permits.available_permits(), 0);
        let waiter = {
            let permits = permits.clone();
            tokio::spawn(async move {
                let (permit, waited) = timed(permits.acquire_many(2)).await;
                assert_eq!(permit.unwrap().num_permits(), 2);
                waited
            })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        permits.add_permits(1);
        drop(permit);
        waiter.await.unwrap()
    });
    assert_eq!(permits.available_permits(), 2);

    let stats = lock_stats("tokio-permits");
    assert_site(&stats, LockKind::TokioSemaphore, line);
    assert_eq!((stats.acquisitions, stats.contentions), (2, 1), "{stats:?}");
    assert_waited("tokio Semaphore acquire_many", &stats, &[truth]);
    assert!(stats.hold.max >= ms(HOLD_MS - 2), "{:?}", stats.hold);
}

#[test]
fn a_timeout_around_lock_that_fires_is_a_cancelled_wait() {
    stallscope();
    let mutex = Arc::new(Mutex::named("tokio-timeout", ()));
    let permits = Arc::new(Semaphore::named("tokio-closed", 0));
    runtime().block_on(async {
        let held = mutex.lock().await;
        assert!(tokio::time::timeout(ms(20), mutex.lock()).await.is_err());
        assert!(mutex.try_lock().is_err());
        drop(held);

        // A semaphore closed under a waiter: the wait ends without permits, given up too.
        let waiter = {
            let permits = permits.clone();
            tokio::spawn(async move { permits.acquire().await.is_err() })
        };
        tokio::time::sleep(ms(20)).await;
        permits.close();
        assert!(waiter.await.unwrap());
    });

    let stats = lock_stats("tokio-timeout");
    assert_eq!(
        (stats.acquisitions, stats.contentions, stats.cancellations),
        (1, 0, 1),
        "{stats:?}"
    );
    assert!(
        stats.cancelled_wait.max >= ms(18) && stats.cancelled_wait.max < ms(300),
        "given up after {:?}",
        stats.cancelled_wait.max
    );
    let closed = lock_stats("tokio-closed");
    assert_eq!(
        (closed.acquisitions, closed.cancellations),
        (0, 1),
        "{closed:?}"
    );
    assert!(closed.cancelled_wait.max >= ms(15), "{closed:?}");
}

#[test]
fn uncontended_locks_wait_for_nothing_and_still_yield_to_other_tasks() {
    stallscope();
    const LOCKS: u64 = 1_000;
    let counter = Arc::new(Mutex::named("tokio-uncontended", 0u64));
    let other_task_ran = Arc::new(AtomicBool::new(false));
    let mut builder = tokio::runtime::Builder::new_current_thread();
    stallscope().instrument_runtime(&mut builder);
    let runtime = builder.enable_all().build().unwrap();
    let looping = runtime.spawn({
        let counter = counter.clone();
        async move {
            // Queued behind this task on the one thread: it runs when this task yields.
            tokio::spawn({
                let other_task_ran = other_task_ran.clone();
                async move { other_task_ran.store(true, Relaxed) }
            });
            for _ in 0..LOCKS {
                *counter.lock().await += 1;
            }
            other_task_ran.load(Relaxed)
        }
    });
    let ran_during_the_loop = runtime.block_on(looping).unwrap();
    // As with tokio's own Mutex, the task's coop budget runs out and it yields: the other task
    // runs in the meantime. Those yields are not contention.
    assert!(ran_during_the_loop, "the loop never yielded");
    let stats = lock_stats("tokio-uncontended");
    assert_eq!(
        (stats.acquisitions, stats.contentions, stats.wait.count),
        (LOCKS, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.hold.count, LOCKS, "{:?}", stats.hold);
}
