//! The coarse clock's thread sleeps while nothing runs: an idle process is not woken every
//! 0.5 ms, and what runs after a quiet spell (or across one) is timed as exactly as before.

use std::time::Duration;

use super::capture::{lock_stats, reports_with, Mode};
use stallscope::sync::Mutex;

/// Times the clock's thread has gone to sleep and woken up so far (Linux: its voluntary
/// context switches).
fn clock_thread_wakeups() -> u64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "stallscope-watc" {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .expect("voluntary_ctxt_switches in /proc status");
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    panic!("no stallscope-watchdog thread");
}

/// Counts the clock thread's wakeups over `window`, starting after `settle`, on a thread of its
/// own while the caller goes on.
pub fn count_clock_wakeups(settle: Duration, window: Duration) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        std::thread::sleep(settle);
        let before = clock_thread_wakeups();
        std::thread::sleep(window);
        clock_thread_wakeups() - before
    })
}

/// Waits on a timer while the process idles, then stalls its worker for 400 ms: its second
/// poll begins on an idle clock.
async fn stall_after_idling() {
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::thread::sleep(Duration::from_millis(400));
}

/// The scenario, in either mode: its own test binary per mode (the clock and its thread are
/// per process, and another test's polls would keep it awake).
pub fn idle_then_timed(mode: Mode) {
    let guard = super::capture::stallscope(Duration::from_millis(100), mode);
    let runtime = super::capture::runtime(guard, mode);
    runtime.block_on(async {
        tokio::spawn(async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    });

    let measure_idle = count_clock_wakeups(Duration::from_millis(200), Duration::from_millis(400));
    let site = line!() + 1;
    let task = runtime.spawn(stall_after_idling());
    runtime.block_on(task).unwrap();
    // The join handle can resolve before tokio calls the after-poll hook of the task's last
    // poll (production mode): the runtime's shutdown waits for its workers.
    drop(runtime);

    // Ticking, the thread would wake ~800 times in 400 ms; asleep, it looks at the workers
    // every 100 ms.
    let wakeups = measure_idle.join().unwrap();
    assert!(
        wakeups <= 20,
        "the clock's thread woke {wakeups} times in 400 ms of idleness"
    );
    // The stall's poll started on the precise time and ended on the clock it woke (a tick
    // behind at most, more if the clock's thread is slow to run).
    let snapshot = guard.snapshot();
    let task = snapshot
        .tasks_in("support/idle.rs")
        .find(|t| t.location.line == site)
        .expect("the stalling task's site");
    assert!(
        (Duration::from_millis(390)..Duration::from_millis(700)).contains(&task.polls.max),
        "a 400 ms poll that began on an idle clock measured {:?}",
        task.polls.max
    );
    // The clock's thread, woken by that poll's start, watched it and reported it live.
    let reports = reports_with(&format!("support/idle.rs:{site}:"));
    let live = reports.iter().filter(|r| r.contains("stall in progress"));
    assert_eq!(live.count(), 1, "one live report of the stall: {reports:?}");

    // A hold across a quiet spell: the clock sleeps during it, and its end reads the precise
    // time.
    let lock = Mutex::named("held-while-idle", ());
    std::thread::sleep(Duration::from_millis(100));
    {
        let _held = lock.lock().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let hold = lock_stats(guard, "held-while-idle").hold;
    assert!(
        (Duration::from_millis(299)..Duration::from_millis(800)).contains(&hold.max),
        "a 300 ms hold across idleness measured {:?}",
        hold.max
    );
}
