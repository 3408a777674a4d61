//! A clock whose thread the scheduler leaves waiting: on a saturated machine the clock's thread
//! can go unscheduled for hundreds of milliseconds, the clock stands still, and a short poll
//! that began during that spell reads as long. Reproduced on purpose: the clock's thread is
//! moved to a CPU of its own with a CPU hog and given `SCHED_IDLE`, so it runs only when the
//! hog lets it, while the worker polls 3 ms tasks on another CPU. Nothing may be reported as
//! slow; then, with the clock's thread freed, a real 300 ms block still is.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::capture::{reports_with, Mode};

/// The kernel thread id of the clock's thread (`stallscope-watchdog`, its name cut to 15 bytes).
fn clock_thread_tid() -> Option<libc::pid_t> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        (comm.trim_end() == "stallscope-watc")
            .then(|| task.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
fn pin(tid: libc::pid_t, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Gives thread `tid` the scheduling policy `policy` (`SCHED_IDLE` or `SCHED_OTHER`).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid thread id of this process and a valid parameter.
    let r = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    assert_eq!(
        r,
        0,
        "sched_setscheduler: {}",
        std::io::Error::last_os_error()
    );
}

const THRESHOLD: Duration = Duration::from_millis(40);

/// Four ticks of the default clock, and a tick for the edges: how much longer than it was a
/// duration can read when the clock's thread is late by less than a recorded spell.
const RESOLUTION: Duration = Duration::from_micros(2_500);

/// Spins a CPU-bound loop for 3 ms of wall time: real work, well under the threshold.
fn work_3ms() {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(3) {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

/// The scenario, in either mode (its own test binary per mode: the clock is per process).
pub fn starved_clock_reports_nothing_false(mode: Mode) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test pins the clock's thread and the worker to two different CPUs"
    );
    // A threshold of 40 ms: spells of the clock standing still longer than that come every
    // few hundred milliseconds here, so a run without the correction reports several.
    let guard = super::capture::stallscope(THRESHOLD, mode);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| pin(0, 1));
    if mode == Mode::Production {
        guard.instrument_runtime(&mut builder);
    }
    let runtime = builder.build().unwrap();
    // The first poll starts the clock's thread.
    runtime.block_on(async { tokio::spawn(async {}).await.unwrap() });
    // The thread names itself once it runs.
    let named_by = Instant::now() + Duration::from_secs(5);
    let clock = std::iter::repeat_with(|| {
        clock_thread_tid().or_else(|| {
            std::thread::sleep(Duration::from_millis(1));
            None
        })
    })
    .take_while(|_| Instant::now() < named_by)
    .flatten()
    .next()
    .expect("the clock's thread is running");
    pin(clock, 0);
    set_policy(clock, libc::SCHED_IDLE);
    let hogging = Arc::new(AtomicBool::new(true));
    // Two hogs: while either runs, a `SCHED_IDLE` thread waits.
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let hogging = hogging.clone();
            std::thread::spawn(move || {
                pin(0, 0);
                let mut x = 0u64;
                while hogging.load(Relaxed) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();

    let short_polls = line!() + 1;
    let busy = runtime.spawn(async {
        // Each poll's real length on the precise clock: the worker itself can be preempted
        // (the machine is shared), which makes a poll really slow. Counted, so that every
        // poll stallscope calls slow can be matched with one that was.
        let mut really_slow = 0u64;
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let poll_began = Instant::now();
            work_3ms();
            // Within the clock's resolution of the threshold counts: a delay of its thread
            // shorter than a late spell (4 ticks) is not corrected.
            really_slow += u64::from(poll_began.elapsed() + RESOLUTION >= THRESHOLD);
            tokio::task::yield_now().await;
        }
        really_slow
    });
    let really_slow = runtime.block_on(busy).unwrap();
    hogging.store(false, Relaxed);
    for hog in hogs {
        hog.join().unwrap();
    }
    set_policy(clock, libc::SCHED_OTHER);

    // The guarantee, poll by poll: a poll is counted slow (and reported) only when it really
    // lasted that long, so stallscope never calls more polls slow than really were. A poll
    // read long only because the clock stood still would be one more. (Under the threshold
    // a duration is kept as read: a few ticks long when the clock's thread ran late, which
    // no report acts on.)
    let site = format!("support/late_clock.rs:{short_polls}:");
    let counted_slow = guard
        .snapshot()
        .tasks_in("support/late_clock.rs")
        .find(|t| t.location.line == short_polls)
        .map(|t| t.slow_polls)
        .expect("the short polls' site");
    let reported_slow: Vec<String> = reports_with("slow poll")
        .into_iter()
        .filter(|r| r.contains(&site))
        .collect();
    assert!(
        counted_slow <= really_slow && reported_slow.len() as u64 <= really_slow,
        "{really_slow} of the 3 ms polls really took {THRESHOLD:?} or more, within {RESOLUTION:?} (the worker \
         preempted); stallscope counted {counted_slow} slow and reported these while the \
         clock's thread waited: {reported_slow:?}"
    );

    // Detection is intact: a real block, with the clock's thread free again.
    let real_block = line!() + 1;
    let block = runtime.spawn(async { std::thread::sleep(Duration::from_millis(300)) });
    runtime.block_on(block).unwrap();
    drop(runtime);
    let reported = reports_with(&format!("support/late_clock.rs:{real_block}:"));
    assert!(
        reported.iter().any(|r| r.contains("slow poll")),
        "a real 300 ms block is still reported: {reported:?}"
    );
}
