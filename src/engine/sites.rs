//! Call sites: where tasks and blocking jobs are spawned, interned once per (kind, location,
//! task name) and kept for the life of the process.
//!
//! The table is bounded: at most `max_sites` sites per instance and `max_task_names_per_location`
//! names per location, so a task name built per request cannot create unbounded series. What
//! does not fit is recorded in one overflow site per kind, whose location reads `<other>`.
//! Sites are leaked on purpose: the hot path holds `&'static Site` without reference counting,
//! and the bound keeps the leak to a few hundred small allocations per instance.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::histogram::{AtomicHistogram, Bounds, ShardedHistogram};
use super::sink::SiteRecorder;

/// What runs at a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TaskKind {
    /// An async task: `tokio::spawn`, `spawn_local`, `block_on`.
    Async,
    /// A `spawn_blocking` job.
    Blocking,
}

/// A source location, as tokio records it for spawn calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Location {
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    pub(crate) column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

pub(crate) const OTHER: &str = "<other>";

/// One call site and everything measured there.
#[derive(Debug)]
pub(crate) struct Site {
    pub(crate) kind: TaskKind,
    pub(crate) location: Location,
    pub(crate) task_name: Option<&'static str>,
    /// Async: every poll's duration. Blocking: every job's run time.
    pub(crate) busy: ShardedHistogram,
    /// Blocking only: time from `spawn_blocking` until a pool thread started the job.
    pub(crate) queue_wait: AtomicHistogram,
    /// Polls (or queue waits) over the slow threshold, and their summed duration.
    pub(crate) slow_count: AtomicU64,
    pub(crate) slow_ns: AtomicU64,
    /// Tasks (or jobs) spawned here.
    pub(crate) spawned: AtomicU64,
    /// Blocking only: jobs queued here and not yet started, and jobs running now.
    pub(crate) queued: AtomicI64,
    pub(crate) running: AtomicI64,
    /// Async only: where the latest stall of this site was blocked, from a captured stack.
    pub(crate) blocked_in: Mutex<Option<BlockedIn>>,
    /// The sinks' handles on this site, bound once when it was made (see [`super::sink`]).
    pub(crate) recorders: Box<[Box<dyn SiteRecorder>]>,
}

/// The user's innermost frame in a stack captured during a stall of the site, for the summary
/// (each slow-poll report carries its own worker's stack, see `engine::deferred`).
#[derive(Clone, Debug)]
pub(crate) struct BlockedIn {
    /// `function (file:line)`.
    pub(crate) frame: String,
}

impl Site {
    /// Where the latest stall of the site whose stack was captured and resolved was blocked.
    pub(crate) fn blocked_in(&self) -> Option<BlockedIn> {
        let note = self.blocked_in.lock().unwrap_or_else(|e| e.into_inner());
        note.clone()
    }
}

/// A site as found in a span or hook, before interning.
pub(crate) struct SiteKey<'a> {
    pub(crate) kind: TaskKind,
    pub(crate) file: &'a str,
    pub(crate) line: u32,
    pub(crate) column: u32,
    pub(crate) task_name: Option<&'a str>,
}

impl SiteKey<'_> {
    /// A quick hash (code locations are not attacker-chosen, so no SipHash): it runs on every
    /// spawn in full mode.
    fn hash64(&self) -> u64 {
        let mut h = QuickHasher(0);
        (self.kind, self.file, self.line, self.column, self.task_name).hash(&mut h);
        h.finish()
    }

    fn matches(&self, site: &Site) -> bool {
        site.kind == self.kind
            && site.location.file == self.file
            && site.location.line == self.line
            && site.location.column == self.column
            && site.task_name == self.task_name
    }
}

/// The Fx hash (rustc's): a rotate, xor and multiply per 8 bytes.
struct QuickHasher(u64);

impl QuickHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for QuickHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Sites this thread found lately, by key hash: a spawn of a known site takes no lock.
const RECENT_SITES: usize = 64;

