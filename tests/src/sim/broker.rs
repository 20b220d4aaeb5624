//! A model MQTT broker behind the endpoint's upstream commands: what the
//! upstream connections and the broker together do, reduced to the
//! contract of `mqttsn_gateway::upstream` (`Command`, `Event`).
//!
//! Per ClientId a session (clean or kept), its subscriptions (exact
//! names, `+` and `#`), QoS 0/1/2 delivery to subscribers as
//! `Event::Message` with delivery ids (redelivered with DUP after an
//! outage, for kept sessions, until acknowledged), acknowledgements
//! (`PublishAcked` at PUBACK or PUBREC, `PublishCompleted` after
//! `Release`), QoS 2 deduplication by packet identifier, and outages:
//! every upstream reports `Unavailable`, commands wait (as the upstream
//! carries requests over to its next connection), and `Connected` follows
//! when the broker is back (a clean session is gone by then:
//! `session_present` false). Commands take a little time to be answered,
//! in the order they were given.
//!
//! It records every message it accepted (by payload: the sensors' payloads
//! are unique) and every delivery the endpoint acknowledged, for the
//! invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use mqttsn_codec::validate::topic_matches;
use mqttsn_gateway::upstream::{packet_id_of, Command, DeliveryId, Event, QoS, UpstreamKey};

use super::rng::Rng;

/// A message as the broker holds it for a subscriber.
#[derive(Debug, Clone)]
struct Msg {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
    dup: bool,
    /// The packet identifier it was first delivered with (kept when it
    /// is sent again).
    packet_id: Option<u16>,
}

/// One session, by ClientId.
#[derive(Debug, Default)]
struct BSession {
    clean: bool,
    subs: BTreeMap<String, QoS>,
    /// Packet identifiers of QoS 2 publishes received and not released.
    qos2_in: BTreeSet<u16>,
    /// QoS 1/2 messages for a kept session while it has no connection.
    queued: VecDeque<Msg>,
    key: Option<UpstreamKey>,
    next_packet_id: u16,
}

/// One upstream (an endpoint key).
#[derive(Debug)]
struct Up {
    cid: String,
    /// `Connected` was reported and no `Unavailable` since.
    connected: bool,
}

/// A delivery not yet acknowledged.
#[derive(Debug)]
struct Unacked {
    cid: String,
    key: UpstreamKey,
    msg: Msg,
}

/// The broker. See the module documentation.
#[derive(Debug)]
pub struct Broker {
    rng: Rng,
    sessions: BTreeMap<String, BSession>,
    ups: BTreeMap<UpstreamKey, Up>,
    /// Commands waiting to be answered, by when.
    queue: VecDeque<(u64, UpstreamKey, Command)>,
    /// Down until then.
    down_until: Option<u64>,
    /// Outages still to come: (start, end) in milliseconds.
    outages: VecDeque<(u64, u64)>,
    next_delivery: u64,
    unacked: BTreeMap<DeliveryId, Unacked>,
    events: VecDeque<(UpstreamKey, Event)>,
    /// Every message accepted from a publisher: payload → (QoS, times).
    pub accepted: BTreeMap<Bytes, (QoS, u32)>,
    /// Deliveries the endpoint acknowledged: (ClientId, payload) → (QoS,
    /// times).
    pub acked: BTreeMap<(String, Bytes), (QoS, u32)>,
    /// QoS 2 messages accepted twice: a broken invariant, kept for the
    /// report.
    pub qos2_twice: Vec<Bytes>,
    /// Outages that happened.
    pub outage_count: u32,
    /// Clean sessions lost in the current outage.
    wiped: BTreeSet<String>,
}

impl Broker {
    /// A broker with these outages planned (start, end).
    pub fn new(rng: Rng, outages: Vec<(u64, u64)>) -> Self {
        Self {
            rng,
            sessions: BTreeMap::new(),
            ups: BTreeMap::new(),
            queue: VecDeque::new(),
            down_until: None,
            outages: outages.into(),
            next_delivery: 0,
            unacked: BTreeMap::new(),
            events: VecDeque::new(),
            accepted: BTreeMap::new(),
            acked: BTreeMap::new(),
            qos2_twice: Vec::new(),
            outage_count: 0,
            wiped: BTreeSet::new(),
        }
    }

    /// Cancels the outages still to come (the quiet drain).
    pub fn heal(&mut self) {
        self.outages.clear();
    }

    /// A command from the endpoint, answered a little later.
    pub fn command(&mut self, now: u64, key: UpstreamKey, cmd: Command) {
        let last = self.queue.back().map_or(0, |(at, _, _)| *at);
        let at = (now + self.rng.range(0, 30)).max(last);
        self.queue.push_back((at, key, cmd));
    }

