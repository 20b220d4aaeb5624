//! A latency histogram with log-linear buckets: exact below 64 ns, then 32
//! buckets per power of two (at most 3 % relative error), any range up to
//! `u64::MAX` nanoseconds in 15 KiB, so recording is one increment.

use std::time::Duration;

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB as u64;
const BUCKETS: usize = LINEAR as usize + (64 - 6) * SUB;

/// Latencies in nanoseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS].into_boxed_slice(), count: 0, max: 0 }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 6
    let mantissa = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    LINEAR as usize + (e as usize - 6) * SUB + mantissa
}

/// The middle of a bucket.
fn value(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let e = (i - LINEAR as usize) / SUB + 6;
    let m = ((i - LINEAR as usize) % SUB) as u64;
    let width = 1u64 << (e as u32 - SUB_BITS);
    ((SUB as u64 + m) << (e as u32 - SUB_BITS)).saturating_add(width / 2)
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The latency at quantile `q` (0 to 1); the exact maximum at 1.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        if q >= 1.0 {
            return Some(Duration::from_nanos(self.max));
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(value(i).min(self.max)));
            }
        }
        Some(Duration::from_nanos(self.max))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in (0..20_000u64).chain([1 << 30, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v}");
            last = i;
            let mid = value(i) as f64;
            assert!((mid - v as f64).abs() <= v as f64 * 0.032 + 0.5, "{v} -> {mid}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p50 - 500.0).abs() < 20.0, "{p50}");
        assert!((p99 - 990.0).abs() < 35.0, "{p99}");
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(1000)));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(2));
        h.merge(&other);
        assert_eq!((h.count(), h.quantile(1.0)), (1001, Some(Duration::from_secs(2))));
    }
}
