//! The parsers every configuration source shares (`STALLSCOPE_*`, `OTEL_*`, `TOKIO_CONSOLE_*`
//! and the builder's checks): each takes the variable's name and the value as given, and an
//! error names both with the form that would have been accepted. None of them panics, on any
//! string; `tests` checks that with arbitrary input.

use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::ConfigError;

/// The units [`duration`] accepts, in nanoseconds, longest name first where one is a prefix of
/// another (`min` before `m`, `ms` before `m`).
const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("min", 60_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// A decimal number and a unit: `100ms`, `1.5s`, `250us`, `2m`, `1h`, `500ns`. Decimal, not
/// floating point, so every value [`format_duration`] or `Debug` prints parses back exactly;
/// digits below a nanosecond are dropped.
pub(crate) fn duration_value(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = value.split_at(split);
    let unit_ns = UNITS
        .iter()
        .find(|(name, _)| *name == unit.trim())
        .map(|(_, ns)| *ns)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_ns)?;
    let mut place = unit_ns;
    for digit in fraction.bytes() {
        place /= 10;
        nanos = nanos.checked_add(u128::from(digit - b'0') * place)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// `d` in the largest unit [`duration_value`] reads that keeps it exact: `1h`, `90s`, `1500us`.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let (name, ns) = UNITS
        .iter()
        .rev()
        .filter(|(name, _)| *name != "min" && *name != "µs")
        .find(|(_, ns)| nanos.is_multiple_of(*ns) && nanos > 0)
        .copied()
        .unwrap_or(("ns", 1));
    let mut out = String::new();
    let _ = write!(out, "{}{name}", nanos / ns);
    out
}

/// The form and range of a duration setting, for its error message.
pub(crate) fn duration_expected(range: &RangeInclusive<Duration>, example: &str) -> String {
    format!(
        "a duration with a unit (ns, us, ms, s, m, h) from {} to {}, such as {example}",
        format_duration(*range.start()),
        format_duration(*range.end())
    )
}

/// A duration inside `range`, else an error naming `variable` with the range.
pub(crate) fn duration(
    variable: &str,
    value: &str,
    range: &RangeInclusive<Duration>,
    example: &str,
) -> Result<Duration, ConfigError> {
    duration_value(value)
        .filter(|d| range.contains(d))
        .ok_or_else(|| ConfigError::new(variable, value, &duration_expected(range, example)))
}

#[cfg(any(feature = "_otlp", feature = "console"))]
/// A whole number inside `range`: the form of sizes and of the OpenTelemetry millisecond
/// variables. `what` names the unit in the error: `milliseconds`, `spans`.
pub(crate) fn whole_number(
    variable: &str,
    value: &str,
    range: &RangeInclusive<u64>,
    what: &str,
) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                value,
                &format!(
                    "a whole number of {what} from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

#[cfg(feature = "_otlp")]
/// [`whole_number`] milliseconds, as the OpenTelemetry variables give durations.
pub(crate) fn millis(
    variable: &str,
    value: &str,
    range: &RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    whole_number(variable, value, range, "milliseconds").map(Duration::from_millis)
}

pub(crate) fn bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::new(variable, value, "on or off")),
    }
}

