//! The CPU's invariant time-stamp counter, where the process can trust it: a precise clock that
//! costs one instruction to read and needs no thread to keep it. Decided once per process
//! ([`Counter::detect`]); where it is not trusted, the clock stays coarse.
//!
//! Trusted on x86_64 when the CPU says its TSC is invariant (CPUID leaf `0x8000_0007`, EDX bit
//! 8: it ticks at one rate in every power state and never stops) and, on Linux, when the
//! kernel's own clocksource is `tsc` (the kernel checked at boot that the counters of all CPUs
//! agree, and it watches them since; a kernel that found them wanting switched away).
//! Elsewhere (another architecture, a kernel that uses `kvm-clock` or `hpet`, a CPU without the
//! invariant bit) the coarse clock is used, as before.

use std::time::{Duration, Instant};

/// How long each measurement of the counter's rate against `Instant` lasts (twice, once per
/// process): an error of a few tens of nanoseconds in its two readings is under 1e-4 of this.
const CALIBRATION: Duration = Duration::from_millis(2);

/// Two measurements of the rate must agree this closely, or the thread was disturbed while
/// measuring (and it measures again, at most [`ATTEMPTS`] times).
const AGREEMENT: f64 = 1e-3;
const ATTEMPTS: usize = 3;

/// Readings of `Instant` taken to find one that no preemption split from its counter reading.
const PAIR_TRIES: usize = 8;

/// Rates outside this are not a time-stamp counter's.
const PLAUSIBLE_HZ: std::ops::RangeInclusive<u64> = 10_000_000..=20_000_000_000;

/// A trusted counter and its rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counter {
    /// Nanoseconds per count, in 32.32 fixed point.
    pub(crate) ns_per_count_q32: u64,
    /// Counts per second (for the start-up line).
    pub(crate) hz: u64,
}

impl Counter {
    /// The counter, when this CPU and kernel make it trustworthy, measured against `Instant`;
    /// `Err` says why not.
    pub(crate) fn detect() -> Result<Counter, &'static str> {
        if !invariant() {
            return Err("the CPU's time-stamp counter is not invariant");
        }
        if !kernel_trusts_it() {
            return Err("the kernel's clocksource is not the time-stamp counter");
        }
        for _ in 0..ATTEMPTS {
            let (Some(first), Some(second)) = (measure_rate(), measure_rate()) else {
                continue;
            };
            let (a, b) = (
                first.ns_per_count_q32 as f64,
                second.ns_per_count_q32 as f64,
            );
            if (a - b).abs() <= AGREEMENT * a.max(b) && PLAUSIBLE_HZ.contains(&second.hz) {
                return Ok(second);
            }
        }
        Err("the time-stamp counter's rate could not be measured steadily")
    }

    /// `counts` in nanoseconds.
    #[inline]
    pub(crate) fn ns(self, counts: u64) -> u64 {
        u64::try_from((u128::from(counts) * u128::from(self.ns_per_count_q32)) >> 32)
            .unwrap_or(u64::MAX)
    }
}

/// The counter's rate over [`CALIBRATION`], against `Instant`; `None` if it did not advance.
fn measure_rate() -> Option<Counter> {
    let (start, counted_from) = paired();
    while start.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (end, counted_to) = paired();
    let counts = counted_to.wrapping_sub(counted_from);
    if counts == 0 || counts > 1 << 62 {
        return None;
    }
    let ns = end.duration_since(start).as_nanos();
    let ns_per_count_q32 = u64::try_from((ns << 32) / u128::from(counts)).ok()?;
    let hz = u64::try_from(u128::from(counts) * 1_000_000_000 / ns.max(1)).ok()?;
    (ns_per_count_q32 != 0).then_some(Counter {
        ns_per_count_q32,
        hz,
    })
}

/// `Instant::now()` and the counter at the same moment: of [`PAIR_TRIES`] readings of `Instant`
/// between two of the counter, the one whose two counter readings are closest (a preemption
/// between them would put milliseconds there), with the counter at their midpoint.
fn paired() -> (Instant, u64) {
    let reading = || {
        let before = read();
        let now = Instant::now();
        let gap = read().wrapping_sub(before);
        (gap, now, before.wrapping_add(gap / 2))
    };
    let mut best = reading();
    for _ in 1..PAIR_TRIES {
        let next = reading();
        if next.0 < best.0 {
            best = next;
        }
    }
    (best.1, best.2)
}

/// The counter now. On x86_64 `rdtsc`; elsewhere never called (no counter is trusted there).
#[inline(always)]
pub(crate) fn read() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` is available on every x86_64 CPU and has no preconditions.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(target_arch = "x86_64")]
fn invariant() -> bool {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` is available on every x86_64 CPU; leaves past the highest supported
    // extended leaf are not asked for.
    unsafe {
        __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant() -> bool {
    false
}

/// On Linux, whether the kernel times itself with the TSC (a sysfs file); elsewhere the CPU's
/// word is taken.
fn kernel_trusts_it() -> bool {
    !cfg!(target_os = "linux") || kernel_clocksource().is_some_and(|source| source == "tsc")
}

/// The kernel's clocksource now (Linux; a small sysfs file, never on a worker's path: at the
/// first instance's start and from the watchdog thread).
pub(crate) fn kernel_clocksource() -> Option<String> {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .ok()
        .map(|source| source.trim().to_owned())
}

/// Whether the kernel has switched away from the TSC since the counter was trusted: the
/// clocksource it uses now, if it is another one. (A kernel that finds the CPUs' counters
/// disagreeing marks the TSC unstable and switches; the process keeps timing with it.)
pub(crate) fn kernel_switched_away(now: Option<String>) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    now.filter(|source| source != "tsc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_agrees_with_instant_where_it_is_trusted() {
        let Ok(counter) = Counter::detect() else {
            return;
        };
        let (start, from) = (Instant::now(), read());
        std::thread::sleep(Duration::from_millis(50));
        let (instant, counted) = (start.elapsed(), counter.ns(read().wrapping_sub(from)));
        let off = (instant.as_nanos() as f64 - counted as f64).abs() / instant.as_nanos() as f64;
        assert!(
            off < 0.002,
            "the counter said {counted} ns where Instant said {instant:?}"
        );
    }

    #[test]
    fn a_kernel_that_left_the_tsc_is_noticed_and_an_unreadable_file_is_not_a_switch() {
        if !cfg!(target_os = "linux") {
            return;
        }
        assert_eq!(kernel_switched_away(Some("tsc".into())), None);
        assert_eq!(
            kernel_switched_away(Some("hpet".into())),
            Some("hpet".to_owned())
        );
        assert_eq!(kernel_switched_away(None), None);
    }

    #[test]
    fn scaling_is_exact_for_a_one_gigahertz_counter() {
        let counter = Counter {
            ns_per_count_q32: 1 << 32,
            hz: 1_000_000_000,
        };
        assert_eq!(counter.ns(123_456_789), 123_456_789);
        assert_eq!(counter.ns(u64::MAX), u64::MAX, "saturates, never wraps");
    }
}
