//! Configuration: the values a [`Builder`](crate::Builder) sets, their defaults, and how they
//! are read from `STALLSCOPE_*` environment variables.
//!
//! Every parser here names the variable and the expected form in its error, so a typo fails at
//! start-up with a message a user can act on instead of being silently replaced by a default.

use std::fmt;
use std::time::Duration;

/// Poll-duration histogram bounds in seconds: tens of microseconds to tens of seconds.
///
/// Fast polls (a well-behaved task polls for microseconds) land in the low buckets; the
/// interesting range, 10 ms to seconds, has a bucket every 2-2.5x so p99 stays readable.
pub const DEFAULT_HISTOGRAM_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
];

/// Default tick of the coarse clock that times polls: polls under two ticks (1 ms) are counted,
/// not timed.
pub const DEFAULT_CLOCK_TICK: Duration = Duration::from_micros(500);

/// The ticks [`Config::clock_tick`] accepts.
pub const CLOCK_TICK_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_millis(50);

/// Default slow-poll threshold, the same as asyncio's `slow_callback_duration`.
pub const DEFAULT_SLOW_POLL_THRESHOLD: Duration = Duration::from_millis(100);

/// The resolved configuration of one stallscope instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// A poll (or a blocking job's queue wait) longer than this is reported.
    pub slow_poll_threshold: Duration,
    /// Emit one WARN event per slow poll.
    pub report_slow_polls: bool,
    /// Log the worst offenders when the guard drops.
    pub summary_on_drop: bool,
    /// How often runtime metrics are sampled.
    pub sample_interval: Duration,
    /// Histogram bucket bounds, in seconds, strictly increasing.
    pub histogram_bounds: Vec<f64>,
    /// Distinct (spawn location, task name) pairs tracked; further ones share one overflow site.
    pub max_sites: usize,
    /// Distinct task names tracked per spawn location; further names are recorded as `<other>`.
    pub max_task_names_per_location: usize,
    /// Whether OTLP export runs.
    pub otlp: Toggle,
    /// Capture the stalled worker's stack when a stall is detected (Linux x86_64/aarch64).
    pub capture_stacks: bool,
    /// The signal that asks a stalled worker for its stack.
    pub stack_signal: StackSignal,
    /// How often a stall that goes on is sampled again.
    pub stack_sample_interval: Duration,
    /// Whether each stall over the threshold is also exported as an OTLP span (when OTLP runs).
    pub stall_spans: bool,
    /// How often the coarse clock that times polls, lock waits and holds advances. Durations
    /// under two ticks are counted, not timed; longer ones are timed to within a tick. One per
    /// process: the first instance fixes it.
    pub clock_tick: Duration,
}

/// The signal stack capture uses: one the runtime and common libraries leave alone.
///
/// Real-time signals are numbered from `SIGRTMIN`, which the C library decides at run time
/// (glibc keeps the first two or three for itself), so the default is an offset from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackSignal {
    /// `SIGRTMIN+n`.
    RtMinPlus(u8),
    /// A signal number as the kernel numbers it.
    Number(i32),
}

impl StackSignal {
    /// The default, `SIGRTMIN+6`.
    pub const DEFAULT: StackSignal = StackSignal::RtMinPlus(6);

    /// The signal number on this system.
    #[cfg(all(unix, feature = "stacks"))]
    pub fn resolve(self) -> i32 {
        match self {
            StackSignal::RtMinPlus(n) => libc::SIGRTMIN() + i32::from(n),
            StackSignal::Number(n) => n,
        }
    }
}

impl fmt::Display for StackSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StackSignal::RtMinPlus(n) => write!(f, "SIGRTMIN+{n}"),
            StackSignal::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            slow_poll_threshold: DEFAULT_SLOW_POLL_THRESHOLD,
            report_slow_polls: true,
            summary_on_drop: true,
            sample_interval: Duration::from_secs(1),
            histogram_bounds: DEFAULT_HISTOGRAM_BOUNDS.to_vec(),
            max_sites: 512,
            max_task_names_per_location: 16,
            otlp: Toggle::Auto,
            capture_stacks: true,
            stack_signal: StackSignal::DEFAULT,
            stack_sample_interval: Duration::from_secs(1),
            stall_spans: true,
            clock_tick: DEFAULT_CLOCK_TICK,
        }
    }
}

