//! Several runtimes in one process, told apart; locks measured and exported.

mod support;

use std::time::Duration;

use support::examples::{self, OutputWithin};
use support::victoria::VictoriaMetrics;

fn run(vm: &VictoriaMetrics, service: &str, args: &[&str]) -> String {
    let output = examples::command("threads_with_runtimes")
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env("OTEL_SERVICE_NAME", service)
        // No console server: its fixed port may be taken by another test's example.
        .env("STALLSCOPE_CONSOLE", "off")
        // The sampler sees the per-thread runtimes dropped well before the final export: each
        // must still be in it, with its final figures.
        .env("STALLSCOPE_SAMPLE_INTERVAL", "10ms")
        .output_within(Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn runtimes(vm: &VictoriaMetrics, service: &str) -> f64 {
    let q = format!(
        r#"count(count by (tokio_runtime_id) (tokio_runtime_worker_count{{service_name="{service}"}}))"#
    );
    vm.wait_for(&q, Duration::from_secs(10))[0].value
}

#[test]
fn two_and_five_runtimes_are_told_apart_and_the_std_lock_blocks_workers() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let two = run(&vm, "runtimes-2", &["--threads", "2"]);
    let five = run(&vm, "runtimes-5", &["--threads", "5"]);

    assert_eq!(runtimes(&vm, "runtimes-2"), 2.0);
    assert_eq!(runtimes(&vm, "runtimes-5"), 5.0);
    let gauge = vm.wait_for(
        r#"tokio_runtimes{service_name="runtimes-5"}"#,
        Duration::from_secs(5),
    );
    assert_eq!(gauge[0].value, 5.0);

    assert!(two.contains("a second tokio runtime is running"), "{two}");
    assert!(
        !two.contains("tokio runtimes in this process"),
        "two is not flagged: {two}"
    );
    assert!(
        five.contains("4 tokio runtimes in this process"),
        "flagged at the 4th: {five}"
    );
    // The per-thread runtimes are found at their block_on call site, from five, not from two.
    let block_on_site = "runtime per thread: block_on at examples/threads_with_runtimes.rs:";
    assert!(
        five.contains(block_on_site) && five.contains("has run on 4 different tokio runtimes"),
        "{five}"
    );
    assert!(!two.contains(block_on_site), "{two}");
    assert!(
        two.contains("summary: 2 tokio runtimes ran runtimes=2 each=\"runtime "),
        "{two}"
    );
    assert!(
        five.contains("summary: 5 tokio runtimes ran runtimes=5 each=\"runtime "),
        "{five}"
    );
    // Five threads holding the std lock 40 ms each: workers wait past the 100 ms threshold,
    // and the report says on which runtime.
    assert!(
        five.lines()
            .any(|l| l.contains("blocking lock wait: a tokio worker")
                && l.contains(
                    r#"std::sync::Mutex "counter" (created at examples/threads_with_runtimes.rs:"#
                )
                && l.contains(" runtime=")),
        "{five}"
    );
    assert!(
        five.contains("summary: lock #1 std::sync::Mutex \"counter\""),
        "{five}"
    );

    // The lock metrics in the time-series database.
    let counter =
        r#"service_name="runtimes-5",tokio_lock_name="counter",tokio_lock_kind="std::sync::Mutex""#;
    let waits = vm.wait_for(
        &format!(r#"tokio_lock_wait_duration_seconds_count{{{counter},outcome="acquired"}}"#),
        Duration::from_secs(10),
    );
    assert!(waits[0].value >= 4.0, "{waits:?}");
    assert_eq!(
        waits[0]
            .labels
            .get("tokio_lock_operation")
            .map(String::as_str),
        Some("lock")
    );
    let contentions = vm.wait_for(
        &format!("tokio_lock_contentions_total{{{counter}}}"),
        Duration::from_secs(5),
    );
    assert_eq!(contentions[0].value, waits[0].value);
    let blocking = vm.wait_for(
        &format!("tokio_lock_blocking_waits_total{{{counter}}}"),
        Duration::from_secs(5),
    );
    assert!(blocking[0].value >= 1.0, "{blocking:?}");
    // tokio::sync::Mutex held across an await by ten tasks: waits and holds, without code changes.
    let tokio_mutex = r#"service_name="runtimes-5",tokio_lock_kind="tokio::sync::Mutex""#;
    let held = vm.wait_for(
        &format!("tokio_lock_hold_duration_seconds_count{{{tokio_mutex}}}"),
        Duration::from_secs(5),
    );
    // Ten holds of ~20 ms; the final read of the vector is an 11th hold, exported only if a
    // loaded machine stretched it to 1 ms or more.
    assert!(
        (10.0..=11.0).contains(&held[0].value),
        "ten holds of ~20 ms: {held:?}"
    );
    let held_time = vm.wait_for(
        &format!("tokio_lock_hold_duration_seconds_sum{{{tokio_mutex}}}"),
        Duration::from_secs(5),
    );
    assert!(held_time[0].value >= 0.195, "{held_time:?}");
    let tokio_waits = vm.wait_for(
        &format!(r#"tokio_lock_wait_duration_seconds_count{{{tokio_mutex},outcome="acquired"}}"#),
        Duration::from_secs(5),
    );
    assert!(tokio_waits[0].value >= 8.0, "{tokio_waits:?}");
}

#[test]
fn one_runtime_and_an_atomic_have_no_lock_waits() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let stderr = run(&vm, "runtimes-fixed", &["--fixed"]);
    assert_eq!(runtimes(&vm, "runtimes-fixed"), 1.0);
    assert!(!stderr.contains("blocking lock wait"), "{stderr}");
    assert!(
        !stderr.contains("tokio runtimes in this process"),
        "{stderr}"
    );
    assert!(!stderr.contains("slow poll:"), "{stderr}");
}
