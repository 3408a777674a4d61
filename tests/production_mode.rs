//! Production mode: the same hazards measured through tokio's poll hooks and a coarse clock,
//! with stalls reported while they are still running (full mode shares the watchdog).

mod support;

use std::time::Duration;

use support::examples::{self, OutputWithin};
use support::log::{lines_with, number_field};

/// Seconds since midnight of a fmt timestamp (`2026-11-24T07:48:13.344093Z ...`).
fn timestamp(line: &str) -> f64 {
    let time = &line[11..26];
    let (h, rest) = time.split_at(2);
    let (m, s) = rest[1..].split_at(2);
    h.parse::<f64>().unwrap() * 3600.0
        + m.parse::<f64>().unwrap() * 60.0
        + s[1..].parse::<f64>().unwrap()
}

fn run(args: &[&str]) -> String {
    let output = examples::command("blocking_in_async")
        .args(args)
        .output_within(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

#[test]
fn stalls_are_reported_while_running_and_when_they_end() {
    check_live_and_final(&["--production"]);
}

#[test]
fn full_mode_reports_stalls_while_running_too() {
    check_live_and_final(&[]);
}

fn check_live_and_final(mode: &[&str]) {
    let stderr = run(mode);
    let sleep_site = format!("{}:", examples::spawn_site("slow_sleep"));
    let live: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stall in progress") && l.contains(&sleep_site))
        .collect();
    let ended: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("slow poll:") && l.contains(&sleep_site))
        .collect();
    assert_eq!(
        live.len(),
        1,
        "one live report for the 2 s stall:\n{stderr}"
    );
    assert_eq!(ended.len(), 1, "one report when it ended:\n{stderr}");

    // Measured to the coarse clock's tick: 2 s of std::thread::sleep, never less.
    let total = number_field(ended[0], "duration_ms");
    assert!((1995.0..2600.0).contains(&total), "duration {total}");
    // The live report came at the threshold (100 ms), while the poll still had ~1.9 s to run.
    let live_elapsed = number_field(live[0], "elapsed_ms");
    assert!(
        (100.0..400.0).contains(&live_elapsed),
        "live report after {live_elapsed} ms"
    );
    let lead = timestamp(ended[0]) - timestamp(live[0]);
    assert!(
        lead > 1.5,
        "the live report came {lead:.3} s before the poll ended"
    );

    let cpu: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("slow poll:")
                && l.contains(&format!("{}:", examples::spawn_site("checksum")))
        })
        .collect();
    assert_eq!(cpu.len(), 1, "{stderr}");
    let cpu_ms = number_field(cpu[0], "duration_ms");
    assert!((495.0..2000.0).contains(&cpu_ms), "duration {cpu_ms}");
    assert_eq!(stderr.matches("slow poll:").count(), 2, "{stderr}");
    // Production mode does not also count tokio's task spans (the example has them compiled in).
    assert!(stderr.contains("summary: 2 slow polls"), "{stderr}");
}

#[test]
fn the_fixed_version_has_no_stalls_in_production_mode_either() {
    let stderr = run(&["--production", "--fixed"]);
    assert!(!stderr.contains("slow poll:"), "{stderr}");
    assert!(!stderr.contains("stall in progress"), "{stderr}");
    assert!(stderr.contains("summary: no slow polls"), "{stderr}");
}

#[test]
fn production_mode_says_once_at_start_up_that_it_measures_and_how() {
    let stderr = run(&["--production", "--fixed"]);
    let started = lines_with(
        &stderr,
        "INFO stallscope: measuring in production mode (poll hooks on runtime ",
    );
    assert_eq!(started.len(), 1, "{stderr}");
    // This build has feature `console` (dev-dependencies): the line says what it costs here.
    assert!(
        started[0].contains("console=\"feature `console` turns tokio's `tracing` feature on"),
        "{}",
        started[0]
    );
    assert!(!stderr.contains("measuring in full mode"), "{stderr}");
}
