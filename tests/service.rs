//! The service example, a Redis-protocol server with stallscope added as the README says, run
//! as a service runs: real processes over real TCP, in both modes. Under load on a machine
//! whose cores a CPU hog also wants, it must stay silent; each hazard must be reported at its
//! line; two stalls at once must each keep their own line.

mod support;

use std::time::{Duration, Instant};

use support::capture::Mode;
use support::examples::OutputWithin;
use support::log::{stallscope_reports, warnings, Report};
use support::service::{hazard_lines, hog, names_line, one_at_a_time, Client, Reply, Server};

/// Fresh servers per mode that must each stay silent: a false alarm in one run out of five
/// passes ten runs with probability 0.8^10 ≈ 11%, so this fails it 89% of the time.
const QUIET_RUNS: usize = 10;
/// Seconds of load per quiet run (ten runs per mode keep each mode's test near 30 s).
const LOAD_SECONDS: f64 = 2.5;

/// Runs whose every stall is checked, for the two-stalls scenario (the bug it guards was
/// intermittent).
const CONCURRENT_RUNS: usize = 5;

/// How long to wait for a report that is due: a stack sample's comes once it is resolved, and
/// the first resolution in a process reads the binary's debug info (0.4 s here, over a second
/// when the machine is busy).
const REPORT_DUE: Duration = Duration::from_secs(10);

/// Waits until `server` has logged `n` WARN reports of each of `kinds` (or [`REPORT_DUE`] has
/// passed: the assertions then say what is missing).
fn wait_for_reports(server: &Server, n: usize, kinds: &[&str]) {
    server.wait_for_log(REPORT_DUE, |log| {
        let reports = stallscope_reports(log);
        kinds.iter().all(|kind| warnings(&reports, kind).len() >= n)
    });
}

/// A test per mode of each scenario `fn(Mode)`: `<scenario>::full_mode` and
/// `<scenario>::production_mode`, one at a time.
macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn full_mode() {
                let _one = super::one_at_a_time();
                super::$scenario(super::Mode::Full);
            }

            #[test]
            fn production_mode() {
                let _one = super::one_at_a_time();
                super::$scenario(super::Mode::Production);
            }
        }
    )*};
}

in_both_modes!(
    no_false_alarm_under_load_with_a_cpu_hog,
    two_stalls_at_once_each_blamed_on_its_own_line,
    each_blocking_call_is_named_at_its_line,
    the_first_stall_in_a_process_is_named_at_its_line,
    blocking_pool_starvation_is_named_at_its_call,
);

