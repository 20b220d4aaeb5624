//! Counting what arrives: per source, which sequence numbers were seen
//! (loss, duplicates, order), and for all sources together the totals and
//! the latency from the stamp.

use std::time::Instant;

use super::histogram::Histogram;
use super::payload::Stamp;

/// The sequence numbers seen from one source.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    unique: u64,
    highest: Option<u32>,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first time, in order.
    New,
    /// The first time, after a higher sequence number.
    Late,
    /// Seen before.
    Duplicate,
}

impl SeqTracker {
    /// Notes sequence number `seq`.
    pub fn observe(&mut self, seq: u32) -> Arrival {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        match self.highest {
            Some(h) if seq < h => Arrival::Late,
            _ => {
                self.highest = Some(seq);
                Arrival::New
            }
        }
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }
}

/// Totals over every source of one direction.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Messages received, duplicates included.
    pub received: u64,
    /// Distinct messages.
    pub unique: u64,
    /// Messages received more than once (each extra copy counts).
    pub duplicates: u64,
    /// Extra copies of QoS 2 messages: exactly once was broken.
    pub duplicates_qos2: u64,
    /// Messages that arrived after one with a higher sequence number.
    pub out_of_order: u64,
    /// Messages of this run whose source or sequence number is out of range.
    pub foreign: u64,
    /// Send to receipt, from the stamp.
    pub latency: Histogram,
    /// The first and the last receipt.
    pub first: Option<Instant>,
    /// See `first`.
    pub last: Option<Instant>,
}

impl Tally {
    /// Notes a message without a stamp (a payload too short for one).
    pub fn unstamped(&mut self, now: Instant) {
        self.received += 1;
        self.unique += 1;
        self.times(now);
    }

    fn times(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Notes a stamped message from a source whose tracker is `t`; `latency`
    /// is its send-to-receipt time.
    pub fn stamped(
        &mut self,
        t: &mut SeqTracker,
        s: &Stamp,
        latency: std::time::Duration,
        now: Instant,
    ) {
        self.received += 1;
        self.times(now);
        match t.observe(s.seq) {
            Arrival::Duplicate => {
                self.duplicates += 1;
                if s.qos == 2 {
                    self.duplicates_qos2 += 1;
                }
            }
            a => {
                self.unique += 1;
                if a == Arrival::Late {
                    self.out_of_order += 1;
                }
                self.latency.record(latency);
            }
        }
    }

    /// Adds another tally.
    pub fn merge(&mut self, o: &Self) {
        self.received += o.received;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.duplicates_qos2 += o.duplicates_qos2;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.latency.merge(&o.latency);
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(o.last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_duplicates_and_order() {
        let mut t = SeqTracker::default();
        let seqs = [0, 1, 3, 2, 3, 200, 0];
        let got: Vec<Arrival> = seqs.iter().map(|s| t.observe(*s)).collect();
        use Arrival::*;
        assert_eq!(got, [New, New, New, Late, Duplicate, New, Duplicate]);
        assert_eq!(t.unique(), 5);
    }
}
