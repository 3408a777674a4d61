//! Instrument names, units and attributes. docs/metrics.md's reference mirrors this file
//! (checked by `reference`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use opentelemetry::KeyValue;

use crate::engine::sites::{Site, TaskKind, OTHER};
use crate::engine::Engine;
use crate::snapshot::RuntimeStats;

pub(crate) struct Histograms {
    pub(crate) lock_wait: Histogram<f64>,
    pub(crate) lock_hold: Histogram<f64>,
    pub(crate) poll: Histogram<f64>,
    pub(crate) queue_wait: Histogram<f64>,
    pub(crate) blocking_run: Histogram<f64>,
}

impl Histograms {
    pub(crate) fn new(meter: &Meter, bounds: &[f64]) -> Self {
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(bounds.to_vec())
                .build()
        };
        Histograms {
            lock_wait: histogram(
                "tokio.lock.wait.duration",
                "Time a contended acquisition waited, by lock, operation and outcome (acquired or given up)",
            ),
            lock_hold: histogram(
                "tokio.lock.hold.duration",
                "Time a guard was held (holds of two clock ticks, 1 ms by default, and longer), by lock and operation",
            ),
            poll: histogram(
                "tokio.task.poll.duration",
                "Duration of each poll of an async task, by spawn location",
            ),
            queue_wait: histogram(
                "tokio.blocking.job.wait.duration",
                "Time a spawn_blocking job waited for a pool thread, by call site",
            ),
            blocking_run: histogram(
                "tokio.blocking.job.run.duration",
                "Time a spawn_blocking job ran on its pool thread, by call site",
            ),
        }
    }
}

/// `code.*` attributes of a site, and `tokio.task.name` when the task has one.
pub(crate) fn site_attributes(site: &Site) -> Vec<KeyValue> {
    let mut attributes = vec![KeyValue::new("code.file.path", site.location.file)];
    if site.location.file != OTHER {
        attributes.push(KeyValue::new(
            "code.line.number",
            i64::from(site.location.line),
        ));
        attributes.push(KeyValue::new(
            "code.column.number",
            i64::from(site.location.column),
        ));
    }
    if let Some(name) = site.task_name {
        attributes.push(KeyValue::new("tokio.task.name", name));
    }
    attributes
}

/// `code.*` attributes of a lock's creation site, `tokio.lock.kind`, and `tokio.lock.name`.
pub(crate) fn lock_attributes(lock: &crate::engine::locks::LockSite) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("code.file.path", lock.location.file),
        KeyValue::new("tokio.lock.kind", lock.kind.as_str()),
    ];
    if lock.location.file != OTHER {
        attributes.push(KeyValue::new(
            "code.line.number",
            i64::from(lock.location.line),
        ));
        attributes.push(KeyValue::new(
            "code.column.number",
            i64::from(lock.location.column),
        ));
    }
    if let Some(name) = lock.name {
        attributes.push(KeyValue::new("tokio.lock.name", name));
    }
    attributes
}

fn observe_locks(
    engine: &Weak<Engine>,
    mut f: impl FnMut(&crate::engine::locks::LockSite, &[KeyValue]),
) {
    let Some(engine) = engine.upgrade() else {
        return;
    };
    for lock in engine.locks.all() {
        if let Some(otel) = super::lock_instruments(lock) {
            f(lock, &otel.attributes);
        }
    }
}

fn observe_sites(engine: &Weak<Engine>, kind: TaskKind, mut f: impl FnMut(&Site, &[KeyValue])) {
    let Some(engine) = engine.upgrade() else {
        return;
    };
    engine.sites.for_each(|site| {
        if site.kind == kind {
            if let Some(otel) = super::site_instruments(site) {
                f(site, &otel.attributes);
            }
        }
    });
}