/// One line per report: the start of its message and the fields the tests read (a stack
/// sample's line is kilobytes long).
fn describe(reports: &[Report<'_>]) -> String {
    reports
        .iter()
        .map(|r| {
            let start: String = r.message.chars().take(150).collect();
            let field = |key| r.field(key).unwrap_or_else(|| "(none)".into());
            format!(
                "  {start}... task.id={} blocked_in={}\n",
                field("task.id"),
                field("blocked_in")
            )
        })
        .collect()
}

/// The stall reports among `reports`, described.
fn stalls_among(reports: Vec<Report<'_>>) -> String {
    let stalls: Vec<_> = reports.into_iter().filter(Report::is_stall).collect();
    describe(&stalls)
}

/// Fails with each of the `failures` collected over `total` runs or hazards, if any.
fn assert_none_failed(failures: &[String], total: usize, what: &str) {
    assert!(
        failures.is_empty(),
        "{} of {total} {what}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn assert_summary(log: &str) {
    assert!(
        stallscope_reports(log).iter().any(|r| r.is("summary")),
        "no summary in the log: stallscope may not have run at all:\n{log}"
    );
}

fn no_false_alarm_under_load_with_a_cpu_hog(mode: Mode) {
    let mut alarms = Vec::new();
    for run in 1..=QUIET_RUNS {
        let server = Server::start(mode, None);
        let mut hog = hog(LOAD_SECONDS + 0.5);
        let load = server
            .load(&[
                "--connections",
                "50",
                "--seconds",
                &LOAD_SECONDS.to_string(),
            ])
            .output_within(Duration::from_secs(30));
        let _ = hog.wait();
        let log = server.shutdown();
        let load_said = String::from_utf8_lossy(&load.stdout);
        assert!(
            load.status.success(),
            "run {run}: the load failed: {load_said}{}",
            String::from_utf8_lossy(&load.stderr)
        );
        assert_summary(&log);
        let reports = stallscope_reports(&log);
        let stalls: Vec<_> = reports.into_iter().filter(Report::is_stall).collect();
        if !stalls.is_empty() {
            alarms.push(format!(
                "run {run} ({}): {} stall reports\n{}",
                load_said.trim(),
                stalls.len(),
                describe(&stalls)
            ));
        }
    }
    assert_none_failed(
        &alarms,
        QUIET_RUNS,
        "runs of a service with no blocking call, under load with a CPU hog, reported stalls",
    );
}

/// The `std-lock` hazard: a SET holds the store's lock for 300 ms while a GET from another
/// connection waits for it on the other worker. Each slow poll must name its own line: the
/// sleep in `set` for the SET's task, the `lock()` in `get` for the GET's.
///
/// The GET is sent only once another connection's request has been answered while the SET
/// holds the lock. tokio reads sockets on a worker parked on its I/O driver: when the worker
/// that took the SET was the last to park there and the other sleeps on its condition
/// variable, nothing reads a socket until the SET ends, and the GET would find the lock free
/// (one stall, nothing to check). Background traffic keeps the other worker up most of the
/// time; a run where it was not is retried, not counted.
fn two_stalls_at_once_each_blamed_on_its_own_line(mode: Mode) {
    let (holder, waiter) = (
        hazard_lines("std-lock holder"),
        hazard_lines("std-lock waiter"),
    );
    let (mut runs, mut attempts, mut failures) = (0, 0, Vec::new());
    while runs < CONCURRENT_RUNS {
        attempts += 1;
        assert!(
            attempts <= 4 * CONCURRENT_RUNS,
            "only {runs} of {attempts} attempts had the GET read while the SET held the lock"
        );
        let server = Server::start(mode, Some("std-lock"));
        // Its connections fail when the server stops: it is killed then, its output unread.
        let mut traffic = server
            .load(&["--connections", "8", "--seconds", "30", "--mix", "ping"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start background traffic");
        // A first stall of its own, its stack resolved: the report of a first stall shorter
        // than the first resolution of a stack does not name its line, a separate matter
        // (the_first_stall_in_a_process_is_named_at_its_line).
        Client::connect(&server.addr).call(&["SET", "hazard", "warm-up"]);
        wait_for_reports(&server, 1, &["stall stack"]);

        let (mut setter, mut getter, mut other) =
            (server.connect(), server.connect(), server.connect());
        let (set_task, get_task) = (setter.task_id(), getter.task_id());
        setter.send(&["SET", "hazard", "held"]);
        let held = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        other.call(&["PING"]);
        let read_while_held = held.elapsed() < Duration::from_millis(200);
        if read_while_held {
            getter.send(&["GET", "hazard"]);
        }
        assert_eq!(setter.reply(), Reply::Simple("OK".into()));
        if read_while_held {
            assert_eq!(getter.reply(), Reply::Bulk(Some(b"held".to_vec())));
            // The warm-up's reports and the two stalls'.
            wait_for_reports(&server, 3, &["slow poll", "stall stack"]);
        }
        let log = server.shutdown();
        let _ = traffic.kill();
        let _ = traffic.wait();
        if !read_while_held {
            eprintln!(
                "attempt {attempts}: no socket was read while the SET held the lock; retrying"
            );
            continue;
        }
        runs += 1;

        let reports = stallscope_reports(&log);
        let slow_polls = warnings(&reports, "slow poll");
        let of_task = |task: u64| -> Vec<&Report<'_>> {
            let of_task = slow_polls.iter().filter(|r| r.task_id() == Some(task));
            of_task.copied().collect()
        };
        let (set_polls, get_polls) = (of_task(set_task), of_task(get_task));
        let blamed = |polls: &[&Report<'_>], lines: &[u32]| {
            polls.len() == 1 && polls[0].blocked_in().is_some_and(|b| names_line(&b, lines))
        };
        if !blamed(&set_polls, &holder) || !blamed(&get_polls, &waiter) {
            failures.push(format!(
                "run {runs}: the SET's task {set_task} must have one slow poll blocked in \
                 examples/service.rs:{holder:?}, the GET's task {get_task} one blocked in \
                 examples/service.rs:{waiter:?}; the stall reports:\n{}",
                stalls_among(reports)
            ));
        }
    }
    assert_none_failed(
        &failures,
        CONCURRENT_RUNS,
        "runs did not blame each stall on its own line",
    );
}

/// Hazards that block the worker inside one request, and the request that fires each.
const BLOCKING_CALLS: [(&str, &[&str]); 5] = [
    ("cpu", &["GET", "hazard"]),
    ("sleep", &["GET", "hazard"]),
    ("block-on", &["GET", "hazard"]),
    ("file-io", &["SET", "hazard", "value"]),
    ("dns", &["GET", "hazard"]),
];

/// Each blocking call fired twice on a fresh server: every stack sample must name the hazard's
/// line, and so must the second slow poll (the first one's stack may still be resolving when
/// it ends: see [`the_first_stall_in_a_process_is_named_at_its_line`]).
fn each_blocking_call_is_named_at_its_line(mode: Mode) {
    let mut failures = Vec::new();
    for (hazard, request) in BLOCKING_CALLS {
        let lines = hazard_lines(hazard);
        let server = Server::start(mode, Some(hazard));
        let mut client = server.connect();
        for stall in 1..=2 {
            let reply = client.call(request);
            assert!(!matches!(reply, Reply::Error(_)), "{hazard}: {reply:?}");
            wait_for_reports(&server, stall, &["slow poll", "stall stack"]);
        }
        let log = server.shutdown();
        let reports = stallscope_reports(&log);
        let (slow_polls, stacks) = (
            warnings(&reports, "slow poll"),
            warnings(&reports, "stall stack"),
        );
        let named = |r: &&Report<'_>| r.blocked_in().is_some_and(|b| names_line(&b, &lines));
        if slow_polls.len() != 2
            || !named(&slow_polls[1])
            || stacks.len() < 2
            || !stacks.iter().all(named)
        {
            failures.push(format!(
                "{hazard}: two slow polls, the second and every stack sample blocked in \
                 examples/service.rs:{lines:?}; the stall reports:\n{}",
                stalls_among(reports)
            ));
        }
    }
    assert_none_failed(
        &failures,
        BLOCKING_CALLS.len(),
        "hazards not named at their line",
    );
}

/// The first stall of a fresh server (the `sleep` hazard, 200 ms): its slow-poll report names
/// the line too, as the README says it repeats the blocking frame. The stack is taken at the
/// threshold (100 ms); the first resolution in a process reads the binary's debug info.
fn the_first_stall_in_a_process_is_named_at_its_line(mode: Mode) {
    let lines = hazard_lines("sleep");
    let server = Server::start(mode, Some("sleep"));
    server.connect().call(&["GET", "hazard"]);
    wait_for_reports(&server, 1, &["slow poll", "stall stack"]);
    let log = server.shutdown();
    let reports = stallscope_reports(&log);
    let slow_polls = warnings(&reports, "slow poll");
    assert!(
        slow_polls.len() == 1
            && slow_polls[0]
                .blocked_in()
                .is_some_and(|b| names_line(&b, &lines)),
        "one slow poll, blocked in examples/service.rs:{lines:?}; the stall reports:\n{}",
        stalls_among(reports)
    );
}

/// The `spawn-blocking` hazard: four requests at once each wait for a 1 s job on a pool of two
/// threads; the starvation report names the `spawn_blocking` call.
fn blocking_pool_starvation_is_named_at_its_call(mode: Mode) {
    let lines = hazard_lines("spawn-blocking");
    let server = Server::start(mode, Some("spawn-blocking"));
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for client in &mut clients {
        client.send(&["GET", "hazard"]);
    }
    for client in &mut clients {
        assert_eq!(client.reply(), Reply::Bulk(None));
    }
    let log = server.shutdown();
    let reports = stallscope_reports(&log);
    let starved = warnings(&reports, "blocking pool starved");
    assert!(
        starved.len() == 1 && names_line(starved[0].line, &lines),
        "one starvation report naming examples/service.rs:{lines:?}:\n{log}"
    );
}

/// The `runtime-per-conn` hazard: four connections, four runtimes besides the server's.
/// Returns the log.
fn four_connections_on_runtimes_of_their_own(mode: Mode) -> String {
    let server = Server::start(mode, Some("runtime-per-conn"));
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for client in &mut clients {
        assert_eq!(client.call(&["PING"]), Reply::Simple("PONG".into()));
    }
    server.shutdown()
}

#[test]
fn a_runtime_per_connection_is_named_at_its_block_on_full_mode() {
    let _one = one_at_a_time();
    let lines = hazard_lines("runtime-per-conn");
    let log = four_connections_on_runtimes_of_their_own(Mode::Full);
    let reports = stallscope_reports(&log);
    let flagged = warnings(&reports, "runtime per thread");
    assert!(
        flagged.len() == 1 && names_line(flagged[0].line, &lines),
        "one runtime-per-thread report naming block_on at examples/service.rs:{lines:?}:\n{log}"
    );
}

/// Production mode has no `block_on` spans to name the line, but every runtime was built with
/// `instrument_runtime`, as the README says: four of them must be flagged all the same.
#[test]
fn a_runtime_per_connection_is_flagged_production_mode() {
    let _one = one_at_a_time();
    let log = four_connections_on_runtimes_of_their_own(Mode::Production);
    let reports = stallscope_reports(&log);
    let flagged = warnings(&reports, "4 tokio runtimes in this process").len();
    assert_eq!(flagged, 1, "the runtimes flagged once:\n{log}");
}
