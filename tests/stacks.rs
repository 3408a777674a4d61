//! The watchdog names the line that blocks: the stalled worker's stack, captured by signal while
//! the stall runs, resolved off the signal path. Scenarios that never end on their own (a
//! deadlock) or that change process-wide state (signal handlers) run in a child process: this
//! test binary re-executed with `STALLSCOPE_TEST_CHILD` naming the scenario.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::examples::{self, OutputWithin};
use support::log::number_field;

const CHILD: &str = "STALLSCOPE_TEST_CHILD";

/// Line number of the first line of the example containing `needle`.
fn example_line(needle: &str) -> usize {
    include_str!("../examples/blocking_in_async.rs")
        .lines()
        .position(|l| l.contains(needle))
        .expect("line in example")
        + 1
}

fn check_blocking_scenario(mode: &[&str]) {
    let output = examples::command("blocking_in_async")
        .args(mode)
        .output_within(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let position = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));

    // The sleep: captured at the threshold, inside `slow_operation`, at the sleep's line.
    let sleep_at = format!(
        "examples/blocking_in_async.rs:{}",
        example_line("std::thread::sleep(BLOCKING_SLEEP)")
    );
    let sleep_site = format!("{}:", examples::spawn_site("slow_sleep"));
    let first_sample = position(&|l: &str| {
        l.contains("stall stack:") && l.contains(&sleep_site) && l.contains(" sample=1 ")
    })
    .unwrap_or_else(|| panic!("no stack of the sleeping task:\n{stderr}"));
    let line = lines[first_sample];
    assert!(
        line.contains("is blocked in blocking_in_async::slow_operation")
            && line.contains(&sleep_at),
        "the culprit is slow_operation at {sleep_at}: {line}"
    );
    assert!(
        line.contains("std::thread"),
        "the sleep is in the stack: {line}"
    );
    let taken_at = number_field(line, "elapsed_ms");
    assert!(
        (100.0..350.0).contains(&taken_at),
        "stack taken {taken_at} ms into the stall (threshold 100 ms)"
    );
    // Reported while the 2 s poll still ran, and sampled again while it went on.
    let ended = position(&|l: &str| l.contains("slow poll:") && l.contains(&sleep_site))
        .unwrap_or_else(|| panic!("no slow poll:\n{stderr}"));
    assert!(first_sample < ended, "stack reported after the poll ended");
    let resampled = lines[..ended]
        .iter()
        .filter(|l| l.contains("stall stack:") && l.contains(&sleep_site))
        .count();
    assert!(
        resampled >= 2,
        "a 2 s stall is sampled again after 1 s:\n{stderr}"
    );
    assert!(
        lines[ended].contains(&sleep_at),
        "the slow-poll line names the blocking line: {}",
        lines[ended]
    );

    // The CPU-bound variant: the hashing loop's function.
    let cpu_site = format!("{}:", examples::spawn_site("checksum"));
    let cpu = lines
        .iter()
        .find(|l| l.contains("stall stack:") && l.contains(&cpu_site))
        .unwrap_or_else(|| panic!("no stack of the hashing task:\n{stderr}"));
    assert!(
        cpu.contains("is blocked in blocking_in_async::hash_for (examples/blocking_in_async.rs:"),
        "the culprit is the hashing loop: {cpu}"
    );
    // And the summary says where each stall was blocked.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("summary: #") && l.contains(&sleep_at)),
        "{stderr}"
    );
}

#[test]
fn the_blocking_line_is_named_while_the_stall_runs_in_production_mode() {
    check_blocking_scenario(&["--production"]);
}

#[test]
fn the_blocking_line_is_named_while_the_stall_runs_in_full_mode() {
    check_blocking_scenario(&[]);
}

#[test]
fn stacks_can_be_switched_off() {
    let output = examples::command("blocking_in_async")
        .args(["--production", "--variant", "cpu"])
        .env("STALLSCOPE_STACKS", "off")
        .output_within(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("stall in progress"), "{stderr}");
    assert!(!stderr.contains("stall stack"), "{stderr}");
}

