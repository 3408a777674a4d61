//! The user's OpenTelemetry span active on the thread that stalled, read through
//! tracing-opentelemetry's layer in the same registry (feature `tracing-opentelemetry`).

use opentelemetry::trace::TraceContextExt as _;
use tracing::span::Id;
use tracing_subscriber::registry::LookupSpan as _;

use crate::engine::stall::TraceParent;

/// The OpenTelemetry span of `start` (the current span when `None`) or of its nearest ancestor
/// that has one: spans tracing-opentelemetry's layer filtered out are skipped.
///
/// Only called with spans that are alive (current on this thread, or just exited and still
/// held), and never while holding the extensions of the span it reads.
pub(crate) fn find(start: Option<&Id>) -> Option<TraceParent> {
    tracing::dispatcher::get_default(|dispatch| {
        // tracing-opentelemetry only works over a registry; its span lookup panics on an id
        // the registry does not know, so look the span up here first.
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let start = match start {
            Some(id) => id.clone(),
            None => dispatch.current_span().id()?.clone(),
        };
        let span = registry.span(&start)?;
        span.scope().find_map(|ancestor| {
            let cx = tracing_opentelemetry::get_otel_context(&ancestor.id(), dispatch)?;
            let otel_span = cx.span();
            let context = otel_span.span_context();
            context.is_valid().then(|| TraceParent {
                trace_id: context.trace_id().to_bytes(),
                span_id: context.span_id().to_bytes(),
                sampled: context.is_sampled(),
            })
        })
    })
}
