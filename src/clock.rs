//! The clock that times polls, lock waits and holds in both modes. One per process, chosen by
//! the first instance ([`fix_tick`]):
//!
//! - **The CPU's counter** where the process can trust it (an invariant TSC that the kernel
//!   itself times with; see [`counter`]). A hot path reads a *stamp*, the raw counter: one
//!   instruction and precise, and nothing has to tick. Stamps become nanoseconds
//!   ([`stamp_ns`]) only for a duration that is timed or watched; [`now_ns`] converts at once,
//!   for the paths that are not per poll. The upkeep thread is then the watchdog alone
//!   ([`watch`]), and wakes only as often as the slow-poll threshold needs ([`watch_for`]):
//!   100 times a second at the default 100 ms while tasks poll, against up to 2,000 for the
//!   coarse clock. On a saturated 2-core service each of those wakeups cost about 60 µs of
//!   throughput, as the server and its client lost the core to it.
//! - **A coarse clock** everywhere else (described below): stamps are its nanoseconds.
//!
//! Either way, durations under two ticks ([`fast_poll_ns`]) are counted, not timed, so the
//! histograms mean the same on every machine.
//!
//! The coarse clock: nanoseconds since the process's first use, advanced every tick (0.5 ms unless configured, see [`fix_tick`]) by the upkeep
//! (watchdog) thread. Reading it is one relaxed load of a read-mostly cache line and a bit
//! test, against ~25-35 ns for `Instant::now()` on the machines we measured.
//!
//! Resolution: a poll shorter than two ticks ([`fast_poll_ns`]) cannot be told apart from a
//! zero-length one; it is counted, not timed. Hazards are polls of milliseconds to seconds, so
//! this loses nothing that matters, and sub-millisecond detail is what full mode is for.
//!
//! **Tick.** One per process, fixed by the first stallscope instance. A longer tick means fewer
//! wakeups of the upkeep thread under load (on a 2-vCPU VM, a lock convoy ran measurably
//! faster with a 20 ms tick than with 0.5 ms) for a coarser resolution.
//!
//! **Idle.** A thread waking every 0.5 ms costs an idle process about 3% of a core (measured:
//! ~1,700 wakeups a second, ~20 µs of CPU each on a VM). So when no poll has been in progress for
//! [`IDLE_AFTER`], the upkeep thread marks the clock idle (the top bit of its value) and
//! sleeps, looking at the worker slots every [`IDLE_LOOK`] only. A reader that finds the mark
//! reads the precise clock instead, clears the mark and wakes the thread: the first poll or
//! lock operation after a quiet spell pays one `Instant::now()` and one wakeup, and every
//! duration stays as exact as when the thread never slept.
//!
//! **Late ticks.** The upkeep thread is an ordinary thread: on a saturated machine the
//! scheduler can leave it waiting for tens or hundreds of milliseconds. The clock then stands
//! still, and a poll that began during that spell read the spell's first value as its start,
//! which makes it look that much longer than it was. The upkeep thread records every spell
//! longer than [`LATE_AFTER_TICKS`] ticks in a [`LateSpells`] ledger, and every duration that
//! reaches the threshold is read through [`at_least`]: a start read during a late spell counts
//! from the spell's end. A slow poll is reported only when it was slow by that lower bound; a
//! poll that only looked slow because the clock stood still is timed to what it can be shown to
//! have lasted. Polls under the threshold never look at the ledger.
//!
//! **Busy.** Each tick takes a core from a worker on a saturated machine. Production mode's
//! workers [`refresh`] the clock as they park and unpark; when [`FRESH_LOOKS`] looks in a row
//! find it less than a tick old while polls run (or none runs), the upkeep thread ticks every
//! [`BUSY_TICKS`] ticks, and goes back to every tick at the first look that
//! finds it stale. A refresh never ends a spell longer than a late one (the upkeep thread does,
//! and records it), so the guarantees above hold unchanged.

