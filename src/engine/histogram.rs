//! A fixed-bucket histogram that any thread records into with relaxed atomic adds: no lock, no
//! allocation. Snapshots are read by the exporter and the report, off the hot path.

use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::time::Duration;

use crate::snapshot::HistogramSnapshot;

/// Bucket bounds in nanoseconds, shared by every histogram of one stallscope instance.
#[derive(Clone, Debug)]
pub(crate) struct Bounds {
    upper_ns: Box<[u64]>,
    seconds: Box<[f64]>,
}

impl Bounds {
    /// `seconds` must be strictly increasing and positive (checked by the config).
    pub(crate) fn new(seconds: &[f64]) -> Bounds {
        Bounds {
            upper_ns: seconds.iter().map(|s| (s * 1e9) as u64).collect(),
            seconds: seconds.into(),
        }
    }

    /// The bounds in seconds, as exported.
    pub(crate) fn seconds(&self) -> &[f64] {
        &self.seconds
    }

    /// Index of the bucket holding `ns`: the first bound `>= ns`, or the overflow bucket.
    /// Inclusive upper bounds, as OpenTelemetry and Prometheus define them.
    #[inline]
    pub(crate) fn bucket(&self, ns: u64) -> usize {
        // A sample under the first bound (a wait the coarse clock saw as 0) needs no search.
        match self.upper_ns.first() {
            Some(&first) if ns <= first => 0,
            _ => self.upper_ns.partition_point(|&upper| upper < ns),
        }
    }
}

/// Number of shards of a [`ShardedHistogram`]; threads beyond it share shards.
const SHARDS: usize = 8;

/// One histogram per thread shard, each on its own cache lines, merged when read: workers
/// recording polls of tasks from the same site never write the same cache line.
#[derive(Debug)]
pub(crate) struct ShardedHistogram {
    shards: Box<[CachePadded<AtomicHistogram>]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct CachePadded<T>(T);

std::thread_local! {
    static SHARD: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % SHARDS
    };
}

/// This thread's shard (assigned round-robin on first use).
#[inline]
pub(crate) fn this_threads_shard() -> usize {
    SHARD.with(|s| *s)
}

/// A counter any thread adds to without sharing a cache line with other threads' adds: one
/// atomic per thread shard, summed when read. Reads like an `AtomicU64`.
#[derive(Debug, Default)]
pub(crate) struct ShardedCounter {
    shards: [CachePadded<AtomicU64>; SHARDS],
}

impl ShardedCounter {
    /// Adds `n` in this thread's shard.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.shards[this_threads_shard()].0.fetch_add(n, Relaxed);
    }

    /// The sum over shards (each read with `order`).
    pub(crate) fn load(&self, order: Ordering) -> u64 {
        self.shards.iter().map(|s| s.0.load(order)).sum()
    }
}

impl ShardedHistogram {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        ShardedHistogram {
            shards: (0..SHARDS)
                .map(|_| CachePadded(AtomicHistogram::new(bounds)))
                .collect(),
        }
    }

    /// Records into the calling thread's shard.
    #[inline]
    pub(crate) fn record(&self, bounds: &Bounds, duration: Duration) {
        self.shards[this_threads_shard()].0.record(bounds, duration);
    }

    /// Counts one sample in `bucket` of `shard` without adding to the sum: for samples whose
    /// duration is only known to lie in that bucket (production mode's sub-tick polls).
    #[inline]
    pub(crate) fn count_in_bucket(&self, shard: usize, bucket: usize, n: u64) {
        self.shards[shard].0.buckets[bucket].fetch_add(n, Relaxed);
    }

    /// Takes back one sample counted in `bucket` of `shard` by [`Self::count_in_bucket`] (the
    /// caller knows it is there: never below zero).
    #[inline]
    pub(crate) fn uncount_in_bucket(&self, shard: usize, bucket: usize) {
        self.shards[shard].0.buckets[bucket].fetch_sub(1, Relaxed);
    }

    /// Records `ns` into `shard`.
    #[inline]
    pub(crate) fn record_in_shard(&self, shard: usize, bounds: &Bounds, ns: u64) {
        self.shards[shard].0.record_ns(bounds, ns);
    }

    /// Number of samples, over all shards.
    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn count(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.0.buckets.iter())
            .map(|b| b.load(Relaxed))
            .sum()
    }

    #[cfg_attr(not(feature = "_otlp"), allow(dead_code))]
    pub(crate) fn sum(&self) -> Duration {
        self.shards.iter().map(|s| s.0.sum()).sum()
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut merged = HistogramSnapshot::default();
        for shard in self.shards.iter() {
            let s = shard.0.snapshot();
            if merged.counts.is_empty() {
                merged.counts = vec![0; s.counts.len()];
            }
            for (m, c) in merged.counts.iter_mut().zip(&s.counts) {
                *m += c;
            }
            merged.count += s.count;
            merged.sum += s.sum;
            merged.max = merged.max.max(s.max);
        }
        merged
    }
}

