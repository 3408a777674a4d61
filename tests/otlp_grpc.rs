//! OTLP over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) into a receiver built on
//! opentelemetry-proto's generated servers: what the exporter sends, metrics and stall spans,
//! decoded as a collector would.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use support::examples::{self, OutputWithin};
use support::otlp::{attributes, spans, GrpcReceiver, ReceivedSpan};

struct Run {
    stderr: String,
    metrics: Vec<ExportMetricsServiceRequest>,
    traces: Vec<ExportTraceServiceRequest>,
    /// Wall clock before the example started and after it ended, in ns since the epoch.
    window: (u64, u64),
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Runs an example exporting over gRPC into a fresh receiver; a one-minute interval, so what
/// arrives comes through the flush when the guard drops.
fn run(example: &str, args: &[&str], resource: &str) -> Run {
    let receiver = GrpcReceiver::start();
    let started = unix_nanos();
    let output = examples::command(example)
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env("OTEL_RESOURCE_ATTRIBUTES", resource)
        .env("STALLSCOPE_CONSOLE", "off")
        .output_within(Duration::from_secs(30));
    let ended = unix_nanos();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let (metrics, traces) = receiver.stop();
    assert!(output.status.success(), "{stderr}");
    Run {
        stderr,
        metrics,
        traces,
        window: (started, ended),
    }
}

#[test]
fn grpc_export_carries_the_poll_histogram_with_its_attributes_and_resource() {
    let run = run(
        "blocking_in_async",
        &["--variant", "sleep"],
        "service.name=grpc-test,deployment.environment=ci",
    );
    let stderr = &run.stderr;
    assert!(
        stderr.contains("exporting=\"OTLP metrics (grpc)"),
        "{stderr}"
    );
    assert!(
        !run.metrics.is_empty(),
        "the final flush arrived over gRPC:\n{stderr}"
    );
    let mut found = None;
    for request in &run.metrics {
        for rm in &request.resource_metrics {
            let resource = attributes(&rm.resource.as_ref().unwrap().attributes);
            for sm in &rm.scope_metrics {
                for metric in &sm.metrics {
                    if metric.name != "tokio.task.poll.duration" {
                        continue;
                    }
                    assert_eq!(metric.unit, "s");
                    let Some(Data::Histogram(h)) = &metric.data else {
                        panic!("poll duration is a histogram: {metric:?}")
                    };
                    assert_eq!(h.aggregation_temporality, 2, "cumulative");
                    for point in &h.data_points {
                        let attrs = attributes(&point.attributes);
                        if attrs.get("tokio.task.name").map(String::as_str) == Some("slow_sleep") {
                            found = Some((resource.clone(), attrs, point.clone()));
                        }
                    }
                }
            }
        }
    }
    let (resource, attrs, point) = found.expect("a data point for the slow_sleep task");
    assert_eq!(resource["service.name"], "grpc-test");
    assert_eq!(resource["deployment.environment"], "ci");
    assert_eq!(attrs["code.file.path"], "examples/blocking_in_async.rs");
    assert!(attrs["code.line.number"].parse::<u32>().unwrap() > 0);
    assert!(point.sum.unwrap() >= 1.99, "{point:?}");
    assert_eq!(
        point.explicit_bounds.first(),
        Some(&0.000_01),
        "poll-duration buckets"
    );
    assert_eq!(point.explicit_bounds.last(), Some(&50.0));
    // The 2 s poll sits in the (1 s, 2.5 s] bucket.
    let le_2_5 = point
        .explicit_bounds
        .iter()
        .position(|b| *b == 2.5)
        .unwrap();
    assert_eq!(point.bucket_counts[le_2_5], 1, "{point:?}");
}

/// The span's times: inside the run, and `end - start` equal to the measured duration.
fn assert_wall_clock(span: &ReceivedSpan, window: (u64, u64)) {
    assert!(
        window.0 <= span.start_unix_nano && span.end_unix_nano <= window.1,
        "{span:#?} outside the run {window:?}"
    );
    let measured = span.number("stallscope.duration");
    let spanned = span.duration().as_secs_f64();
    assert!((spanned - measured).abs() < 1e-6, "{spanned} vs {measured}");
}

#[test]
fn the_slow_poll_arrives_as_a_span_naming_task_spawn_location_and_user_span() {
    let run = run(
        "blocking_in_async",
        &["--variant", "sleep"],
        "service.name=stall-spans-test",
    );
    let stderr = &run.stderr;
    assert!(
        stderr.contains("stall spans (grpc) to http://127.0.0.1:"),
        "{stderr}"
    );
    let spans = spans(&run.traces);
    let slow: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "stallscope.slow_poll")
        .filter(|s| s.attributes.get("tokio.task.name").map(String::as_str) == Some("slow_sleep"))
        .collect();
    assert_eq!(
        slow.len(),
        1,
        "one slow poll, one span: {spans:#?}\n{stderr}"
    );
    let span = slow[0];
    eprintln!("slow-poll span: {span:#?}");
    // std::thread::sleep(2 s), timed to the coarse clock's 0.5 ms tick; a loaded machine can
    // only make the poll longer.
    let d = span.duration().as_secs_f64();
    assert!((1.99..3.0).contains(&d), "{d} s: {span:#?}");
    assert_wall_clock(span, run.window);
    assert_eq!(span.attr("tokio.task.name"), "slow_sleep");
    assert_eq!(span.attr("code.file.path"), "examples/blocking_in_async.rs");
    assert_eq!(
        span.attr("code.line.number"),
        examples::spawn_line("slow_sleep").to_string()
    );
    assert!(span.number("code.column.number") > 0.0);
    assert_eq!(span.attr("stallscope.span.name"), "slow_operation");
    assert!(
        span.attr("stallscope.span.location")
            .starts_with("examples/blocking_in_async.rs:"),
        "{span:#?}"
    );
    assert_eq!(span.number("stallscope.threshold"), 0.1);
    assert!(span.number("tokio.task.id") > 0.0);
    assert!(!span.attr("tokio.runtime.id").is_empty());
    assert_eq!(span.attr("thread.name"), "tokio-rt-worker");
    assert!(
        span.parent_span_id.is_empty(),
        "no OpenTelemetry trace in the example: a root span"
    );
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.scope, "stallscope");
    assert_eq!(span.resource["service.name"], "stall-spans-test");
    // The stack the watchdog captured while the poll ran: the sleep inside slow_operation.
    let stack = span.attr("code.stacktrace");
    let sleep_line = include_str!("../examples/blocking_in_async.rs")
        .lines()
        .position(|l| l.contains("std::thread::sleep(BLOCKING_SLEEP)"))
        .unwrap()
        + 1;
    assert!(
        stack.contains("std::thread")
            && stack.contains(&format!(
                "blocking_in_async::slow_operation::{{{{closure}}}}::{{{{closure}}}} (examples/blocking_in_async.rs:{sleep_line})"
            )),
        "code.stacktrace: {stack}"
    );
    // The log said the same.
    assert!(stderr.contains("slow poll: task"), "{stderr}");
}

