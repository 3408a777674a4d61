//! `docs/configuration.md` against the code: every variable the crate reads has a row, every
//! row is a variable the crate reads, and each row's builder method, default and range are
//! the code's. A variable added without its row (or a default changed without the page) fails
//! here.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use super::testing::{doc, sources, table_rows};
use super::*;

/// What the page must say about one variable.
enum Row {
    /// Read and followed: its builder method (`–` for none), and the start of its default and
    /// a part of its range cell, where the code defines them.
    Read {
        builder: &'static str,
        default: Option<String>,
        range: Option<String>,
    },
    /// Read only to warn that stallscope sets it itself.
    NotFollowed,
}

fn read(builder: &'static str, default: impl Into<Option<String>>, range: Option<String>) -> Row {
    Row::Read {
        builder,
        default: default.into(),
        range,
    }
}

/// A duration as the page writes it: as the parsers print it, `0s` for zero.
fn dur(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        format_duration(d)
    }
}

fn durations(range: &RangeInclusive<Duration>) -> Option<String> {
    Some(format!("{} to {}", dur(*range.start()), dur(*range.end())))
}

#[cfg(any(feature = "_otlp", feature = "console"))]
fn numbers(range: &RangeInclusive<u64>) -> Option<String> {
    Some(format!("{} to {}", range.start(), range.end()))
}

fn on_off(on: bool) -> String {
    (if on { "on" } else { "off" }).to_owned()
}

fn text(s: &str) -> Option<String> {
    Some(s.to_owned())
}

/// Every variable with what the code says of it.
fn expected() -> BTreeMap<&'static str, Row> {
    let d = Config::default();
    let mut rows = BTreeMap::from([
        (
            vars::SLOW_POLL_THRESHOLD,
            read(
                "slow_poll_threshold",
                dur(d.slow_poll_threshold),
                durations(&(d.clock_tick * 2..=SLOW_POLL_THRESHOLD_MAX)),
            ),
        ),
        (
            vars::REPORT,
            read(
                "report_slow_polls",
                on_off(d.report_slow_polls),
                text("on or off"),
            ),
        ),
        (
            vars::SUMMARY,
            read(
                "summary_on_drop",
                on_off(d.summary_on_drop),
                text("on or off"),
            ),
        ),
        (
            vars::SAMPLE_INTERVAL,
            read(
                "sample_interval",
                dur(d.sample_interval),
                durations(&SAMPLE_INTERVAL_RANGE),
            ),
        ),
        (
            vars::HISTOGRAM_BOUNDS,
            read(
                "histogram_bounds",
                format!(
                    "{} bounds, {} to {}",
                    d.histogram_bounds.len(),
                    d.histogram_bounds[0],
                    d.histogram_bounds[d.histogram_bounds.len() - 1]
                ),
                Some(format!(
                    "at most {MAX_HISTOGRAM_BOUNDS} bounds, each from {} to {}",
                    HISTOGRAM_BOUND_RANGE.start(),
                    HISTOGRAM_BOUND_RANGE.end()
                )),
            ),
        ),
        (
            vars::MAX_SITES,
            read(
                "max_sites",
                d.max_sites.to_string(),
                Some(format!("1 to {}", crate::config::MAX_SITES_LIMIT)),
            ),
        ),
        (
            vars::MAX_TASK_NAMES,
            read(
                "max_task_names_per_location",
                d.max_task_names_per_location.to_string(),
                text("1 or more"),
            ),
        ),
        (
            vars::OTLP,
            read(
                "otlp",
                format!("{:?}", d.otlp).to_lowercase(),
                text("auto, on or off"),
            ),
        ),
        (
            vars::STALL_SPANS,
            read("stall_spans", on_off(d.stall_spans), text("on or off")),
        ),
        (
            vars::STACKS,
            read(
                "capture_stacks",
                on_off(d.capture_stacks),
                text("on or off"),
            ),
        ),
        (
            vars::STACK_SIGNAL,
            read(
                "stack_signal",
                d.stack_signal.to_string(),
                text("SIGRTMIN to SIGRTMAX"),
            ),
        ),
        (
            vars::STACK_INTERVAL,
            read(
                "stack_sample_interval",
                dur(d.stack_sample_interval),
                durations(&STACK_SAMPLE_INTERVAL_RANGE),
            ),
        ),
        (
            vars::CLOCK_TICK,
            read(
                "clock_tick",
                dur(d.clock_tick),
                durations(&CLOCK_TICK_RANGE),
            ),
        ),
        (
            vars::CLOCK,
            read("coarse_clock", "auto".to_owned(), text("auto or coarse")),
        ),
        (vars::CONSOLE, read("–", on_off(true), text("on or off"))),
        ("RUST_LOG", read("–", "info".to_owned(), None)),
        ("NO_COLOR", read("–", "unset".to_owned(), None)),
    ]);
    #[cfg(feature = "_otlp")]
    rows.extend(otel());
    #[cfg(feature = "console")]
    rows.extend(console());
    rows
}

