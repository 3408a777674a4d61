//! Configuration: the values a [`Builder`](crate::Builder) sets, their defaults, and how they
//! are read from `STALLSCOPE_*` environment variables. Private: the builder is the one way to
//! configure an instance; only [`ConfigError`], [`StackSignal`] and [`Toggle`] are public (at
//! the crate root).
//!
//! Every parser here names the variable and the expected form in its error, so a typo fails at
//! start-up with a message a user can act on instead of being silently replaced by a default.

mod parse;
#[cfg(test)]
mod reference;

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

#[cfg(all(test, feature = "_otlp"))]
pub(crate) use parse::percent_encode;
#[cfg(any(feature = "_otlp", feature = "console"))]
pub(crate) use parse::whole_number;
pub(crate) use parse::{bool as parse_bool, duration_expected, format_duration};
#[cfg(feature = "_otlp")]
pub(crate) use parse::{key_value_list, millis};

/// Poll-duration histogram bounds in seconds: tens of microseconds to tens of seconds.
///
/// Fast polls (a well-behaved task polls for microseconds) land in the low buckets; the
/// interesting range, 10 ms to seconds, has a bucket every 2-2.5x so p99 stays readable.
pub(crate) const DEFAULT_HISTOGRAM_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
];

/// Default tick of the coarse clock that times polls: polls under two ticks (1 ms) are counted,
/// not timed.
pub(crate) const DEFAULT_CLOCK_TICK: Duration = Duration::from_micros(500);

/// The ticks [`Config::clock_tick`] accepts.
pub(crate) const CLOCK_TICK_RANGE: RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_millis(50);

/// The longest slow-poll threshold: a poll that blocks a worker for an hour needs no finer one.
pub(crate) const SLOW_POLL_THRESHOLD_MAX: Duration = Duration::from_secs(3600);

/// The sampling intervals [`Config::sample_interval`] accepts: under 10 ms the sampler would
/// cost more than it tells.
pub(crate) const SAMPLE_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

/// The intervals [`Config::stack_sample_interval`] accepts.
pub(crate) const STACK_SAMPLE_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);

/// Histogram bounds, in seconds: a microsecond (under the clock's tick) to a day.
const HISTOGRAM_BOUND_RANGE: RangeInclusive<f64> = 0.000_001..=86_400.0;

/// Most histogram bounds: every bucket is one counter per site, thread shard and instrument.
const MAX_HISTOGRAM_BOUNDS: usize = 64;

/// Default slow-poll threshold, the same as asyncio's `slow_callback_duration`.
pub(crate) const DEFAULT_SLOW_POLL_THRESHOLD: Duration = Duration::from_millis(100);

