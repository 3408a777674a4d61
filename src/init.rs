//! One call for applications without a subscriber: fmt to stderr, tokio-console, stallscope,
//! and OTLP when configured; and the pieces of it an application with its own subscriber
//! composes next to [`layer()`](crate::layer()): [`log_filter`] and [`console_layer`].

use tracing::Subscriber;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{parse_bool, vars, ConfigError};
use crate::{Builder, Error, Guard};

/// Installs the global subscriber: `fmt` to stderr (filtered by [`log_filter`]: `RUST_LOG`,
/// default `info`), the tokio-console layer ([`console_layer`]), and the stallscope layer
/// configured from the environment, exporting OTLP when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is
/// set.
///
/// Returns the [`Guard`] to keep until the end of `main`; any configuration error names the
/// variable and the expected form.
pub fn try_init() -> Result<Guard, Error> {
    // Every variable is checked before anything starts: a bad one is an error, not a panic
    // inside console-subscriber or a half-started instance.
    let log_filter = try_log_filter()?;
    // Refused before anything starts: an instance built only to be thrown away would leave
    // exporter threads, a start-up line, a summary of a run that never was and a final flush
    // (seconds against a collector that does not answer) behind.
    if tracing::dispatcher::has_been_set() {
        return Err(Error::SubscriberAlreadySet(Box::new(GlobalDefaultSet)));
    }
    let console = try_console_layer()?;
    let layer = Builder::from_env()?.build()?;
    let guard = layer.guard();
    // A per-layer filter on fmt only: a global filter would hide tokio's TRACE-level task spans
    // from stallscope and the console.
    let fmt_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi_enabled())
        .with_filter(log_filter);
    tracing_subscriber::registry()
        .with(console)
        .with(layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|e| Error::SubscriberAlreadySet(Box::new(e)))?;
    Ok(guard)
}

/// `tracing`'s global default was set before `try_init` looked (its own error for that is
/// made only by the call that fails to set it).
#[derive(Debug)]
struct GlobalDefaultSet;

impl std::fmt::Display for GlobalDefaultSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a global default trace dispatcher has already been set")
    }
}

impl std::error::Error for GlobalDefaultSet {}

/// [`try_init`], panicking with the error's message (which names the bad variable).
pub fn init() -> Guard {
    try_init().unwrap_or_else(|e| panic!("stallscope: {e}"))
}

/// The filter for your fmt layer: `RUST_LOG`'s directives, or `info` when it is unset or
/// empty, so stallscope's start-up line, its WARN lines and the summary show by default
/// (`EnvFilter::from_default_env()` shows only ERROR without `RUST_LOG`). Put it on the fmt
/// layer (`fmt::layer().with_filter(stallscope::log_filter())`), not on the registry: a global
/// filter hides tokio's task spans from stallscope.
///
/// # Panics
///
/// When `RUST_LOG` holds directives tracing-subscriber cannot parse, naming the variable.
pub fn log_filter() -> EnvFilter {
    try_log_filter().unwrap_or_else(|e| panic!("stallscope: {e}"))
}

fn try_log_filter() -> Result<EnvFilter, ConfigError> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| {
                ConfigError::new(
                    "RUST_LOG",
                    &directives,
                    &format!("tracing-subscriber filter directives ({e})"),
                )
            })
        }
        _ => Ok(EnvFilter::new("info")),
    }
}

/// tokio-console's layer, to compose next to [`layer()`](crate::layer()) in full mode: with
/// feature `console`, console-subscriber's layer with its gRPC server started (configured by
/// its `TOKIO_CONSOLE_*` variables, default bind `127.0.0.1:6669`); `None`, a layer that does
/// nothing, without the feature, with `STALLSCOPE_CONSOLE=off`, or when built without
/// `--cfg tokio_unstable`. The feature turns tokio's `tracing` feature on: leave it out of
/// production mode's build.
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// let stallscope = stallscope::layer();
/// let _guard = stallscope.guard();
/// let subscriber = tracing_subscriber::registry()
///     .with(stallscope)
///     .with(stallscope::console_layer());
/// # drop(subscriber);
/// ```
///
/// # Panics
///
/// On a bad `STALLSCOPE_CONSOLE` or `TOKIO_CONSOLE_BIND`, naming the variable.
pub fn console_layer<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    try_console_layer().unwrap_or_else(|e| panic!("stallscope: {e}"))
}

#[cfg(feature = "console")]
fn try_console_layer<S>() -> Result<Option<impl Layer<S>>, ConfigError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let env = |name: &str| std::env::var(name).ok();
    if let Some(v) = crate::config::var(&env, vars::CONSOLE) {
        if !parse_bool(vars::CONSOLE, &v)? {
            return Ok(None);
        }
    }
    let settings = crate::export::console::ConsoleSettings::from_env(&env)?;
    match crate::export::console::layer(&settings) {
        Ok(layer) => Ok(layer),
        // Its port taken (a second process on the default port): the application goes on
        // without the console, and the line is said once stallscope's log is up (the
        // subscriber this layer goes into is not installed yet).
        Err(line) => {
            crate::report::console_unavailable(line);
            Ok(None)
        }
    }
}

#[cfg(not(feature = "console"))]
fn try_console_layer<S>() -> Result<Option<impl Layer<S>>, ConfigError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let Ok(v) = std::env::var(vars::CONSOLE) {
        parse_bool(vars::CONSOLE, &v)?;
    }
    Ok(None::<tracing_subscriber::layer::Identity>)
}

fn ansi_enabled() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}
