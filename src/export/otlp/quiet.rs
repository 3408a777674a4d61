//! Exporters that log their failures once, then at most every [`FAILURE_LOG_INTERVAL`], and
//! their recovery once: a collector that is down costs the exporter thread its timeout and the
//! log a line every few minutes, per signal.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

pub(crate) const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(300);

/// The failure state of one signal's exports, and the lines it writes about it.
pub(crate) struct FailureLog {
    /// `metrics` or `stall spans`.
    signal: &'static str,
    /// What a failed export loses, for the warning.
    consequence: &'static str,
    endpoint: String,
    state: Mutex<FailureState>,
}

#[derive(Default)]
struct FailureState {
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    failures: u64,
}

impl std::fmt::Debug for FailureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureLog")
            .field("signal", &self.signal)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl FailureLog {
    pub(crate) fn new(signal: &'static str, endpoint: &str, consequence: &'static str) -> Self {
        FailureLog {
            signal,
            consequence,
            endpoint: endpoint.to_owned(),
            state: Mutex::new(FailureState::default()),
        }
    }

    /// Notes the result of one export.
    pub(crate) fn note(&self, result: &OTelSdkResult) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if let Some(since) = s.failing_since.take() {
                    tracing::info!(
                        target: "stallscope",
                        "OTLP export to {} ({}) works again after {} failed attempts over {:?}",
                        self.endpoint,
                        self.signal,
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
                        "OTLP export to {} ({}) failed ({} attempts so far): {e}. The application is not \
                         affected; {}; this message repeats at most every {:?}",
                        self.endpoint,
                        self.signal,
                        s.failures,
                        self.consequence,
                        FAILURE_LOG_INTERVAL
                    );
                }
            }
        }
    }
}

/// The metrics exporter, failures logged through a [`FailureLog`].
#[derive(Debug)]
pub(crate) struct QuietMetricExporter {
    pub(crate) inner: MetricExporter,
    pub(crate) log: FailureLog,
    pub(crate) final_export: Arc<FinalExport>,
}

/// What the final export did, as the exporter saw it. The SDK's `shutdown` gives up waiting
/// for the reader after a fixed 5 s whatever the export's timeout, and says only "Failed to
/// shutdown" when the export failed; the exporter knows when the reader is done with it (the
/// reader shuts it down right after its last export) and how that export went.
#[derive(Debug, Default)]
pub(crate) struct FinalExport {
    /// The latest export's outcome since [`FinalExport::watch`].
    latest: Mutex<Option<Result<(), String>>>,
    done: Mutex<Option<mpsc::Sender<FlushEvent>>>,
}

/// What the final metrics flush waits for.
#[derive(Debug)]
pub(crate) enum FlushEvent {
    /// The reader shut the exporter down after its last export: that export's outcome, `None`
    /// when nothing was left to export.
    ReaderDone(Option<Result<(), String>>),
    /// The SDK's `shutdown` returned (possibly only because its fixed wait ran out).
    ProviderReturned(OTelSdkResult),
}

impl FinalExport {
    /// From now on, the next shutdown of the exporter reports the latest export since to `done`.
    pub(crate) fn watch(&self, done: mpsc::Sender<FlushEvent>) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
    }

    fn exported(&self, result: &OTelSdkResult) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }

    fn shut_down(&self) {
        if let Some(done) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner()).take();
            let _ = done.send(FlushEvent::ReaderDone(latest));
        }
    }
}

impl PushMetricExporter for QuietMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.log.note(&result);
        self.final_export.exported(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.final_export.shut_down();
        result
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The span exporter, failures logged through a [`FailureLog`].
#[derive(Debug)]
pub(crate) struct QuietSpanExporter {
    pub(crate) inner: SpanExporter,
    pub(crate) log: FailureLog,
}

impl opentelemetry_sdk::trace::SpanExporter for QuietSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.log.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
