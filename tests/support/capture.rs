//! One stallscope instance per test process (the wrappers report to the first one built), the
//! messages it logged, and helpers for lock tests.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// `stallscope` events as the app's plain log shows them: the message, then ` key=value` for
/// each field (strings quoted).
pub static REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Line {
            message: String,
            fields: String,
        }
        impl Visit for Line {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                } else {
                    self.fields += &format!(" {}={value:?}", field.name());
                }
            }
        }
        if event.metadata().target() == "stallscope" {
            let mut line = Line {
                message: String::new(),
                fields: String::new(),
            };
            event.record(&mut line);
            REPORTS.lock().unwrap().push(line.message + &line.fields);
        }
    }
}

/// How the test process's global subscriber is set up.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// stallscope's layer is in the subscriber: it reads tokio's spans.
    Full,
    /// Only the report capture: measurements come from poll hooks and wrappers.
    Production,
}

/// The process's stallscope instance, built by the first call (later arguments are ignored),
/// with the global subscriber set up for `mode`.
pub fn stallscope(slow_poll_threshold: Duration, mode: Mode) -> &'static stallscope::Guard {
    stallscope_from(
        stallscope::Builder::new().slow_poll_threshold(slow_poll_threshold),
        mode,
    )
}

/// Installs the report capture alone as the global subscriber (production mode, for a test that
/// builds its own instances).
pub fn capture_reports() {
    tracing_subscriber::registry().with(Capture).init();
}

/// The process's instance, once built.
static GUARD: OnceLock<stallscope::Guard> = OnceLock::new();

/// Whether this test binary's instance times with the coarse clock.
static COARSE_CLOCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// This test binary's instance times with the coarse clock, the fallback where the CPU's
/// counter is not trusted (call before the instance is built; the clock is per process).
#[allow(dead_code)]
pub fn use_coarse_clock() {
    COARSE_CLOCK.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// [`stallscope`] from a builder of the test's own.
pub fn stallscope_from(builder: stallscope::Builder, mode: Mode) -> &'static stallscope::Guard {
    GUARD.get_or_init(|| {
        let layer = builder
            .coarse_clock(COARSE_CLOCK.load(std::sync::atomic::Ordering::Relaxed))
            .build()
            .unwrap();
        let guard = layer.guard();
        let registry = tracing_subscriber::registry().with(Capture);
        match mode {
            Mode::Full => registry.with(layer).init(),
            Mode::Production => registry.init(),
        }
        guard
    })
}

/// A two-worker runtime measured by `guard` in `mode`: with its poll hooks in production mode,
/// through tokio's task spans (the global subscriber) in full mode.
pub fn runtime(guard: &stallscope::Guard, mode: Mode) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    if mode == Mode::Production {
        guard.instrument_runtime(&mut builder);
    }
    builder.build().unwrap()
}

/// The captured reports containing every one of `needles` (as written so far: flush the
/// instances that wrote them first).
pub fn reports_with_all(needles: &[&str]) -> Vec<String> {
    REPORTS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| needles.iter().all(|n| r.contains(n)))
        .cloned()
        .collect()
}

/// The captured reports containing `needle`, once every report found so far is written (a
/// background thread writes them).
pub fn reports_with(needle: &str) -> Vec<String> {
    if let Some(guard) = GUARD.get() {
        assert!(guard.flush_reports(), "reports not written within 5 s");
    }
    REPORTS
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains(needle))
        .cloned()
        .collect()
}

/// The lock named `name` in `guard`'s snapshot.
pub fn lock_stats(guard: &stallscope::Guard, name: &str) -> stallscope::snapshot::LockStats {
    guard
        .snapshot()
        .locks
        .into_iter()
        .find(|l| l.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("lock {name:?} in the snapshot"))
}

/// Runs `body` on another thread and returns once it called `held()` (it holds the lock).
pub fn hold_elsewhere(
    body: impl FnOnce(&dyn Fn()) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || body(&|| held_tx.send(()).unwrap()));
    held_rx.recv().unwrap();
    holder
}
