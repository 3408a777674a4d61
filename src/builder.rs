//! Building a stallscope layer from code and from the environment.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    check_bounds, format_duration, Config, ConfigError, StackSignal, Toggle, SAMPLE_INTERVAL_RANGE,
    STACK_SAMPLE_INTERVAL_RANGE,
};
use crate::engine::sink::Sink;
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
    /// Whether [`Builder::clock_tick`] was called: a tick that does not fit the threshold is
    /// then blamed on it, else on [`Builder::slow_poll_threshold`].
    clock_tick_set: bool,
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
            clock_tick_set: false,
        }
    }

    /// Defaults, overridden by the `STALLSCOPE_*` variables; OTLP follows the `OTEL_*` ones.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Builder {
            config: Config::from_env()?,
            clock_tick_set: false,
        })
    }

    /// A poll at least this long is a slow poll (default 100 ms; at least two clock ticks, 1 ms
    /// with the default tick, and at most 1 h). Also the threshold for blocking-pool queue waits
    /// and lock waits.
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

    /// How often runtime metrics are sampled (default 1 s, from 10 ms to 1 h).
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.config.sample_interval = interval;
        self
    }

    /// Histogram bucket upper bounds in seconds, strictly increasing (default: 10 µs to 50 s);
    /// at most 64, each from 1 µs to a day and at least a nanosecond above the previous one.
    pub fn histogram_bounds(mut self, seconds: impl Into<Vec<f64>>) -> Self {
        self.config.histogram_bounds = seconds.into();
        self
    }

    /// Most (spawn location, task name) sites tracked (default 512, at most 1,024); more share
    /// `<other>`. Locks are tracked up to the same number, at most 256; more share `<other>`.
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

    /// The signal that asks a stalled worker for its stack (default `SIGRTMIN+6`): a real-time
    /// signal, `SIGRTMIN` to `SIGRTMAX` as the C library numbers them (`build` refuses any
    /// other: SIGINT or SIGTERM would stop stopping the process). stallscope never replaces a
    /// handler the program installed: if the signal is taken, stacks are off and the log says
    /// so.
    pub fn stack_signal(mut self, signal: StackSignal) -> Self {
        self.config.stack_signal = signal;
        self
    }

    /// How often a stall that goes on is sampled again (default 1 s, from 10 ms to 1 h; at most
    /// 10 samples).
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

    /// The clock tick (default 0.5 ms, from 100 µs to 50 ms, at most half the slow-poll
    /// threshold). Polls, lock waits and holds under two ticks are counted, not timed. Longer
    /// ones are timed exactly by the CPU's counter, or, where the coarse clock is used (see
    /// [`coarse_clock`](Self::coarse_clock)), to within a tick, and a longer tick wakes that
    /// clock's thread less often. One tick per process: the first instance built fixes it,
    /// and a later one that asks for another says so in the log.
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
        self.clock_tick_set = true;
        self
    }

    /// Times with the coarse clock even where the CPU's counter could be used (default
    /// `false`). The counter is used on x86_64 when the CPU says its time-stamp counter is
    /// invariant and, on Linux, the kernel itself times with it; it needs no thread ticking
    /// beside the workers. Its rate is measured against the system clock when the first
    /// instance is built, once per process (about 4 ms on the building thread, 12 ms at most).
    /// The coarse clock is the fallback everywhere else. One per process:
    /// the first instance built fixes it, and the start-up line's `clock` field says which is
    /// used (`tsc`, or `coarse` and why).
    ///
    /// ```
    /// let layer = stallscope::Builder::new()
    ///     .coarse_clock(true)
    ///     .build()
    ///     .expect("valid configuration");
    /// # drop(layer);
    /// ```
    pub fn coarse_clock(mut self, coarse: bool) -> Self {
        self.config.coarse_clock = coarse;
        self
    }

    /// Validates the configuration (the `OTEL_*` variables included) and returns the layer. An
    /// error names the setter (or the environment variable) whose value is out of range.
    ///
    /// Building starts nothing: no thread, no exporter, no signal handler. The instance starts
    /// (its OTLP exporter, the sampler of the runtime `build` was called in, and the default
    /// instance for [`sync`](crate::sync) and [`task`](crate::task)) the first time it is
    /// used, exactly once: when the layer is composed into a subscriber, when
    /// [`StallscopeLayer::guard`] or [`init`](crate::init()) takes its guard, or when a runtime
    /// is instrumented, whichever comes first. An OTLP exporter that cannot start then is said
    /// in the log, and the log report goes on.
    ///
    /// Two instances in one process measure and report independently, each with its own
    /// settings, except for what is inherently one per process:
    /// - the clock, its source and its tick: the first instance built fixes them (a later one
    ///   asking for another tick says so), and one thread runs the watchdog (and advances the
    ///   coarse clock, where that is the clock);
    /// - the stack signal's handler, installed when production mode first captures a stack;
    /// - the reporter thread that writes every instance's reports;
    /// - the default instance of the drop-in wrappers and `task::spawn_blocking`: the first
    ///   instance started (give the others' a [`Handle`](crate::Handle));
    /// - OTLP export: the first instance started exports, a later one says it does not (two
    ///   would write the same series).
    pub fn build(self) -> Result<StallscopeLayer, Error> {
        self.check()?;
        let config = self.config;
        let mut notes = Vec::new();
        if !cfg!(tokio_unstable) {
            notes.push((
                tracing::Level::WARN,
                crate::report::WITHOUT_TOKIO_UNSTABLE.to_owned(),
            ));
        }
        let otlp_toggle = config.otlp;
        connect_sources();
        let engine = Engine::new(config);
        let coarse = matches!(engine.clock_source, crate::clock::Source::Coarse { .. });
        if let Some((level, note)) = tick_notes(engine.config.clock_tick, engine.clock_tick, coarse)
        {
            engine.add_startup_note(level, note);
        }
        // The standard OTEL_* variables always apply when OTLP may run, as in every OTel SDK.
        // Read now, so that a bad one fails `build`; the exporter starts with the instance.
        let otlp = resolve_otlp(
            &engine.config,
            otlp_toggle,
            &|name| std::env::var(name).ok(),
            &mut notes,
        )?;
        // The runtime `build` was called on is sampled once the instance starts.
        let runtime = tokio::runtime::Handle::try_current().ok();
        engine.set_starter(Box::new(move |engine| {
            let mut sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(crate::report::LogReport::new())];
            start_otlp(engine, otlp, &mut notes, &mut sinks);
            engine.set_sinks(sinks);
            if let Some(handle) = runtime {
                Engine::watch_runtime(engine, &handle);
            }
            crate::task::set_default_engine(engine);
            for (level, note) in notes {
                engine.add_startup_note(level, note);
            }
        }));
        Ok(StallscopeLayer::new(engine))
    }
}

