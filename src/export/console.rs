//! tokio-console: console-subscriber's layer, configured from its own `TOKIO_CONSOLE_*`
//! variables (default bind 127.0.0.1:6669).
//!
//! The variables are read and checked here and handed to console-subscriber's builder, never
//! read by it: it panics on a value it cannot parse. Its gRPC server runs on a thread of ours,
//! so an address that cannot be bound is one WARN line, not a panic in the application's log.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{format_duration, var, whole_number, ConfigError};

const BIND: &str = "TOKIO_CONSOLE_BIND";
const RETENTION: &str = "TOKIO_CONSOLE_RETENTION";
const PUBLISH_INTERVAL: &str = "TOKIO_CONSOLE_PUBLISH_INTERVAL";
const BUFFER_CAPACITY: &str = "TOKIO_CONSOLE_BUFFER_CAPACITY";
const RECORD_PATH: &str = "TOKIO_CONSOLE_RECORD_PATH";

/// How long closed tasks are kept for the console: its memory grows with this, so a day at most.
pub(crate) const RETENTION_RANGE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(86_400);
/// How often the console's clients are updated: 0 would panic in its timer.
pub(crate) const PUBLISH_INTERVAL_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(3600);
/// Events buffered for the console's aggregator (default 102,400): 0 would panic in its
/// channel; the buffer grows with the events it holds, so it is bounded.
pub(crate) const BUFFER_CAPACITY_RANGE: RangeInclusive<u64> = 1..=10_000_000;

/// The `TOKIO_CONSOLE_*` variables console-subscriber 0.5 reads, checked; `None` is its default.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConsoleSettings {
    pub(crate) bind: SocketAddr,
    retention: Option<Duration>,
    publish_interval: Option<Duration>,
    buffer_capacity: Option<usize>,
    record_path: Option<PathBuf>,
}

impl ConsoleSettings {
    /// Reads the variables `lookup` returns; an error names the variable and what it accepts.
    pub(crate) fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConsoleSettings, ConfigError> {
        let bind = match var(lookup, BIND) {
            Some(v) => bind_address(&v)?,
            None => SocketAddr::from(([127, 0, 0, 1], 6669)),
        };
        let duration = |variable: &str, range: &RangeInclusive<Duration>, example: &str| {
            var(lookup, variable)
                .map(|v| console_duration(variable, &v, range, example))
                .transpose()
        };
        let record_path = var(lookup, RECORD_PATH)
            .map(|v| recording_file(&v))
            .transpose()?;
        Ok(ConsoleSettings {
            bind,
            retention: duration(RETENTION, &RETENTION_RANGE, "1h or 10m")?,
            publish_interval: duration(PUBLISH_INTERVAL, &PUBLISH_INTERVAL_RANGE, "1s or 100ms")?,
            buffer_capacity: var(lookup, BUFFER_CAPACITY)
                .map(|v| whole_number(BUFFER_CAPACITY, &v, &BUFFER_CAPACITY_RANGE, "events"))
                .transpose()?
                // The range's end fits in usize.
                .map(|n| n as usize),
            record_path,
        })
    }
}

/// `HOST:PORT` that resolves, with a port a client can be told (not 0).
fn bind_address(value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .filter(|addr| addr.port() != 0)
        .ok_or_else(|| {
            ConfigError::new(
                BIND,
                value,
                "HOST:PORT that resolves, with a port from 1 to 65535, such as 127.0.0.1:6669",
            )
        })
}

/// A duration as console-subscriber reads one (humantime: `1h`, `10m 30s`, `500ms`), in `range`.
fn console_duration(
    variable: &str,
    value: &str,
    range: &RangeInclusive<Duration>,
    example: &str,
) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .ok()
        .filter(|d| range.contains(d))
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                value,
                &format!(
                    "a duration such as {example}, from {} to {}",
                    format_duration(*range.start()),
                    format_duration(*range.end())
                ),
            )
        })
}

/// The recording's file, created now: console-subscriber panics when it cannot create it.
fn recording_file(value: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(value);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map(|_| path)
        .map_err(|e| {
            ConfigError::new(
                RECORD_PATH,
                value,
                &format!("a file that can be created ({e})"),
            )
        })
}

/// What stopped the console from starting, for the one WARN line that says so.
pub(crate) fn unavailable(bind: SocketAddr, why: &str) -> String {
    format!(
        "tokio-console is off: cannot listen on {bind} ({BIND}): {why}; the application goes \
         on without it (set {BIND} to a free HOST:PORT, or STALLSCOPE_CONSOLE=off)"
    )
}

/// The console layer with its gRPC server started on its own thread; `Ok(None)` when built
/// without `--cfg tokio_unstable` (console-subscriber would panic), and `Err` with the line to
/// log when its address cannot be bound (another process holds the port).
pub(crate) fn layer<S>(settings: &ConsoleSettings) -> Result<Option<impl Layer<S>>, String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !cfg!(tokio_unstable) {
        return Ok(None);
    }
    // Bound once and released: the port is known free before anything starts, so the usual
    // failure (a second process on the default port) costs nothing.
    TcpListener::bind(settings.bind).map_err(|e| unavailable(settings.bind, &e.to_string()))?;
    let mut builder = console_subscriber::ConsoleLayer::builder().server_addr(settings.bind);
    if let Some(retention) = settings.retention {
        builder = builder.retention(retention);
    }
    if let Some(interval) = settings.publish_interval {
        builder = builder.publish_interval(interval);
    }
    if let Some(capacity) = settings.buffer_capacity {
        builder = builder.event_buffer_capacity(capacity);
    }
    if let Some(path) = &settings.record_path {
        builder = builder.recording_path(path);
    }
    let (layer, server) = builder.build();
    let bind = settings.bind;
    // What `Builder::spawn` does, except that a server that fails (the port taken between the
    // check above and its bind) is logged in one line instead of panicking.
    std::thread::Builder::new()
        .name("console_subscriber".into())
        .spawn(move || {
            let quiet =
                tracing::subscriber::set_default(tracing_core::subscriber::NoSubscriber::default());
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(server.serve()).map_err(|e| e.to_string()));
            drop(quiet);
            if let Err(e) = served {
                tracing::warn!(target: "stallscope", "{}", unavailable(bind, &e));
            }
        })
        .map_err(|e| unavailable(bind, &format!("no thread for its server ({e})")))?;
    Ok(Some(layer.with_filter(FilterFn::new(
        console_filter as fn(&Metadata<'_>) -> bool,
    ))))
}

