//! Locks: where each wrapped lock was created (or its name), and how long acquisitions waited
//! and guards were held. Bounded like the spawn sites: at most `max_sites` lock sites, and at
//! most [`MAX_LOCK_SITES`]; further ones share `<other>`; sites are leaked so the lock path
//! holds `&'static LockSite`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use super::histogram::{this_threads_shard, Bounds, ShardedCounter, ShardedHistogram};
use super::sink::LockRecorder;
use super::sites::{Location, OTHER};

pub(crate) use crate::snapshot::LockKind;

impl LockKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LockKind::StdMutex => "std::sync::Mutex",
            LockKind::StdRwLock => "std::sync::RwLock",
            LockKind::TokioMutex => "tokio::sync::Mutex",
            LockKind::TokioRwLock => "tokio::sync::RwLock",
            LockKind::TokioSemaphore => "tokio::sync::Semaphore",
            LockKind::ParkingLotMutex => "parking_lot::Mutex",
            LockKind::ParkingLotRwLock => "parking_lot::RwLock",
        }
    }
}

/// What an acquisition asked for, as exported in `tokio.lock.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum LockOp {
    /// `Mutex::lock` (and `lock_owned`, `blocking_lock`).
    Lock,
    /// `RwLock::read` (shared).
    Read,
    /// `RwLock::write` (exclusive).
    Write,
    /// `Semaphore::acquire` (and `acquire_many`, the `_owned` forms).
    Acquire,
}

// The names and indices are for the OTLP export.
#[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
impl LockOp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LockOp::Lock => "lock",
            LockOp::Read => "read",
            LockOp::Write => "write",
            LockOp::Acquire => "acquire",
        }
    }

    /// The operation whose `as u8` is `op` (a const parameter of the async acquire future).
    #[inline]
    pub(crate) const fn from_u8(op: u8) -> LockOp {
        match op {
            0 => LockOp::Lock,
            1 => LockOp::Read,
            2 => LockOp::Write,
            3 => LockOp::Acquire,
            _ => panic!("not a LockOp"),
        }
    }

    /// Index into a site's per-operation instruments: [`LockKind::operations`] order.
    #[inline]
    pub(crate) fn index(self) -> usize {
        match self {
            LockOp::Write => 1,
            LockOp::Lock | LockOp::Read | LockOp::Acquire => 0,
        }
    }

    /// The operation of a tokio async op, from its `source` field (`RwLock::read_owned`, ...).
    pub(crate) fn from_tokio_source(kind: LockKind, source: &str) -> LockOp {
        let method = source.rsplit("::").next().unwrap_or(source);
        match kind {
            LockKind::StdRwLock | LockKind::TokioRwLock | LockKind::ParkingLotRwLock
                if method.starts_with("write") =>
            {
                LockOp::Write
            }
            LockKind::StdRwLock | LockKind::TokioRwLock | LockKind::ParkingLotRwLock => {
                LockOp::Read
            }
            LockKind::TokioSemaphore => LockOp::Acquire,
            LockKind::StdMutex | LockKind::TokioMutex | LockKind::ParkingLotMutex => LockOp::Lock,
        }
    }
}

impl LockKind {
    /// Whether waiting for this kind of lock holds up the thread (std and parking_lot locks),
    /// rather than suspending the task (tokio's).
    #[inline]
    pub(crate) fn blocks_thread(self) -> bool {
        match self {
            LockKind::StdMutex
            | LockKind::StdRwLock
            | LockKind::ParkingLotMutex
            | LockKind::ParkingLotRwLock => true,
            LockKind::TokioMutex | LockKind::TokioRwLock | LockKind::TokioSemaphore => false,
        }
    }

