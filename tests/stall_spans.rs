//! Stall spans join the application's OpenTelemetry traces: with tracing-opentelemetry's layer
//! in the same registry (stallscope's `tracing-opentelemetry` feature), a slow poll, a blocking
//! lock wait and a blocking-pool queue wait each export a span whose parent is the user's span
//! that was active on the thread that stalled; a stall outside any span is a root.
//!
//! In-process (the subscriber is global), so this file holds one test.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use support::otlp::{spans, GrpcReceiver, ReceivedSpan};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Each stall: well over the 100 ms threshold, short enough for a quick test.
const STALL: Duration = Duration::from_millis(400);

/// A user span's OpenTelemetry ids: (trace id, span id).
type Ids = (Vec<u8>, Vec<u8>);

fn otel_ids(span: &tracing::Span) -> Ids {
    let cx = span.context();
    let otel = cx.span();
    let context = otel.span_context();
    (
        context.trace_id().to_bytes().to_vec(),
        context.span_id().to_bytes().to_vec(),
    )
}

struct Expected {
    blocking_step: Ids,
    update_counter: Ids,
    upload: Ids,
    root_line: u32,
}

async fn stalls() -> Expected {
    // A slow poll inside `request` > `blocking_step`: the innermost span names it.
    let blocking_step = tokio::spawn(
        async {
            let step = tracing::info_span!("blocking_step");
            let ids = otel_ids(&step);
            step.in_scope(|| std::thread::sleep(STALL));
            ids
        }
        .instrument(tracing::info_span!("request")),
    )
    .await
    .unwrap();

    // A task waits on a std lock a plain thread holds: a blocking lock wait (and a slow poll).
    let lock = Arc::new(stallscope::sync::Mutex::named("shared", 0u32));
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            let _guard = lock.lock().unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(STALL);
        })
    };
    let update_counter = tokio::spawn(async move {
        held_rx.await.unwrap();
        let span = tracing::info_span!("update_counter");
        let ids = otel_ids(&span);
        span.in_scope(|| *lock.lock().unwrap() += 1);
        ids
    })
    .await
    .unwrap();
    holder.join().unwrap();

    // Two jobs on a pool of one thread: the second waits for the first.
    let upload = tokio::spawn(
        async {
            let ids = otel_ids(&tracing::Span::current());
            let first = tokio::task::spawn_blocking(|| std::thread::sleep(STALL));
            let second = tokio::task::spawn_blocking(|| ());
            first.await.unwrap();
            second.await.unwrap();
            ids
        }
        .instrument(tracing::info_span!("upload")),
    )
    .await
    .unwrap();

    // A slow poll outside any span: a root span.
    let (root_line, root) = (line!(), tokio::spawn(async { std::thread::sleep(STALL) }));
    root.await.unwrap();

    Expected {
        blocking_step,
        update_counter,
        upload,
        root_line,
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str, user_span: Option<&str>) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == name
                && s.attributes.get("stallscope.span.name").map(String::as_str) == user_span
        })
        .collect();
    assert_eq!(found.len(), 1, "one {name} in {user_span:?}: {spans:#?}");
    found[0]
}

fn assert_child_of(span: &ReceivedSpan, (trace_id, span_id): &Ids) {
    assert_eq!(&span.trace_id, trace_id, "same trace: {span:#?}");
    assert_eq!(
        &span.parent_span_id, span_id,
        "child of the user's span: {span:#?}"
    );
}

/// Longer than the threshold, shorter than the stall plus what a loaded machine adds.
fn assert_about(span: &ReceivedSpan, at_least: f64) {
    let d = span.duration().as_secs_f64();
    assert!(
        (at_least..STALL.as_secs_f64() + 1.0).contains(&d),
        "{d} s: {span:#?}"
    );
    assert!((span.number("stallscope.duration") - d).abs() < 1e-6);
}

#[test]
fn stall_spans_are_children_of_the_users_active_opentelemetry_span() {
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key.starts_with("STALLSCOPE_") {
            std::env::remove_var(key);
        }
    }
    let receiver = GrpcReceiver::start();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    std::env::set_var("OTEL_SERVICE_NAME", "traced-app");

    // The application's own tracing pipeline: ids only, nothing exported.
    let app_traces = SdkTracerProvider::builder().build();
    let stallscope = stallscope::Builder::from_env().unwrap().build().unwrap();
    let guard = stallscope.guard();
    tracing_subscriber::registry()
        .with(stallscope)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(app_traces.tracer("app"))
                // As applications do: tokio's TRACE-level task spans stay out of their traces.
                .with_filter(LevelFilter::INFO),
        )
        .init();

    let started = unix_nanos();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let expected = runtime.block_on(stalls());
    drop(runtime);
    drop(guard); // flushes the stall spans
    let ended = unix_nanos();
    let (_, traces) = receiver.stop();
    let spans = spans(&traces);
    for span in &spans {
        assert!(started <= span.start_unix_nano && span.end_unix_nano <= ended);
        assert_eq!(span.resource["service.name"], "traced-app");
        assert_eq!(span.scope, "stallscope");
    }

    let slow = one(&spans, "stallscope.slow_poll", Some("blocking_step"));
    assert_child_of(slow, &expected.blocking_step);
    assert_about(slow, STALL.as_secs_f64() - 0.01);

    let wait = one(&spans, "stallscope.lock_wait", Some("update_counter"));
    assert_child_of(wait, &expected.update_counter);
    // The holder signals, then sleeps STALL: the waiter waits for most of it.
    assert_about(wait, 0.1);
    assert_eq!(wait.attr("tokio.lock.kind"), "std::sync::Mutex");
    assert_eq!(wait.attr("tokio.lock.name"), "shared");
    assert_eq!(wait.attr("tokio.lock.operation"), "lock");
    assert!(wait
        .attr("tokio.lock.location")
        .starts_with("tests/stall_spans.rs:"));
    assert_eq!(wait.attr("code.file.path"), "tests/stall_spans.rs");
    // The poll that waited is a slow poll in the same span, under the same parent.
    let waited_poll = one(&spans, "stallscope.slow_poll", Some("update_counter"));
    assert_child_of(waited_poll, &expected.update_counter);

    let queued = one(&spans, "stallscope.blocking_queue_wait", Some("upload"));
    assert_child_of(queued, &expected.upload);
    assert_about(queued, STALL.as_secs_f64() - 0.1);

    let root_line = expected.root_line.to_string();
    let root: Vec<_> = spans
        .iter()
        .filter(|s| s.attributes.get("code.line.number") == Some(&root_line))
        .collect();
    assert_eq!(root.len(), 1, "{spans:#?}");
    assert_eq!(root[0].name, "stallscope.slow_poll");
    assert!(root[0].parent_span_id.is_empty(), "a root: {root:#?}");
    assert!(!root[0].attributes.contains_key("stallscope.span.name"));
    assert_about(root[0], STALL.as_secs_f64() - 0.01);
}
