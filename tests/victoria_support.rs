mod support;

// The VictoriaMetrics test harness itself: a real server ingests hand-built OTLP/HTTP
// protobuf requests, and the PromQL names it gives OpenTelemetry instruments are pinned
// here (with `-opentelemetry.usePrometheusNaming`), so the exporter's tests and the
// dashboards can rely on them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use support::victoria::{parse_response, urlencode, VictoriaMetrics};

const WAIT: Duration = Duration::from_secs(15);

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// One resource (`service.name=<service>`) with one scope holding `metrics`.
fn request(service: &str, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "stallscope".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn number_point(value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    let now = now_nanos();
    NumberDataPoint {
        attributes,
        start_time_unix_nano: now - 1_000_000_000,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn gauge(name: &str, unit: &str, value: f64) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: vec![number_point(value, vec![])],
        })),
        ..Default::default()
    }
}

fn post_otlp(vm: &VictoriaMetrics, req: &ExportMetricsServiceRequest) {
    let path = format!("{}/v1/metrics", vm.otlp_endpoint());
    let path = path
        .strip_prefix(&vm.base_url())
        .expect("endpoint on this server");
    assert_eq!(path, "/opentelemetry/v1/metrics");
    let resp = vm.post(path, "application/x-protobuf", &req.encode_to_vec());
    assert!(
        resp.status / 100 == 2,
        "OTLP POST: HTTP {}: {}",
        resp.status,
        resp.text()
    );
}