fn observe_runtimes(engine: &Weak<Engine>, mut f: impl FnMut(&RuntimeStats, &[KeyValue])) {
    let Some(engine) = engine.upgrade() else {
        return;
    };
    for runtime in engine.runtimes.snapshot() {
        let attributes = [KeyValue::new("tokio.runtime.id", runtime.runtime.clone())];
        f(&runtime, &attributes);
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Counters and gauges read from the engine whenever the reader collects.
pub(crate) fn register_observables(meter: &Meter, engine: Weak<Engine>) {
    let e = Arc::new(engine);

    // Per site.
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.task.slow_polls")
        .with_unit("{poll}")
        .with_description("Polls at or over the slow-poll threshold, by spawn location")
        .with_callback(move |o| {
            observe_sites(&w, TaskKind::Async, |s, a| {
                o.observe(s.slow_count.load(Relaxed), a)
            })
        })
        .build();
    let w = e.clone();
    meter
        .f64_observable_counter("tokio.task.busy.time")
        .with_unit("s")
        .with_description("Time spent polling tasks, by spawn location")
        .with_callback(move |o| {
            observe_sites(&w, TaskKind::Async, |s, a| o.observe(secs(s.busy.sum()), a))
        })
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.task.polls")
        .with_unit("{poll}")
        .with_description("Polls of async tasks, by spawn location (every poll, in both modes)")
        .with_callback(move |o| {
            // Exact, with what workers have counted and not yet published (production mode).
            let Some(polls) = w.upgrade().map(|e| e.async_site_polls()) else {
                return;
            };
            observe_sites(&w, TaskKind::Async, |s, a| {
                let count = polls.get(&(s as *const Site)).map_or(0, |h| h.count);
                o.observe(count, a)
            })
        })
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.task.spawns")
        .with_unit("{task}")
        .with_description("Tasks spawned, by spawn location")
        .with_callback(move |o| {
            observe_sites(&w, TaskKind::Async, |s, a| {
                o.observe(s.spawned.load(Relaxed), a)
            })
        })
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.blocking.job.slow_waits")
        .with_unit("{job}")
        .with_description("spawn_blocking jobs that waited at or over the threshold, by call site")
        .with_callback(move |o| {
            observe_sites(&w, TaskKind::Blocking, |s, a| {
                o.observe(s.slow_count.load(Relaxed), a)
            })
        })
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.blocking.jobs")
        .with_unit("{job}")
        .with_description("spawn_blocking jobs spawned, by call site")
        .with_callback(move |o| {
            observe_sites(&w, TaskKind::Blocking, |s, a| {
                o.observe(s.spawned.load(Relaxed), a)
            })
        })
        .build();

    // Per lock.
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.lock.acquisitions")
        .with_unit("{acquisition}")
        .with_description("Acquisitions of a lock, by lock")
        .with_callback(move |o| observe_locks(&w, |l, a| o.observe(l.acquisitions(), a)))
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.lock.contentions")
        .with_unit("{acquisition}")
        .with_description("Acquisitions of a lock that found it taken and waited, by lock")
        .with_callback(move |o| observe_locks(&w, |l, a| o.observe(l.contentions(), a)))
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.lock.blocking_waits")
        .with_unit("{acquisition}")
        .with_description(
            "Waits on a wrapped lock past the slow threshold by a thread polling a tokio task",
        )
        .with_callback(move |o| {
            observe_locks(&w, |l, a| o.observe(l.blocking_waits.load(Relaxed), a))
        })
        .build();
    let w = e.clone();
    meter
        .u64_observable_counter("tokio.lock.held_across_await")
        .with_unit("{poll}")
        .with_description(
            "Polls that ended with a guard of a wrapped lock still held (held across .await)",
        )
        .with_callback(move |o| {
            observe_locks(&w, |l, a| o.observe(l.held_across_await.load(Relaxed), a))
        })
        .build();

    // Per process.
    let w = e.clone();
    meter
        .u64_observable_gauge("tokio.runtimes")
        .with_unit("{runtime}")
        .with_description(
            "tokio runtimes stallscope watches in this process, and those dropped since the last export",
        )
        .with_callback(move |o| {
            if let Some(engine) = w.upgrade() {
                o.observe(engine.runtimes.in_snapshots() as u64, &[]);
            }
        })
        .build();

    // Per runtime.
    let gauge_u64 = |name: &'static str,
                     unit: &'static str,
                     description: &'static str,
                     read: fn(&RuntimeStats) -> u64| {
        let w = e.clone();
        meter
            .u64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                observe_runtimes(&w, |r, a| o.observe(read(r), a))
            })
            .build();
    };
    let counter_u64 = |name: &'static str,
                       unit: &'static str,
                       description: &'static str,
                       read: fn(&RuntimeStats) -> u64| {
        let w = e.clone();
        meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                observe_runtimes(&w, |r, a| o.observe(read(r), a))
            })
            .build();
    };
    gauge_u64(
        "tokio.runtime.worker.count",
        "{thread}",
        "Worker threads of the runtime",
        |r| r.workers as u64,
    );
    gauge_u64(
        "tokio.runtime.task.count",
        "{task}",
        "Tasks alive in the runtime",
        |r| r.alive_tasks as u64,
    );
    gauge_u64(
        "tokio.runtime.global_queue.depth",
        "{task}",
        "Tasks waiting in the runtime's global queue",
        |r| r.global_queue_depth as u64,
    );
    counter_u64(
        "tokio.runtime.worker.parks",
        "{park}",
        "Times worker threads parked (went idle)",
        |r| r.worker_parks,
    );
    let w = e.clone();
    meter
        .f64_observable_gauge("tokio.runtime.worker.utilization")
        .with_unit("1")
        .with_description(
            "Mean fraction of the last sampling interval the workers were busy polling (0 to 1)",
        )
        .with_callback(move |o| observe_runtimes(&w, |r, a| o.observe(r.worker_utilization, a)))
        .build();
    let w = e.clone();
    meter
        .f64_observable_counter("tokio.runtime.worker.busy.time")
        .with_unit("s")
        .with_description("Time workers spent busy, summed over workers")
        .with_callback(move |o| observe_runtimes(&w, |r, a| o.observe(secs(r.worker_busy_time), a)))
        .build();

    #[cfg(tokio_unstable)]
    {
        counter_u64(
            "tokio.runtime.worker.polls",
            "{poll}",
            "Task polls counted by tokio (misses LIFO-slot polls)",
            |r| r.worker_polls,
        );
        counter_u64(
            "tokio.runtime.worker.steals",
            "{task}",
            "Tasks stolen by one worker from another",
            |r| r.worker_steals,
        );
        counter_u64(
            "tokio.runtime.worker.overflows",
            "{task}",
            "Local-queue overflows into the global queue",
            |r| r.worker_overflows,
        );
        counter_u64(
            "tokio.runtime.remote_schedules",
            "{task}",
            "Tasks scheduled from outside the runtime",
            |r| r.remote_schedules,
        );
        counter_u64(
            "tokio.runtime.budget_forced_yields",
            "{yield}",
            "Forced yields after a task used up its coop budget",
            |r| r.budget_forced_yields,
        );
        gauge_u64(
            "tokio.runtime.local_queue.depth",
            "{task}",
            "Tasks in the workers' local queues, summed",
            |r| r.local_queue_depth as u64,
        );
        gauge_u64(
            "tokio.blocking.queue.depth",
            "{job}",
            "spawn_blocking jobs waiting for a pool thread",
            |r| r.blocking_queue_depth as u64,
        );
        let w = e.clone();
        meter
            .f64_observable_gauge("tokio.runtime.worker.mean_poll.duration")
            .with_unit("s")
            .with_description("tokio's moving average of task poll duration")
            .with_callback(move |o| {
                observe_runtimes(&w, |r, a| o.observe(secs(r.mean_poll_duration), a))
            })
            .build();
        let w = e.clone();
        meter
            .u64_observable_gauge("tokio.blocking.threads")
            .with_unit("{thread}")
            .with_description("Blocking-pool threads by state (busy, idle)")
            .with_callback(move |o| {
                observe_runtimes(&w, |r, a| {
                    let idle = r.idle_blocking_threads as u64;
                    let busy = (r.blocking_threads as u64).saturating_sub(idle);
                    for (state, n) in [("busy", busy), ("idle", idle)] {
                        let mut attributes = a.to_vec();
                        attributes.push(KeyValue::new("state", state));
                        o.observe(n, &attributes);
                    }
                })
            })
            .build();
    }
}
