//! Reports leave the thread that found them: worker threads and the clock's thread hand every
//! report to one background thread (`stallscope-reporter`), which calls the sinks (see
//! [`super::sink`]): they format it, write it to the log and export stalls; it also resolves
//! stacks. Writing a log line takes the subscriber's writer
//! (stdout's lock, a file, a pipe that may be full) and symbolizing a stack reads debug info:
//! on a worker either can stall every task on it, and on the clock's thread it would stop the
//! clock, so neither ever happens there.
//!
//! Handing off is lock-free: a node pushed on an intrusive stack with one compare-and-swap,
//! and an unpark of the reporter (a futex wake, no lock). At most [`MAX_QUEUED`] reports wait;
//! beyond that a report is dropped and counted, and the next line written says how many were.
//!
//! The reporter also pairs each stall with its own worker's stack. The clock's thread asks the
//! stalled worker for its stack while the stall runs; the stack is resolved here, and a slow
//! poll that ends before its stack is resolved waits for it (at most [`STACK_WAIT`]), so each
//! slow-poll line names where *its* worker was blocked, never another worker's stack.

use std::collections::HashMap;
use std::ptr;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tracing::Dispatch;

use super::stall::{StackKey, Stall};
use super::Engine;

/// Reports waiting for the reporter at most; more are dropped (bounded memory when the log's
/// writer is stuck).
const MAX_QUEUED: usize = 4096;

/// How long a slow poll whose stack was asked for waits for it: the capture's own timeout
/// (250 ms) plus time to resolve the stack with the symbolizer warm.
const STACK_WAIT: Duration = Duration::from_millis(1_000);

/// Stacks kept for stalls that have not ended yet; the oldest go first beyond this.
const MAX_STACKS_KEPT: usize = 256;

/// A resolved stack of a stalled worker, for its slow-poll line: the innermost frame of the
/// application's code and every frame.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedStack {
    pub(crate) blocked_in: Option<String>,
    pub(crate) full: String,
}

/// One thing for the reporter to do.
// Stacks are captured only with `tokio_unstable` and the `stacks` feature.
#[cfg_attr(not(all(tokio_unstable, feature = "stacks")), allow(dead_code))]
pub(crate) enum Job {
    /// A report line (or a few), written as is.
    Line(Box<dyn FnOnce() + Send>),
    /// A stall that ended: to the log report and the exporters, with its own worker's stack
    /// when one was asked for.
    Stall {
        engine: Arc<Engine>,
        stall: Box<Stall>,
    },
    /// A stack captured while the stall `key` ran: `resolve` symbolizes it, reports it, and
    /// returns what the stall's slow-poll line says of it.
    Stack {
        key: StackKey,
        resolve: Box<dyn FnOnce() -> Option<ResolvedStack> + Send>,
    },
    /// No stack will come for the stall `key` (the capture timed out or the worker had
    /// moved on).
    NoStack(StackKey),
    /// Everything handed over before this is written: the sender is told.
    Flush(std::sync::mpsc::SyncSender<()>),
}

struct Node {
    job: Job,
    /// When the report was handed over: the time it is rate-limited at.
    at: Instant,
    /// The subscriber that was current where the report was found: the report goes to the
    /// log it would have gone to (a scoped default included).
    dispatch: Option<Dispatch>,
    next: *mut Node,
}

/// The queue: a stack of nodes the reporter takes whole and reverses (first in, first out).
static HEAD: AtomicPtr<Node> = AtomicPtr::new(ptr::null_mut());
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Reports dropped because the queue was full, not yet said.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static REPORTER: OnceLock<Option<Thread>> = OnceLock::new();
/// The reporter thread could not start: jobs run on the thread that hands them over.
static INLINE: AtomicBool = AtomicBool::new(false);

/// Starts the reporter thread (once per process); `send` starts it too, but a source calls
/// this first from a place where starting a thread is harmless (not a worker's poll).
pub(crate) fn start() {
    REPORTER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("stallscope-reporter".into())
            .spawn(run);
        match spawned {
            Ok(handle) => {
                flush_at_exit();
                Some(handle.thread().clone())
            }
            Err(e) => {
                INLINE.store(true, Relaxed);
                tracing::warn!(
                    target: "stallscope",
                    error = %e,
                    "cannot start the stallscope-reporter thread: reports are written on the thread that finds them"
                );
                None
            }
        }
    });
}

