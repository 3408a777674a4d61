//! The drop-in wrappers and `task::spawn_blocking` measure into the process's default instance
//! (the first started) unless given a `Handle` on another: then what they measure, and the
//! blocking lock wait they report, belong to that instance alone.

mod support;

use std::time::Duration;

use stallscope::sync::Mutex;
use support::capture::{self, reports_with_all, runtime, Mode, REPORTS};

#[test]
fn a_handle_sends_wrappers_and_blocking_jobs_to_its_own_instance() {
    capture::capture_reports();
    // The default instance: started first, with a threshold no wait here reaches.
    let default = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(400))
        .build()
        .unwrap()
        .guard();
    let other_layer = stallscope::Builder::new()
        .slow_poll_threshold(Duration::from_millis(20))
        .build()
        .unwrap();
    let other = other_layer.guard();
    let handle = other_layer.handle();
    let runtime = runtime(&other, Mode::Production);

    let theirs = std::sync::Arc::new(Mutex::named_in("theirs", 0u32, &handle));
    let defaults = Mutex::named("default's", 0u32);
    *defaults.lock().unwrap() += 1;

    // A task of the other instance's runtime waits 100 ms for its lock: over its 20 ms.
    let held = theirs.clone();
    let holder = support::capture::hold_elsewhere(move |held_now| {
        let _guard = held.lock().unwrap();
        held_now();
        std::thread::sleep(Duration::from_millis(100));
    });
    let waiter = theirs.clone();
    let task = runtime.spawn(async move { *waiter.lock().unwrap() += 1 });
    runtime.block_on(task).unwrap();
    holder.join().unwrap();

    // A blocking job through the handle, and one through the default.
    let (in_other, in_default) = runtime.block_on(async {
        let line = line!() + 1;
        let job = stallscope::task::spawn_blocking_in(|| 1, &handle);
        let default_line = line!() + 1;
        let default_job = stallscope::task::spawn_blocking(|| 2);
        assert_eq!(job.await.unwrap() + default_job.await.unwrap(), 3);
        (line, default_line)
    });
    drop(runtime);

    let (mine, defaults_own) = (other.snapshot(), default.snapshot());
    let names = |s: &stallscope::Snapshot| -> Vec<Option<String>> {
        s.locks.iter().map(|l| l.name.clone()).collect()
    };
    assert_eq!(names(&mine), [Some("theirs".to_owned())], "{mine:#?}");
    assert_eq!(
        names(&defaults_own),
        [Some("default's".to_owned())],
        "{defaults_own:#?}"
    );
    let lock = &mine.locks[0];
    assert_eq!(lock.blocking_waits, 1, "{lock:#?}");
    let blocking_job_at = |s: &stallscope::Snapshot, line: u32| {
        s.blocking
            .iter()
            .any(|t| t.location.file.ends_with("explicit_handle.rs") && t.location.line == line)
    };
    assert!(blocking_job_at(&mine, in_other), "{mine:#?}");
    assert!(
        !blocking_job_at(&defaults_own, in_other),
        "{defaults_own:#?}"
    );
    // The default instance has no runtime with its hooks: its job runs unmeasured, as
    // `tokio::task::spawn_blocking`, and neither instance counts it.
    assert!(!blocking_job_at(&mine, in_default), "{mine:#?}");
    assert!(
        !blocking_job_at(&defaults_own, in_default),
        "{defaults_own:#?}"
    );

    // The wait is reported once, by the lock's own instance (its 20 ms threshold).
    assert!(other.flush_reports() && default.flush_reports());
    let waits = reports_with_all(&["blocking lock wait", "\"theirs\""]);
    assert_eq!(waits.len(), 1, "{:#?}", REPORTS.lock());
    assert!(waits[0].contains("threshold_ms=20.0"), "{waits:?}");
}
