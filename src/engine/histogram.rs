//! A fixed-bucket histogram that any thread records into with relaxed atomic adds: no lock, no
//! allocation. Snapshots are read by the exporter and the report, off the hot path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket bounds in nanoseconds, shared by every histogram of one stallscope instance.
#[derive(Debug)]
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
    fn bucket(&self, ns: u64) -> usize {
        self.upper_ns.partition_point(|&upper| upper < ns)
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
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bounds.bucket(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        if ns > self.max_ns.load(Relaxed) {
            self.max_ns.fetch_max(ns, Relaxed);
        }
    }

    /// Sum of all samples.
    pub(crate) fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Relaxed))
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

/// A point-in-time copy of a histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Samples per bucket; `counts[i]` holds samples `<= bounds[i]`, the last one the rest.
    pub counts: Vec<u64>,
    /// Number of samples.
    pub count: u64,
    /// Sum of all samples.
    pub sum: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl HistogramSnapshot {
    /// The upper bound of the bucket holding the `q` quantile (`0.0..=1.0`), capped at the
    /// largest sample: an upper estimate, exact to one bucket.
    pub fn quantile(&self, bounds_seconds: &[f64], q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let upper = bounds_seconds
                    .get(i)
                    .map(|s| Duration::from_secs_f64(*s))
                    .unwrap_or(self.max);
                return Some(upper.min(self.max));
            }
        }
        Some(self.max)
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
