//! A configured clock tick in full mode (tokio's task spans): see `support/tick.rs`. Its own
//! test binary: the tick is per process.

mod support;

#[test]
fn a_longer_tick_counts_short_polls_times_long_ones_and_wakes_less() {
    support::tick::counted_timed_and_woken(support::capture::Mode::Full);
}
