//! OTLP/HTTP export into a real time-series database (VictoriaMetrics with Prometheus naming),
//! queried back with PromQL, as a Grafana dashboard would; stall spans into a minimal
//! OTLP/HTTP receiver (VictoriaMetrics takes no traces).

mod support;

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use support::examples::{self, OutputWithin};
use support::otlp::{spans, HttpReceiver, ReceivedSpan};
use support::victoria::VictoriaMetrics;

fn value(vm: &VictoriaMetrics, promql: &str) -> f64 {
    let samples = vm.wait_for(promql, Duration::from_secs(10));
    assert_eq!(samples.len(), 1, "one series for {promql}: {samples:?}");
    samples[0].value
}

#[test]
fn the_final_flush_delivers_the_poll_histogram_with_its_attributes() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    // A one-minute interval: everything below arrives through the flush when the guard drops.
    let output = examples::command("blocking_in_async")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env("OTEL_SERVICE_NAME", "otlp-http-test")
        .output_within(std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("exporting=\"OTLP metrics (http/protobuf)"),
        "{stderr}"
    );

    let sleep = r#"service_name="otlp-http-test",tokio_task_name="slow_sleep",code_file_path="examples/blocking_in_async.rs""#;
    let bucket = |le: &str| {
        value(
            &vm,
            &format!("tokio_task_poll_duration_seconds_bucket{{{sleep},le=\"{le}\"}}"),
        )
    };
    // The 2 s poll lies in (1 s, 2.5 s]: exactly one poll between those bounds.
    assert_eq!(bucket("2.5") - bucket("1"), 1.0);
    assert_eq!(bucket("+Inf"), bucket("2.5"), "no poll over 2.5 s");
    let series = vm.wait_for(
        &format!("tokio_task_poll_duration_seconds_count{{{sleep}}}"),
        Duration::from_secs(10),
    );
    assert_eq!(
        series[0].label("code_line_number"),
        Some(examples::spawn_line("slow_sleep").to_string().as_str())
    );
    assert!(series[0].label("code_column_number").is_some());
    assert!(
        value(
            &vm,
            &format!("tokio_task_poll_duration_seconds_sum{{{sleep}}}")
        ) >= 1.99
    );
    assert_eq!(
        value(&vm, &format!("tokio_task_slow_polls_total{{{sleep}}}")),
        1.0
    );
    assert!(
        value(
            &vm,
            &format!("tokio_task_busy_time_seconds_total{{{sleep}}}")
        ) >= 1.99
    );
    assert_eq!(
        value(
            &vm,
            r#"tokio_task_slow_polls_total{service_name="otlp-http-test",tokio_task_name="checksum"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &vm,
            r#"tokio_task_slow_polls_total{service_name="otlp-http-test",tokio_task_name="heartbeat"}"#
        ),
        0.0
    );

    // Runtime-wide metrics from tokio-metrics, one series per runtime.
    let rt = r#"{service_name="otlp-http-test"}"#;
    assert_eq!(value(&vm, &format!("tokio_runtime_worker_count{rt}")), 1.0);
    let utilization = value(&vm, &format!("tokio_runtime_worker_utilization_ratio{rt}"));
    assert!((0.0..=1.0).contains(&utilization), "{utilization}");
    assert!(
        value(
            &vm,
            &format!("tokio_runtime_worker_busy_time_seconds_total{rt}")
        ) >= 2.4
    );
    assert!(value(&vm, &format!("tokio_runtime_worker_polls_total{rt}")) > 0.0);
    vm.wait_for(
        &format!("tokio_runtime_task_count{rt}"),
        Duration::from_secs(5),
    );
    vm.wait_for(
        &format!("tokio_runtime_global_queue_depth{rt}"),
        Duration::from_secs(5),
    );
    let runtime_ids = vm.wait_for(
        &format!("tokio_runtime_worker_parks_total{rt}"),
        Duration::from_secs(5),
    );
    assert!(
        runtime_ids[0].label("tokio_runtime_id").is_some(),
        "{runtime_ids:?}"
    );
}

