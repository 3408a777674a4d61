//! Blocking-pool starvation, and its fix.
//!
//! Many async tasks each `await` a `spawn_blocking` job that blocks for a while (here a 1 s
//! synchronous "upload"), on a runtime whose blocking pool has fewer threads than jobs. Later
//! jobs queue for seconds before any thread runs them: the k-th wave waits k job-lengths.
//! stallscope reports the starvation episode (queue depth, busy threads, the call site) and the
//! queue wait of every job per call site.
//!
//! ```text
//! cargo run --example blocking_pool_starvation            # 8 jobs, 2 pool threads: 4 waves
//! cargo run --example blocking_pool_starvation -- --fixed # a pool sized for the load: 1 wave
//! ```
//!
//! Flags: `--fixed`; `--production` (poll hooks and `stallscope::task::spawn_blocking` instead
//! of tokio's task spans); `--tokio-spawn-blocking` (tokio's own `spawn_blocking`, not the
//! drop-in: production mode then sees the pool's queue but not each job's wait); `--jobs N`
//! (8); `--pool N` (2); `--job-ms MS` (1000); `--keep-running`
//! (or `STALLSCOPE_KEEP_RUNNING=1`) repeats until Ctrl-C. In a real service the fix is one of:
//! size the pool (`Builder::max_blocking_threads`), bound concurrency with a `Semaphore` so
//! queued work waits in async code instead of occupying the pool, or use an async API.

use std::time::{Duration, Instant};

use tracing::{info, instrument, warn};

struct Args {
    fixed: bool,
    production: bool,
    tokio_spawn_blocking: bool,
    jobs: usize,
    pool: usize,
    job: Duration,
    keep_running: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        fixed: false,
        production: false,
        tokio_spawn_blocking: false,
        jobs: 8,
        pool: 2,
        job: Duration::from_millis(1000),
        keep_running: std::env::var("STALLSCOPE_KEEP_RUNNING").is_ok_and(|v| v == "1" || v == "on"),
    };
    let mut it = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<u64, String> {
        value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} takes a positive number"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--fixed" => args.fixed = true,
            "--production" => args.production = true,
            "--tokio-spawn-blocking" => args.tokio_spawn_blocking = true,
            "--keep-running" => args.keep_running = true,
            "--jobs" => args.jobs = number("--jobs", it.next())? as usize,
            "--pool" => args.pool = number("--pool", it.next())? as usize,
            "--job-ms" => args.job = Duration::from_millis(number("--job-ms", it.next())?),
            other => {
                return Err(format!(
                "unknown argument {other:?}; use --fixed, --production, --tokio-spawn-blocking, --jobs, --pool, \
                 --job-ms, --keep-running"
            ))
            }
        }
    }
    Ok(args)
}

/// A synchronous upload: blocking I/O that belongs on the blocking pool.
fn upload_blocking(job: Duration) {
    std::thread::sleep(job);
}

/// One request: hands its blocking upload to the pool and awaits it.
#[instrument(skip(job, tokio_spawn_blocking))]
async fn handle_upload(request: usize, job: Duration, tokio_spawn_blocking: bool) -> Duration {
    let queued = Instant::now();
    let upload = move || {
        let waited = queued.elapsed();
        upload_blocking(job);
        waited
    };
    // stallscope's drop-in measures the queue wait in production mode; in full mode it is
    // tokio's own spawn_blocking, which tokio's task spans already show.
    let waited = if tokio_spawn_blocking {
        tokio::task::spawn_blocking(upload).await
    } else {
        stallscope::task::spawn_blocking(upload).await
    }
    .expect("upload job");
    info!(
        request,
        "upload {request} waited {waited:.3?} for a pool thread"
    );
    waited
}

async fn scenario(args: &Args) {
    let started = Instant::now();
    let requests: Vec<_> = (0..args.jobs)
        .map(|request| tokio::spawn(handle_upload(request, args.job, args.tokio_spawn_blocking)))
        .collect();
    let mut longest = Duration::ZERO;
    for request in requests {
        longest = longest.max(request.await.expect("request task"));
    }
    let elapsed = started.elapsed();
    if longest > args.job / 2 {
        warn!(
            "{} uploads took {elapsed:.3?}; the longest wait for a pool thread was {longest:.3?}: the pool was starved",
            args.jobs
        );
    } else {
        info!(
            "{} uploads took {elapsed:.3?}; the longest wait for a pool thread was {longest:.3?}",
            args.jobs
        );
    }
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("blocking_pool_starvation: {e}");
            std::process::exit(2);
        }
    };
    // The fix here: a pool with a thread for every concurrent job.
    let pool = if args.fixed { args.jobs } else { args.pool };
    let guard = stallscope::try_init().unwrap_or_else(|e| {
        eprintln!("blocking_pool_starvation: {e}");
        std::process::exit(2);
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .max_blocking_threads(pool)
        .enable_all();
    if args.production {
        // Production mode: poll hooks and the spawn_blocking drop-in, no task spans.
        guard.instrument_runtime(&mut builder);
    }
    let runtime = builder.build().expect("tokio runtime");
    runtime.block_on(async {
        info!(
            "blocking_pool_starvation: {} jobs of {:?} on a blocking pool of {pool} threads{}",
            args.jobs,
            args.job,
            if args.fixed {
                " (fixed: pool sized for the load)"
            } else {
                ""
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
