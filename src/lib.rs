//! Find the task that blocks your tokio runtime, and say where.
//!
//! A synchronous call inside async code (`std::thread::sleep`, a CPU-bound loop, blocking I/O,
//! a `std::sync::Mutex` wait) freezes the worker thread it runs on, and every other task on that
//! worker stalls with it. stallscope measures every poll, attributes slow ones to the task's
//! spawn location, task name and the innermost user span active in the poll, and reports them:
//!
//! - in the application's own log (WARN events with target `stallscope`, and a summary of the
//!   worst offenders when the [`Guard`] drops): the embedded default, no collector needed;
//! - to tokio-console (feature `console`), whose layer composes in the same registry;
//! - as OpenTelemetry metrics over OTLP (feature `otlp`), configured by the standard `OTEL_*`
//!   variables, and each stall as an OTLP span (`stallscope.slow_poll`,
//!   `stallscope.blocking_queue_wait`, `stallscope.lock_wait`), parented to the application's
//!   tracing-opentelemetry span with feature `tracing-opentelemetry`.
//!
//! # Requirements
//!
//! Full mode reads tokio's own task spans: build with `--cfg tokio_unstable` (in
//! `.cargo/config.toml`: `[build] rustflags = ["--cfg", "tokio_unstable"]`) and enable tokio's
//! `tracing` feature. Without the cfg the crate still builds, says once which measurements are
//! unavailable, and keeps exporting the stable runtime metrics.
//!
//! # Drop into an existing subscriber
//!
//! ```
//! use tracing_subscriber::prelude::*;
//!
//! let stallscope = stallscope::layer(); // configured from STALLSCOPE_* and OTEL_*
//! let _guard = stallscope.guard(); // in main: logs the summary and flushes exporters at exit
//! tracing_subscriber::registry()
//!     .with(stallscope)
//!     .with(stallscope::console_layer()) // tokio-console, with feature `console`
//!     .with(tracing_subscriber::fmt::layer().with_filter(stallscope::log_filter())) // RUST_LOG, default info
//!     .init();
//! ```
//!
//! [`log_filter`] shows stallscope's lines when `RUST_LOG` is unset (where
//! `EnvFilter::from_default_env()` shows only ERROR), and sits on the fmt layer: a filter on the
//! whole registry hides tokio's task spans from stallscope. Keep the [`Guard`] for the program's
//! whole life: dropped early (a guard local to a set-up function, or `let _ = ...`), it logs the
//! summary before anything ran, and stallscope says so once it measures.
//!
//! # Production mode
//!
//! Without tokio's `tracing` feature, stallscope measures through poll hooks on a runtime you
//! build (`--cfg tokio_unstable` still needed); only runtimes built this way are measured, and
//! stallscope says so when it finds one that is not. Leave feature `console` out of this build:
//! it turns tokio's `tracing` feature back on.
//!
//! ```
//! let stallscope = stallscope::Builder::from_env()?.build()?;
//! let _guard = stallscope.guard();
//! let mut builder = tokio::runtime::Builder::new_multi_thread();
//! stallscope.instrument_runtime(&mut builder);
//! let runtime = builder.enable_all().build()?;
//! # drop(runtime);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Or let stallscope set everything up
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() {
//!     let _guard = stallscope::init(); // fmt + console + stallscope + OTLP when configured
//!     // ...
//! }
//! ```
//!
//! # Guide
//!
//! The [user guide](guide) covers the rest: [the two modes](guide::modes),
//! [the log report](guide::report), [stall stacks](guide::stacks) and how their capture stays
//! safe, [locks](guide::locks), [runtimes and the blocking pool](guide::runtimes),
//! [tokio-console](guide::console), [OpenTelemetry and Grafana](guide::grafana) and
//! [operating in production](guide::operating); and the references for
//! [configuration](guide::configuration) (every variable, builder method, default and range) and
//! [metrics and stall spans](guide::metrics). What stallscope measured so far is also available
//! in code, as a [`Snapshot`] from [`Guard::snapshot`].
#![warn(missing_docs)]
// docs.rs (nightly) shows each feature-gated item's feature; its build passes this cfg (see
// Cargo.toml). Not `docsrs`: CI builds the docs with `--cfg docsrs` on stable, where
// `doc(cfg)` is unstable.
#![cfg_attr(stallscope_doc_cfg, feature(doc_cfg))]
// As tokio-metrics: `pub` only for what is public, every public type printable, 2018 idioms.
// CI denies warnings (clippy -D warnings).
#![warn(unreachable_pub, missing_debug_implementations, rust_2018_idioms)]

mod builder;
// Only the watchdog (built with `tokio_unstable`) advances the clock; without it there are no
// task spans or hooks, so nothing is timed.
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
mod clock;
mod config;
mod engine;
mod export;
mod guard;
mod handle;
// The guide's link labels for rustdoc, before every page (see src/guide.rs): each label the
// pages under docs/ define, pointing to the module of the same page.
macro_rules! guide_labels {
    () => {
        "[modes]: crate::guide::modes\n\
         [modes-resolution]: crate::guide::modes#resolution\n\
         [modes-unstable]: crate::guide::modes#what-tokio_unstable-unlocks\n\
         [report]: crate::guide::report\n\
         [stacks]: crate::guide::stacks\n\
         [locks]: crate::guide::locks\n\
         [runtimes]: crate::guide::runtimes\n\
         [console]: crate::guide::console\n\
         [grafana]: crate::guide::grafana\n\
         [operating]: crate::guide::operating\n\
         [configuration]: crate::guide::configuration\n\
         [configuration-console]: crate::guide::configuration#tokio-console\n\
         [metrics]: crate::guide::metrics\n"
    };
}
#[doc = guide_labels!()]
#[doc = include_str!("../docs/README.md")]
pub mod guide;
#[cfg(tokio_unstable)]
mod hooks;
// Without tokio's poll hooks: the same functions, installing nothing.
#[cfg(not(tokio_unstable))]
#[path = "hooks/unavailable.rs"]
mod hooks;
mod init;
mod layer;
mod report;
pub mod snapshot;
pub mod sync;
pub mod task;

pub use builder::Builder;
pub use config::{ConfigError, StackSignal, Toggle};
pub use guard::Guard;
pub use handle::Handle;
pub use init::{console_layer, init, log_filter, try_init};
pub use layer::StallscopeLayer;
pub use snapshot::LockKind;
pub use snapshot::Snapshot;

#[cfg(feature = "_otlp")]
#[cfg_attr(
    stallscope_doc_cfg,
    doc(cfg(any(feature = "otlp-http", feature = "otlp-grpc")))
)]
pub use export::otlp::{OtlpError, Protocol};

