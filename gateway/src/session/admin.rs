//! What the management API reads of a session (its state, subscriptions,
//! registrations and queues) and what it may do to one: disconnect it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqttsn_codec::Packet;

use super::{Phase, Session, Wait};
use crate::mqtt::QoS as MqttQoS;

/// Where a session is, as the management API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// CONNECT received: the will handshake or the broker connection is
    /// under way (no CONNACK yet).
    Connecting,
    /// Connected and awake.
    Active,
    /// Connected and asleep (spec 6.14), or awake between two sleeps.
    Asleep,
    /// Over because the sensor went silent past its keepalive or sleep;
    /// its will was published.
    Lost,
    /// Over: the sensor disconnected, was refused or was disconnected (a
    /// CleanSession-false session is kept for its return).
    Ended,
}

impl SessionState {
    /// Every state, in the order the API lists them.
    pub const ALL: [SessionState; 5] =
        [Self::Connecting, Self::Active, Self::Asleep, Self::Lost, Self::Ended];

    /// The state's name in the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Active => "active",
            Self::Asleep => "asleep",
            Self::Lost => "lost",
            Self::Ended => "ended",
        }
    }

    /// The state named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Where a session's own broker connection is, as far as the session
/// knows (an outage is seen by the endpoint, which reports it as down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamPhase {
    /// No connection.
    Closed,
    /// A CONNECT is on its way to the broker.
    Connecting,
    /// Connected.
    Up,
    /// A DISCONNECT (or an abort) is on its way.
    Closing,
}

impl Session {
    /// Where the session is.
    pub fn state(&self) -> SessionState {
        match self.phase {
            Phase::WillTopic { .. } | Phase::WillMsg { .. } | Phase::Connecting => {
                SessionState::Connecting
            }
            Phase::Active => SessionState::Active,
            Phase::Asleep { .. } | Phase::Awake { .. } => SessionState::Asleep,
            Phase::Ending | Phase::Ended if self.lost => SessionState::Lost,
            Phase::Ending | Phase::Ended => SessionState::Ended,
        }
    }

    /// Where its broker connection is.
    pub fn upstream_phase(&self) -> UpstreamPhase {
        match (self.upstream_open, self.waiting) {
            (false, _) => UpstreamPhase::Closed,
            (true, Some(Wait::Connected)) => UpstreamPhase::Connecting,
            (true, Some(Wait::Closed)) => UpstreamPhase::Closing,
            (true, None) => UpstreamPhase::Up,
        }
    }

    /// The sleep duration of a sleeping sensor.
    pub fn sleep_duration(&self) -> Option<Duration> {
        match self.phase {
            Phase::Asleep { duration, .. } | Phase::Awake { duration } => Some(duration),
            _ => None,
        }
    }

    /// When the sensor was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The filters subscribed to, with the granted QoS, in the order they
    /// were made.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&Arc<str>, MqttQoS)> {
        self.subs.iter().map(|(f, q)| (f, *q))
    }

    /// How many filters are subscribed to.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// The sensor's own topic registrations (id, name), in no particular
    /// order; predefined topics are not listed.
    pub fn registrations(&self) -> impl Iterator<Item = (u16, &Arc<str>)> {
        self.regs.iter()
    }

    /// The name of the sensor's own registered topic `id`.
    pub fn registration(&self, id: u16) -> Option<&Arc<str>> {
        self.regs.name(id)
    }

    /// How many topics the sensor registered.
    pub fn registration_count(&self) -> usize {
        self.regs.len()
    }

    /// Messages from the broker waiting to be sent to the sensor (the
    /// sleep buffer included).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages sent to the sensor and not yet acknowledged by it.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The sensor's requests (QoS 1 and 2 PUBLISH, SUBSCRIBE,
    /// UNSUBSCRIBE) waiting for the broker's answer.
    pub fn pending_upstream(&self) -> usize {
        self.requests.len()
    }

    /// Disconnects the sensor on the operator's behalf: it gets a
    /// DISCONNECT and the broker connection is closed, with DISCONNECT
    /// (no will) unless `with_will`, in which case it is dropped so that
    /// the broker publishes the will. A CleanSession-false session stays
    /// for the sensor's return, like after its own DISCONNECT. False (and
    /// nothing changes) when the session is over already.
    pub fn disconnect(&mut self, with_will: bool, now: Instant) -> bool {
        if matches!(self.phase, Phase::Ending | Phase::Ended) {
            return false;
        }
        self.send(Packet::Disconnect(None));
        self.close(with_will, now);
        true
    }
}
