//! Programs that need a process of their own (one global subscriber per process): the test
//! binary re-executed with `STALLSCOPE_TEST_CHILD` naming the program, which its `child` test
//! runs.

use std::process::Command;

use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The variable naming the program a re-executed test binary runs.
pub const CHILD: &str = "STALLSCOPE_TEST_CHILD";

/// Runs `program` in a child process with `env` added; returns its log (stderr), once the
/// child succeeded and said `child done`.
pub fn run(program: &str, env: &[(&str, String)]) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD, program)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run child");
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    assert!(log.contains("child done"), "{log}");
    log
}

/// The README's fmt layer, writing to stderr for the parent to read.
pub fn log<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(stallscope::log_filter())
}

/// Full mode as the README sets it up: `builder`'s layer and [`log`] in the global subscriber.
/// Returns the instance's guard.
pub fn full_mode(builder: stallscope::Builder) -> stallscope::Guard {
    use tracing_subscriber::prelude::*;
    let stallscope = builder.build().unwrap();
    let guard = stallscope.guard();
    tracing_subscriber::registry()
        .with(stallscope)
        .with(log())
        .init();
    guard
}

/// A runtime with two workers and every driver.
pub fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