/// On, off, or decided by the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toggle {
    /// OTLP runs when `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or
    /// (with stall spans on) `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    Auto,
    /// Always on (the OTLP default endpoint, localhost, when none is set).
    On,
    /// Never on.
    Off,
}

impl Config {
    /// Reads every `STALLSCOPE_*` variable that is set over the defaults.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::default().apply_env(&|name| std::env::var(name).ok())
    }

    /// Applies the variables `lookup` returns over `self` (a function so tests need not touch
    /// the process environment).
    pub(crate) fn apply_env(
        mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if let Some(v) = var(lookup, vars::SLOW_POLL_THRESHOLD) {
            self.slow_poll_threshold = parse_duration(vars::SLOW_POLL_THRESHOLD, &v)?;
        }
        if let Some(v) = var(lookup, vars::REPORT) {
            self.report_slow_polls = parse_bool(vars::REPORT, &v)?;
        }
        if let Some(v) = var(lookup, vars::SUMMARY) {
            self.summary_on_drop = parse_bool(vars::SUMMARY, &v)?;
        }
        if let Some(v) = var(lookup, vars::SAMPLE_INTERVAL) {
            self.sample_interval = parse_duration(vars::SAMPLE_INTERVAL, &v)?;
            if self.sample_interval < Duration::from_millis(10) {
                return Err(ConfigError::new(
                    vars::SAMPLE_INTERVAL,
                    &v,
                    "a duration of at least 10ms, such as 1s or 500ms",
                ));
            }
        }
        if let Some(v) = var(lookup, vars::HISTOGRAM_BOUNDS) {
            self.histogram_bounds = parse_bounds(vars::HISTOGRAM_BOUNDS, &v)?;
        }
        if let Some(v) = var(lookup, vars::MAX_SITES) {
            self.max_sites = parse_count(vars::MAX_SITES, &v)?;
        }
        if let Some(v) = var(lookup, vars::MAX_TASK_NAMES) {
            self.max_task_names_per_location = parse_count(vars::MAX_TASK_NAMES, &v)?;
        }
        if let Some(v) = var(lookup, vars::OTLP) {
            self.otlp = match v.to_ascii_lowercase().as_str() {
                "auto" => Toggle::Auto,
                "on" | "true" | "1" => Toggle::On,
                "off" | "false" | "0" => Toggle::Off,
                _ => return Err(ConfigError::new(vars::OTLP, &v, "one of auto, on, off")),
            };
        }
        if let Some(v) = var(lookup, vars::STACKS) {
            self.capture_stacks = parse_bool(vars::STACKS, &v)?;
        }
        if let Some(v) = var(lookup, vars::STACK_SIGNAL) {
            self.stack_signal = parse_signal(vars::STACK_SIGNAL, &v)?;
        }
        if let Some(v) = var(lookup, vars::STACK_INTERVAL) {
            self.stack_sample_interval = parse_duration(vars::STACK_INTERVAL, &v)?;
            if self.stack_sample_interval < Duration::from_millis(10) {
                return Err(ConfigError::new(
                    vars::STACK_INTERVAL,
                    &v,
                    "a duration of at least 10ms, such as 1s or 250ms",
                ));
            }
        }
        if let Some(v) = var(lookup, vars::STALL_SPANS) {
            self.stall_spans = parse_bool(vars::STALL_SPANS, &v)?;
        }
        if let Some(v) = var(lookup, vars::CLOCK_TICK) {
            self.clock_tick = parse_duration(vars::CLOCK_TICK, &v)?;
            if let Err(expected) = self.check_clock_tick() {
                return Err(ConfigError::new(vars::CLOCK_TICK, &v, &expected));
            }
        }
        Ok(self)
    }

    /// The tick must lie in [`CLOCK_TICK_RANGE`], and two ticks (the shortest timed poll) must
    /// not exceed the slow-poll threshold, or slow polls would be counted as fast ones.
    pub(crate) fn check_clock_tick(&self) -> Result<(), String> {
        if !CLOCK_TICK_RANGE.contains(&self.clock_tick) {
            return Err("a duration from 100us to 50ms, such as 500us or 10ms".to_owned());
        }
        if self.clock_tick * 2 > self.slow_poll_threshold {
            return Err(format!(
                "at most half the slow-poll threshold ({:?}), so that slow polls are timed",
                self.slow_poll_threshold
            ));
        }
        Ok(())
    }
}

