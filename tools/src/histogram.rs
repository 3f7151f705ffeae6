//! A fixed-size latency histogram: log-linear buckets with 128 steps per
//! power of two (under 0.8% relative error), so a bench of any length uses
//! the same ~57 KiB per client and histograms merge by adding counts.
//!
//! [`LiveHistogram`] is its coarse, shared sibling for the bench's live
//! progress line: every client counts into the same atomics and the
//! display takes (and resets) the last second's counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are counted exactly.
const EXACT_MAX: u64 = 256;
/// Buckets per power of two above [`EXACT_MAX`].
const STEPS_PER_OCTAVE: u64 = 128;
/// Octaves above [`EXACT_MAX`] that a u64 spans (2^8 .. 2^64).
const OCTAVES: u64 = 56;
const BUCKETS: usize = (EXACT_MAX + OCTAVES * STEPS_PER_OCTAVE) as usize;

/// Counts of values (nanoseconds, in the bench).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT_MAX {
        return value as usize;
    }
    let msb = u64::from(63 - value.leading_zeros()); // 8..=63
    let step = (value >> (msb - 7)) - STEPS_PER_OCTAVE; // 0..128
    (EXACT_MAX + (msb - 8) * STEPS_PER_OCTAVE + step) as usize
}

/// The smallest value of a bucket.
fn bucket_low(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < EXACT_MAX {
        return bucket;
    }
    let octave = (bucket - EXACT_MAX) / STEPS_PER_OCTAVE;
    let step = (bucket - EXACT_MAX) % STEPS_PER_OCTAVE;
    (STEPS_PER_OCTAVE + step) << (octave + 1)
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact), 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1): the low end of the bucket holding
    /// the ⌈q·n⌉-th smallest value, never above the maximum; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_low(bucket).min(self.max);
            }
        }
        self.max
    }
}

/// Buckets per power of two of a [`LiveHistogram`] (under 6.25% error:
/// enough for a progress line).
const LIVE_STEPS_PER_OCTAVE: u64 = 16;
/// Values below this are counted exactly by a [`LiveHistogram`].
const LIVE_EXACT_MAX: u64 = 2 * LIVE_STEPS_PER_OCTAVE;
const LIVE_BUCKETS: usize = (LIVE_EXACT_MAX + 59 * LIVE_STEPS_PER_OCTAVE) as usize;

fn live_bucket_of(value: u64) -> usize {
    if value < LIVE_EXACT_MAX {
        return value as usize;
    }
    let msb = u64::from(63 - value.leading_zeros()); // 5..=63
    let step = (value >> (msb - 4)) - LIVE_STEPS_PER_OCTAVE; // 0..16
    (LIVE_EXACT_MAX + (msb - 5) * LIVE_STEPS_PER_OCTAVE + step) as usize
}

fn live_bucket_low(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LIVE_EXACT_MAX {
        return bucket;
    }
    let octave = (bucket - LIVE_EXACT_MAX) / LIVE_STEPS_PER_OCTAVE;
    let step = (bucket - LIVE_EXACT_MAX) % LIVE_STEPS_PER_OCTAVE;
    (LIVE_STEPS_PER_OCTAVE + step) << (octave + 1)
}

/// A histogram many threads count into at once (one relaxed atomic add
/// per value) and one reader drains.
pub struct LiveHistogram {
    counts: Vec<AtomicU64>,
}

impl Default for LiveHistogram {
    fn default() -> Self {
        LiveHistogram {
            counts: (0..LIVE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LiveHistogram {
    /// Counts one value.
    pub fn record(&self, value: u64) {
        self.counts[live_bucket_of(value)].fetch_add(1, Ordering::Relaxed);
    }

    /// The value at quantile `q` of everything counted since the last
    /// take (the low end of its bucket), and the count; both 0 when
    /// nothing was counted. Resets the counts.
    pub fn take_quantile(&self, q: f64) -> (u64, u64) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|count| count.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return (0, 0);
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (live_bucket_low(bucket), total);
            }
        }
        (0, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut previous = 0;
        for value in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS);
            assert!(bucket >= previous, "bucket order broke at {value}");
            previous = bucket;
            let low = bucket_low(bucket);
            assert!(low <= value, "{value} below its bucket's low end {low}");
            assert!(
                (value - low) as f64 <= value as f64 / 128.0,
                "bucket of {value} too wide"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_run() {
        let mut histogram = Histogram::default();
        for value in 1..=100_000u64 {
            histogram.record(value);
        }
        assert_eq!(histogram.count(), 100_000);
        assert_eq!(histogram.max(), 100_000);
        for (q, expected) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = histogram.quantile(q) as f64;
            assert!(
                (got - expected).abs() / expected < 0.01,
                "q{q}: {got} vs {expected}"
            );
        }
        assert_eq!(histogram.quantile(0.0), 1);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn merging_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.quantile(0.5), 20);
    }

    #[test]
    fn live_buckets_are_monotonic_and_coarse_but_close() {
        let mut previous = 0;
        for value in (0..5_000_000u64)
            .step_by(13)
            .chain([u64::MAX / 3, u64::MAX])
        {
            let bucket = live_bucket_of(value);
            assert!(bucket < LIVE_BUCKETS, "{value}");
            assert!(bucket >= previous, "bucket order broke at {value}");
            previous = bucket;
            let low = live_bucket_low(bucket);
            assert!(low <= value, "{value} below its bucket's low end {low}");
            assert!((value - low) as f64 <= value as f64 / 16.0, "{value}");
        }
    }

    #[test]
    fn live_quantiles_drain_the_counts() {
        let live = LiveHistogram::default();
        assert_eq!(live.take_quantile(0.99), (0, 0));
        for value in 1..=1000u64 {
            live.record(value * 1000);
        }
        let (p99, count) = live.take_quantile(0.99);
        assert_eq!(count, 1000);
        assert!((p99 as f64 - 990_000.0).abs() / 990_000.0 < 0.07, "{p99}");
        // Taken: the next second starts empty.
        assert_eq!(live.take_quantile(0.99), (0, 0));
        live.record(7);
        assert_eq!(live.take_quantile(0.5), (7, 1));
    }
}
