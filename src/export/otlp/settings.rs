//! The standard `OTEL_*` variables, read and validated up front so a bad value fails at start-up
//! naming the variable, instead of being logged and ignored by the SDK.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::config::{key_value_list, millis, var, whole_number, ConfigError, Toggle};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318), the specification's default.
    HttpProtobuf,
}

/// Where one signal (metrics, or stall spans) goes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SignalSettings {
    pub(crate) protocol: Protocol,
    /// The full URL (for HTTP, including `/v1/metrics` or `/v1/traces`).
    pub(crate) endpoint: String,
    /// What bounds each export: the exporter's timeout, or the signal's export timeout
    /// (`OTEL_METRIC_EXPORT_TIMEOUT`, `OTEL_BSP_EXPORT_TIMEOUT`) when that is shorter.
    pub(crate) timeout: Duration,
    /// The variable [`Self::timeout`] came from, for the log.
    pub(crate) timeout_variable: &'static str,
    /// Request headers (gRPC metadata), percent-decoded.
    pub(crate) headers: Vec<(String, String)>,
}

impl SignalSettings {
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The batch span processor's settings, read here rather than by the SDK (which ignores a bad
/// value and panics on a huge queue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchSettings {
    pub(crate) schedule_delay: Duration,
    pub(crate) max_queue_size: usize,
    pub(crate) max_export_batch_size: usize,
}

/// Resolved OTLP settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OtlpSettings {
    pub(crate) metrics: SignalSettings,
    /// Stall spans and their batch processor; `None` when they are off
    /// (`STALLSCOPE_STALL_SPANS=off`).
    pub(crate) traces: Option<(SignalSettings, BatchSettings)>,
    pub(crate) interval: Duration,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, without `service.name`.
    pub(crate) resource_attributes: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`, else `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, else the
    /// executable's name (better than the SDK's `unknown_service`).
    pub(crate) service_name: String,
    /// Standard variables that are set but that stallscope does not follow, each with why:
    /// warned about at start-up rather than ignored in silence.
    pub(crate) not_followed: Vec<String>,
}

pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub(crate) const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
const INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const METRIC_EXPORT_TIMEOUT: &str = "OTEL_METRIC_EXPORT_TIMEOUT";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
const BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";

/// Export timeouts, in ms: longer than ten minutes would only hold up the process's exit.
pub(crate) const TIMEOUT_MS: RangeInclusive<u64> = 1..=600_000;
/// `OTEL_METRIC_EXPORT_INTERVAL`, in ms: under 10 ms the reader thread would collect without
/// pause; a day at most.
pub(crate) const INTERVAL_MS: RangeInclusive<u64> = 10..=86_400_000;
/// `OTEL_BSP_SCHEDULE_DELAY`, in ms: at 0 the processor's thread spins on a core.
pub(crate) const SCHEDULE_DELAY_MS: RangeInclusive<u64> = 10..=3_600_000;
/// `OTEL_BSP_MAX_QUEUE_SIZE`: the SDK reserves every slot at start (about 360 bytes each, so
/// 36 MB at most); at 0 every stall span would be dropped.
pub(crate) const MAX_QUEUE_SIZE: RangeInclusive<u64> = 1..=100_000;

/// The SDK's defaults for the batch span processor, as the specification gives them.
const BATCH_DEFAULTS: BatchSettings = BatchSettings {
    schedule_delay: Duration::from_millis(5000),
    max_queue_size: 2048,
    max_export_batch_size: 512,
};

/// A signal's own variables, which beat the generic `OTEL_EXPORTER_OTLP_*` ones.
struct SignalVars {
    endpoint: &'static str,
    protocol: &'static str,
    timeout: &'static str,
    headers: &'static str,
    compression: &'static str,
    /// The timeout of the signal's exports as its SDK component names it.
    export_timeout: &'static str,
    /// Appended to the generic endpoint for HTTP.
    http_path: &'static str,
}

const METRICS: SignalVars = SignalVars {
    endpoint: METRICS_ENDPOINT,
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    compression: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    export_timeout: METRIC_EXPORT_TIMEOUT,
    http_path: "/v1/metrics",
};

