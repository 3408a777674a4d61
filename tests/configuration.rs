//! Configuration as a user meets it, through the example binaries: garbage in any variable
//! stops start-up with one error naming it (never a panic, never a silent fallback), the
//! standard OTLP headers and resource attributes reach a real receiver decoded, the final flush
//! waits as long as the export timeout says, and a console port another process holds is one
//! warning. The parsers' own tables and property tests are next to them in `src/`.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use support::examples::{self, OutputWithin};
use support::otlp::{attributes, GrpcReceiver, Headers, HttpReceiver};

/// Garbage for each family of variables, and each value the issue found accepted, ignored or
/// panicking: the example exits with code 2 and the error names the variable.
#[test]
fn garbage_in_any_variable_stops_start_up_naming_it_never_a_panic() {
    let cases = [
        (
            "STALLSCOPE_SLOW_POLL_THRESHOLD",
            "abc",
            "a duration with a unit",
        ),
        // Named for what was set, not for the clock tick's default.
        (
            "STALLSCOPE_SLOW_POLL_THRESHOLD",
            "1ns",
            "two clock ticks of 500us",
        ),
        ("STALLSCOPE_REPORT", "loud", "on or off"),
        ("STALLSCOPE_STALL_SPANS", "maybe", "on or off"),
        ("STALLSCOPE_CONSOLE", "maybe", "on or off"),
        // SIGINT and SIGTERM: Ctrl-C and `kill` must keep stopping the process.
        ("STALLSCOPE_STACK_SIGNAL", "2", "a real-time signal"),
        ("STALLSCOPE_STACK_SIGNAL", "15", "a real-time signal"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "localhost:4318",
            "an http:// URL",
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url", "an http:// URL"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:99999",
            "a port from 1 to 65535",
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "10s", "milliseconds"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "abc", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1", "milliseconds"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0", "milliseconds from 10"),
        ("OTEL_BSP_SCHEDULE_DELAY", "abc", "milliseconds"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "spans from 1"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "-1", "spans from 1"),
        (
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "18446744073709551615",
            "spans from 1 to 100000",
        ),
        (
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            "4096",
            "at most OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "authorization", "has no '='"),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "brotli",
            "none, gzip or zstd",
        ),
        ("OTEL_RESOURCE_ATTRIBUTES", "garbage", "has no '='"),
        ("TOKIO_CONSOLE_BIND", "nowhere", "HOST:PORT"),
        ("TOKIO_CONSOLE_RETENTION", "abc", "a duration such as 1h"),
        ("TOKIO_CONSOLE_PUBLISH_INTERVAL", "0s", "from 10ms"),
        ("TOKIO_CONSOLE_BUFFER_CAPACITY", "0", "events from 1"),
        ("RUST_LOG", "info,[[[", "filter directives"),
    ];
    for (var, value, expected) in cases {
        let mut cmd = examples::command("blocking_in_async");
        if var.starts_with("OTEL_") && !var.ends_with("_ENDPOINT") {
            // OTEL_* settings are read when OTLP runs.
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
        }
        let output = cmd.env(var, value).output_within(Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{var}={value}: {stderr}");
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {var}=\"{value}\"")),
            "{var}={value}: {stderr}"
        );
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
        assert!(!stderr.contains("slow poll"), "nothing ran: {stderr}");
    }
}

/// A second process on the default port (here: a port this test holds): one WARN line that
/// names the variable, and the application runs as it would without the console.
#[test]
fn a_taken_console_port_is_one_warning_naming_the_variable_and_the_app_runs_on() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let output = examples::command("blocking_in_async")
        .args(["--fixed"])
        .env("TOKIO_CONSOLE_BIND", &bind)
        .output_within(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("TOKIO_CONSOLE_BIND"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(lines[0].contains(&bind), "{}", lines[0]);
    assert!(stderr.contains("the runtime stayed responsive"), "{stderr}");
}

const HEADERS: &str = "authorization=Bearer%20abc, x-note=50%25%20off";
const RESOURCE: &str = "deployment.environment=prod%20eu,team=a%2Cb";

/// blocking_in_async's 2 s sleep (a slow poll, so a stall span) with OTLP headers and resource
/// attributes set, plus `env`.
fn run_with_headers_and_resource(env: &[(&str, String)]) -> String {
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_HEADERS", HEADERS.to_owned()),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "x-signal=traces".to_owned(),
        ),
        ("OTEL_RESOURCE_ATTRIBUTES", RESOURCE.to_owned()),
    ];
    all.extend_from_slice(env);
    examples::run_sleep(&all)
}

/// The generic headers on metrics, decoded; the traces' own variable replaces them on spans.
fn assert_headers(signal: &str, headers: &Headers) {
    if signal == "metrics" {
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some("Bearer abc")
        );
        assert_eq!(headers.get("x-note").map(String::as_str), Some("50% off"));
        assert_eq!(headers.get("x-signal"), None);
    } else {
        assert_eq!(headers.get("x-signal").map(String::as_str), Some("traces"));
        assert_eq!(headers.get("authorization"), None, "{headers:?}");
    }
}

