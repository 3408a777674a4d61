//! Sinks beyond the log report: OpenTelemetry over OTLP, and the tokio-console layer.
//!
//! In the flow sources → engine → sinks, the OTLP exporter implements `engine::sink::Sink`:
//! it binds its histograms to each site and lock once (so recording is a call on a bound
//! handle), exports stalls as spans, and reads counters and gauges from the engine whenever its
//! metrics reader collects. The engine imports nothing from here; the builder hands it the
//! exporter. tokio-console's layer is composed into the subscriber by `init`, beside the
//! stallscope layer.

#[cfg(feature = "console")]
pub(crate) mod console;
#[cfg(feature = "_otlp")]
pub(crate) mod otlp;
