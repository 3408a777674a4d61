//! Every query of every dashboard panel, evaluated against the real time-series database after
//! the three scenarios ran: each returns data, and the hazard panels show the hazard, with
//! the size the scenario gives it. Also the dashboards' structure: a description and a unit on
//! every panel, the same variables everywhere, no overlapping panels.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::examples::{self, OutputWithin};
use support::victoria::{unix_now, Series, VictoriaMetrics};

const SERVICE: &str = "dashboards-test";

/// The provisioned dashboards (every `dashboards/*.json`, no more, no fewer).
const DASHBOARDS: &[&str] = &[
    "stallscope-blocking-in-async.json",
    "stallscope-blocking-pool.json",
    "stallscope-locks.json",
    "stallscope-overview.json",
];

/// The scenarios whose metrics the dashboards show: every example, once each (plus the fixed
/// variant of the first, so "no hazard" series exist next to the hazards).
const SCENARIOS: &[(&str, &[&str])] = &[
    ("blocking_in_async", &[]),
    ("blocking_in_async", &["--fixed"]),
    // 8 jobs of 300 ms on 2 pool threads: waves wait 0, 0.3, 0.6 and 0.9 s.
    ("blocking_pool_starvation", &["--job-ms", "300"]),
    // 5 threads with a runtime each, 4 tasks per thread holding the std Mutex "counter" for
    // 40 ms; then 10 tasks holding a tokio::sync::Mutex for 20 ms across an .await.
    ("threads_with_runtimes", &[]),
];

fn panels(board: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// Grafana's variables, as the dashboards would expand them for this service.
fn substitute(expr: &str) -> String {
    expr.replace("$service", SERVICE)
        .replace("$runtime", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$__interval", "15s")
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut boards: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let board: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), board)
        })
        .collect();
    boards.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        boards.iter().map(|b| b.0.as_str()).collect::<Vec<_>>(),
        DASHBOARDS
    );
    boards
}

/// The panel titled `title` of dashboard `file`.
fn panel<'a>(boards: &'a [(String, Value)], file: &str, title: &str) -> &'a Value {
    let board = &boards.iter().find(|b| b.0 == file).expect(file).1;
    panels(board)
        .into_iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("{file}: no panel {title:?}"))
}

/// The series of `series` whose label `key` is `value`.
fn series_with<'a>(series: &'a [Series], key: &str, value: &str) -> &'a Series {
    series
        .iter()
        .find(|s| s.label(key) == Some(value))
        .unwrap_or_else(|| panic!("no series with {key}={value:?} among {series:#?}"))
}

#[test]
fn every_panel_is_described_has_a_unit_and_uses_the_datasource_variable() {
    let mut uids = HashSet::new();
    for (file, board) in dashboards() {
        let uid = board["uid"].as_str().unwrap_or_default();
        assert_eq!(Some(uid), file.strip_suffix(".json"), "{file}: uid");
        assert!(uids.insert(uid.to_owned()), "{file}: duplicate uid");
        assert!(
            board["description"].as_str().unwrap_or_default().len() > 40,
            "{file}: dashboard description"
        );
        assert!(
            board["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "stallscope")),
            "{file}: the `stallscope` tag, which the dashboards' links dropdown lists"
        );
        assert_eq!(board["links"][0]["tags"][0], "stallscope", "{file}: links");

        let vars: Vec<&str> = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars, ["datasource", "service", "runtime"], "{file}");
        for var in board["templating"]["list"].as_array().unwrap() {
            if var["type"] == "query" {
                assert_eq!(var["datasource"]["uid"], "${datasource}", "{file}: {var}");
            }
        }

        let mut ids = HashSet::new();
        let mut cells = HashSet::new();
        let rows_and_panels =
            board["panels"].as_array().unwrap().iter().flat_map(|p| {
                std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten())
            });
        for panel in rows_and_panels {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(panel["id"].as_u64().expect("panel id")),
                "{file}: {title}: duplicate id {}",
                panel["id"]
            );
            let grid = &panel["gridPos"];
            let (x, y, w, h) = (
                grid["x"].as_u64().unwrap(),
                grid["y"].as_u64().unwrap(),
                grid["w"].as_u64().unwrap(),
                grid["h"].as_u64().unwrap(),
            );
            assert!(x + w <= 24 && w > 0 && h > 0, "{file}: {title}: {grid}");
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{file}: {title} overlaps another panel at ({cx}, {cy})"
                    );
                }
            }
        }

        for panel in panels(&board) {
            let title = panel["title"].as_str().unwrap_or_default();
            let description = panel["description"].as_str().unwrap_or_default();
            assert!(
                description.len() > 40,
                "{file}: panel {title:?} needs a description"
            );
            let unit = panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{file}: panel {title:?} needs a unit");
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file}: {title}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}: {title}");
            for target in targets {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{file}: {title}"
                );
                let expr = target["expr"].as_str().unwrap_or_default();
                if expr.contains("histogram_quantile(") && expr.contains("_seconds_bucket") {
                    assert_eq!(unit, "s", "{file}: {title}: a duration in seconds");
                }
            }
        }
    }
}

