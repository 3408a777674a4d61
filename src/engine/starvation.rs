//! Blocking-pool starvation episodes: a stretch of time in which `spawn_blocking` jobs queue
//! because every pool thread is busy. The report speaks once when an episode begins (what
//! occupies the pool, who waits) and once when it ends, instead of once per job.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sites::{Site, SiteTable, TaskKind};
use crate::snapshot::RuntimeStats;

#[derive(Debug, Default)]
pub(crate) struct Starvation {
    episode: Mutex<Option<Episode>>,
}

#[derive(Debug)]
struct Episode {
    began: Instant,
    slow_waits: u64,
    longest_wait: Duration,
    peak_queue_depth: usize,
    /// A slow wait since the last sample keeps the episode open even if the sampler saw an
    /// empty queue (short bursts fall between samples).
    waited_since_sample: bool,
}

/// Pool state at one moment, for the report.
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub(crate) queue_depth: usize,
    pub(crate) busy_threads: usize,
    pub(crate) threads: usize,
    /// `(site, jobs running)`, most first.
    pub(crate) occupying: Vec<(&'static Site, i64)>,
    /// `(site, jobs queued)`, most first.
    pub(crate) waiting: Vec<(&'static Site, i64)>,
}

impl PoolState {
    fn read(sites: &SiteTable, runtimes: &[RuntimeStats]) -> PoolState {
        let mut state = PoolState::default();
        for r in runtimes {
            state.queue_depth += r.blocking_queue_depth;
            state.threads += r.blocking_threads;
            state.busy_threads += r.blocking_threads.saturating_sub(r.idle_blocking_threads);
        }
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
}

impl Starvation {
    /// A job waited `wait` (over the threshold) before it started.
    pub(crate) fn slow_wait(&self, wait: Duration, sites: &SiteTable, runtimes: &[RuntimeStats]) {
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        let e = episode.get_or_insert_with(|| {
            let state = PoolState::read(sites, runtimes);
            crate::report::starvation_began(&state, Some(wait));
            Episode::new(state.queue_depth)
        });
        e.slow_waits += 1;
        e.longest_wait = e.longest_wait.max(wait);
        e.waited_since_sample = true;
    }

    /// The sampler's view: a queue that is not empty begins an episode, an empty one (with no
    /// slow wait since the last sample) ends it.
    pub(crate) fn sample(&self, sites: &SiteTable, runtimes: &[RuntimeStats]) {
        let depth: usize = runtimes.iter().map(|r| r.blocking_queue_depth).sum();
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        match episode.as_mut() {
            None if depth > 0 => {
                let state = PoolState::read(sites, runtimes);
                crate::report::starvation_began(&state, None);
                *episode = Some(Episode::new(depth));
            }
            Some(e) if depth > 0 || e.waited_since_sample => {
                e.peak_queue_depth = e.peak_queue_depth.max(depth);
                e.waited_since_sample = false;
            }
            Some(e) => {
                crate::report::starvation_ended(
                    e.began.elapsed(),
                    e.slow_waits,
                    e.longest_wait,
                    e.peak_queue_depth,
                );
                *episode = None;
            }
            None => {}
        }
    }
}

impl Episode {
    fn new(depth: usize) -> Episode {
        Episode {
            began: Instant::now(),
            slow_waits: 0,
            longest_wait: Duration::ZERO,
            peak_queue_depth: depth,
            waited_since_sample: false,
        }
    }
}
