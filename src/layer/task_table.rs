//! Async tasks' site and id by span id, kept outside the registry. A registry extension costs a
//! lookup of the new span, a box and a map insert per spawn, and a lookup and the extensions'
//! lock when a poll or a close misses the per-thread span-class cache (tasks spawned long before
//! they first run, tasks that moved to another worker): here it is a short critical section in
//! one of a few shards. Entries leave when their span closes, so the table holds the live async
//! tasks only, and its capacity shrinks back after a burst of them.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use super::span_classes::mix;
use crate::engine::sites::Site;

/// What full mode keeps of an async task: what its polls are counted and reported under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskEntry {
    pub(crate) site: &'static Site,
    pub(crate) task_id: u64,
}

/// Independent locks, so spawns and closes on different workers rarely meet.
const SHARDS: usize = 16;

/// A shard shrinks when it uses less than an eighth of a capacity above this many entries.
const SHRINK_ABOVE: usize = 1024;

#[derive(Default)]
pub(crate) struct TaskTable {
    shards: [Shard; SHARDS],
}

/// One lock and map per cache line pair, so two shards never share a line.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<u64, TaskEntry, BuildHasherDefault<SpanIdHasher>>>);

impl TaskTable {
    pub(crate) fn insert(&self, span: u64, entry: TaskEntry) {
        self.shard(span).insert(span, entry);
    }

    pub(crate) fn get(&self, span: u64) -> Option<TaskEntry> {
        self.shard(span).get(&span).copied()
    }

    /// Takes out the entry of a span that closes.
    pub(crate) fn remove(&self, span: u64) -> Option<TaskEntry> {
        let mut shard = self.shard(span);
        let entry = shard.remove(&span)?;
        if shard.capacity() > SHRINK_ABOVE && shard.len() < shard.capacity() / 8 {
            let keep = shard.len() * 2;
            shard.shrink_to(keep);
        }
        Some(entry)
    }

    fn shard(
        &self,
        span: u64,
    ) -> MutexGuard<'_, HashMap<u64, TaskEntry, BuildHasherDefault<SpanIdHasher>>> {
        // The top four bits of the mixed id: one of 16 shards.
        const _: () = assert!(SHARDS == 16);
        let index = (mix(span) >> 60) as usize;
        // A poisoned lock only means a panic elsewhere mid-operation; the map stays usable.
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Span ids are already unique numbers: mixed ([`mix`]), and the high half folded into the low
/// one, where the map picks its bucket.
#[derive(Default)]
struct SpanIdHasher(u64);

impl Hasher for SpanIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, id: u64) {
        let h = mix(id);
        self.0 = h ^ (h >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> &'static Site {
        use crate::engine::histogram::Bounds;
        use crate::engine::sites::{SiteKey, SiteTable, TaskKind};
        let key = SiteKey {
            kind: TaskKind::Async,
            file: "src/main.rs",
            line: 1,
            column: 1,
            task_name: None,
        };
        SiteTable::new(8, 2).intern(&key, &Bounds::new(&[0.1]), &|_| {})
    }

    #[test]
    fn entries_leave_with_their_span_and_a_burst_gives_its_memory_back() {
        let table = TaskTable::default();
        let site = site();
        let spans: Vec<u64> = (1..=200_000u64).map(|n| n | (n % 3) << 38).collect();
        for (task_id, &span) in spans.iter().enumerate() {
            table.insert(
                span,
                TaskEntry {
                    site,
                    task_id: task_id as u64,
                },
            );
        }
        assert_eq!(table.get(spans[7]).map(|e| e.task_id), Some(7));
        let capacity = |t: &TaskTable| {
            t.shards
                .iter()
                .map(|s| s.0.lock().unwrap().capacity())
                .sum::<usize>()
        };
        let burst = capacity(&table);
        for &span in &spans[..199_990] {
            assert!(table.remove(span).is_some());
        }
        assert!(table.remove(spans[0]).is_none(), "removed once");
        assert!(table.get(spans[199_995]).is_some());
        assert!(
            capacity(&table) <= SHARDS * SHRINK_ABOVE,
            "capacity {} after the burst's {burst}",
            capacity(&table)
        );
    }
}
