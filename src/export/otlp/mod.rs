//! OpenTelemetry metrics over OTLP: a periodic reader on the SDK's own thread, cumulative
//! temporality, gRPC or HTTP/protobuf by `OTEL_EXPORTER_OTLP_PROTOCOL`.
//!
//! Histograms are recorded per poll through instruments bound to each site's attributes (no
//! attribute lookup per record); counters and gauges are observable and read stallscope's own
//! atomics when the reader collects, so they cost nothing on the hot path. A collector that is
//! down only costs the reader thread its timeout; the log gets one line, then one every few
//! minutes while it stays down.

mod instruments;
pub(crate) mod settings;

use std::sync::mpsc;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{BoundHistogram, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::Resource;

use settings::OtlpSettings;
pub use settings::Protocol;

use crate::engine::sites::{Site, TaskKind};
use crate::engine::Engine;

/// Why OTLP export could not start.
#[derive(Debug)]
pub struct OtlpError(String);

impl std::fmt::Display for OtlpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start OTLP metrics export: {}", self.0)
    }
}

impl std::error::Error for OtlpError {}

pub(crate) struct OtlpExporter {
    provider: SdkMeterProvider,
    histograms: instruments::Histograms,
    settings: OtlpSettings,
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

/// One lock site's histograms, bound to its attributes, per operation
/// ([`LockOp::index`](crate::engine::locks::LockOp::index): `read`/`write` for a RwLock).
pub(crate) struct LockInstruments {
    pub(crate) attributes: Vec<KeyValue>,
    ops: Vec<LockOpInstruments>,
}

struct LockOpInstruments {
    wait: BoundHistogram<f64>,
    cancelled_wait: BoundHistogram<f64>,
    hold: BoundHistogram<f64>,
}

impl std::fmt::Debug for LockInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockInstruments")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

impl LockInstruments {
    fn op(&self, op: crate::engine::locks::LockOp) -> Option<&LockOpInstruments> {
        self.ops.get(op.index())
    }

    pub(crate) fn record_wait(&self, op: crate::engine::locks::LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.wait.record(d.as_secs_f64());
        }
    }

    pub(crate) fn record_cancelled_wait(&self, op: crate::engine::locks::LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.cancelled_wait.record(d.as_secs_f64());
        }
    }

    pub(crate) fn record_hold(&self, op: crate::engine::locks::LockOp, d: Duration) {
        if let Some(i) = self.op(op) {
            i.hold.record(d.as_secs_f64());
        }
    }
}

impl SiteInstruments {
    #[inline]
    pub(crate) fn record_poll(&self, d: Duration) {
        if let Some(h) = &self.poll {
            h.record(d.as_secs_f64());
        }
    }

    pub(crate) fn record_queue_wait(&self, d: Duration) {
        if let Some(h) = &self.queue_wait {
            h.record(d.as_secs_f64());
        }
    }

    pub(crate) fn record_blocking_run(&self, d: Duration) {
        if let Some(h) = &self.run {
            h.record(d.as_secs_f64());
        }
    }
}

impl OtlpExporter {
    /// Starts the pipeline if the settings ask for one; `Ok(None)` when OTLP is off.
    pub(crate) fn start(
        engine: Weak<Engine>,
        settings: OtlpSettings,
        bounds: &[f64],
    ) -> Result<OtlpExporter, OtlpError> {
        let grpc_runtime = match settings.protocol {
            Protocol::Grpc => Some(grpc_runtime()?),
            Protocol::HttpProtobuf => None,
        };
        let _enter = grpc_runtime.as_ref().map(|rt| rt.enter());
        let exporter = build_exporter(&settings)?;
        let exporter = QuietExporter {
            inner: exporter,
            endpoint: settings.endpoint.clone(),
            state: Mutex::new(FailureState::default()),
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(settings.interval)
            .build();
        let mut resource = Resource::builder();
        if let Some(name) = &settings.default_service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkMeterProvider::builder()
            .with_resource(resource.build())
            .with_reader(reader)
            .build();
        let meter = provider.meter("stallscope");
        let histograms = instruments::Histograms::new(&meter, bounds);
        instruments::register_observables(&meter, engine);
        Ok(OtlpExporter {
            provider,
            histograms,
            settings,
            _grpc_runtime: grpc_runtime,
        })
    }

    /// Where and how often metrics go, for the start-up line.
    pub(crate) fn describe(&self) -> String {
        format!(
            "OTLP metrics ({}) to {} every {:?}",
            match self.settings.protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http/protobuf",
            },
            self.settings.endpoint,
            self.settings.interval
        )
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

    pub(crate) fn bind_lock(&self, lock: &crate::engine::locks::LockSite) -> LockInstruments {
        let attributes = instruments::lock_attributes(lock);
        let ops = lock
            .kind
            .operations()
            .iter()
            .map(|op| {
                let mut with_op = attributes.clone();
                with_op.push(KeyValue::new("tokio.lock.operation", op.as_str()));
                let with_outcome = |outcome: &'static str| {
                    let mut a = with_op.clone();
                    a.push(KeyValue::new("outcome", outcome));
                    a
                };
                LockOpInstruments {
                    wait: self.histograms.lock_wait.bind(&with_outcome("acquired")),
                    cancelled_wait: self.histograms.lock_wait.bind(&with_outcome("cancelled")),
                    hold: self.histograms.lock_hold.bind(&with_op),
                }
            })
            .collect();
        LockInstruments { attributes, ops }
    }

