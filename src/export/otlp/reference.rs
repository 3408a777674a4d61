//! `docs/metrics.md` against the code: the instruments the exporter registers (name, kind,
//! unit), read from a real meter provider through a view, are exactly the metrics table's rows;
//! every attribute the exporter sets is described; the stall spans are the spans table's rows.
//! An instrument or attribute added without its row fails here.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{
    InstrumentKind, PeriodicReader, SdkMeterProvider, Stream, Temporality,
};

use super::instruments;
use crate::config::testing::{doc, sources, table_rows};
use crate::config::DEFAULT_HISTOGRAM_BOUNDS;

/// An exporter that sends nothing: the provider needs a reader for its views to run.
struct Nowhere;

impl PushMetricExporter for Nowhere {
    async fn export(&self, _metrics: &ResourceMetrics) -> OTelSdkResult {
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The word the metrics table uses for an instrument kind.
fn kind(kind: InstrumentKind) -> &'static str {
    match kind {
        InstrumentKind::Histogram => "histogram",
        InstrumentKind::Counter | InstrumentKind::ObservableCounter => "counter",
        InstrumentKind::Gauge | InstrumentKind::ObservableGauge => "gauge",
        InstrumentKind::UpDownCounter | InstrumentKind::ObservableUpDownCounter => {
            "up-down counter"
        }
    }
}

/// `(name, instrument, unit)` of every instrument stallscope registers, as the SDK sees them
/// when they are built (a view sees each one, whether or not it ever records).
fn registered() -> BTreeSet<(String, String, String)> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let record = seen.clone();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(Nowhere).build())
        .with_view(move |instrument: &opentelemetry_sdk::metrics::Instrument| {
            record.lock().unwrap().insert((
                instrument.name().to_owned(),
                kind(instrument.kind()).to_owned(),
                instrument.unit().to_owned(),
            ));
            None::<Stream>
        })
        .build();
    let meter = provider.meter("stallscope");
    let _histograms = instruments::Histograms::new(&meter, DEFAULT_HISTOGRAM_BOUNDS);
    instruments::register_observables(&meter, Weak::new());
    provider.shutdown().expect("the provider shuts down");
    let seen = seen.lock().unwrap().clone();
    seen
}

/// The string literals that follow `opening` in `text` (the first argument of a call).
fn literals_after<'a>(text: &'a str, opening: &str) -> Vec<&'a str> {
    text.match_indices(opening)
        .filter_map(|(at, _)| {
            let rest = text[at + opening.len()..].trim_start();
            let rest = rest.strip_prefix('"')?;
            rest.split('"').next()
        })
        .collect()
}

#[test]
fn the_metrics_reference_lists_every_instrument_with_its_kind_and_unit() {
    let page = doc("metrics.md");
    let rows = table_rows(&page, "name");
    assert!(!rows.is_empty(), "the metrics table in docs/metrics.md");
    // `¹` marks the instruments registered only with `--cfg tokio_unstable`.
    let documented: BTreeSet<(String, String, String)> = rows
        .iter()
        .filter(|row| cfg!(tokio_unstable) || !row[0].contains('¹'))
        .map(|row| {
            let name = row[0].trim_end_matches('¹').trim().replace('`', "");
            (name, row[1].clone(), row[2].replace('`', ""))
        })
        .collect();
    let registered = registered();
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(
        undocumented.is_empty() && unregistered.is_empty(),
        "docs/metrics.md's metrics table against the instruments the exporter registers, as \
         (name, instrument, unit):\nregistered, not documented: {undocumented:#?}\n\
         documented, not registered: {unregistered:#?}"
    );
}

#[test]
fn every_attribute_and_stall_span_is_in_the_metrics_reference() {
    let page = doc("metrics.md");
    let mut keys = BTreeSet::<String>::new();
    let mut span_names = BTreeSet::<String>::new();
    for (path, text) in sources() {
        if path
            .parent()
            .is_some_and(|dir| dir.ends_with("export/otlp"))
        {
            keys.extend(
                literals_after(&text, "KeyValue::new(")
                    .into_iter()
                    .map(str::to_owned),
            );
        }
        if path.ends_with("engine/stall.rs") {
            span_names.extend(
                text.split('"')
                    .filter(|s| s.starts_with("stallscope.") && !s.contains(' '))
                    .map(str::to_owned),
            );
        }
    }
    assert!(
        keys.len() > 5 && !span_names.is_empty(),
        "{keys:?} {span_names:?}"
    );
    let undescribed: Vec<_> = keys
        .iter()
        .filter(|key| !page.contains(&format!("`{key}`")))
        .collect();
    assert!(
        undescribed.is_empty(),
        "attributes the exporter sets, not in docs/metrics.md: {undescribed:?}"
    );
    let documented_spans: BTreeSet<String> = table_rows(&page, "span name")
        .into_iter()
        .map(|row| row[0].replace('`', ""))
        .collect();
    assert_eq!(
        documented_spans, span_names,
        "docs/metrics.md's stall spans table against the span names in src/engine/stall.rs"
    );
}