use std::sync::atomic::{
    fence, AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::config::DEFAULT_CLOCK_TICK;

mod counter;

/// Which clock the process times with, fixed by the first instance ([`fix_tick`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The CPU's invariant counter, ticking `hz` times a second.
    Counter { hz: u64 },
    /// The coarse clock, because the counter is not trusted here (`why`) or was not asked for.
    Coarse { why: &'static str },
}

/// What the upkeep thread asks of the rest of the crate, registered once by the wiring
/// (`crate::builder`): the clock imports neither the watchdog nor the report.
#[derive(Debug)]
pub(crate) struct Upkeep {
    /// The watchdog's look after each tick, at the clock's value `now`: whether anything
    /// running needs the clock kept.
    pub(crate) look: fn(now: u64) -> bool,
    /// Whether a worker is polling a task now.
    pub(crate) polling: fn() -> bool,
    /// Whether a worker with park hooks is unparked now (it wakes the watchdog only as it
    /// unparks, so the watchdog of the CPU's counter stays awake while one is).
    pub(crate) unparked: fn() -> bool,
    /// Whether there are worker slots to watch at all (`tokio_unstable`): with the CPU's
    /// counter and none, no thread is needed.
    pub(crate) watching: bool,
    /// The upkeep thread could not start (said from the reporter thread).
    pub(crate) no_thread: fn(std::io::Error),
    /// The kernel stopped timing with the CPU's counter after the process chose it: it uses
    /// this clocksource now (said once, from the reporter thread).
    pub(crate) counter_left: fn(String),
}

static UPKEEP: OnceLock<Upkeep> = OnceLock::new();

/// Registers what the upkeep thread calls (the first registration stays). Until then it only
/// ticks.
pub(crate) fn register_upkeep(upkeep: Upkeep) {
    let _ = UPKEEP.set(upkeep);
}

/// How often the clock advances while anything runs, once fixed (see [`fix_tick`]).
static FIXED_TICK: OnceLock<Duration> = OnceLock::new();

/// The upkeep thread marks the clock idle after this long without a poll in progress.
const IDLE_AFTER: Duration = Duration::from_millis(10);

/// While the clock is idle, the upkeep thread still looks at the worker slots this often: a
/// poll that read the clock just before it went idle is watched from then on.
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// Set in the clock's value while the upkeep thread sleeps: readers read the precise clock.
/// The top bit, so that a hot path that subtracts a start from a marked value gets a duration
/// too long to be a fast poll and lands on its slow path, where it checks.
const IDLE: u64 = 1 << 63;

static CLOCK: CoarseClock = CoarseClock::new();

/// A spell in which the clock did not advance for more than this many ticks is recorded as
/// late: durations measured across it are confirmed through [`at_least`]. A shorter delay of
/// the upkeep thread (one tick of scheduling slack is common under load) makes a duration read
/// long by at most this many ticks, within the resolution the clock promises.
const LATE_AFTER_TICKS: u32 = 4;

/// Late spells kept: enough to look back over the longest stall on a machine where the upkeep
/// thread is delayed hundreds of times a second; a start older than every spell kept is
/// bounded by the oldest one (never overstated).
const LATE_SPELLS: usize = 1024;

static LATE: LateSpells = LateSpells::new();

/// Looks in a row that must find the clock refreshed by the workers (it stood less than a tick)
/// before the upkeep thread sleeps longer than a tick.
const FRESH_LOOKS: u32 = 4;

/// While the workers keep the clock fresh, the upkeep thread ticks every this many ticks:
/// half the longest spell that goes unrecorded ([`LATE_AFTER_TICKS`]), so that its thread
/// running a little late does not make the workers' refreshes stop ([`refresh`] leaves longer
/// spells to it).
const BUSY_TICKS: u32 = LATE_AFTER_TICKS / 2;

/// The source chosen with the tick.
static SOURCE: OnceLock<Source> = OnceLock::new();

/// Fixes the clock for the whole process on the first call: its source (the CPU's counter
/// unless `coarse` or untrusted) and its tick. Returns the tick and source in force: the
/// first caller's (the clock, its thread and every fast-poll count are per process). Before
/// any call the clock is coarse, with the default tick.
pub(crate) fn fix_tick(requested: Duration, coarse: bool) -> (Duration, Source) {
    let tick = *FIXED_TICK.get_or_init(|| {
        let fast_poll_ns = u64::try_from((requested * 2).as_nanos()).unwrap_or(u64::MAX);
        CLOCK.fast_poll_ns.store(fast_poll_ns, Relaxed);
        CLOCK.fast_poll_stamps.store(fast_poll_ns, Relaxed);
        let source = if coarse {
            Source::Coarse {
                why: "STALLSCOPE_CLOCK=coarse",
            }
        } else {
            match counter::Counter::detect() {
                Ok(counter) => {
                    CLOCK.use_counter(counter, fast_poll_ns);
                    Source::Counter { hz: counter.hz }
                }
                Err(why) => Source::Coarse { why },
            }
        };
        let _ = SOURCE.set(source);
        requested
    });
    (tick, source())
}

/// The source the process times with (coarse until [`fix_tick`]).
pub(crate) fn source() -> Source {
    SOURCE.get().copied().unwrap_or(Source::Coarse {
        why: "no instance yet",
    })
}

/// Whether stamps are the CPU's counter (fixed before any stamp is read: every instance
/// fixes the clock as it is made, before its hooks or layer run).
#[inline(always)]
pub(crate) fn precise() -> bool {
    CLOCK.precise.load(Relaxed)
}

/// A stamp from the CPU's counter, for a caller that knows [`precise`] holds.
#[inline(always)]
pub(crate) fn counter_stamp() -> u64 {
    counter::read()
}

/// A stamp now: the CPU's counter, or the coarse clock's value as stored (which may be marked
/// [`is_idle`]; a hot path sorts that out off its fast path).
#[inline(always)]
pub(crate) fn stamp() -> u64 {
    if precise() {
        counter::read()
    } else {
        raw_ns()
    }
}

/// A stamp now, never marked idle (for the watchdog and cold paths).
pub(crate) fn stamp_now() -> u64 {
    if precise() {
        counter::read()
    } else {
        now_ns()
    }
}

/// A difference of stamps in nanoseconds.
#[inline]
pub(crate) fn stamp_ns(stamps: u64) -> u64 {
    if precise() {
        CLOCK.counter_ns(stamps)
    } else {
        stamps
    }
}

/// Durations under this many stamps are counted, not timed: [`fast_poll_ns`] in stamps.
#[inline(always)]
pub(crate) fn fast_poll_stamps() -> u64 {
    CLOCK.fast_poll_stamps.load(Relaxed)
}

/// [`at_least`] for two stamps, in nanoseconds: with the CPU's counter every stamp is
/// precise, and the duration is simply the difference.
pub(crate) fn stamps_at_least(start: u64, end: u64, threshold: Duration) -> u64 {
    if precise() {
        CLOCK.counter_ns(end.saturating_sub(start))
    } else {
        at_least(start, end, threshold)
    }
}

/// How often the watchdog looks at the workers while polls run, with the CPU's counter: a
/// tenth of the shortest slow-poll threshold of any instance, at most [`WATCH_PERIOD_MAX`] and
/// at least a tick. A stall is reported live within that of passing the threshold.
static WATCH_PERIOD_NS: AtomicU64 = AtomicU64::new(u64::MAX);

/// The watchdog's longest period while polls run (the default threshold's tenth).
const WATCH_PERIOD_MAX: Duration = Duration::from_millis(10);

/// An instance watches for polls longer than `threshold` (see [`WATCH_PERIOD_NS`]).
pub(crate) fn watch_for(threshold: Duration) {
    let period = u64::try_from(watch_period_for(threshold, tick()).as_nanos()).unwrap_or(u64::MAX);
    WATCH_PERIOD_NS.fetch_min(period, Relaxed);
}

/// A tenth of `threshold`, at most [`WATCH_PERIOD_MAX`] and at least a tick.
fn watch_period_for(threshold: Duration, tick: Duration) -> Duration {
    (threshold / 10).clamp(tick, WATCH_PERIOD_MAX.max(tick))
}

fn watch_period() -> Duration {
    match WATCH_PERIOD_NS.load(Relaxed) {
        u64::MAX => WATCH_PERIOD_MAX,
        ns => Duration::from_nanos(ns),
    }
}

/// Polls, waits and holds whose coarse duration is under this many nanoseconds are counted,
/// not timed: two ticks.
#[inline(always)]
pub(crate) fn fast_poll_ns() -> u64 {
    CLOCK.fast_poll_ns.load(Relaxed)
}

fn tick() -> Duration {
    FIXED_TICK.get().copied().unwrap_or(DEFAULT_CLOCK_TICK)
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The time in nanoseconds, never 0 (0 marks an idle worker slot): from the CPU's counter, or
/// the coarse time (the precise time while the upkeep thread sleeps). Never less than a value
/// this thread read before.
#[inline]
pub(crate) fn now_ns() -> u64 {
    if CLOCK.precise.load(Acquire) {
        return CLOCK.counter_now_ns();
    }
    CLOCK.now()
}

/// The clock's value as stored, for the poll hooks: the coarse time, or a value marked
/// [`is_idle`] that they must replace with [`now_ns`] (off their fast path).
#[inline(always)]
pub(crate) fn raw_ns() -> u64 {
    CLOCK.now.load(Relaxed)
}

/// Whether a value from [`raw_ns`] is the idle mark rather than a time.
#[inline(always)]
pub(crate) fn is_idle(raw: u64) -> bool {
    raw & IDLE != 0
}

/// A duration measured on the clock from `start` to `end`, for comparing with `threshold`:
/// `end - start` while that is under the threshold (as exact as the clock is: a few ticks at
/// worst when its thread ran a little late); at or over it, only what can be shown: when
/// `start` was read while the clock stood still in a late spell, the poll (or wait) may have
/// begun any time before the spell ended, and only `end - (end of the spell)` is certain. `end`
/// needs no correction: a stale end only understates.
///
/// For every duration that is compared with the threshold (polls, lock waits), and recorded as
/// such, so that no histogram holds a slow value its report denies. Cost: one compare under
/// the threshold; at or over it, one load while no spell was recorded since `start`, a short
/// backwards walk otherwise.
#[inline]
pub(crate) fn at_least(start: u64, end: u64, threshold: std::time::Duration) -> u64 {
    let measured = end.saturating_sub(start);
    if u128::from(measured) < threshold.as_nanos() {
        return measured;
    }
    confirmed(start, end)
}

#[cold]
#[inline(never)]
fn confirmed(start: u64, end: u64) -> u64 {
    end.saturating_sub(LATE.start_bound(start))
}

/// One spell in which the clock stood still at `from` until the upkeep thread advanced it to
/// `to`. `from` doubles as the entry's sequence: 0 while the upkeep thread rewrites the entry.
struct LateSpell {
    from: AtomicU64,
    to: AtomicU64,
}

/// The clock's recent late spells, in the order they happened (a ring the upkeep thread alone
/// writes; any thread reads it, lock-free).
struct LateSpells {
    spells: [LateSpell; LATE_SPELLS],
    /// Spells recorded since the process started; the newest is at `(recorded - 1) % LATE_SPELLS`.
    recorded: AtomicU64,
}

impl LateSpells {
    const fn new() -> Self {
        LateSpells {
            spells: [const {
                LateSpell {
                    from: AtomicU64::new(0),
                    to: AtomicU64::new(0),
                }
            }; LATE_SPELLS],
            recorded: AtomicU64::new(0),
        }
    }

    /// The clock stood at `from` until it was advanced to `to` (upkeep thread only).
    fn record(&self, from: u64, to: u64) {
        let n = self.recorded.load(Relaxed);
        let spell = &self.spells[(n % LATE_SPELLS as u64) as usize];
        // A reader that sees `from` unchanged around its read of `to` read this entry whole.
        spell.from.store(0, Relaxed);
        fence(Release);
        spell.to.store(to, Relaxed);
        spell.from.store(from, Release);
        self.recorded.store(n + 1, Release);
    }

    /// The latest time at which a reading of `start` can have been taken: the end of the late
    /// spell it was read in, `start` itself when it was read in no spell.
    fn start_bound(&self, start: u64) -> u64 {
        let recorded = self.recorded.load(Acquire);
        let kept = recorded.saturating_sub(LATE_SPELLS as u64);
        // Newest first: most durations are short, and the walk stops at the first spell that
        // began at or before `start`.
        let mut oldest_after_start = None;
        for n in (kept..recorded).rev() {
            let spell = &self.spells[(n % LATE_SPELLS as u64) as usize];
            let from = spell.from.load(Acquire);
            let to = spell.to.load(Relaxed);
            fence(Acquire);
            if from == 0 || spell.from.load(Relaxed) != from {
                // Rewritten under us: spells this old are being overwritten.
                return oldest_after_start.unwrap_or(start).max(start);
            }
            if from > start {
                oldest_after_start = Some(from);
                continue;
            }
            return if start < to { to } else { start };
        }
        if kept > 0 {
            // Spells before the oldest kept one are forgotten; one may have held `start`, and
            // it ended before the oldest kept one began.
            return oldest_after_start.unwrap_or(start).max(start);
        }
        start
    }
}

/// The process's coarse clock: a time, and the thread that keeps it.
struct CoarseClock {
    now: AtomicU64,
    /// Durations whose coarse value is under two ticks are "fast": counted, not timed (a
    /// coarse duration of one tick may be a poll of nanoseconds that straddled a tick). Beside
    /// the time, so a hook that read the time reaches it without another address load.
    fast_poll_ns: AtomicU64,
    /// [`fast_poll_ns`] in stamps.
    fast_poll_stamps: AtomicU64,
    /// Stamps are the CPU's counter (set once, before any is read).
    precise: AtomicBool,
    /// With the CPU's counter: nanoseconds per count (32.32 fixed point), and the counter's
    /// value and the time when it was chosen, so [`now_ns`] keeps the coarse clock's scale.
    ns_per_count_q32: AtomicU64,
    counter_base: AtomicU64,
    counter_base_ns: AtomicU64,
    /// With the CPU's counter: the watchdog sleeps until a worker wakes it (no poll ran for a
    /// while).
    watcher_idle: AtomicBool,
    upkeep: OnceLock<Thread>,
}

impl CoarseClock {
    const fn new() -> Self {
        CoarseClock {
            now: AtomicU64::new(1),
            fast_poll_ns: AtomicU64::new(2 * DEFAULT_CLOCK_TICK.as_nanos() as u64),
            fast_poll_stamps: AtomicU64::new(2 * DEFAULT_CLOCK_TICK.as_nanos() as u64),
            precise: AtomicBool::new(false),
            ns_per_count_q32: AtomicU64::new(1 << 32),
            counter_base: AtomicU64::new(0),
            counter_base_ns: AtomicU64::new(0),
            watcher_idle: AtomicBool::new(false),
            upkeep: OnceLock::new(),
        }
    }

    /// Times with `counter` from now on (once, before any stamp is read).
    fn use_counter(&self, counter: counter::Counter, fast_poll_ns: u64) {
        self.ns_per_count_q32
            .store(counter.ns_per_count_q32, Relaxed);
        self.counter_base_ns.store(precise_ns(), Relaxed);
        self.counter_base.store(counter::read(), Relaxed);
        // Counts in two ticks, rounded up.
        let per_ns = u128::from(counter.ns_per_count_q32);
        let stamps = ((u128::from(fast_poll_ns) << 32).div_ceil(per_ns)).min(u128::from(u64::MAX));
        self.fast_poll_stamps.store(stamps as u64, Relaxed);
        self.precise.store(true, Release);
    }

    /// `counts` of the CPU's counter in nanoseconds.
    #[inline]
    fn counter_ns(&self, counts: u64) -> u64 {
        counter::Counter {
            ns_per_count_q32: self.ns_per_count_q32.load(Relaxed),
            hz: 0,
        }
        .ns(counts)
    }

    /// The time from the CPU's counter, on the coarse clock's scale; never 0, never marked.
    #[inline]
    fn counter_now_ns(&self) -> u64 {
        let counts = counter::read().saturating_sub(self.counter_base.load(Relaxed));
        let ns = self.counter_base_ns.load(Relaxed) + self.counter_ns(counts);
        ns.clamp(1, IDLE - 1)
    }

    #[inline]
    fn now(&self) -> u64 {
        let now = self.now.load(Relaxed);
        if is_idle(now) {
            return self.wake_up(now);
        }
        now
    }

    /// The clock was idle: the precise time, published, and the upkeep thread woken if this
    /// call is the one that ended the idle spell.
    #[cold]
    #[inline(never)]
    fn wake_up(&self, mut seen: u64) -> u64 {
        let precise = precise_ns();
        // No thread keeps the clock (it could not start): it stays idle, and every read is a
        // precise one.
        let stay_idle = self.upkeep.get().is_none();
        loop {
            if !is_idle(seen) {
                // Another reader ended the spell (or the upkeep thread woke) meanwhile: its
                // time is as fresh, and returning a later one the clock does not hold would
                // let this thread's next read go back.
                return seen;
            }
            // A time is only ever replaced by a later one, so a thread that read a time here
            // never reads an earlier one after it, idle mark or not.
            let now = precise.max(seen & !IDLE);
            let new = if stay_idle { now | IDLE } else { now };
            match self.now.compare_exchange_weak(seen, new, Relaxed, Relaxed) {
                Ok(_) => {
                    if let Some(thread) = self.upkeep.get() {
                        thread.unpark();
                    }
                    return now;
                }
                Err(current) => seen = current,
            }
        }
    }

    /// Advances the clock to the precise time and clears the idle mark; a later time a reader
    /// published meanwhile stays.
    fn advance(&self) -> u64 {
        let now = precise_ns();
        let kept = self
            .now
            .fetch_update(Relaxed, Relaxed, |current| Some((current & !IDLE).max(now)));
        kept.map_or(now, |previous| (previous & !IDLE).max(now))
    }

    /// Marks the clock idle: readers read the precise time until one of them, or
    /// [`advance`](Self::advance), clears the mark.
    fn go_idle(&self) {
        self.now.fetch_or(IDLE, Relaxed);
    }

    fn is_idle(&self) -> bool {
        is_idle(self.now.load(Relaxed))
    }
}

/// The precise time on the clock's scale: never 0, never reaching the idle mark (that is
/// 292 years).
fn precise_ns() -> u64 {
    let ns = u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX);
    ns.clamp(1, IDLE - 1)
}

/// Marks the process's clock idle, as its thread does after a quiet spell (tests of the
/// paths that read it).
#[cfg(test)]
pub(crate) fn go_idle_now() {
    CLOCK.go_idle();
}

fn origin() -> &'static Instant {
    ORIGIN.get_or_init(Instant::now)
}

