//! `Builder::build()` has no process-wide effect: it starts no thread. The exporters, the
//! runtime sampler and the default instance of the drop-in wrappers start with the instance's
//! first use (a guard taken, the layer registered with a subscriber, a runtime instrumented).
//!
//! One test in its own binary: the test harness runs it on its only other thread, so the
//! process's threads are the test's own.

use std::time::Duration;

/// The names of this process's threads, sorted.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn build_starts_no_thread_and_the_first_guard_starts_the_instance() {
    // OTLP on (to a port nothing listens on) and inside a runtime: what `build` used to start
    // at once, the exporter's threads and the runtime sampler, would show here.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = runtime.enter();

    let before = threads();
    let layer = stallscope::Builder::new()
        .otlp(stallscope::Toggle::On)
        .slow_poll_threshold(Duration::from_millis(50))
        .build()
        .expect("valid configuration");
    let after_build = threads();
    assert_eq!(after_build, before, "Builder::build() started threads");

    // Not vacuous: the count sees the threads the instance starts when it is first used.
    let guard = layer.guard();
    let started = threads();
    assert!(
        started.len() > before.len(),
        "the first guard started nothing: {before:?} -> {started:?}"
    );
    drop(guard);
}
