//! A configured clock tick in production mode (poll hooks): see `support/tick.rs`. Its own
//! test binary: the tick is per process.

mod support;

#[test]
fn a_longer_tick_counts_short_polls_times_long_ones_and_wakes_less() {
    support::tick::counted_timed_and_woken(support::capture::Mode::Production);
}
