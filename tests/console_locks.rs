//! tokio-console sees the tokio locks of the threads_with_runtimes scenario as resources, with
//! stallscope's layer in the same registry: a client speaking the console's gRPC protocol
//! (`console-api`, as `tokio-console` does) watches the running example.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use console_api::field::{Name, Value};
use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::InstrumentRequest;
use support::examples;

/// Kills the scenario when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the client saw of the example's `tokio::sync::Mutex` resources.
#[derive(Debug, Default)]
struct Mutexes {
    /// Resource id -> creation site `file:line`.
    sites: HashMap<u64, String>,
    /// `locked` values seen on any of them.
    locked: HashSet<bool>,
    /// Metadata id -> field names, to resolve attributes sent by index.
    field_names: HashMap<u64, Vec<String>>,
}

#[test]
fn the_console_sees_the_tokio_mutex_as_a_resource_with_its_locked_state() {
    let port = examples::free_port();
    let _scenario = Running(
        examples::command("threads_with_runtimes")
            .args(["--threads", "2", "--keep-running"])
            .env("TOKIO_CONSOLE_BIND", format!("127.0.0.1:{port}"))
            .env("TOKIO_CONSOLE_PUBLISH_INTERVAL", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start example"),
    );
    let source = include_str!("../examples/threads_with_runtimes.rs");
    let line = source
        .lines()
        .position(|l| l.contains("tokio::sync::Mutex::new("))
        .expect("the tokio Mutex in the example")
        + 1;
    let site = format!("examples/threads_with_runtimes.rs:{line}");

    let seen = watch(port, Duration::from_secs(20), |m| {
        m.sites.values().any(|s| *s == site) && !m.locked.is_empty()
    });
    assert!(
        seen.sites.values().any(|s| *s == site),
        "a Mutex resource created at {site}: {:?}",
        seen.sites
    );
    // Which value depends on when the console sampled it (the lock is taken ~200 ms a round).
    assert!(!seen.locked.is_empty(), "its `locked` attribute: {seen:?}");
}

/// Folds console updates into `Mutexes` until `done` or `timeout`.
fn watch(port: u16, timeout: Duration, done: impl Fn(&Mutexes) -> bool) -> Mutexes {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        let mut seen = Mutexes::default();
        let mut client = loop {
            match InstrumentClient::connect(format!("http://127.0.0.1:{port}")).await {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("console server never came up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut stream = client
            .watch_updates(InstrumentRequest {})
            .await
            .expect("watch_updates")
            .into_inner();
        while Instant::now() < deadline && !done(&seen) {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
            let Ok(Ok(Some(update))) = next else { continue };
            for m in update.new_metadata.map(|m| m.metadata).unwrap_or_default() {
                if let (Some(id), Some(meta)) = (m.id, m.metadata) {
                    seen.field_names.insert(id.id, meta.field_names);
                }
            }
            let Some(resources) = update.resource_update else {
                continue;
            };
            for r in resources.new_resources {
                if let (Some(id), Some(loc), "Mutex") = (r.id, r.location, r.concrete_type.as_str())
                {
                    let site = format!(
                        "{}:{}",
                        loc.file.unwrap_or_default(),
                        loc.line.unwrap_or_default()
                    );
                    seen.sites.insert(id.id, site);
                }
            }
            for (id, stats) in resources.stats_update {
                if !seen.sites.contains_key(&id) {
                    continue;
                }
                for field in stats.attributes.into_iter().filter_map(|a| a.field) {
                    let name = match &field.name {
                        Some(Name::StrName(n)) => Some(n.clone()),
                        Some(Name::NameIdx(i)) => field
                            .metadata_id
                            .as_ref()
                            .and_then(|m| seen.field_names.get(&m.id))
                            .and_then(|names| names.get(*i as usize).cloned()),
                        None => None,
                    };
                    if let (Some("locked"), Some(Value::BoolVal(v))) =
                        (name.as_deref(), field.value)
                    {
                        seen.locked.insert(v);
                    }
                }
            }
        }
        seen
    })
}
