//! OpenTelemetry over OTLP: metrics through a periodic reader on the SDK's own thread, cumulative
//! temporality; stall spans through a batch span processor on its own thread ([`spans`]); gRPC
//! or HTTP/protobuf by `OTEL_EXPORTER_OTLP_PROTOCOL`.
//!
//! Histograms are recorded per poll through instruments bound to each site's attributes (no
//! attribute lookup per record); counters and gauges are observable and read stallscope's own
//! atomics when the reader collects, so they cost nothing on the hot path. A collector that is
//! down only costs the reader thread its timeout; the log gets one line, then one every few
//! minutes while it stays down.

mod instruments;
#[cfg(feature = "tracing-opentelemetry")]
pub(crate) mod parent;
mod quiet;
#[cfg(test)]
mod reference;
pub(crate) mod settings;
mod spans;

use std::sync::mpsc;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use std::sync::Arc;

use opentelemetry::metrics::{BoundHistogram, Histogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::Resource;

use quiet::{FailureLog, FinalExport, FlushEvent, QuietMetricExporter, QuietSpanExporter};
pub use settings::Protocol;
use settings::{OtlpSettings, SignalSettings};
use spans::StallSpans;

use crate::engine::locks::{LockOp, LockSite};
use crate::engine::sink::{LockRecorder, Sink, SiteRecorder};
use crate::engine::sites::{Site, TaskKind};
use crate::engine::stall::{Stall, TraceParent};
use crate::engine::Engine;
use crate::snapshot::Snapshot;

/// Why OTLP export could not start: what failed and, when another error made it fail, that
/// error ([`Error::source`](std::error::Error::source)).
#[derive(Debug)]
pub struct OtlpError {
    what: Option<String>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl OtlpError {
    fn new(what: impl Into<String>) -> Self {
        OtlpError {
            what: Some(what.into()),
            cause: None,
        }
    }

    fn caused_by(
        what: Option<&str>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        OtlpError {
            what: what.map(str::to_owned),
            cause: Some(cause.into()),
        }
    }
}

impl std::fmt::Display for OtlpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot start OTLP export")?;
        if let Some(what) = &self.what {
            write!(f, ": {what}")?;
        }
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OtlpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

pub(crate) struct OtlpExporter {
    provider: SdkMeterProvider,
    histograms: instruments::Histograms,
    /// `None` when stall spans are off.
    spans: Option<StallSpans>,
    settings: OtlpSettings,
    /// How the metrics reader's last export went, for the final flush.
    final_export: Arc<FinalExport>,
    /// gRPC needs a tokio runtime for tonic; this one is private and never instrumented.
    _grpc_runtime: Option<tokio::runtime::Runtime>,
}

/// One site's histograms, bound to its attributes.
pub(crate) struct SiteInstruments {
    pub(crate) attributes: Vec<KeyValue>,
    poll: Option<BoundHistogram<f64>>,
    queue_wait: Option<BoundHistogram<f64>>,
    run: Option<BoundHistogram<f64>>,
}

impl std::fmt::Debug for SiteInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteInstruments")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

/// One lock site's histograms, per operation
/// ([`LockOp::index`](crate::engine::locks::LockOp::index): `read`/`write` for a RwLock),
/// each bound to its attributes when it first records: a lock exports the series it has
/// values for (a lock never contended has no wait histogram, a std lock never has a
/// cancelled one), not every series it might have.
pub(crate) struct LockInstruments {
    pub(crate) attributes: Vec<KeyValue>,
    ops: Vec<LockOpInstruments>,
    wait: Histogram<f64>,
    hold: Histogram<f64>,
}

struct LockOpInstruments {
    /// The lock's attributes and `tokio.lock.operation`.
    attributes: Vec<KeyValue>,
    wait: OnceLock<BoundHistogram<f64>>,
    cancelled_wait: OnceLock<BoundHistogram<f64>>,
    hold: OnceLock<BoundHistogram<f64>>,
}

impl LockOpInstruments {
    fn with_outcome(&self, outcome: &'static str) -> Vec<KeyValue> {
        let mut attributes = self.attributes.clone();
        attributes.push(KeyValue::new("outcome", outcome));
        attributes
    }
}

impl std::fmt::Debug for LockInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockInstruments")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

impl LockInstruments {
    fn op(&self, op: LockOp) -> Option<&LockOpInstruments> {
        self.ops.get(op.index())
    }
}

impl LockRecorder for LockInstruments {
    fn record_wait(&self, op: LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.wait
                .get_or_init(|| self.wait.bind(&i.with_outcome("acquired")))
                .record(d.as_secs_f64());
        }
    }

    /// Only tokio's locks record these: an async acquisition can be given up, a std lock's
    /// cannot.
    fn record_cancelled_wait(&self, op: LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.cancelled_wait
                .get_or_init(|| self.wait.bind(&i.with_outcome("cancelled")))
                .record(d.as_secs_f64());
        }
    }

    fn record_hold(&self, op: LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.hold
                .get_or_init(|| self.hold.bind(&i.attributes))
                .record(d.as_secs_f64());
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl SiteRecorder for SiteInstruments {
    #[inline]
    fn record_poll(&self, d: Duration) {
        if let Some(h) = &self.poll {
            h.record(d.as_secs_f64());
        }
    }

    fn record_queue_wait(&self, d: Duration) {
        if let Some(h) = &self.queue_wait {
            h.record(d.as_secs_f64());
        }
    }

    fn record_blocking_run(&self, d: Duration) {
        if let Some(h) = &self.run {
            h.record(d.as_secs_f64());
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The OTLP exporter as one of an instance's sinks: each site and lock gets its bound
/// histograms, stalls go out as spans, and the counters and gauges are read from the engine
/// whenever the metrics reader collects (see [`instruments::register_observables`]).
impl Sink for OtlpExporter {
    fn bind_site(&self, site: &Site) -> Option<Box<dyn SiteRecorder>> {
        Some(Box::new(OtlpExporter::bind_site(self, site)))
    }

    fn bind_lock(&self, lock: &LockSite) -> Option<Box<dyn LockRecorder>> {
        Some(Box::new(OtlpExporter::bind_lock(self, lock)))
    }

    fn exports_stall_spans(&self) -> bool {
        OtlpExporter::exports_stall_spans(self)
    }

    fn trace_parent(&self, span: Option<&tracing::span::Id>) -> Option<TraceParent> {
        #[cfg(feature = "tracing-opentelemetry")]
        return parent::find(span);
        #[cfg(not(feature = "tracing-opentelemetry"))]
        {
            let _ = span;
            None
        }
    }

    fn describe_export(&self) -> Option<String> {
        Some(self.describe())
    }

    fn stall(&self, engine: &Engine, stall: &Stall) {
        if !engine.is_shut_down() {
            self.export_stall(stall);
        }
    }

    fn shutdown(&self, _engine: &Engine, _snapshot: &Snapshot) {
        OtlpExporter::shutdown(self);
    }
}

/// This exporter's handle on `site`, if it bound one.
pub(crate) fn site_instruments(site: &Site) -> Option<&SiteInstruments> {
    site.recorders
        .iter()
        .find_map(|recorder| recorder.as_any().downcast_ref())
}

/// This exporter's handle on `lock`, if it bound one.
pub(crate) fn lock_instruments(lock: &LockSite) -> Option<&LockInstruments> {
    lock.recorders
        .iter()
        .find_map(|recorder| recorder.as_any().downcast_ref())
}

impl OtlpExporter {
    /// Starts the metrics pipeline and, when the settings ask for them, stall spans.
    pub(crate) fn start(
        engine: Weak<Engine>,
        settings: OtlpSettings,
        bounds: &[f64],
    ) -> Result<OtlpExporter, OtlpError> {
        let grpc = std::iter::once(&settings.metrics)
            .chain(settings.traces.as_ref().map(|(traces, _)| traces))
            .any(|s| s.protocol == Protocol::Grpc);
        let grpc_runtime = if grpc { Some(grpc_runtime()?) } else { None };
        // tonic's channels are built inside the private runtime and live on it.
        let _enter = grpc_runtime.as_ref().map(|rt| rt.enter());
        // Built here, not by the SDK from the environment: its reading of
        // OTEL_RESOURCE_ATTRIBUTES does not percent-decode values.
        let resource = Resource::builder_empty()
            .with_detector(Box::new(TelemetryResourceDetector))
            .with_attributes(
                settings
                    .resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(settings.service_name.clone())
            .build();

        let final_export = Arc::new(FinalExport::default());
        let exporter = QuietMetricExporter {
            inner: build_metric_exporter(&settings.metrics)?,
            log: FailureLog::new(
                "metrics",
                &settings.metrics.endpoint,
                "the next export carries the totals",
            ),
            final_export: final_export.clone(),
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(settings.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            .build();
        let meter = provider.meter("stallscope");
        let histograms = instruments::Histograms::new(&meter, bounds);
        if let Some(engine) = engine.upgrade() {
            // A runtime dropped just after one export is still in the next one.
            engine
                .runtimes
                .keep_dropped_visible_for(settings.interval * 2);
        }
        instruments::register_observables(&meter, engine);

        let spans = match &settings.traces {
            Some((traces, batch)) => {
                let exporter = QuietSpanExporter {
                    inner: build_span_exporter(traces)?,
                    log: FailureLog::new(
                        "stall spans",
                        &traces.endpoint,
                        "the stall spans of a failed export are dropped",
                    ),
                };
                Some(StallSpans::start(exporter, resource, *batch))
            }
            None => None,
        };
        Ok(OtlpExporter {
            provider,
            histograms,
            spans,
            settings,
            final_export,
            _grpc_runtime: grpc_runtime,
        })
    }

    /// Where and how often metrics go, and where stall spans go, for the start-up line.
    pub(crate) fn describe(&self) -> String {
        let metrics = &self.settings.metrics;
        let spans = match &self.settings.traces {
            Some((traces, _)) => format!(
                "; stall spans ({}) to {}",
                traces.protocol_name(),
                traces.endpoint
            ),
            None => "; stall spans off".to_owned(),
        };
        format!(
            "OTLP metrics ({}) to {} every {:?}{spans}",
            metrics.protocol_name(),
            metrics.endpoint,
            self.settings.interval
        )
    }

    /// Whether stall spans are exported (and worth looking up a trace parent for).
    pub(crate) fn exports_stall_spans(&self) -> bool {
        self.spans.is_some()
    }

    /// Exports `stall` as a span (rate-limited; never blocks).
    pub(crate) fn export_stall(&self, stall: &Stall) {
        if let Some(spans) = &self.spans {
            spans.export(stall);
        }
    }

    pub(crate) fn bind_site(&self, site: &Site) -> SiteInstruments {
        let attributes = instruments::site_attributes(site);
        let h = &self.histograms;
        let (poll, queue_wait, run) = match site.kind {
            TaskKind::Async => (Some(h.poll.bind(&attributes)), None, None),
            TaskKind::Blocking => (
                None,
                Some(h.queue_wait.bind(&attributes)),
                Some(h.blocking_run.bind(&attributes)),
            ),
        };
        SiteInstruments {
            attributes,
            poll,
            queue_wait,
            run,
        }
    }

    pub(crate) fn bind_lock(&self, lock: &LockSite) -> LockInstruments {
        let attributes = instruments::lock_attributes(lock);
        let ops = lock
            .kind
            .operations()
            .iter()
            .map(|op| {
                let mut with_op = attributes.clone();
                with_op.push(KeyValue::new("tokio.lock.operation", op.as_str()));
                LockOpInstruments {
                    attributes: with_op,
                    wait: OnceLock::new(),
                    cancelled_wait: OnceLock::new(),
                    hold: OnceLock::new(),
                }
            })
            .collect();
        LockInstruments {
            attributes,
            ops,
            wait: self.histograms.lock_wait.clone(),
            hold: self.histograms.lock_hold.clone(),
        }
    }

    /// Final collection and export of metrics, and export of the queued stall spans, side by
    /// side, each waited for as long as its export timeout allows (and a second more for the
    /// collection), and reported as it went. Runs on helper threads: shutting down on a
    /// current-thread runtime's own thread can deadlock.
    pub(crate) fn shutdown(&self) {
        let deadline = |settings: &SignalSettings| Instant::now() + settings.timeout + FLUSH_MARGIN;
        let metrics_deadline = deadline(&self.settings.metrics);
        let (events_tx, events) = mpsc::channel();
        self.final_export.watch(events_tx.clone());
        let provider = self.provider.clone();
        let metrics_started = in_helper_thread(move || {
            let _ = events_tx.send(FlushEvent::ProviderReturned(provider.shutdown()));
        });
        let spans = match (&self.spans, &self.settings.traces) {
            (Some(spans), Some((traces, _))) => {
                let shutdown = spans.shutdown_handle();
                let (done_tx, done) = mpsc::channel();
                let timeout = traces.timeout + FLUSH_MARGIN;
                in_helper_thread(move || {
                    let _ = done_tx.send(shutdown(timeout));
                })
                .then(|| (traces, deadline(traces), done))
            }
            _ => None,
        };
        let metrics = if metrics_started {
            wait_for_metrics(&events, metrics_deadline)
        } else {
            FlushOutcome::Failed("no thread could be started for it".to_owned())
        };
        report_flush("metrics", &self.settings.metrics, metrics);
        if let Some((traces, deadline, done)) = spans {
            let outcome =
                match done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Ok(())) => FlushOutcome::Delivered,
                    Ok(Err(OTelSdkError::Timeout(_))) | Err(_) => FlushOutcome::TimedOut,
                    Ok(Err(e)) => FlushOutcome::Failed(e.to_string()),
                };
            report_flush("stall spans", traces, outcome);
        }
    }
}

/// What the final flush waits beyond the export's timeout: the collection before it.
const FLUSH_MARGIN: Duration = Duration::from_secs(1);

enum FlushOutcome {
    Delivered,
    Failed(String),
    TimedOut,
}

/// How the final metrics export went, from the exporter's own account: the SDK's `shutdown`
/// returns after a fixed 5 s even while the export, bounded by its own timeout, goes on.
fn wait_for_metrics(events: &mpsc::Receiver<FlushEvent>, deadline: Instant) -> FlushOutcome {
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(FlushEvent::ReaderDone(None | Some(Ok(())))) => return FlushOutcome::Delivered,
            Ok(FlushEvent::ReaderDone(Some(Err(e)))) => return FlushOutcome::Failed(e),
            Ok(FlushEvent::ProviderReturned(Ok(()))) => return FlushOutcome::Delivered,
            Ok(FlushEvent::ProviderReturned(Err(e @ OTelSdkError::AlreadyShutdown))) => {
                return FlushOutcome::Failed(e.to_string())
            }
            // Its fixed 5 s wait ran out (the export goes on, bounded by its own timeout), or
            // the reader failed, which it reported first.
            Ok(FlushEvent::ProviderReturned(Err(_))) => continue,
            Err(_) => return FlushOutcome::TimedOut,
        }
    }
}

/// One line when the final export of `signal` was not confirmed; nothing when it was.
fn report_flush(signal: &str, settings: &SignalSettings, outcome: FlushOutcome) {
    match outcome {
        FlushOutcome::Delivered => {}
        FlushOutcome::Failed(e) => tracing::warn!(
            target: "stallscope",
            "final OTLP export of {signal} to {} failed: {e}; the collector did not confirm \
             what was recorded since the last export",
            settings.endpoint
        ),
        FlushOutcome::TimedOut => tracing::warn!(
            target: "stallscope",
            "final OTLP export of {signal} to {} got no answer within {} ({}); giving up: \
             the collector may not have what was recorded since the last export",
            settings.endpoint,
            crate::config::format_duration(settings.timeout),
            settings.timeout_variable
        ),
    }
}

/// Runs `f` on a helper thread; whether one could be started.
fn in_helper_thread(f: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new()
        .name("stallscope-flush".into())
        .spawn(f)
        .is_ok()
}

fn grpc_runtime() -> Result<tokio::runtime::Runtime, OtlpError> {
    #[cfg(feature = "otlp-grpc")]
    {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stallscope-otlp")
            .enable_all()
            // The exporter's own tasks are not the application's: keep them out of every
            // subscriber (ours, fmt, the console).
            .on_thread_start(|| {
                std::mem::forget(tracing::subscriber::set_default(
                    tracing_core::subscriber::NoSubscriber::default(),
                ))
            })
            .build()
            .map_err(|e| OtlpError::caused_by(Some("cannot start the gRPC exporter's runtime"), e))
    }
    #[cfg(not(feature = "otlp-grpc"))]
    Err(OtlpError::new(
        "gRPC support is not compiled in (feature `otlp-grpc`)",
    ))
}

/// The OTLP exporter builders of both signals take the same settings: `$builder` is
/// `MetricExporter::builder()` or `SpanExporter::builder()`; `|$b| $finish` adds what the
/// signal needs and builds.
macro_rules! build_exporter {
    ($builder:expr, $settings:expr, |$b:ident| $finish:expr) => {{
        let settings: &SignalSettings = $settings;
        let built = match settings.protocol {
            #[cfg(feature = "otlp-grpc")]
            Protocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig as _;
                let $b = $builder
                    .with_tonic()
                    .with_endpoint(settings.endpoint.clone())
                    .with_timeout(settings.timeout)
                    .with_metadata(grpc_metadata(&settings.headers));
                $finish
            }
            #[cfg(feature = "otlp-http")]
            Protocol::HttpProtobuf => {
                use opentelemetry_otlp::WithHttpConfig as _;
                let $b = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(settings.endpoint.clone())
                    .with_timeout(settings.timeout)
                    .with_headers(http_headers(&settings.headers));
                $finish
            }
            #[allow(unreachable_patterns)]
            _ => return Err(OtlpError::new("the selected protocol is not compiled in")),
        };
        built.map_err(|e| OtlpError::caused_by(None, e))
    }};
}

/// Headers for the HTTP exporter, which percent-decodes the values it is given once more: a
/// decoded `%` is encoded again so that it arrives as one.
#[cfg(feature = "otlp-http")]
fn http_headers(headers: &[(String, String)]) -> std::collections::HashMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), v.replace('%', "%25")))
        .collect()
}

/// gRPC metadata from headers checked by [`settings`] (valid names and values).
#[cfg(feature = "otlp-grpc")]
fn grpc_metadata(
    headers: &[(String, String)],
) -> opentelemetry_otlp::tonic_types::metadata::MetadataMap {
    let map = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                http::HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();
    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map)
}

fn build_metric_exporter(settings: &SignalSettings) -> Result<MetricExporter, OtlpError> {
    build_exporter!(MetricExporter::builder(), settings, |b| b
        .with_temporality(Temporality::Cumulative)
        .build())
}

fn build_span_exporter(settings: &SignalSettings) -> Result<SpanExporter, OtlpError> {
    build_exporter!(SpanExporter::builder(), settings, |b| b.build())
}
