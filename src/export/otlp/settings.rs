//! The standard `OTEL_*` variables, read and validated up front so a bad value fails at start-up
//! naming the variable, instead of being logged and ignored by the SDK.

use std::time::Duration;

use crate::config::{var, ConfigError, Toggle};

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
    pub(crate) timeout: Duration,
}

impl SignalSettings {
    pub(crate) fn protocol_name(&self) -> &'static str {
        match self.protocol {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Resolved OTLP settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OtlpSettings {
    pub(crate) metrics: SignalSettings,
    /// Stall spans; `None` when they are off (`STALLSCOPE_STALL_SPANS=off`).
    pub(crate) traces: Option<SignalSettings>,
    pub(crate) interval: Duration,
    /// `service.name` to set when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
    /// names one: the executable's name beats the SDK's `unknown_service`.
    pub(crate) default_service_name: Option<String>,
}

pub(crate) const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const METRICS_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub(crate) const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const INTERVAL: &str = "OTEL_METRIC_EXPORT_INTERVAL";
const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// A signal's own variables, which beat the generic `OTEL_EXPORTER_OTLP_*` ones.
struct SignalVars {
    endpoint: &'static str,
    protocol: &'static str,
    timeout: &'static str,
    /// Appended to the generic endpoint for HTTP.
    http_path: &'static str,
}

const METRICS: SignalVars = SignalVars {
    endpoint: METRICS_ENDPOINT,
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    http_path: "/v1/metrics",
};

const TRACES: SignalVars = SignalVars {
    endpoint: TRACES_ENDPOINT,
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    http_path: "/v1/traces",
};

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
        let metrics = SignalSettings::resolve(&METRICS, lookup)?;
        let traces = if stall_spans {
            Some(SignalSettings::resolve(&TRACES, lookup)?)
        } else {
            None
        };
        let interval = match var(lookup, INTERVAL) {
            Some(v) => millis(INTERVAL, &v)?,
            None => Duration::from_secs(60),
        };

        let named_in_attributes = var(lookup, RESOURCE_ATTRIBUTES).is_some_and(|a| {
            a.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
        let default_service_name = (var(lookup, SERVICE_NAME).is_none() && !named_in_attributes)
            .then(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            })
            .flatten();

        Ok(Some(OtlpSettings {
            metrics,
            traces,
            interval,
            default_service_name,
        }))
    }
}

impl SignalSettings {
    /// The signal's protocol, endpoint (its own variable verbatim, else the generic one, with
    /// the signal's path for HTTP) and timeout.
    fn resolve(
        vars: &SignalVars,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SignalSettings, ConfigError> {
        let (protocol_var, protocol) = match var(lookup, vars.protocol) {
            Some(p) => (vars.protocol, Some(p)),
            None => (PROTOCOL, var(lookup, PROTOCOL)),
        };
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(ConfigError::new(
                    protocol_var,
                    other,
                    "grpc or http/protobuf (http/json is not built into stallscope)",
                ))
            }
        };
        check_compiled(protocol, protocol_var)?;

        let endpoint = if let Some(e) = var(lookup, vars.endpoint) {
            validate_url(vars.endpoint, &e)?;
            e
        } else {
            let base = var(lookup, ENDPOINT).unwrap_or_else(|| {
                match protocol {
                    Protocol::Grpc => "http://localhost:4317",
                    Protocol::HttpProtobuf => "http://localhost:4318",
                }
                .to_owned()
            });
            validate_url(ENDPOINT, &base)?;
            match protocol {
                Protocol::Grpc => base,
                Protocol::HttpProtobuf => {
                    format!("{}{}", base.trim_end_matches('/'), vars.http_path)
                }
            }
        };