/// Parses `SIGRTMIN+6`, `RTMIN+6`, `SIGRTMIN` or a signal number such as `40`.
pub(crate) fn parse_signal(variable: &str, value: &str) -> Result<StackSignal, ConfigError> {
    const FORM: &str = "a real-time signal as SIGRTMIN+N (N from 0 to 30) or a signal number";
    let upper = value.to_ascii_uppercase();
    let rt = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = rt.strip_prefix("RTMIN") {
        let offset = match rest.strip_prefix('+') {
            None if rest.is_empty() => Some(0),
            Some(n) => n.parse::<u8>().ok().filter(|n| *n <= 30),
            None => None,
        };
        return offset
            .map(StackSignal::RtMinPlus)
            .ok_or_else(|| ConfigError::new(variable, value, FORM));
    }
    value
        .parse::<i32>()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .map(StackSignal::Number)
        .ok_or_else(|| ConfigError::new(variable, value, FORM))
}

/// Names of the environment variables stallscope reads.
pub mod vars {
    /// Slow-poll threshold, e.g. `100ms`.
    pub const SLOW_POLL_THRESHOLD: &str = "STALLSCOPE_SLOW_POLL_THRESHOLD";
    /// `on`/`off`: one WARN event per slow poll.
    pub const REPORT: &str = "STALLSCOPE_REPORT";
    /// `on`/`off`: the summary logged when the guard drops.
    pub const SUMMARY: &str = "STALLSCOPE_SUMMARY";
    /// Runtime-metrics sampling interval, e.g. `1s`.
    pub const SAMPLE_INTERVAL: &str = "STALLSCOPE_SAMPLE_INTERVAL";
    /// Comma-separated histogram bounds in seconds.
    pub const HISTOGRAM_BOUNDS: &str = "STALLSCOPE_HISTOGRAM_BOUNDS";
    /// Maximum tracked (location, task name) sites.
    pub const MAX_SITES: &str = "STALLSCOPE_MAX_SITES";
    /// Maximum tracked task names per spawn location.
    pub const MAX_TASK_NAMES: &str = "STALLSCOPE_MAX_TASK_NAMES";
    /// `auto`/`on`/`off`: OTLP export.
    pub const OTLP: &str = "STALLSCOPE_OTLP";
    /// `on`/`off`: capture the stalled worker's stack.
    pub const STACKS: &str = "STALLSCOPE_STACKS";
    /// The signal used to capture stacks, e.g. `SIGRTMIN+6`.
    pub const STACK_SIGNAL: &str = "STALLSCOPE_STACK_SIGNAL";
    /// How often a lasting stall's stack is sampled again, e.g. `1s`.
    pub const STACK_INTERVAL: &str = "STALLSCOPE_STACK_INTERVAL";
    /// `on`/`off`: each stall over the threshold as an OTLP span (when OTLP runs).
    pub const STALL_SPANS: &str = "STALLSCOPE_STALL_SPANS";
    /// `on`/`off`: compose console-subscriber in `init()`.
    pub const CONSOLE: &str = "STALLSCOPE_CONSOLE";
    /// [`Config::clock_tick`](super::Config::clock_tick).
    pub const CLOCK_TICK: &str = "STALLSCOPE_CLOCK_TICK";
}

