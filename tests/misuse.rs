//! Misuse a library user can fall into, each with a clear outcome and never harm to the host:
//! two layers in one subscriber, a filter on the whole registry, two guards, `try_init` with a
//! subscriber already set, a second instance next to `init()`. Each program is this test binary
//! re-executed with `STALLSCOPE_TEST_CHILD` naming it (one global subscriber per process).

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use tracing_subscriber::prelude::*;

use support::child::{full_mode, log, run, two_workers, CHILD};
use support::log::lines_with;
use support::otlp::HttpReceiver;

const STALL: Duration = Duration::from_millis(150);

fn builder() -> stallscope::Builder {
    stallscope::Builder::new().slow_poll_threshold(Duration::from_millis(50))
}

/// `n` tasks, one after the other, each blocking its worker for [`STALL`].
fn stalls(runtime: &tokio::runtime::Runtime, n: usize) {
    runtime.block_on(async {
        for _ in 0..n {
            tokio::spawn(async { std::thread::sleep(STALL) })
                .await
                .unwrap();
        }
    });
}

fn runtime(instrumented_by: Option<&stallscope::StallscopeLayer>) -> tokio::runtime::Runtime {
    let Some(stallscope) = instrumented_by else {
        return two_workers();
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    stallscope.instrument_runtime(&mut builder);
    builder.build().unwrap()
}

fn slow_polls(snapshot: &stallscope::Snapshot) -> u64 {
    snapshot.tasks.iter().map(|t| t.slow_polls).sum()
}

/// Two stallscope layers in one registry: the second is refused in one line, the first
/// measures, nothing panics.
fn two_layers_in_one_registry() {
    let first = builder().build().unwrap();
    let second = builder().build().unwrap();
    let (first_guard, second_guard) = (first.guard(), second.guard());
    tracing_subscriber::registry()
        .with(first)
        .with(second)
        .with(log())
        .init();
    let runtime = runtime(None);
    stalls(&runtime, 2);
    drop(runtime);
    assert_eq!(slow_polls(&first_guard.snapshot()), 2);
    assert_eq!(slow_polls(&second_guard.snapshot()), 0);
    drop(second_guard);
    drop(first_guard);
}

/// A level filter on the whole registry, the layer built before the runtime.
fn global_filter_layer_before_runtime() {
    let stallscope = builder().build().unwrap();
    let guard = stallscope.guard();
    tracing_subscriber::registry()
        .with(stallscope)
        .with(log())
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let runtime = runtime(None);
    stalls(&runtime, 3);
    drop(runtime);
    drop(guard);
}

/// Two guards of one instance; the first dropped before a stall.
fn two_guards() {
    let stallscope = builder().build().unwrap();
    let (first, second) = (stallscope.guard(), stallscope.guard());
    tracing_subscriber::registry()
        .with(stallscope)
        .with(log())
        .init();
    let runtime = runtime(None);
    drop(first);
    stalls(&runtime, 1);
    drop(runtime);
    drop(second);
}

/// `try_init` with a subscriber already installed and a collector that never answers.
fn try_init_with_a_subscriber_set() {
    tracing_subscriber::registry().with(log()).init();
    let started = Instant::now();
    let result = stallscope::try_init();
    let took = started.elapsed();
    assert!(
        matches!(result, Err(stallscope::Error::SubscriberAlreadySet(_))),
        "{result:?}"
    );
    assert!(took < Duration::from_millis(500), "try_init took {took:?}");
    let threads = stallscope_threads();
    assert!(threads.is_empty(), "threads left behind: {threads:?}");
}

/// This process's threads that stallscope or its exporters started.
fn stallscope_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("stallscope") || name.contains("OpenTelemetry"))
        .collect()
}

/// `init()`'s instance, and a second one built for `instrument_runtime`.
fn second_instance_for_instrument_runtime() {
    let _init_guard = stallscope::init();
    let second = stallscope::Builder::from_env()
        .unwrap()
        .slow_poll_threshold(Duration::from_millis(50))
        .build()
        .unwrap();
    let guard = second.guard();
    let runtime = runtime(Some(&second));
    stalls(&runtime, 2);
    drop(runtime);
    assert_eq!(
        slow_polls(&guard.snapshot()),
        2,
        "the second instance measures"
    );
    drop(guard);
}

