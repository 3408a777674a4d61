//! Sinks beyond the log report: OpenTelemetry over OTLP, and the tokio-console layer.

#[cfg(feature = "console")]
pub(crate) mod console;
#[cfg(feature = "_otlp")]
pub(crate) mod otlp;
