//! A real VictoriaMetrics (single-node) server for integration tests, plus a tiny client.
//!
//! The binary is installed by `scripts/victoria-metrics.sh` into
//! `<repo>/.tools/victoria-metrics/victoria-metrics`. Without it [`VictoriaMetrics::start`]
//! panics: tests that need a time-series database fail rather than silently skip.
//!
//! Each instance listens on its own loopback port with its own storage directory under the
//! system temp dir; both the process and the directory go away on drop.
//!
//! The HTTP client is a minimal HTTP/1.1 implementation over `std::net::TcpStream`
//! (`Connection: close`, `Content-Length` or chunked bodies), so no HTTP crate is needed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::examples::free_port;

/// How long to wait for `/health` after spawning the server.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-request socket timeout of the little HTTP client.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports can be taken between `free_port()` and the server's bind; retry a few times.
const START_ATTEMPTS: usize = 3;

/// One series of an instant-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// All labels, including `__name__`.
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The metric name (`__name__`), or "" if the query dropped it.
    pub fn name(&self) -> &str {
        self.labels
            .get("__name__")
            .map(String::as_str)
            .unwrap_or("")
    }

    /// A label's value, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// One series of a range-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// All labels, including `__name__` when the query kept it.
    pub labels: BTreeMap<String, String>,
    /// (Unix time in seconds, value), NaN points left out.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A label's value, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The largest value over the range (NaN if the series has no points).
    pub fn max(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(f64::NAN, f64::max)
    }

    /// The value of the last point (NaN if the series has no points).
    pub fn last(&self) -> f64 {
        self.points.last().map_or(f64::NAN, |p| p.1)
    }
}

/// Set (to anything) to make a missing VictoriaMetrics a failure rather than a skip.
pub const REQUIRED: &str = "STALLSCOPE_REQUIRE_VICTORIA_METRICS";

/// A running VictoriaMetrics process; killed (and its storage removed) on drop.
pub struct VictoriaMetrics {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

/// `<repo>/.tools/victoria-metrics/victoria-metrics`.
pub fn binary_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/victoria-metrics/victoria-metrics")
}