    /// The operations an acquisition of this kind of lock can be, by [`LockOp::index`].
    pub(crate) fn operations(self) -> &'static [LockOp] {
        match self {
            LockKind::StdMutex | LockKind::TokioMutex | LockKind::ParkingLotMutex => {
                &[LockOp::Lock]
            }
            LockKind::StdRwLock | LockKind::TokioRwLock | LockKind::ParkingLotRwLock => {
                &[LockOp::Read, LockOp::Write]
            }
            LockKind::TokioSemaphore => &[LockOp::Acquire],
        }
    }

    /// What to do about a contended lock of this kind (the summary's hint).
    pub(crate) fn contention_hint(self) -> &'static str {
        match self {
            LockKind::StdMutex
            | LockKind::StdRwLock
            | LockKind::ParkingLotMutex
            | LockKind::ParkingLotRwLock => {
                "waiting for a std lock in async code blocks the worker thread: keep the critical \
                 section short and free of I/O, use tokio::sync if the guard must live across \
                 .await, or replace the lock with message passing or atomics"
            }
            LockKind::TokioMutex | LockKind::TokioRwLock => {
                "tasks queue for this lock: hold it for less (copy what you need and drop the \
                 guard before awaiting I/O), split the data so tasks need different locks, or \
                 give the state to one task and send it messages"
            }
            LockKind::TokioSemaphore => {
                "tasks queue for permits: expected if the semaphore bounds concurrency on \
                 purpose; otherwise add permits or shorten the work done under one"
            }
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lock creation site (or named lock) and what was measured on it.
#[derive(Debug)]
pub(crate) struct LockSite {
    pub(crate) kind: LockKind,
    pub(crate) location: Location,
    pub(crate) name: Option<&'static str>,
    /// Time each contended acquisition waited: its count is the number of contentions.
    /// (Uncontended ones wait nothing and are only counted in `uncontended`.)
    pub(crate) wait: ShardedHistogram,
    /// Time each guard was held.
    pub(crate) hold: ShardedHistogram,
    /// The instance's bucket bounds and slow threshold: a site records without reaching the
    /// engine (an `Arc` shared by every thread).
    bounds: &'static Bounds,
    slow_threshold: Duration,
    /// The bucket holding [`fast_poll_ns`](crate::clock::fast_poll_ns): where holds too short
    /// for the coarse clock are counted.
    fast_bucket: usize,
    /// Acquisitions that obtained the lock without waiting, counted per thread shard. Those
    /// that waited are the count of `wait`: a contended acquisition adds to one histogram only.
    pub(crate) uncontended: ShardedCounter,
    /// Acquisitions given up before the lock was obtained (tokio locks: the future dropped),
    /// and how long they had waited.
    pub(crate) cancellations: AtomicU64,
    pub(crate) cancelled_wait: ShardedHistogram,
    /// Waits at or over the slow threshold on a thread that was polling a task.
    pub(crate) blocking_waits: AtomicU64,
    /// Polls that ended with a guard of this lock still held (held across `.await`).
    pub(crate) held_across_await: AtomicU64,
    /// The sinks' handles on this lock, bound once when its site was made (see
    /// [`super::sink`]).
    pub(crate) recorders: Box<[Box<dyn LockRecorder>]>,
    /// The instance whose site this is: a blocking wait is reported by it, whichever instance
    /// is the process's default (a lock made with an explicit [`crate::Handle`]).
    pub(crate) owner: Weak<super::Engine>,
}

impl LockSite {
    /// A contended acquisition obtained the lock after waiting `wait`. Returns whether the wait
    /// held up a thread (a std or parking_lot lock) past the slow threshold: the engine then
    /// checks whether that thread was polling a task ([`Engine::blocking_lock_wait`]).
    ///
    /// [`Engine::blocking_lock_wait`]: super::Engine::blocking_lock_wait
    ///
    /// A wait shorter than the coarse clock can time (under
    /// [`fast_poll_ns`](crate::clock::fast_poll_ns)) is not handed to the sinks, as short
    /// holds and polls are not: OpenTelemetry's histogram takes a lock per sample, and in a lock
    /// convoy every acquisition waits. `tokio.lock.contentions` counts them all.
    #[inline]
    pub(crate) fn record_wait(&self, op: LockOp, wait: Duration) -> bool {
        self.wait.record(self.bounds, wait);
        if !self.recorders.is_empty() && wait.as_nanos() >= u128::from(crate::clock::fast_poll_ns())
        {
            for recorder in self.recorders.iter() {
                recorder.record_wait(op, wait);
            }
        }
        self.kind.blocks_thread() && wait >= self.slow_threshold
    }

    /// Every acquisition that obtained the lock.
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn acquisitions(&self) -> u64 {
        // Contentions first: read after them, the sum is never below them.
        let contentions = self.contentions();
        contentions + self.uncontended.load(Relaxed)
    }

    /// Acquisitions that found the lock taken and waited for it.
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn contentions(&self) -> u64 {
        self.wait.count()
    }

    /// An acquisition was given up after waiting `wait` (a timeout, or a dropped acquire future).
    pub(crate) fn record_cancelled_wait(&self, op: LockOp, wait: Duration) {
        self.cancellations.fetch_add(1, Relaxed);
        self.cancelled_wait.record(self.bounds, wait);
        for recorder in self.recorders.iter() {
            recorder.record_cancelled_wait(op, wait);
        }
    }

    /// A guard was held `held_ns` (coarse clock). A hold shorter than the clock can time (under
    /// [`fast_poll_ns`](crate::clock::fast_poll_ns)) is counted as a fast poll is: one atomic
    /// add into this thread's shard.
    #[inline]
    pub(crate) fn record_hold(&self, op: LockOp, held_ns: u64) {
        if held_ns < crate::clock::fast_poll_ns() {
            self.hold
                .count_in_bucket(this_threads_shard(), self.fast_bucket, 1);
            return;
        }
        let held = Duration::from_nanos(held_ns);
        self.hold.record(self.bounds, held);
        for recorder in self.recorders.iter() {
            recorder.record_hold(op, held);
        }
    }

    /// The instance's slow threshold, which a wait on a worker is reported at.
    pub(crate) fn slow_threshold(&self) -> Duration {
        self.slow_threshold
    }

    /// The lock's name, or its creation site.
    pub(crate) fn describe(&self) -> String {
        match self.name {
            Some(name) => format!("{} {name:?} (created at {})", self.kind, self.location),
            None => format!("{} created at {}", self.kind, self.location),
        }
    }
}

type Key = (LockKind, &'static str, u32, u32, Option<&'static str>);

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<Key, &'static LockSite>,
    files: HashMap<Box<str>, &'static str>,
    all: Vec<&'static LockSite>,
    overflow: Option<&'static LockSite>,
}

