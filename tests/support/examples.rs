//! Runs the example binaries that `cargo test` builds next to the test executables.

use std::path::PathBuf;
use std::process::Command;

/// Path of `target/<profile>/examples/<name>`, built by `cargo test` before tests run.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example binary {} is missing: `cargo test` builds examples; run the tests through it",
        path.display()
    );
    path
}

/// A command for the example with a clean stallscope/OTel environment and no colours.
pub fn command(name: &str) -> Command {
    let mut cmd = Command::new(binary(name));
    for (key, _) in std::env::vars() {
        if key.starts_with("STALLSCOPE_")
            || key.starts_with("OTEL_")
            || key.starts_with("TOKIO_CONSOLE")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    cmd
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `cmd` to completion with captured output, killing it and failing the test if it takes
/// longer than `timeout` (a hang must fail, not stall CI).
pub fn output(cmd: &mut Command, timeout: std::time::Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for example") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
            panic!("example did not finish within {timeout:?}; its stderr:\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `Command::output` with a deadline: see [`output`].
pub trait OutputWithin {
    /// Runs to completion, or kills the process and fails the test after `timeout`.
    fn output_within(&mut self, timeout: std::time::Duration) -> std::process::Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, timeout: std::time::Duration) -> std::process::Output {
        output(self, timeout)
    }
}

/// Line of `spawn_named("<task>", ...)` in the blocking_in_async example: tokio's spawn
/// location for that task (`spawn_named` is `#[track_caller]`).
pub fn spawn_line(task: &str) -> u32 {
    let source = include_str!("../../examples/blocking_in_async.rs");
    let index = source
        .lines()
        .position(|l| l.contains(&format!("spawn_named(\"{task}\"")))
        .expect("task spawn in example");
    (index + 1) as u32
}

/// `examples/blocking_in_async.rs:<line>` of that task's spawn.
pub fn spawn_site(task: &str) -> String {
    format!("examples/blocking_in_async.rs:{}", spawn_line(task))
}

/// Runs blocking_in_async's 2 s sleep (one slow poll, so one stall span) with `env` over the
/// OTLP defaults, a one-minute interval (what arrives comes through the final flush) and no
/// console; returns its stderr.
pub fn run_sleep(env: &[(&str, String)]) -> String {
    let mut command = command("blocking_in_async");
    command
        .args(["--variant", "sleep"])
        .env("OTEL_METRIC_EXPORT_INTERVAL", "60000")
        .env("STALLSCOPE_CONSOLE", "off");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output_within(std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}
