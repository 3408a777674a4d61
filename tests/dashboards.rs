//! Every query of every dashboard panel, evaluated against the real time-series database after
//! the scenarios ran: each returns data, and the hazard panels show the hazard.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::examples::{self, OutputWithin};
use support::victoria::VictoriaMetrics;

const SERVICE: &str = "dashboards-test";

/// The scenarios whose metrics the dashboards show (one line per example).
const SCENARIOS: &[(&str, &[&str])] = &[
    ("blocking_in_async", &[]),
    ("blocking_in_async", &["--fixed"]),
    ("blocking_pool_starvation", &["--job-ms", "300"]),
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
    assert!(
        boards.len() >= 3,
        "dashboards: {:?}",
        boards.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    boards
}

#[test]
fn every_panel_is_described_has_a_unit_and_uses_the_datasource_variable() {
    for (file, board) in dashboards() {
        let vars: Vec<&str> = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(vars, ["datasource", "service", "runtime"], "{file}");
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
            assert!(
                !panel["targets"].as_array().unwrap().is_empty(),
                "{file}: {title}"
            );
        }
    }
}

#[test]
fn every_panel_query_returns_data_and_the_hazards_show() {
    let vm = VictoriaMetrics::start();
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

    let mut evaluated = 0;
    for (file, board) in dashboards() {
        for panel in panels(&board) {
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().expect("expr"));
                let samples = vm.wait_for(&expr, Duration::from_secs(10));
                assert!(!samples.is_empty(), "{file}: {}: {expr}", panel["title"]);
                evaluated += 1;
            }
        }
    }
    assert!(evaluated >= 20, "{evaluated} queries");

    // The hazards, as the panels show them.
    let max_poll = |task: &str| -> f64 {
        let expr = substitute(&format!(
            r#"histogram_quantile(1, sum by (le) (rate(tokio_task_poll_duration_seconds_bucket{{service_name=~"$service",tokio_task_name="{task}"}}[$__rate_interval])))"#
        ));
        vm.wait_for(&expr, Duration::from_secs(5))[0].value
    };
    let sleep = max_poll("slow_sleep");
    assert!(
        (1.0..=2.5).contains(&sleep),
        "the 2 s blocking sleep: {sleep}"
    );
    let hashing = max_poll("checksum");
    assert!(
        (0.25..=1.0).contains(&hashing),
        "the 500 ms hashing loop: {hashing}"
    );
    let peak = vm.wait_for(
        &substitute(r#"max_over_time(tokio_blocking_queue_depth{service_name=~"$service"}[10m])"#),
        Duration::from_secs(5),
    );
    assert!(
        peak.iter().any(|s| s.value == 6.0),
        "8 jobs on 2 threads: the queue peaks at 6: {peak:?}"
    );
}