const TRACES: SignalVars = SignalVars {
    endpoint: TRACES_ENDPOINT,
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    compression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    export_timeout: BSP_EXPORT_TIMEOUT,
    http_path: "/v1/traces",
};

/// A variable the SDK would read for the pipelines stallscope builds, but which stallscope
/// sets itself.
struct NotFollowed {
    variable: &'static str,
    why: &'static str,
    /// The value that agrees with what stallscope does (no warning).
    agrees: Option<&'static str>,
    /// Whether it is about stall spans (no warning when they are off).
    stall_spans_only: bool,
}

const NOT_FOLLOWED: &[NotFollowed] = &[
    NotFollowed {
        variable: "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        why: "stallscope exports cumulative temporality, which Prometheus needs",
        agrees: Some("cumulative"),
        stall_spans_only: false,
    },
    NotFollowed {
        variable: "OTEL_TRACES_SAMPLER",
        why: "stall spans are kept, except inside a trace the application sampled out",
        agrees: Some("parentbased_always_on"),
        stall_spans_only: true,
    },
    NotFollowed {
        variable: "OTEL_TRACES_SAMPLER_ARG",
        why: "stall spans are rate-limited, not sampled",
        agrees: None,
        stall_spans_only: true,
    },
    NotFollowed {
        variable: "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
        why: "stall spans keep their own fixed set of attributes",
        agrees: None,
        stall_spans_only: true,
    },
    NotFollowed {
        variable: "OTEL_SPAN_EVENT_COUNT_LIMIT",
        why: "stall spans have no events",
        agrees: None,
        stall_spans_only: true,
    },
    NotFollowed {
        variable: "OTEL_SPAN_LINK_COUNT_LIMIT",
        why: "stall spans have no links",
        agrees: None,
        stall_spans_only: true,
    },
    NotFollowed {
        variable: "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
        why: "the batch span processor's thread exports one batch at a time",
        agrees: Some("1"),
        stall_spans_only: true,
    },
];

impl OtlpSettings {
    /// `None` when OTLP is off: `toggle` is `Off`, or `Auto` without any endpoint variable
    /// (the traces endpoint counts only when stall spans are on).
    pub(crate) fn resolve(
        toggle: Toggle,
        stall_spans: bool,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        let endpoint_set = var(lookup, ENDPOINT).is_some()
            || var(lookup, METRICS_ENDPOINT).is_some()
            || (stall_spans && var(lookup, TRACES_ENDPOINT).is_some());
        match toggle {
            Toggle::Off => return Ok(None),
            Toggle::Auto if !endpoint_set => return Ok(None),
            _ => {}
        }
        let mut not_followed = Vec::new();
        let metrics = SignalSettings::resolve(&METRICS, lookup, &mut not_followed)?;
        let traces = if stall_spans {
            Some((
                SignalSettings::resolve(&TRACES, lookup, &mut not_followed)?,
                BatchSettings::resolve(lookup)?,
            ))
        } else {
            None
        };
        let interval = match var(lookup, INTERVAL) {
            Some(v) => millis(INTERVAL, &v, &INTERVAL_MS)?,
            None => Duration::from_secs(60),
        };

        let mut resource_attributes = match var(lookup, RESOURCE_ATTRIBUTES) {
            Some(v) => key_value_list(RESOURCE_ATTRIBUTES, &v, "key=value")?,
            None => Vec::new(),
        };
        let named_in_attributes = resource_attributes
            .iter()
            .rposition(|(k, _)| k == "service.name")
            .map(|i| resource_attributes.remove(i).1);
        resource_attributes.retain(|(k, _)| k != "service.name");
        let service_name = var(lookup, SERVICE_NAME)
            .or(named_in_attributes)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            })
            .unwrap_or_else(|| "unknown_service".to_owned());

        for entry in NOT_FOLLOWED {
            if entry.stall_spans_only && !stall_spans {
                continue;
            }
            match var(lookup, entry.variable) {
                Some(value) if Some(value.as_str()) != entry.agrees => not_followed.push(format!(
                    "{}={value:?} is not followed: {}",
                    entry.variable, entry.why
                )),
                _ => {}
            }
        }

        Ok(Some(OtlpSettings {
            metrics,
            traces,
            interval,
            resource_attributes,
            service_name,
            not_followed,
        }))
    }
}