/// Registers what the engine and the clock ask of the sources (which task polls on this
/// thread, the watchdog's look each tick), so that neither imports a source. Once per process;
/// the registrations start nothing.
fn connect_sources() {
    static CONNECTED: std::sync::Once = std::sync::Once::new();
    CONNECTED.call_once(|| {
        crate::engine::Sources::register(crate::engine::Sources {
            span_task: crate::layer::current_task_site,
            ..crate::hooks::sources()
        });
        crate::clock::register_upkeep(crate::clock::Upkeep {
            no_thread: |e| {
                crate::engine::deferred::line(move || crate::report::no_clock_thread(&e));
            },
            counter_left: |source| {
                crate::engine::deferred::line(move || crate::report::counter_left(&source));
            },
            ..crate::hooks::upkeep()
        });
    });
}

/// What an instance says of the clock tick at start-up: `requested` was not applied (the
/// process's clock already ticks every `tick`), or the tick is not the default.
fn tick_notes(
    requested: Duration,
    tick: Duration,
    coarse: bool,
) -> Option<(tracing::Level, String)> {
    if tick != requested {
        Some((
            tracing::Level::WARN,
            crate::report::tick_already_fixed(requested, tick),
        ))
    } else if tick != crate::config::DEFAULT_CLOCK_TICK {
        Some((
            tracing::Level::INFO,
            crate::report::clock_tick(tick, coarse),
        ))
    } else {
        None
    }
}

