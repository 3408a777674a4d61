//! A coarse monotonic clock for timing polls in both modes: nanoseconds since the process's first use,
//! advanced every [`TICK`] by the watchdog thread. Reading it is one relaxed load of a
//! read-mostly cache line, against ~25-35 ns for `Instant::now()` on the machines we measured.
//!
//! Resolution: a poll shorter than [`FAST_POLL`] cannot be told apart from a zero-length one;
//! it is counted, not timed. Hazards are polls of milliseconds to seconds, so this loses
//! nothing that matters, and sub-millisecond detail is what full mode is for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often the clock advances.
pub(crate) const TICK: Duration = Duration::from_micros(500);

/// Polls whose coarse duration is under two ticks are "fast": counted, not timed.
pub(crate) const FAST_POLL: Duration = Duration::from_millis(1);
pub(crate) const FAST_POLL_NS: u64 = FAST_POLL.as_nanos() as u64;

static NOW_NS: AtomicU64 = AtomicU64::new(1);
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The coarse time, never 0 (0 marks an idle worker slot).
#[inline]
pub(crate) fn now_ns() -> u64 {
    NOW_NS.load(Relaxed)
}

/// Advances the coarse clock to the precise time (watchdog thread only).
pub(crate) fn advance() -> u64 {
    let now = u64::try_from(origin().elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    NOW_NS.store(now, Relaxed);
    now
}

fn origin() -> &'static Instant {
    ORIGIN.get_or_init(Instant::now)
}

/// Starts the thread that advances the clock (once per process). With `tokio_unstable` the
/// same thread is the watchdog: each tick it also looks at the worker slots for live stalls.
pub(crate) fn start_upkeep() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        advance();
        let spawned = std::thread::Builder::new()
            .name("stallscope-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                let _now = advance();
                #[cfg(tokio_unstable)]
                crate::hooks::watchdog::scan(_now);
            });
        if let Err(e) = spawned {
            crate::report::no_clock_thread(&e);
        }
    });
}
