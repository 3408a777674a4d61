//! Writing a report never holds up a worker or the clock: the application's log writer is made
//! to block for a second (a full pipe, a slow disk, stdout's lock held elsewhere) while a task
//! stalls. The stall's reports wait for the writer on stallscope's reporter thread; the worker
//! goes on polling the next task at once, and the clock goes on ticking, so nothing polled
//! meanwhile looks slow.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Set while the log's writer blocks every write.
static WRITER_STUCK: AtomicBool = AtomicBool::new(false);
/// What reached the log.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct StuckWriter;

impl Write for StuckWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        while WRITER_STUCK.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StuckWriter {
    type Writer = StuckWriter;
    fn make_writer(&'a self) -> StuckWriter {
        StuckWriter
    }
}

/// The longest gap between ticks of a 5 ms timer over 40 ticks.
async fn heartbeat() -> Duration {
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        longest = longest.max(last.elapsed());
        last = Instant::now();
    }
    longest
}

#[test]
fn a_stuck_log_writer_holds_up_no_worker_and_no_clock() {
    let layer = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(100))
        .build()
        .unwrap();
    let guard = layer.guard();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(StuckWriter)
                // Only stallscope's lines: the application's own events on the worker would
                // wait for the writer, as they do in any application.
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("stallscope", tracing::Level::INFO),
                ),
        )
        .init();
    // One worker: a report written on it would stall the heartbeat that follows the stall.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(1).enable_all();
    guard.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();
    runtime.block_on(async { tokio::spawn(async {}).await.unwrap() });

    WRITER_STUCK.store(true, SeqCst);
    let unstick = std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(1));
        WRITER_STUCK.store(false, SeqCst);
    });
    let stall_site = line!() + 1;
    let stall = runtime.spawn(async { std::thread::sleep(Duration::from_millis(250)) });
    let heartbeat = runtime.spawn(heartbeat());
    runtime.block_on(stall).unwrap();
    let after_stall = Instant::now();
    let longest_gap = runtime.block_on(heartbeat).unwrap();
    let heartbeat_took = after_stall.elapsed();
    unstick.join().unwrap();
    drop(runtime);
    assert!(guard.flush_reports());

    let log = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
    // The heartbeat waited out the stall once (250 ms), then ticked on while the writer was
    // stuck for the rest of the second.
    assert!(
        longest_gap < Duration::from_millis(400) && heartbeat_took < Duration::from_millis(700),
        "the worker waited for the log's writer: heartbeat gap {longest_gap:?}, 40 ticks after \
         the stall took {heartbeat_took:?}\n{log}"
    );
    let site = format!("tests/reports_off_the_worker.rs:{stall_site}:");
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow poll")).collect();
    assert!(
        slow.len() == 1 && slow[0].contains(&site),
        "one slow poll, the stall's, written once the writer came back (none from polls \
         timed while it was stuck):\n{log}"
    );
}