impl Builder {
    /// Each setting against the range its environment variable has, named by its setter.
    fn check(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let refuse = |setter: &str, value: String, check: Result<(), String>| {
            check.map_err(|expected| ConfigError::new(setter, &value, &expected))
        };
        let in_range = |range: &std::ops::RangeInclusive<Duration>, d: Duration, example: &str| {
            if range.contains(&d) {
                Ok(())
            } else {
                Err(crate::config::duration_expected(range, example))
            }
        };
        refuse(
            "histogram_bounds",
            format!("{:?}", c.histogram_bounds),
            check_bounds(&c.histogram_bounds),
        )?;
        refuse(
            "sample_interval",
            format_duration(c.sample_interval),
            in_range(&SAMPLE_INTERVAL_RANGE, c.sample_interval, "1s or 500ms"),
        )?;
        refuse(
            "stack_sample_interval",
            format_duration(c.stack_sample_interval),
            in_range(
                &STACK_SAMPLE_INTERVAL_RANGE,
                c.stack_sample_interval,
                "1s or 250ms",
            ),
        )?;
        let positive = |n: usize| {
            (n > 0)
                .then_some(())
                .ok_or("a positive whole number".to_owned())
        };
        refuse(
            "max_sites",
            c.max_sites.to_string(),
            crate::config::check_max_sites(c.max_sites),
        )?;
        refuse(
            "max_task_names_per_location",
            c.max_task_names_per_location.to_string(),
            positive(c.max_task_names_per_location),
        )?;
        refuse(
            "stack_signal",
            c.stack_signal.to_string(),
            c.stack_signal.check(),
        )?;
        if self.clock_tick_set {
            refuse(
                "clock_tick",
                format_duration(c.clock_tick),
                c.check_tick_fits_threshold(),
            )?;
        }
        refuse(
            "slow_poll_threshold",
            format_duration(c.slow_poll_threshold),
            c.check_threshold(),
        )
    }
}

/// What OTLP export will be, read from the settings and the `OTEL_*` variables at `build`.
#[cfg(feature = "_otlp")]
type OtlpPlan = Option<crate::export::otlp::settings::OtlpSettings>;
/// Without the feature there is no exporter to start.
#[cfg(not(feature = "_otlp"))]
type OtlpPlan = Option<std::convert::Infallible>;

#[cfg(feature = "_otlp")]
fn resolve_otlp(
    config: &crate::config::Config,
    toggle: Toggle,
    lookup: &dyn Fn(&str) -> Option<String>,
    // What the SDK would read but stallscope does not follow is said as a start-up note.
    notes: &mut Vec<(tracing::Level, String)>,
) -> Result<OtlpPlan, Error> {
    use crate::export::otlp::settings::OtlpSettings;
    let settings = OtlpSettings::resolve(toggle, config.stall_spans, lookup)?;
    for note in settings.iter().flat_map(|s| &s.not_followed) {
        notes.push((tracing::Level::WARN, note.clone()));
    }
    Ok(settings)
}

/// Starts the OTLP exporter `plan` describes and adds it to `sinks`, as the instance starts.
/// Where exports go is part of the start-up line, said when measuring starts.
#[cfg(feature = "_otlp")]
fn start_otlp(
    engine: &Arc<Engine>,
    plan: OtlpPlan,
    notes: &mut Vec<(tracing::Level, String)>,
    sinks: &mut Vec<Arc<dyn Sink>>,
) {
    use crate::export::otlp::OtlpExporter;
    let Some(settings) = plan else {
        return;
    };
    // Two instances would export the same series (same names, same labels) with different
    // values: the receiver would see two writers of one series. The first keeps exporting.
    let mut exporting = EXPORTING.lock().unwrap_or_else(|e| e.into_inner());
    exporting.retain(|other| other.upgrade().is_some_and(|e| !e.is_shut_down()));
    if !exporting.is_empty() {
        notes.push((
            tracing::Level::WARN,
            crate::report::SECOND_EXPORTER.to_owned(),
        ));
        return;
    }
    match OtlpExporter::start(
        Arc::downgrade(engine),
        settings,
        &engine.config.histogram_bounds,
    ) {
        Ok(exporter) => {
            sinks.push(Arc::new(exporter));
            exporting.push(Arc::downgrade(engine));
        }
        // Started with the instance, after `build` returned: said, and the log report goes on.
        Err(e) => notes.push((
            tracing::Level::WARN,
            format!("{e}; metrics and stalls stay in the log report"),
        )),
    }
}

