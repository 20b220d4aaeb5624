//! What the endpoint does on its own time: forgetting expired sessions,
//! the gauges of this worker's share, the key figures on the broker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::{Endpoint, Gauges, OWN_KEY};
use crate::metrics::Metrics;
use crate::upstream::Command;

impl Endpoint {
    /// Forgets kept sessions that ended more than `session_expiry` ago.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        let Some(expiry) = self.opts.session_expiry else { return };
        let expired: Vec<usize> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.ended_at.is_some_and(|t| now.saturating_duration_since(t) >= expiry)
                    && e.upstream.is_none()
                    && e.session.is_ended()
                    && e.held.is_empty()
            })
            .map(|(idx, _)| idx)
            .collect();
        let gone = expired.len();
        for idx in expired {
            let Some(e) = self.remove(idx) else { continue };
            self.unstore(e.cid);
        }
        if gone > 0 {
            debug!(sessions = gone, "expired sessions forgotten");
        }
    }

    /// Forgets the addresses without a session that were told DISCONNECT
    /// longer ago than the interval between two such replies: the table
    /// holds only the addresses it still has to hold back.
    pub(super) fn forget_unknown_senders(&mut self, now: Instant) {
        if self.unknown_sent.is_empty() {
            return;
        }
        let horizon = self.opts.unknown_disconnect_interval;
        self.unknown_sent.retain(|_, t| now.saturating_duration_since(*t) < horizon);
        if self.unknown_sent.is_empty() {
            self.unknown_sent = std::collections::HashMap::new();
        }
    }

    /// This worker's share of the asleep and buffer gauges.
    pub(super) fn refresh_gauges(&mut self) {
        let mut g = Gauges::default();
        for (_, e) in self.entries.iter() {
            if e.session.is_sleeping() {
                g.asleep += 1;
            }
            let (m, b) = e.session.buffered();
            g.messages += m as u64;
            g.bytes += b as u64;
        }
        let before = std::mem::replace(&mut self.gauges, g);
        Metrics::adjust(&self.metrics.sessions_asleep, before.asleep, g.asleep);
        Metrics::adjust(&self.metrics.buffered_messages, before.messages, g.messages);
        Metrics::adjust(&self.metrics.buffered_bytes, before.bytes, g.bytes);
    }

    /// Key figures as retained messages on the broker.
    pub(super) fn publish_sys(&mut self, now: Instant) {
        let Some((prefix, _)) = self.opts.sys_topics.clone() else { return };
        self.refresh_gauges();
        self.flush_metrics();
        let m = self.metrics.snapshot();
        let figures: [(&str, u64); 12] = [
            ("sensors/connected", m.sessions_active.saturating_sub(m.sessions_asleep)),
            ("sensors/asleep", m.sessions_asleep),
            ("sensors/lost", m.sensors_lost),
            ("datagrams/in", m.datagrams_in),
            ("datagrams/out", m.datagrams_out),
            ("datagrams/malformed", m.malformed),
            ("messages/dropped", m.dropped),
            ("messages/retransmitted", m.retransmissions),
            ("messages/buffered", m.buffered_messages),
            ("connects/refused", m.connects_refused),
            ("connects/takeovers", m.takeovers),
            ("uptime", now.saturating_duration_since(self.started).as_secs()),
        ];
        for (name, value) in figures {
            let topic: Arc<str> = Arc::from(format!("{prefix}/{name}"));
            let id = self.own_next_request;
            self.own_next_request += 1;
            self.upstream.push_back((
                OWN_KEY,
                Command::Publish {
                    id,
                    topic,
                    payload: Bytes::from(value.to_string()),
                    qos: crate::mqtt::QoS::AtMostOnce,
                    retain: true,
                },
            ));
        }
    }
}