/// How long the process's exit waits for reports still on their way.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Reports found after the last guard dropped (an early guard drop said, a stall in a
/// program's last moments) are written before the process exits: `exit` (returning from
/// `main` or `std::process::exit`) runs this first. Bounded: a stuck writer delays the exit by
/// [`EXIT_WAIT`] at most.
fn flush_at_exit() {
    extern "C" fn at_exit() {
        // Never from the reporter thread itself (a report that exits the process).
        let on_reporter = REPORTER
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|r| r.id() == std::thread::current().id());
        if !on_reporter {
            flush(EXIT_WAIT);
        }
    }
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }
    // SAFETY: registers a function with C's exit handlers; it takes no arguments and only
    // waits on a channel with a timeout.
    unsafe { atexit(at_exit) };
}

/// Hands `job` to the reporter; never blocks. Dropped (and counted) when [`MAX_QUEUED`] jobs
/// are already waiting.
pub(crate) fn send(job: Job) {
    start();
    if INLINE.load(Relaxed) {
        return run_inline(job);
    }
    // A flush must be answered: it is never dropped (the reporter drains the queue).
    if QUEUED.fetch_add(1, Relaxed) >= MAX_QUEUED && !matches!(job, Job::Flush(_)) {
        QUEUED.fetch_sub(1, Relaxed);
        DROPPED.fetch_add(1, Relaxed);
        return;
    }
    // Inside a subscriber's own callback this is the empty dispatcher: the reporter then uses
    // the global default.
    let dispatch = tracing::dispatcher::get_default(|current| {
        (!current.is::<tracing_core::subscriber::NoSubscriber>()).then(|| current.clone())
    });
    let node = Box::into_raw(Box::new(Node {
        job,
        at: Instant::now(),
        dispatch,
        next: ptr::null_mut(),
    }));
    let mut head = HEAD.load(Relaxed);
    loop {
        // SAFETY: `node` is ours until the exchange publishes it.
        unsafe { (*node).next = head };
        match HEAD.compare_exchange_weak(head, node, AcqRel, Relaxed) {
            Ok(_) => break,
            Err(current) => head = current,
        }
    }
    if let Some(Some(reporter)) = REPORTER.get() {
        reporter.unpark();
    }
}

/// Shorthand for [`Job::Line`].
pub(crate) fn line(write: impl FnOnce() + Send + 'static) {
    send(Job::Line(Box::new(write)));
}

/// Waits (at most `timeout`) until every report handed over before this call is written,
/// stalls waiting for their stacks included. For the guard's drop and tests; never call it
/// on a worker thread.
pub(crate) fn flush(timeout: Duration) -> bool {
    if INLINE.load(Relaxed) || REPORTER.get().is_none() {
        return true;
    }
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    send(Job::Flush(done));
    flushed.recv_timeout(timeout).is_ok()
}

/// Without a reporter thread: each job at once, on the calling thread (a stall without waiting
/// for its stack).
fn run_inline(job: Job) {
    match job {
        Job::Line(write) => write(),
        Job::Stall { engine, stall } => engine.emit_stall_now(*stall),
        Job::Stack { resolve, .. } => {
            resolve();
        }
        Job::NoStack(_) => {}
        Job::Flush(done) => {
            let _ = done.try_send(());
        }
    }
}

thread_local! {
    /// While the reporter handles a job: when it was handed over.
    static HANDED_OVER_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// When the report being written happened: the time it was handed to the reporter, or now
/// for one written where it happened. Reports are rate-limited by this time, not by when the
/// reporter gets to them (a burst written late is not a burst that happened).
pub(crate) fn happened_at() -> Instant {
    HANDED_OVER_AT
        .try_with(std::cell::Cell::get)
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now)
}

/// A job as queued: what, when, and for which subscriber.
type Queued = (Job, Instant, Option<Dispatch>);

/// Runs `f` with `dispatch` as this thread's default subscriber, if there is one.
fn with_dispatch<R>(dispatch: Option<&Dispatch>, f: impl FnOnce() -> R) -> R {
    match dispatch {
        Some(dispatch) => tracing::dispatcher::with_default(dispatch, f),
        None => f(),
    }
}

/// Takes every queued job, oldest first.
fn take_all() -> Vec<Queued> {
    let mut node = HEAD.swap(ptr::null_mut(), Acquire);
    let mut jobs = Vec::new();
    while !node.is_null() {
        // SAFETY: the swap gave this thread the whole list; each node was leaked by `send`.
        let boxed = unsafe { Box::from_raw(node) };
        node = boxed.next;
        jobs.push((boxed.job, boxed.at, boxed.dispatch));
    }
    QUEUED.fetch_sub(jobs.len(), Relaxed);
    jobs.reverse();
    jobs
}