#[test]
fn otlp_histogram_is_queryable_under_prometheus_names() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    assert_eq!(
        vm.otlp_endpoint(),
        format!("http://127.0.0.1:{}/opentelemetry", vm.port())
    );
    let now = now_nanos();
    let histogram = Metric {
        name: "tokio.task.poll.duration".into(),
        unit: "s".into(),
        description: "Duration of task polls".into(),
        data: Some(metric::Data::Histogram(Histogram {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            data_points: vec![HistogramDataPoint {
                attributes: vec![kv("code.file.path", "src/x.rs")],
                start_time_unix_nano: now - 1_000_000_000,
                time_unix_nano: now,
                count: 10,
                sum: Some(1.25),
                explicit_bounds: vec![0.001, 0.01, 0.1],
                bucket_counts: vec![4, 3, 2, 1],
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    post_otlp(&vm, &request("vmcheck", vec![histogram]));

    let buckets = vm.wait_for(
        r#"tokio_task_poll_duration_seconds_bucket{service_name="vmcheck"}"#,
        WAIT,
    );
    assert_eq!(
        buckets.len(),
        4,
        "one series per bucket incl. +Inf: {buckets:#?}"
    );
    let mut by_le: Vec<(String, f64)> = buckets
        .iter()
        .map(|s| {
            assert_eq!(s.label("code_file_path"), Some("src/x.rs"), "{s:?}");
            (s.label("le").expect("le label").to_owned(), s.value)
        })
        .collect();
    by_le.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Cumulative bucket counts, as Prometheus histograms are.
    assert_eq!(
        by_le.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![4.0, 7.0, 9.0, 10.0],
        "{by_le:?}"
    );
    assert_eq!(by_le.last().unwrap().0, "+Inf");

    let count = vm.wait_for(
        r#"tokio_task_poll_duration_seconds_count{service_name="vmcheck"}"#,
        WAIT,
    );
    assert_eq!(count.len(), 1, "{count:#?}");
    assert_eq!(count[0].value, 10.0);
    assert_eq!(count[0].label("code_file_path"), Some("src/x.rs"));

    let sum = vm.wait_for(
        r#"tokio_task_poll_duration_seconds_sum{code_file_path="src/x.rs"}"#,
        WAIT,
    );
    assert_eq!(sum[0].value, 1.25);

    // Histogram functions work on the translated buckets.
    let p50 = vm.wait_for(
        r#"histogram_quantile(0.5, sum by (le) (tokio_task_poll_duration_seconds_bucket{service_name="vmcheck"}))"#,
        WAIT,
    );
    assert!(p50[0].value > 0.001 && p50[0].value <= 0.01, "{p50:?}");

    let names = vm.series_names();
    for expected in [
        "tokio_task_poll_duration_seconds_bucket",
        "tokio_task_poll_duration_seconds_count",
        "tokio_task_poll_duration_seconds_sum",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn otlp_sum_and_gauges_get_prometheus_names() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let slow_polls = Metric {
        name: "tokio.task.slow_polls".into(),
        unit: "{poll}".into(),
        data: Some(metric::Data::Sum(Sum {
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
            data_points: vec![number_point(7.0, vec![kv("code.file.path", "src/x.rs")])],
        })),
        ..Default::default()
    };
    post_otlp(
        &vm,
        &request(
            "vmnames",
            vec![
                slow_polls,
                gauge("tokio.runtime.worker.utilization", "1", 0.25),
                gauge("tokio.runtime.task.count", "{task}", 12.0),
            ],
        ),
    );

    let names = {
        let mut names = Vec::new();
        let deadline = std::time::Instant::now() + WAIT;
        while names.len() < 3 && std::time::Instant::now() < deadline {
            names = vm.series_names();
            std::thread::sleep(Duration::from_millis(100));
        }
        names
    };
    eprintln!("VictoriaMetrics series names: {names:?}");

    let slow = vm.wait_for(
        r#"tokio_task_slow_polls_total{service_name="vmnames"}"#,
        WAIT,
    );
    assert_eq!(slow[0].value, 7.0);
    assert_eq!(slow[0].label("code_file_path"), Some("src/x.rs"));

    let util = vm.wait_for(
        r#"tokio_runtime_worker_utilization_ratio{service_name="vmnames"}"#,
        WAIT,
    );
    assert_eq!(util[0].value, 0.25);

    let tasks = vm.wait_for(r#"tokio_runtime_task_count{service_name="vmnames"}"#, WAIT);
    assert_eq!(tasks[0].value, 12.0);

    assert_eq!(
        names,
        vec![
            "tokio_runtime_task_count".to_owned(),
            "tokio_runtime_worker_utilization_ratio".to_owned(),
            "tokio_task_slow_polls_total".to_owned(),
        ]
    );
}

#[test]
fn wait_for_names_what_exists_on_timeout() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    post_otlp(
        &vm,
        &request("vmmissing", vec![gauge("present.gauge", "", 1.0)]),
    );
    vm.wait_for("present_gauge", WAIT);
    let timed_out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vm.wait_for("absent_metric", Duration::from_millis(300))
    }))
    .expect_err("waiting for a series that never comes times out");
    let message = timed_out
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("Series names present") && message.contains("present_gauge"),
        "{message}"
    );
}

#[test]
fn query_panics_with_the_error_body() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.query("sum(("))).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("HTTP 4") && msg.contains("sum(("), "{msg}");
}

#[test]
fn two_servers_run_side_by_side_and_clean_up() {
    let Some(a) = VictoriaMetrics::start() else {
        return;
    };
    let Some(b) = VictoriaMetrics::start() else {
        return;
    };
    assert_ne!(a.port(), b.port());
    let (pa, pb) = (a.port(), b.port());
    drop(a);
    drop(b);
    for port in [pa, pb] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "server on {port} still answers after drop"
        );
    }
}

#[test]
fn http_parser_handles_content_length_chunked_and_eof_bodies() {
    let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloEXTRA")
        .unwrap();
    assert_eq!(
        (r.status, r.text().as_str(), r.header("x-a")),
        (200, "hello", Some("b"))
    );

    let r = parse_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;ext=1\r\nabcd\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.text().as_str()), (400, "abcd0123456789"));

    let r = parse_response(b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nuntil eof").unwrap();
    assert_eq!(r.text(), "until eof");

    assert!(parse_response(b"garbage\r\n\r\n").is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());

    assert_eq!(
        urlencode(r#"a_b{c="d.e"}[5m] +1"#),
        "a_b%7Bc%3D%22d.e%22%7D%5B5m%5D%20%2B1"
    );
}