/// Starts the thread that advances the clock (once per process). With `tokio_unstable` the
/// same thread is the watchdog: each tick it also looks at the worker slots for live stalls.
pub(crate) fn start_upkeep() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        let watching = UPKEEP.get().is_none_or(|upkeep| upkeep.watching);
        if CLOCK.precise.load(Acquire) && !watching {
            // The CPU's counter needs no keeping and there are no workers to watch (a build
            // without `tokio_unstable`): no thread at all.
            return;
        }
        CLOCK.advance();
        let spawned = std::thread::Builder::new()
            .name("stallscope-watchdog".into())
            .spawn(|| upkeep(&CLOCK));
        if let Err(e) = spawned {
            CLOCK.go_idle();
            if let Some(upkeep) = UPKEEP.get() {
                (upkeep.no_thread)(e);
            }
        }
    });
}

/// The upkeep thread: ticks while polls run and sleeps, the clock marked idle, once none has
/// for [`IDLE_AFTER`].
fn upkeep(clock: &CoarseClock) -> ! {
    // Known before this thread first marks the clock idle, so readers can wake it.
    let _ = clock.upkeep.set(std::thread::current());
    if clock.precise.load(Acquire) {
        watch(clock);
    }
    let tick = tick();
    let idle_after = u64::try_from(IDLE_AFTER.as_nanos()).unwrap_or(u64::MAX);
    let late_after = u64::try_from((tick * LATE_AFTER_TICKS).as_nanos()).unwrap_or(u64::MAX);
    let tick_ns = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
    // How long this thread sleeps between ticks: one tick, or `BUSY_TICKS` ticks while the
    // workers keep the clock fresh themselves.
    let mut period = tick;
    let mut fresh_looks = 0u32;
    // The last look that found a poll in progress (or the end of the last idle spell).
    let mut last_busy = clock.now.load(Relaxed);
    loop {
        if clock.is_idle() {
            std::thread::park_timeout(IDLE_LOOK);
            // Woken by a reader (the mark is gone), or time to look at the slots.
            if clock.is_idle() && !polling() {
                continue;
            }
            (period, fresh_looks) = (tick, 0);
            last_busy = clock.now.load(Relaxed) & !IDLE;
        } else {
            std::thread::sleep(period);
        }
        let (stood, now) = advance_noting_late_spell(clock, late_after);
        // Busy workers refresh the clock themselves ([`refresh`]), keeping it within a tick of
        // the time; then this thread's ticks, each of which takes a core from a worker on a
        // saturated machine, buy nothing. It sleeps longer once several looks in a row found
        // the clock fresh, never longer than a spell that goes unrecorded, and goes back to
        // every tick at the first look that finds it stale: every duration stays as true as
        // with a tick every tick.
        let busy = look(now);
        // Between polls the clock may stand: a worker refreshes it when it unparks, before
        // its next poll reads it.
        if stood < tick_ns || !busy {
            fresh_looks += 1;
            if fresh_looks >= FRESH_LOOKS {
                period = tick * BUSY_TICKS;
            }
        } else {
            (period, fresh_looks) = (tick, 0);
        }
        if busy {
            last_busy = now;
            continue;
        }
        if now.saturating_sub(last_busy) >= idle_after {
            last_busy = now;
            clock.go_idle();
            // A poll that began since the look read the last tick as its start: keep ticking
            // for it. One that begins later finds the mark and wakes this thread.
            if polling() {
                clock.advance();
            }
        }
    }
}

