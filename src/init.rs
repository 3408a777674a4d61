//! One call for applications without a subscriber: fmt to stderr, tokio-console, stallscope,
//! and OTLP when configured.

use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{parse_bool, var, vars, ConfigError};
use crate::{Builder, Error, Guard};

/// Installs the global subscriber: `fmt` to stderr (filtered by `RUST_LOG`, default `info`),
/// the tokio-console layer (feature `console`, unless `STALLSCOPE_CONSOLE=off`), and the
/// stallscope layer configured from the environment, exporting OTLP when an
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` is set.
///
/// Returns the [`Guard`] to keep until the end of `main`; any configuration error names the
/// variable and the expected form.
pub fn try_init() -> Result<Guard, Error> {
    let env = |name: &str| std::env::var(name).ok();
    // Every variable is checked before anything starts: a bad one is an error, not a panic
    // inside console-subscriber or a half-started instance.
    let console_on = match var(&env, vars::CONSOLE) {
        Some(v) => parse_bool(vars::CONSOLE, &v)?,
        None => true,
    };
    #[cfg(feature = "console")]
    let console_settings = console_on
        .then(|| crate::export::console::ConsoleSettings::from_env(&env))
        .transpose()?;
    #[cfg(not(feature = "console"))]
    let _ = console_on;
    let log_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|e| {
                ConfigError::new(
                    "RUST_LOG",
                    &directives,
                    &format!("tracing-subscriber filter directives ({e})"),
                )
            })?,
        _ => EnvFilter::new("info"),
    };
    let layer = Builder::from_env()?.build()?;
    let guard = layer.guard();
    // A per-layer filter on fmt only: a global filter would hide tokio's TRACE-level task spans
    // from stallscope and the console.
    let fmt_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi_enabled())
        .with_filter(log_filter);
    let registry = tracing_subscriber::registry();

    // A console that cannot start (its port taken by another process) is said once the log
    // is up, and the application goes on without it.
    #[cfg(feature = "console")]
    let (console, console_unavailable) = match &console_settings {
        Some(settings) => match crate::export::console::layer(settings) {
            Ok(layer) => (layer, None),
            Err(line) => (None, Some(line)),
        },
        None => (None, None),
    };
    #[cfg(not(feature = "console"))]
    let (console, console_unavailable): (
        Option<tracing_subscriber::layer::Identity>,
        Option<String>,
    ) = (None, None);

    registry
        .with(console)
        .with(layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| Error::SubscriberAlreadySet(e.to_string()))?;
    if let Some(line) = console_unavailable {
        tracing::warn!(target: "stallscope", "{line}");
    }
    Ok(guard)
}

/// [`try_init`], panicking with the error's message (which names the bad variable).
pub fn init() -> Guard {
    try_init().unwrap_or_else(|e| panic!("stallscope: {e}"))
}

fn ansi_enabled() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}