/// Why stallscope could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is unusable; the error names the variable.
    Config(ConfigError),
    /// The OTLP exporter could not be built.
    #[cfg(feature = "_otlp")]
    #[cfg_attr(
        stallscope_doc_cfg,
        doc(cfg(any(feature = "otlp-http", feature = "otlp-grpc")))
    )]
    Otlp(OtlpError),
    /// `init` found a global subscriber already installed; the error says how it found it.
    SubscriberAlreadySet(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            #[cfg(feature = "_otlp")]
            Error::Otlp(e) => e.fmt(f),
            Error::SubscriberAlreadySet(e) => write!(
                f,
                "a global tracing subscriber is already installed ({e}); add stallscope::layer() \
                 to that subscriber instead of calling init()"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            #[cfg(feature = "_otlp")]
            Error::Otlp(e) => Some(e),
            Error::SubscriberAlreadySet(e) => Some(e.as_ref()),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

#[cfg(feature = "_otlp")]
impl From<OtlpError> for Error {
    fn from(e: OtlpError) -> Self {
        Error::Otlp(e)
    }
}

/// The stallscope layer configured from the environment (`STALLSCOPE_*`, and `OTEL_*` for
/// OTLP), for composing into your own subscriber.
///
/// # Panics
///
/// On a bad configuration value, with a message naming the variable and the expected form; use
/// [`try_layer`] to handle it yourself.
pub fn layer() -> StallscopeLayer {
    try_layer().unwrap_or_else(|e| panic!("stallscope: {e}"))
}

/// [`layer`], returning configuration errors instead of panicking.
pub fn try_layer() -> Result<StallscopeLayer, Error> {
    Builder::from_env()?.build()
}
