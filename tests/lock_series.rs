//! A lock exports the series it has values for, and no more: a wait histogram once it was
//! contended, a hold histogram once a guard was held long enough to be timed, a cancelled-wait
//! histogram only for a tokio lock whose acquisition was given up (never for a std lock). Lock
//! sites stop at 256 (more share `<other>`), so no per-lock instrument reaches the SDK's 2,000
//! attribute sets, whatever `max_sites` says.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message as _;
use stallscope::sync::{Mutex, RwLock};
use support::capture::hold_elsewhere;
use support::otlp::{attributes, HttpReceiver};

/// `(metric, lock name, operation, outcome)` of every histogram data point of a lock.
type Point = (String, String, String, String);

fn lock_histogram_points(requests: &[(String, Vec<u8>)]) -> BTreeSet<Point> {
    let mut points = BTreeSet::new();
    for (path, body) in requests.iter().filter(|(p, _)| p == "/v1/metrics") {
        let request = ExportMetricsServiceRequest::decode(body.as_slice()).expect(path);
        let metrics = request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics);
        for metric in metrics {
            let Some(Data::Histogram(histogram)) = &metric.data else {
                continue;
            };
            for point in &histogram.data_points {
                let a = attributes(&point.attributes);
                if !a.contains_key("tokio.lock.kind") {
                    continue;
                }
                let name = a.get("tokio.lock.name").cloned().unwrap_or_default();
                let field = |k: &str| a.get(k).cloned().unwrap_or_default();
                points.insert((
                    metric.name.clone(),
                    name,
                    field("tokio.lock.operation"),
                    field("outcome"),
                ));
            }
        }
    }
    points
}

fn point(metric: &str, name: &str, op: &str, outcome: &str) -> Point {
    (
        metric.to_owned(),
        name.to_owned(),
        op.to_owned(),
        outcome.to_owned(),
    )
}

#[test]
fn each_lock_exports_the_series_it_has_values_for_and_lock_sites_stop_at_256() {
    let receiver = HttpReceiver::start();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint());
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "60000");
    // Asks for more sites than locks may have.
    let layer = stallscope::Builder::new()
        .otlp(stallscope::Toggle::On)
        .max_sites(1024)
        .build()
        .unwrap();
    let guard = layer.guard();

    // Never contended, never held long enough to be timed: counters only.
    let idle = Mutex::named("idle", 0u32);
    for _ in 0..10 {
        *idle.lock().unwrap() += 1;
    }
    // Contended once, held 20 ms by the other thread.
    let contended = Arc::new(Mutex::named("contended", 0u32));
    let c = contended.clone();
    let holder = hold_elsewhere(move |held| {
        let _guard = c.lock().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(20));
    });
    *contended.lock().unwrap() += 1;
    holder.join().unwrap();
    // Written for 20 ms by the other thread while this one waits to read.
    let rw = Arc::new(RwLock::named("rw", 0u32));
    let w = rw.clone();
    let writer = hold_elsewhere(move |held| {
        let _guard = w.write().unwrap();
        held();
        std::thread::sleep(Duration::from_millis(20));
    });
    let _ = *rw.read().unwrap();
    writer.join().unwrap();
    // Far more lock sites than are kept.
    let many: Vec<Mutex<u8>> = (0..300)
        .map(|i| Mutex::named(Box::leak(format!("many-{i}").into_boxed_str()), 0))
        .collect();
    let locks = guard.snapshot().locks;
    assert_eq!(locks.len(), 257, "256 lock sites and <other>");
    drop(many);

    drop(guard); // the final export
    let points = lock_histogram_points(&receiver.stop());
    let (wait, hold) = ("tokio.lock.wait.duration", "tokio.lock.hold.duration");
    let expected: BTreeSet<Point> = [
        point(wait, "contended", "lock", "acquired"),
        point(hold, "contended", "lock", ""),
        point(wait, "rw", "read", "acquired"),
        point(hold, "rw", "write", ""),
    ]
    .into_iter()
    .collect();
    assert_eq!(points, expected);
}