/// The resolved configuration of one stallscope instance.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// A poll (or a blocking job's queue wait) longer than this is reported.
    pub(crate) slow_poll_threshold: Duration,
    /// Emit one WARN event per slow poll.
    pub(crate) report_slow_polls: bool,
    /// Log the worst offenders when the guard drops.
    pub(crate) summary_on_drop: bool,
    /// How often runtime metrics are sampled.
    pub(crate) sample_interval: Duration,
    /// Histogram bucket bounds, in seconds, strictly increasing.
    pub(crate) histogram_bounds: Vec<f64>,
    /// Distinct (spawn location, task name) pairs tracked, 1 to 1,024; further ones share one
    /// overflow site. Lock sites are tracked up to the same number, at most 256.
    pub(crate) max_sites: usize,
    /// Distinct task names tracked per spawn location; further names are recorded as `<other>`.
    pub(crate) max_task_names_per_location: usize,
    /// Whether OTLP export runs.
    pub(crate) otlp: Toggle,
    /// Capture the stalled worker's stack when a stall is detected (Linux x86_64/aarch64).
    pub(crate) capture_stacks: bool,
    /// The signal that asks a stalled worker for its stack.
    pub(crate) stack_signal: StackSignal,
    /// How often a stall that goes on is sampled again.
    pub(crate) stack_sample_interval: Duration,
    /// Whether each stall over the threshold is also exported as an OTLP span (when OTLP runs).
    pub(crate) stall_spans: bool,
    /// The clock tick: durations under two ticks are counted, not timed. The coarse clock (where
    /// it is used) advances once a tick, and times longer durations to within one. One per
    /// process: the first instance fixes it.
    pub(crate) clock_tick: Duration,
    /// Time with the coarse clock even where the CPU's counter is trusted. One per process: the
    /// first instance fixes it.
    pub(crate) coarse_clock: bool,
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
            coarse_clock: false,
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
    pub(crate) fn from_env() -> Result<Config, ConfigError> {
        Config::default().apply_env(&|name| std::env::var(name).ok())
    }

    /// Applies the variables `lookup` returns over `self` (a function so tests need not touch
    /// the process environment). Each value is checked against its range here, so an error
    /// names the variable that was set.
    pub(crate) fn apply_env(
        mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let env_error = |variable: &str, value: &str, check: Result<(), String>| {
            check.map_err(|expected| ConfigError::new(variable, value, &expected))
        };
        let threshold = var(lookup, vars::SLOW_POLL_THRESHOLD);
        if let Some(v) = &threshold {
            self.slow_poll_threshold = duration_or_form(vars::SLOW_POLL_THRESHOLD, v, || {
                threshold_expected(self.clock_tick)
            })?;
        }
        if let Some(v) = var(lookup, vars::REPORT) {
            self.report_slow_polls = parse::bool(vars::REPORT, &v)?;
        }
        if let Some(v) = var(lookup, vars::SUMMARY) {
            self.summary_on_drop = parse::bool(vars::SUMMARY, &v)?;
        }
        if let Some(v) = var(lookup, vars::SAMPLE_INTERVAL) {
            self.sample_interval = parse::duration(
                vars::SAMPLE_INTERVAL,
                &v,
                &SAMPLE_INTERVAL_RANGE,
                "1s or 500ms",
            )?;
        }
        if let Some(v) = var(lookup, vars::HISTOGRAM_BOUNDS) {
            self.histogram_bounds = parse_bounds(vars::HISTOGRAM_BOUNDS, &v)?;
        }
        if let Some(v) = var(lookup, vars::MAX_SITES) {
            self.max_sites = parse_count(vars::MAX_SITES, &v)?;
            check_max_sites(self.max_sites)
                .map_err(|expected| ConfigError::new(vars::MAX_SITES, &v, &expected))?;
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
            self.capture_stacks = parse::bool(vars::STACKS, &v)?;
        }
        if let Some(v) = var(lookup, vars::STACK_SIGNAL) {
            self.stack_signal = parse_signal(vars::STACK_SIGNAL, &v)?;
            env_error(vars::STACK_SIGNAL, &v, self.stack_signal.check())?;
        }
        if let Some(v) = var(lookup, vars::STACK_INTERVAL) {
            self.stack_sample_interval = parse::duration(
                vars::STACK_INTERVAL,
                &v,
                &STACK_SAMPLE_INTERVAL_RANGE,
                "1s or 250ms",
            )?;
        }
        if let Some(v) = var(lookup, vars::STALL_SPANS) {
            self.stall_spans = parse::bool(vars::STALL_SPANS, &v)?;
        }
        if let Some(v) = var(lookup, vars::CLOCK) {
            self.coarse_clock = match v.to_ascii_lowercase().as_str() {
                "auto" => false,
                "coarse" => true,
                _ => return Err(ConfigError::new(vars::CLOCK, &v, "auto or coarse")),
            };
        }
        let tick = var(lookup, vars::CLOCK_TICK);
        if let Some(v) = &tick {
            self.clock_tick =
                parse::duration(vars::CLOCK_TICK, v, &CLOCK_TICK_RANGE, "500us or 10ms")?;
        }
        // The pair is checked once both are read; the error names the one that was set (the
        // tick when both were), not a default the user never saw.
        match (&tick, &threshold) {
            (Some(v), _) => env_error(vars::CLOCK_TICK, v, self.check_tick_fits_threshold())?,
            (None, Some(v)) => env_error(vars::SLOW_POLL_THRESHOLD, v, self.check_threshold())?,
            (None, None) => {}
        }
        Ok(self)
    }

    /// The slow-poll threshold: at most [`SLOW_POLL_THRESHOLD_MAX`], and at least two clock
    /// ticks (the shortest timed poll), or slow polls would be counted as fast ones.
    pub(crate) fn check_threshold(&self) -> Result<(), String> {
        let shortest = self.clock_tick * 2;
        if (shortest..=SLOW_POLL_THRESHOLD_MAX).contains(&self.slow_poll_threshold) {
            Ok(())
        } else {
            Err(threshold_expected(self.clock_tick))
        }
    }

    /// The clock tick: inside [`CLOCK_TICK_RANGE`] and at most half the slow-poll threshold.
    pub(crate) fn check_tick_fits_threshold(&self) -> Result<(), String> {
        if !CLOCK_TICK_RANGE.contains(&self.clock_tick) {
            return Err(parse::duration_expected(&CLOCK_TICK_RANGE, "500us or 10ms"));
        }
        if self.clock_tick * 2 > self.slow_poll_threshold {
            return Err(format!(
                "at most half the slow-poll threshold ({}), so that slow polls are timed",
                parse::format_duration(self.slow_poll_threshold)
            ));
        }
        Ok(())
    }
}