/// A configuration value that cannot be used: names the variable (or builder method), the value
/// and the form that would have been accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    variable: String,
    value: String,
    expected: String,
}

impl ConfigError {
    pub(crate) fn new(variable: &str, value: &str, expected: &str) -> Self {
        ConfigError {
            variable: variable.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }

    /// The environment variable (or builder setting) that holds the bad value.
    pub fn variable(&self) -> &str {
        &self.variable
    }

    /// The value as given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What would have been accepted.
    pub fn expected(&self) -> &str {
        &self.expected
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// A set variable, trimmed; an empty one counts as unset, as the OpenTelemetry spec asks.
pub(crate) fn var(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

const DURATION_FORM: &str = "a duration with a unit, such as 100ms, 1.5s, 250us or 2m";

/// Parses `100ms`, `1.5s`, `250us`, `2m`, `500ns`.
pub(crate) fn parse_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    let err = || ConfigError::new(variable, value, DURATION_FORM);
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(err)
}

pub(crate) fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::new(variable, value, "on or off")),
    }
}

fn parse_count(variable: &str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new(variable, value, "a positive whole number"))
}

pub(crate) fn parse_bounds(variable: &str, value: &str) -> Result<Vec<f64>, ConfigError> {
    let expected =
        "strictly increasing positive seconds separated by commas, such as 0.001,0.01,0.1,1";
    let bounds: Vec<f64> = value
        .split(',')
        .map(|b| b.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| ConfigError::new(variable, value, expected))?;
    validate_bounds(&bounds).map_err(|_| ConfigError::new(variable, value, expected))?;
    Ok(bounds)
}

