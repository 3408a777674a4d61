//! One benchmark run: `stallscope-bench <config> <workload> [--quick] [--current-thread]`.
//!
//! Prints one line, `config=.. workload=.. elapsed_ms=.. polls=.. peak_rss_kb=..`; the suite
//! (`scripts/bench.sh`) runs every pair in fresh processes, alternating, and computes ratios.
//! Configurations depend on how this binary was built:
//!
//! | build | configurations |
//! |---|---|
//! | no cfg, no features | `bare` |
//! | `--cfg tokio_unstable` | `unstable` (no hooks), `empty-hooks` (tokio calling two poll hooks that do nothing: the floor under production mode), `production` (stallscope's poll hooks; the `mutex` workload locks `stallscope::sync::tokio::Mutex`), `production-coarse` (the same with the coarse clock, `STALLSCOPE_CLOCK=coarse`, instead of the CPU's counter), `tokio-metrics` |
//! | `--cfg tokio_unstable`, feature `tracing` | `idle-subscriber` (spans recorded by a bare registry), `empty-layer` (+ a layer that does nothing: the floor under full mode), `full` (+ stallscope's layer), `console` |

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod service;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Config {
    Bare,
    Unstable,
    Production,
    /// Production mode with the coarse clock instead of the CPU's counter.
    ProductionCoarse,
    EmptyHooks,
    TokioMetrics,
    IdleSubscriber,
    EmptyLayer,
    Full,
    /// Full mode with the coarse clock instead of the CPU's counter.
    FullCoarse,
    Console,
}

impl Config {
    fn parse(s: &str) -> Option<Config> {
        Some(match s {
            "bare" => Config::Bare,
            "unstable" => Config::Unstable,
            "production" => Config::Production,
            "production-coarse" => Config::ProductionCoarse,
            "empty-hooks" => Config::EmptyHooks,
            "tokio-metrics" => Config::TokioMetrics,
            "idle-subscriber" => Config::IdleSubscriber,
            "empty-layer" => Config::EmptyLayer,
            "full" => Config::Full,
            "full-coarse" => Config::FullCoarse,
            "console" => Config::Console,
            _ => return None,
        })
    }

    fn is_production(self) -> bool {
        matches!(self, Config::Production | Config::ProductionCoarse)
    }

    fn available(self) -> bool {
        let unstable = cfg!(tokio_unstable);
        let tracing = cfg!(feature = "tracing");
        match self {
            Config::Bare => !unstable && !tracing,
            Config::Unstable
            | Config::Production
            | Config::ProductionCoarse
            | Config::EmptyHooks
            | Config::TokioMetrics => unstable && !tracing,
            Config::IdleSubscriber
            | Config::EmptyLayer
            | Config::Full
            | Config::FullCoarse
            | Config::Console => {
                unstable && tracing
            }
        }
    }
}

/// A layer with every callback left at its default: what composing any layer costs.
#[cfg(feature = "tracing")]
struct EmptyLayer;

#[cfg(feature = "tracing")]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EmptyLayer {}

static TASK_MONITOR: OnceLock<tokio_metrics::TaskMonitor> = OnceLock::new();

/// Spawns through tokio-metrics' monitor in that configuration, else plainly.
#[track_caller]
fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match TASK_MONITOR.get() {
        Some(monitor) => tokio::spawn(monitor.instrument(future)),
        None => tokio::spawn(future),
    }
}

struct Sizes {
    scale: u64,
}

/// 100 x scale tasks yielding 2,000 times each.
async fn yield_workload(s: &Sizes) -> u64 {
    yield_tasks(100 * s.scale, 2_000).await
}

/// The same number of polls as `yield`, by ten times as many tasks taking turns (1,000 at
/// `--quick`): more tasks than a thread's caches hold.
async fn yield_many_workload(s: &Sizes) -> u64 {
    yield_tasks(1_000 * s.scale, 200).await
}

async fn yield_tasks(tasks: u64, yields: u64) -> u64 {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    tasks * (yields + 1)
}

async fn spawn_workload(s: &Sizes) -> u64 {
    let tasks = 50_000 * s.scale;
    let handles: Vec<_> = (0..tasks).map(|i| spawn(async move { i })).collect();
    let mut sum = 0;
    for h in handles {
        sum += h.await.unwrap();
    }
    std::hint::black_box(sum);
    tasks
}