impl VictoriaMetrics {
    /// Start a fresh server and wait until it is healthy; `None` when VictoriaMetrics is not
    /// installed, so a plain `cargo test` on a fresh clone skips the tests that need it (said
    /// once, with the command that installs it). With [`REQUIRED`] set (`scripts/test.sh` and
    /// CI set it) a missing binary fails the test instead: CI never skips them.
    ///
    /// Panics if the server is not healthy within 20 s (the message includes the tail of its
    /// log).
    pub fn start() -> Option<VictoriaMetrics> {
        let bin = binary_path();
        if !bin.is_file() {
            let missing = format!(
                "VictoriaMetrics binary not found at {}: install it with \
                 `scripts/victoria-metrics.sh` (from the repository root)",
                bin.display()
            );
            if std::env::var_os(REQUIRED).is_some() {
                panic!("{missing} ({REQUIRED} is set: these tests may not be skipped)");
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            // Straight to file descriptor 2: the test harness captures what passing tests
            // write through std's stderr, and this must be seen.
            SAID.call_once(|| {
                let line =
                    format!("skipping the tests that export into a real database: {missing}\n");
                // SAFETY: writes a valid buffer to file descriptor 2.
                unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            });
            return None;
        }

        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bin) {
                Ok(vm) => return Some(vm),
                Err(StartError::Retry(msg)) => last_error = msg,
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("VictoriaMetrics failed to start after {START_ATTEMPTS} attempts:\n{last_error}");
    }

    fn try_start(bin: &Path) -> Result<VictoriaMetrics, StartError> {
        let dir = unique_temp_dir();
        let storage = dir.join("data");
        let log = dir.join("victoria-metrics.log");
        fs::create_dir_all(&storage)
            .map_err(|e| StartError::Fatal(format!("create {}: {e}", storage.display())))?;
        let log_file = File::create(&log)
            .map_err(|e| StartError::Fatal(format!("create {}: {e}", log.display())))?;
        let log_file2 = log_file
            .try_clone()
            .map_err(|e| StartError::Fatal(format!("clone log handle: {e}")))?;

        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", storage.display()))
            // OTLP metric/label names -> Prometheus style (unit suffixes, `_total`, `_` for `.`).
            .arg("-opentelemetry.usePrometheusNaming")
            // Answer queries up to "now": by default the last 30 s are hidden as incomplete.
            .arg("-search.latencyOffset=0s")
            // No rollup-result cache: repeated polling must see newly ingested samples.
            .arg("-search.disableCache")
            // Keep the test log short and the process light.
            .arg("-loggerLevel=WARN")
            .arg("-memory.allowedPercent=20")
            .arg("-selfScrapeInterval=0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_file2))
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn {}: {e}", bin.display())))?;

        let mut vm = VictoriaMetrics {
            child,
            port,
            dir,
            log,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = vm.child.try_wait() {
                let tail = vm.log_tail(40);
                let msg = format!(
                    "VictoriaMetrics exited during startup ({status}) on port {port}; log tail:\n{tail}"
                );
                // `vm` drops here: storage dir removed.
                return Err(if tail.contains("address already in use") {
                    StartError::Retry(msg)
                } else {
                    StartError::Fatal(msg)
                });
            }
            if let Ok(resp) = http_request(port, "GET", "/health", None, &[]) {
                if resp.status == 200 && resp.text().trim() == "OK" {
                    return Ok(vm);
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "VictoriaMetrics on 127.0.0.1:{port} not healthy within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    vm.log_tail(40)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// OTLP/HTTP endpoint base: exporters append `/v1/metrics`.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/opentelemetry", self.port)
    }

    /// Make everything ingested so far searchable.
    pub fn force_flush(&self) {
        let resp = self.get("/internal/force_flush");
        assert!(
            resp.status / 100 == 2,
            "force_flush: HTTP {}: {}",
            resp.status,
            resp.text()
        );
    }

    /// Instant PromQL/MetricsQL query (after a flush). Panics on an error response.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        // Without `time`, VictoriaMetrics evaluates at a second-aligned "now", which hides the
        // samples of the last fraction of a second (a final flush just before the query). Ask
        // for a moment just ahead instead; the lookback window still covers the whole run.
        let ahead = unix_now() + 1.0;
        let (data, body) = self.api("query", promql, &format!("&time={ahead:.3}"));
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap_or_else(|| panic!("query {promql:?}: no result array: {body}"))
                .iter()
                .map(|series| {
                    let value = parse_value(&series["value"][1])
                        .unwrap_or_else(|| panic!("query {promql:?}: bad value in {series}"));
                    Sample {
                        labels: labels_of(series),
                        value,
                    }
                })
                .collect(),
            Some("scalar") => {
                let value = parse_value(&data["result"][1])
                    .unwrap_or_else(|| panic!("query {promql:?}: bad scalar: {body}"));
                vec![Sample {
                    labels: BTreeMap::new(),
                    value,
                }]
            }
            other => panic!("query {promql:?}: unexpected resultType {other:?}: {body}"),
        }
    }

    /// Range query (after a flush), as a Grafana time-series panel evaluates its targets:
    /// every series with its points from `start` to a second ahead of now (Unix seconds),
    /// one every `step`. Points whose value is NaN are left out.
    pub fn query_range(&self, promql: &str, start: f64, step: Duration) -> Vec<Series> {
        let end = unix_now() + 1.0;
        let extra = format!("&start={start:.3}&end={end:.3}&step={}ms", step.as_millis());
        let (data, body) = self.api("query_range", promql, &extra);
        if data["resultType"] != "matrix" {
            panic!("query_range {promql:?}: expected a matrix: {body}");
        }
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query_range {promql:?}: no result array: {body}"))
            .iter()
            .map(|series| {
                let points = series["values"]
                    .as_array()
                    .unwrap_or_else(|| panic!("query_range {promql:?}: no values in {series}"))
                    .iter()
                    .map(|point| {
                        let time = point[0].as_f64().unwrap_or(f64::NAN);
                        let value = parse_value(&point[1]).unwrap_or_else(|| {
                            panic!("query_range {promql:?}: bad value in {series}")
                        });
                        (time, value)
                    })
                    .filter(|(_, value)| !value.is_nan())
                    .collect();
                Series {
                    labels: labels_of(series),
                    points,
                }
            })
            .collect()
    }

    /// GET `/api/v1/<endpoint>?query=<promql><extra>` after a flush: the response's `data`
    /// and its body (for messages). Panics on an HTTP or query error.
    fn api(&self, endpoint: &str, promql: &str, extra: &str) -> (serde_json::Value, String) {
        self.force_flush();
        let path = format!(
            "/api/v1/{endpoint}?query={}{extra}&nocache=1",
            urlencode(promql)
        );
        let resp = self.get(&path);
        let body = resp.text();
        if resp.status != 200 {
            panic!("{endpoint} {promql:?}: HTTP {}: {body}", resp.status);
        }
        let mut json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{endpoint} {promql:?}: bad JSON ({e}): {body}"));
        if json["status"] != "success" {
            panic!("{endpoint} {promql:?}: {body}");
        }
        (json["data"].take(), body)
    }

    /// Poll [`query`](Self::query) until it returns something; panic after `timeout`,
    /// naming the query and listing the metric names that do exist.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(promql);
            if !samples.is_empty() {
                return samples;
            }
            if Instant::now() >= deadline {
                let names = self.series_names();
                panic!(
                    "no result for {promql:?} within {timeout:?}.\n\
                     Series names present ({}):\n  {}",
                    names.len(),
                    if names.is_empty() {
                        "(none)".to_owned()
                    } else {
                        names.join("\n  ")
                    }
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// All metric names stored so far (after a flush).
    pub fn series_names(&self) -> Vec<String> {
        self.force_flush();
        let resp = self.get("/api/v1/label/__name__/values");
        let body = resp.text();
        if resp.status != 200 {
            panic!("label values: HTTP {}: {body}", resp.status);
        }
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("label values: bad JSON ({e}): {body}"));
        let mut names: Vec<String> = json["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// GET `path` (which may carry a query string) on this server.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(self.port, "GET", path, None, &[])
            .unwrap_or_else(|e| panic!("GET {path} on 127.0.0.1:{}: {e}", self.port))
    }

    /// POST `body` with the given content type to `path` on this server.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> HttpResponse {
        http_request(self.port, "POST", path, Some((content_type, body)), &[])
            .unwrap_or_else(|e| panic!("POST {path} on 127.0.0.1:{}: {e}", self.port))
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let tail = self.log_tail(20);
            if !tail.is_empty() {
                eprintln!(
                    "--- VictoriaMetrics (port {}) log tail ---\n{tail}\n---",
                    self.port
                );
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum StartError {
    Retry(String),
    Fatal(String),
}

fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "stallscope-vm-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The `metric` object of a query result's series, as a label map.
fn labels_of(series: &serde_json::Value) -> BTreeMap<String, String> {
    series["metric"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_value(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "+Inf" | "Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            s => s.parse().ok(),
        },
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---- minimal HTTP/1.1 client --------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request to `127.0.0.1:<port>` with `Connection: close`.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    extra_headers: &[(&str, &str)],
) -> io::Result<HttpResponse> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;

    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         User-Agent: stallscope-tests\r\nAccept: */*\r\n"
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let payload: &[u8] = match body {
        Some((content_type, bytes)) => {
            req.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
            bytes
        }
        None if method == "POST" || method == "PUT" => {
            req.push_str("Content-Length: 0\r\n");
            &[]
        }
        None => &[],
    };
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(payload)?;
    stream.flush()?;

    read_response(BufReader::new(stream), method == "HEAD")
}

/// Parse a complete raw HTTP/1.1 response (exposed for tests of the parser itself).
pub fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    read_response(raw, false)
}

fn read_response<R: BufRead>(mut r: R, head_only: bool) -> io::Result<HttpResponse> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    loop {
        let status_line = read_line(&mut r)?;
        // "HTTP/1.1 200 OK"
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;

        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }

        // Skip interim 1xx responses (e.g. 100 Continue).
        if (100..200).contains(&status) {
            continue;
        }

        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if find("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            read_chunked(&mut r)?
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            body
        } else {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        };
        return Ok(HttpResponse {
            status,
            headers,
            body,
        });
    }
}

fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, then the final empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r)?;
        if !crlf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "missing CRLF after chunk",
            ));
        }
    }
}

/// One line without its CRLF / LF; EOF before any byte is an error.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