/// A burst of slow polls right before the guard drops: more lines than the rate limit lets
/// through in a second.
fn burst_at_the_end() {
    let guard = full_mode(
        stallscope::Builder::new()
            .slow_poll_threshold(Duration::from_millis(20))
            .capture_stacks(false),
    );
    let runtime = runtime(None);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..40)
            .map(|_| tokio::spawn(async { std::thread::sleep(Duration::from_millis(30)) }))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(runtime);
    eprintln!("slow polls in all: {}", slow_polls(&guard.snapshot()));
    drop(guard);
}

#[test]
fn child() {
    let Ok(program) = std::env::var(CHILD) else {
        return;
    };
    match program.as_str() {
        "two_layers_in_one_registry" => two_layers_in_one_registry(),
        "global_filter_layer_before_runtime" => global_filter_layer_before_runtime(),
        "two_guards" => two_guards(),
        "try_init_with_a_subscriber_set" => try_init_with_a_subscriber_set(),
        "second_instance_for_instrument_runtime" => second_instance_for_instrument_runtime(),
        "burst_at_the_end" => burst_at_the_end(),
        other => panic!("no program {other}"),
    }
    eprintln!("child done");
}

/// The first line of each summary in `log`, to its count of slow polls.
fn headlines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("stallscope: summary: ").map(|(_, rest)| rest))
        .filter(|rest| !rest.starts_with('#') && !rest.starts_with("blocking pool"))
        .map(|rest| {
            let words: Vec<&str> = rest.split(' ').take(3).collect();
            format!("summary: {}", words.join(" "))
        })
        .collect()
}

#[test]
fn a_second_layer_in_one_registry_is_refused_in_one_line_and_the_first_measures() {
    let log = run("two_layers_in_one_registry", &[]);
    let refused = lines_with(
        &log,
        "a second stallscope layer in one subscriber is ignored",
    );
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("WARN"), "{log}");
    // One summary (the first layer's), counting both stalls.
    assert_eq!(headlines(&log), ["summary: 2 slow polls"], "{log}");
}

#[test]
fn a_filter_on_the_whole_registry_is_said_when_the_layer_was_built_before_the_runtime() {
    let log = run("global_filter_layer_before_runtime", &[]);
    let said = lines_with(&log, "no tokio task spans seen");
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains("a filter on the whole subscriber") && said[0].contains("max_level=info"),
        "names the cause: {}",
        said[0]
    );
}

#[test]
fn the_last_of_two_guards_ends_the_instance() {
    let log = run("two_guards", &[]);
    // One summary, at the last drop, counting the stall after the first.
    assert_eq!(headlines(&log), ["summary: 1 slow polls"], "{log}");
}

#[test]
fn try_init_with_a_subscriber_set_starts_nothing_and_says_nothing() {
    // A collector that accepts connections and never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", black_hole.local_addr().unwrap());
    let started = Instant::now();
    let log = run(
        "try_init_with_a_subscriber_set",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)],
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    for said in ["exporting", "summary", "OTLP"] {
        assert!(lines_with(&log, said).is_empty(), "{said}:\n{log}");
    }
}

#[test]
fn a_second_instance_for_instrument_runtime_next_to_init_measures_and_never_exports_twice() {
    let receiver = HttpReceiver::start();
    let log = run(
        "second_instance_for_instrument_runtime",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "60000".to_owned()),
        ],
    );
    let off = lines_with(&log, "OTLP export is off for this stallscope instance");
    assert_eq!(off.len(), 1, "{log}");
    // One instance exports: one final export of metrics reaches the receiver.
    let requests = receiver.stop();
    let metrics = requests.iter().filter(|(p, _)| p == "/v1/metrics").count();
    assert_eq!(metrics, 1, "{log}");
}

#[test]
fn a_burst_of_suppressed_lines_at_the_very_end_is_counted_in_a_line() {
    let log = run("burst_at_the_end", &[]);
    let at_the_end = lines_with(&log, "more report lines were suppressed by the rate limit");
    assert_eq!(at_the_end.len(), 1, "{log}");
    // Each slow poll is written, or counted in some line's `suppressed` field (which counts the
    // live reports suppressed too).
    let in_all: usize = log
        .split("slow polls in all: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the child's count");
    assert!(in_all > 20, "a burst over the limit: {in_all}");
    let slow_polls_written = lines_with(&log, "slow poll:").len();
    let suppressed: usize = log
        .lines()
        .filter_map(|l| l.split(" suppressed=").nth(1))
        .map(|n| {
            n.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(
        slow_polls_written + suppressed >= in_all,
        "{slow_polls_written} written, {suppressed} suppressed:\n{log}"
    );
}