#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    /// `bounds.len() + 1` buckets; the last one is the overflow.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) fn new(bounds: &Bounds) -> Self {
        AtomicHistogram {
            buckets: (0..=bounds.upper_ns.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, bounds: &Bounds, duration: Duration) {
        self.record_ns(
            bounds,
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    #[inline]
    pub(crate) fn record_ns(&self, bounds: &Bounds, ns: u64) {
        self.buckets[bounds.bucket(ns)].fetch_add(1, Relaxed);
        if ns == 0 {
            return; // nothing to add to the sum, and not a maximum
        }
        self.sum_ns.fetch_add(ns, Relaxed);
        if ns > self.max_ns.load(Relaxed) {
            self.max_ns.fetch_max(ns, Relaxed);
        }
    }

    /// Sum of all samples.
    pub(crate) fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Relaxed))
    }

    /// Number of samples (without copying the buckets).
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
            max: Duration::from_nanos(self.max_ns.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_inclusive_buckets() {
        let bounds = Bounds::new(&[0.001, 0.01, 0.1]);
        let h = AtomicHistogram::new(&bounds);
        for ms in [0, 1, 2, 10, 50, 100, 101, 5000] {
            h.record(&bounds, Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 2, 2]);
        assert_eq!(s.count, 8);
        assert_eq!(s.max, Duration::from_secs(5));
        assert_eq!(s.sum, Duration::from_millis(5264));
    }

    #[test]
    fn shards_merge_into_one_snapshot() {
        let bounds = Bounds::new(&[0.001, 0.01]);
        let h = ShardedHistogram::new(&bounds);
        h.record_in_shard(0, &bounds, 500_000);
        h.record_in_shard(3, &bounds, 5_000_000);
        h.count_in_bucket(7, 0, 1);
        std::thread::scope(|s| {
            s.spawn(|| h.record(&bounds, Duration::from_millis(50)));
        });
        let snap = h.snapshot();
        assert_eq!(snap.counts, vec![2, 1, 1]);
        assert_eq!(snap.count, 4);
        assert_eq!(snap.sum, Duration::from_micros(55_500));
        assert_eq!(snap.max, Duration::from_millis(50));
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds_capped_by_max() {
        let bounds = Bounds::new(&[0.001, 0.01, 0.1]);
        let h = AtomicHistogram::new(&bounds);
        for _ in 0..99 {
            h.record(&bounds, Duration::from_micros(500));
        }
        h.record(&bounds, Duration::from_millis(70));
        let s = h.snapshot();
        assert_eq!(
            s.quantile(bounds.seconds(), 0.5),
            Some(Duration::from_micros(1000))
        );
        assert_eq!(
            s.quantile(bounds.seconds(), 1.0),
            Some(Duration::from_millis(70))
        );
        assert_eq!(
            HistogramSnapshot::default().quantile(bounds.seconds(), 0.5),
            None
        );
    }
}