/// The `OTEL_*` variables, with the defaults of settings resolved from an empty environment.
#[cfg(feature = "_otlp")]
fn otel() -> Vec<(&'static str, Row)> {
    use crate::export::otlp::settings::{
        OtlpSettings, INTERVAL_MS, MAX_QUEUE_SIZE, SCHEDULE_DELAY_MS, TIMEOUT_MS,
    };
    let none = |_: &str| None::<String>;
    let s = OtlpSettings::resolve(Toggle::On, true, &none)
        .expect("the defaults are valid")
        .expect("OTLP on");
    let (_, batch) = s.traces.clone().expect("stall spans on");
    let ms = |d: Duration| d.as_millis().to_string();
    let timeout = numbers(&TIMEOUT_MS).map(|r| r + " ms");
    let generic = |what: &str| format!("the generic {what}");
    let compression = text("none, gzip or zstd");
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            read(
                "–",
                s.metrics
                    .endpoint
                    .trim_end_matches("/v1/metrics")
                    .to_owned(),
                None,
            ),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            read("–", generic("endpoint"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            read("–", generic("endpoint"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            read("–", s.metrics.protocol_name().to_owned(), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            read("–", generic("protocol"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            read("–", generic("protocol"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            read("–", ms(s.metrics.timeout), timeout.clone()),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            read("–", generic("timeout"), timeout.clone()),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            read("–", generic("timeout"), timeout.clone()),
        ),
        (
            "OTEL_METRIC_EXPORT_TIMEOUT",
            read("–", "unset".to_owned(), timeout.clone()),
        ),
        (
            "OTEL_BSP_EXPORT_TIMEOUT",
            read("–", "unset".to_owned(), timeout),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            read("–", "none".to_owned(), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            read("–", generic("headers"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            read("–", generic("headers"), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            read("–", "none".to_owned(), compression.clone()),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
            read("–", generic("compression"), compression.clone()),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            read("–", generic("compression"), compression),
        ),
        (
            "OTEL_METRIC_EXPORT_INTERVAL",
            read(
                "–",
                ms(s.interval),
                numbers(&INTERVAL_MS).map(|r| r + " ms"),
            ),
        ),
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            read(
                "–",
                ms(batch.schedule_delay),
                numbers(&SCHEDULE_DELAY_MS).map(|r| r + " ms"),
            ),
        ),
        (
            "OTEL_BSP_MAX_QUEUE_SIZE",
            read(
                "–",
                batch.max_queue_size.to_string(),
                numbers(&MAX_QUEUE_SIZE).map(|r| r + " spans"),
            ),
        ),
        (
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            read(
                "–",
                batch.max_export_batch_size.to_string(),
                text("1 to OTEL_BSP_MAX_QUEUE_SIZE"),
            ),
        ),
        ("OTEL_SERVICE_NAME", read("–", None::<String>, None)),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            read("–", "none".to_owned(), None),
        ),
        (
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            Row::NotFollowed,
        ),
        ("OTEL_TRACES_SAMPLER", Row::NotFollowed),
        ("OTEL_TRACES_SAMPLER_ARG", Row::NotFollowed),
        ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", Row::NotFollowed),
        ("OTEL_SPAN_EVENT_COUNT_LIMIT", Row::NotFollowed),
        ("OTEL_SPAN_LINK_COUNT_LIMIT", Row::NotFollowed),
        ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", Row::NotFollowed),
    ]
}

/// console-subscriber's variables, with its own defaults (stallscope passes none of its own).
#[cfg(feature = "console")]
fn console() -> Vec<(&'static str, Row)> {
    use crate::export::console::{
        ConsoleSettings, BUFFER_CAPACITY_RANGE, PUBLISH_INTERVAL_RANGE, RETENTION_RANGE,
    };
    use console_subscriber::{ConsoleLayer, Server};
    let bind = ConsoleSettings::from_env(&|_| None)
        .expect("the defaults are valid")
        .bind;
    assert_eq!(
        bind.to_string(),
        format!("{}:{}", Server::DEFAULT_IP, Server::DEFAULT_PORT),
        "stallscope's default bind is console-subscriber's"
    );
    vec![
        ("TOKIO_CONSOLE_BIND", read("–", bind.to_string(), None)),
        (
            "TOKIO_CONSOLE_RETENTION",
            read(
                "–",
                dur(ConsoleLayer::DEFAULT_RETENTION),
                durations(&RETENTION_RANGE),
            ),
        ),
        (
            "TOKIO_CONSOLE_PUBLISH_INTERVAL",
            read(
                "–",
                dur(ConsoleLayer::DEFAULT_PUBLISH_INTERVAL),
                durations(&PUBLISH_INTERVAL_RANGE),
            ),
        ),
        (
            "TOKIO_CONSOLE_BUFFER_CAPACITY",
            read(
                "–",
                ConsoleLayer::DEFAULT_EVENT_BUFFER_CAPACITY.to_string(),
                numbers(&BUFFER_CAPACITY_RANGE).map(|r| r + " events"),
            ),
        ),
        (
            "TOKIO_CONSOLE_RECORD_PATH",
            read("–", "none".to_owned(), None),
        ),
    ]
}

/// Whether `s` is an environment variable name of the families stallscope reads.
fn is_variable(s: &str) -> bool {
    ["STALLSCOPE_", "OTEL_", "TOKIO_CONSOLE_"]
        .iter()
        .any(|prefix| s.starts_with(prefix))
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Every variable the code names: each string literal that is a `STALLSCOPE_*`, `OTEL_*` or
/// `TOKIO_CONSOLE_*` name, and each literal given to `env::var` or `env::var_os`.
fn variables_in_code() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, text) in sources() {
        // Between two quotes: a literal is one of these pieces (and a name is never anything
        // else than a literal).
        found.extend(
            text.split('"')
                .filter(|s| is_variable(s))
                .map(str::to_owned),
        );
        for call in ["var(\"", "var_os(\""] {
            for (at, _) in text.match_indices(call) {
                let rest = &text[at + call.len()..];
                if let Some(end) = rest.find('"') {
                    found.insert(rest[..end].to_owned());
                }
            }
        }
    }
    found
}

/// The methods `Builder` has.
fn builder_methods() -> BTreeSet<String> {
    include_str!("../builder.rs")
        .split("pub fn ")
        .skip(1)
        .filter_map(|rest| rest.split(['(', '<']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_configuration_reference_lists_every_variable_the_code_reads_with_its_default_and_range() {
    let page = doc("configuration.md");
    let rows = table_rows(&page, "variable");
    let documented: BTreeSet<String> = rows.iter().map(|row| plain(&row[0])).collect();
    let in_code = variables_in_code();
    let undocumented: Vec<_> = in_code.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code but not in docs/configuration.md: {undocumented:?}"
    );
    let unread: Vec<_> = documented.difference(&in_code).collect();
    assert!(
        unread.is_empty(),
        "in docs/configuration.md but read nowhere in src/: {unread:?}"
    );

    let expected = expected();
    let methods = builder_methods();
    let mut wrong = Vec::new();
    for row in &rows {
        let variable = plain(&row[0]);
        let Some(expect) = expected.get(variable.as_str()) else {
            wrong.push(format!(
                "{variable}: add what the code says of it to expected() in src/config/reference.rs"
            ));
            continue;
        };
        match (expect, row.len()) {
            (Row::NotFollowed, 2) => {}
            (Row::NotFollowed, _) => wrong.push(format!(
                "{variable}: stallscope does not follow it; list it in the table of variables it sets itself"
            )),
            (
                Row::Read {
                    builder,
                    default,
                    range,
                },
                5,
            ) => {
                let (documented_builder, documented_default, documented_range) =
                    (plain(&row[1]), plain(&row[2]), plain(&row[3]));
                if documented_builder != *builder {
                    wrong.push(format!(
                        "{variable}: builder {documented_builder:?}, the code's is {builder:?}"
                    ));
                }
                if *builder != "–" && !methods.contains(*builder) {
                    wrong.push(format!("{variable}: Builder has no method {builder}"));
                }
                if let Some(default) = default {
                    if !documented_default.starts_with(default.as_str()) {
                        wrong.push(format!(
                            "{variable}: default {documented_default:?}, the code's is {default:?}"
                        ));
                    }
                }
                if let Some(range) = range {
                    if !documented_range.contains(range.as_str()) {
                        wrong.push(format!(
                            "{variable}: range {documented_range:?}, the code's is {range:?}"
                        ));
                    }
                }
            }
            (Row::Read { .. }, n) => wrong.push(format!(
                "{variable}: a row of {n} cells; the reference tables have variable, builder, default, range, meaning"
            )),
        }
    }
    for variable in expected.keys() {
        if !documented.contains(*variable) {
            wrong.push(format!(
                "{variable}: expected() names it, the page does not"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md:\n{}",
        wrong.join("\n")
    );
}

/// A cell's text without its code spans' backticks.
fn plain(cell: &str) -> String {
    cell.replace('`', "")
}
