//! Runtimes inside runtimes (full mode): tokio makes every `Runtime::block_on` /
//! `Handle::block_on` a `runtime.spawn` span of kind `block_on`, at the call's location. Two
//! hazards show in them:
//!
//! - a `block_on` that starts while this thread is polling a task of another runtime (possible
//!   inside `block_in_place`; without it tokio panics): that task, and its worker, wait on a
//!   second runtime;
//! - one `block_on` call site running on many different runtimes: a runtime built per thread
//!   (the `threading.Thread(target=asyncio.run)` mistake) or per iteration of a loop.
//!
//! Both are said once per call site, from the span's first enter (never from `on_new_span`,
//! where emitting an event would re-enter the subscriber mid-callback). Bounded: at most
//! [`MAX_LOCATIONS`] call sites are tracked, each with at most [`MANY_RUNTIMES`] runtime ids.

use std::sync::Mutex;

use crate::engine::sites::Site;
use crate::engine::Engine;

/// This many distinct runtimes at one `block_on` call site is a runtime per thread or per
/// iteration (the same count at which the runtime sampler flags many runtimes).
pub(crate) const MANY_RUNTIMES: usize = 4;

/// `block_on` call sites tracked; more are not checked for the per-thread pattern.
const MAX_LOCATIONS: usize = 64;

/// Kept on a `block_on` span: what the thread was doing when it was created.
#[derive(Debug)]
pub(crate) struct BlockOn {
    /// The task being polled on this thread when `block_on` was called, if any.
    outer_task: Option<&'static Site>,
    /// That thread's current runtime (the caller's), by id.
    outer_runtime: Option<String>,
}

/// A `runtime.spawn` span of `kind`: `Some` for a `block_on`, capturing the caller's context.
/// Cheap and silent (runs in `on_new_span`).
pub(crate) fn created(kind: &str) -> Option<Box<BlockOn>> {
    if kind != "block_on" {
        return None;
    }
    let outer_task = super::poll_context::current_task_site();
    Some(Box::new(BlockOn {
        outer_task,
        // Only the caller's runtime matters when a task is calling.
        outer_runtime: outer_task.and_then(|_| current_runtime()),
    }))
}

/// The id of the runtime whose context this thread is in.
fn current_runtime() -> Option<String> {
    #[cfg(tokio_unstable)]
    {
        tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.id().to_string())
    }
    #[cfg(not(tokio_unstable))]
    {
        None
    }
}

struct CallSite {
    site: &'static Site,
    runtimes: Vec<String>,
    flagged: bool,
    nested_reported: bool,
}

static CALL_SITES: Mutex<Vec<CallSite>> = Mutex::new(Vec::new());

/// What to say about one `block_on`, decided under the table's lock and said after it.
enum Finding {
    PerThread {
        runtimes: Vec<String>,
    },
    Nested {
        outer_task: &'static Site,
        outer: String,
        inner: String,
    },
}

/// The first enter of a `block_on` span at `site` (the call's location): the block_on runs
/// now, inside its own runtime's context. Logs what it finds (safe from `on_enter`).
pub(crate) fn first_enter(engine: &Engine, site: &'static Site, block_on: &BlockOn) {
    if !engine.config.report_slow_polls {
        return;
    }
    let Some(inner) = current_runtime() else {
        return;
    };
    let nested = match (block_on.outer_task, &block_on.outer_runtime) {
        (Some(task), Some(outer)) if *outer != inner => Some((task, outer.clone())),
        _ => None,
    };
    let mut findings = Vec::new();
    {
        let mut sites = CALL_SITES.lock().unwrap_or_else(|e| e.into_inner());
        let index = match sites.iter().position(|c| std::ptr::eq(c.site, site)) {
            Some(i) => Some(i),
            None if sites.len() < MAX_LOCATIONS => {
                sites.push(CallSite {
                    site,
                    runtimes: Vec::new(),
                    flagged: false,
                    nested_reported: false,
                });
                Some(sites.len() - 1)
            }
            None => None,
        };
        if let Some(c) = index.map(|i| &mut sites[i]) {
            if !c.flagged && !c.runtimes.contains(&inner) {
                c.runtimes.push(inner.clone());
                if c.runtimes.len() >= MANY_RUNTIMES {
                    c.flagged = true;
                    findings.push(Finding::PerThread {
                        runtimes: std::mem::take(&mut c.runtimes),
                    });
                }
            }
            if let Some((outer_task, outer)) = nested {
                if !c.nested_reported {
                    c.nested_reported = true;
                    findings.push(Finding::Nested {
                        outer_task,
                        outer,
                        inner: inner.clone(),
                    });
                }
            }
        }
    }
    // Logged outside the lock (logging dispatches to every layer, this one included), by the
    // reporter thread: this runs where `block_on` was called, perhaps inside a task's poll.
    for finding in findings {
        crate::engine::deferred::line(move || match finding {
            Finding::PerThread { runtimes } => crate::report::runtime_per_thread(site, &runtimes),
            Finding::Nested {
                outer_task,
                outer,
                inner,
            } => crate::report::nested_block_on(site, &inner, outer_task, &outer),
        });
    }
}
