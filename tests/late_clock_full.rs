//! No false slow poll when the coarse clock's thread is not scheduled, in full mode (tokio's
//! task spans): see `support/late_clock.rs`. The coarse clock is the fallback where the CPU's
//! counter is not trusted (`late_clock.rs` runs the process's own clock); its own test binary:
//! the clock is per process.

mod support;

#[test]
fn a_starved_clock_thread_makes_no_poll_look_slow() {
    support::capture::use_coarse_clock();
    support::late_clock::starved_clock_reports_nothing_false(support::capture::Mode::Full);
}
