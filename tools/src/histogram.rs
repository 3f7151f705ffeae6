//! A fixed-size latency histogram: log-linear buckets with 128 steps per
//! power of two (under 0.8% relative error), so a bench of any length uses
//! the same ~57 KiB per client and histograms merge by adding counts.

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
}
