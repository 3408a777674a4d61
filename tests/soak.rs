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

/// `(seconds since started, MB)` every 100 ms until `run_for` after `started`, while `pid`
/// runs.
fn sample(pid: u32, started: Instant, run_for: Duration) -> Vec<(f64, f64)> {
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
fn assert_bounded(example: &str, samples: &[(f64, f64)], started_up: f64) {
    let run = run_for().as_secs_f64();
    let retention = retention().as_secs_f64();
    // Started (its runtime, exporters and console up, its first stack symbolized) at
    // `started_up`; the retention window then fills up; past it, memory must level off.
    let warm = peak(samples, 0.0, started_up);
    let filled = started_up + retention;
    assert!(
        run >= filled + 3.0,
        "a run of {run} s shows nothing past a retention of {retention} s"
    );
    let at_fill = peak(samples, started_up, filled + 1.0);
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
/// Growth is measured from the end of the example's start-up: a second in (its runtime,
/// exporters and console), or once its first stall stack is written if that is later. The
/// first stack symbolized reads the debug binary's symbols (about 90 MB, once); it took from
/// 0.6 s to 1.5 s after the first stall, which an example reaches a fraction of a second in, so
/// no fixed window holds it. One soak at a time: five debug examples starting together on
/// two cores slowed each other's start-up further.
fn soak_example(example: &str, args: &[&str]) {
    let _one = support::service::one_at_a_time();
    let receiver = HttpReceiver::start();
    let started = Instant::now();
    let mut child: Child = examples::command(example)
        .args(args)
        .envs(env(&receiver))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let first_stack = first_stack_written(child.stderr.take().unwrap(), started);
    let samples = sample(child.id(), started, run_for());
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "{example} ended early: {exited:?}");
    let exported = receiver.stop();
    assert!(
        exported.iter().any(|(p, _)| p == "/v1/metrics"),
        "{example} exported nothing"
    );
    // Within 100 ms of the line, the sample that follows it holds what symbolizing took.
    let started_up = first_stack
        .lock()
        .unwrap()
        .map_or(1.0, |at| f64::max(1.0, at + 0.2));
    assert_bounded(example, &samples, started_up);
}

/// Reads the example's log (all of it: a full pipe would stop it), noting when, in seconds
/// since `started`, its first `stall stack` line was written.
fn first_stack_written(
    log: std::process::ChildStderr,
    started: Instant,
) -> std::sync::Arc<std::sync::Mutex<Option<f64>>> {
    use std::io::BufRead;
    let first = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = first.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(log).lines() {
            let Ok(line) = line else { break };
            let mut seen = seen.lock().unwrap();
            if seen.is_none() && line.contains("stall stack:") {
                *seen = Some(started.elapsed().as_secs_f64());
            }
        }
    });
    first
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
    let samples = sample(server.pid(), Instant::now(), run_for());
    let _ = load.wait();
    let log = server.shutdown();
    assert!(
        receiver.stop().iter().any(|(p, _)| p == "/v1/metrics"),
        "{log}"
    );
    assert!(log.contains("summary"), "{log}");
    // A clean run: no stall, no stack to symbolize; started a second in.
    assert!(!log.contains("stall stack:"), "{log}");
    assert_bounded("service", &samples, 1.0);
}
