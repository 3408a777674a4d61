//! OTLP receivers for the tests: a gRPC one built on opentelemetry-proto's generated tonic
//! servers (metrics and traces, decoded as a collector would), and a minimal HTTP/1.1 one over
//! `std::net` that keeps every request body by path (OTLP/HTTP with protobuf bodies).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

use super::examples::free_port;

/// Attributes as `key -> value` strings (ints and doubles formatted with `to_string`).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
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

/// One received span, flattened with its resource and scope.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
    pub scope: String,
}

impl ReceivedSpan {
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// An attribute, or a panic naming the span.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("span has no {key}: {self:#?}"))
    }

    /// A number attribute.
    pub fn number(&self, key: &str) -> f64 {
        self.attr(key).parse().expect("a number")
    }
}

/// Every span of `requests`.
pub fn spans(requests: &[ExportTraceServiceRequest]) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for request in requests {
        for rs in &request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for span in &ss.spans {
                    out.push(ReceivedSpan {
                        name: span.name.clone(),
                        trace_id: span.trace_id.clone(),
                        span_id: span.span_id.clone(),
                        parent_span_id: span.parent_span_id.clone(),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                        scope: scope.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Request headers (gRPC metadata) as `name -> value`, names lowercase.
pub type Headers = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Received {
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    /// `(service, metadata)` of every request.
    metadata: Arc<Mutex<Vec<(&'static str, Headers)>>>,
}

impl Received {
    fn keep_metadata(&self, service: &'static str, metadata: &tonic::metadata::MetadataMap) {
        let headers = metadata
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.metadata.lock().unwrap().push((service, headers));
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.keep_metadata("metrics", request.metadata());
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep_metadata("traces", request.metadata());
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver (metrics and traces) on a loopback port, on its own runtime whose
/// threads are hidden from every `tracing` subscriber (a test that installs stallscope
/// in-process must not measure its receiver).
pub struct GrpcReceiver {
    port: u16,
    received: Received,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl GrpcReceiver {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> GrpcReceiver {
        let port = free_port();
        let received = Received::default();
        let service = received.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let _quiet =
                tracing::subscriber::set_default(tracing_core::subscriber::NoSubscriber::default());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .on_thread_start(|| {
                    std::mem::forget(tracing::subscriber::set_default(
                        tracing_core::subscriber::NoSubscriber::default(),
                    ))
                })
                .build()
                .unwrap()
                .block_on(async move {
                    tonic::transport::Server::builder()
                        .add_service(MetricsServiceServer::new(service.clone()))
                        .add_service(TraceServiceServer::new(service))
                        .serve_with_shutdown(([127, 0, 0, 1], port).into(), async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .expect("gRPC receiver");
                })
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gRPC receiver did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        GrpcReceiver {
            port,
            received,
            stop: Some(stop_tx),
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The metadata of every request so far: `("metrics" or "traces", metadata)`.
    pub fn metadata(&self) -> Vec<(&'static str, Headers)> {
        self.received.metadata.lock().unwrap().clone()
    }

    /// Stops the server; returns what it received (metrics requests, trace requests).
    pub fn stop(
        mut self,
    ) -> (
        Vec<ExportMetricsServiceRequest>,
        Vec<ExportTraceServiceRequest>,
    ) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.join().unwrap();
        }
        (
            std::mem::take(&mut *self.received.metrics.lock().unwrap()),
            std::mem::take(&mut *self.received.traces.lock().unwrap()),
        )
    }
}

/// Requests an [`HttpReceiver`] received: `(path, body)`.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// The headers of the requests an [`HttpReceiver`] received: `(path, headers)`.
type RequestHeaders = Arc<Mutex<Vec<(String, Headers)>>>;

/// A minimal OTLP/HTTP receiver: answers every POST with 200 and an empty protobuf body and
/// keeps `(path, body)`. HTTP/1.1 with `Content-Length` bodies and keep-alive, as the OTLP
/// exporter's client sends them.
pub struct HttpReceiver {
    port: u16,
    requests: Requests,
    headers: RequestHeaders,
    /// Every connection accepted, so [`HttpReceiver::kill`] can close them.
    connections: Arc<Mutex<Vec<TcpStream>>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    pub fn start() -> HttpReceiver {
        HttpReceiver::answering_after(Duration::ZERO)
    }

    /// A receiver that keeps each request at once but answers it only after `delay`: a slow
    /// collector.
    pub fn answering_after(delay: Duration) -> HttpReceiver {
        HttpReceiver::listening(
            TcpListener::bind("127.0.0.1:0").expect("bind the HTTP receiver"),
            delay,
        )
    }

    /// A receiver on `port` (a receiver restarted where the exporter sends).
    pub fn on_port(port: u16) -> HttpReceiver {
        HttpReceiver::listening(
            TcpListener::bind(("127.0.0.1", port)).expect("bind the HTTP receiver"),
            Duration::ZERO,
        )
    }

    fn listening(listener: TcpListener, delay: Duration) -> HttpReceiver {
        let port = listener.local_addr().unwrap().port();
        let requests = Requests::default();
        let headers = RequestHeaders::default();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (kept, kept_headers, stop) = (requests.clone(), headers.clone(), stopping.clone());
        let open = connections.clone();
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    open.lock().unwrap().push(clone);
                }
                let (kept, kept_headers) = (kept.clone(), kept_headers.clone());
                std::thread::spawn(move || serve_connection(stream, &kept, &kept_headers, delay));
            }
        });
        HttpReceiver {
            port,
            requests,
            headers,
            connections,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops as a killed collector does: no longer listening, and every open connection
    /// closed. Returns every `(path, body)` received.
    pub fn kill(self) -> Vec<(String, Vec<u8>)> {
        let connections = self.connections.clone();
        let received = self.stop();
        for connection in connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        received
    }

    /// The headers of every request so far: `(path, headers)`.
    pub fn headers(&self) -> Vec<(String, Headers)> {
        self.headers.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops accepting; returns every `(path, body)` received.
    pub fn stop(mut self) -> Vec<(String, Vec<u8>)> {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

fn serve_connection(
    stream: TcpStream,
    kept: &Mutex<Vec<(String, Vec<u8>)>>,
    kept_headers: &Mutex<Vec<(String, Headers)>>,
    answer_after: Duration,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0usize;
        let mut headers = Headers::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        kept_headers.lock().unwrap().push((path.clone(), headers));
        kept.lock().unwrap().push((path, body));
        std::thread::sleep(answer_after);
        let response =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
