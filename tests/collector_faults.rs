//! The collector fails; the application does not notice. Loopback only, bounded in time,
//! against the real OTLP/HTTP receiver of `support::otlp`: a receiver killed and restarted
//! twice while the application runs (the cumulative counters go on where they were, one line
//! per outage and one when it ends), and a collector that accepts connections and never answers
//! (the guard's drop ends within the export timeout). The application's own latency is
//! measured throughout by a heartbeat task. (A collector absent from the start:
//! `tests/otlp_http.rs`, `a_collector_that_is_down_*`.)

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;

use support::child::{full_mode, two_workers, CHILD};
use support::log::lines_with;
use support::otlp::HttpReceiver;

/// A heartbeat tick every 10 ms; a worker held up by an export would show as a long gap.
const TICK: Duration = Duration::from_millis(10);
/// The longest gap between ticks that is still an unaffected application on a loaded
/// two-core machine; an export on a worker would hold it for its timeout (500 ms or more).
const RESPONSIVE: Duration = Duration::from_millis(250);

/// The application: `run_for` of heartbeats on a two-worker runtime, each tick a spawned task,
/// with stallscope from the environment (OTLP to the collector under test). Says its longest
/// heartbeat gap, the polls it counted, and how long the guard's drop took.
fn heartbeat(run_for: Duration) {
    let guard = full_mode(
        stallscope::Builder::from_env()
            .unwrap()
            .slow_poll_threshold(Duration::from_millis(50)),
    );
    let runtime = two_workers();
    let longest = runtime.block_on(async {
        // One slow poll, for a stall span to export.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(80)) })
            .await
            .unwrap();
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (started, mut last, mut longest) = (Instant::now(), Instant::now(), Duration::ZERO);
        while started.elapsed() < run_for {
            interval.tick().await;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            tokio::spawn(async {}).await.unwrap();
        }
        longest
    });
    drop(runtime);
    let polls: u64 = guard.snapshot().tasks.iter().map(|t| t.polls.count).sum();
    eprintln!("longest heartbeat gap: {} ms", longest.as_millis());
    eprintln!("polls in all: {polls}");
    let dropping = Instant::now();
    drop(guard);
    eprintln!("guard dropped in: {} ms", dropping.elapsed().as_millis());
}

#[test]
fn child() {
    let Ok(program) = std::env::var(CHILD) else {
        return;
    };
    match program.as_str() {
        "heartbeat_6s" => heartbeat(Duration::from_secs(6)),
        "heartbeat_2s" => heartbeat(Duration::from_secs(2)),
        other => panic!("no program {other}"),
    }
    eprintln!("child done");
}

/// Starts `program` with OTLP/HTTP to `endpoint`, exporting every 200 ms, each export given up
/// after `timeout`.
fn start(program: &str, endpoint: &str, timeout: Duration) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, program)
        .env_remove("RUST_LOG")
        .env("STALLSCOPE_CONSOLE", "off")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env(
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            timeout.as_millis().to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child")
}

/// Waits (at most 60 s) for `child`; returns its log once it succeeded.
fn finish(child: std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the child hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert!(log.contains("child done"), "{log}");
    log
}

/// The number after `label` in `log`.
fn said(log: &str, label: &str) -> u64 {
    log.split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{label} in:\n{log}"))
}

fn assert_responsive(log: &str) {
    let gap = Duration::from_millis(said(log, "longest heartbeat gap: "));
    assert!(
        gap < RESPONSIVE,
        "the application was held up {gap:?}:\n{log}"
    );
}

/// `tokio.task.polls` of one metrics request, summed over sites, with its stream's start time.
fn polls_exported(body: &[u8]) -> Option<(u64, u64)> {
    let request = ExportMetricsServiceRequest::decode(body).expect("OTLP protobuf");
    let metric = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == "tokio.task.polls")?;
    let Some(Data::Sum(sum)) = &metric.data else {
        return None;
    };
    let total = sum
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n)) => {
                n as u64
            }
            _ => 0,
        })
        .sum();
    let start = sum
        .data_points
        .iter()
        .map(|p| p.start_time_unix_nano)
        .min()?;
    Some((total, start))
}

#[test]
fn a_collector_killed_and_restarted_twice_costs_one_line_per_outage_and_no_count() {
    let first = HttpReceiver::start();
    let port = first.port();
    let endpoint = first.endpoint();
    let child = start("heartbeat_6s", &endpoint, Duration::from_millis(500));
    let mut received = Vec::new();
    // Up 1.5 s, down 1 s, up 1 s, down 1 s, up until the end (and the final flush).
    std::thread::sleep(Duration::from_millis(1500));
    received.extend(first.kill());
    std::thread::sleep(Duration::from_secs(1));
    let second = HttpReceiver::on_port(port);
    std::thread::sleep(Duration::from_secs(1));
    received.extend(second.kill());
    std::thread::sleep(Duration::from_secs(1));
    let third = HttpReceiver::on_port(port);
    let log = finish(child);
    received.extend(third.stop());

    assert_responsive(&log);
    let failed = lines_with(&log, "(metrics) failed");
    let recovered = lines_with(&log, "(metrics) works again");
    assert_eq!(
        (failed.len(), recovered.len()),
        (2, 2),
        "one line as each outage begins, one as it ends:\n{log}"
    );
    // The counters are cumulative and go on where they were: never lower than an earlier
    // export, one stream (one start time), and the last export has every poll counted.
    let exported: Vec<(u64, u64)> = received
        .iter()
        .filter(|(path, _)| path == "/v1/metrics")
        .filter_map(|(_, body)| polls_exported(body))
        .collect();
    assert!(exported.len() >= 5, "{exported:?}");
    assert!(
        exported
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1),
        "continuous: {exported:?}"
    );
    let (last, _) = *exported.last().unwrap();
    assert_eq!(last, said(&log, "polls in all: "), "{log}");
}

#[test]
fn a_collector_that_never_answers_holds_up_neither_the_application_nor_its_exit() {
    // Accepts connections, reads nothing, answers nothing.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in black_hole.incoming().take(32) {
            open.push(stream);
        }
    });
    let timeout = Duration::from_secs(1);
    let log = finish(start("heartbeat_2s", &endpoint, timeout));
    drop(held);

    assert_responsive(&log);
    // The final flush gives up after the export timeout (and the collection's second).
    let drop_took = Duration::from_millis(said(&log, "guard dropped in: "));
    assert!(
        drop_took < timeout + Duration::from_millis(1500),
        "the guard's drop took {drop_took:?}:\n{log}"
    );
    assert!(
        !lines_with(&log, "final OTLP export of metrics").is_empty(),
        "the unconfirmed flush is said:\n{log}"
    );
}
