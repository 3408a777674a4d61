//! The signal side of stack capture: a directed signal makes the stalled worker walk its own
//! stack into a preallocated buffer. Everything the handler touches is a static atomic; it
//! allocates nothing, takes no lock and makes one syscall (`gettid`).
//!
//! The walk is `_Unwind_Backtrace` (libgcc, through the `backtrace` crate's unsynchronized
//! entry point): DWARF CFI, so it needs no frame pointers and steps through the kernel's signal
//! frame into the interrupted code. It finds unwind tables with glibc's `_dl_find_object`, which
//! is lock-free and async-signal-safe (glibc >= 2.35, with the libgcc of GCC >= 12), so it
//! cannot deadlock on the loader lock. [`install`] walks once on the installing thread first, so
//! libgcc's one-time set-up (a `pthread_once`) and lazy symbol binding never run in a handler.
//!
//! Each worker slot has one capture buffer with a state machine (`IDLE -> REQUESTED ->
//! CAPTURING -> DONE -> IDLE`): the watchdog requests, the handler claims by compare-and-swap,
//! so one thread never runs two captures at once and an abandoned request is never written.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, AtomicUsize};

use crate::hooks::slots::MAX_SLOTS;

/// Frames kept per capture: enough to reach user code under a deep tokio/tracing stack.
pub(crate) const MAX_FRAMES: usize = 96;

const IDLE: u8 = 0;
const REQUESTED: u8 = 1;
const CAPTURING: u8 = 2;
const DONE: u8 = 3;

struct Buffer {
    /// Kernel thread id of the slot's owner; 0 while the slot is free.
    tid: AtomicI32,
    /// The coarse start of the stalled poll the capture is for: a handler that runs after
    /// that poll ended (the signal came late) captures nothing, so a stack is never blamed on
    /// a poll it was not taken in.
    poll_start: AtomicU64,
    state: AtomicU8,
    len: AtomicUsize,
    frames: [AtomicUsize; MAX_FRAMES],
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Buffer = Buffer {
    tid: AtomicI32::new(0),
    poll_start: AtomicU64::new(0),
    state: AtomicU8::new(IDLE),
    len: AtomicUsize::new(0),
    frames: [const { AtomicUsize::new(0) }; MAX_FRAMES],
};

static BUFFERS: [Buffer; MAX_SLOTS] = [EMPTY; MAX_SLOTS];

/// The signal the handler is installed for; 0 until [`install`] succeeds.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Why stacks cannot be captured in this process.
#[derive(Debug)]
pub(crate) enum InstallError {
    /// The signal number is not one this system has.
    NoSuchSignal(i32),
    /// The host program already handles (or ignores) the signal: we leave it alone.
    InUse(i32),
    Os(i32, std::io::Error),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::NoSuchSignal(s) => write!(f, "signal {s} does not exist here"),
            InstallError::InUse(s) => write!(
                f,
                "signal {s} already has a handler in this program (left untouched); \
                 choose a free one with STALLSCOPE_STACK_SIGNAL"
            ),
            InstallError::Os(s, e) => write!(f, "installing a handler for signal {s} failed: {e}"),
        }
    }
}

/// The current thread's kernel id.
pub(crate) fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Records the owner thread of slot `index` (0 when the slot is released).
pub(crate) fn set_owner(index: usize, tid: i32) {
    let buffer = &BUFFERS[index];
    buffer.tid.store(tid, Relaxed);
    // A released slot's pending request is dropped; a capture in flight finishes on its own.
    let _ = buffer
        .state
        .compare_exchange(REQUESTED, IDLE, Relaxed, Relaxed);
}

/// Installs the handler for `signal` (once per process; later calls return the first result).
pub(crate) fn install(signal: i32) -> Result<i32, &'static InstallError> {
    static RESULT: std::sync::OnceLock<Result<i32, InstallError>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| install_once(signal))
        .as_ref()
        .copied()
}

fn install_once(signal: i32) -> Result<i32, InstallError> {
    if signal <= 0 || signal > libc::SIGRTMAX() {
        return Err(InstallError::NoSuchSignal(signal));
    }
    // One walk here first: libgcc's one-time initialisation and the dynamic linker's lazy
    // binding of the unwinder's symbols happen on this thread, never inside a handler.
    let mut warm = 0usize;
    // SAFETY: no other thread is unwinding through our callback; the closure only counts.
    unsafe {
        backtrace::trace_unsynchronized(|_| {
            warm += 1;
            warm < 4
        })
    };
    // SAFETY: plain sigaction calls on zeroed, then filled, structs.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
            return Err(InstallError::Os(signal, std::io::Error::last_os_error()));
        }
        if old.sa_sigaction != libc::SIG_DFL {
            return Err(InstallError::InUse(signal));
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        // SA_RESTART: most interrupted syscalls of the stalled thread resume instead of
        // failing with EINTR (docs/stacks.md says what still can).
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(InstallError::Os(signal, std::io::Error::last_os_error()));
        }
    }
    SIGNAL.store(signal, Relaxed);
    Ok(signal)
}

