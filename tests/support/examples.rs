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