async fn pingpong_workload(s: &Sizes) -> u64 {
    let (pairs, rounds) = (10 * s.scale, 10_000);
    let mut handles = Vec::new();
    for _ in 0..pairs {
        let (to_pong, mut pong_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (to_ping, mut ping_rx) = tokio::sync::mpsc::channel::<u64>(1);
        handles.push(spawn(async move {
            while let Some(v) = pong_rx.recv().await {
                if to_ping.send(v + 1).await.is_err() {
                    break;
                }
            }
        }));
        handles.push(spawn(async move {
            let mut v = 0;
            for _ in 0..rounds {
                to_pong.send(v).await.unwrap();
                v = ping_rx.recv().await.unwrap();
            }
            std::hint::black_box(v);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    pairs * rounds * 2
}

/// 20 x scale tasks taking one lock 5,000 times each: `$mutex` is tokio's Mutex, or
/// stallscope's drop-in wrapper of it (the same API, no common trait).
macro_rules! mutex_workload {
    ($s:expr, $mutex:expr) => {{
        let (tasks, locks) = (20 * $s.scale, 5_000);
        let counter = Arc::new($mutex);
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let counter = counter.clone();
                spawn(async move {
                    for _ in 0..locks {
                        *counter.lock().await += 1;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*counter.lock().await, tasks * locks);
        tasks * locks
    }};
}

/// In the `production` configuration the lock is `stallscope::sync::tokio::Mutex`: what a
/// production-mode user measuring their tokio locks runs.
async fn mutex_workload(s: &Sizes, config: Config) -> u64 {
    if config.is_production() {
        mutex_workload!(s, stallscope::sync::tokio::Mutex::named("bench", 0u64))
    } else {
        mutex_workload!(s, tokio::sync::Mutex::new(0u64))
    }
}

/// Request/response over loopback TCP: 16 connections, 64-byte messages.
async fn http_workload(s: &Sizes) -> u64 {
    let (connections, requests) = (16, 500 * s.scale);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(async move {
        for _ in 0..connections {
            let (mut socket, _) = listener.accept().await.unwrap();
            spawn(async move {
                let mut buf = [0u8; 64];
                while socket.read_exact(&mut buf).await.is_ok() {
                    if socket.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
                socket.set_nodelay(true).unwrap();
                let mut buf = [7u8; 64];
                for _ in 0..requests {
                    socket.write_all(&buf).await.unwrap();
                    socket.read_exact(&mut buf).await.unwrap();
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    server.await.unwrap();
    connections * requests
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn usage() -> ! {
    eprintln!(
        "usage: stallscope-bench <bare|unstable|empty-hooks|production|production-coarse|tokio-metrics|idle-subscriber|empty-layer|full|full-coarse|console> \
         <yield|yield-many|spawn|pingpong|mutex|http> [--quick] [--current-thread]\n       \
         stallscope-bench <config> service --client <bare build's binary> [--seconds S]\n       \
         stallscope-bench bare service-client <addr> <seconds>"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(config), Some(workload)) = (
        args.first().and_then(|c| Config::parse(c)),
        args.get(1).cloned(),
    ) else {
        usage()
    };
    if !config.available() {
        eprintln!(
            "config {config:?} is not available in this build (see the table in bench/src/main.rs)"
        );
        std::process::exit(3);
    }
    let sizes = Sizes {
        scale: if args.iter().any(|a| a == "--quick") {
            1
        } else {
            10
        },
    };
    let current_thread = args.iter().any(|a| a == "--current-thread");
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if workload == "service-client" {
        let (Some(addr), Some(seconds)) = (args.get(2), args.get(3).and_then(|s| s.parse().ok()))
        else {
            usage()
        };
        service::client(addr, seconds);
        return;
    }

    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        // The service gets one core (scripts/bench.sh pins it), so one worker, as a service
        // sized to its cores has.
        b.worker_threads(if workload == "service" { 1 } else { 2 });
        b
    };
    builder.enable_all();

    // The STALLSCOPE_* variables apply (a run with another tick, threshold or bounds).
    let quiet = |coarse: bool| {
        let builder = stallscope::Builder::from_env().expect("STALLSCOPE_* variables");
        let builder = if coarse {
            builder.coarse_clock(true)
        } else {
            builder
        };
        builder
            .otlp(stallscope::Toggle::Off)
            .report_slow_polls(false)
            .summary_on_drop(false)
            .build()
            .expect("stallscope")
    };
    let mut guard = None;
    match config {
        Config::Bare | Config::Unstable => {}
        Config::Production | Config::ProductionCoarse => {
            let layer = quiet(config == Config::ProductionCoarse);
            layer.instrument_runtime(&mut builder);
            guard = Some(layer.guard());
        }
        Config::EmptyHooks => {
            #[cfg(tokio_unstable)]
            builder
                .on_before_task_poll(|meta| {
                    std::hint::black_box(meta);
                })
                .on_after_task_poll(|meta| {
                    std::hint::black_box(meta);
                });
        }
        Config::TokioMetrics => {
            let _ = TASK_MONITOR.set(tokio_metrics::TaskMonitor::new());
        }
        Config::IdleSubscriber => {
            tracing::subscriber::set_global_default(tracing_subscriber::registry()).unwrap();
        }
        Config::EmptyLayer => {
            #[cfg(feature = "tracing")]
            {
                use tracing_subscriber::prelude::*;
                tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(EmptyLayer),
                )
                .unwrap();
            }
        }
        Config::Full | Config::FullCoarse => {
            use tracing_subscriber::prelude::*;
            let layer = quiet(config == Config::FullCoarse);
            guard = Some(layer.guard());
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .unwrap();
        }
        Config::Console => {
            #[cfg(feature = "tracing")]
            {
                use tracing_subscriber::prelude::*;
                let console = console_subscriber::ConsoleLayer::builder()
                    .server_addr(([127, 0, 0, 1], 0))
                    .spawn();
                tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(console),
                )
                .unwrap();
            }
        }
    }
    let runtime = builder.build().unwrap();

    // tokio-metrics' RuntimeMonitor samples alongside, as a user of it would.
    let sampled = Arc::new(AtomicU64::new(0));
    if config == Config::TokioMetrics {
        let monitor = tokio_metrics::RuntimeMonitor::new(runtime.handle());
        let sampled = sampled.clone();
        std::thread::spawn(move || {
            for interval in monitor.intervals() {
                sampled.fetch_add(interval.workers_count as u64, Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }

    if workload == "service" {
        let client = option("--client").unwrap_or_else(|| usage());
        let seconds: f64 =
            option("--seconds").map_or(5.0, |s| s.parse().unwrap_or_else(|_| usage()));
        let m = service::run(&runtime, &client, seconds);
        drop(runtime);
        if let Some(guard) = &guard {
            let polls: u64 = guard.snapshot().tasks.iter().map(|t| t.polls.count).sum();
            if polls < m.requests {
                eprintln!(
                    "stallscope measured {polls} polls for {} requests: not measuring?",
                    m.requests
                );
                std::process::exit(4);
            }
        }
        let switches: Vec<String> = m
            .switches
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{}:{n}", name.replace([' ', ','], "_")))
            .collect();
        println!(
            "config={} workload=service elapsed_ms={:.3} units={} cpu_ms={} client_cpu_ms={} switches={} peak_rss_kb={}",
            args[0],
            m.elapsed.as_secs_f64() * 1e3,
            m.requests,
            m.cpu.as_millis(),
            m.client_cpu.as_millis(),
            switches.join(","),
            peak_rss_kb(),
        );
        return;
    }

    let started = Instant::now();
    let units = runtime.block_on(async {
        match workload.as_str() {
            "yield" => yield_workload(&sizes).await,
            "yield-many" => yield_many_workload(&sizes).await,
            "spawn" => spawn_workload(&sizes).await,
            "pingpong" => pingpong_workload(&sizes).await,
            "mutex" => mutex_workload(&sizes, config).await,
            "http" => http_workload(&sizes).await,
            _ => usage(),
        }
    });
    let elapsed = started.elapsed();
    drop(runtime);

    // Stallscope must really have measured: a disabled layer would flatter the ratio.
    let measured_polls = guard.as_ref().map(|g| {
        g.snapshot()
            .tasks
            .iter()
            .map(|t| t.polls.count)
            .sum::<u64>()
    });
    if let (Some(polls), "yield" | "yield-many") = (measured_polls, workload.as_str()) {
        if polls < units {
            eprintln!("stallscope measured {polls} polls, the workload made at least {units}: not measuring?");
            std::process::exit(4);
        }
    }
    if let (true, "mutex", Some(guard)) = (config.is_production(), workload.as_str(), &guard) {
        let locks: u64 = guard.snapshot().locks.iter().map(|l| l.acquisitions).sum();
        if locks < units {
            eprintln!("stallscope measured {locks} lock acquisitions, the workload made at least {units}: not measuring?");
            std::process::exit(4);
        }
    }
    println!(
        "config={} workload={workload} elapsed_ms={:.3} units={units} measured_polls={} peak_rss_kb={}",
        args[0],
        elapsed.as_secs_f64() * 1e3,
        measured_polls.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        peak_rss_kb(),
    );
}
