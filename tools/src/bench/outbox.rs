//! What one simulated client publishes: the schedule, the QoS of each
//! message, the window of QoS 1/2 messages in flight, retransmission and
//! the acknowledgements. The MQTT-SN sensor and the direct MQTT client both
//! drive one; only the encoding differs.

use std::time::{Duration, Instant};

use super::schedule::{Pacer, QosMix, QosPicker};

/// One QoS 1 or 2 message waiting for its acknowledgement.
#[derive(Debug, Clone)]
struct Slot {
    msg_id: u16,
    seq: u32,
    qos: u8,
    first_sent: Instant,
    last_sent: Instant,
    retries: u32,
    /// QoS 2: PUBREC came, PUBREL sent, waiting for PUBCOMP.
    released: bool,
}

/// What to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// A PUBLISH (a retransmission when `dup`); the stamp's send time is
    /// `first_sent`.
    Publish {
        /// Sequence number.
        seq: u32,
        /// QoS 0, 1 or 2.
        qos: u8,
        /// Message id (0 at QoS 0).
        msg_id: u16,
        /// A retransmission.
        dup: bool,
        /// When the message was first sent.
        first_sent: Instant,
    },
    /// A PUBREL (again).
    PubRel(u16),
}

/// Counts of one client (or, merged, of all).
#[derive(Debug, Clone, Default)]
pub struct OutStats {
    /// Distinct messages sent.
    pub sent: u64,
    /// Of those, at QoS 0, 1, 2.
    pub sent_qos: [u64; 3],
    /// PUBLISH and PUBREL sent again.
    pub retransmissions: u64,
    /// QoS 1 and 2 messages acknowledged (PUBACK accepted, PUBREC).
    pub acked: u64,
    /// QoS 2 messages completed (PUBCOMP).
    pub completed: u64,
    /// PUBACKs with a return code other than accepted.
    pub rejected: u64,
    /// Messages given up after the last retransmission.
    pub given_up: u64,
    /// The last send.
    pub last_send: Option<Instant>,
    /// When everything was sent and acknowledged.
    pub done_at: Option<Instant>,
}

impl OutStats {
    /// Adds another client's counts.
    pub fn merge(&mut self, o: &Self) {
        self.sent += o.sent;
        for q in 0..3 {
            self.sent_qos[q] += o.sent_qos[q];
        }
        self.retransmissions += o.retransmissions;
        self.acked += o.acked;
        self.completed += o.completed;
        self.rejected += o.rejected;
        self.given_up += o.given_up;
        self.last_send = self.last_send.max(o.last_send);
        self.done_at = self.done_at.max(o.done_at);
    }
}

/// An acknowledgement that matched a message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// PUBLISH to PUBACK or PUBREC, from the first send.
    pub latency: Duration,
    /// The PUBACK's return code was not "accepted".
    pub rejected: bool,
}

/// The publishing state of one client.
#[derive(Debug)]
pub struct Outbox {
    count: u64,
    pacer: Pacer,
    picker: QosPicker,
    next_qos: u8,
    window: usize,
    inflight: Vec<Slot>,
    next_id: u16,
    retry: Option<Duration>,
    max_retries: u32,
    /// The counts so far.
    pub stats: OutStats,
}

/// How one client publishes.
#[derive(Debug, Clone, Copy)]
pub struct OutboxPlan {
    /// Messages to send.
    pub count: u64,
    /// When each is due.
    pub pacer: Pacer,
    /// The QoS mix.
    pub mix: QosMix,
    /// Where in the mix this client starts.
    pub mix_offset: u64,
    /// QoS 1/2 messages in flight at most.
    pub window: usize,
    /// Resend an unacknowledged PUBLISH or PUBREL after this long (MQTT-SN;
    /// `None` over TCP).
    pub retry: Option<Duration>,
    /// How many times.
    pub max_retries: u32,
}

impl Outbox {
    /// A client that has sent nothing yet.
    pub fn new(p: OutboxPlan) -> Self {
        let mut picker = p.mix.picker(p.mix_offset);
        let next_qos = picker.next_qos();
        Self {
            count: p.count,
            pacer: p.pacer,
            picker,
            next_qos,
            window: p.window.max(1),
            inflight: Vec::with_capacity(p.window.clamp(1, 64)),
            next_id: 0,
            retry: p.retry,
            max_retries: p.max_retries,
            stats: OutStats::default(),
        }
    }

    /// Starts the schedule again from `pacer` (the publish phase's start).
    pub fn set_pacer(&mut self, pacer: Pacer) {
        self.pacer = pacer;
    }

