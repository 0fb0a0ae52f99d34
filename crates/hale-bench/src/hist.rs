//! A cheap, bounded latency histogram (HDR-like, log-linear buckets).
//!
//! Values are microseconds. Below `2 * SUB` they are stored exactly; above,
//! each power-of-two octave is split into `SUB` equal buckets, so a recorded
//! value is known to within `1 / SUB` (< 0.8 %). Values above `MAX_US`
//! (60 s) land in the last bucket; the exact maximum is kept separately.
//! One histogram is ~20 KiB and lives in one connection task; they are merged
//! at the end.

/// Sub-buckets per octave (power of two).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS; // 128
/// Values below this are exact (bucket index == value).
const LINEAR: u64 = 2 * SUB; // 256
/// Highest value tracked with bounded error: 60 s in microseconds.
pub const MAX_US: u64 = 60_000_000;

const fn bucket_index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    // v >= 256, so e >= 8.
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    let m = v >> shift; // in [SUB, 2*SUB)
    (LINEAR + (e - SUB_BITS - 1) as u64 * SUB + (m - SUB)) as usize
}

const BUCKETS: usize = bucket_index(MAX_US) + 1;

/// Inclusive value range `[low, high]` of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i);
    }
    let k = i - LINEAR;
    let e = (k / SUB) as u32 + SUB_BITS + 1;
    let m = SUB + k % SUB;
    let shift = e - SUB_BITS;
    let low = m << shift;
    (low, low + (1u64 << shift) - 1)
}

/// Latency histogram in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    min_us: u64,
    max_us: u64,
    sum_us: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min_us", &self.min_us)
            .field("max_us", &self.max_us)
            .finish_non_exhaustive()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            min_us: u64::MAX,
            max_us: 0,
            sum_us: 0,
        }
    }

    pub fn record_us(&mut self, v: u64) {
        let idx = bucket_index(v.min(MAX_US));
        self.counts[idx] += 1;
        self.total += 1;
        self.min_us = self.min_us.min(v);
        self.max_us = self.max_us.max(v);
        self.sum_us += u128::from(v);
    }

    pub fn record(&mut self, d: std::time::Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_us(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max_us)
    }

    pub fn min_us(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min_us)
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum_us as f64 / self.total as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value `v`
    /// such that at least `ceil(q * count)` values are `<= v` (nearest rank).
    /// Reported as the highest value its bucket could hold, clamped to the
    /// recorded min/max, so exact below 256 µs and within 0.8 % above (up to
    /// 60 s; beyond that only the max is exact).
    /// None when empty.
    pub fn value_at_quantile_us(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The epsilon keeps 0.99 * 100 = 99.00000000000001 at rank 99.
        let rank = ((q * self.total as f64 - 1e-9).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The last bucket also holds everything above MAX_US.
                let high = if i == BUCKETS - 1 { u64::MAX } else { bucket_range(i).1 };
                return Some(high.clamp(self.min_us, self.max_us));
            }
        }
        Some(self.max_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ranges_tile_the_value_space() {
        let mut next = 0u64;
        for i in 0..BUCKETS {
            let (low, high) = bucket_range(i);
            assert_eq!(low, next, "bucket {i} starts where the previous ended");
            assert!(high >= low);
            assert_eq!(bucket_index(low), i);
            assert_eq!(bucket_index(high), i);
            next = high + 1;
        }
        assert!(next > MAX_US);
    }

    #[test]
    fn bucket_width_is_bounded_relative_to_value() {
        for i in LINEAR as usize..BUCKETS {
            let (low, high) = bucket_range(i);
            let width = (high - low + 1) as f64;
            assert!(width / low as f64 <= 1.0 / SUB as f64 + 1e-12, "bucket {i}");
        }
    }

    fn hist(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values {
            h.record_us(v);
        }
        h
    }

    #[test]
    fn quantiles_exact_in_linear_range() {
        let values: Vec<u64> = (1..=100).collect();
        let h = hist(&values);
        fn check(h: &Histogram, q: f64, expected: u64) {
            assert_eq!(h.value_at_quantile_us(q), Some(expected), "q = {q}");
        }
        check(&h, 0.0, 1);
        check(&h, 0.01, 1);
        check(&h, 0.5, 50);
        check(&h, 0.9, 90);
        check(&h, 0.99, 99);
        check(&h, 0.999, 100);
        check(&h, 1.0, 100);
        assert_eq!(h.count(), 100);
        assert_eq!(h.min_us(), Some(1));
        assert_eq!(h.max_us(), Some(100));
        assert_eq!(h.mean_us(), Some(50.5));
    }

    #[test]
    fn quantiles_single_and_repeated_values() {
        // (values, quantile, expected)
        let cases: &[(&[u64], f64, u64)] = &[
            (&[7], 0.5, 7),
            (&[7], 0.99, 7),
            (&[0, 0, 0, 10], 0.5, 0),
            (&[0, 0, 0, 10], 0.75, 0),
            (&[0, 0, 0, 10], 0.76, 10),
            (&[5, 1, 3], 0.5, 3),
            (&[1_000, 1_000, 1_000], 0.5, 1_000),
            // A single large value is clamped to the recorded max, not the bucket top.
            (&[12_345_678], 0.5, 12_345_678),
        ];
        for (values, q, expected) in cases {
            let h = hist(values);
            assert_eq!(h.value_at_quantile_us(*q), Some(*expected), "values {values:?}, q {q}");
        }
    }

    #[test]
    fn quantiles_within_relative_error_in_log_range() {
        // 1 ms .. 1000 ms in 1 ms steps.
        let values: Vec<u64> = (1..=1000).map(|ms| ms * 1000).collect();
        let h = hist(&values);
        for (q, expected) in [(0.5, 500_000u64), (0.9, 900_000), (0.99, 990_000)] {
            let got = h.value_at_quantile_us(q).unwrap();
            assert!(got >= expected, "q {q}: {got} < {expected}");
            let err = (got - expected) as f64 / expected as f64;
            assert!(err < 1.0 / SUB as f64, "q {q}: {got} vs {expected}");
        }
        assert_eq!(h.value_at_quantile_us(1.0), Some(1_000_000));
    }

    #[test]
    fn values_over_the_cap_keep_exact_max() {
        let h = hist(&[10, 90_000_000]);
        assert_eq!(h.max_us(), Some(90_000_000));
        assert_eq!(h.value_at_quantile_us(1.0), Some(90_000_000));
        assert_eq!(h.value_at_quantile_us(0.5), Some(10));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Histogram::new();
        assert_eq!(h.value_at_quantile_us(0.5), None);
        assert_eq!(h.max_us(), None);
        assert_eq!(h.mean_us(), None);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let a_vals: Vec<u64> = (0..500).map(|i| i * 37 % 5000).collect();
        let b_vals: Vec<u64> = (0..700).map(|i| 100 + i * 9_973 % 2_000_000).collect();
        let mut a = hist(&a_vals);
        let b = hist(&b_vals);
        a.merge(&b);
        let all: Vec<u64> = a_vals.iter().chain(&b_vals).copied().collect();
        let one = hist(&all);
        assert_eq!(a.count(), one.count());
        assert_eq!(a.max_us(), one.max_us());
        assert_eq!(a.min_us(), one.min_us());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.value_at_quantile_us(q), one.value_at_quantile_us(q));
        }
        // Merging an empty histogram changes nothing.
        let before = a.value_at_quantile_us(0.5);
        a.merge(&Histogram::new());
        assert_eq!(a.value_at_quantile_us(0.5), before);
        assert_eq!(a.count(), one.count());
    }
}