    /// When something is due next.
    pub fn next_due(&self) -> Option<u64> {
        let cmd = if self.down_until.is_some() {
            // While down only closing commands are answered.
            self.queue
                .iter()
                .find(|(_, _, c)| matches!(c, Command::Disconnect | Command::Abort))
                .map(|(at, _, _)| *at)
        } else {
            self.queue.front().map(|(at, _, _)| *at)
        };
        let outage = self.outages.front().filter(|_| self.down_until.is_none()).map(|o| o.0);
        [cmd, self.down_until, outage].into_iter().flatten().min()
    }

    /// Does what is due at `now`.
    pub fn advance(&mut self, now: u64) {
        if self.down_until.is_some_and(|t| t <= now) {
            self.up();
        }
        if self.down_until.is_none() && self.outages.front().is_some_and(|o| o.0 <= now) {
            if let Some((_, end)) = self.outages.pop_front() {
                self.down(end.max(now + 1));
            }
        }
        if self.down_until.is_some() {
            let mut i = 0;
            while i < self.queue.len() {
                let closing = self.queue.get(i).is_some_and(|(at, _, c)| {
                    *at <= now && matches!(c, Command::Disconnect | Command::Abort)
                });
                if closing {
                    if let Some((_, key, cmd)) = self.queue.remove(i) {
                        self.handle(key, cmd);
                    }
                } else {
                    i += 1;
                }
            }
            return;
        }
        while self.queue.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, key, cmd)) = self.queue.pop_front() else { break };
            self.handle(key, cmd);
        }
    }

    /// The next event for the endpoint.
    pub fn poll_event(&mut self) -> Option<(UpstreamKey, Event)> {
        self.events.pop_front()
    }

    /// Deliveries not acknowledged to a session of this ClientId.
    pub fn unacked_for(&self, cid: &str) -> usize {
        self.unacked.values().filter(|u| u.cid == cid).count()
    }

    /// Is the broker down?
    pub fn is_down(&self) -> bool {
        self.down_until.is_some()
    }

    fn down(&mut self, until: u64) {
        self.down_until = Some(until);
        self.outage_count += 1;
        for (&key, up) in self.ups.iter_mut() {
            up.connected = false;
            self.events.push_back((key, Event::Unavailable { reason: "broker down".into() }));
        }
        // A clean session ends with its connection; reconnects are
        // CleanSession false: a new, kept session.
        for (cid, s) in self.sessions.iter_mut().filter(|(_, s)| s.clean) {
            let key = s.key;
            *s = BSession { key, ..BSession::default() };
            self.wiped.insert(cid.clone());
        }
        // What a kept session had delivered and not had acknowledged
        // stays outstanding: the upstream keeps it (and does not deliver
        // it again when the broker sends it again with DUP), and its
        // acknowledgement goes out on the next connection.
        let wiped = &self.wiped;
        self.unacked.retain(|_, u| !wiped.contains(&u.cid));
    }

    fn up(&mut self) {
        self.down_until = None;
        let keys: Vec<(UpstreamKey, String)> =
            self.ups.iter().map(|(k, u)| (*k, u.cid.clone())).collect();
        for (key, cid) in keys {
            let present = !self.wiped.contains(&cid);
            let bound = self.sessions.get(&cid).is_some_and(|s| s.key == Some(key));
            if !bound {
                // Taken over while down: this connection is not coming
                // back; the endpoint ends it.
                continue;
            }
            if let Some(up) = self.ups.get_mut(&key) {
                up.connected = true;
            }
            self.events.push_back((key, Event::Connected { session_present: present }));
            self.flush_queued(&cid);
        }
        self.wiped.clear();
    }

    fn handle(&mut self, key: UpstreamKey, cmd: Command) {
        match cmd {
            Command::Connect(spec) => {
                let cid = spec.client_id.clone();
                let existed = self.sessions.contains_key(&cid);
                if spec.clean_session {
                    self.sessions.remove(&cid);
                }
                let s = self.sessions.entry(cid.clone()).or_default();
                s.clean = spec.clean_session;
                if let Some(old) = s.key.filter(|k| *k != key) {
                    // A second connection with the ClientId: the first one
                    // is not answered any more.
                    if let Some(up) = self.ups.get_mut(&old) {
                        up.connected = false;
                    }
                }
                s.key = Some(key);
                self.ups.insert(key, Up { cid: cid.clone(), connected: true });
                let present = existed && !spec.clean_session;
                self.events.push_back((key, Event::Connected { session_present: present }));
                self.flush_queued(&cid);
            }
            Command::Restore { .. } | Command::ReleaseStale => {}
            Command::Publish { id, topic, payload, qos, retain: _ } => {
                let Some(cid) = self.live_cid(key) else { return };
                let fresh = match qos {
                    QoS::ExactlyOnce => {
                        let s = self.sessions.entry(cid).or_default();
                        s.qos2_in.insert(packet_id_of(id))
                    }
                    _ => true,
                };
                if fresh {
                    let e = self.accepted.entry(payload.clone()).or_insert((qos, 0));
                    e.1 += 1;
                    if qos == QoS::ExactlyOnce && e.1 > 1 {
                        self.qos2_twice.push(payload.clone());
                    }
                    self.route(Msg { topic, payload, qos, dup: false, packet_id: None });
                }
                if qos != QoS::AtMostOnce {
                    self.events.push_back((key, Event::PublishAcked { id }));
                }
            }
            Command::Release { id } => {
                let Some(cid) = self.live_cid(key) else { return };
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.qos2_in.remove(&packet_id_of(id));
                }
                self.events.push_back((key, Event::PublishCompleted { id }));
            }
            Command::Subscribe { id, filter, qos } => {
                let Some(cid) = self.live_cid(key) else { return };
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.subs.insert(filter, qos);
                }
                self.events.push_back((key, Event::SubAcked { id, granted: Some(qos) }));
            }
            Command::Unsubscribe { id, filter } => {
                let Some(cid) = self.live_cid(key) else { return };
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.subs.remove(&filter);
                }
                self.events.push_back((key, Event::UnsubAcked { id }));
            }
            Command::Ack(d) => {
                if let Some(u) = self.unacked.remove(&d) {
                    let e = self.acked.entry((u.cid, u.msg.payload)).or_insert((u.msg.qos, 0));
                    e.1 += 1;
                }
            }
            Command::Disconnect | Command::Abort => {
                let Some(up) = self.ups.remove(&key) else { return };
                self.events.push_back((key, Event::Closed));
                let Some(s) = self.sessions.get_mut(&up.cid).filter(|s| s.key == Some(key)) else {
                    return;
                };
                s.key = None;
                let clean = s.clean;
                let back: Vec<DeliveryId> =
                    self.unacked.iter().filter(|(_, u)| u.key == key).map(|(d, _)| *d).collect();
                for d in back {
                    if let (Some(u), false) = (self.unacked.remove(&d), clean) {
                        if let Some(s) = self.sessions.get_mut(&up.cid) {
                            s.queued.push_back(Msg { dup: true, ..u.msg });
                        }
                    }
                }
                if clean {
                    self.sessions.remove(&up.cid);
                }
            }
        }
    }

    /// The ClientId of a connected upstream.
    fn live_cid(&self, key: UpstreamKey) -> Option<String> {
        let up = self.ups.get(&key).filter(|u| u.connected)?;
        self.sessions.get(&up.cid).filter(|s| s.key == Some(key))?;
        Some(up.cid.clone())
    }

    fn route(&mut self, msg: Msg) {
        let targets: Vec<(String, QoS)> = self
            .sessions
            .iter()
            .filter_map(|(cid, s)| {
                let q = s
                    .subs
                    .iter()
                    .filter(|(f, _)| topic_matches(f, &msg.topic))
                    .map(|(_, q)| *q)
                    .max_by_key(|q| qos_level(*q))?;
                Some((cid.clone(), q))
            })
            .collect();
        for (cid, q) in targets {
            let qos = if qos_level(q) < qos_level(msg.qos) { q } else { msg.qos };
            let m = Msg { qos, ..msg.clone() };
            self.deliver_or_queue(&cid, m);
        }
    }

    fn deliver_or_queue(&mut self, cid: &str, m: Msg) {
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let live = s.key.filter(|k| self.ups.get(k).is_some_and(|u| u.connected));
        match live {
            Some(key) => self.deliver(cid, key, m),
            None if !s.clean && m.qos != QoS::AtMostOnce => s.queued.push_back(m),
            None => {}
        }
    }

    fn flush_queued(&mut self, cid: &str) {
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let Some(key) = s.key else { return };
        let queued = std::mem::take(&mut s.queued);
        for m in queued {
            self.deliver(cid, key, m);
        }
    }

    fn deliver(&mut self, cid: &str, key: UpstreamKey, m: Msg) {
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let (delivery, packet_id) = if m.qos == QoS::AtMostOnce {
            (None, 0)
        } else {
            self.next_delivery += 1;
            let id = m.packet_id.unwrap_or_else(|| {
                s.next_packet_id = s.next_packet_id.wrapping_add(1).max(1);
                s.next_packet_id
            });
            (Some(DeliveryId(self.next_delivery)), id)
        };
        let m = Msg { packet_id: (packet_id != 0).then_some(packet_id), ..m };
        self.events.push_back((
            key,
            Event::Message {
                delivery,
                packet_id,
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                qos: m.qos,
                retain: false,
                dup: m.dup,
            },
        ));
        if let Some(d) = delivery {
            self.unacked.insert(d, Unacked { cid: cid.to_owned(), key, msg: m });
        }
    }
}

/// 0, 1 or 2.
pub fn qos_level(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}
