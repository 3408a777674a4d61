//! No false slow poll when the clock's thread is not scheduled, in production mode (poll
//! hooks), with the process's clock (the CPU's counter where it is trusted; the coarse clock's
//! ledger of late spells is `late_clock_full.rs`'s): see `support/late_clock.rs`. Its own test
//! binary: the clock is per process.

mod support;

#[test]
fn a_starved_clock_thread_makes_no_poll_look_slow() {
    support::late_clock::starved_clock_reports_nothing_false(support::capture::Mode::Production);
}