        let timeout = match var(lookup, vars.timeout) {
            Some(v) => millis(vars.timeout, &v)?,
            None => match var(lookup, TIMEOUT) {
                Some(v) => millis(TIMEOUT, &v)?,
                None => Duration::from_secs(10),
            },
        };
        Ok(SignalSettings {
            protocol,
            endpoint,
            timeout,
        })
    }
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

fn validate_url(variable: &str, value: &str) -> Result<(), ConfigError> {
    let expected = "an http:// or https:// URL with a host, such as http://localhost:4318";
    let uri: http::Uri = value
        .parse()
        .map_err(|_| ConfigError::new(variable, value, expected))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(())
    } else {
        Err(ConfigError::new(variable, value, expected))
    }
}

fn millis(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                value,
                "a positive whole number of milliseconds, such as 5000",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(
        toggle: Toggle,
        stall_spans: bool,
        pairs: &[(&str, &str)],
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpSettings::resolve(toggle, stall_spans, &move |n| {
            pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
        })
    }

    fn resolve(
        toggle: Toggle,
        pairs: &[(&str, &str)],
    ) -> Result<Option<OtlpSettings>, ConfigError> {
        resolve_with(toggle, true, pairs)
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
        assert_eq!(
            on.traces.unwrap().endpoint,
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(on.interval, Duration::from_secs(60));
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
        let s = resolve(
            Toggle::Auto,
            &[
                (ENDPOINT, "http://collector:4318/"),
                (INTERVAL, "500"),
                (SERVICE_NAME, "svc"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.metrics.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.metrics.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(
            s.traces.as_ref().unwrap().endpoint,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.default_service_name, None);

        let g = resolve(
            Toggle::Auto,
            &[(ENDPOINT, "http://collector:4317"), (PROTOCOL, "grpc")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(g.metrics.protocol, Protocol::Grpc);
        assert_eq!(g.metrics.endpoint, "http://collector:4317");
        let traces = g.traces.unwrap();
        assert_eq!(traces.protocol, Protocol::Grpc);
        assert_eq!(traces.endpoint, "http://collector:4317");

        let m = resolve(
            Toggle::Auto,
            &[
                (ENDPOINT, "http://a:1"),
                (METRICS_ENDPOINT, "https://b:2/custom"),
                (TRACES_ENDPOINT, "https://c:3/spans"),
                (TRACES.timeout, "250"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m.metrics.endpoint, "https://b:2/custom",
            "signal-specific endpoint is verbatim"
        );
        let traces = m.traces.unwrap();
        assert_eq!(traces.endpoint, "https://c:3/spans");
        assert_eq!(traces.timeout, Duration::from_millis(250));
        assert_eq!(m.metrics.timeout, Duration::from_secs(10));
    }

    #[test]
    fn stall_spans_off_ignore_the_traces_variables() {
        let s = resolve_with(
            Toggle::Auto,
            false,
            &[(ENDPOINT, "http://a:1"), (TRACES_ENDPOINT, "not a url")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.traces, None);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            (ENDPOINT, "not a url", ENDPOINT),
            (ENDPOINT, "localhost:4318", ENDPOINT),
            (METRICS_ENDPOINT, "ftp://x/y", METRICS_ENDPOINT),
            (TRACES_ENDPOINT, "localhost:4317", TRACES_ENDPOINT),
            (PROTOCOL, "carrier-pigeon", PROTOCOL),
            (PROTOCOL, "http/json", PROTOCOL),
            (TRACES.protocol, "http/json", TRACES.protocol),
            (INTERVAL, "5s", INTERVAL),
            (TIMEOUT, "-1", TIMEOUT),
            (TRACES.timeout, "soon", TRACES.timeout),
        ];
        for (name, value, expected_var) in cases {
            let mut env = vec![(name, value)];
            if ![ENDPOINT, METRICS_ENDPOINT, TRACES_ENDPOINT].contains(&name) {
                env.push((ENDPOINT, "http://ok:4318"));
            }
            let err = resolve(Toggle::Auto, &env).unwrap_err();
            assert_eq!(err.variable(), expected_var, "{name}={value}");
            assert!(err.to_string().contains(expected_var), "{err}");
        }
    }
}