/// What [`Config::check_threshold`] accepts, for its error.
fn threshold_expected(tick: Duration) -> String {
    format!(
        "a duration with a unit (ns, us, ms, s, m, h) from {} (two clock ticks of {}) to {}, \
         such as 100ms",
        parse::format_duration(tick * 2),
        parse::format_duration(tick),
        parse::format_duration(SLOW_POLL_THRESHOLD_MAX)
    )
}

/// A duration in any range, or an error with `expected()` (a range that depends on another
/// setting is checked once both are read).
fn duration_or_form(
    variable: &str,
    value: &str,
    expected: impl Fn() -> String,
) -> Result<Duration, ConfigError> {
    parse::duration_value(value)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(variable, value, &expected()))
}

/// The real-time signals this process may use: from `SIGRTMIN` as the C library reports it
/// (glibc keeps the first two or three of the kernel's for its own threads) to `SIGRTMAX`.
#[cfg(all(unix, feature = "stacks"))]
fn realtime_signals() -> std::ops::RangeInclusive<i32> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// Without stack capture the signal is never sent; it is checked against Linux's numbering
/// with glibc so a configuration means the same with the feature on.
#[cfg(not(all(unix, feature = "stacks")))]
fn realtime_signals() -> std::ops::RangeInclusive<i32> {
    34..=64
}

impl StackSignal {
    /// The signal number, relative to `SIGRTMIN` of `rtmin`.
    fn number_with(self, rtmin: i32) -> i32 {
        match self {
            StackSignal::RtMinPlus(n) => rtmin + i32::from(n),
            StackSignal::Number(n) => n,
        }
    }

    /// Only a real-time signal may be chosen: any other has a default action the host relies
    /// on (SIGINT, SIGTERM) or a meaning to the runtime, and a handler installed for it would
    /// take it away (after the first stall, Ctrl-C would no longer stop the process).
    pub(crate) fn check(self) -> Result<(), String> {
        let rt = realtime_signals();
        if rt.contains(&self.number_with(*rt.start())) {
            Ok(())
        } else {
            Err(signal_expected())
        }
    }
}

fn signal_expected() -> String {
    let rt = realtime_signals();
    let (min, max) = (*rt.start(), *rt.end());
    format!(
        "a real-time signal as SIGRTMIN+N (N from 0 to {}) or a number from {min} to {max}: \
         other signals have a meaning to the process",
        max - min
    )
}

/// Parses `SIGRTMIN+6`, `RTMIN+6`, `SIGRTMIN` or a signal number such as `40` (the range is
/// [`StackSignal::check`]'s).
pub(crate) fn parse_signal(variable: &str, value: &str) -> Result<StackSignal, ConfigError> {
    let err = || ConfigError::new(variable, value, &signal_expected());
    let upper = value.to_ascii_uppercase();
    let rt = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = rt.strip_prefix("RTMIN") {
        let offset = match rest.strip_prefix('+') {
            None if rest.is_empty() => Some(0),
            Some(n) => n.parse::<u8>().ok(),
            None => None,
        };
        return offset.map(StackSignal::RtMinPlus).ok_or_else(err);
    }
    value
        .parse::<i32>()
        .ok()
        .map(StackSignal::Number)
        .ok_or_else(err)
}

