//! Which line is blocking the runtime right now: when the watchdog finds a poll running past
//! the threshold, it has the stalled worker capture its own stack (a directed signal, see
//! [`capture`]), and again every sampling interval while the stall lasts. The reporter thread
//! resolves the frames (see [`symbolize`]), reports the user's innermost frame, and pairs the
//! stack with the stall's own slow-poll report (see `engine::deferred`).
//!
//! Linux on x86_64 and aarch64 (libgcc's unwinder steps through the kernel's signal frame on
//! both). Elsewhere, or with `STALLSCOPE_STACKS=off`, stalls are still reported live, without
//! a stack, and the first one says why.
//!
//! The watchdog side runs on the watchdog thread only, so its bookkeeping is thread-local.

#[cfg(all(
    feature = "stacks",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod capture;
#[cfg(all(
    feature = "stacks",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub(crate) mod symbolize;

pub(crate) use sampler::{set_owner, stall_began, tick, warm_up};

#[cfg(all(
    feature = "stacks",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod sampler {
    use std::cell::RefCell;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    use super::capture::{self, Status};
    use super::symbolize::Stack;
    use crate::engine::deferred::{self, Job, ResolvedStack};
    use crate::engine::sites::Site;
    use crate::engine::stall::StackKey;
    use crate::engine::Engine;
    use crate::hooks::slots::{self, MAX_SLOTS};

    /// A stall's samples at most (one at the threshold, then one per interval).
    const MAX_SAMPLES_PER_STALL: u32 = 10;

    /// A thread that has not run the handler by then has the signal blocked or sits in an
    /// uninterruptible wait: the request is dropped and the report goes without a stack.
    const CAPTURE_TIMEOUT_NS: u64 = 250_000_000;

    /// What the watchdog knows about a stall it asked a stack of.
    struct Stall {
        engine: Weak<Engine>,
        site: &'static Site,
        thread: String,
        /// Coarse start of the stalled poll: identifies the stall in its slot.
        start: u64,
    }

    struct Watched {
        stall: Stall,
        samples: u32,
        last_request: u64,
        pending_since: Option<u64>,
    }

    thread_local! {
        static WATCHED: RefCell<Vec<Option<Watched>>> =
            RefCell::new((0..MAX_SLOTS).map(|_| None).collect());
    }

    /// Slot `index` has just been found stalled (the watchdog reported it): capture its stack.
    pub(crate) fn stall_began(
        engine: &Arc<Engine>,
        index: usize,
        site: &'static Site,
        thread: String,
        start: u64,
        now: u64,
    ) {
        if !engine.config.capture_stacks || !installed(engine) {
            return;
        }
        let stall = Stall {
            engine: Arc::downgrade(engine),
            site,
            thread,
            start,
        };
        WATCHED.with(|w| {
            let mut w = w.borrow_mut();
            w[index] = Some(Watched {
                stall,
                samples: 0,
                last_request: now,
                pending_since: None,
            });
            let watched = w[index].as_mut().expect("just set");
            // Said before the signal goes: the stalled poll's report, whenever it ends, waits
            // for this stack.
            let slot = slots::at(index);
            if let Some(slot) = slot {
                slot.stack_for.store(start, Relaxed);
            }
            if !request(watched, index, now) {
                if let Some(slot) = slot {
                    slot.stack_for.store(0, Relaxed);
                }
            }
        });
    }

    fn request(watched: &mut Watched, index: usize, now: u64) -> bool {
        let sent = still_ours() && capture::request(index, watched.stall.start);
        if sent {
            watched.pending_since = Some(now);
            watched.last_request = now;
        }
        sent
    }

    /// Once per tick: hand finished captures to the symbolizer, time out stuck ones, and
    /// sample stalls that go on. Returns whether a stall is still watched (the clock keeps
    /// ticking for it).
    pub(crate) fn tick(now: u64) -> bool {
        WATCHED.with(|w| {
            let mut w = w.borrow_mut();
            for (index, entry) in w.iter_mut().enumerate() {
                let Some(watched) = entry else { continue };
                let running = slots::at(index)
                    .is_some_and(|s| s.start_ns.load(Relaxed) == watched.stall.start);
                if let Some(since) = watched.pending_since {
                    let key = StackKey {
                        slot: index,
                        start: watched.stall.start,
                    };
                    match capture::take(index) {
                        // Empty: the handler ran after the poll had ended.
                        Status::Done(frames) if frames.is_empty() => {
                            watched.pending_since = None;
                            deferred::send(Job::NoStack(key));
                        }
                        Status::Done(frames) => {
                            watched.pending_since = None;
                            watched.samples += 1;
                            let elapsed = Duration::from_nanos(crate::clock::stamp_ns(
                                since.saturating_sub(watched.stall.start),
                            ));
                            resolve_later(&watched.stall, key, elapsed, watched.samples, frames);
                        }
                        Status::Pending
                            if crate::clock::stamp_ns(now.saturating_sub(since))
                                > CAPTURE_TIMEOUT_NS =>
                        {
                            if capture::abandon(index) {
                                watched.pending_since = None;
                                deferred::send(Job::NoStack(key));
                                let thread = watched.stall.thread.clone();
                                deferred::line(move || {
                                    crate::report::stack_capture_timed_out(&thread)
                                });
                            }
                        }
                        Status::Pending => continue,
                        Status::Idle => {
                            watched.pending_since = None;
                            deferred::send(Job::NoStack(key));
                        }
                    }
                }
                if !running {
                    *entry = None;
                    continue;
                }
                let interval = watched
                    .stall
                    .engine
                    .upgrade()
                    .map(|e| e.config.stack_sample_interval.as_nanos() as u64);
                if let Some(interval) = interval {
                    if watched.pending_since.is_none()
                        && watched.samples < MAX_SAMPLES_PER_STALL
                        && crate::clock::stamp_ns(now.saturating_sub(watched.last_request))
                            >= interval
                    {
                        request(watched, index, now);
                    }
                }
            }
            w.iter().any(Option::is_some)
        })
    }

    /// The handler is installed for the signal `engine` asks for (first call installs it).
    fn installed(engine: &Engine) -> bool {
        let signal = engine.config.stack_signal.resolve();
        match capture::install(signal) {
            Ok(_) => true,
            Err(e) => {
                let why = e.to_string();
                deferred::line(move || crate::report::stacks_unavailable(&why));
                false
            }
        }
    }

    /// The host may have replaced our handler since: never send a signal it would mishandle
    /// (an unhandled real-time signal terminates the process).
    fn still_ours() -> bool {
        if capture::handler_still_installed() {
            return true;
        }
        deferred::line(|| {
            crate::report::stacks_unavailable(
                "another handler replaced stallscope's for the stack signal; \
                 stack capture is off from now on",
            )
        });
        false
    }

    /// Hands a capture of the stall `key` to the reporter thread, which resolves it (reading
    /// debug info takes time and allocates), reports it, and attaches it to the stall's report.
    fn resolve_later(
        stall: &Stall,
        key: StackKey,
        elapsed: Duration,
        sample: u32,
        frames: Vec<usize>,
    ) {
        let engine = stall.engine.clone();
        let (site, thread) = (stall.site, stall.thread.clone());
        deferred::send(Job::Stack {
            key,
            resolve: Box::new(move || {
                let stack: crate::engine::StallStack = (&Stack::resolve(&frames)).into();
                if let Some(engine) = engine.upgrade() {
                    engine.report_stall_stack(site, &thread, elapsed, sample, &stack);
                    crate::hooks::console_hint::stack_resolved(
                        site,
                        key.start,
                        stack.culprit.as_deref(),
                    );
                }
                Some(ResolvedStack {
                    blocked_in: stack.culprit,
                    full: stack.full,
                })
            }),
        });
    }

    /// Loads the program's debug info on the reporter thread now, so the first stall's stack
    /// is resolved in milliseconds, before its slow poll ends, instead of the 100-250 ms a
    /// cold symbolizer takes (once per process; only when `engine` captures stacks).
    pub(crate) fn warm_up(engine: &Engine) {
        static WARMED: std::sync::Once = std::sync::Once::new();
        if engine.config.capture_stacks {
            WARMED.call_once(|| {
                deferred::line(|| {
                    let _ = Stack::resolve(&[warm_up as *const () as usize]);
                })
            });
        }
    }

    /// Slot `index` now belongs to the current thread (0: released).
    pub(crate) fn set_owner(index: usize, owned: bool) {
        capture::set_owner(index, if owned { capture::current_tid() } else { 0 });
    }
}

#[cfg(not(all(
    feature = "stacks",
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod sampler {
    use std::sync::Arc;

    use crate::engine::sites::Site;
    use crate::engine::Engine;

    pub(crate) fn stall_began(
        engine: &Arc<Engine>,
        _index: usize,
        _site: &'static Site,
        _thread: String,
        _start: u64,
        _now: u64,
    ) {
        if engine.config.capture_stacks {
            crate::engine::deferred::line(|| {
                crate::report::stacks_unavailable(if cfg!(feature = "stacks") {
                    "stack capture needs Linux on x86_64 or aarch64"
                } else {
                    "stallscope was built without its `stacks` feature"
                })
            });
        }
    }

    pub(crate) fn tick(_now: u64) -> bool {
        false
    }

    pub(crate) fn warm_up(_engine: &Engine) {}

    pub(crate) fn set_owner(_index: usize, _owned: bool) {}
}
