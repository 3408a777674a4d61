//! The README's "Add it to your service", as a program: stallscope's layer composed into the
//! application's own subscriber (full mode), next to tokio-console's layer and a fmt layer
//! whose filter shows stallscope's lines with `RUST_LOG` unset.
//!
//! A request handler blocks its worker for 300 ms with `std::thread::sleep`; stallscope says at
//! start-up that it measures, reports the slow poll, and the summary at exit.
//!
//! ```text
//! cargo run --example drop_in
//! cargo run --example drop_in -- --keep-running   # then: tokio-console http://127.0.0.1:6669
//! ```
//!
//! `--keep-running` (or `STALLSCOPE_KEEP_RUNNING=1`) handles a request a second until Ctrl-C.

use std::time::Duration;

use tracing_subscriber::prelude::*;

/// A handler with a synchronous call inside async code: its worker stalls for 300 ms.
#[tracing::instrument]
async fn handle_request(id: u64) {
    std::thread::sleep(Duration::from_millis(300));
}

#[tokio::main]
async fn main() {
    let keep_running = std::env::args().any(|a| a == "--keep-running")
        || std::env::var("STALLSCOPE_KEEP_RUNNING").is_ok_and(|v| v == "1" || v == "on");

    // README "Add it to your service": begin
    let stallscope = stallscope::layer(); // configured from STALLSCOPE_* and OTEL_*
    let _guard = stallscope.guard(); // in main: the summary and exporter flush at exit
    tracing_subscriber::registry()
        .with(stallscope)
        .with(stallscope::console_layer()) // tokio-console, with feature `console`
        .with(tracing_subscriber::fmt::layer().with_filter(stallscope::log_filter())) // RUST_LOG, default info
        .init();
    // README "Add it to your service": end

    let mut id = 0;
    loop {
        id += 1;
        tokio::spawn(handle_request(id))
            .await
            .expect("request task");
        if !keep_running {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
