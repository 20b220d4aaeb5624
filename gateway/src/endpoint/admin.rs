//! What the management API asks of the endpoint: its sessions as
//! [`SessionInfo`], disconnecting a sensor, deleting an ended session,
//! what it knows of the broker. The worker calls these between two
//! datagrams (see [`crate::control`]).

use std::time::Instant;

use tracing::info;

use super::{Endpoint, Entry};
use crate::control::{
    BrokerShare, Control, ControlError, Registration, SessionFilter, SessionInfo, SessionList,
    Subscription, UpstreamState,
};
use crate::session::{SessionState, UpstreamPhase};

impl Endpoint {
    /// Answers one request of the management API.
    pub fn handle_control(&mut self, now: Instant, c: Control) {
        match c {
            Control::Sessions { filter, reply } => {
                let _ = reply.send(self.sessions(&filter));
            }
            Control::Session { client_id, reply } => {
                let _ = reply.send(self.session(&client_id));
            }
            Control::Disconnect { client_id, with_will, reply } => {
                let _ = reply.send(self.disconnect(now, &client_id, with_will));
            }
            Control::Forget { client_id, reply } => {
                let _ = reply.send(self.forget(now, &client_id));
            }
            Control::Broker { reply } => {
                let _ = reply.send(self.broker_share());
            }
        }
    }

    /// The sessions here matching `filter`: how many, and the first
    /// `filter.limit` of them by ClientId.
    pub fn sessions(&self, filter: &SessionFilter) -> SessionList {
        let mut matching: Vec<&Entry> = self
            .entries
            .iter()
            .map(|(_, e)| &**e)
            .filter(|e| filter.matches(&e.cid, e.session.state()))
            .collect();
        let total = matching.len();
        matching.sort_unstable_by(|a, b| a.cid.cmp(&b.cid));
        matching.truncate(filter.limit);
        SessionList { total, sessions: matching.into_iter().map(|e| self.info(e, false)).collect() }
    }

    /// The session of `client_id` in detail (its subscriptions and
    /// registrations listed), if it is here.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        let idx = self.by_cid.get(client_id)?;
        self.entries.get(*idx).map(|e| self.info(e, true))
    }

    /// Disconnects the sensor `client_id` (see
    /// [`crate::session::Session::disconnect`]): it gets a DISCONNECT,
    /// its broker connection closes (the will fires only `with_will`).
    pub fn disconnect(
        &mut self,
        now: Instant,
        client_id: &str,
        with_will: bool,
    ) -> Result<(), ControlError> {
        let idx = *self.by_cid.get(client_id).ok_or(ControlError::NotFound)?;
        let e = self.entries.get_mut(idx).ok_or(ControlError::NotFound)?;
        if !e.session.disconnect(with_will, now) {
            return Err(ControlError::NotConnected);
        }
        info!(client_id, with_will, "disconnected by the management API");
        self.flush(idx, now);
        Ok(())
    }

    /// Deletes the ended session of `client_id`: it is forgotten here
    /// and removed from the store, at once or, while its broker
    /// connection is still closing, as soon as it is closed. A connected
    /// sensor's session is not deleted ([`ControlError::Connected`]).
    /// The broker keeps its own session, as after an expiry.
    pub fn forget(&mut self, now: Instant, client_id: &str) -> Result<(), ControlError> {
        let idx = *self.by_cid.get(client_id).ok_or(ControlError::NotFound)?;
        let e = self.entries.get_mut(idx).ok_or(ControlError::NotFound)?;
        if !matches!(e.session.state(), SessionState::Ended | SessionState::Lost) {
            return Err(ControlError::Connected);
        }
        e.forget = true;
        info!(client_id, "session deleted by the management API");
        self.forget_if_over(idx);
        let _ = now;
        Ok(())
    }

    /// What this worker knows of the broker.
    pub fn broker_share(&self) -> BrokerShare {
        BrokerShare {
            up: self.own && self.dir.broker_up(),
            down: self.own && self.dir.broker_down(),
            connections: self.upstreams_open(),
            sessions: self.entries.len(),
        }
    }

    fn info(&self, e: &Entry, detail: bool) -> SessionInfo {
        let s = &e.session;
        let upstream = match (e.upstream, s.upstream_phase()) {
            (None, _) | (_, UpstreamPhase::Closed) => UpstreamState::Closed,
            (Some(_), _) if e.upstream_down => UpstreamState::Down,
            (Some(_), UpstreamPhase::Connecting) => UpstreamState::Connecting,
            (Some(_), UpstreamPhase::Up) => UpstreamState::Up,
            (Some(_), UpstreamPhase::Closing) => UpstreamState::Closing,
        };
        let subscriptions = detail.then(|| {
            s.subscriptions()
                .map(|(f, q)| Subscription { filter: f.to_string(), qos: q as u8 })
                .collect()
        });
        let registrations = detail.then(|| {
            let mut regs: Vec<Registration> = s
                .registrations()
                .map(|(id, name)| Registration { topic_id: id, topic: name.to_string() })
                .collect();
            regs.sort_by_key(|r| r.topic_id);
            regs
        });
        SessionInfo {
            client_id: e.cid.to_string(),
            state: s.state(),
            since: self.clock.at(e.since),
            last_heard: self.clock.at(s.last_heard()),
            peer: e.addr.as_ref().map(ToString::to_string),
            clean_session: !s.persistent(),
            keepalive_secs: s.keepalive().as_secs(),
            sleep_secs: s.sleep_duration().map(|d| d.as_secs()),
            subscription_count: s.subscription_count(),
            registration_count: s.registration_count(),
            queued: s.queued(),
            in_flight: s.in_flight(),
            pending_upstream: s.pending_upstream(),
            upstream,
            worker: self.me,
            subscriptions,
            registrations,
        }
    }
}