    fn alloc_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|s| s.msg_id == self.next_id) {
                return self.next_id;
            }
        }
    }

    /// The next thing to send at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Send> {
        if let Some(retry) = self.retry {
            let mut i = 0;
            while i < self.inflight.len() {
                let s = &mut self.inflight[i];
                if now < s.last_sent + retry {
                    i += 1;
                    continue;
                }
                if s.retries >= self.max_retries {
                    self.inflight.swap_remove(i);
                    self.stats.given_up += 1;
                    self.note_done(now);
                    continue;
                }
                s.retries += 1;
                s.last_sent = now;
                self.stats.retransmissions += 1;
                return Some(if s.released {
                    Send::PubRel(s.msg_id)
                } else {
                    Send::Publish {
                        seq: s.seq,
                        qos: s.qos,
                        msg_id: s.msg_id,
                        dup: true,
                        first_sent: s.first_sent,
                    }
                });
            }
        }
        if self.stats.sent >= self.count || self.pacer.due(self.stats.sent) > now {
            return None;
        }
        let qos = self.next_qos;
        if qos > 0 && self.inflight.len() >= self.window {
            return None;
        }
        let seq = u32::try_from(self.stats.sent).unwrap_or(u32::MAX);
        self.stats.sent += 1;
        self.stats.sent_qos[usize::from(qos.min(2))] += 1;
        self.stats.last_send = Some(now);
        self.next_qos = self.picker.next_qos();
        let msg_id = if qos == 0 { 0 } else { self.alloc_id() };
        if qos > 0 {
            self.inflight.push(Slot {
                msg_id,
                seq,
                qos,
                first_sent: now,
                last_sent: now,
                retries: 0,
                released: false,
            });
        } else {
            self.note_done(now);
        }
        Some(Send::Publish { seq, qos, msg_id, dup: false, first_sent: now })
    }

    /// When `poll` may next have something (a message due, a retransmission).
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retry.and_then(|r| self.inflight.iter().map(|s| s.last_sent + r).min());
        let blocked = self.next_qos > 0 && self.inflight.len() >= self.window;
        let due =
            (self.stats.sent < self.count && !blocked).then(|| self.pacer.due(self.stats.sent));
        match (retry, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when the next message is due and not held back by the window:
    /// the caller has more to send right away.
    pub fn ready(&self, now: Instant) -> bool {
        self.next_deadline().is_some_and(|d| d <= now)
    }

    fn note_done(&mut self, now: Instant) {
        if self.done() && self.stats.done_at.is_none() {
            self.stats.done_at = Some(now);
        }
    }

    /// PUBACK for `msg_id`.
    pub fn on_puback(&mut self, msg_id: u16, accepted: bool, now: Instant) -> Option<Acked> {
        let i = self.inflight.iter().position(|s| s.msg_id == msg_id && s.qos == 1)?;
        let s = self.inflight.swap_remove(i);
        if accepted {
            self.stats.acked += 1;
        } else {
            self.stats.rejected += 1;
        }
        self.note_done(now);
        Some(Acked { latency: now.saturating_duration_since(s.first_sent), rejected: !accepted })
    }

    /// PUBREC for `msg_id`: `Some` when a PUBREL is to be sent, with the
    /// latency the first time.
    pub fn on_pubrec(&mut self, msg_id: u16, now: Instant) -> Option<Option<Acked>> {
        let s = self.inflight.iter_mut().find(|s| s.msg_id == msg_id && s.qos == 2)?;
        if s.released {
            return Some(None);
        }
        s.released = true;
        s.last_sent = now;
        s.retries = 0;
        self.stats.acked += 1;
        Some(Some(Acked { latency: now.saturating_duration_since(s.first_sent), rejected: false }))
    }

    /// PUBCOMP for `msg_id`.
    pub fn on_pubcomp(&mut self, msg_id: u16, now: Instant) {
        if let Some(i) = self.inflight.iter().position(|s| s.msg_id == msg_id && s.released) {
            self.inflight.swap_remove(i);
            self.stats.completed += 1;
            self.note_done(now);
        }
    }

    /// Everything sent and acknowledged (or given up).
    pub fn done(&self) -> bool {
        self.stats.sent >= self.count && self.inflight.is_empty()
    }

    /// Messages still waiting for an acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outbox(mix: &str, count: u64, window: usize, retry: Option<Duration>) -> Outbox {
        Outbox::new(OutboxPlan {
            count,
            // Unpaced: everything due from any time on.
            pacer: Pacer::new(Instant::now() - Duration::from_secs(1), None, 1, 0),
            mix: QosMix::parse(mix).unwrap(),
            mix_offset: 0,
            window,
            retry,
            max_retries: 1,
        })
    }

    #[test]
    fn window_acks_and_qos2() {
        let now = Instant::now();
        let mut o = outbox("1:1,2:1", 4, 1, None);
        let Some(Send::Publish { qos: 1, msg_id: a, .. }) = o.poll(now) else { panic!() };
        assert_eq!(o.poll(now), None, "window of one");
        assert!(o.on_puback(a, true, now).is_some());
        let Some(Send::Publish { qos: 2, msg_id: b, .. }) = o.poll(now) else { panic!() };
        assert!(matches!(o.on_pubrec(b, now), Some(Some(_))));
        assert_eq!(o.on_pubrec(b, now), Some(None), "a second PUBREC: PUBREL again");
        assert_eq!(o.poll(now), None, "PUBCOMP still to come");
        o.on_pubcomp(b, now);
        assert!(o.poll(now).is_some() && !o.done());
        assert_eq!(o.stats.sent_qos, [0, 2, 1]);
    }

    #[test]
    fn retransmits_then_gives_up() {
        let t = Instant::now();
        let retry = Duration::from_millis(10);
        let mut o = outbox("1:1", 1, 1, Some(retry));
        assert!(matches!(o.poll(t), Some(Send::Publish { dup: false, .. })));
        assert_eq!(o.poll(t), None);
        assert_eq!(o.next_deadline(), Some(t + retry));
        assert!(matches!(o.poll(t + retry), Some(Send::Publish { dup: true, .. })));
        assert_eq!(o.poll(t + retry * 2), None);
        assert!(o.done());
        assert_eq!((o.stats.retransmissions, o.stats.given_up), (1, 1));
    }

    #[test]
    fn qos0_is_not_windowed() {
        let now = Instant::now();
        let mut o = outbox("0:1", 3, 1, None);
        for _ in 0..3 {
            assert!(o.poll(now).is_some());
        }
        assert!(o.done() && o.stats.done_at.is_some());
    }
}