/// Looks (without a clock to keep) that must find no poll in progress, in a row, before the
/// watchdog sleeps until a worker wakes it: at the longest period, 50 ms without a poll seen,
/// so a busy worker whose polls the looks keep missing is not taken for an idle one.
const QUIET_LOOKS: u32 = 5;

/// How often the watchdog reads the kernel's clocksource again, with the CPU's counter.
const CLOCKSOURCE_LOOK: Duration = Duration::from_secs(10);

/// The upkeep thread with the CPU's counter: nothing to keep, so it is the watchdog alone. It
/// looks every [`watch_period`] while polls run; after [`QUIET_LOOKS`] looks without one it
/// sleeps, looking every [`IDLE_LOOK`], until a worker unparks or starts ([`wake_watcher`]).
/// Every [`CLOCKSOURCE_LOOK`] it checks that the kernel still times with the counter.
fn watch(clock: &CoarseClock) -> ! {
    let mut quiet_looks = 0u32;
    let mut clocksource_looked = Instant::now();
    let mut counter_left = false;
    loop {
        if !counter_left && clocksource_looked.elapsed() >= CLOCKSOURCE_LOOK {
            clocksource_looked = Instant::now();
            if let Some(now) = counter::kernel_switched_away(counter::kernel_clocksource()) {
                counter_left = true;
                if let Some(upkeep) = UPKEEP.get() {
                    (upkeep.counter_left)(now);
                }
            }
        }
        if clock.watcher_idle.load(Relaxed) {
            std::thread::park_timeout(IDLE_LOOK);
            if clock.watcher_idle.load(Relaxed) && !polling() {
                continue;
            }
            clock.watcher_idle.store(false, Relaxed);
            quiet_looks = 0;
        } else {
            std::thread::sleep(watch_period());
        }
        // A worker with park hooks that is unparked keeps the watchdog awake even when the
        // looks miss its polls: it would wake the watchdog only at its next unpark.
        if look(stamp_now()) || unparked() {
            quiet_looks = 0;
            continue;
        }
        quiet_looks += 1;
        if quiet_looks >= QUIET_LOOKS {
            clock.watcher_idle.store(true, Relaxed);
            // Paired with the fence of a worker that unparks (or starts) and then reads the
            // mark: either it sees the mark and wakes this thread, or this thread sees it
            // running here and stays awake. A worker without park hooks (full mode) reads the
            // mark at each poll, without a fence: a poll that begins as this thread goes to
            // sleep is watched from the next look, at most `IDLE_LOOK` later.
            fence(SeqCst);
            if polling() || unparked() {
                clock.watcher_idle.store(false, Relaxed);
            }
        }
    }
}

