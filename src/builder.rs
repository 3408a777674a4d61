//! Building a stallscope layer from code and from the environment.

use std::time::Duration;

use crate::config::{validate_bounds, Config, ConfigError, StackSignal, Toggle};
use crate::engine::Engine;
use crate::layer::StallscopeLayer;
use crate::Error;

/// Configures and builds a [`StallscopeLayer`].
///
/// [`Builder::from_env`] starts from the `STALLSCOPE_*` and `OTEL_*` environment; every setter
/// overrides it. Building validates everything and starts the exporters.
///
/// ```
/// use std::time::Duration;
/// use tracing_subscriber::prelude::*;
///
/// let layer = stallscope::Builder::new()
///     .slow_poll_threshold(Duration::from_millis(50))
///     .otlp(stallscope::Toggle::Off)
///     .build()
///     .expect("valid configuration");
/// let _guard = layer.guard();
/// let subscriber = tracing_subscriber::registry().with(layer);
/// # drop(subscriber);
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Defaults only; `STALLSCOPE_*` variables are not read, and OTLP stays off unless
    /// [`Builder::otlp`] turns it on (the `OTEL_*` variables then apply).
    pub fn new() -> Self {
        Builder {
            config: Config {
                otlp: Toggle::Off,
                ..Config::default()
            },
        }
    }

    /// Defaults, overridden by the `STALLSCOPE_*` variables; OTLP follows the `OTEL_*` ones.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Builder {
            config: Config::from_env()?,
        })
    }

    /// A poll at least this long is a slow poll (default 100 ms). Also the threshold for
    /// blocking-pool queue waits.
    pub fn slow_poll_threshold(mut self, threshold: Duration) -> Self {
        self.config.slow_poll_threshold = threshold;
        self
    }

    /// Whether each slow poll is logged as a WARN event (default on).
    pub fn report_slow_polls(mut self, on: bool) -> Self {
        self.config.report_slow_polls = on;
        self
    }

    /// Whether dropping the guard logs the summary (default on).
    pub fn summary_on_drop(mut self, on: bool) -> Self {
        self.config.summary_on_drop = on;
        self
    }

    /// How often runtime metrics are sampled (default 1 s).
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.config.sample_interval = interval;
        self
    }

    /// Histogram bucket upper bounds in seconds, strictly increasing (default: 10 µs to 50 s).
    pub fn histogram_bounds(mut self, seconds: impl Into<Vec<f64>>) -> Self {
        self.config.histogram_bounds = seconds.into();
        self
    }

    /// Most (spawn location, task name) sites tracked (default 512); more share `<other>`.
    pub fn max_sites(mut self, n: usize) -> Self {
        self.config.max_sites = n;
        self
    }

    /// Most task names tracked per spawn location (default 16); more are named `<other>`.
    pub fn max_task_names_per_location(mut self, n: usize) -> Self {
        self.config.max_task_names_per_location = n;
        self
    }

    /// OTLP export: on, off, or on when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set (`Auto`).
    pub fn otlp(mut self, toggle: Toggle) -> Self {
        self.config.otlp = toggle;
        self
    }

    /// Whether a stall detected while it runs makes the stalled worker capture its stack, so
    /// the report names the line that blocks (default on; Linux x86_64/aarch64 with feature
    /// `stacks`). See [`StackSignal`] for the signal it uses.
    pub fn capture_stacks(mut self, on: bool) -> Self {
        self.config.capture_stacks = on;
        self
    }

    /// The signal that asks a stalled worker for its stack (default `SIGRTMIN+6`). stallscope
    /// never replaces a handler the program installed: if the signal is taken, stacks are off
    /// and the log says so.
    pub fn stack_signal(mut self, signal: StackSignal) -> Self {
        self.config.stack_signal = signal;
        self
    }

    /// How often a stall that goes on is sampled again (default 1 s, at most 10 samples).
    pub fn stack_sample_interval(mut self, interval: Duration) -> Self {
        self.config.stack_sample_interval = interval;
        self
    }

    /// Whether each slow poll, long blocking-pool queue wait and blocking lock wait is also
    /// exported as an OTLP span when OTLP runs (default on).
    pub fn stall_spans(mut self, on: bool) -> Self {
        self.config.stall_spans = on;
        self
    }

    /// How often the coarse clock that times polls, lock waits and holds advances (default
    /// 0.5 ms, from 100 µs to 50 ms, at most half the slow-poll threshold). Polls under two
    /// ticks are counted, not timed, and longer ones are timed to within a tick; a longer tick
    /// wakes the clock's thread less often. One tick per process: the first instance built
    /// fixes it, and a later one that asks for another says so in the log.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let layer = stallscope::Builder::new()
    ///     .clock_tick(Duration::from_millis(5))
    ///     .build()
    ///     .expect("valid configuration");
    /// # drop(layer);
    /// ```
    pub fn clock_tick(mut self, tick: Duration) -> Self {
        self.config.clock_tick = tick;
        self
    }

    /// Validates the configuration, starts the exporters and returns the layer.
    pub fn build(self) -> Result<StallscopeLayer, Error> {
        let config = self.config;
        if validate_bounds(&config.histogram_bounds).is_err() {
            return Err(ConfigError::new(
                "histogram_bounds",
                &format!("{:?}", config.histogram_bounds),
                "strictly increasing positive seconds",
            )
            .into());
        }
        let zero = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::new(name, "0", "a positive duration"))
            } else {
                Ok(())
            }
        };
        zero("slow_poll_threshold", config.slow_poll_threshold)?;
        zero("sample_interval", config.sample_interval)?;
        zero("stack_sample_interval", config.stack_sample_interval)?;
        if config.max_sites == 0 || config.max_task_names_per_location == 0 {
            return Err(ConfigError::new("max_sites", "0", "a positive whole number").into());
        }
        if let Err(expected) = config.check_clock_tick() {
            let tick = format!("{:?}", config.clock_tick);
            return Err(ConfigError::new("clock_tick", &tick, &expected).into());
        }

        let mut notes = Vec::new();
        if !cfg!(tokio_unstable) {
            notes.push((
                tracing::Level::WARN,
                crate::report::WITHOUT_TOKIO_UNSTABLE.to_owned(),
            ));
        }
        let otlp_toggle = config.otlp;
        let engine = Engine::new(config);
        // The standard OTEL_* variables always apply when OTLP may run, as in every OTel SDK.
        start_otlp(
            &engine,
            otlp_toggle,
            &|name| std::env::var(name).ok(),
            &mut notes,
        )?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            Engine::watch_runtime(&engine, &handle);
        }
        crate::task::set_default_engine(&engine);
        for (level, note) in notes {
            engine.add_startup_note(level, note);
        }
        Ok(StallscopeLayer::new(engine))
    }
}

