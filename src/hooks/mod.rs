//! Production mode's measurement source: tokio's `on_before_task_poll` / `on_after_task_poll`
//! hooks (`--cfg tokio_unstable`, no `tracing` feature needed). They see every poll of every
//! task, LIFO-slot polls included, and give the task's id and spawn location.
//!
//! The per-poll path is built to be left on: a thread-local slot and site cache, one relaxed
//! load of a coarse clock at each end, stores into this thread's own slot, and one atomic add
//! into this thread's histogram shard. No allocation, no lock, no shared cache line written by
//! two workers, no syscall. A watchdog thread advances the clock and watches the slots, so a
//! poll that is still running past the threshold is reported while it runs.

pub(crate) mod clock;
pub(crate) mod slots;
mod watchdog;

use std::cell::Cell;
use std::sync::Arc;

use tokio::runtime::TaskMeta;

use crate::engine::histogram::this_threads_shard;
use crate::engine::sites::{Site, SiteKey, TaskKind};
use crate::engine::Engine;

const SITE_CACHE_SIZE: usize = 64;

thread_local! {
    /// Direct-mapped cache from spawn location to site: one compare per poll once warm.
    static SITE_CACHE: [Cell<(usize, Option<&'static Site>)>; SITE_CACHE_SIZE] =
        const { [const { Cell::new((0, None)) }; SITE_CACHE_SIZE] };
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

#[inline]
fn site_of(engine: &Engine, location: &'static std::panic::Location<'static>) -> &'static Site {
    let key = location as *const _ as usize;
    let index = (key >> 3) % SITE_CACHE_SIZE;
    SITE_CACHE.with(|cache| {
        let entry = &cache[index];
        match entry.get() {
            (k, Some(site)) if k == key => site,
            _ => {
                let site = intern(engine, location);
                entry.set((key, Some(site)));
                site
            }
        }
    })
}

#[cold]
fn intern(engine: &Engine, location: &'static std::panic::Location<'static>) -> &'static Site {
    engine.site(&SiteKey {
        kind: TaskKind::Async,
        file: location.file(),
        line: location.line(),
        column: location.column(),
        task_name: None,
    })
}

#[inline]
pub(crate) fn before_poll(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    let Some(slot) = slots::this_thread(engine) else {
        return;
    };
    let site = site_of(engine, meta.spawned_at());
    slot.site.store(
        site as *const Site as *mut Site,
        std::sync::atomic::Ordering::Relaxed,
    );
    slot.start_ns
        .store(clock::now_ns(), std::sync::atomic::Ordering::Relaxed);
    if !WATCHED.with(|w| w.replace(true)) {
        first_poll_on_thread(engine);
    }
}

#[inline]
pub(crate) fn after_poll(engine: &Arc<Engine>, meta: &TaskMeta<'_>) {
    let Some(slot) = slots::this_thread(engine) else {
        return;
    };
    let start = slot.start_ns.load(std::sync::atomic::Ordering::Relaxed);
    if start == 0 {
        return;
    }
    slot.start_ns.store(0, std::sync::atomic::Ordering::Relaxed);
    let elapsed = clock::now_ns().saturating_sub(start);
    let site = site_of(engine, meta.spawned_at());
    engine.record_coarse_poll(site, this_threads_shard(), elapsed, || {
        meta.id().to_string().parse().unwrap_or(0)
    });
}

#[cold]
fn first_poll_on_thread(engine: &Arc<Engine>) {
    engine.say_startup_notes();
    watchdog::start();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        Engine::watch_runtime(engine, &handle);
    }
}
