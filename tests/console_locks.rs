//! tokio-console sees the tokio locks of the threads_with_runtimes scenario as resources, with
//! stallscope's layer in the same registry: a client speaking the console's gRPC protocol
//! (`console-api`, as `tokio-console` does) watches the running example.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::console::{watch, Running, Seen};
use support::examples;

#[test]
fn the_console_sees_the_tokio_mutex_as_a_resource_with_its_locked_state() {
    let port = examples::free_port();
    let _scenario = Running(
        examples::command("threads_with_runtimes")
            .args(["--threads", "2", "--keep-running"])
            .env("TOKIO_CONSOLE_BIND", format!("127.0.0.1:{port}"))
            .env("TOKIO_CONSOLE_PUBLISH_INTERVAL", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start example"),
    );
    // The `locked` values seen on Mutex resources created at `site`.
    let locked = |s: &Seen, site: &str| -> Vec<String> {
        s.resource_attributes
            .iter()
            .filter(|((id, name), _)| {
                name == "locked"
                    && s.resource_types.get(id).is_some_and(|t| t == "Mutex")
                    && s.resource_sites.get(id).is_some_and(|l| l == site)
            })
            .flat_map(|(_, values)| values.clone())
            .collect()
    };
    let mutex_sites = |s: &Seen| -> Vec<String> {
        s.resource_sites
            .iter()
            .filter(|(id, _)| s.resource_types.get(*id).is_some_and(|t| t == "Mutex"))
            .map(|(_, site)| site.clone())
            .collect()
    };
    let source = include_str!("../examples/threads_with_runtimes.rs");
    let line = source
        .lines()
        .position(|l| l.contains("tokio::sync::Mutex::new("))
        .expect("the tokio Mutex in the example")
        + 1;
    let site = format!("examples/threads_with_runtimes.rs:{line}");

    let seen = watch(port, Duration::from_secs(20), |s| {
        mutex_sites(s).contains(&site) && !locked(s, &site).is_empty()
    });
    assert!(
        mutex_sites(&seen).contains(&site),
        "a Mutex resource created at {site}: {:?}",
        mutex_sites(&seen)
    );
    // Which value depends on when the console sampled it (the lock is taken ~200 ms a round).
    let values = locked(&seen, &site);
    assert!(
        values.iter().all(|v| v == "true" || v == "false") && !values.is_empty(),
        "its `locked` attribute: {values:?}; attributes: {:?}",
        seen.resource_attributes.keys().collect::<Vec<_>>()
    );
}