#[test]
fn stack_paths_read_the_same_whatever_the_working_directory() {
    // Run from elsewhere, the example's file still prints from its crate's directory.
    let output = examples::command("blocking_in_async")
        .args(["--production", "--variant", "sleep"])
        .current_dir(std::env::temp_dir())
        .output_within(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("stall stack:") && l.contains("is blocked in"))
        .unwrap_or_else(|| panic!("no stack naming the culprit:\n{stderr}"));
    let sleep_at = format!(
        " (examples/blocking_in_async.rs:{})",
        example_line("std::thread::sleep(BLOCKING_SLEEP)")
    );
    assert!(
        line.contains("is blocked in blocking_in_async::slow_operation")
            && line.contains(&sleep_at),
        "the culprit at{sleep_at}: {line}"
    );
    assert!(
        !line.contains(env!("CARGO_MANIFEST_DIR")),
        "no path depends on the working directory: {line}"
    );
}

/// Runs this test binary's `child` test with `scenario`, reading its stderr until `done` says
/// so or `timeout` passes; then kills it. Returns what it printed.
fn run_child(scenario: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let text = Arc::new(Mutex::new(String::new()));
    let reader = {
        let text = text.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        })
    };
    let deadline = Instant::now() + timeout;
    loop {
        let finished = child.try_wait().unwrap().is_some();
        if finished || done(&text.lock().unwrap()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let text = text.lock().unwrap().clone();
    text
}

#[test]
fn a_deadlocked_worker_is_reported_with_both_threads_lock_frames() {
    let both = |text: &str| {
        text.lines()
            .filter(|l| l.contains("stall stack:"))
            .filter(|l| {
                l.contains("take_first_then_second") || l.contains("take_second_then_first")
            })
            .count()
            >= 2
    };
    let text = run_child("deadlock", Duration::from_secs(30), |t| {
        both(t) && t.contains("take_second_then_first") && t.contains("take_first_then_second")
    });
    for culprit in [
        "stacks::take_first_then_second",
        "stacks::take_second_then_first",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains("stall stack:") && l.contains(&format!("is blocked in {culprit}")))
            .unwrap_or_else(|| panic!("no stack blocked in {culprit}:\n{text}"));
        // Inside the culprit: std's Mutex::lock, waiting on the futex.
        assert!(
            line.contains("Mutex") && line.contains("lock"),
            "the lock call is in the stack: {line}"
        );
        assert!(line.contains("tests/stacks.rs:"), "{line}");
    }
}

#[test]
fn a_handler_the_program_installed_is_left_alone() {
    let text = run_child("host_handler", Duration::from_secs(30), |t| {
        t.contains("child done")
    });
    assert!(text.contains("child done"), "{text}");
    assert!(
        text.contains("stall stacks unavailable") && text.contains("already has a handler"),
        "stallscope says why there are no stacks:\n{text}"
    );
    assert!(
        text.contains("stall in progress"),
        "stalls are still reported live:\n{text}"
    );
    assert!(!text.contains("stall stack:"), "{text}");
    assert!(text.contains("host handler intact"), "{text}");
}

#[test]
fn interrupted_syscalls_resume_without_eintr() {
    let text = run_child("syscalls", Duration::from_secs(30), |t| {
        t.contains("child done")
    });
    assert!(text.contains("child done"), "{text}");
    // The stacks were taken inside the blocked read and the sleep...
    let stack_of = |culprit: &str| {
        text.lines()
            .find(|l| l.contains("stall stack:") && l.contains(&format!("is blocked in {culprit}")))
            .unwrap_or_else(|| panic!("no stack in {culprit}:\n{text}"))
            .to_owned()
    };
    assert!(stack_of("stacks::read_from_pipe").contains("read"));
    stack_of("stacks::sleep_on_worker");
    // ...and neither call noticed: the read returned the data, the sleep slept in full.
    assert!(text.contains("read returned 5 bytes"), "{text}");
    assert!(text.contains("slept in full"), "{text}");
}

#[test]
fn many_short_stalls_with_captures_keep_memory_bounded() {
    let seconds: u64 = std::env::var("STALLSCOPE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let text = run_child("stress", Duration::from_secs(seconds + 60), |t| {
        t.contains("child done")
    });
    let result = text
        .lines()
        .find(|l| l.contains("stress slow_polls="))
        .unwrap_or_else(|| panic!("the stress child did not finish:\n{text}"));
    let number = |key: &str| -> f64 {
        let start = result.find(&format!("{key}=")).expect(key) + key.len() + 1;
        let rest = &result[start..];
        rest[..rest.find(' ').unwrap_or(rest.len())]
            .parse()
            .unwrap()
    };
    let (slow_polls, stacks) = (number("slow_polls"), number("stacks"));
    let (rss_early, rss_end) = (number("rss_early_kb"), number("rss_end_kb"));
    assert!(slow_polls >= 50.0 * seconds as f64, "{result}");
    assert!(
        stacks >= 20.0 * seconds as f64,
        "captures happened all along: {result}"
    );
    assert!(
        rss_end - rss_early < 16_384.0,
        "memory grew {} KiB after warm-up: {result}",
        rss_end - rss_early
    );
}

