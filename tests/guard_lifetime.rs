//! A guard taken in a set-up function and dropped at its end logs an empty summary at start-up
//! and stops the exporters: stallscope says so once it measures after that, in both modes, and
//! stays quiet about a guard that lives as long as it should. Each program is this test binary
//! re-executed with `STALLSCOPE_TEST_CHILD` naming it (one global subscriber per process).

mod support;

use std::time::Duration;

use support::child::{log, CHILD};
use tracing_subscriber::prelude::*;

const DROPPED_EARLY: &str = "guard dropped early";

/// Runs `program` in a child process; returns its log.
fn run(program: &str) -> String {
    support::child::run(program, &[])
}

fn init_log() {
    tracing_subscriber::registry().with(log()).init();
}

/// A few tasks, each with a poll long enough to be timed.
fn serve(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        for _ in 0..4 {
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(3)) })
                .await
                .unwrap();
        }
    });
}

fn multi_thread() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    builder
}

/// Production mode: the log, an instance's guard, and a runtime with its poll hooks.
fn production_mode() -> (stallscope::Guard, tokio::runtime::Runtime) {
    init_log();
    let stallscope = stallscope::Builder::new().build().unwrap();
    let mut builder = multi_thread();
    stallscope.instrument_runtime(&mut builder);
    (stallscope.guard(), builder.build().unwrap())
}

/// Full mode, the guard dropped as the set-up function returns.
fn full_mode_guard_in_set_up_function() {
    fn set_up() {
        let stallscope = stallscope::Builder::new().build().unwrap();
        let _guard = stallscope.guard();
        tracing_subscriber::registry()
            .with(stallscope)
            .with(log())
            .init();
    }
    set_up();
    serve(&multi_thread().build().unwrap());
}

/// Production mode, the guard dropped as the function that builds the runtime returns.
fn production_mode_guard_in_set_up_function() {
    fn set_up() -> tokio::runtime::Runtime {
        let (_guard, runtime) = production_mode();
        runtime
    }
    serve(&set_up());
}

/// The guard held in main, dropped after the runtime.
fn guard_in_main() {
    let (guard, runtime) = production_mode();
    serve(&runtime);
    drop(runtime);
    drop(guard);
}

/// The guard dropped at the end of an async main (as with `#[tokio::main]`): the runtime's
/// other tasks still poll after it, which is no early drop.
fn guard_dropped_before_the_runtime_stops() {
    let (guard, runtime) = production_mode();
    serve(&runtime);
    let background = runtime.spawn(async {
        loop {
            std::thread::sleep(Duration::from_millis(3));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(guard);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    background.abort();
}

#[test]
fn child() {
    let Ok(program) = std::env::var(CHILD) else {
        return;
    };
    match program.as_str() {
        "full_mode_guard_in_set_up_function" => full_mode_guard_in_set_up_function(),
        "production_mode_guard_in_set_up_function" => production_mode_guard_in_set_up_function(),
        "guard_in_main" => guard_in_main(),
        "guard_dropped_before_the_runtime_stops" => guard_dropped_before_the_runtime_stops(),
        other => panic!("no program {other}"),
    }
    eprintln!("child done");
}

fn assert_dropped_early_said_once(log: &str) {
    let said: Vec<&str> = log.lines().filter(|l| l.contains(DROPPED_EARLY)).collect();
    assert_eq!(said.len(), 1, "said once:\n{log}");
    assert!(
        said[0].contains("WARN stallscope: guard dropped early")
            && said[0].contains("let _guard = stallscope.guard();"),
        "says what to do: {}",
        said[0]
    );
    // It comes after the empty summary it explains.
    let summary = log
        .find("summary: no slow polls")
        .expect("the early summary");
    assert!(summary < log.find(DROPPED_EARLY).unwrap(), "{log}");
}

#[test]
fn a_guard_dropped_in_a_set_up_function_is_called_out_in_full_mode() {
    assert_dropped_early_said_once(&run("full_mode_guard_in_set_up_function"));
}

#[test]
fn a_guard_dropped_in_a_set_up_function_is_called_out_in_production_mode() {
    assert_dropped_early_said_once(&run("production_mode_guard_in_set_up_function"));
}

#[test]
fn a_guard_held_for_the_programs_life_is_not() {
    for program in ["guard_in_main", "guard_dropped_before_the_runtime_stops"] {
        let log = run(program);
        assert!(!log.contains(DROPPED_EARLY), "{program}:\n{log}");
        assert!(log.contains("stallscope: summary:"), "{program}:\n{log}");
    }
}
