//! Durations stay true while the clock stands between ticks on busy workers, in full mode
//! (tokio's spans): see `support/busy_clock.rs`. Its own test binary: the clock is per
//! process.

mod support;

#[test]
fn busy_workers_keep_durations_true_and_the_clock_thread_quiet() {
    support::busy_clock::busy_workers_keep_durations_true(support::capture::Mode::Full);
}