/// Wakes the watchdog if it sleeps for want of polls (with the CPU's counter): a worker
/// unparked or started, and is about to poll. One load when it is awake.
#[inline]
pub(crate) fn wake_watcher() {
    if CLOCK.watcher_idle.load(Relaxed) {
        wake_watcher_now();
    }
}

#[cold]
#[inline(never)]
fn wake_watcher_now() {
    if CLOCK.watcher_idle.swap(false, Relaxed) {
        if let Some(thread) = CLOCK.upkeep.get() {
            thread.unpark();
        }
    }
}

/// Whether the watchdog sleeps for want of polls (full mode's hot path checks it, as the
/// coarse clock's idle mark).
#[inline(always)]
pub(crate) fn watcher_idle() -> bool {
    CLOCK.watcher_idle.load(Relaxed)
}

/// Advances the clock (upkeep thread), and records the spell since its last advance as late if
/// the clock stood still for longer than `late_after` nanoseconds while not idle (an idle
/// clock's readers read the precise time, so nothing was read stale).
/// Returns how long the clock stood (since anyone last advanced it) and the new time.
fn advance_noting_late_spell(clock: &CoarseClock, late_after: u64) -> (u64, u64) {
    let before = clock.now.load(Relaxed);
    let now = clock.advance();
    let stood = now.saturating_sub(before & !IDLE);
    if !is_idle(before) && stood > late_after {
        LATE.record(before, now);
    }
    (stood, now)
}

