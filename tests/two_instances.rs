//! Two stallscope instances in one process stay independent: each has its own threshold, its
//! own report and its own exports. One exports OTLP to a real VictoriaMetrics, the other does
//! not; each says only its own configuration and measures only its own runtime.

mod support;

use std::time::Duration;

use support::capture::{self, reports_with_all, runtime, Mode, REPORTS};
use support::victoria::VictoriaMetrics;

/// Blocks a worker of `runtime` for `ms` in one poll of a task spawned where this is called,
/// and returns that line.
#[track_caller]
fn block_a_worker(runtime: &tokio::runtime::Runtime, ms: u64) -> u32 {
    let line = std::panic::Location::caller().line();
    let task = runtime.spawn(async move { std::thread::sleep(Duration::from_millis(ms)) });
    runtime.block_on(task).unwrap();
    line
}

#[test]
fn two_instances_each_report_and_export_only_their_own() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    // Read by the instance that exports only: the other has OTLP off.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint());
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "60000");
    std::env::set_var("OTEL_SERVICE_NAME", "two-instances");
    capture::capture_reports();

    let exporting = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(20))
        .otlp(stallscope::Toggle::On)
        .build()
        .unwrap()
        .guard();
    let quiet = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(200))
        .otlp(stallscope::Toggle::Off)
        .build()
        .unwrap()
        .guard();
    let (exporting_runtime, quiet_runtime) = (
        runtime(&exporting, Mode::Production),
        runtime(&quiet, Mode::Production),
    );

    let over_both = block_a_worker(&exporting_runtime, 300);
    let over_20ms = block_a_worker(&exporting_runtime, 60);
    let quiet_over_200ms = block_a_worker(&quiet_runtime, 300);
    let quiet_under_200ms = block_a_worker(&quiet_runtime, 60);
    drop((exporting_runtime, quiet_runtime));

    // Snapshots: each instance's own threshold, and only its own runtime's tasks.
    let (mine, theirs) = (exporting.snapshot(), quiet.snapshot());
    assert_eq!(mine.slow_threshold, Duration::from_millis(20));
    assert_eq!(theirs.slow_threshold, Duration::from_millis(200));
    let slow_at = |snapshot: &stallscope::Snapshot, line: u32| {
        snapshot
            .tasks
            .iter()
            .find(|t| t.location.file.ends_with("two_instances.rs") && t.location.line == line)
            .map(|t| t.slow_polls)
    };
    assert_eq!(slow_at(&mine, over_both), Some(1), "{mine:#?}");
    assert_eq!(slow_at(&mine, over_20ms), Some(1), "{mine:#?}");
    assert_eq!(slow_at(&mine, quiet_over_200ms), None, "{mine:#?}");
    assert_eq!(slow_at(&theirs, quiet_over_200ms), Some(1), "{theirs:#?}");
    assert_eq!(slow_at(&theirs, quiet_under_200ms), Some(0), "{theirs:#?}");
    assert_eq!(slow_at(&theirs, over_20ms), None, "{theirs:#?}");

    // The log: each start-up line says its own threshold; only one says it exports.
    assert!(exporting.flush_reports() && quiet.flush_reports());
    let started = reports_with_all(&["measuring in production mode"]);
    assert_eq!(started.len(), 2, "{started:#?}");
    let exporting_line = reports_with_all(&["measuring in production mode", "threshold_ms=20.0"]);
    assert_eq!(exporting_line.len(), 1, "{started:#?}");
    assert!(
        exporting_line[0].contains("exporting=\"OTLP metrics (http/protobuf)"),
        "{exporting_line:?}"
    );
    let quiet_line = reports_with_all(&["measuring in production mode", "threshold_ms=200.0"]);
    assert_eq!(quiet_line.len(), 1, "{started:#?}");
    assert!(!quiet_line[0].contains("exporting"), "{quiet_line:?}");
    // Each slow poll is reported once, by its own instance, against its own threshold.
    let slow = |line: u32, threshold: &str| {
        reports_with_all(&[
            "slow poll",
            &format!("two_instances.rs:{line}:"),
            &format!("threshold_ms={threshold}"),
        ])
        .len()
    };
    assert_eq!(slow(over_both, "20.0"), 1);
    assert_eq!(slow(over_20ms, "20.0"), 1);
    assert_eq!(slow(quiet_over_200ms, "200.0"), 1);
    assert_eq!(
        reports_with_all(&["slow poll"]).len(),
        3,
        "{:#?}",
        REPORTS.lock()
    );

    // The receiver: the exporting instance's sites, none of the other's.
    drop(quiet);
    drop(exporting); // the final flush
    vm.force_flush();
    let count = r#"tokio_task_poll_duration_seconds_count{service_name="two-instances"}"#;
    let series = vm.wait_for(count, Duration::from_secs(10));
    let lines: Vec<String> = series
        .iter()
        .filter(|s| {
            s.label("code_file_path")
                .is_some_and(|f| f.ends_with("two_instances.rs"))
        })
        .filter_map(|s| s.label("code_line_number").map(str::to_owned))
        .collect();
    for line in [over_both, over_20ms] {
        assert!(lines.contains(&line.to_string()), "{line} not in {lines:?}");
    }
    for line in [quiet_over_200ms, quiet_under_200ms] {
        assert!(
            !lines.contains(&line.to_string()),
            "{line} exported: {lines:?}"
        );
    }
}