fn run() {
    let mut reporter = Reporter::default();
    loop {
        let jobs = take_all();
        let idle = jobs.is_empty();
        for (job, at, dispatch) in jobs {
            HANDED_OVER_AT.with(|t| t.set(Some(at)));
            reporter.handle(job, dispatch);
        }
        reporter.release_overdue(Instant::now());
        if idle {
            match reporter.next_deadline() {
                Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
    }
}

/// A stall waiting for its worker's stack.
struct Waiting {
    engine: Arc<Engine>,
    stall: Box<Stall>,
    key: StackKey,
    /// When the stall was handed over (it is rate-limited at that time).
    at: Instant,
    dispatch: Option<Dispatch>,
    until: Instant,
}

/// The reporter's own state (one thread: no locks).
#[derive(Default)]
struct Reporter {
    /// The latest stack resolved for each stall that may still end, oldest first.
    stacks: HashMap<StackKey, ResolvedStack>,
    stack_order: std::collections::VecDeque<StackKey>,
    /// Stalls that ended before their stack was resolved.
    waiting: Vec<Waiting>,
    /// Flushes to answer once nothing waits.
    flushes: Vec<std::sync::mpsc::SyncSender<()>>,
}

impl Reporter {
    fn handle(&mut self, job: Job, dispatch: Option<Dispatch>) {
        with_dispatch(dispatch.as_ref(), || {
            self.handle_as_found(job, dispatch.clone())
        });
    }

    fn handle_as_found(&mut self, job: Job, dispatch: Option<Dispatch>) {
        let dropped = DROPPED.swap(0, Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "stallscope",
                dropped,
                "{dropped} reports dropped: the log's writer could not keep up"
            );
        }
        match job {
            Job::Line(write) => write(),
            Job::Stall { engine, mut stall } => match stall.stack_of {
                Some(key) if !self.stacks.contains_key(&key) => self.waiting.push(Waiting {
                    engine,
                    stall,
                    key,
                    at: happened_at(),
                    dispatch,
                    until: Instant::now() + STACK_WAIT,
                }),
                key => {
                    if let Some(stack) = key.and_then(|key| self.take_stack(key)) {
                        attach(&mut stall, stack);
                    }
                    engine.emit_stall_now(*stall);
                }
            },
            Job::Stack { key, resolve } => {
                if let Some(stack) = resolve() {
                    self.keep_stack(key, stack);
                }
                self.release(key);
            }
            Job::NoStack(key) => self.release(key),
            Job::Flush(done) => self.flushes.push(done),
        }
        self.answer_flushes();
    }

    fn keep_stack(&mut self, key: StackKey, stack: ResolvedStack) {
        if self.stacks.insert(key, stack).is_none() {
            self.stack_order.push_back(key);
        }
        while self.stack_order.len() > MAX_STACKS_KEPT {
            if let Some(old) = self.stack_order.pop_front() {
                self.stacks.remove(&old);
            }
        }
    }

    fn take_stack(&mut self, key: StackKey) -> Option<ResolvedStack> {
        let stack = self.stacks.remove(&key)?;
        self.stack_order.retain(|k| *k != key);
        Some(stack)
    }

    /// The stall `key` has its stack (or will have none): written now.
    fn release(&mut self, key: StackKey) {
        let (ready, rest): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|w| w.key == key);
        self.waiting = rest;
        let handling = happened_at();
        for mut waiting in ready {
            if let Some(stack) = self.take_stack(key) {
                attach(&mut waiting.stall, stack);
            }
            HANDED_OVER_AT.with(|t| t.set(Some(waiting.at)));
            with_dispatch(waiting.dispatch.as_ref(), || {
                waiting.engine.emit_stall_now(*waiting.stall)
            });
        }
        HANDED_OVER_AT.with(|t| t.set(Some(handling)));
    }

    /// Stalls whose stack did not come in time go without it.
    fn release_overdue(&mut self, now: Instant) {
        let overdue: Vec<StackKey> = self
            .waiting
            .iter()
            .filter(|w| w.until <= now)
            .map(|w| w.key)
            .collect();
        for key in overdue {
            self.release(key);
        }
        self.answer_flushes();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.until).min()
    }

    fn answer_flushes(&mut self) {
        if self.waiting.is_empty() {
            for done in self.flushes.drain(..) {
                let _ = done.try_send(());
            }
        }
    }
}

fn attach(stall: &mut Stall, stack: ResolvedStack) {
    stall.blocked_in = stack.blocked_in;
    stall.stack = Some(stack.full);
}