#[test]
fn starved_blocking_pool_queue_waits_arrive_as_spans() {
    assert_queue_wait_spans(&[]);
}

#[test]
fn production_mode_queue_waits_arrive_as_spans_naming_the_calling_span() {
    // Poll hooks and stallscope::task::spawn_blocking, no task spans.
    assert_queue_wait_spans(&["--production"]);
}

fn assert_queue_wait_spans(mode: &[&str]) {
    // 6 one-job waves of 600 ms on 2 pool threads: jobs wait ~0, 0, 0.6, 0.6, 1.2, 1.2 s.
    let mut args = vec!["--jobs", "6", "--pool", "2", "--job-ms", "600"];
    args.extend_from_slice(mode);
    let run = run(
        "blocking_pool_starvation",
        &args,
        "service.name=queue-wait-test",
    );
    let stderr = &run.stderr;
    let spans = spans(&run.traces);
    let mut waits: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "stallscope.blocking_queue_wait")
        .collect();
    waits.sort_by_key(|s| std::cmp::Reverse(s.duration()));
    assert!(
        (4..=6).contains(&waits.len()),
        "the four later jobs waited (the first two only on a loaded machine): {waits:#?}\n{stderr}"
    );
    let longest: Vec<f64> = waits
        .iter()
        .take(4)
        .map(|s| s.duration().as_secs_f64())
        .collect();
    eprintln!("queue-wait spans: {longest:?}; the first: {:#?}", waits[0]);
    for (wait, expected) in longest.iter().zip([1.2, 1.2, 0.6, 0.6]) {
        assert!(
            (expected - 0.1..expected + 0.6).contains(wait),
            "waits {longest:?}\n{stderr}"
        );
    }
    let call_line = include_str!("../examples/blocking_pool_starvation.rs")
        .lines()
        .position(|l| l.contains("stallscope::task::spawn_blocking("))
        .unwrap()
        + 1;
    for span in &waits {
        assert_wall_clock(span, run.window);
        assert_eq!(
            span.attr("code.file.path"),
            "examples/blocking_pool_starvation.rs"
        );
        assert_eq!(span.attr("code.line.number"), call_line.to_string());
        // The #[instrument]ed function that called spawn_blocking.
        assert_eq!(span.attr("stallscope.span.name"), "handle_upload");
        assert!(span.number("tokio.task.id") > 0.0, "the job's id");
        assert!(!span.attr("tokio.runtime.id").is_empty());
        assert!(span.parent_span_id.is_empty());
    }
    // Each job's span is its own trace.
    let mut traces: Vec<_> = waits.iter().map(|s| s.trace_id.clone()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), waits.len());
}