pub(crate) fn validate_bounds(bounds: &[f64]) -> Result<(), ()> {
    let finite_positive = bounds.iter().all(|b| b.is_finite() && *b > 0.0);
    let increasing = bounds.windows(2).all(|w| w[0] < w[1]);
    if bounds.is_empty() || !finite_positive || !increasing {
        Err(())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::default().apply_env(&move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn durations_parse_with_units() {
        let d = |s| parse_duration("X", s).unwrap();
        assert_eq!(d("100ms"), Duration::from_millis(100));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("2m"), Duration::from_secs(120));
    }

    #[test]
    fn stack_signals_parse_as_rtmin_offsets_or_numbers() {
        let sig = |s| parse_signal("X", s).unwrap();
        assert_eq!(sig("SIGRTMIN+6"), StackSignal::RtMinPlus(6));
        assert_eq!(sig("rtmin+3"), StackSignal::RtMinPlus(3));
        assert_eq!(sig("SIGRTMIN"), StackSignal::RtMinPlus(0));
        assert_eq!(sig("40"), StackSignal::Number(40));
        for bad in [
            "SIGUSR9",
            "SIGRTMIN+99",
            "SIGRTMIN-1",
            "0",
            "abc",
            "SIGRTMIN+",
        ] {
            let err = env(&[("STALLSCOPE_STACK_SIGNAL", bad)]).unwrap_err();
            assert_eq!(err.variable(), "STALLSCOPE_STACK_SIGNAL", "{bad}");
            assert!(err.to_string().contains("SIGRTMIN+N"), "{err}");
        }
        let err = env(&[("STALLSCOPE_STACKS", "maybe")]).unwrap_err();
        assert_eq!(err.variable(), "STALLSCOPE_STACKS");
        let err = env(&[("STALLSCOPE_STACK_INTERVAL", "1ms")]).unwrap_err();
        assert_eq!(err.variable(), "STALLSCOPE_STACK_INTERVAL");
        let config = env(&[
            ("STALLSCOPE_STACKS", "off"),
            ("STALLSCOPE_STACK_INTERVAL", "250ms"),
        ]);
        let config = config.unwrap();
        assert!(!config.capture_stacks);
        assert_eq!(config.stack_sample_interval, Duration::from_millis(250));
    }

    #[test]
    fn clock_ticks_are_checked_against_their_range_and_the_threshold() {
        let tick = |pairs: &[(&str, &str)]| env(pairs).map(|c| c.clock_tick);
        assert_eq!(tick(&[]).unwrap(), Duration::from_micros(500));
        assert_eq!(
            tick(&[("STALLSCOPE_CLOCK_TICK", "10ms")]).unwrap(),
            Duration::from_millis(10)
        );
        for (bad, expected) in [
            ("50us", "from 100us to 50ms"),
            ("51ms", "from 100us to 50ms"),
            ("fast", "a duration with a unit"),
        ] {
            let err = tick(&[("STALLSCOPE_CLOCK_TICK", bad)]).unwrap_err();
            assert_eq!(err.variable(), "STALLSCOPE_CLOCK_TICK", "{bad}");
            assert!(err.expected().contains(expected), "{bad}: {err}");
        }
        // Two ticks over the threshold would count slow polls as fast ones.
        let err = tick(&[
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "30ms"),
            ("STALLSCOPE_CLOCK_TICK", "20ms"),
        ])
        .unwrap_err();
        assert_eq!(err.variable(), "STALLSCOPE_CLOCK_TICK");
        assert!(
            err.expected()
                .contains("half the slow-poll threshold (30ms)"),
            "{err}"
        );
        let err = crate::Builder::new()
            .slow_poll_threshold(Duration::from_millis(30))
            .clock_tick(Duration::from_millis(20))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("clock_tick"), "{err}");
    }

    #[test]
    fn bad_threshold_names_the_variable_and_the_form() {
        for bad in ["abc", "100", "-5ms", "0ms", "5 parsecs", "1e999s"] {
            let err = env(&[("STALLSCOPE_SLOW_POLL_THRESHOLD", bad)]).unwrap_err();
            assert_eq!(err.variable(), "STALLSCOPE_SLOW_POLL_THRESHOLD", "{bad}");
            let msg = err.to_string();
            assert!(msg.contains("STALLSCOPE_SLOW_POLL_THRESHOLD"), "{msg}");
            assert!(msg.contains("100ms"), "{msg}");
        }
    }

    #[test]
    fn each_variable_rejects_its_bad_values() {
        let cases = [
            ("STALLSCOPE_REPORT", "maybe", "on or off"),
            ("STALLSCOPE_SUMMARY", "2", "on or off"),
            ("STALLSCOPE_SAMPLE_INTERVAL", "1ms", "at least 10ms"),
            (
                "STALLSCOPE_HISTOGRAM_BOUNDS",
                "0.1,0.01",
                "strictly increasing",
            ),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "a,b", "strictly increasing"),
            ("STALLSCOPE_MAX_SITES", "0", "positive whole number"),
            ("STALLSCOPE_MAX_TASK_NAMES", "lots", "positive whole number"),
            ("STALLSCOPE_OTLP", "sometimes", "auto, on, off"),
            ("STALLSCOPE_STALL_SPANS", "traces", "on or off"),
        ];
        for (var, value, expected) in cases {
            let err = env(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable(), var);
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn good_values_apply_and_empty_ones_are_ignored() {
        let c = env(&[
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "20ms"),
            ("STALLSCOPE_REPORT", "off"),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "0.001, 0.01,1"),
            ("STALLSCOPE_OTLP", "ON"),
            ("STALLSCOPE_MAX_SITES", " "),
            ("STALLSCOPE_STALL_SPANS", "off"),
        ])
        .unwrap();
        assert!(!c.stall_spans);
        assert_eq!(c.slow_poll_threshold, Duration::from_millis(20));
        assert!(!c.report_slow_polls);
        assert_eq!(c.histogram_bounds, vec![0.001, 0.01, 1.0]);
        assert_eq!(c.otlp, Toggle::On);
        assert_eq!(c.max_sites, 512);
    }
}