/// Resource attributes percent-decoded, next to the executable's name as `service.name`.
fn assert_resource(resource: &std::collections::BTreeMap<String, String>) {
    assert_eq!(
        resource["deployment.environment"], "prod eu",
        "{resource:?}"
    );
    assert_eq!(resource["team"], "a,b", "{resource:?}");
    assert_eq!(
        resource["service.name"], "blocking_in_async",
        "{resource:?}"
    );
}

#[test]
fn headers_and_resource_attributes_reach_an_http_receiver_decoded() {
    let receiver = HttpReceiver::start();
    run_with_headers_and_resource(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]);
    let headers = receiver.headers();
    let requests = receiver.stop();
    for (path, signal) in [("/v1/metrics", "metrics"), ("/v1/traces", "traces")] {
        let sent: Vec<_> = headers.iter().filter(|(p, _)| p == path).collect();
        assert!(!sent.is_empty(), "nothing sent to {path}: {headers:?}");
        for (_, h) in sent {
            assert_headers(signal, h);
        }
    }
    let metrics: Vec<_> = requests
        .iter()
        .filter(|(p, _)| p == "/v1/metrics")
        .map(|(_, body)| ExportMetricsServiceRequest::decode(body.as_slice()).unwrap())
        .collect();
    let traces: Vec<_> = requests
        .iter()
        .filter(|(p, _)| p == "/v1/traces")
        .map(|(_, body)| ExportTraceServiceRequest::decode(body.as_slice()).unwrap())
        .collect();
    assert_resources(&metrics, &traces);
}

#[test]
fn headers_and_resource_attributes_reach_a_grpc_receiver_decoded() {
    let receiver = GrpcReceiver::start();
    run_with_headers_and_resource(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
    ]);
    let metadata = receiver.metadata();
    let (metrics, traces) = receiver.stop();
    for signal in ["metrics", "traces"] {
        let sent: Vec<_> = metadata.iter().filter(|(s, _)| *s == signal).collect();
        assert!(!sent.is_empty(), "no {signal} request: {metadata:?}");
        for (_, h) in sent {
            assert_headers(signal, h);
        }
    }
    assert_resources(&metrics, &traces);
}

fn assert_resources(metrics: &[ExportMetricsServiceRequest], traces: &[ExportTraceServiceRequest]) {
    let resources: Vec<_> = metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .map(|rm| rm.resource.as_ref().map(|r| &r.attributes))
        .chain(
            traces
                .iter()
                .flat_map(|r| &r.resource_spans)
                .map(|rs| rs.resource.as_ref().map(|r| &r.attributes)),
        )
        .collect();
    assert!(
        !metrics.is_empty() && !traces.is_empty(),
        "both signals arrived"
    );
    for resource in resources {
        assert_resource(&attributes(resource.expect("a resource")));
    }
}

/// A collector that answers the final metrics export after 6 s: with a 10 s export timeout the
/// flush waits for it (the SDK's own shutdown gives up after 5 s) and says nothing, as the data
/// arrived; with a 1 s timeout it gives up after about a second and says the collector did not
/// confirm.
#[test]
fn the_final_flush_waits_as_long_as_the_export_timeout_and_reports_what_happened() {
    let run = |timeout_ms: &str| {
        let receiver = HttpReceiver::answering_after(Duration::from_secs(6));
        let started = Instant::now();
        let output = examples::command("blocking_in_async")
            .args(["--fixed"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
            .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", timeout_ms)
            .env("STALLSCOPE_CONSOLE", "off")
            .output_within(Duration::from_secs(60));
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let metrics_sent = receiver
            .stop()
            .iter()
            .filter(|(p, _)| p == "/v1/metrics")
            .count();
        assert_eq!(metrics_sent, 1, "the final export arrived: {stderr}");
        (elapsed, stderr)
    };

    let (patient, stderr) = run("10000");
    assert!(!stderr.contains("final OTLP export"), "{stderr}");
    assert!(!stderr.contains("lost"), "{stderr}");
    assert!(
        patient >= Duration::from_secs(6),
        "waited for the answer: {patient:?}"
    );

    let (impatient, stderr) = run("1000");
    let line = stderr
        .lines()
        .find(|l| l.contains("final OTLP export of metrics"))
        .unwrap_or_else(|| panic!("a line about the unconfirmed flush: {stderr}"));
    assert!(line.contains("the collector did not confirm"), "{line}");
    assert!(!line.contains("lost"), "{line}");
    assert!(
        impatient + Duration::from_secs(3) < patient,
        "bounded by the 1 s timeout: {impatient:?} against {patient:?}"
    );
}
