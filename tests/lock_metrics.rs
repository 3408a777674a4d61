//! Lock waits and holds reach a real time-series database (VictoriaMetrics over OTLP/HTTP), per
//! lock creation site, kind, operation and outcome: tokio's Mutex, RwLock (read and write) and
//! Semaphore without code changes, and the std wrappers.
//!
//! One test in this binary: it sets the process's OTEL_* variables and its global subscriber.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::victoria::VictoriaMetrics;
use tracing_subscriber::prelude::*;

const FILE: &str = "tests/lock_metrics.rs";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every lock below is held this long while exactly one other acquisition waits for it.
const HOLD_MS: u64 = 60;

/// Lines of the lock creations, to check the attribution, and the waits as the waiters
/// themselves timed them (`Instant` around the acquisition).
struct Lines {
    mutex: u32,
    rwlock: u32,
    semaphore: u32,
    std_rwlock: u32,
    truth: Truth,
}

#[derive(Default)]
struct Truth {
    mutex: Duration,
    mutex_cancelled: Duration,
    read: Duration,
    write: Duration,
    acquire: Duration,
    std_read: Duration,
}

/// Times `f`'s future as its caller sees it.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

fn contention(runtime: &tokio::runtime::Runtime) -> Lines {
    let (mutex, mutex_line) = (Arc::new(tokio::sync::Mutex::new(0u32)), line!());
    let (rwlock, rwlock_line) = (Arc::new(tokio::sync::RwLock::new(0u32)), line!());
    let (permits, semaphore_line) = (Arc::new(tokio::sync::Semaphore::new(1)), line!());
    let mut truth = Truth::default();
    runtime.block_on(async {
        // Mutex: a waiter waits out the hold; another acquisition gives up after 20 ms.
        let held = mutex.clone().lock_owned().await;
        let waiter = {
            let mutex = mutex.clone();
            tokio::spawn(async move { timed(mutex.lock()).await.1 })
        };
        let (given_up, after) = timed(tokio::time::timeout(ms(20), mutex.lock())).await;
        assert!(given_up.is_err());
        truth.mutex_cancelled = after;
        tokio::time::sleep(ms(HOLD_MS - 20)).await;
        drop(held);
        truth.mutex = waiter.await.unwrap();

        // RwLock: a reader waits for a writer, then a writer waits for a reader.
        let writing = rwlock.clone().write_owned().await;
        let reader = {
            let rwlock = rwlock.clone();
            tokio::spawn(async move { timed(rwlock.read()).await.1 })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(writing);
        truth.read = reader.await.unwrap();
        let reading = rwlock.clone().read_owned().await;
        let writer = {
            let rwlock = rwlock.clone();
            tokio::spawn(async move { timed(rwlock.write()).await.1 })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(reading);
        truth.write = writer.await.unwrap();

        // Semaphore: one permit, one waiter.
        let permit = permits.clone().acquire_owned().await.unwrap();
        let acquirer = {
            let permits = permits.clone();
            tokio::spawn(async move { timed(permits.acquire()).await.1 })
        };
        tokio::time::sleep(ms(HOLD_MS)).await;
        drop(permit);
        truth.acquire = acquirer.await.unwrap();

        // A std guard held across an .await (a block_on future may hold one: it need not be Send).
        let across = stallscope::sync::Mutex::named("across-await", ());
        let guard = across.lock().unwrap();
        tokio::time::sleep(ms(5)).await;
        drop(guard);
    });

    // The std RwLock wrapper, between plain threads: a reader waits for a writer.
    let std_rwlock_line = line!() + 1;
    let std_rwlock = Arc::new(stallscope::sync::RwLock::named("settings", 0u32));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let writer = {
        let lock = std_rwlock.clone();
        std::thread::spawn(move || {
            let _guard = lock.write().unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(ms(HOLD_MS));
        })
    };
    held_rx.recv().unwrap();
    let started = Instant::now();
    assert_eq!(*std_rwlock.read().unwrap(), 0);
    truth.std_read = started.elapsed();
    writer.join().unwrap();

    Lines {
        mutex: mutex_line,
        rwlock: rwlock_line,
        semaphore: semaphore_line,
        std_rwlock: std_rwlock_line,
        truth,
    }
}

/// `(count, sum)` of a lock's wait histogram for one operation and outcome.
fn wait(vm: &VictoriaMetrics, kind: &str, line: u32, op: &str, outcome: &str) -> (f64, f64) {
    let labels = format!(
        r#"service_name="lock-metrics",tokio_lock_kind="{kind}",code_file_path="{FILE}",code_line_number="{line}",tokio_lock_operation="{op}",outcome="{outcome}""#
    );
    let count = vm.wait_for(
        &format!("tokio_lock_wait_duration_seconds_count{{{labels}}}"),
        Duration::from_secs(10),
    );
    let sum = vm.wait_for(
        &format!("tokio_lock_wait_duration_seconds_sum{{{labels}}}"),
        Duration::from_secs(5),
    );
    assert_eq!(count.len(), 1, "one series: {count:?}");
    (count[0].value, sum[0].value)
}

/// stallscope's figure for one contended acquisition against the waiter's own timing: equal
/// within the coarse clock's error (its 0.5 ms tick, plus however late its thread runs on a
/// loaded machine). The waiter itself waited for most of the hold.
fn assert_waited(what: &str, (count, sum): (f64, f64), truth: Duration, nominal_ms: u64) {
    assert_eq!(count, 1.0, "{what}: one contended acquisition");
    let truth_s = truth.as_secs_f64();
    assert!(
        (sum - truth_s).abs() < 0.010,
        "{what}: stallscope says {sum:.4} s, the waiter timed {truth_s:.4} s"
    );
    assert!(
        truth >= ms(nominal_ms / 2) && truth < ms(nominal_ms + 300),
        "{what}: the waiter waited {truth:?}, nominally {nominal_ms} ms"
    );
    eprintln!(
        "{what}: stallscope {:.1} ms, waiter's own timing {:.1} ms (nominally {nominal_ms} ms)",
        sum * 1e3,
        truth_s * 1e3
    );
}

#[test]
fn lock_waits_and_holds_reach_the_database_by_site_kind_operation_and_outcome() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint());
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "60000");
    std::env::set_var("OTEL_SERVICE_NAME", "lock-metrics");
    let layer = stallscope::Builder::new()
        .otlp(stallscope::Toggle::On)
        .build()
        .unwrap();
    let guard = layer.guard();
    tracing_subscriber::registry().with(layer).init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lines = contention(&runtime);
    drop(runtime);
    drop(guard); // the final export

    let mutex = "tokio::sync::Mutex";
    assert_waited(
        "tokio Mutex lock",
        wait(&vm, mutex, lines.mutex, "lock", "acquired"),
        lines.truth.mutex,
        HOLD_MS,
    );
    assert_waited(
        "tokio Mutex lock given up (20 ms timeout)",
        wait(&vm, mutex, lines.mutex, "lock", "cancelled"),
        lines.truth.mutex_cancelled,
        20,
    );

    let rwlock = "tokio::sync::RwLock";
    assert_waited(
        "tokio RwLock read",
        wait(&vm, rwlock, lines.rwlock, "read", "acquired"),
        lines.truth.read,
        HOLD_MS,
    );
    assert_waited(
        "tokio RwLock write",
        wait(&vm, rwlock, lines.rwlock, "write", "acquired"),
        lines.truth.write,
        HOLD_MS,
    );
    assert_waited(
        "tokio Semaphore acquire",
        wait(
            &vm,
            "tokio::sync::Semaphore",
            lines.semaphore,
            "acquire",
            "acquired",
        ),
        lines.truth.acquire,
        HOLD_MS,
    );
    assert_waited(
        "std RwLock read",
        wait(
            &vm,
            "std::sync::RwLock",
            lines.std_rwlock,
            "read",
            "acquired",
        ),
        lines.truth.std_read,
        HOLD_MS,
    );

    // Holds: the write hold of the tokio RwLock, by operation; the std writer's hold.
    let held = vm.wait_for(
        &format!(
            r#"tokio_lock_hold_duration_seconds_sum{{service_name="lock-metrics",tokio_lock_kind="{rwlock}",tokio_lock_operation="write"}}"#
        ),
        Duration::from_secs(5),
    );
    assert!(
        held[0].value >= (HOLD_MS - 2) as f64 / 1e3,
        "write held {:?}",
        held[0].value
    );
    let std_held = vm.wait_for(
        r#"tokio_lock_hold_duration_seconds_sum{service_name="lock-metrics",tokio_lock_name="settings",tokio_lock_operation="write"}"#,
        Duration::from_secs(5),
    );
    assert!(
        std_held[0].value >= (HOLD_MS - 2) as f64 / 1e3,
        "{std_held:?}"
    );
    // Contentions count the acquired waits, per lock.
    let contentions = vm.wait_for(
        &format!(
            r#"tokio_lock_contentions_total{{service_name="lock-metrics",tokio_lock_kind="{rwlock}"}}"#
        ),
        Duration::from_secs(5),
    );
    assert_eq!(contentions[0].value, 2.0, "{contentions:?}");
    let across = vm.wait_for(
        r#"tokio_lock_held_across_await_total{service_name="lock-metrics",tokio_lock_name="across-await"}"#,
        Duration::from_secs(5),
    );
    assert_eq!(across[0].value, 1.0, "{across:?}");
}
