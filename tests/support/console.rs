//! A tokio-console client speaking the console's own gRPC protocol (`console-api`, as
//! `tokio-console` itself does), folding what a running scenario publishes into [`Seen`].

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use console_api::field::{Name, Value};
use console_api::instrument::instrument_client::InstrumentClient;
use console_api::instrument::InstrumentRequest;

/// Kills the scenario when the test ends, pass or fail.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start(example: &str, args: &[&str], port: u16) -> Running {
    let child = super::examples::command(example)
        .args(args)
        .arg("--keep-running")
        .env("TOKIO_CONSOLE_BIND", format!("127.0.0.1:{port}"))
        .env("STALLSCOPE_SAMPLE_INTERVAL", "50ms")
        // Ten looks a second (a user's console looks once), to see values as they change.
        .env("TOKIO_CONSOLE_PUBLISH_INTERVAL", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start example");
    Running(child)
}

#[derive(Default, Debug)]
pub struct Seen {
    /// Task id -> spawn location `file:line`.
    pub task_locations: HashMap<u64, String>,
    /// Task id -> busy time.
    pub task_busy: HashMap<u64, Duration>,
    /// Resource id -> concrete type.
    pub resource_types: HashMap<u64, String>,
    /// Resource id -> creation site `file:line`.
    pub resource_sites: HashMap<u64, String>,
    /// (resource id, attribute) -> every value seen, in order.
    pub resource_attributes: BTreeMap<(u64, String), Vec<String>>,
    /// Metadata id -> field names, to resolve fields sent by index.
    pub field_names: HashMap<u64, Vec<String>>,
    /// Every stats update of a resource, in order: (when it arrived, resource id, its attributes
    /// then). The
    /// console sends all of a resource's attributes in each update, so each entry is the
    /// state a console user saw at that moment.
    pub resource_states: Vec<(Instant, u64, BTreeMap<String, String>)>,
}

impl Seen {
    pub fn field_name(&self, field: &console_api::Field) -> Option<String> {
        match field.name.as_ref()? {
            Name::StrName(name) => Some(name.clone()),
            Name::NameIdx(i) => {
                let meta = field.metadata_id.as_ref()?.id;
                self.field_names.get(&meta)?.get(*i as usize).cloned()
            }
        }
    }

    pub fn busy_at(&self, location_prefix: &str) -> Duration {
        self.task_locations
            .iter()
            .filter(|(_, l)| l.starts_with(location_prefix))
            .filter_map(|(id, _)| self.task_busy.get(id))
            .max()
            .copied()
            .unwrap_or_default()
    }
}

/// Folds console updates from `addr` into `Seen` until `done` or `timeout`.
pub fn watch(port: u16, timeout: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        let mut seen = Seen::default();
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
        while Instant::now() < deadline {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
            let Ok(Ok(Some(update))) = next else { continue };
            if let Some(meta) = update.new_metadata {
                for m in meta.metadata {
                    if let (Some(id), Some(meta)) = (m.id, m.metadata) {
                        let names = meta.field_names.clone();
                        seen.field_names.insert(id.id, names);
                    }
                }
            }
            if let Some(tasks) = update.task_update {
                for task in tasks.new_tasks {
                    if let (Some(id), Some(loc)) = (task.id, task.location) {
                        let location = format!(
                            "{}:{}",
                            loc.file.unwrap_or_default(),
                            loc.line.unwrap_or_default()
                        );
                        seen.task_locations.insert(id.id, location);
                    }
                }
                for (id, stats) in tasks.stats_update {
                    if let Some(busy) = stats.poll_stats.and_then(|p| p.busy_time) {
                        let busy = Duration::new(busy.seconds as u64, busy.nanos as u32);
                        seen.task_busy.insert(id, busy);
                    }
                }
            }
            if let Some(resources) = update.resource_update {
                for resource in resources.new_resources {
                    if let Some(id) = resource.id {
                        if let Some(loc) = resource.location {
                            let site = format!(
                                "{}:{}",
                                loc.file.unwrap_or_default(),
                                loc.line.unwrap_or_default()
                            );
                            seen.resource_sites.insert(id.id, site);
                        }
                        seen.resource_types.insert(id.id, resource.concrete_type);
                    }
                }
                for (id, stats) in resources.stats_update {
                    let mut state = BTreeMap::new();
                    for attribute in stats.attributes {
                        let Some(field) = attribute.field else {
                            continue;
                        };
                        let Some(name) = seen.field_name(&field) else {
                            continue;
                        };
                        let value = match field.value {
                            Some(Value::U64Val(v)) => v.to_string(),
                            Some(Value::I64Val(v)) => v.to_string(),
                            Some(Value::StrVal(v)) | Some(Value::DebugVal(v)) => v,
                            Some(Value::BoolVal(v)) => v.to_string(),
                            None => continue,
                        };
                        state.insert(name.clone(), value.clone());
                        let values = seen.resource_attributes.entry((id, name)).or_default();
                        if values.last() != Some(&value) {
                            values.push(value);
                        }
                    }
                    seen.resource_states.push((Instant::now(), id, state));
                }
            }
            if done(&seen) {
                break;
            }
        }
        seen
    })
}
