//! Blocking inside async, and its fix.
//!
//! `slow_operation` calls `std::thread::sleep(2 s)` inside an `async fn`, and `checksum` hashes
//! in a busy loop for ~500 ms: both freeze the runtime's worker thread, so the heartbeat task,
//! which should tick every 100 ms, misses its ticks. stallscope names both in the log: the
//! task, its spawn location, the `#[instrument]`ed span that blocked, and for how long.
//!
//! ```text
//! cargo run --example blocking_in_async            # the hazard
//! cargo run --example blocking_in_async -- --fixed # tokio::time::sleep and spawn_blocking
//! ```
//!
//! Flags: `--fixed`; `--production` (measure through tokio's poll hooks, as a service would
//! in production, instead of tokio's task spans); `--variant sleep|cpu|both` (default both); `--keep-running` (or
//! `STALLSCOPE_KEEP_RUNNING=1`) repeats the scenario until Ctrl-C, for tokio-console
//! (`tokio-console http://127.0.0.1:6669`) or Grafana. The runtime has one worker so the stall
//! shows in the heartbeat; with more workers, one blocked task per worker does the same.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, instrument, warn};

const BLOCKING_SLEEP: Duration = Duration::from_secs(2);
const HASHING_TIME: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Sleep,
    Cpu,
    Both,
}

struct Args {
    fixed: bool,
    production: bool,
    variant: Variant,
    keep_running: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        fixed: false,
        production: false,
        variant: Variant::Both,
        keep_running: std::env::var("STALLSCOPE_KEEP_RUNNING").is_ok_and(|v| v == "1" || v == "on"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--fixed" => args.fixed = true,
            "--production" => args.production = true,
            "--keep-running" => args.keep_running = true,
            "--variant" => {
                args.variant = match it.next().as_deref() {
                    Some("sleep") => Variant::Sleep,
                    Some("cpu") => Variant::Cpu,
                    Some("both") => Variant::Both,
                    other => {
                        return Err(format!("--variant takes sleep, cpu or both, not {other:?}"))
                    }
                }
            }
            other => {
                return Err(format!(
                "unknown argument {other:?}; use --fixed, --production, --variant, --keep-running"
            ))
            }
        }
    }
    Ok(args)
}

/// The hazard: a synchronous sleep inside async code.
#[instrument]
async fn slow_operation() {
    std::thread::sleep(BLOCKING_SLEEP);
}

/// The fix: the async sleep yields the worker to other tasks.
#[instrument]
async fn slow_operation_fixed() {
    tokio::time::sleep(BLOCKING_SLEEP).await;
}

/// CPU-bound work: hashing in a loop for `HASHING_TIME`.
fn hash_for(duration: Duration) -> u64 {
    let start = Instant::now();
    let mut hasher = DefaultHasher::new();
    let mut rounds = 0u64;
    while start.elapsed() < duration {
        for _ in 0..1_000 {
            rounds.hash(&mut hasher);
            rounds += 1;
        }
    }
    hasher.finish()
}

/// The hazard: CPU-bound work on the worker thread.
#[instrument]
async fn checksum() -> u64 {
    hash_for(HASHING_TIME)
}

/// The fix: CPU-bound work on the blocking pool.
#[instrument]
async fn checksum_fixed() -> u64 {
    tokio::task::spawn_blocking(|| hash_for(HASHING_TIME))
        .await
        .expect("hashing job")
}

/// Spawns a task with a name, which tokio-console and stallscope show (task names need
/// `--cfg tokio_unstable`; without it the task is spawned unnamed).
#[track_caller]
fn spawn_named<F>(name: &str, future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(tokio_unstable)]
    return tokio::task::Builder::new()
        .name(name)
        .spawn(future)
        .expect("spawn task");
    #[cfg(not(tokio_unstable))]
    {
        let _ = name;
        tokio::spawn(future)
    }
}

#[instrument(skip(stop))]
async fn heartbeat(stop: Arc<AtomicBool>) -> (u32, Duration) {
    let mut ticks = 0;
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(HEARTBEAT).await;
        ticks += 1;
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    (ticks, longest)
}

async fn scenario(args: &Args) {
    let stop = Arc::new(AtomicBool::new(false));
    let beat = spawn_named("heartbeat", heartbeat(stop.clone()));

    // Let the heartbeat tick before the stall.
    tokio::time::sleep(3 * HEARTBEAT).await;

    if matches!(args.variant, Variant::Sleep | Variant::Both) {
        let fixed = args.fixed;
        let task = spawn_named("slow_sleep", async move {
            if fixed {
                slow_operation_fixed().await
            } else {
                slow_operation().await
            }
        });
        task.await.expect("slow_sleep task");
        info!("sleep variant done");
    }
    if matches!(args.variant, Variant::Cpu | Variant::Both) {
        let fixed = args.fixed;
        let task = spawn_named("checksum", async move {
            if fixed {
                checksum_fixed().await
            } else {
                checksum().await
            }
        });
        let sum = task.await.expect("checksum task");
        info!(checksum = sum, "cpu variant done");
    }

    tokio::time::sleep(3 * HEARTBEAT).await;
    stop.store(true, Ordering::Relaxed);
    let (ticks, longest) = beat.await.expect("heartbeat task");
    if longest > 3 * HEARTBEAT {
        warn!(
            ticks,
            "heartbeat: longest gap between ticks {longest:.3?} (expected {HEARTBEAT:?}): the runtime was stalled"
        );
    } else {
        info!(
            ticks,
            "heartbeat: longest gap between ticks {longest:.3?}: the runtime stayed responsive"
        );
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("blocking_in_async: {e}");
            std::process::exit(2);
        }
    };
    // init() would panic with the same message; try_init lets us exit cleanly instead.
    let guard = stallscope::try_init().unwrap_or_else(|e| {
        eprintln!("blocking_in_async: {e}");
        std::process::exit(2);
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    if args.production {
        // Production mode: poll hooks instead of tokio's task spans.
        guard.instrument_runtime(&mut builder);
    }
    let runtime = builder.build().expect("tokio runtime");
    runtime.block_on(async {
        info!(
            fixed = args.fixed,
            production = args.production,
            "blocking_in_async: {}",
            if args.fixed {
                "fixed version"
            } else {
                "blocking calls inside async code"
            }
        );
        loop {
            scenario(&args).await;
            if !args.keep_running {
                break;
            }
            info!("--keep-running: repeating in 2 s (Ctrl-C to stop)");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    drop(runtime);
    drop(guard);
}
