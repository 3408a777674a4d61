//! Threads that each run their own runtime, sharing state through locks, and the fix.
//!
//! The classic `threading.Thread(target=asyncio.run)` mistake, in tokio: five OS threads each
//! build a runtime; every task increments a shared counter under a `std::sync::Mutex` (held
//! while it does some synchronous work), sleeps asynchronously, and prints what it saw. The
//! output order and values change from run to run, and the workers block one another through
//! the std lock. A second part has many tasks hold a `tokio::sync::Mutex` across an `.await`,
//! and a status check give up waiting for it.
//! stallscope tells the runtimes apart (`tokio.runtime.id`), flags the runtime-per-thread
//! pattern, reports each blocking lock wait on a worker, and lists the most contended locks.
//!
//! ```text
//! cargo run --example threads_with_runtimes            # 5 threads, 5 runtimes, std lock
//! cargo run --example threads_with_runtimes -- --fixed # one runtime, an atomic, a short critical section
//! ```
//!
//! Flags: `--fixed`; `--threads N` (5); `--production`; `--keep-running` (or
//! `STALLSCOPE_KEEP_RUNNING=1`) repeats until Ctrl-C.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

const TASKS_PER_THREAD: u64 = 4;
/// Synchronous work done while holding the std lock.
const WORK_UNDER_LOCK: Duration = Duration::from_millis(40);

struct Args {
    fixed: bool,
    threads: usize,
    production: bool,
    keep_running: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        fixed: false,
        threads: 5,
        production: false,
        keep_running: std::env::var("STALLSCOPE_KEEP_RUNNING").is_ok_and(|v| v == "1" || v == "on"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--fixed" => args.fixed = true,
            "--production" => args.production = true,
            "--keep-running" => args.keep_running = true,
            "--threads" => {
                args.threads = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--threads takes a positive number")?
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --fixed, --threads N, --production, --keep-running"
                ))
            }
        }
    }
    Ok(args)
}

fn runtime(guard: &stallscope::Guard, production: bool, workers: usize) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    if production {
        guard.instrument_runtime(&mut builder);
    }
    builder.build().expect("tokio runtime")
}

/// The hazard: each thread runs its own runtime; tasks share a std lock and hold it while
/// doing synchronous work, so workers of different runtimes block each other.
fn hazard(args: &Args, guard: &stallscope::Guard) {
    let counter = Arc::new(stallscope::sync::Mutex::named("counter", 0u64));
    let threads: Vec<_> = (0..args.threads)
        .map(|t| {
            let counter = counter.clone();
            let rt = runtime(guard, args.production, 1);
            std::thread::spawn(move || {
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..TASKS_PER_THREAD)
                        .map(|i| {
                            let counter = counter.clone();
                            tokio::spawn(async move {
                                let seen = {
                                    let mut value = counter.lock().unwrap();
                                    std::thread::sleep(WORK_UNDER_LOCK); // work under the lock
                                    *value += 1;
                                    *value
                                };
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                println!("thread {t} task {i} saw {seen}");
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    if t == 0 {
                        tokio_lock_part(false).await;
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    info!("counter = {}", *counter.lock().unwrap());
}

/// Many tasks hold a tokio::sync::Mutex across an await (the hazard), or only around the
/// update (the fix).
async fn tokio_lock_part(fixed: bool) {
    let state = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..10u64)
        .map(|i| {
            let state = state.clone();
            tokio::spawn(async move {
                if fixed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    state.lock().await.push(i);
                } else {
                    let mut held = state.lock().await;
                    tokio::time::sleep(Duration::from_millis(20)).await; // held across .await
                    held.push(i);
                }
            })
        })
        .collect();
    // A status check that waits at most 10 ms for the lock: behind guards held across an
    // .await it gives up (a cancelled wait, on the locks dashboard), with the fix it answers.
    let status = {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(10), state.lock())
                .await
                .is_ok()
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    let answered = status.await.unwrap();
    info!(
        "tokio::sync::Mutex part: {} updates; the status check {}",
        state.lock().await.len(),
        if answered {
            "got the lock"
        } else {
            "gave up waiting for the lock"
        }
    );
}

/// The fix: one runtime for all the work, an atomic for the counter.
fn fixed(args: &Args, guard: &stallscope::Guard) {
    let counter = Arc::new(AtomicU64::new(0));
    let rt = runtime(guard, args.production, 2);
    rt.block_on(async {
        let tasks: Vec<_> = (0..args.threads as u64 * TASKS_PER_THREAD)
            .map(|i| {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let seen = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    println!("task {i} saw {seen}");
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        tokio_lock_part(true).await;
    });
    info!("counter = {}", counter.load(Ordering::Relaxed));
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("threads_with_runtimes: {e}");
            std::process::exit(2);
        }
    };
    let guard = stallscope::try_init().unwrap_or_else(|e| {
        eprintln!("threads_with_runtimes: {e}");
        std::process::exit(2);
    });
    loop {
        if args.fixed {
            fixed(&args, &guard);
        } else {
            hazard(&args, &guard);
        }
        if !args.keep_running {
            break;
        }
        info!("--keep-running: repeating in 2 s (Ctrl-C to stop)");
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(guard);
}