/// A worker brings the clock to the precise time (production mode: when it parks and when it
/// unparks, so never per poll). An idle clock is left to its readers,
/// who wake its thread; a clock that has stood longer than a late spell is left to the upkeep
/// thread, which records the spell, so that a start read during it stays bounded by
/// [`at_least`]: a refresh never hides one.
#[cold]
#[inline(never)]
pub(crate) fn refresh() {
    if CLOCK.precise.load(Relaxed) {
        // Nothing to bring: the counter is the time.
        return;
    }
    let current = CLOCK.now.load(Relaxed);
    let now = precise_ns();
    // `LATE_AFTER_TICKS` ticks: twice the two ticks `fast_poll_ns` holds.
    let late_after = fast_poll_ns().saturating_mul(u64::from(LATE_AFTER_TICKS) / 2);
    if is_idle(current) || now.saturating_sub(current) > late_after {
        return;
    }
    // Only ever raises it: a value the upkeep thread stored meanwhile (or its idle mark, the
    // top bit) is larger and stays.
    CLOCK.now.fetch_max(now, Relaxed);
}

/// The upkeep thread's look after each tick: whether anything running needs the clock kept
/// (with `tokio_unstable`, the watchdog's look at the worker slots).
fn look(now: u64) -> bool {
    UPKEEP.get().is_some_and(|upkeep| (upkeep.look)(now))
}