/// Two workers stall at once, in tasks spawned at one place (as a server's connection tasks
/// are): one sleeping in `hold_and_sleep`, the other spinning in `spin_elsewhere`. Each
/// slow-poll line names its own worker's blocking function, never the other's, in each of
/// five rounds (the crossed blame this guards against came and went from run to run).
fn check_two_simultaneous_stalls(scenario: &str) {
    let text = run_child(scenario, Duration::from_secs(60), |t| {
        t.contains("child done")
    });
    // The child says which task ran which function: "task 12 runs hold_and_sleep".
    let runs: std::collections::HashMap<String, &str> = text
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("task ")? + 5..];
            let (id, function) = rest.split_once(" runs ")?;
            Some((id.to_owned(), function.trim()))
        })
        .collect();
    let slow: Vec<&str> = text.lines().filter(|l| l.contains("slow poll")).collect();
    assert_eq!(
        slow.len(),
        10,
        "two slow polls a round, five rounds:\n{text}"
    );
    for line in slow {
        let id = line
            .split_once("task.id=")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or_else(|| panic!("a task id: {line}"));
        let function = runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} said what it runs:\n{text}"));
        let blocked_in = line
            .split_once("blocked_in=")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no blocked_in: {line}"));
        assert!(
            blocked_in.contains(&format!("stacks::{function}")),
            "task {id} ran {function}, its slow poll says: {line}"
        );
    }
}

#[test]
fn two_simultaneous_stalls_are_each_blamed_on_their_own_line_in_production_mode() {
    check_two_simultaneous_stalls("two_stalls");
}

#[test]
fn two_simultaneous_stalls_are_each_blamed_on_their_own_line_in_full_mode() {
    check_two_simultaneous_stalls("two_stalls_full");
}

// ---- the child side -------------------------------------------------------------------------

#[test]
fn child() {
    let Ok(scenario) = std::env::var(CHILD) else {
        return;
    };
    if scenario == "two_stalls_full" {
        two_stalls_full();
        eprintln!("child done");
        std::process::exit(0);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match scenario.as_str() {
        "two_stalls" => {
            let (guard, runtime) =
                production_runtime(Duration::from_millis(100), Duration::from_secs(1));
            two_stalls(&runtime);
            drop(runtime);
            drop(guard);
        }
        "deadlock" => deadlock(),
        "host_handler" => host_handler(),
        "syscalls" => syscalls(),
        "stress" => stress(),
        other => panic!("unknown scenario {other}"),
    }
    eprintln!("child done");
    std::process::exit(0);
}

fn production_runtime(
    threshold: Duration,
    interval: Duration,
) -> (stallscope::Guard, tokio::runtime::Runtime) {
    let stallscope = stallscope::Builder::new()
        .slow_poll_threshold(threshold)
        .stack_sample_interval(interval)
        .summary_on_drop(false)
        .build()
        .unwrap();
    let guard = stallscope.guard();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    stallscope.instrument_runtime(&mut builder);
    (guard, builder.enable_all().build().unwrap())
}

#[inline(never)]
fn hold_and_sleep() {
    std::thread::sleep(Duration::from_millis(300));
}

#[inline(never)]
fn spin_elsewhere() {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(7).wrapping_add(1));
    }
}

