//! The clock's thread sleeps while nothing runs, in production mode (poll hooks), with the
//! process's clock (the CPU's counter where it is trusted): see `support/idle.rs`. Its own test
//! binary: the clock and its thread are per process.

mod support;

#[test]
fn an_idle_process_sleeps_and_what_comes_after_is_timed_exactly() {
    support::idle::idle_then_timed(support::capture::Mode::Production);
}
