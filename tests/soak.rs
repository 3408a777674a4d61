//! Soak: every example runs for a bounded time with OTLP export (to the receiver of
//! `support::otlp`) and tokio-console on, its resident memory sampled every 100 ms. What grows
//! with time is tokio-console's record of tasks, resources and their history, which it keeps
//! for `TOKIO_CONSOLE_RETENTION` (console-subscriber's default: one hour); stallscope's own
//! tables are bounded. So each run keeps a short retention, checks that memory levels off once
//! that retention has passed, and checks the growth before it against the bound the README's
//! "Operating in production" gives per minute of retention.
//!
//! `STALLSCOPE_SOAK_SECONDS` (default 8) and `STALLSCOPE_SOAK_RETENTION` (default 2s) set the
//! run and the retention: `scripts/soak.sh` runs it for minutes.

mod support;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::capture::Mode;
use support::examples::{self, free_port};
use support::otlp::HttpReceiver;
use support::service::Server;

/// Growth of resident memory per minute of console retention that no example may exceed
/// (the README's "Operating in production" states it).
const BOUND_PER_RETENTION_MINUTE_MB: f64 = 80.0;
/// Resident memory that comes and goes once retention has passed (allocator pages, export
/// buffers, a burst of the example's own work).
const LEVEL_SLACK_MB: f64 = 6.0;

fn seconds_from_env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .map(|v| v.trim_end_matches('s').parse().expect(name))
        .unwrap_or(default)
}

fn run_for() -> Duration {
    Duration::from_secs_f64(seconds_from_env("STALLSCOPE_SOAK_SECONDS", 8.0))
}

fn retention() -> Duration {
    Duration::from_secs_f64(seconds_from_env("STALLSCOPE_SOAK_RETENTION", 2.0))
}

/// OTLP every 200 ms to `receiver`, tokio-console on a free port with the soak's retention.
fn env(receiver: &HttpReceiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ("TOKIO_CONSOLE_BIND", format!("127.0.0.1:{}", free_port())),
        (
            "TOKIO_CONSOLE_RETENTION",
            format!("{}ms", retention().as_millis()),
        ),
        ("STALLSCOPE_KEEP_RUNNING", "1".to_owned()),
    ]
}

/// Resident memory of `pid` in MB, or `None` once it exited.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `(seconds since start, MB)` every 100 ms for `run_for`, while `pid` runs.
fn sample(pid: u32, run_for: Duration) -> Vec<(f64, f64)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < run_for {
        let Some(mb) = rss_mb(pid) else {
            break;
        };
        samples.push((started.elapsed().as_secs_f64(), mb));
        std::thread::sleep(Duration::from_millis(100));
    }
    samples
}

/// The highest sample in `[from, to)` seconds.
fn peak(samples: &[(f64, f64)], from: f64, to: f64) -> f64 {
    samples
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .map(|(_, mb)| *mb)
        .fold(0.0, f64::max)
}

/// Memory levels off once retention has passed, and what it grew by until then stays within
/// the bound per minute of retention.
fn assert_bounded(example: &str, samples: &[(f64, f64)]) {
    let run = run_for().as_secs_f64();
    let retention = retention().as_secs_f64();
    // Started (its runtime, exporters and console up) by a second in; the retention window
    // then fills up; past it, memory must level off.
    let warm = peak(samples, 0.0, 1.0);
    let filled = 1.0 + retention;
    assert!(
        run >= filled + 3.0,
        "a run of {run} s shows nothing past a retention of {retention} s"
    );
    let at_fill = peak(samples, 1.0, filled + 1.0);
    let end = peak(samples, run - 1.5, run);
    let allowed = BOUND_PER_RETENTION_MINUTE_MB * retention / 60.0 + LEVEL_SLACK_MB;
    eprintln!(
        "{example}: {warm:.1} MB started, {at_fill:.1} MB once {retention} s of retention filled \
         (allowed {:.1}), {end:.1} MB at {run} s",
        warm + allowed
    );
    assert!(
        at_fill - warm <= allowed,
        "{example} grew more than {BOUND_PER_RETENTION_MINUTE_MB} MB per minute of retention: \
         {samples:?}"
    );
    assert!(
        end - at_fill <= LEVEL_SLACK_MB,
        "{example} kept growing past its retention: {samples:?}"
    );
}

/// Runs an example that keeps running (`STALLSCOPE_KEEP_RUNNING=1`) for the soak's time.
///
/// One soak at a time: an example's start-up (its runtime, exporters, console, and the first
/// stack symbolized, which reads the debug binary's symbols: about 100 MB) must be over within
/// the first second, the level growth is measured from. Five debug examples starting together
/// on two cores took longer, and their start-up was counted as growth.
fn soak_example(example: &str, args: &[&str]) {
    let _one = support::service::one_at_a_time();
    let receiver = HttpReceiver::start();
    let mut child: Child = examples::command(example)
        .args(args)
        .envs(env(&receiver))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let samples = sample(child.id(), run_for());
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "{example} ended early: {exited:?}");
    let exported = receiver.stop();
    assert!(
        exported.iter().any(|(p, _)| p == "/v1/metrics"),
        "{example} exported nothing"
    );
    assert_bounded(example, &samples);
}

#[test]
fn blocking_in_async_soaks() {
    soak_example("blocking_in_async", &[]);
}

#[test]
fn blocking_pool_starvation_soaks() {
    soak_example(
        "blocking_pool_starvation",
        &["--jobs", "8", "--pool", "2", "--job-ms", "200"],
    );
}

#[test]
fn drop_in_soaks() {
    soak_example("drop_in", &[]);
}

#[test]
fn threads_with_runtimes_soaks() {
    soak_example("threads_with_runtimes", &[]);
}

#[test]
fn the_service_soaks_under_its_own_load() {
    let _one = support::service::one_at_a_time();
    let receiver = HttpReceiver::start();
    let server = Server::start_with(Mode::Full, None, &env(&receiver));
    let seconds = format!("{}", run_for().as_secs_f64());
    let mut load = server
        .load(&["--connections", "8", "--seconds", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the load");
    let samples = sample(server.pid(), run_for());
    let _ = load.wait();
    let log = server.shutdown();
    assert!(
        receiver.stop().iter().any(|(p, _)| p == "/v1/metrics"),
        "{log}"
    );
    assert!(log.contains("summary"), "{log}");
    assert_bounded("service", &samples);
}