/// The most lock sites an instance tracks, whatever `max_sites` says: a tokio RwLock has four
/// attribute sets of `tokio.lock.wait.duration` (read and write, acquired and cancelled), so
/// 256 locks and `<other>` stay at 1,028, under the OpenTelemetry SDK's 2,000 per instrument.
pub(crate) const MAX_LOCK_SITES: usize = 256;

/// The bounded set of lock sites of one stallscope instance.
#[derive(Debug)]
pub(crate) struct LockTable {
    table: Mutex<Table>,
    max_sites: usize,
    /// The instance's bounds, leaked like the sites that point to them.
    bounds: &'static Bounds,
    slow_threshold: Duration,
}

impl LockTable {
    pub(crate) fn new(max_sites: usize, bounds: &Bounds, slow_threshold: Duration) -> Self {
        LockTable {
            table: Mutex::new(Table::default()),
            max_sites: max_sites.min(MAX_LOCK_SITES),
            bounds: Box::leak(Box::new(bounds.clone())),
            slow_threshold,
        }
    }

    /// The site of a lock created at `location` (names are `&'static`: a lock's name is a
    /// constant in code, so names cannot grow the table without bound).
    pub(crate) fn intern(
        &self,
        kind: LockKind,
        file: &str,
        line: u32,
        column: u32,
        name: Option<&'static str>,
        init: &dyn Fn(&mut LockSite),
    ) -> &'static LockSite {
        let bounds = self.bounds;
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let known_file = t.files.get(file).copied();
        if let Some(site) = known_file.and_then(|f| t.by_key.get(&(kind, f, line, column, name))) {
            return site;
        }
        let overflowing = t.all.len() >= self.max_sites;
        if overflowing {
            if let Some(site) = t.overflow {
                return site;
            }
        }
        let location = if overflowing {
            Location {
                file: OTHER,
                line: 0,
                column: 0,
            }
        } else {
            // Only what becomes a site is interned, so the table's strings stay bounded.
            let file = match known_file {
                Some(f) => f,
                None => {
                    let leaked: &'static str = Box::leak(file.into());
                    t.files.insert(file.into(), leaked);
                    leaked
                }
            };
            Location { file, line, column }
        };
        let mut site = LockSite {
            kind,
            location,
            name: if overflowing { None } else { name },
            wait: ShardedHistogram::new(bounds),
            hold: ShardedHistogram::new(bounds),
            bounds,
            slow_threshold: self.slow_threshold,
            fast_bucket: bounds.bucket(crate::clock::fast_poll_ns()),
            uncontended: ShardedCounter::default(),
            cancellations: AtomicU64::new(0),
            cancelled_wait: ShardedHistogram::new(bounds),
            blocking_waits: AtomicU64::new(0),
            held_across_await: AtomicU64::new(0),
            recorders: Box::default(),
            owner: Weak::new(),
        };
        init(&mut site);
        let site: &'static LockSite = Box::leak(Box::new(site));
        t.all.push(site);
        if overflowing {
            t.overflow = Some(site);
        } else {
            let key = (kind, location.file, line, column, name);
            t.by_key.insert(key, site);
        }
        site
    }

    pub(crate) fn all(&self) -> Vec<&'static LockSite> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone()
    }
}
