//! The README's "Add it to your service", run as written (`examples/drop_in.rs` holds it
//! verbatim): with `RUST_LOG` unset stallscope says that it measures, reports, and summarizes;
//! with feature `console` the one extra line brings tokio-console, seen through its own gRPC
//! protocol.

mod support;

use std::time::Duration;

use support::console::{start, watch};
use support::examples::{self, OutputWithin};
use support::log::lines_with;

const EXAMPLE: &str = include_str!("../examples/drop_in.rs");
const README: &str = include_str!("../README.md");

/// `examples/drop_in.rs:<line>` of the request task's spawn.
fn request_site() -> String {
    let line = EXAMPLE
        .lines()
        .position(|l| l.contains("tokio::spawn(handle_request"))
        .expect("the spawn in the example")
        + 1;
    format!("examples/drop_in.rs:{line}:")
}

#[test]
fn the_readme_snippet_is_the_example() {
    let example: Vec<&str> = EXAMPLE
        .lines()
        .skip_while(|l| !l.contains("README \"Add it to your service\": begin"))
        .skip(1)
        .take_while(|l| !l.contains("README \"Add it to your service\": end"))
        .map(str::trim)
        .collect();
    assert!(example.len() > 3, "the marked lines in the example");
    let section = &README[README.find("## Add it to your service").expect("section")..];
    let block = &section[section.find("```rust\n").expect("a rust block") + 8..];
    let block: Vec<&str> = block[..block.find("```").unwrap()]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("use "))
        .collect();
    assert_eq!(block, example, "README's snippet and examples/drop_in.rs");
}

#[test]
fn with_rust_log_unset_stallscope_says_it_measures_reports_and_summarizes() {
    let output = examples::command("drop_in")
        .env_remove("RUST_LOG")
        .output_within(Duration::from_secs(30));
    // fmt's layer writes to stdout unless told otherwise.
    let log = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}{stderr}");
    let started = lines_with(
        &log,
        "INFO stallscope: measuring in full mode (tokio task spans)",
    );
    assert_eq!(started.len(), 1, "one start-up line:\n{log}");
    assert!(
        started[0].contains("threshold_ms=100.0") && started[0].contains("stacks=\"on\""),
        "{}",
        started[0]
    );
    assert!(
        started[0].contains("console=\"on\""),
        "the README's line brings the console: {}",
        started[0]
    );
    let site = request_site();
    assert!(
        log.lines().any(
            |l| l.contains("WARN stallscope: slow poll: a task spawned at") && l.contains(&site)
        ),
        "{log}"
    );
    assert!(
        log.contains("WARN stallscope: summary: 1 slow polls"),
        "{log}"
    );
}

#[test]
fn the_console_line_of_the_snippet_brings_tokio_console() {
    let port = examples::free_port();
    let _service = start("drop_in", &[], port);
    let site = request_site();
    let site = site.trim_end_matches(':');
    let seen = watch(port, Duration::from_secs(25), |s| {
        s.busy_at(site) >= Duration::from_millis(290)
    });
    let busy = seen.busy_at(site);
    assert!(
        busy >= Duration::from_millis(290),
        "busy time of the request task at {site}: {busy:?}; tasks seen: {:?}",
        seen.task_locations.values().collect::<Vec<_>>()
    );
}