impl BatchSettings {
    /// The `OTEL_BSP_*` variables over the specification's defaults; a batch size set larger
    /// than the queue is refused (the SDK would shrink it in silence).
    fn resolve(lookup: &dyn Fn(&str) -> Option<String>) -> Result<BatchSettings, ConfigError> {
        let mut batch = BATCH_DEFAULTS;
        if let Some(v) = var(lookup, BSP_SCHEDULE_DELAY) {
            batch.schedule_delay = millis(BSP_SCHEDULE_DELAY, &v, &SCHEDULE_DELAY_MS)?;
        }
        if let Some(v) = var(lookup, BSP_MAX_QUEUE_SIZE) {
            batch.max_queue_size = spans(BSP_MAX_QUEUE_SIZE, &v, &MAX_QUEUE_SIZE)?;
        }
        batch.max_export_batch_size = match var(lookup, BSP_MAX_EXPORT_BATCH_SIZE) {
            Some(v) => {
                let queue = batch.max_queue_size as u64;
                spans(BSP_MAX_EXPORT_BATCH_SIZE, &v, &(1..=queue)).map_err(|e| {
                    ConfigError::new(
                        BSP_MAX_EXPORT_BATCH_SIZE,
                        &v,
                        &format!("{} (at most {BSP_MAX_QUEUE_SIZE})", e.expected()),
                    )
                })?
            }
            None => batch.max_export_batch_size.min(batch.max_queue_size),
        };
        Ok(batch)
    }
}

fn spans(variable: &str, value: &str, range: &RangeInclusive<u64>) -> Result<usize, ConfigError> {
    // The range's end fits in usize: every range here is far under 2^32.
    whole_number(variable, value, range, "spans").map(|n| n as usize)
}

impl SignalSettings {
    /// The signal's protocol, endpoint (its own variable verbatim, else the generic one, with
    /// the signal's path for HTTP), timeout and headers; its compression is checked.
    fn resolve(
        vars: &SignalVars,
        lookup: &dyn Fn(&str) -> Option<String>,
        not_followed: &mut Vec<String>,
    ) -> Result<SignalSettings, ConfigError> {
        let signal_or_generic =
            |signal: &'static str, generic: &'static str| match var(lookup, signal) {
                Some(v) => Some((signal, v)),
                None => var(lookup, generic).map(|v| (generic, v)),
            };
        let protocol_setting = signal_or_generic(vars.protocol, PROTOCOL);
        let protocol = match &protocol_setting {
            None => Protocol::HttpProtobuf,
            Some((_, p)) if p == "http/protobuf" => Protocol::HttpProtobuf,
            Some((_, p)) if p == "grpc" => Protocol::Grpc,
            Some((variable, other)) => {
                return Err(ConfigError::new(
                    variable,
                    other,
                    "grpc or http/protobuf (http/json is not built into stallscope)",
                ))
            }
        };
        let protocol_var = protocol_setting.map_or(PROTOCOL, |(variable, _)| variable);
        check_compiled(protocol, protocol_var)?;

        let endpoint = if let Some(e) = var(lookup, vars.endpoint) {
            validate_url(vars.endpoint, &e, false)?;
            e
        } else {
            let base = var(lookup, ENDPOINT).unwrap_or_else(|| {
                match protocol {
                    Protocol::Grpc => "http://localhost:4317",
                    Protocol::HttpProtobuf => "http://localhost:4318",
                }
                .to_owned()
            });
            validate_url(ENDPOINT, &base, true)?;
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => {
                    format!("{}{}", base.trim_end_matches('/'), vars.http_path)
                }
            }
        };

        let (mut timeout_variable, mut timeout) = match signal_or_generic(vars.timeout, TIMEOUT) {
            Some((variable, v)) => (variable, millis(variable, &v, &TIMEOUT_MS)?),
            None => (TIMEOUT, Duration::from_secs(10)),
        };
        if let Some(v) = var(lookup, vars.export_timeout) {
            let export_timeout = millis(vars.export_timeout, &v, &TIMEOUT_MS)?;
            if export_timeout < timeout {
                (timeout_variable, timeout) = (vars.export_timeout, export_timeout);
            }
        }