#[cfg(feature = "_otlp")]
/// `%XX` sequences decoded (UTF-8 after decoding), everything else kept: the encoding the
/// OpenTelemetry specification gives `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`
/// values. `None` for a `%` not followed by two hex digits.
pub(crate) fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `s` with what [`key_value_list`] splits on (`,` `=`), `%` and whitespace percent-encoded:
/// what the list's writer does for such characters (the tests' printer).
#[cfg(all(test, feature = "_otlp"))]
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | '=' | '%') || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(feature = "_otlp")]
/// `key1=value1,key2=value2`, keys and values percent-decoded and trimmed, as the
/// OpenTelemetry specification defines `OTEL_RESOURCE_ATTRIBUTES` and the OTLP headers. Every
/// entry needs a key and an `=`; a list with one bad entry is refused whole, so a typo is never
/// half applied. `what` describes an entry for the error (`key=value`, `header=value`).
pub(crate) fn key_value_list(
    variable: &str,
    value: &str,
    what: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let err = |detail: &str| {
        ConfigError::new(
            variable,
            value,
            &format!(
                "comma-separated {what} pairs with ',', '=' and '%' percent-encoded \
                 (such as key1=a%20b,key2=c){detail}"
            ),
        )
    };
    value
        .split(',')
        .map(|entry| {
            let (key, val) = entry
                .split_once('=')
                .ok_or_else(|| err(&format!("; {:?} has no '='", entry.trim())))?;
            let decode = |s: &str| {
                percent_decode(s.trim())
                    .ok_or_else(|| err(&format!("; {:?} is not percent-encoded", s.trim())))
            };
            let (key, val) = (decode(key)?, decode(val)?);
            if key.is_empty() {
                return Err(err(&format!("; {:?} has no key", entry.trim())));
            }
            Ok((key, val))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn durations_read_decimals_exactly() {
        let d = |s| duration_value(s);
        assert_eq!(d("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("250us"), Some(Duration::from_micros(250)));
        assert_eq!(d("1.5µs"), Some(Duration::from_nanos(1500)));
        assert_eq!(d("2m"), Some(Duration::from_secs(120)));
        assert_eq!(d("2min"), Some(Duration::from_secs(120)));
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(d("0.000000001s"), Some(Duration::from_nanos(1)));
        assert_eq!(d("1.000000001s"), Some(Duration::new(1, 1)));
        for bad in [
            "",
            "ms",
            ".ms",
            "1.2.3s",
            "-5ms",
            "1e3s",
            "5 parsecs",
            "1s2",
            "99999999999999999999999999999999999999999s",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_value_lists_decode_and_refuse_a_bad_entry_whole() {
        let list = |s| key_value_list("X", s, "key=value");
        assert_eq!(
            list("a=1, b = x%2Cy%3Dz ,c=50%25%20off").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x,y=z".into()),
                ("c".into(), "50% off".into())
            ]
        );
        assert_eq!(list("k=a=b").unwrap(), vec![("k".into(), "a=b".into())]);
        for (bad, why) in [
            ("a=1,b", "\"b\" has no '='"),
            ("a=1,,b=2", "\"\" has no '='"),
            ("=1", "has no key"),
            ("a=%zz", "not percent-encoded"),
            ("a=%c3%28", "not percent-encoded"),
        ] {
            let err = list(bad).unwrap_err();
            assert_eq!(err.variable(), "X");
            assert!(err.expected().contains(why), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn durations_never_panic_and_name_their_variable(s in "\\PC*|[0-9.]{0,30}(ns|us|µs|ms|s|m|min|h)?") {
            let range = Duration::from_nanos(1)..=DAY;
            if let Err(e) = duration("V", &s, &range, "1s") {
                prop_assert_eq!(e.variable(), "V");
            }
        }

        #[test]
        fn durations_accept_what_they_print(nanos in 1u64..=DAY.as_nanos() as u64) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(duration_value(&format_duration(d)), Some(d));
            prop_assert_eq!(duration_value(&format!("{d:?}")), Some(d));
        }

        #[test]
        fn whole_numbers_never_panic_accept_what_they_print_and_name_their_variable(
            s in "\\PC*|-?[0-9]{0,25}",
            n in 1u64..=1_000_000,
        ) {
            let range = 1..=1_000_000;
            if let Err(e) = whole_number("V", &s, &range, "spans") {
                prop_assert_eq!(e.variable(), "V");
            }
            prop_assert_eq!(whole_number("V", &n.to_string(), &range, "spans").ok(), Some(n));
        }

        #[test]
        fn key_value_lists_never_panic_and_accept_what_they_print(
            s in "\\PC*|([a-z%0-9 ]{0,6}=?[a-z%0-9 ]{0,6},?){0,4}",
            pairs in proptest::collection::vec(("[^\\p{C}]{1,12}", "\\PC{0,12}"), 1..5),
        ) {
            if let Err(e) = key_value_list("V", &s, "key=value") {
                prop_assert_eq!(e.variable(), "V");
            }
            let printed: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            prop_assert_eq!(key_value_list("V", &printed.join(","), "key=value").unwrap(), pairs);
        }
    }
}