/// Names of the environment variables stallscope reads.
pub(crate) mod vars {
    /// Slow-poll threshold, e.g. `100ms`.
    pub(crate) const SLOW_POLL_THRESHOLD: &str = "STALLSCOPE_SLOW_POLL_THRESHOLD";
    /// `on`/`off`: one WARN event per slow poll.
    pub(crate) const REPORT: &str = "STALLSCOPE_REPORT";
    /// `on`/`off`: the summary logged when the guard drops.
    pub(crate) const SUMMARY: &str = "STALLSCOPE_SUMMARY";
    /// Runtime-metrics sampling interval, e.g. `1s`.
    pub(crate) const SAMPLE_INTERVAL: &str = "STALLSCOPE_SAMPLE_INTERVAL";
    /// Comma-separated histogram bounds in seconds.
    pub(crate) const HISTOGRAM_BOUNDS: &str = "STALLSCOPE_HISTOGRAM_BOUNDS";
    /// Maximum tracked (location, task name) sites.
    pub(crate) const MAX_SITES: &str = "STALLSCOPE_MAX_SITES";
    /// Maximum tracked task names per spawn location.
    pub(crate) const MAX_TASK_NAMES: &str = "STALLSCOPE_MAX_TASK_NAMES";
    /// `auto`/`on`/`off`: OTLP export.
    pub(crate) const OTLP: &str = "STALLSCOPE_OTLP";
    /// `on`/`off`: capture the stalled worker's stack.
    pub(crate) const STACKS: &str = "STALLSCOPE_STACKS";
    /// The signal used to capture stacks, e.g. `SIGRTMIN+6`.
    pub(crate) const STACK_SIGNAL: &str = "STALLSCOPE_STACK_SIGNAL";
    /// How often a lasting stall's stack is sampled again, e.g. `1s`.
    pub(crate) const STACK_INTERVAL: &str = "STALLSCOPE_STACK_INTERVAL";
    /// `on`/`off`: each stall over the threshold as an OTLP span (when OTLP runs).
    pub(crate) const STALL_SPANS: &str = "STALLSCOPE_STALL_SPANS";
    /// `on`/`off`: compose console-subscriber in `init()`.
    pub(crate) const CONSOLE: &str = "STALLSCOPE_CONSOLE";
    /// [`Config::clock_tick`](super::Config::clock_tick).
    pub(crate) const CLOCK_TICK: &str = "STALLSCOPE_CLOCK_TICK";
    /// `auto`/`coarse`: [`Config::coarse_clock`](super::Config::coarse_clock).
    pub(crate) const CLOCK: &str = "STALLSCOPE_CLOCK";
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

fn parse_count(variable: &str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::new(variable, value, "a positive whole number"))
}

/// The most sites (spawn locations with task names, blocking call sites) an instance tracks:
/// each is one attribute set of every per-site instrument, and the OpenTelemetry SDK merges
/// an instrument's attribute sets beyond 2,000 into one `otel.metric.overflow` series. Lock
/// sites are bounded lower (see `MAX_LOCK_SITES`): a lock has up to four attribute sets per
/// instrument.
pub(crate) const MAX_SITES_LIMIT: usize = 1024;

/// `max_sites` within 1 to [`MAX_SITES_LIMIT`], or what it must be.
pub(crate) fn check_max_sites(max_sites: usize) -> Result<(), String> {
    if (1..=MAX_SITES_LIMIT).contains(&max_sites) {
        Ok(())
    } else {
        Err(format!(
            "a whole number from 1 to {MAX_SITES_LIMIT} (each site is a series of every per-site \
             metric; 512 by default)"
        ))
    }
}

const BOUNDS_EXPECTED: &str = "strictly increasing seconds from 0.000001 to 86400 (at most 64, \
     at least a nanosecond apart) separated by commas, such as 0.001,0.01,0.1,1";