/// (table id, key hash, site); table id 0 marks an empty entry.
type RecentSite = Cell<(u64, u64, Option<&'static Site>)>;

thread_local! {
    static RECENT: [RecentSite; RECENT_SITES] =
        const { [const { Cell::new((0, 0, None)) }; RECENT_SITES] };
}

/// Creates the per-site export state when a site is first seen.
pub(crate) type SiteInit<'a> = &'a dyn Fn(&mut Site);

#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<u64, Vec<&'static Site>>,
    all: Vec<&'static Site>,
    files: HashMap<Box<str>, &'static str>,
    names_per_location: HashMap<(TaskKind, &'static str, u32, u32), usize>,
    overflow: [Option<&'static Site>; 2],
}

/// The bounded, append-only set of sites of one stallscope instance.
#[derive(Debug)]
pub(crate) struct SiteTable {
    /// Tells this table's entries in [`RECENT`] from another instance's (never 0).
    id: u64,
    table: Mutex<Table>,
    max_sites: usize,
    max_names_per_location: usize,
}

impl SiteTable {
    pub(crate) fn new(max_sites: usize, max_names_per_location: usize) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        SiteTable {
            id: NEXT_ID.fetch_add(1, Relaxed),
            table: Mutex::new(Table::default()),
            max_sites,
            max_names_per_location,
        }
    }

    /// The site for `key`, created on first sight. Called once per spawned task, never per poll.
    pub(crate) fn intern(
        &self,
        key: &SiteKey<'_>,
        bounds: &Bounds,
        init: SiteInit<'_>,
    ) -> &'static Site {
        let hash = key.hash64();
        let entry = (hash as usize) % RECENT_SITES;
        let recent = RECENT
            .try_with(|r| match r[entry].get() {
                (id, h, Some(site)) if id == self.id && h == hash && key.matches(site) => {
                    Some(site)
                }
                _ => None,
            })
            .ok()
            .flatten();
        if let Some(site) = recent {
            return site;
        }
        let site = self.intern_locked(key, hash, bounds, init);
        let _ = RECENT.try_with(|r| r[entry].set((self.id, hash, Some(site))));
        site
    }

    /// [`Self::intern`] past this thread's recent sites: the table, under its lock.
    fn intern_locked(
        &self,
        key: &SiteKey<'_>,
        hash: u64,
        bounds: &Bounds,
        init: SiteInit<'_>,
    ) -> &'static Site {
        // A poisoned lock only means another thread panicked mid-insert; the table stays usable.
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(site) = t
            .by_hash
            .get(&hash)
            .and_then(|sites| sites.iter().find(|s| key.matches(s)))
        {
            return site;
        }
        // Past the per-location cap, a new name is recorded as `<other>` at that location.
        let names = t
            .files
            .get(key.file)
            .and_then(|file| {
                let location = (key.kind, *file, key.line, key.column);
                t.names_per_location.get(&location).copied()
            })
            .unwrap_or(0);
        let capped_name = match key.task_name {
            Some(_) if names >= self.max_names_per_location => Some(OTHER),
            name => name,
        };
        let capped = SiteKey {
            task_name: capped_name,
            ..*key
        };
        let capped_hash = capped.hash64();
        if let Some(site) = t
            .by_hash
            .get(&capped_hash)
            .and_then(|sites| sites.iter().find(|s| capped.matches(s)))
        {
            return site;
        }
        if t.all.len() >= self.max_sites {
            return Self::overflow(&mut t, key.kind, None, bounds, init);
        }
        // Only what becomes a site is interned, so the table's strings stay bounded too.
        let file = Self::intern_file(&mut t, key.file);
        if capped_name.is_some_and(|n| n != OTHER) {
            let location = (key.kind, file, key.line, key.column);
            *t.names_per_location.entry(location).or_insert(0) += 1;
        }
        let task_name = capped_name;
        let task_name = task_name.map(|n| -> &'static str {
            if n == OTHER {
                OTHER
            } else {
                Box::leak(n.into())
            }
        });
        let site = Self::make(
            key.kind,
            Location {
                file,
                line: key.line,
                column: key.column,
            },
            task_name,
            bounds,
            init,
        );
        t.by_hash.entry(capped_hash).or_default().push(site);
        t.all.push(site);
        site
    }

    fn overflow(
        t: &mut Table,
        kind: TaskKind,
        _name: Option<&str>,
        bounds: &Bounds,
        init: SiteInit<'_>,
    ) -> &'static Site {
        let slot = kind as usize;
        if let Some(site) = t.overflow[slot] {
            return site;
        }
        let location = Location {
            file: OTHER,
            line: 0,
            column: 0,
        };
        let site = Self::make(kind, location, None, bounds, init);
        t.overflow[slot] = Some(site);
        t.all.push(site);
        site
    }

    fn intern_file(t: &mut Table, file: &str) -> &'static str {
        if let Some(f) = t.files.get(file) {
            return f;
        }
        let leaked: &'static str = Box::leak(file.into());
        t.files.insert(file.into(), leaked);
        leaked
    }

    fn make(
        kind: TaskKind,
        location: Location,
        task_name: Option<&'static str>,
        bounds: &Bounds,
        init: SiteInit<'_>,
    ) -> &'static Site {
        let mut site = Site {
            kind,
            location,
            task_name,
            busy: ShardedHistogram::new(bounds),
            queue_wait: AtomicHistogram::new(bounds),
            slow_count: AtomicU64::new(0),
            slow_ns: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            running: AtomicI64::new(0),
            blocked_in: Mutex::new(None),
            recorders: Box::default(),
        };
        init(&mut site);
        Box::leak(Box::new(site))
    }

    /// Every site so far (a copy of the list; sites themselves are shared).
    pub(crate) fn all(&self) -> Vec<&'static Site> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone()
    }

    /// Calls `f` for each site without copying the list (exporter callbacks).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&'static Site)) {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.all.iter().for_each(|s| f(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(file: &'a str, line: u32, name: Option<&'a str>) -> SiteKey<'a> {
        SiteKey {
            kind: TaskKind::Async,
            file,
            line,
            column: 5,
            task_name: name,
        }
    }

    #[test]
    fn same_key_same_site_and_bounded_growth() {
        let bounds = Bounds::new(&[0.1]);
        let t = SiteTable::new(4, 2);
        let noop: SiteInit<'_> = &|_| {};
        let a = t.intern(&key("a.rs", 1, None), &bounds, noop);
        assert!(std::ptr::eq(
            a,
            t.intern(&key("a.rs", 1, None), &bounds, noop)
        ));

        // Per-request names collapse into `<other>` after the per-location cap.
        let names: Vec<_> = (0..10)
            .map(|i| t.intern(&key("a.rs", 2, Some(&format!("req-{i}"))), &bounds, noop))
            .collect();
        assert_eq!(names[0].task_name, Some("req-0"));
        assert_eq!(names[1].task_name, Some("req-1"));
        assert!(names[2..].iter().all(|s| s.task_name == Some(OTHER)));
        assert!(names[2..].iter().all(|s| std::ptr::eq(*s, names[2])));

        // Past max_sites every new location shares one overflow site.
        let extra: Vec<_> = (10..20)
            .map(|l| t.intern(&key("b.rs", l, None), &bounds, noop))
            .collect();
        assert!(extra.iter().all(|s| s.location.file == OTHER));
        assert!(t.all().len() <= 5);
    }

    #[test]
    fn a_threads_recent_sites_belong_to_their_table() {
        let bounds = Bounds::new(&[0.1]);
        let noop: SiteInit<'_> = &|_| {};
        let (first, second) = (SiteTable::new(8, 2), SiteTable::new(8, 2));
        let in_first = first.intern(&key("c.rs", 7, Some("job")), &bounds, noop);
        // Same key, same thread, another instance: its own site, not the one cached above.
        let in_second = second.intern(&key("c.rs", 7, Some("job")), &bounds, noop);
        assert!(!std::ptr::eq(in_first, in_second));
        assert_eq!(second.all().len(), 1);
        // Keys differing only in name or line each keep their site through the cache.
        let other_name = first.intern(&key("c.rs", 7, Some("other")), &bounds, noop);
        let other_line = first.intern(&key("c.rs", 8, Some("job")), &bounds, noop);
        assert!(!std::ptr::eq(in_first, other_name) && !std::ptr::eq(in_first, other_line));
        assert!(std::ptr::eq(
            in_first,
            first.intern(&key("c.rs", 7, Some("job")), &bounds, noop)
        ));
        assert_eq!(first.all().len(), 3);
    }
}
