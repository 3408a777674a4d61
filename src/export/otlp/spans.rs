//! Stall spans: each stall at or over the threshold as one OTLP span, from the stall's start to
//! its end (wall clock), parented to the user's span when one is known. docs/metrics.md's
//! "Stall spans" reference mirrors this file (checked by `reference`).
//!
//! Spans go through the SDK's batch span processor, which exports on its own thread from a
//! bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2048) that drops when full: recording never
//! blocks the thread that stalled. A rate limit in front of it caps the spans built per second,
//! so a storm of stalls costs neither unbounded memory nor a flood of exports.

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanExporter,
    SpanLimits,
};
use opentelemetry_sdk::Resource;

use super::settings::BatchSettings;
use crate::engine::stall::{Stall, TraceParent};
use crate::report::RateLimiter;

/// Stall spans built per second at most; the next span after a dropped one says how many
/// were dropped (`stallscope.spans_suppressed`).
pub(crate) const MAX_SPANS_PER_SECOND: u64 = 100;

/// The stall-span pipeline: its own tracer provider, never the application's global one.
pub(crate) struct StallSpans {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    limiter: RateLimiter,
}

impl std::fmt::Debug for StallSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallSpans").finish_non_exhaustive()
    }
}

impl StallSpans {
    /// A batch span processor over `exporter`, configured by `batch` (the `OTEL_BSP_*`
    /// variables, validated by [`super::settings`]).
    ///
    /// Stall spans are all kept (they are rate-limited instead of sampled), except that a
    /// stall inside a trace the application sampled out is dropped with that trace. The
    /// sampler, span limits and batch settings are all set here, so the SDK's own reading of
    /// `OTEL_TRACES_SAMPLER`, `OTEL_SPAN_*_LIMIT` and `OTEL_BSP_*` never applies.
    pub(crate) fn start(
        exporter: impl SpanExporter + 'static,
        resource: Resource,
        batch: BatchSettings,
    ) -> Self {
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(batch.schedule_delay)
            .with_max_queue_size(batch.max_queue_size)
            .with_max_export_batch_size(batch.max_export_batch_size)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_span_limits(SpanLimits::default())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("stallscope")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        StallSpans {
            provider,
            tracer,
            limiter: RateLimiter::new(MAX_SPANS_PER_SECOND),
        }
    }

    /// Hands the stall's span to the batch processor (a bounded queue; never blocks).
    pub(crate) fn export(&self, stall: &Stall) {
        let Some(suppressed) = self.limiter.allow() else {
            return;
        };
        let mut span = self
            .tracer
            .span_builder(stall.kind.span_name())
            .with_kind(SpanKind::Internal)
            .with_start_time(stall.started())
            .with_attributes(attributes(stall, suppressed))
            .start_with_context(&self.tracer, &parent_context(stall.parent));
        span.end_with_timestamp(stall.ended);
    }

    /// What exports the queued spans and stops the processor's thread, within a timeout (to
    /// run on a helper thread).
    pub(crate) fn shutdown_handle(
        &self,
    ) -> impl FnOnce(std::time::Duration) -> OTelSdkResult + Send + 'static {
        let provider = self.provider.clone();
        move |timeout| provider.shutdown_with_timeout(timeout)
    }
}