/// What console-subscriber's `spawn` lets through to its layer: tokio's runtime spans and events.
fn console_filter(meta: &Metadata<'_>) -> bool {
    if meta.is_event() {
        return meta.target().starts_with("runtime") || meta.target().starts_with("tokio");
    }
    meta.name().starts_with("runtime.") || meta.target().starts_with("tokio")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::testing::{assert_each_refused, lookup};

    fn settings(pairs: &[(&str, &str)]) -> Result<ConsoleSettings, ConfigError> {
        ConsoleSettings::from_env(&lookup(pairs))
    }

    /// Every `TOKIO_CONSOLE_*` variable console-subscriber 0.5 reads, with garbage for it.
    const GARBAGE: &[(&str, &str, &str)] = &[
        (BIND, "nowhere", "HOST:PORT"),
        (BIND, "127.0.0.1:99999", "HOST:PORT"),
        (BIND, "127.0.0.1:0", "a port from 1 to 65535"),
        (RETENTION, "abc", "a duration such as 1h"),
        (RETENTION, "3600", "a duration such as 1h"),
        (RETENTION, "2days", "to 24h"),
        (RETENTION, "99999999999999999999y", "a duration"),
        (PUBLISH_INTERVAL, "0s", "from 10ms to 1h"),
        (PUBLISH_INTERVAL, "-1s", "a duration"),
        (PUBLISH_INTERVAL, "1000", "a duration"),
        (BUFFER_CAPACITY, "0", "events from 1 to 10000000"),
        (BUFFER_CAPACITY, "18446744073709551615", "events from 1"),
        (BUFFER_CAPACITY, "lots", "events"),
        (
            RECORD_PATH,
            "/nonexistent-dir/recording.json",
            "a file that can be created",
        ),
    ];

    #[test]
    fn each_variable_refuses_its_garbage_naming_itself() {
        assert_each_refused(GARBAGE, |variable, value| settings(&[(variable, value)]));
    }

    #[test]
    fn good_values_reach_the_builder_and_unset_ones_keep_its_defaults() {
        let dir = std::env::temp_dir().join(format!("stallscope-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let record = dir.join("recording.json");
        let s = settings(&[
            (BIND, "127.0.0.1:7777"),
            (RETENTION, "10m 30s"),
            (PUBLISH_INTERVAL, "100ms"),
            (BUFFER_CAPACITY, "1024"),
            (RECORD_PATH, record.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(
            s,
            ConsoleSettings {
                bind: SocketAddr::from(([127, 0, 0, 1], 7777)),
                retention: Some(Duration::from_secs(630)),
                publish_interval: Some(Duration::from_millis(100)),
                buffer_capacity: Some(1024),
                record_path: Some(record),
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.bind, SocketAddr::from(([127, 0, 0, 1], 6669)));
        assert_eq!(defaults.retention, None);
    }

    #[test]
    fn a_taken_port_is_one_line_naming_the_variable() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port().to_string();
        let s = settings(&[(BIND, &format!("127.0.0.1:{port}"))]).unwrap();
        let line = match layer::<tracing_subscriber::Registry>(&s) {
            Err(line) => line,
            Ok(_) => panic!("the console started on a taken port"),
        };
        assert!(line.contains("TOKIO_CONSOLE_BIND"), "{line}");
        assert!(line.contains(&port), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    proptest! {
        #[test]
        fn no_variable_panics_or_blames_another(
            index in 0..GARBAGE.len(),
            value in "\\PC*|[0-9]{0,25} ?(ns|us|ms|s|m|h|d|y|days)?|[a-z0-9.]{0,10}:[0-9]{0,7}",
        ) {
            let variable = GARBAGE[index].0;
            // A recording path is a file created on disk, and a bind address with a host name
            // is a DNS lookup: their garbage is the table's.
            prop_assume!(variable != RECORD_PATH && variable != BIND);
            if let Err(e) = settings(&[(variable, &value)]) {
                prop_assert_eq!(e.variable(), variable);
            }
        }

        #[test]
        fn durations_accept_what_humantime_prints(ms in 10u64..=3_600_000) {
            let d = Duration::from_millis(ms);
            let printed = humantime::format_duration(d).to_string();
            let s = settings(&[(PUBLISH_INTERVAL, &printed)]).unwrap();
            prop_assert_eq!(s.publish_interval, Some(d));
        }

        #[test]
        fn bind_addresses_accept_what_they_print(port in 1u16..=65535) {
            let s = settings(&[(BIND, &format!("127.0.0.1:{port}"))]).unwrap();
            prop_assert_eq!(s.bind, SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
}
