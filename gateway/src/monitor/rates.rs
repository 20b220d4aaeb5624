//! The message-rate history behind `GET /api/v1/rates` and the status
//! page's chart: the counters are sampled every [`INTERVAL`], and the
//! last [`BUCKETS`] differences (ten minutes) are kept in a ring.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::Metrics;

/// How long one bucket is.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// How many buckets are kept.
pub const BUCKETS: usize = 60;

/// Counter totals, or their growth over one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Sensor PUBLISHes handed to the broker (every QoS).
    pub messages_in: u64,
    /// Broker messages delivered to sensors (every QoS).
    pub messages_out: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
}

impl Counts {
    fn since(self, before: Counts) -> Counts {
        Counts {
            messages_in: self.messages_in.saturating_sub(before.messages_in),
            messages_out: self.messages_out.saturating_sub(before.messages_out),
            datagrams_in: self.datagrams_in.saturating_sub(before.datagrams_in),
            datagrams_out: self.datagrams_out.saturating_sub(before.datagrams_out),
        }
    }
}

/// What the counters grew by from `start` to `end` (seconds since the
/// Unix epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Its start.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// The growth.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The history as `GET /api/v1/rates` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    /// The length of a bucket, in seconds.
    pub interval_secs: u64,
    /// Complete buckets, oldest first.
    pub buckets: Vec<Bucket>,
    /// The bucket under way, from the last sample to now.
    pub current: Option<Bucket>,
}

/// The ring of buckets and the last sample.
#[derive(Debug, Default)]
pub struct RateHistory {
    ring: VecDeque<Bucket>,
    last: Option<(u64, Counts)>,
}

/// The counters the history follows, now.
pub fn totals(m: &Metrics) -> Counts {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Counts {
        messages_in: m.messages_in.iter().map(get).sum(),
        messages_out: m.messages_out.iter().map(get).sum(),
        datagrams_in: get(&m.datagrams_in),
        datagrams_out: get(&m.datagrams_out),
    }
}

impl RateHistory {
    /// A history whose first bucket starts at `wall`, from counters at
    /// zero.
    pub fn starting(wall: u64) -> Self {
        Self { ring: VecDeque::new(), last: Some((wall, Counts::default())) }
    }

    /// A sample of the counters at `wall` (seconds since the Unix epoch):
    /// the growth since the previous one becomes a bucket.
    pub fn record(&mut self, wall: u64, totals: Counts) {
        if let Some((start, before)) = self.last {
            if self.ring.len() == BUCKETS {
                self.ring.pop_front();
            }
            self.ring.push_back(Bucket { start, end: wall, counts: totals.since(before) });
        }
        self.last = Some((wall, totals));
    }

    /// The history, with the bucket under way up to `wall` and `totals`.
    pub fn view(&self, wall: u64, totals: Counts) -> Rates {
        Rates {
            interval_secs: INTERVAL.as_secs(),
            buckets: self.ring.iter().copied().collect(),
            current: self.last.map(|(start, before)| Bucket {
                start,
                end: wall,
                counts: totals.since(before),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(messages_in: u64, messages_out: u64) -> Counts {
        Counts { messages_in, messages_out, datagrams_in: messages_in, datagrams_out: 0 }
    }

    #[test]
    fn each_sample_closes_a_bucket_with_the_growth() {
        let mut h = RateHistory::default();
        assert_eq!(h.view(100, c(5, 0)).current, None);
        h.record(100, c(5, 1));
        h.record(110, c(12, 1));
        let v = h.view(113, c(14, 4));
        assert_eq!(v.interval_secs, 10);
        assert_eq!(v.buckets, [Bucket { start: 100, end: 110, counts: c(7, 0) }]);
        assert_eq!(v.current, Some(Bucket { start: 110, end: 113, counts: c(2, 3) }));
    }

    #[test]
    fn a_history_started_from_zero_counts_everything_since() {
        let mut h = RateHistory::starting(100);
        assert_eq!(h.view(104, c(3, 1)).current.map(|b| (b.start, b.counts)), Some((100, c(3, 1))));
        h.record(110, c(5, 1));
        assert_eq!(
            h.view(110, c(5, 1)).buckets,
            [Bucket { start: 100, end: 110, counts: c(5, 1) }]
        );
    }

    #[test]
    fn the_ring_keeps_ten_minutes() {
        let mut h = RateHistory::default();
        for i in 0..=(BUCKETS as u64 + 5) {
            h.record(i * 10, c(i * 2, 0));
        }
        let v = h.view(0, c(0, 0));
        assert_eq!(v.buckets.len(), BUCKETS);
        assert_eq!(v.buckets.first().map(|b| b.start), Some(50));
        assert!(v.buckets.iter().all(|b| b.counts.messages_in == 2));
    }
}