#[test]
fn every_panel_query_returns_data_and_the_hazards_show() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let start = unix_now() - 5.0;
    for (example, args) in SCENARIOS {
        let output = examples::command(example)
            .args(*args)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint())
            .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
            .env("OTEL_SERVICE_NAME", SERVICE)
            .env("STALLSCOPE_SAMPLE_INTERVAL", "50ms")
            .output_within(Duration::from_secs(30));
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let boards = dashboards();
    let mut evaluated = 0;
    for (file, board) in &boards {
        for panel in panels(board) {
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().expect("expr"));
                let samples = vm.wait_for(&expr, Duration::from_secs(10));
                assert!(!samples.is_empty(), "{file}: {}: {expr}", panel["title"]);
                evaluated += 1;
            }
        }
    }
    assert!(evaluated >= 40, "{evaluated} queries");

    // The hazards, as the panels draw them: each panel's first query over the whole run, the
    // way Grafana evaluates a time-series panel, one point every 100 ms (the export interval:
    // the database answers up to now, and the run's last samples are a fraction of a second
    // old).
    let range = |file: &str, title: &str| -> Vec<Series> {
        let expr = substitute(
            panel(&boards, file, title)["targets"][0]["expr"]
                .as_str()
                .unwrap(),
        );
        let series = vm.query_range(&expr, start, Duration::from_millis(100));
        assert!(!series.is_empty(), "{file}: {title}: {expr}");
        series
    };

    // blocking_in_async: a 2 s std::thread::sleep and 500 ms of hashing inside async tasks.
    // The longest poll is drawn as the upper bound of its bucket (..., 1, 2.5 s).
    let max_poll = range(
        "stallscope-blocking-in-async.json",
        "Max poll duration, by spawn location",
    );
    let sleep = series_with(&max_poll, "tokio_task_name", "slow_sleep").max();
    assert!(
        (1.0..=2.5).contains(&sleep),
        "the 2 s blocking sleep: {sleep}"
    );
    let hashing = series_with(&max_poll, "tokio_task_name", "checksum").max();
    assert!(
        (0.25..=1.0).contains(&hashing),
        "the 500 ms hashing loop: {hashing}"
    );

    // blocking_pool_starvation: 8 jobs on 2 threads, so 6 wait at the start, the last wave
    // for 3 job lengths (0.9 s).
    let depth = range("stallscope-blocking-pool.json", "Queue depth");
    let peak = depth.iter().map(Series::max).fold(f64::NAN, f64::max);
    assert_eq!(
        peak, 6.0,
        "8 jobs on 2 threads: the queue peaks at 6: {depth:?}"
    );
    let waits = range(
        "stallscope-blocking-pool.json",
        "Queue wait p50 / p99, by call site",
    );
    let p50 = waits.iter().map(Series::max).fold(f64::NAN, f64::max);
    assert!(
        (0.25..=1.0).contains(&p50),
        "queue waits of 0 to 0.9 s: p50 {p50}"
    );

    // threads_with_runtimes, std::sync::Mutex "counter": held 40 ms by each of 20 tasks on 5
    // runtimes, so waits are multiples of 40 ms below the 0.8 s all holds take together (the
    // bounds leave a bucket of room for a loaded machine: buckets ..., 0.1, 0.25, 0.5, 1, 2.5 s).
    let locks = "stallscope-locks.json";
    let longest = range(locks, "Longest lock wait, by lock");
    let counter = series_with(&longest, "tokio_lock_name", "counter").max();
    assert!(
        counter > 0.1 && counter <= 2.5,
        "waits behind 40 ms holds by 4 other threads: {counter}"
    );
    // tokio::sync::Mutex: 10 tasks hold it 20 ms across an .await, one after the other: the
    // last waits 9 x 20 ms = 180 ms, in the bucket up to 250 ms (or the next, under load).
    let tokio_lock = series_with(&longest, "tokio_lock_kind", "tokio::sync::Mutex").max();
    assert!(
        tokio_lock > 0.1 && tokio_lock <= 0.5,
        "the 10th waiter of 20 ms holds waits ~180 ms: {tokio_lock}"
    );
    let mean = range(locks, "Mean wait per contended acquisition, by lock");
    let tokio_mean = series_with(&mean, "tokio_lock_kind", "tokio::sync::Mutex").last();
    assert!(
        (0.05..=0.25).contains(&tokio_mean),
        "waits of 20, 40, ... 180 ms average ~100 ms: {tokio_mean}"
    );

    // Median holds over the whole run (the last point's window covers it): 40 ms in the bucket
    // up to 50 ms, 20 ms in the one up to 25 ms (each may reach the next bucket under load).
    let holds = range(locks, "Hold time p50, by lock");
    let counter_hold = series_with(&holds, "tokio_lock_name", "counter").last();
    assert!(
        counter_hold > 0.025 && counter_hold <= 0.1,
        "the 40 ms of work under the std lock: {counter_hold}"
    );
    let tokio_hold = series_with(&holds, "tokio_lock_kind", "tokio::sync::Mutex").last();
    assert!(
        tokio_hold > 0.01 && tokio_hold <= 0.05,
        "the 20 ms sleep holding the tokio lock: {tokio_hold}"
    );

    // Waits on the std lock past 100 ms froze a worker; the tokio lock never blocks one.
    let blocking = vm.query(&substitute(
        panel(
            &boards,
            locks,
            "Blocking lock waits on workers in the window, by lock",
        )["targets"][0]["expr"]
            .as_str()
            .unwrap(),
    ));
    let value = |kind: &str| {
        blocking
            .iter()
            .find(|s| s.label("tokio_lock_kind") == Some(kind))
            .unwrap_or_else(|| panic!("{kind} in {blocking:?}"))
            .value
    };
    assert!(
        value("std::sync::Mutex") >= 1.0,
        "blocking waits on workers: {blocking:?}"
    );
    assert_eq!(value("tokio::sync::Mutex"), 0.0, "{blocking:?}");

    let runtimes = range(locks, "Tokio runtimes, by service");
    assert_eq!(
        runtimes[0].max(),
        5.0,
        "5 threads, a runtime each: {runtimes:?}"
    );

    eprintln!(
        "hazards: max poll {sleep} s / {hashing} s; queue peak {peak}, wait p50 {p50} s; \
         longest lock wait {counter} s (std) / {tokio_lock} s (tokio), tokio mean {tokio_mean} s; \
         hold p50 {counter_hold} s / {tokio_hold} s; blocking waits {blocking:?}"
    );

    // The overview's lock row shows the same lock as the worst.
    let worst = range(
        "stallscope-overview.json",
        "Worst lock waits (p99), by lock",
    );
    let worst_counter = series_with(&worst, "tokio_lock_name", "counter").max();
    assert!(
        worst_counter > 0.1,
        "overview, worst lock waits: {worst_counter}"
    );
}
