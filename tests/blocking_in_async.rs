//! The blocking-in-async scenario, run as a user runs it: the example binary, its log report.

mod support;

use std::collections::BTreeMap;
use std::process::Output;

use support::examples::{self, OutputWithin};

/// `key=value` fields of a log line (values may be quoted).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind(' ').map(|i| i + 1).unwrap_or(0);
        let key = rest[key_start..eq].to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_owned(),
                &quoted[(end + 1).min(quoted.len())..],
            )
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = next;
    }
    out
}

fn slow_polls(stderr: &str) -> Vec<BTreeMap<String, String>> {
    stderr
        .lines()
        .filter(|l| l.contains("WARN stallscope: slow poll:"))
        .map(|l| fields(&l[l.rfind(" duration_ms=").expect("fields")..]))
        .collect()
}

fn run(args: &[&str]) -> (Output, String) {
    let output = examples::command("blocking_in_async")
        .args(args)
        .output_within(std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "example failed: {stderr}");
    (output, stderr)
}

fn ms(f: &BTreeMap<String, String>) -> f64 {
    f["duration_ms"].parse().expect("duration_ms")
}

#[test]
fn the_sleep_and_the_cpu_loop_are_reported_with_location_span_and_duration() {
    let (_, stderr) = run(&["--variant", "both"]);
    let polls = slow_polls(&stderr);

    let sleep: Vec<_> = polls
        .iter()
        .filter(|f| f["task.name"] == "slow_sleep")
        .collect();
    assert_eq!(
        sleep.len(),
        1,
        "one slow poll of the sleeping task:\n{stderr}"
    );
    let sleep = sleep[0];
    let location = &sleep["spawned_at"];
    assert!(
        location.starts_with(&format!(
            "examples/blocking_in_async.rs:{}:",
            examples::spawn_line("slow_sleep")
        )),
        "spawn location {location}"
    );
    assert!(
        sleep["span"].contains("`slow_operation`"),
        "span {}",
        sleep["span"]
    );
    // 2 s of std::thread::sleep: never shorter, and a loaded machine adds little to a sleep.
    assert!(
        (1990.0..2600.0).contains(&ms(sleep)),
        "duration {}",
        ms(sleep)
    );
    assert_eq!(sleep["threshold_ms"], "100.0");

    let cpu: Vec<_> = polls
        .iter()
        .filter(|f| f["task.name"] == "checksum")
        .collect();
    assert_eq!(cpu.len(), 1, "one slow poll of the hashing task:\n{stderr}");
    assert!(
        cpu[0]["span"].contains("`checksum`"),
        "span {}",
        cpu[0]["span"]
    );
    assert!(cpu[0]["spawned_at"].starts_with(&format!(
        "examples/blocking_in_async.rs:{}:",
        examples::spawn_line("checksum")
    )));
    // The loop hashes until 500 ms have passed; preemption on a busy machine only adds.
    assert!(
        (495.0..2000.0).contains(&ms(cpu[0])),
        "duration {}",
        ms(cpu[0])
    );

    assert_eq!(polls.len(), 2, "no other slow polls:\n{stderr}");
    assert!(
        stderr.contains("the runtime was stalled"),
        "heartbeat saw the stall:\n{stderr}"
    );
    // The summary names the worst offender first.
    let summary: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("stallscope: summary:"))
        .collect();
    assert!(summary[0].contains("2 slow polls"), "{summary:?}");
    assert!(
        summary[1].contains(&format!(
            "#1 task \"slow_sleep\" spawned at {}",
            examples::spawn_site("slow_sleep")
        )),
        "{summary:?}"
    );
    assert!(summary[2].contains("#2 task \"checksum\""), "{summary:?}");
}

#[test]
fn the_cpu_variant_alone_is_found() {
    let (_, stderr) = run(&["--variant", "cpu"]);
    let polls = slow_polls(&stderr);
    assert_eq!(polls.len(), 1, "{stderr}");
    assert_eq!(polls[0]["task.name"], "checksum");
}

#[test]
fn the_fixed_version_reports_no_slow_polls() {
    let (_, stderr) = run(&["--fixed"]);
    assert!(slow_polls(&stderr).is_empty(), "{stderr}");
    assert!(stderr.contains("summary: no slow polls"), "{stderr}");
    assert!(stderr.contains("the runtime stayed responsive"), "{stderr}");
}