/// The instances exporting over OTLP in this process (at most one alive and not shut down).
#[cfg(feature = "_otlp")]
static EXPORTING: std::sync::Mutex<Vec<std::sync::Weak<Engine>>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(not(feature = "_otlp"))]
fn resolve_otlp(
    _config: &crate::config::Config,
    toggle: Toggle,
    lookup: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<(tracing::Level, String)>,
) -> Result<OtlpPlan, Error> {
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
    Ok(None)
}

#[cfg(not(feature = "_otlp"))]
fn start_otlp(
    _engine: &Arc<Engine>,
    _plan: OtlpPlan,
    _notes: &mut Vec<(tracing::Level, String)>,
    _sinks: &mut Vec<Arc<dyn Sink>>,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Garbage for every setter: `build` refuses it naming the setter and what it accepts,
    /// the same ranges as the environment variables'.
    #[test]
    fn each_setter_refuses_its_garbage_naming_itself() {
        let ms = Duration::from_millis;
        let b = Builder::new;
        let cases = [
            (
                "slow_poll_threshold",
                b().slow_poll_threshold(Duration::ZERO),
                "from 1ms",
            ),
            (
                "slow_poll_threshold",
                b().slow_poll_threshold(Duration::from_nanos(1)),
                "two clock ticks of 500us",
            ),
            (
                "slow_poll_threshold",
                b().slow_poll_threshold(Duration::MAX),
                "to 1h",
            ),
            (
                "sample_interval",
                b().sample_interval(Duration::ZERO),
                "from 10ms to 1h",
            ),
            (
                "sample_interval",
                b().sample_interval(ms(9)),
                "from 10ms to 1h",
            ),
            (
                "sample_interval",
                b().sample_interval(Duration::MAX),
                "from 10ms to 1h",
            ),
            (
                "histogram_bounds",
                b().histogram_bounds(vec![]),
                "strictly increasing",
            ),
            (
                "histogram_bounds",
                b().histogram_bounds([1.0, 0.5]),
                "strictly increasing",
            ),
            (
                "histogram_bounds",
                b().histogram_bounds([f64::NAN]),
                "strictly increasing",
            ),
            (
                "histogram_bounds",
                b().histogram_bounds([1e-12]),
                "from 0.000001",
            ),
            (
                "histogram_bounds",
                b().histogram_bounds((1..=65).map(f64::from).collect::<Vec<_>>()),
                "at most 64",
            ),
            ("max_sites", b().max_sites(0), "from 1 to 1024"),
            ("max_sites", b().max_sites(100_000), "from 1 to 1024"),
            (
                "max_task_names_per_location",
                b().max_task_names_per_location(0),
                "positive whole number",
            ),
            (
                "stack_signal",
                b().stack_signal(StackSignal::Number(2)),
                "a real-time signal",
            ),
            (
                "stack_signal",
                b().stack_signal(StackSignal::Number(15)),
                "a real-time signal",
            ),
            (
                "stack_signal",
                b().stack_signal(StackSignal::Number(-1)),
                "a real-time signal",
            ),
            (
                "stack_signal",
                b().stack_signal(StackSignal::RtMinPlus(200)),
                "SIGRTMIN+N",
            ),
            (
                "stack_sample_interval",
                b().stack_sample_interval(ms(1)),
                "from 10ms to 1h",
            ),
            (
                "stack_sample_interval",
                b().stack_sample_interval(Duration::MAX),
                "to 1h",
            ),
            (
                "clock_tick",
                b().clock_tick(Duration::ZERO),
                "from 100us to 50ms",
            ),
            ("clock_tick", b().clock_tick(ms(51)), "from 100us to 50ms"),
            (
                "clock_tick",
                b().slow_poll_threshold(ms(30)).clock_tick(ms(20)),
                "half the slow-poll threshold (30ms)",
            ),
        ];
        for (setter, builder, expected) in cases {
            let err = match builder.build() {
                Err(Error::Config(e)) => e,
                Err(e) => panic!("{setter}: {e}"),
                Ok(_) => panic!("{setter}: garbage accepted"),
            };
            assert_eq!(err.variable(), setter, "{err}");
            assert!(err.expected().contains(expected), "{setter}: {err}");
        }
    }
}