pub(crate) fn parse_bounds(variable: &str, value: &str) -> Result<Vec<f64>, ConfigError> {
    let bounds: Vec<f64> = value
        .split(',')
        .map(|b| b.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| ConfigError::new(variable, value, BOUNDS_EXPECTED))?;
    check_bounds(&bounds).map_err(|expected| ConfigError::new(variable, value, &expected))?;
    Ok(bounds)
}

/// Histogram bounds: each bucket is a counter per site and thread shard, so their number is
/// bounded; each must be a distinct whole number of nanoseconds, as the histogram keeps them.
pub(crate) fn check_bounds(bounds: &[f64]) -> Result<(), String> {
    let in_range = bounds.iter().all(|b| (HISTOGRAM_BOUND_RANGE).contains(b));
    let nanos: Vec<u64> = bounds.iter().map(|b| (b * 1e9) as u64).collect();
    let increasing = nanos.windows(2).all(|w| w[0] < w[1]);
    if bounds.is_empty() || bounds.len() > MAX_HISTOGRAM_BOUNDS || !in_range || !increasing {
        Err(BOUNDS_EXPECTED.to_owned())
    } else {
        Ok(())
    }
}

/// What the configuration tests of every module share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    use super::ConfigError;

    /// A page of the user guide, `docs/<name>`.
    pub(crate) fn doc(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The rows of every table of `markdown` whose header's first cell is `header`, each row's
    /// cells trimmed (header and separator rows left out).
    pub(crate) fn table_rows(markdown: &str, header: &str) -> Vec<Vec<String>> {
        let cells = |line: &str| -> Vec<String> {
            line.trim()
                .trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        };
        let mut rows = Vec::new();
        let mut in_table = false;
        for line in markdown.lines() {
            if !line.starts_with('|') {
                in_table = false;
            } else if !in_table {
                in_table = cells(line)[0] == header;
            } else if !line.starts_with("|---") {
                rows.push(cells(line));
            }
        }
        rows
    }

    /// Every `.rs` file under `src/` with its text, but the reference tests themselves (which
    /// name what they look for).
    pub(crate) fn sources() -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            for entry in std::fs::read_dir(dir).expect("src/ is readable") {
                let path = entry.expect("a src/ entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && path.file_name().is_some_and(|n| n != "reference.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("a source file");
                    out.push((path, text));
                }
            }
        }
        let mut out = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    /// An environment of `pairs`: the first pair with the name wins.
    pub(crate) fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// Each `(variable, garbage, expected)` of `cases` is refused by `read`, naming the variable
    /// and saying `expected`.
    pub(crate) fn assert_each_refused<T: std::fmt::Debug>(
        cases: &[(&str, &str, &str)],
        read: impl Fn(&str, &str) -> Result<T, ConfigError>,
    ) {
        for (variable, value, expected) in cases {
            let err = match read(variable, value) {
                Err(e) => e,
                Ok(accepted) => panic!("{variable}={value} accepted: {accepted:?}"),
            };
            assert_eq!(err.variable(), *variable, "{variable}={value}: {err}");
            assert_eq!(err.value(), value.trim(), "{err}");
            assert!(
                err.to_string().contains(expected),
                "{variable}={value}: {err}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testing::{assert_each_refused, lookup};
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::default().apply_env(&lookup(pairs))
    }

    /// Every `STALLSCOPE_*` variable `apply_env` reads.
    const VARIABLES: &[&str] = &[
        vars::SLOW_POLL_THRESHOLD,
        vars::REPORT,
        vars::SUMMARY,
        vars::SAMPLE_INTERVAL,
        vars::HISTOGRAM_BOUNDS,
        vars::MAX_SITES,
        vars::MAX_TASK_NAMES,
        vars::OTLP,
        vars::STACKS,
        vars::STACK_SIGNAL,
        vars::STACK_INTERVAL,
        vars::STALL_SPANS,
        vars::CLOCK_TICK,
    ];

    /// Garbage for every variable: each is refused naming the variable, with what it accepts.
    #[test]
    fn each_variable_refuses_its_garbage_naming_itself() {
        let cases = [
            (
                "STALLSCOPE_SLOW_POLL_THRESHOLD",
                "abc",
                "a duration with a unit",
            ),
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "100", "such as 100ms"),
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "-5ms", "from 1ms"),
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "0ms", "from 1ms"),
            (
                "STALLSCOPE_SLOW_POLL_THRESHOLD",
                "1ns",
                "two clock ticks of 500us",
            ),
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "999us", "from 1ms"),
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "2h", "to 1h"),
            (
                "STALLSCOPE_SLOW_POLL_THRESHOLD",
                "1e999s",
                "a duration with a unit",
            ),
            (
                "STALLSCOPE_SLOW_POLL_THRESHOLD",
                "99999999999999999999999h",
                "to 1h",
            ),
            ("STALLSCOPE_REPORT", "maybe", "on or off"),
            ("STALLSCOPE_SUMMARY", "2", "on or off"),
            ("STALLSCOPE_SAMPLE_INTERVAL", "1ms", "from 10ms to 1h"),
            (
                "STALLSCOPE_SAMPLE_INTERVAL",
                "18446744073709551615s",
                "from 10ms to 1h",
            ),
            (
                "STALLSCOPE_HISTOGRAM_BOUNDS",
                "0.1,0.01",
                "strictly increasing",
            ),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "a,b", "strictly increasing"),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", ",", "strictly increasing"),
            (
                "STALLSCOPE_HISTOGRAM_BOUNDS",
                "0.1,NaN",
                "strictly increasing",
            ),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "0.1,inf", "to 86400"),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "1e-12,1", "from 0.000001"),
            (
                "STALLSCOPE_HISTOGRAM_BOUNDS",
                "0.1,0.1000000000001",
                "a nanosecond apart",
            ),
            ("STALLSCOPE_MAX_SITES", "0", "positive whole number"),
            ("STALLSCOPE_MAX_SITES", "-1", "positive whole number"),
            ("STALLSCOPE_MAX_SITES", "100000", "from 1 to 1024"),
            ("STALLSCOPE_MAX_TASK_NAMES", "lots", "positive whole number"),
            ("STALLSCOPE_OTLP", "sometimes", "auto, on, off"),
            ("STALLSCOPE_STACKS", "maybe", "on or off"),
            ("STALLSCOPE_STACK_SIGNAL", "2", "a real-time signal"),
            (
                "STALLSCOPE_STACK_SIGNAL",
                "15",
                "other signals have a meaning",
            ),
            ("STALLSCOPE_STACK_SIGNAL", "SIGUSR9", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "SIGRTMIN+99", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "SIGRTMIN-1", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "SIGRTMIN+", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "0", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "65", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_SIGNAL", "abc", "SIGRTMIN+N"),
            ("STALLSCOPE_STACK_INTERVAL", "1ms", "from 10ms to 1h"),
            ("STALLSCOPE_STALL_SPANS", "traces", "on or off"),
            ("STALLSCOPE_CLOCK_TICK", "50us", "from 100us to 50ms"),
            ("STALLSCOPE_CLOCK_TICK", "51ms", "from 100us to 50ms"),
            ("STALLSCOPE_CLOCK_TICK", "fast", "a duration with a unit"),
        ];
        assert_each_refused(&cases, |variable, value| env(&[(variable, value)]));
        for variable in VARIABLES {
            assert!(
                cases.iter().any(|(v, _, _)| v == variable),
                "{variable} has a garbage case"
            );
        }
    }

    #[test]
    fn a_threshold_under_two_ticks_is_blamed_on_what_was_set() {
        // Only the threshold set: the error is about it, not about the tick's default.
        let err = env(&[
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "1ms"),
            ("STALLSCOPE_CLOCK_TICK", "1ms"),
        ])
        .unwrap_err();
        assert_eq!(err.variable(), "STALLSCOPE_CLOCK_TICK");
        assert!(
            err.expected()
                .contains("half the slow-poll threshold (1ms)"),
            "{err}"
        );
        let err = env(&[("STALLSCOPE_SLOW_POLL_THRESHOLD", "1ns")]).unwrap_err();
        assert_eq!(err.variable(), "STALLSCOPE_SLOW_POLL_THRESHOLD");
        // A tick that allows the threshold makes it valid.
        let c = env(&[
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "300us"),
            ("STALLSCOPE_CLOCK_TICK", "150us"),
        ])
        .unwrap();
        assert_eq!(c.slow_poll_threshold, Duration::from_micros(300));
    }

    #[test]
    fn good_values_apply_and_empty_ones_are_ignored() {
        let c = env(&[
            ("STALLSCOPE_SLOW_POLL_THRESHOLD", "20ms"),
            ("STALLSCOPE_REPORT", "off"),
            ("STALLSCOPE_SAMPLE_INTERVAL", "1h"),
            ("STALLSCOPE_HISTOGRAM_BOUNDS", "0.001, 0.01,1"),
            ("STALLSCOPE_OTLP", "ON"),
            ("STALLSCOPE_MAX_SITES", " "),
            ("STALLSCOPE_STALL_SPANS", "off"),
            ("STALLSCOPE_STACKS", "off"),
            ("STALLSCOPE_STACK_SIGNAL", "rtmin+3"),
            ("STALLSCOPE_STACK_INTERVAL", "250ms"),
            ("STALLSCOPE_CLOCK_TICK", "10ms"),
        ])
        .unwrap();
        assert!(!c.stall_spans);
        assert_eq!(c.slow_poll_threshold, Duration::from_millis(20));
        assert!(!c.report_slow_polls);
        assert_eq!(c.sample_interval, Duration::from_secs(3600));
        assert_eq!(c.histogram_bounds, vec![0.001, 0.01, 1.0]);
        assert_eq!(c.otlp, Toggle::On);
        assert_eq!(c.max_sites, 512);
        assert!(!c.capture_stacks);
        assert_eq!(c.stack_signal, StackSignal::RtMinPlus(3));
        assert_eq!(c.stack_sample_interval, Duration::from_millis(250));
        assert_eq!(c.clock_tick, Duration::from_millis(10));
    }

    #[test]
    fn stack_signals_are_real_time_ones_only() {
        let rt = realtime_signals();
        let sig = |s: &str| env(&[("STALLSCOPE_STACK_SIGNAL", s)]).map(|c| c.stack_signal);
        assert_eq!(sig("SIGRTMIN+6").unwrap(), StackSignal::RtMinPlus(6));
        assert_eq!(sig("SIGRTMIN").unwrap(), StackSignal::RtMinPlus(0));
        let last = rt.end() - rt.start();
        assert!(sig(&format!("SIGRTMIN+{last}")).is_ok());
        assert!(sig(&format!("SIGRTMIN+{}", last + 1)).is_err());
        assert_eq!(
            sig(&rt.start().to_string()).unwrap(),
            StackSignal::Number(*rt.start())
        );
        assert!(sig(&rt.end().to_string()).is_ok());
        assert!(sig(&(rt.start() - 1).to_string()).is_err(), "glibc's own");
        // SIGINT, SIGTERM, SIGUSR1, SIGPROF, the kernel's first real-time signal (glibc's).
        for taken in [2, 15, 10, 27, 32] {
            let err = sig(&taken.to_string()).unwrap_err();
            assert!(err.to_string().contains("a real-time signal"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn no_variable_panics_or_blames_another(
            index in 0..VARIABLES.len(),
            value in "\\PC*|[0-9.,+-]{0,12}(ns|us|ms|s|m|h|SIGRTMIN|e9)?",
        ) {
            let variable = VARIABLES[index];
            if let Err(e) = env(&[(variable, &value)]) {
                prop_assert_eq!(e.variable(), variable);
            }
        }

        #[test]
        fn stack_signals_accept_what_they_print(offset in 0u8..=30, number in 0i32..=128) {
            let rt = realtime_signals();
            for signal in [StackSignal::RtMinPlus(offset), StackSignal::Number(number)] {
                let valid = rt.contains(&signal.number_with(*rt.start()));
                match env(&[("STALLSCOPE_STACK_SIGNAL", &signal.to_string())]) {
                    Ok(c) => {
                        prop_assert!(valid, "{} accepted", signal);
                        prop_assert_eq!(c.stack_signal, signal);
                    }
                    Err(e) => {
                        prop_assert!(!valid, "{} refused: {}", signal, e);
                        prop_assert_eq!(e.variable(), "STALLSCOPE_STACK_SIGNAL");
                    }
                }
            }
        }
    }
}