/// Whether a worker is polling a task now.
fn polling() -> bool {
    UPKEEP.get().is_some_and(|upkeep| (upkeep.polling)())
}

/// Whether a worker with park hooks is unparked now.
fn unparked() -> bool {
    UPKEEP.get().is_some_and(|upkeep| (upkeep.unparked)())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_clock_reads_the_precise_time_and_wakes_its_thread() {
        let clock = CoarseClock::new();
        clock.advance();
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), before, "nothing advanced this clock");

        let _ = clock.upkeep.set(std::thread::current());
        clock.go_idle();
        let woken = clock.now();
        assert!(
            woken >= before + 5_000_000,
            "an idle clock read {woken} after {before}: it should read the precise time"
        );
        assert!(!clock.is_idle(), "the first reader clears the mark");
        assert_eq!(clock.now(), woken, "then the coarse time is kept again");
        // The reader unparked the upkeep thread (here, this one): parking returns at once.
        let parked = Instant::now();
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(parked.elapsed() < Duration::from_secs(5), "not woken");
    }

    #[test]
    fn without_its_thread_the_clock_stays_idle_and_reads_precisely() {
        let clock = CoarseClock::new();
        clock.advance();
        clock.go_idle();
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        let second = clock.now();
        assert!(
            clock.is_idle(),
            "no thread would keep the clock: it stays idle"
        );
        assert!(
            second >= first + 5_000_000,
            "{second} after {first}: reads should be precise"
        );
    }

    #[test]
    fn the_clock_never_runs_backwards_for_a_thread_across_idle_spells() {
        let clock = &*Box::leak(Box::new(CoarseClock::new()));
        // A thread to wake (this one; the wakeups are never waited for).
        let _ = clock.upkeep.set(std::thread::current());
        clock.advance();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut last = clock.now();
                    for i in 0..20_000 {
                        if i % 7 == 0 {
                            clock.go_idle();
                        }
                        let now = clock.now();
                        assert!(now >= last, "the clock ran backwards: {now} after {last}");
                        assert!(!is_idle(now), "a time handed out is never marked");
                        last = now;
                    }
                })
            })
            .collect();
        for _ in 0..2_000 {
            clock.advance();
        }
        for reader in readers {
            reader.join().unwrap();
        }
    }

    #[test]
    fn a_start_read_in_a_late_spell_counts_from_the_spells_end() {
        let late = LateSpells::new();
        assert_eq!(late.start_bound(1_000), 1_000, "no spell: the start stands");
        // The clock stood at 10 ms until its thread advanced it to 300 ms.
        late.record(10_000_000, 300_000_000);
        assert_eq!(
            late.start_bound(10_000_000),
            300_000_000,
            "a poll that read 10 ms may have begun at any time up to 300 ms"
        );
        assert_eq!(
            late.start_bound(9_500_000),
            9_500_000,
            "read before the spell"
        );
        assert_eq!(late.start_bound(300_000_000), 300_000_000, "read after it");
        late.record(400_000_000, 420_000_000);
        assert_eq!(
            late.start_bound(10_000_000),
            300_000_000,
            "found behind a newer spell"
        );
        assert_eq!(late.start_bound(350_000_000), 350_000_000);
    }

    #[test]
    fn a_start_older_than_every_spell_kept_is_bounded_by_the_oldest_kept() {
        let late = Box::new(LateSpells::new());
        let ms = 1_000_000;
        // Spell k: the clock stood at (10k + 1) ms until (10k + 5) ms.
        for k in 0..(LATE_SPELLS as u64 + 10) {
            late.record((10 * k + 1) * ms, (10 * k + 5) * ms);
        }
        // Spell 0 (1 ms to 5 ms) is forgotten: a start of 1 ms may have been read in it.
        let oldest_kept_from = (10 * 10 + 1) * ms;
        assert_eq!(late.start_bound(ms), oldest_kept_from, "never overstated");
        let newest = 10 * (LATE_SPELLS as u64 + 9);
        assert_eq!(late.start_bound((newest + 1) * ms), (newest + 5) * ms);
        assert_eq!(late.start_bound((newest + 7) * ms), (newest + 7) * ms);
    }

    #[test]
    fn the_watchdog_looks_ten_times_per_threshold_within_its_bounds() {
        let ms = Duration::from_millis;
        let tick = Duration::from_micros(500);
        assert_eq!(watch_period_for(ms(100), tick), ms(10), "the default");
        assert_eq!(watch_period_for(ms(20), tick), ms(2));
        assert_eq!(watch_period_for(ms(1), tick), tick, "never under a tick");
        assert_eq!(
            watch_period_for(ms(5_000), tick),
            ms(10),
            "never over 10 ms"
        );
        assert_eq!(
            watch_period_for(ms(100), ms(50)),
            ms(50),
            "a 50 ms tick is the floor"
        );
    }

    #[test]
    fn durations_under_the_threshold_are_never_corrected() {
        let start = now_ns();
        let threshold = Duration::from_millis(100);
        assert_eq!(at_least(start, start + 99_999_999, threshold), 99_999_999);
        assert!(at_least(start, start + 500_000_000, threshold) <= 500_000_000);
    }
}
