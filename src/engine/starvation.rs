//! Blocking-pool starvation episodes: a stretch of time in which `spawn_blocking` jobs queue
//! because every pool thread is busy. The report speaks once when an episode begins (what
//! occupies the pool, who waits) and once when it ends, instead of once per job.
//!
//! Two sources tell of the pool, and each line says which number is whose: tokio's gauges
//! (queue depth, threads; every job, read live) and stallscope's counts per call site (jobs it
//! saw spawned: all of them in full mode, only `stallscope::task::spawn_blocking`'s in
//! production mode). What neither measured is said to be unknown, never printed as a zero.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::runtimes::{BlockingPool, Runtimes};
use super::sink::Sink;
use super::sites::{Site, SiteTable, TaskKind};

#[derive(Debug, Default)]
pub(crate) struct Starvation {
    episode: Mutex<Option<Episode>>,
}

#[derive(Debug)]
struct Episode {
    began: Instant,
    slow_waits: u64,
    longest_wait: Duration,
    /// Deepest queue and most threads tokio's gauges showed (`None`: not readable).
    peak: Option<BlockingPool>,
    /// Queue waits measured at call sites before the episode: the difference at its end is
    /// how many jobs started meanwhile with their wait known.
    waits_measured_before: u64,
    /// A slow wait since the last sample keeps the episode open even if the sampler saw an
    /// empty queue (short bursts fall between samples).
    waited_since_sample: bool,
}

/// Pool state at one moment, for the report: tokio's gauges and the call sites' counts read
/// together.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    /// Every job, from tokio's gauges; `None` when they cannot be read.
    pub(crate) pool: Option<BlockingPool>,
    /// `(site, jobs running)`, most first: jobs stallscope saw spawned.
    pub(crate) occupying: Vec<(&'static Site, i64)>,
    /// `(site, jobs queued)`, most first.
    pub(crate) waiting: Vec<(&'static Site, i64)>,
}

impl PoolState {
    /// The call sites' counts now, beside `pool` just read from tokio's gauges.
    fn read(pool: Option<BlockingPool>, sites: &SiteTable) -> PoolState {
        let mut state = PoolState {
            pool,
            ..PoolState::default()
        };
        sites.for_each(|site| {
            if site.kind == TaskKind::Blocking {
                let running = site.running.load(Relaxed);
                let queued = site.queued.load(Relaxed);
                if running > 0 {
                    state.occupying.push((site, running));
                }
                if queued > 0 {
                    state.waiting.push((site, queued));
                }
            }
        });
        state.occupying.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        state.waiting.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        state
    }

    /// Jobs queued by the call sites' counts.
    pub(crate) fn queued_at_sites(&self) -> i64 {
        self.waiting.iter().map(|(_, n)| n).sum()
    }

    /// Jobs running by the call sites' counts.
    pub(crate) fn running_at_sites(&self) -> i64 {
        self.occupying.iter().map(|(_, n)| n).sum()
    }
}

/// What an episode showed, for the report when it ends.
#[derive(Debug)]
pub(crate) struct EpisodeEnd {
    pub(crate) lasted: Duration,
    /// Jobs that started during the episode with their queue wait measured at a call site.
    pub(crate) waits_measured: u64,
    /// Of those, the ones over the threshold, and the longest of them.
    pub(crate) slow_waits: u64,
    pub(crate) longest_wait: Duration,
    /// Deepest queue and most threads by tokio's gauges (`None`: not readable).
    pub(crate) peak: Option<BlockingPool>,
}

/// Queue waits measured so far at every blocking call site.
fn waits_measured(sites: &SiteTable) -> u64 {
    let mut total = 0;
    sites.for_each(|site| {
        if site.kind == TaskKind::Blocking {
            total += site.queue_wait.count();
        }
    });
    total
}

impl Starvation {
    /// A job waited `wait` (over the threshold) before it started; its wait is already
    /// recorded at its site.
    pub(crate) fn slow_wait(
        &self,
        wait: Duration,
        sites: &SiteTable,
        runtimes: &Runtimes,
        sinks: &[Arc<dyn Sink>],
    ) {
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        let e = episode.get_or_insert_with(|| {
            let state = PoolState::read(runtimes.blocking_pools_now(), sites);
            for sink in sinks {
                sink.starvation_began(&state, Some(wait));
            }
            // This job started during the episode: its wait counts among the episode's.
            Episode::new(state.pool, waits_measured(sites).saturating_sub(1))
        });
        e.slow_waits += 1;
        e.longest_wait = e.longest_wait.max(wait);
        e.waited_since_sample = true;
    }

    /// The sampler's view: a queue that is not empty begins an episode, an empty one (with no
    /// slow wait since the last sample) ends it.
    pub(crate) fn sample(&self, sites: &SiteTable, runtimes: &Runtimes, sinks: &[Arc<dyn Sink>]) {
        let pool = runtimes.blocking_pools_now();
        let queueing = pool.is_some_and(|p| p.queue_depth > 0);
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        match episode.as_mut() {
            None if queueing => {
                let state = PoolState::read(pool, sites);
                for sink in sinks {
                    sink.starvation_began(&state, None);
                }
                *episode = Some(Episode::new(pool, waits_measured(sites)));
            }
            None => {}
            Some(e) => {
                e.note_pool(pool);
                if queueing || e.waited_since_sample {
                    e.waited_since_sample = false;
                } else {
                    let end = EpisodeEnd {
                        lasted: e.began.elapsed(),
                        waits_measured: waits_measured(sites)
                            .saturating_sub(e.waits_measured_before)
                            .max(e.slow_waits),
                        slow_waits: e.slow_waits,
                        longest_wait: e.longest_wait,
                        peak: e.peak,
                    };
                    for sink in sinks {
                        sink.starvation_ended(&end);
                    }
                    *episode = None;
                }
            }
        }
    }
}

impl Episode {
    fn new(pool: Option<BlockingPool>, waits_measured_before: u64) -> Episode {
        Episode {
            began: Instant::now(),
            slow_waits: 0,
            longest_wait: Duration::ZERO,
            peak: pool,
            waits_measured_before,
            waited_since_sample: false,
        }
    }

    fn note_pool(&mut self, pool: Option<BlockingPool>) {
        let Some(pool) = pool else { return };
        let peak = self.peak.get_or_insert(pool);
        peak.queue_depth = peak.queue_depth.max(pool.queue_depth);
        peak.busy_threads = peak.busy_threads.max(pool.busy_threads);
        peak.threads = peak.threads.max(pool.threads);
    }
}
