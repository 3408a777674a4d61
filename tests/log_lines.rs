//! A report line reads well in plain text and in JSON: a short message that names what and
//! where, the details as fields, each value once (the stack in one field only), and the advice
//! once per kind of report rather than on every line. Both renderings come from one run: the
//! app's subscriber with a plain and a JSON fmt layer side by side.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Lines written by one fmt layer.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Fields that name the report's subject (what and where) for log queries: the message says
/// them in words, and they stay fields under the names dashboards and tests already use.
const SUBJECT_FIELDS: &[&str] = &[
    "spawned_at",
    "task.name",
    "blocked_in",
    "lock",
    "block_on_at",
];

#[tracing::instrument]
fn sleep_in_span(d: Duration) {
    std::thread::sleep(d);
}

/// Runs a slow poll twice, a blocking lock wait and the summary; returns the (plain, JSON)
/// lines of target `stallscope`.
fn report_lines() -> (Vec<String>, Vec<Map<String, Value>>) {
    let plain = Lines::default();
    let json = Lines::default();
    let stallscope = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(100))
        .build()
        .unwrap();
    let guard = stallscope.guard();
    let ours = || filter_fn(|meta| meta.target() == "stallscope");
    tracing_subscriber::registry()
        .with(stallscope)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(plain.clone())
                .with_filter(ours()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(json.clone())
                .with_filter(ours()),
        )
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lock = Arc::new(stallscope::sync::Mutex::named("shared", ()));
    runtime.block_on(async {
        for _ in 0..2 {
            tokio::task::Builder::new()
                .name("sleeper")
                .spawn(async { sleep_in_span(Duration::from_millis(400)) })
                .unwrap()
                .await
                .unwrap();
        }
        let held = lock.clone();
        let holder = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            std::thread::sleep(Duration::from_millis(250));
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiter = lock.clone();
        tokio::spawn(async move { drop(waiter.lock().unwrap()) })
            .await
            .unwrap();
        holder.join().unwrap();
    });
    drop(runtime);
    drop(guard);

    let plain: Vec<String> = plain.text().lines().map(str::to_owned).collect();
    let json = json
        .text()
        .lines()
        .map(|l| match serde_json::from_str(l).unwrap() {
            Value::Object(map) => map,
            other => panic!("a JSON object per line: {other}"),
        })
        .collect();
    (plain, json)
}

fn message(line: &Map<String, Value>) -> &str {
    line["message"].as_str().unwrap()
}

/// The lines whose message begins with `kind`.
fn lines_of<'a>(json: &'a [Map<String, Value>], kind: &str) -> Vec<&'a Map<String, Value>> {
    json.iter()
        .filter(|l| message(l).starts_with(kind))
        .collect()
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn every_line_says_what_and_where_briefly_with_each_detail_once() {
    let (plain, json) = report_lines();
    let kinds = [
        "stall in progress",
        "stall stack",
        "slow poll",
        "blocking lock wait",
        "summary",
    ];
    for kind in kinds {
        assert!(
            json.iter().any(|l| message(l).starts_with(kind)),
            "a {kind:?} line: {plain:#?}"
        );
    }

    for line in &json {
        let message = message(line);
        assert!(
            message.len() <= 240,
            "a short message ({} bytes): {message}",
            message.len()
        );
        for (key, value) in line {
            let value = as_text(value);
            let is_detail = !SUBJECT_FIELDS.contains(&key.as_str()) && !value.is_empty();
            let meta = ["message", "level", "target", "timestamp"].contains(&key.as_str());
            if is_detail && !meta && value.len() >= 8 {
                assert!(
                    !message.contains(&value),
                    "field {key} repeats the message: {message} / {value}"
                );
            }
        }
    }

    // The stack: in its field once, nowhere else on the line, in both renderings.
    let stack_lines = lines_of(&json, "stall stack");
    let stack = as_text(&stack_lines[0]["stack"]);
    let plain_stack_line = plain
        .iter()
        .find(|l| l.contains(" stall stack"))
        .expect("a plain stall-stack line");
    assert_eq!(
        plain_stack_line.matches(stack.as_str()).count(),
        1,
        "the stack once: {plain_stack_line}"
    );
    let json_stack_line = serde_json::to_string(stack_lines[0]).unwrap();
    eprintln!(
        "stall-stack line: {} bytes plain, {} bytes JSON",
        plain_stack_line.len() + 1,
        json_stack_line.len() + 1
    );

    // Advice: given with the first report of its kind, not repeated on the next one.
    let polls = lines_of(&json, "slow poll");
    let sleeps = polls
        .iter()
        .filter(|l| l.get("task.name").is_some_and(|n| n == "sleeper"))
        .count();
    assert_eq!(sleeps, 2, "{plain:#?}");
    let live = lines_of(&json, "stall in progress");
    let hints = polls
        .iter()
        .chain(&live)
        .filter(|l| l.contains_key("hint"))
        .count();
    assert_eq!(hints, 1, "one hint for blocking inside async: {plain:#?}");
}