        let headers = match signal_or_generic(vars.headers, HEADERS) {
            Some((variable, v)) => headers(variable, &v)?,
            None => Vec::new(),
        };

        if let Some((variable, v)) = signal_or_generic(vars.compression, COMPRESSION) {
            match v.as_str() {
                "none" => {}
                "gzip" | "zstd" => not_followed.push(format!(
                    "{variable}={v:?} is not followed: stallscope sends OTLP uncompressed \
                     (no compression is compiled in)"
                )),
                _ => return Err(ConfigError::new(variable, &v, "none, gzip or zstd")),
            }
        }
        Ok(SignalSettings {
            protocol,
            endpoint,
            timeout,
            timeout_variable,
            headers,
        })
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: a key=value list whose keys are HTTP header names and whose
/// values, decoded, are valid header values (visible ASCII), as both transports send them.
fn headers(variable: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let list = key_value_list(variable, value, "header=value")?;
    for (name, header_value) in &list {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.ends_with("-bin") {
            return Err(ConfigError::new(
                variable,
                value,
                &format!(
                    "header names of letters, digits and -_.!#$&'*+^`|~ (not ending in -bin): \
                     {name:?} is not one"
                ),
            ));
        }
        // ASCII only: gRPC metadata takes no other, and HTTP servers differ on the rest.
        if !header_value.is_ascii() || http::HeaderValue::from_str(header_value).is_err() {
            return Err(ConfigError::new(
                variable,
                value,
                &format!(
                    "header values of visible ASCII characters and spaces once decoded: the \
                     value of {name:?} is not"
                ),
            ));
        }
    }
    Ok(list)
}

fn check_compiled(protocol: Protocol, variable: &str) -> Result<(), ConfigError> {
    let compiled = match protocol {
        Protocol::Grpc => cfg!(feature = "otlp-grpc"),
        Protocol::HttpProtobuf => cfg!(feature = "otlp-http"),
    };
    if compiled {
        Ok(())
    } else {
        let (value, feature) = match protocol {
            Protocol::Grpc => ("grpc", "otlp-grpc"),
            Protocol::HttpProtobuf => ("http/protobuf", "otlp-http"),
        };
        Err(ConfigError::new(
            variable,
            value,
            &format!("a protocol compiled in: enable stallscope's `{feature}` feature for {value}"),
        ))
    }
}

/// An endpoint stallscope can reach: `http://` (no TLS is compiled in, so an `https://` one
/// would fail every export), a host, and a port from 1 to 65535 when one is given. The generic
/// endpoint is a base the signal's path is appended to: it takes no query.
fn validate_url(variable: &str, value: &str, base: bool) -> Result<(), ConfigError> {
    let err = |why: &str| {
        ConfigError::new(
            variable,
            value,
            &format!("an http:// URL with a host and a port from 1 to 65535, such as http://localhost:4318{why}"),
        )
    };
    let uri: http::Uri = value.parse().map_err(|_| err(""))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(err(
                " (https needs TLS, which stallscope does not compile in: send to a local \
                 collector over http)",
            ))
        }
        _ => return Err(err("")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err(""));
    }
    // Read from the text: `Uri::port` is `None` for a port that does not fit in 16 bits.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(err(""));
        }
    }
    if base && uri.query().is_some() {
        return Err(err(
            " (a base URL without a query: the signal's path is appended)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::percent_encode;
    use crate::config::testing::{assert_each_refused, lookup};

    fn resolve_with(
        toggle: Toggle,
        stall_spans: bool,
        pairs: &[(&str, &str)],
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        OtlpSettings::resolve(toggle, stall_spans, &lookup(pairs))
    }

    fn resolve(
        toggle: Toggle,
        pairs: &[(&str, &str)],
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        resolve_with(toggle, true, pairs)
    }

    /// Settings with OTLP on (an endpoint set) and `pairs` over it.
    fn on(pairs: &[(&str, &str)]) -> Result<OtlpSettings, ConfigError> {
        // The lookup takes the first match: `pairs` beat the default endpoint.
        let mut all = pairs.to_vec();
        all.push((ENDPOINT, "http://collector:4318"));
        resolve(Toggle::On, &all).map(|s| s.expect("OTLP on"))
    }

    fn traces(s: &OtlpSettings) -> &SignalSettings {
        &s.traces.as_ref().expect("stall spans on").0
    }

    fn batch(s: &OtlpSettings) -> BatchSettings {
        s.traces.as_ref().expect("stall spans on").1
    }

    #[test]
    fn off_unless_an_endpoint_is_set_or_forced_on() {
        assert_eq!(resolve(Toggle::Auto, &[]).unwrap(), None);
        assert_eq!(
            resolve(Toggle::Off, &[(ENDPOINT, "http://x:1")]).unwrap(),
            None
        );
        let on = resolve(Toggle::On, &[]).unwrap().unwrap();
        assert_eq!(on.metrics.endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(traces(&on).endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(on.interval, Duration::from_secs(60));
        assert_eq!(batch(&on), BATCH_DEFAULTS);
        // The traces endpoint alone turns OTLP on, unless stall spans are off.
        assert!(
            resolve(Toggle::Auto, &[(TRACES_ENDPOINT, "http://t:4318/x")])
                .unwrap()
                .is_some()
        );
        assert_eq!(
            resolve_with(Toggle::Auto, false, &[(TRACES_ENDPOINT, "http://t:4318/x")]).unwrap(),
            None
        );
    }

    #[test]
    fn standard_variables_pick_protocol_endpoint_interval() {
        let s = on(&[
            (ENDPOINT, "http://collector:4318/"),
            (INTERVAL, "500"),
            (SERVICE_NAME, "svc"),
        ])
        .unwrap();
        assert_eq!(s.metrics.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.metrics.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(traces(&s).endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.service_name, "svc");

        let g = resolve(
            Toggle::Auto,
            &[(ENDPOINT, "http://collector:4317"), (PROTOCOL, "grpc")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(g.metrics.protocol, Protocol::Grpc);
        assert_eq!(g.metrics.endpoint, "http://collector:4317");
        assert_eq!(traces(&g).protocol, Protocol::Grpc);
        assert_eq!(traces(&g).endpoint, "http://collector:4317");

        let m = resolve(
            Toggle::Auto,
            &[
                (ENDPOINT, "http://a:1"),
                (METRICS_ENDPOINT, "http://b:2/custom"),
                (TRACES_ENDPOINT, "http://c:3/spans"),
                (TRACES.timeout, "250"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.metrics.endpoint, "http://b:2/custom",
            "signal-specific endpoint is verbatim"
        );
        assert_eq!(traces(&m).endpoint, "http://c:3/spans");
        assert_eq!(traces(&m).timeout, Duration::from_millis(250));
        assert_eq!(m.metrics.timeout, Duration::from_secs(10));
    }

    #[test]
    fn stall_spans_off_ignore_the_traces_variables() {
        let s = resolve_with(
            Toggle::Auto,
            false,
            &[
                (ENDPOINT, "http://a:1"),
                (TRACES_ENDPOINT, "not a url"),
                (BSP_MAX_QUEUE_SIZE, "0"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces, None);
        assert!(s.not_followed.is_empty(), "{:?}", s.not_followed);
    }

    #[test]
    fn the_shorter_export_timeout_bounds_each_export() {
        let s = on(&[
            (TIMEOUT, "8000"),
            (METRIC_EXPORT_TIMEOUT, "3000"),
            (BSP_EXPORT_TIMEOUT, "9000"),
        ])
        .unwrap();
        assert_eq!(s.metrics.timeout, Duration::from_millis(3000));
        assert_eq!(s.metrics.timeout_variable, METRIC_EXPORT_TIMEOUT);
        assert_eq!(traces(&s).timeout, Duration::from_millis(8000));
        assert_eq!(traces(&s).timeout_variable, TIMEOUT);
    }

    #[test]
    fn the_batch_processor_takes_its_variables_and_keeps_the_batch_in_the_queue() {
        let s = on(&[
            (BSP_SCHEDULE_DELAY, "100"),
            (BSP_MAX_QUEUE_SIZE, "64"),
            (BSP_MAX_EXPORT_BATCH_SIZE, "64"),
        ])
        .unwrap();
        assert_eq!(
            batch(&s),
            BatchSettings {
                schedule_delay: Duration::from_millis(100),
                max_queue_size: 64,
                max_export_batch_size: 64,
            }
        );
        // A queue under the default batch takes the batch down with it, as the SDK does.
        assert_eq!(
            batch(&on(&[(BSP_MAX_QUEUE_SIZE, "100")]).unwrap()).max_export_batch_size,
            100
        );
    }

    #[test]
    fn headers_and_resource_attributes_are_decoded_and_the_signals_own_beat_the_generic() {
        let s = on(&[
            (HEADERS, "authorization=Bearer%20abc,x-tenant = t1 "),
            (TRACES.headers, "x-only=traces%2Cspans"),
            (
                RESOURCE_ATTRIBUTES,
                "deployment.environment=prod%20eu,team=a%2Cb,service.name=from-attributes",
            ),
        ])
        .unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            s.metrics.headers,
            pairs(&[("authorization", "Bearer abc"), ("x-tenant", "t1")])
        );
        assert_eq!(traces(&s).headers, pairs(&[("x-only", "traces,spans")]));
        assert_eq!(
            s.resource_attributes,
            pairs(&[("deployment.environment", "prod eu"), ("team", "a,b")])
        );
        assert_eq!(s.service_name, "from-attributes");
        let named = on(&[(RESOURCE_ATTRIBUTES, "service.name=a"), (SERVICE_NAME, "b")]).unwrap();
        assert_eq!(named.service_name, "b", "OTEL_SERVICE_NAME wins");
    }

    #[test]
    fn variables_stallscope_sets_itself_are_warned_about_not_dropped_in_silence() {
        let s = on(&[
            ("OTEL_TRACES_SAMPLER", "always_off"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                "cumulative",
            ),
            (COMPRESSION, "gzip"),
            ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "4"),
        ])
        .unwrap();
        let notes = s.not_followed.join("\n");
        assert!(
            notes.contains("OTEL_TRACES_SAMPLER=\"always_off\" is not followed"),
            "{notes}"
        );
        assert!(
            notes.contains("OTEL_EXPORTER_OTLP_COMPRESSION=\"gzip\" is not followed"),
            "{notes}"
        );
        assert!(
            notes.contains("OTEL_BSP_MAX_CONCURRENT_EXPORTS=\"4\""),
            "{notes}"
        );
        assert!(!notes.contains("TEMPORALITY"), "cumulative agrees: {notes}");
    }

    /// Every `OTEL_*` variable stallscope reads, with garbage for it: each is refused naming
    /// the variable and what it accepts.
    const GARBAGE: &[(&str, &str, &str)] = &[
        (ENDPOINT, "not a url", "an http:// URL"),
        (ENDPOINT, "localhost:4318", "an http:// URL"),
        (ENDPOINT, "http://collector:65536", "a port from 1 to 65535"),
        (ENDPOINT, "http://collector:99999", "a port from 1 to 65535"),
        (ENDPOINT, "http://collector:0", "a port from 1 to 65535"),
        (ENDPOINT, "https://collector:4318", "does not compile in"),
        (ENDPOINT, "http://collector:4318/?a=b", "without a query"),
        (ENDPOINT, "http://:4318", "with a host"),
        (METRICS_ENDPOINT, "ftp://x/y", "an http:// URL"),
        (
            METRICS_ENDPOINT,
            "http://x:123456/v1/metrics",
            "a port from 1 to 65535",
        ),
        (TRACES_ENDPOINT, "localhost:4317", "an http:// URL"),
        (PROTOCOL, "carrier-pigeon", "grpc or http/protobuf"),
        (PROTOCOL, "http/json", "http/json is not built"),
        (METRICS.protocol, "GRPC", "grpc or http/protobuf"),
        (TRACES.protocol, "http/json", "grpc or http/protobuf"),
        (INTERVAL, "5s", "milliseconds from 10 to 86400000"),
        (INTERVAL, "0", "milliseconds from 10"),
        (INTERVAL, "-1", "milliseconds"),
        (INTERVAL, "18446744073709551616", "milliseconds"),
        (
            METRIC_EXPORT_TIMEOUT,
            "abc",
            "milliseconds from 1 to 600000",
        ),
        (TIMEOUT, "-1", "milliseconds from 1 to 600000"),
        (
            TIMEOUT,
            "18446744073709551615",
            "milliseconds from 1 to 600000",
        ),
        (METRICS.timeout, "0", "milliseconds"),
        (TRACES.timeout, "soon", "milliseconds"),
        (HEADERS, "authorization", "has no '='"),
        (HEADERS, "bad header=x", "header names"),
        (HEADERS, "x=%0Aevil", "visible ASCII"),
        (HEADERS, "x=caf%C3%A9", "visible ASCII"),
        (HEADERS, "x-bin=AAAA", "not ending in -bin"),
        (HEADERS, "x=%zz", "not percent-encoded"),
        (METRICS.headers, "=v", "has no key"),
        (TRACES.headers, "a=b,c", "has no '='"),
        (COMPRESSION, "brotli", "none, gzip or zstd"),
        (METRICS.compression, "GZIP", "none, gzip or zstd"),
        (TRACES.compression, "yes", "none, gzip or zstd"),
        (RESOURCE_ATTRIBUTES, "garbage", "has no '='"),
        (RESOURCE_ATTRIBUTES, "a=1,=2", "has no key"),
        (RESOURCE_ATTRIBUTES, "a=100%", "not percent-encoded"),
        (BSP_SCHEDULE_DELAY, "0", "milliseconds from 10 to 3600000"),
        (BSP_SCHEDULE_DELAY, "abc", "milliseconds"),
        (BSP_SCHEDULE_DELAY, "-1", "milliseconds"),
        (BSP_MAX_QUEUE_SIZE, "0", "spans from 1 to 100000"),
        (
            BSP_MAX_QUEUE_SIZE,
            "18446744073709551615",
            "spans from 1 to 100000",
        ),
        (BSP_MAX_QUEUE_SIZE, "abc", "spans"),
        (BSP_MAX_EXPORT_BATCH_SIZE, "0", "spans from 1 to 2048"),
        (
            BSP_MAX_EXPORT_BATCH_SIZE,
            "4096",
            "at most OTEL_BSP_MAX_QUEUE_SIZE",
        ),
        (BSP_EXPORT_TIMEOUT, "1.5", "milliseconds"),
    ];

    #[test]
    fn each_variable_refuses_its_garbage_naming_itself() {
        assert_each_refused(GARBAGE, |variable, value| on(&[(variable, value)]));
    }

    proptest! {
        #[test]
        fn no_variable_panics_or_blames_another(
            index in 0..GARBAGE.len(),
            value in "\\PC*|[0-9]{0,22}|https?://[a-z.:]{0,12}[0-9]{0,7}/?[a-z%0-9]{0,5}|([a-z%0-9 .-]{0,5}=?[a-z%0-9 ]{0,5},?){0,3}",
        ) {
            let variable = GARBAGE[index].0;
            if let Err(e) = on(&[(variable, &value)]) {
                prop_assert_eq!(e.variable(), variable);
            }
        }

        #[test]
        fn endpoints_accept_what_they_print(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{1,8}){0,3}|127\\.0\\.0\\.1|\\[::1\\]",
            port in 0u32..=200_000,
            path in "(/[a-z0-9]{1,8}){0,3}",
        ) {
            let endpoint = format!("http://{host}:{port}{path}");
            let result = on(&[(METRICS_ENDPOINT, &endpoint)]);
            if (1..=65535).contains(&port) {
                prop_assert_eq!(result.unwrap().metrics.endpoint, endpoint);
            } else {
                let err = result.unwrap_err();
                prop_assert_eq!(err.variable(), METRICS_ENDPOINT);
            }
        }

        #[test]
        fn headers_accept_what_they_print(
            headers in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}[a-z0-9]", "[ -~]{0,16}"), 1..5),
        ) {
            let printed: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect();
            let s = on(&[(HEADERS, &printed.join(","))]);
            prop_assert_eq!(s.unwrap().metrics.headers, headers);
        }
    }
}