/// Whether our handler is still the signal's handler; once it is not, capture stays off.
pub(crate) fn handler_still_installed() -> bool {
    let signal = SIGNAL.load(Relaxed);
    if signal == 0 {
        return false;
    }
    // SAFETY: a sigaction query into a zeroed struct.
    let ours = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == on_signal as *const () as libc::sighandler_t
    };
    if !ours {
        SIGNAL.store(0, Relaxed);
    }
    ours
}

/// Asks the owner of slot `index` to capture its stack while it still runs the poll that began
/// at `poll_start`. False when a capture of that slot is still pending, the slot has no owner,
/// or the signal could not be sent.
pub(crate) fn request(index: usize, poll_start: u64) -> bool {
    let signal = SIGNAL.load(Relaxed);
    let buffer = &BUFFERS[index];
    let tid = buffer.tid.load(Relaxed);
    if signal == 0 || tid == 0 {
        return false;
    }
    if buffer
        .state
        .compare_exchange(IDLE, REQUESTED, Release, Relaxed)
        .is_err()
    {
        return false;
    }
    buffer.poll_start.store(poll_start, Relaxed);
    // SAFETY: tgkill with our own pid and a thread id of this process.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) } == 0;
    if !sent {
        buffer.state.store(IDLE, Relaxed);
    }
    sent
}

/// Where the capture of slot `index` stands.
pub(crate) enum Status {
    Idle,
    Pending,
    /// The captured frames (instruction pointers, innermost first); the buffer is free again.
    Done(Vec<usize>),
}

/// Takes the result of slot `index`'s capture if it is done.
pub(crate) fn take(index: usize) -> Status {
    let buffer = &BUFFERS[index];
    match buffer.state.load(Acquire) {
        IDLE => Status::Idle,
        DONE => {
            let len = buffer.len.load(Relaxed).min(MAX_FRAMES);
            let frames = buffer.frames[..len]
                .iter()
                .map(|f| f.load(Relaxed))
                .collect();
            buffer.state.store(IDLE, Release);
            Status::Done(frames)
        }
        _ => Status::Pending,
    }
}

/// Gives up a request the thread has not started on (its signal is blocked, or it is stuck in
/// the kernel). A capture already running is left to finish.
pub(crate) fn abandon(index: usize) -> bool {
    BUFFERS[index]
        .state
        .compare_exchange(REQUESTED, IDLE, Relaxed, Relaxed)
        .is_ok()
}

/// The signal handler. Async-signal-safe: atomics, `gettid`, and libgcc's lock-free unwinder.
extern "C" fn on_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; restored so the interrupted code never sees our syscall's.
    let errno = unsafe { *libc::__errno_location() };
    let tid = current_tid();
    if let Some((index, buffer)) = BUFFERS
        .iter()
        .enumerate()
        .find(|(_, b)| b.tid.load(Relaxed) == tid)
    {
        if buffer
            .state
            .compare_exchange(REQUESTED, CAPTURING, Acquire, Relaxed)
            .is_ok()
        {
            // The poll the stack was asked for has ended: this thread is elsewhere now. An
            // empty capture tells the watchdog so. (A static load: signal-safe.)
            let same_poll = crate::hooks::slots::at(index)
                .is_some_and(|slot| slot.start_ns.load(Relaxed) == buffer.poll_start.load(Relaxed));
            if !same_poll {
                buffer.len.store(0, Relaxed);
                buffer.state.store(DONE, Release);
                // SAFETY: as below.
                unsafe { *libc::__errno_location() = errno };
                return;
            }
            let mut len = 0;
            // SAFETY: the CAPTURING state gives this thread the buffer alone; the callback
            // only stores into it. No other walk runs on this thread (the signal is masked
            // while its handler runs).
            unsafe {
                backtrace::trace_unsynchronized(|frame| {
                    buffer.frames[len].store(frame.ip() as usize, Relaxed);
                    len += 1;
                    len < MAX_FRAMES
                })
            };
            buffer.len.store(len, Relaxed);
            buffer.state.store(DONE, Release);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Marks where the handler's own frames end, for the symbolizer to skip them.
pub(crate) const HANDLER_SYMBOL: &str = "capture::on_signal";