#[test]
fn a_collector_that_is_down_never_stalls_the_app_and_is_logged_once() {
    // Nothing listens on this port.
    let endpoint = format!("http://127.0.0.1:{}", examples::free_port());
    let started = Instant::now();
    let output = examples::command("blocking_in_async")
        .args(["--fixed"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500")
        .output_within(std::time::Duration::from_secs(30));
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The app itself ran unharmed: no stall, the heartbeat kept its beat.
    assert!(stderr.contains("the runtime stayed responsive"), "{stderr}");
    assert!(!stderr.contains("slow poll:"), "{stderr}");
    // ~25 failed exports in the run, one line about them (and one for the final flush at most).
    let failures = stderr.matches("OTLP export to").count();
    assert!((1..=2).contains(&failures), "{failures} lines:\n{stderr}");
    // The scenario takes ~3 s; shutdown waits at most the export timeout for the last flush.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

/// The spans of the requests sent to `path`.
fn spans_sent_to(requests: &[(String, Vec<u8>)], path: &str) -> Vec<ReceivedSpan> {
    let decoded: Vec<_> = requests
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, body)| ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf"))
        .collect();
    spans(&decoded)
}

fn assert_the_slow_sleep(spans: &[ReceivedSpan], stderr: &str) {
    let sleeps: Vec<_> = spans
        .iter()
        .filter(|s| s.attributes.get("tokio.task.name").map(String::as_str) == Some("slow_sleep"))
        .collect();
    assert_eq!(sleeps.len(), 1, "{spans:#?}\n{stderr}");
    let span = sleeps[0];
    assert_eq!(span.name, "stallscope.slow_poll");
    assert_eq!(span.attr("stallscope.span.name"), "slow_operation");
    let d = span.duration().as_secs_f64();
    assert!((1.99..3.0).contains(&d), "{d} s");
}

#[test]
fn stall_spans_go_to_the_generic_endpoint_plus_v1_traces_over_http() {
    let receiver = HttpReceiver::start();
    let stderr = examples::run_sleep(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]);
    assert!(
        stderr.contains("stall spans (http/protobuf) to http://127.0.0.1:"),
        "{stderr}"
    );
    let requests = receiver.stop();
    let paths: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"/v1/metrics"), "{paths:?}");
    assert_the_slow_sleep(&spans_sent_to(&requests, "/v1/traces"), &stderr);
}

#[test]
fn the_traces_endpoint_variable_is_used_verbatim() {
    let receiver = HttpReceiver::start();
    let stderr = examples::run_sleep(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/custom/spans", receiver.endpoint()),
        ),
    ]);
    let requests = receiver.stop();
    assert!(spans_sent_to(&requests, "/v1/traces").is_empty());
    assert_the_slow_sleep(&spans_sent_to(&requests, "/custom/spans"), &stderr);
}

#[test]
fn stall_spans_off_sends_no_spans() {
    let receiver = HttpReceiver::start();
    let stderr = examples::run_sleep(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("STALLSCOPE_STALL_SPANS", "off".to_owned()),
    ]);
    assert!(stderr.contains("stall spans off"), "{stderr}");
    assert!(
        stderr.contains("slow poll: task"),
        "the log still says it: {stderr}"
    );
    let requests = receiver.stop();
    let paths: Vec<&str> = requests.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.iter().all(|p| *p == "/v1/metrics"), "{paths:?}");
}

#[test]
fn a_collector_that_is_down_costs_stall_spans_one_log_line() {
    // Nothing listens on this port; span batches go out every 100 ms.
    let endpoint = format!("http://127.0.0.1:{}", examples::free_port());
    let started = Instant::now();
    let stderr = examples::run_sleep(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_owned()),
    ]);
    let elapsed = started.elapsed();
    assert!(stderr.contains("slow poll: task"), "{stderr}");
    let metrics = stderr.matches("(metrics) failed").count();
    let spans = stderr.matches("(stall spans) failed").count();
    assert_eq!((metrics, spans), (1, 1), "one line per signal:\n{stderr}");
    assert!(elapsed < Duration::from_secs(12), "took {elapsed:?}");
}
