//! OTLP over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`) into a receiver built on
//! opentelemetry-proto's generated server: what the exporter sends, decoded as a collector would.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use support::examples::{self, OutputWithin};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[test]
fn grpc_export_carries_the_poll_histogram_with_its_attributes_and_resource() {
    let port = examples::free_port();
    let receiver = Receiver::default();
    let received = receiver.0.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(receiver))
                    .serve_with_shutdown(([127, 0, 0, 1], port).into(), async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("gRPC receiver");
            })
    });

    let output = examples::command("blocking_in_async")
        .args(["--variant", "sleep"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=grpc-test,deployment.environment=ci",
        )
        .output_within(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("exporting OTLP metrics (grpc)"), "{stderr}");
    let _ = stop_tx.send(());
    server.join().unwrap();

    let requests = received.lock().unwrap();
    assert!(
        !requests.is_empty(),
        "the final flush arrived over gRPC:\n{stderr}"
    );
    let mut found = None;
    for request in requests.iter() {
        for rm in &request.resource_metrics {
            let resource = attributes(&rm.resource.as_ref().unwrap().attributes);
            for sm in &rm.scope_metrics {
                for metric in &sm.metrics {
                    if metric.name != "tokio.task.poll.duration" {
                        continue;
                    }
                    assert_eq!(metric.unit, "s");
                    let Some(Data::Histogram(h)) = &metric.data else {
                        panic!("poll duration is a histogram: {metric:?}")
                    };
                    assert_eq!(h.aggregation_temporality, 2, "cumulative");
                    for point in &h.data_points {
                        let attrs = attributes(&point.attributes);
                        if attrs.get("tokio.task.name").map(String::as_str) == Some("slow_sleep") {
                            found = Some((resource.clone(), attrs, point.clone()));
                        }
                    }
                }
            }
        }
    }
    let (resource, attrs, point) = found.expect("a data point for the slow_sleep task");
    assert_eq!(resource["service.name"], "grpc-test");
    assert_eq!(resource["deployment.environment"], "ci");
    assert_eq!(attrs["code.file.path"], "examples/blocking_in_async.rs");
    assert!(attrs["code.line.number"].parse::<u32>().unwrap() > 0);
    assert!(point.sum.unwrap() >= 1.99, "{point:?}");
    assert_eq!(
        point.explicit_bounds.first(),
        Some(&0.000_01),
        "poll-duration buckets"
    );
    assert_eq!(point.explicit_bounds.last(), Some(&50.0));
    // The 2 s poll sits in the (1 s, 2.5 s] bucket.
    let le_2_5 = point
        .explicit_bounds
        .iter()
        .position(|b| *b == 2.5)
        .unwrap();
    assert_eq!(point.bucket_counts[le_2_5], 1, "{point:?}");
}
