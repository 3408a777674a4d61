//! The coarse clock's thread sleeps while nothing runs, in full mode (tokio's task spans): see
//! `support/idle.rs`. The coarse clock is the fallback where the CPU's counter is not trusted
//! (`idle_clock.rs` runs the process's own clock); its own test binary: the clock and its
//! thread are per process.

mod support;

#[test]
fn an_idle_process_sleeps_and_what_comes_after_is_timed_exactly() {
    support::capture::use_coarse_clock();
    support::idle::idle_then_timed(support::capture::Mode::Full);
}
