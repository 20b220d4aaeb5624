//! Counters the gateway keeps, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::DropReason;

/// Gateway-wide counters. Cheap to update from the dispatcher; read with
/// [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams that did not decode (dropped).
    pub malformed: AtomicU64,
    /// Datagrams from addresses without a session, answered with DISCONNECT.
    pub unknown_sender: AtomicU64,
    /// CONNECTs refused before a session was made.
    pub connects_refused: AtomicU64,
    /// Sessions currently connected.
    pub sessions_active: AtomicU64,
    /// Sessions taken over by a CONNECT from another address.
    pub takeovers: AtomicU64,
    /// Sensors lost to keepalive supervision.
    pub sensors_lost: AtomicU64,
    /// QoS -1 PUBLISHes forwarded.
    pub qos_minus_one: AtomicU64,
    /// QoS -1 PUBLISHes dropped (not allowed, unknown topic).
    pub qos_minus_one_refused: AtomicU64,
    /// Messages and requests dropped, by reason.
    pub dropped_not_subscribed: AtomicU64,
    /// See [`DropReason::TopicRefused`].
    pub dropped_topic_refused: AtomicU64,
    /// See [`DropReason::TopicsFull`].
    pub dropped_topics_full: AtomicU64,
    /// See [`DropReason::TooLong`].
    pub dropped_too_long: AtomicU64,
    /// See [`DropReason::QueueFull`].
    pub dropped_queue_full: AtomicU64,
    /// See [`DropReason::RejectedBySensor`].
    pub dropped_rejected_by_sensor: AtomicU64,
    /// See [`DropReason::Unexpected`].
    pub dropped_unexpected: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Malformed datagrams dropped.
    pub malformed: u64,
    /// Datagrams from unknown senders.
    pub unknown_sender: u64,
    /// CONNECTs refused.
    pub connects_refused: u64,
    /// Sessions connected now.
    pub sessions_active: u64,
    /// Takeovers.
    pub takeovers: u64,
    /// Sensors lost.
    pub sensors_lost: u64,
    /// QoS -1 PUBLISHes forwarded.
    pub qos_minus_one: u64,
    /// QoS -1 PUBLISHes dropped.
    pub qos_minus_one_refused: u64,
    /// Everything dropped, all reasons together.
    pub dropped: u64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge, never below zero.
    pub fn dec(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Counts a drop.
    pub fn dropped(&self, reason: DropReason) {
        Self::inc(match reason {
            DropReason::NotSubscribed => &self.dropped_not_subscribed,
            DropReason::TopicRefused => &self.dropped_topic_refused,
            DropReason::TopicsFull => &self.dropped_topics_full,
            DropReason::TooLong => &self.dropped_too_long,
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::RejectedBySensor => &self.dropped_rejected_by_sensor,
            DropReason::Unexpected => &self.dropped_unexpected,
        });
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            malformed: get(&self.malformed),
            unknown_sender: get(&self.unknown_sender),
            connects_refused: get(&self.connects_refused),
            sessions_active: get(&self.sessions_active),
            takeovers: get(&self.takeovers),
            sensors_lost: get(&self.sensors_lost),
            qos_minus_one: get(&self.qos_minus_one),
            qos_minus_one_refused: get(&self.qos_minus_one_refused),
            dropped: get(&self.dropped_not_subscribed)
                + get(&self.dropped_topic_refused)
                + get(&self.dropped_topics_full)
                + get(&self.dropped_too_long)
                + get(&self.dropped_queue_full)
                + get(&self.dropped_rejected_by_sensor)
                + get(&self.dropped_unexpected),
        }
    }
}