/// Five rounds of two tasks, spawned at one line, stalling two workers at once.
fn two_stalls(runtime: &tokio::runtime::Runtime) {
    for _ in 0..5 {
        let stalls: [(&str, fn()); 2] = [
            ("hold_and_sleep", hold_and_sleep),
            ("spin_elsewhere", spin_elsewhere),
        ];
        let tasks: Vec<_> = stalls
            .into_iter()
            .map(|(name, stall)| {
                runtime.spawn(async move {
                    eprintln!("task {} runs {name}", tokio::task::id());
                    stall();
                })
            })
            .collect();
        for task in tasks {
            runtime.block_on(task).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn two_stalls_full() {
    use tracing_subscriber::prelude::*;
    let layer = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(100))
        .summary_on_drop(false)
        .build()
        .unwrap();
    let guard = layer.guard();
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    two_stalls(&runtime);
    drop(runtime);
    drop(guard);
}

#[inline(never)]
fn take_first_then_second(first: &Mutex<u32>, second: &Mutex<u32>) {
    let _a = first.lock().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _b = second.lock().unwrap();
}

#[inline(never)]
fn take_second_then_first(first: &Mutex<u32>, second: &Mutex<u32>) {
    let _b = second.lock().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let _a = first.lock().unwrap();
}

fn deadlock() {
    let (_guard, runtime) = production_runtime(Duration::from_millis(200), Duration::from_secs(1));
    let locks = Arc::new((Mutex::new(0), Mutex::new(0)));
    let (l1, l2) = (locks.clone(), locks.clone());
    // Two workers, two tasks, locks taken in opposite order: both workers stop for good.
    runtime.spawn(async move { take_first_then_second(&l1.0, &l1.1) });
    runtime.spawn(async move { take_second_then_first(&l2.0, &l2.1) });
    std::thread::sleep(Duration::from_secs(60));
}

fn host_handler() {
    extern "C" fn host(_: libc::c_int) {}
    let signal = libc::SIGRTMIN() + 6;
    // SAFETY: installing a plain handler, as a host program would.
    unsafe { libc::signal(signal, host as *const () as libc::sighandler_t) };
    let (guard, runtime) = production_runtime(Duration::from_millis(100), Duration::from_secs(1));
    runtime.block_on(async {
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(400)) })
            .await
            .unwrap();
    });
    // SAFETY: a query.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current);
        current.sa_sigaction
    };
    if current == host as *const () as libc::sighandler_t {
        eprintln!("host handler intact");
    }
    drop(runtime);
    drop(guard);
}

#[inline(never)]
fn read_from_pipe(reader: &mut std::os::unix::net::UnixStream) -> std::io::Result<usize> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    reader.read(&mut buf)
}

#[inline(never)]
fn sleep_on_worker(duration: Duration) -> Duration {
    let start = Instant::now();
    std::thread::sleep(duration);
    start.elapsed()
}

fn syscalls() {
    // A short sampling interval: several signals land on each blocked call.
    let (guard, runtime) =
        production_runtime(Duration::from_millis(100), Duration::from_millis(50));
    let (mut reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        std::thread::sleep(Duration::from_millis(600));
        writer.write_all(b"hello").unwrap();
        writer
    });
    runtime.block_on(async move {
        let read = tokio::spawn(async move { read_from_pipe(&mut reader) });
        let slept = tokio::spawn(async { sleep_on_worker(Duration::from_millis(600)) });
        match read.await.unwrap() {
            Ok(n) => eprintln!("read returned {n} bytes"),
            Err(e) => eprintln!("read failed: {e}"),
        }
        let slept = slept.await.unwrap();
        if slept >= Duration::from_millis(600) {
            eprintln!("slept in full ({slept:?})");
        }
    });
    drop(writer.join());
    // Let the symbolizer finish before the process exits.
    std::thread::sleep(Duration::from_millis(1500));
    drop(runtime);
    drop(guard);
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn stress() {
    let seconds: u64 = std::env::var("STALLSCOPE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    // Every poll of these tasks is a short stall (12-18 ms over a 10 ms threshold, the
    // shortest the watchdog looks at); each is captured, and those that last sampled again.
    let (guard, runtime) = production_runtime(Duration::from_millis(10), Duration::from_millis(10));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let early = Instant::now() + Duration::from_secs(seconds).mul_f64(0.3);
    let mut rss_early = 0;
    runtime.block_on(async {
        let workers: Vec<_> = (0..4u64)
            .map(|i| {
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(12 + 2 * ((n + i) % 4)));
                        n += 1;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if rss_early == 0 && Instant::now() > early {
                rss_early = rss_kb();
            }
        }
        for w in workers {
            w.await.unwrap();
        }
    });
    // Give the symbolizer time to drain, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let snapshot = guard.snapshot();
    let slow_polls: u64 = snapshot.tasks.iter().map(|t| t.slow_polls).sum();
    eprintln!(
        "stress slow_polls={slow_polls} stacks={} rss_early_kb={rss_early} rss_end_kb={} ",
        snapshot.stall_stacks,
        rss_kb()
    );
    drop(runtime);
    drop(guard);
}