    /// Final collection and export, bounded by the export timeout. Runs on a helper thread:
    /// shutting down on a current-thread runtime's own thread can deadlock.
    pub(crate) fn shutdown(&self) {
        let provider = self.provider.clone();
        let timeout = self.settings.timeout;
        let (done_tx, done_rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("stallscope-flush".into())
            .spawn(move || {
                let _ = done_tx.send(provider.shutdown_with_timeout(timeout));
            });
        if spawned.is_err() {
            return;
        }
        match done_rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                target: "stallscope",
                "final OTLP export to {} failed: {e}; metrics of the last interval are lost",
                self.settings.endpoint
            ),
            Err(_) => tracing::warn!(
                target: "stallscope",
                "final OTLP export to {} did not finish within {:?}; giving up",
                self.settings.endpoint,
                timeout
            ),
        }
    }
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
            .map_err(|e| OtlpError(format!("cannot start the gRPC exporter's runtime: {e}")))
    }
    #[cfg(not(feature = "otlp-grpc"))]
    Err(OtlpError(
        "gRPC support is not compiled in (feature `otlp-grpc`)".into(),
    ))
}

fn build_exporter(settings: &OtlpSettings) -> Result<MetricExporter, OtlpError> {
    let built = match settings.protocol {
        #[cfg(feature = "otlp-grpc")]
        Protocol::Grpc => MetricExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .with_temporality(Temporality::Cumulative)
            .build(),
        #[cfg(feature = "otlp-http")]
        Protocol::HttpProtobuf => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.timeout)
            .with_temporality(Temporality::Cumulative)
            .build(),
        #[allow(unreachable_patterns)]
        _ => return Err(OtlpError("the selected protocol is not compiled in".into())),
    };
    built.map_err(|e| OtlpError(e.to_string()))
}

/// Logs export failures once, then at most every [`FAILURE_LOG_INTERVAL`], and recovery once.
struct QuietExporter {
    inner: MetricExporter,
    endpoint: String,
    state: Mutex<FailureState>,
}

const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Default)]
struct FailureState {
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    failures: u64,
}

impl std::fmt::Debug for QuietExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuietExporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl QuietExporter {
    fn note(&self, result: &OTelSdkResult) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if let Some(since) = s.failing_since.take() {
                    tracing::info!(
                        target: "stallscope",
                        "OTLP export to {} works again after {} failed attempts over {:?}",
                        self.endpoint,
                        s.failures,
                        since.elapsed()
                    );
                    s.failures = 0;
                    s.last_logged = None;
                }
            }
            Err(e) => {
                s.failures += 1;
                s.failing_since.get_or_insert_with(Instant::now);
                if s.last_logged
                    .is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL)
                {
                    s.last_logged = Some(Instant::now());
                    tracing::warn!(
                        target: "stallscope",
                        "OTLP export to {} failed ({} attempts so far): {e}. The application is not \
                         affected; export retries every interval and this message repeats at most every {:?}",
                        self.endpoint,
                        s.failures,
                        FAILURE_LOG_INTERVAL
                    );
                }
            }
        }
    }
}

impl PushMetricExporter for QuietExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.note(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}