#[cfg(feature = "_otlp")]
fn start_otlp(
    engine: &std::sync::Arc<Engine>,
    toggle: Toggle,
    lookup: &dyn Fn(&str) -> Option<String>,
    // Where exports go is part of the start-up line, said when measuring starts.
    _notes: &mut Vec<(tracing::Level, String)>,
) -> Result<(), Error> {
    use crate::export::otlp::{settings::OtlpSettings, OtlpExporter};
    let Some(settings) = OtlpSettings::resolve(toggle, engine.config.stall_spans, lookup)? else {
        return Ok(());
    };
    let exporter = OtlpExporter::start(
        std::sync::Arc::downgrade(engine),
        settings,
        &engine.config.histogram_bounds,
    )?;
    let _ = engine.otlp.set(exporter);
    Ok(())
}

#[cfg(not(feature = "_otlp"))]
fn start_otlp(
    _engine: &std::sync::Arc<Engine>,
    toggle: Toggle,
    lookup: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<(tracing::Level, String)>,
) -> Result<(), Error> {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| lookup(v).is_some_and(|e| !e.trim().is_empty()));
    if toggle == Toggle::On || (toggle == Toggle::Auto && endpoint) {
        notes.push((
            tracing::Level::WARN,
            "OTLP export was asked for, but stallscope was built without its `otlp` feature; \
             metrics and stalls stay in the log report"
                .to_owned(),
        ));
    }
    Ok(())
}