/// An empty context (never the thread's current one: parenting is explicit), or one whose
/// span is the user's.
fn parent_context(parent: Option<TraceParent>) -> Context {
    let Some(parent) = parent else {
        return Context::new();
    };
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::NOT_SAMPLED
    };
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        flags,
        false,
        TraceState::NONE,
    ))
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The span's attributes: the site's (as on the metrics: `code.*` of the spawn location,
/// `tokio.task.name`), then what is known about this stall.
pub(crate) fn attributes(stall: &Stall, suppressed: u64) -> Vec<KeyValue> {
    let mut a = super::instruments::site_attributes(stall.site);
    if let Some(id) = stall.task_id {
        a.push(KeyValue::new("tokio.task.id", int(id)));
    }
    if let Some(runtime) = &stall.runtime_id {
        a.push(KeyValue::new("tokio.runtime.id", runtime.clone()));
    }
    if let Some(thread) = &stall.thread {
        a.push(KeyValue::new("thread.name", thread.clone()));
    }
    if let Some(span) = stall.span {
        a.push(KeyValue::new("stallscope.span.name", span.name()));
        if let (Some(file), Some(line)) = (span.file(), span.line()) {
            a.push(KeyValue::new(
                "stallscope.span.location",
                format!("{file}:{line}"),
            ));
        }
    }
    if let Some((lock, op)) = stall.lock {
        a.push(KeyValue::new("tokio.lock.kind", lock.kind.as_str()));
        if let Some(name) = lock.name {
            a.push(KeyValue::new("tokio.lock.name", name));
        }
        a.push(KeyValue::new("tokio.lock.operation", op.as_str()));
        a.push(KeyValue::new(
            "tokio.lock.location",
            lock.location.to_string(),
        ));
    }
    a.push(KeyValue::new(
        "stallscope.duration",
        stall.duration.as_secs_f64(),
    ));
    a.push(KeyValue::new(
        "stallscope.threshold",
        stall.threshold.as_secs_f64(),
    ));
    if suppressed > 0 {
        a.push(KeyValue::new(
            "stallscope.spans_suppressed",
            int(suppressed),
        ));
    }
    if let Some(stack) = &stall.stack {
        a.push(KeyValue::new("code.stacktrace", stack.clone()));
    }
    a
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry_sdk::trace::SpanData;

    use super::*;
    use crate::engine::sites::{SiteKey, SiteTable, TaskKind};
    use crate::engine::stall::StallKind;

    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn test_batch() -> BatchSettings {
        BatchSettings {
            schedule_delay: Duration::from_secs(5),
            max_queue_size: 2048,
            max_export_batch_size: 512,
        }
    }

    fn site() -> &'static crate::engine::sites::Site {
        let table = Box::leak(Box::new(SiteTable::new(8, 8)));
        let bounds = crate::engine::histogram::Bounds::new(&[0.1, 1.0]);
        table.intern(
            &SiteKey {
                kind: TaskKind::Async,
                file: "src/app.rs",
                line: 7,
                column: 5,
                task_name: Some("worker"),
            },
            &bounds,
            &|_| {},
        )
    }

    fn value(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn a_stall_becomes_a_span_from_its_start_to_its_end_with_its_attributes() {
        let collected = Collect::default();
        let spans = StallSpans::start(
            collected.clone(),
            Resource::builder_empty().build(),
            test_batch(),
        );
        let mut stall = Stall::new(
            StallKind::SlowPoll,
            site(),
            Duration::from_millis(1500),
            Duration::from_millis(100),
        );
        stall.task_id = Some(42);
        stall.stack = Some("0: app::blocking_call\n1: app::main".into());
        stall.parent = Some(TraceParent {
            trace_id: [7; 16],
            span_id: [9; 8],
            sampled: true,
        });
        spans.export(&stall);
        spans.shutdown_handle()(Duration::from_secs(5)).unwrap();

        let collected = collected.0.lock().unwrap();
        assert_eq!(collected.len(), 1);
        let span = &collected[0];
        assert_eq!(span.name, "stallscope.slow_poll");
        assert_eq!(span.span_kind, SpanKind::Internal);
        assert_eq!(
            span.end_time.duration_since(span.start_time).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(span.end_time, stall.ended);
        assert_eq!(span.span_context.trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(span.parent_span_id, SpanId::from_bytes([9; 8]));
        assert_eq!(value(span, "code.file.path").as_deref(), Some("src/app.rs"));
        assert_eq!(value(span, "code.line.number").as_deref(), Some("7"));
        assert_eq!(value(span, "code.column.number").as_deref(), Some("5"));
        assert_eq!(value(span, "tokio.task.name").as_deref(), Some("worker"));
        assert_eq!(value(span, "tokio.task.id").as_deref(), Some("42"));
        assert_eq!(value(span, "stallscope.duration").as_deref(), Some("1.5"));
        assert_eq!(value(span, "stallscope.threshold").as_deref(), Some("0.1"));
        assert_eq!(
            value(span, "code.stacktrace").as_deref(),
            Some("0: app::blocking_call\n1: app::main")
        );
        assert_eq!(value(span, "stallscope.spans_suppressed"), None);
    }

    #[test]
    fn a_storm_of_stalls_is_capped_and_the_next_span_counts_the_dropped() {
        let collected = Collect::default();
        let spans = StallSpans::start(
            collected.clone(),
            Resource::builder_empty().build(),
            test_batch(),
        );
        let site = site();
        let stall = Stall::new(
            StallKind::LockWait,
            site,
            Duration::from_millis(200),
            Duration::from_millis(100),
        );
        let window = std::time::Instant::now();
        for _ in 0..10_000 {
            spans.export(&stall);
        }
        let storm_took = window.elapsed();
        // The limiter's window is the whole second since it was created: wait for the next.
        std::thread::sleep(Duration::from_millis(1100));
        spans.export(&stall);
        spans.shutdown_handle()(Duration::from_secs(5)).unwrap();

        let collected = collected.0.lock().unwrap();
        let max = MAX_SPANS_PER_SECOND as usize;
        // At most one window per started second of the storm, plus the one after it.
        let windows = storm_took.as_secs() as usize + 1;
        assert!(
            collected.len() > max / 2 && collected.len() <= windows * max + 1,
            "{} spans for 10,000 stalls in {storm_took:?}",
            collected.len()
        );
        assert!(
            value(collected.last().unwrap(), "stallscope.spans_suppressed").is_some(),
            "the span after the storm counts the dropped ones"
        );
        let dropped: usize = collected
            .iter()
            .filter_map(|span| value(span, "stallscope.spans_suppressed"))
            .map(|n| n.parse::<usize>().unwrap())
            .sum();
        assert_eq!(dropped + collected.len(), 10_001);
    }
}
