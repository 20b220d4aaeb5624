//! A sans-IO MQTT 3.1.1 client session that leaves every acknowledgement
//! under the gateway's control.
//!
//! [`Client`] implements the upstream contract ([`Command`] in, [`Event`]
//! out) over an abstract transport: the driver tells it when a connection
//! comes up or goes down and feeds it received packets, all with an
//! explicit `now`; it hands back octets to write, events, the next deadline
//! and when to close the connection.
//!
//! What it guarantees, beyond what rumqttc does:
//! * a publish is complete only when the broker acknowledged it
//!   ([`Event::PublishAcked`]); QoS 2 waits for [`Command::Release`] before
//!   PUBREL;
//! * publishes, PUBRELs, subscribes and unsubscribes not yet acknowledged
//!   survive a lost connection and are sent again after the reconnect
//!   (with DUP when the broker kept the session, as new when it did not);
//! * a received QoS 1/2 message is acknowledged only on [`Command::Ack`],
//!   and acknowledgements go out in the order the messages arrived;
//! * a QoS 2 message is delivered once even when the broker sends it again;
//! * a PUBREL for an unknown packet id is answered with PUBCOMP, never with
//!   a dropped connection;
//! * reconnects use CleanSession false, so the broker session survives.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::codec::{ConnectPacket, LastWill, MqttPacket, PublishPacket};
use super::QoS;
use crate::upstream::{
    packet_id_of, Command, ConnectSpec, DeliveryId, Event, RequestId, RestoredStage,
};

/// Timers of the client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// MQTT keepalive; zero disables PINGREQ.
    pub keep_alive: Duration,
    /// How long to wait for CONNACK (and for PINGRESP).
    pub response_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { keep_alive: Duration::from_secs(60), response_timeout: Duration::from_secs(10) }
    }
}

/// What the driver should do about the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Nothing: connected, or finished.
    Nothing,
    /// Open a connection now (first connect, or a replacement).
    ConnectNow,
    /// Open a connection after the backoff (after an outage).
    ConnectAfterBackoff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection.
    Down,
    /// CONNECT sent.
    AwaitConnAck { deadline: Instant },
    /// Connected.
    Up,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1: waiting for PUBACK; QoS 2: waiting for PUBREC.
    Sent,
    /// QoS 2: PUBREC received, waiting for [`Command::Release`].
    Recorded,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
struct Outgoing {
    id: RequestId,
    packet: PublishPacket,
    stage: Stage,
    /// Sent at least once (a resend carries DUP).
    sent: bool,
}

#[derive(Debug, Clone)]
enum Request {
    Subscribe { id: RequestId, filter: String, qos: QoS },
    Unsubscribe { id: RequestId, filter: String },
}

#[derive(Debug, Clone, Copy)]
struct Incoming {
    delivery: DeliveryId,
    pkid: u16,
    qos: QoS,
    acked: bool,
}

/// The client session. See the module documentation.
#[derive(Debug)]
pub struct Client {
    opts: ClientOptions,
    /// Boxed as it came: large, and read only when connecting.
    spec: Option<Box<ConnectSpec>>,
    /// CleanSession for the next CONNECT: the spec's on its first connect,
    /// false on reconnects.
    next_clean: bool,
    state: State,
    /// A close was requested; when the transport is down, what next.
    closing: Option<AfterClose>,
    close_now: bool,
    finished: bool,
    refused: bool,
    outage_reported: bool,
    had_outage: bool,

    /// QoS 1/2 publishes by packet id, and their order.
    publishes: HashMap<u16, Outgoing>,
    order: VecDeque<u16>,
    requests: HashMap<u16, Request>,
    /// QoS 0 publishes waiting for a connection.
    qos0: VecDeque<PublishPacket>,
    next_pkid: u16,

    incoming: VecDeque<Incoming>,
    qos2_received: HashSet<u16>,
    /// QoS 2 messages a restored session holds (see [`Command::Restore`]).
    qos2_restored: HashSet<u16>,
    /// [`Command::ReleaseStale`] asked for and not done yet.
    release_stale: bool,
    next_delivery: u64,

    last_sent: Instant,
    ping_deadline: Option<Instant>,

    out: BytesMut,
    /// `out` holds something besides QoS 0 PUBLISHes.
    urgent: bool,
    events: VecDeque<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterClose {
    /// Connect again at once with the (new) spec.
    Reconnect,
    /// Finished: report Closed.
    Finish,
}

impl Client {
    /// A client with no connection yet; it wants one after
    /// [`Command::Connect`].
    pub fn new(opts: ClientOptions, now: Instant) -> Self {
        Self {
            opts,
            spec: None,
            next_clean: true,
            state: State::Down,
            closing: None,
            close_now: false,
            finished: false,
            refused: false,
            outage_reported: false,
            had_outage: false,
            publishes: HashMap::new(),
            order: VecDeque::new(),
            requests: HashMap::new(),
            qos0: VecDeque::new(),
            next_pkid: 0,
            incoming: VecDeque::new(),
            qos2_received: HashSet::new(),
            qos2_restored: HashSet::new(),
            release_stale: false,
            next_delivery: 1,
            last_sent: now,
            ping_deadline: None,
            out: BytesMut::new(),
            urgent: false,
            events: VecDeque::new(),
        }
    }

    /// True once the session is over ([`Event::Closed`] or
    /// [`Event::Refused`] reported).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True while connected (CONNACK accepted).
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// The TLS client certificate the current spec asks for.
    pub fn client_cert(&self) -> Option<&crate::upstream::tls::ClientCert> {
        self.spec.as_ref().and_then(|s| s.client_cert.as_ref())
    }

    /// What the driver should do about the transport when it has none.
    pub fn want(&self) -> Want {
        if self.finished || self.spec.is_none() || self.state != State::Down {
            return Want::Nothing;
        }
        if self.had_outage {
            Want::ConnectAfterBackoff
        } else {
            Want::ConnectNow
        }
    }

    // ----- inputs -----

    /// A command from the session.
    pub fn handle_command(&mut self, cmd: Command, now: Instant) {
        if self.finished {
            return;
        }
        match cmd {
            Command::Connect(spec) => {
                self.next_clean = spec.clean_session;
                self.spec = Some(spec);
                match self.state {
                    State::Down => {
                        // A new spec: connect at once, even during an outage.
                        self.had_outage = false;
                    }
                    State::AwaitConnAck { .. } => self.request_close(AfterClose::Reconnect),
                    State::Up => {
                        self.emit(&MqttPacket::Disconnect, now);
                        self.request_close(AfterClose::Reconnect);
                    }
                }
            }
            Command::Publish { id, topic, payload, qos, retain } => {
                let packet = PublishPacket { dup: false, qos, retain, topic, pkid: 0, payload };
                if qos == QoS::AtMostOnce {
                    // Done once handed over: no completion event.
                    if self.state == State::Up {
                        self.emit(&MqttPacket::Publish(packet), now);
                    } else {
                        self.qos0.push_back(packet);
                    }
                    return;
                }
                let pkid = self.alloc_pkid(id);
                let mut out = Outgoing {
                    id,
                    packet: PublishPacket { pkid, ..packet },
                    stage: Stage::Sent,
                    sent: false,
                };
                if self.state == State::Up {
                    self.emit(&MqttPacket::Publish(out.packet.clone()), now);
                    out.sent = true;
                }
                self.publishes.insert(pkid, out);
                self.order.push_back(pkid);
            }
            Command::Release { id } => {
                let Some((pkid, o)) = self.publishes.iter_mut().find(|(_, o)| o.id == id) else {
                    return;
                };
                if o.stage == Stage::Recorded {
                    o.stage = Stage::Released;
                    let pkid = *pkid;
                    if self.state == State::Up {
                        self.emit(&MqttPacket::PubRel(pkid), now);
                    }
                }
            }
            Command::Subscribe { id, filter, qos } => {
                let pkid = self.alloc_pkid(id);
                if self.state == State::Up {
                    self.emit(
                        &MqttPacket::Subscribe { pkid, filters: vec![(filter.clone(), qos)] },
                        now,
                    );
                }
                self.requests.insert(pkid, Request::Subscribe { id, filter, qos });
            }
            Command::Unsubscribe { id, filter } => {
                let pkid = self.alloc_pkid(id);
                if self.state == State::Up {
                    self.emit(
                        &MqttPacket::Unsubscribe { pkid, filters: vec![filter.clone()] },
                        now,
                    );
                }
                self.requests.insert(pkid, Request::Unsubscribe { id, filter });
            }
            Command::ReleaseStale => self.release_stale = true,
            Command::Restore { publishes, qos2_received } => {
                for r in publishes {
                    let pkid = packet_id_of(r.id);
                    let stage = match r.stage {
                        RestoredStage::Sent => Stage::Sent,
                        RestoredStage::Recorded => Stage::Recorded,
                        RestoredStage::Released => Stage::Released,
                    };
                    let packet = PublishPacket {
                        dup: false,
                        qos: QoS::ExactlyOnce,
                        retain: r.retain,
                        topic: r.topic,
                        pkid,
                        payload: r.payload,
                    };
                    if self
                        .publishes
                        .insert(pkid, Outgoing { id: r.id, packet, stage, sent: true })
                        .is_none()
                    {
                        self.order.push_back(pkid);
                    }
                }
                self.qos2_restored.extend(qos2_received);
            }
            Command::Ack(delivery) => {
                if let Some(i) = self.incoming.iter_mut().find(|i| i.delivery == delivery) {
                    i.acked = true;
                }
                self.flush_acks(now);
            }
            Command::Disconnect => match self.state {
                State::Up => {
                    self.emit(&MqttPacket::Disconnect, now);
                    self.request_close(AfterClose::Finish);
                }
                State::AwaitConnAck { .. } => self.request_close(AfterClose::Finish),
                State::Down => self.finish(),
            },
            Command::Abort => match self.state {
                State::Down => self.finish(),
                _ => self.request_close(AfterClose::Finish),
            },
        }
    }

    /// The transport is connected: CONNECT goes out.
    pub fn handle_transport_up(&mut self, now: Instant) {
        let Some(spec) = &self.spec else { return };
        let connect = ConnectPacket {
            client_id: spec.client_id.clone(),
            clean_session: self.next_clean,
            keep_alive: u16::try_from(self.opts.keep_alive.as_secs()).unwrap_or(u16::MAX),
            will: spec.will.as_ref().map(|w| LastWill {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
            }),
            username: spec.username.clone(),
            password: spec.password.clone(),
        };
        self.state = State::AwaitConnAck { deadline: now + self.opts.response_timeout };
        self.emit(&MqttPacket::Connect(connect), now);
    }

    /// A connection attempt failed.
    pub fn handle_connect_failed(&mut self, reason: &str) {
        self.outage(reason);
    }

    /// The transport is gone (closed by either side, or failed).
    pub fn handle_transport_down(&mut self, reason: &str) {
        self.state = State::Down;
        self.ping_deadline = None;
        self.close_now = false;
        self.out.clear();
        match self.closing.take() {
            Some(AfterClose::Finish) => self.finish(),
            Some(AfterClose::Reconnect) => self.had_outage = false,
            None => self.outage(reason),
        }
    }

    /// A packet from the broker.
    pub fn handle_packet(&mut self, packet: MqttPacket, now: Instant) {
        match packet {
            MqttPacket::ConnAck { session_present, code } => {
                if !matches!(self.state, State::AwaitConnAck { .. }) {
                    return self.protocol_error("unexpected CONNACK");
                }
                if code != 0 {
                    self.events.push_back(Event::Refused { code });
                    self.refused = true;
                    self.request_close(AfterClose::Finish);
                    return;
                }
                self.state = State::Up;
                self.next_clean = false;
                self.had_outage = false;
                self.outage_reported = false;
                self.events.push_back(Event::Connected { session_present });
                self.resume(session_present, now);
            }
            MqttPacket::Publish(p) => self.incoming_publish(p, now),
            MqttPacket::PubAck(pkid) => {
                if self.publishes.get(&pkid).is_some_and(|o| o.packet.qos == QoS::AtLeastOnce) {
                    if let Some(o) = self.remove_publish(pkid) {
                        self.events.push_back(Event::PublishAcked { id: o.id });
                    }
                }
            }
            MqttPacket::PubRec(pkid) => {
                let Some(o) = self.publishes.get_mut(&pkid) else { return };
                match o.stage {
                    Stage::Sent if o.packet.qos == QoS::ExactlyOnce => {
                        o.stage = Stage::Recorded;
                        let id = o.id;
                        self.events.push_back(Event::PublishAcked { id });
                    }
                    Stage::Released => self.emit(&MqttPacket::PubRel(pkid), now),
                    _ => {}
                }
            }
            MqttPacket::PubComp(pkid) => {
                if self.publishes.get(&pkid).is_some_and(|o| o.stage == Stage::Released) {
                    if let Some(o) = self.remove_publish(pkid) {
                        self.events.push_back(Event::PublishCompleted { id: o.id });
                    }
                }
            }
            MqttPacket::PubRel(pkid) => {
                // Known or not: answer, never drop the connection.
                self.qos2_received.remove(&pkid);
                self.qos2_restored.remove(&pkid);
                self.emit(&MqttPacket::PubComp(pkid), now);
            }
            MqttPacket::SubAck { pkid, codes } => {
                if let Some(Request::Subscribe { id, .. }) = self.requests.remove(&pkid) {
                    let granted = match codes.first() {
                        Some(0) => Some(QoS::AtMostOnce),
                        Some(1) => Some(QoS::AtLeastOnce),
                        Some(2) => Some(QoS::ExactlyOnce),
                        _ => None,
                    };
                    self.events.push_back(Event::SubAcked { id, granted });
                }
            }
            MqttPacket::UnsubAck(pkid) => {
                if let Some(Request::Unsubscribe { id, .. }) = self.requests.remove(&pkid) {
                    self.events.push_back(Event::UnsubAcked { id });
                }
            }
            MqttPacket::PingResp => self.ping_deadline = None,
            other => self.protocol_error(&format!("unexpected packet from the broker: {other:?}")),
        }
    }

    /// Time has reached [`Client::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitConnAck { deadline } if now >= deadline => {
                self.protocol_error("no CONNACK in time");
            }
            State::Up => {
                if let Some(d) = self.ping_deadline {
                    if now >= d {
                        self.protocol_error("no PINGRESP in time");
                    }
                    return;
                }
                if !self.opts.keep_alive.is_zero() && now >= self.last_sent + self.opts.keep_alive {
                    self.emit(&MqttPacket::PingReq, now);
                    self.ping_deadline = Some(now + self.opts.response_timeout);
                }
            }
            _ => {}
        }
    }

    // ----- outputs -----

    /// Gives back the memory of queues and tables that are empty.
    pub fn shrink_idle(&mut self) {
        fn deque<T>(q: &mut VecDeque<T>) {
            if q.is_empty() && q.capacity() > 0 {
                *q = VecDeque::new();
            }
        }
        fn map<K, V>(m: &mut HashMap<K, V>) {
            if m.is_empty() && m.capacity() > 0 {
                *m = HashMap::new();
            }
        }
        fn set<K>(m: &mut HashSet<K>) {
            if m.is_empty() && m.capacity() > 0 {
                *m = HashSet::new();
            }
        }
        deque(&mut self.order);
        deque(&mut self.qos0);
        deque(&mut self.incoming);
        deque(&mut self.events);
        map(&mut self.publishes);
        map(&mut self.requests);
        set(&mut self.qos2_received);
        set(&mut self.qos2_restored);
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
    }

    /// True when [`Client::poll_transmit`] has octets.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty()
    }

    /// Octets to write to the transport.
    pub fn poll_transmit(&mut self) -> Option<BytesMut> {
        self.urgent = false;
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split())
        }
    }

    /// True when the octets waiting hold more than QoS 0 PUBLISHes
    /// (someone waits for an answer to them).
    pub fn has_urgent_transmit(&self) -> bool {
        self.urgent && !self.out.is_empty()
    }

    /// True once when the driver must close the transport (after writing
    /// what [`Client::poll_transmit`] gave), then call
    /// [`Client::handle_transport_down`].
    pub fn poll_close(&mut self) -> bool {
        std::mem::take(&mut self.close_now)
    }

    /// The next event for the session.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitConnAck { deadline } => Some(deadline),
            State::Up => self.ping_deadline.or_else(|| {
                (!self.opts.keep_alive.is_zero()).then_some(self.last_sent + self.opts.keep_alive)
            }),
            State::Down => None,
        }
    }

    // ----- internals -----

    fn emit(&mut self, p: &MqttPacket, now: Instant) {
        p.encode(&mut self.out);
        self.last_sent = now;
        if !matches!(p, MqttPacket::Publish(PublishPacket { qos: QoS::AtMostOnce, .. })) {
            self.urgent = true;
        }
    }

    fn request_close(&mut self, after: AfterClose) {
        if self.closing != Some(AfterClose::Finish) {
            self.closing = Some(after);
        }
        self.close_now = true;
    }

    fn finish(&mut self) {
        // A refusal already ended the session for the gateway.
        if !self.finished && !self.refused {
            self.events.push_back(Event::Closed);
        }
        self.finished = true;
        self.state = State::Down;
    }

    fn outage(&mut self, reason: &str) {
        self.had_outage = true;
        if !self.outage_reported {
            self.outage_reported = true;
            self.events.push_back(Event::Unavailable { reason: reason.to_owned() });
        }
    }

    fn protocol_error(&mut self, reason: &str) {
        tracing::warn!("upstream: {reason}; reconnecting");
        self.outage(reason);
        self.close_now = true;
    }

    /// The packet identifier for request `id`: [`packet_id_of`] it, unless
    /// that one is still in use.
    fn alloc_pkid(&mut self, id: RequestId) -> u16 {
        let preferred = packet_id_of(id);
        if !self.publishes.contains_key(&preferred) && !self.requests.contains_key(&preferred) {
            return preferred;
        }
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            let id = self.next_pkid;
            if id != 0 && !self.publishes.contains_key(&id) && !self.requests.contains_key(&id) {
                return id;
            }
        }
    }

    fn remove_publish(&mut self, pkid: u16) -> Option<Outgoing> {
        self.order.retain(|p| *p != pkid);
        self.publishes.remove(&pkid)
    }

    /// After CONNACK: send again what was not acknowledged, then what
    /// waited for the connection.
    fn resume(&mut self, session_present: bool, now: Instant) {
        if std::mem::take(&mut self.release_stale) && session_present {
            for pkid in 1..=u16::MAX {
                if !self.publishes.contains_key(&pkid) {
                    self.emit(&MqttPacket::PubRel(pkid), now);
                }
            }
        }
        if !session_present {
            // The broker forgot the session: nothing it sent us is
            // outstanding any more.
            self.incoming.clear();
            self.qos2_received.clear();
            self.qos2_restored.clear();
        } else {
            self.flush_acks(now);
        }
        let order: Vec<u16> = self.order.iter().copied().collect();
        for pkid in order {
            let Some(o) = self.publishes.get_mut(&pkid) else { continue };
            let packet = match o.stage {
                Stage::Sent => {
                    let mut p = o.packet.clone();
                    p.dup = o.sent && session_present;
                    o.sent = true;
                    MqttPacket::Publish(p)
                }
                // Waiting for the session's Release: nothing to send.
                Stage::Recorded => continue,
                Stage::Released => MqttPacket::PubRel(pkid),
            };
            self.emit(&packet, now);
        }
        let mut requests: Vec<(u16, Request)> =
            self.requests.iter().map(|(k, v)| (*k, v.clone())).collect();
        requests.sort_by_key(|(k, _)| *k);
        for (pkid, r) in requests {
            let packet = match r {
                Request::Subscribe { filter, qos, .. } => {
                    MqttPacket::Subscribe { pkid, filters: vec![(filter, qos)] }
                }
                Request::Unsubscribe { filter, .. } => {
                    MqttPacket::Unsubscribe { pkid, filters: vec![filter] }
                }
            };
            self.emit(&packet, now);
        }
        while let Some(p) = self.qos0.pop_front() {
            self.emit(&MqttPacket::Publish(p), now);
        }
    }

    fn incoming_publish(&mut self, p: PublishPacket, now: Instant) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if self.incoming.iter().any(|i| i.pkid == p.pkid && i.qos == p.qos) {
                    // Sent again before we acknowledged: already delivered.
                    return self.requeue(p.pkid, now);
                }
            }
            QoS::ExactlyOnce => {
                if self.qos2_restored.contains(&p.pkid) {
                    if p.dup {
                        // Kept by the session before a restart; the broker
                        // did not see our PUBREC.
                        self.answer_copy(p.pkid, now);
                        return;
                    }
                    // A new message that reuses the identifier.
                    self.qos2_restored.remove(&p.pkid);
                }
                if self.qos2_received.contains(&p.pkid) {
                    if self.incoming.iter().any(|i| i.pkid == p.pkid) {
                        self.requeue(p.pkid, now);
                    } else {
                        // Delivered and acknowledged; our PUBREC was lost.
                        self.answer_copy(p.pkid, now);
                    }
                    return;
                }
                self.qos2_received.insert(p.pkid);
            }
        }
        let delivery = if p.qos == QoS::AtMostOnce {
            None
        } else {
            let d = DeliveryId(self.next_delivery);
            self.next_delivery += 1;
            self.incoming.push_back(Incoming {
                delivery: d,
                pkid: p.pkid,
                qos: p.qos,
                acked: false,
            });
            Some(d)
        };
        self.events.push_back(Event::Message {
            delivery,
            packet_id: p.pkid,
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
        });
    }

    /// PUBREC for a copy of a QoS 2 message the session holds already: in
    /// its turn, after the messages that arrived before it and wait for
    /// their acknowledgement (MQTT-4.6.0-3), never delivered again.
    fn answer_copy(&mut self, pkid: u16, now: Instant) {
        let delivery = DeliveryId(self.next_delivery);
        self.next_delivery += 1;
        self.incoming.push_back(Incoming { delivery, pkid, qos: QoS::ExactlyOnce, acked: true });
        self.flush_acks(now);
    }

    /// A copy (sent again after a reconnect) of a message received before
    /// and not answered yet: its answer takes the copy's place in the
    /// order, behind the messages this connection brought before it
    /// (MQTT-4.6.0-2, MQTT-4.6.0-3).
    fn requeue(&mut self, pkid: u16, now: Instant) {
        if let Some(pos) = self.incoming.iter().position(|i| i.pkid == pkid) {
            if let Some(i) = self.incoming.remove(pos) {
                self.incoming.push_back(i);
            }
        }
        self.flush_acks(now);
    }

    /// Sends the acknowledgements that are due, in the order the messages
    /// arrived (MQTT-4.6.0-2, MQTT-4.6.0-3).
    fn flush_acks(&mut self, now: Instant) {
        if self.state != State::Up {
            return;
        }
        while self.incoming.front().is_some_and(|i| i.acked) {
            let Some(i) = self.incoming.pop_front() else { break };
            let p = if i.qos == QoS::ExactlyOnce {
                MqttPacket::PubRec(i.pkid)
            } else {
                MqttPacket::PubAck(i.pkid)
            };
            self.emit(&p, now);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use bytes::Bytes;

    use super::*;

    struct T {
        c: Client,
        now: Instant,
    }

    fn spec(clean: bool) -> ConnectSpec {
        ConnectSpec {
            client_id: "c1".into(),
            clean_session: clean,
            keep_alive: 0,
            will: None,
            username: None,
            password: None,
            client_cert: None,
        }
    }

    impl T {
        fn new() -> Self {
            let now = Instant::now();
            let opts = ClientOptions {
                keep_alive: Duration::from_secs(10),
                response_timeout: Duration::from_secs(2),
            };
            Self { c: Client::new(opts, now), now }
        }

        fn sent(&mut self) -> Vec<MqttPacket> {
            let mut out = Vec::new();
            while let Some(mut b) = self.c.poll_transmit() {
                while let Some(p) = super::super::codec::decode(&mut b, 1 << 20).unwrap() {
                    out.push(p);
                }
            }
            out
        }

        /// The delivery ids of the messages among the events.
        fn deliveries(&mut self) -> Vec<DeliveryId> {
            self.events()
                .into_iter()
                .filter_map(|e| match e {
                    Event::Message { delivery, .. } => delivery,
                    _ => None,
                })
                .collect()
        }

        fn events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.c.poll_event()).collect()
        }

        fn cmd(&mut self, c: Command) {
            self.c.handle_command(c, self.now);
        }

        fn pkt(&mut self, p: MqttPacket) {
            self.c.handle_packet(p, self.now);
        }

        fn up(clean: bool, session_present: bool) -> Self {
            let mut t = Self::new();
            t.cmd(Command::Connect(Box::new(spec(clean))));
            assert_eq!(t.c.want(), Want::ConnectNow);
            t.c.handle_transport_up(t.now);
            let sent = t.sent();
            assert!(matches!(&sent[..], [MqttPacket::Connect(c)] if c.clean_session == clean));
            t.pkt(MqttPacket::ConnAck { session_present, code: 0 });
            assert_eq!(t.events(), [Event::Connected { session_present }]);
            t
        }

        fn incoming(&mut self, pkid: u16, qos: QoS, dup: bool) {
            self.pkt(MqttPacket::Publish(PublishPacket {
                dup,
                qos,
                retain: false,
                topic: "t".into(),
                pkid,
                payload: Bytes::from(format!("p{pkid}")),
            }));
        }
    }

    fn publish(id: RequestId, qos: QoS) -> Command {
        Command::Publish {
            id,
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
        }
    }

    #[test]
    fn qos1_and_qos2_complete_only_on_the_broker_acks() {
        let mut t = T::up(true, false);
        t.cmd(publish(1, QoS::AtLeastOnce));
        t.cmd(publish(2, QoS::ExactlyOnce));
        let sent = t.sent();
        assert_eq!(sent.len(), 2);
        assert!(t.events().is_empty());
        t.pkt(MqttPacket::PubAck(1));
        t.pkt(MqttPacket::PubRec(2));
        assert_eq!(t.events(), [Event::PublishAcked { id: 1 }, Event::PublishAcked { id: 2 }]);
        assert!(t.sent().is_empty(), "no PUBREL before Release");
        t.cmd(Command::Release { id: 2 });
        assert_eq!(t.sent(), [MqttPacket::PubRel(2)]);
        t.pkt(MqttPacket::PubComp(2));
        assert_eq!(t.events(), [Event::PublishCompleted { id: 2 }]);
    }

    #[test]
    fn acks_go_out_in_arrival_order() {
        let mut t = T::up(true, false);
        t.incoming(10, QoS::AtLeastOnce, false);
        t.incoming(11, QoS::ExactlyOnce, false);
        t.incoming(12, QoS::AtLeastOnce, false);
        let ids = t.deliveries();
        assert_eq!(ids.len(), 3);
        t.cmd(Command::Ack(ids[2]));
        t.cmd(Command::Ack(ids[1]));
        assert!(t.sent().is_empty(), "held until the first is acknowledged");
        t.cmd(Command::Ack(ids[0]));
        assert_eq!(
            t.sent(),
            [MqttPacket::PubAck(10), MqttPacket::PubRec(11), MqttPacket::PubAck(12)]
        );
    }

    #[test]
    fn qos2_duplicates_are_delivered_once() {
        let mut t = T::up(true, false);
        t.incoming(5, QoS::ExactlyOnce, false);
        t.incoming(5, QoS::ExactlyOnce, true);
        let events = t.events();
        assert_eq!(events.len(), 1);
        let Event::Message { delivery: Some(d), .. } = events[0] else { panic!() };
        t.cmd(Command::Ack(d));
        assert_eq!(t.sent(), [MqttPacket::PubRec(5)]);
        // Our PUBREC was lost; the broker sends the PUBLISH again.
        t.incoming(5, QoS::ExactlyOnce, true);
        assert!(t.events().is_empty());
        assert_eq!(t.sent(), [MqttPacket::PubRec(5)]);
        t.pkt(MqttPacket::PubRel(5));
        assert_eq!(t.sent(), [MqttPacket::PubComp(5)]);
    }

    #[test]
    fn suback_refusal_and_unsuback() {
        let mut t = T::up(true, false);
        t.cmd(Command::Subscribe { id: 1, filter: "ok".into(), qos: QoS::ExactlyOnce });
        t.cmd(Command::Subscribe { id: 2, filter: "denied".into(), qos: QoS::AtMostOnce });
        t.cmd(Command::Unsubscribe { id: 3, filter: "ok".into() });
        let pkids: Vec<u16> = t
            .sent()
            .into_iter()
            .map(|p| match p {
                MqttPacket::Subscribe { pkid, .. } | MqttPacket::Unsubscribe { pkid, .. } => pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        t.pkt(MqttPacket::SubAck { pkid: pkids[0], codes: vec![1] });
        t.pkt(MqttPacket::SubAck { pkid: pkids[1], codes: vec![0x80] });
        t.pkt(MqttPacket::UnsubAck(pkids[2]));
        assert_eq!(
            t.events(),
            [
                Event::SubAcked { id: 1, granted: Some(QoS::AtLeastOnce) },
                Event::SubAcked { id: 2, granted: None },
                Event::UnsubAcked { id: 3 },
            ]
        );
    }

    #[test]
    fn unknown_pubrel_gets_pubcomp() {
        let mut t = T::up(true, false);
        t.pkt(MqttPacket::PubRel(999));
        assert_eq!(t.sent(), [MqttPacket::PubComp(999)]);
        assert!(t.c.is_up());
        assert!(!t.c.poll_close());
    }

    #[test]
    fn packet_ids_follow_request_ids_and_skip_ids_in_use() {
        let mut t = T::up(true, false);
        t.cmd(publish(1, QoS::AtLeastOnce));
        t.cmd(publish(2, QoS::AtLeastOnce));
        // 65,536 maps to packet id 1, still in use: another one is taken.
        t.c.next_pkid = 0xfffe;
        t.cmd(publish(65_536, QoS::AtLeastOnce));
        t.cmd(publish(65_535, QoS::AtLeastOnce));
        let ids: Vec<u16> = t
            .sent()
            .into_iter()
            .map(|p| match p {
                MqttPacket::Publish(p) => p.pkid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 0xffff, 3]);
        t.cmd(Command::Subscribe { id: 4, filter: "a".into(), qos: QoS::AtMostOnce });
        assert!(matches!(&t.sent()[..], [MqttPacket::Subscribe { pkid: 4, .. }]));
    }

    #[test]
    fn restored_qos2_state_is_resumed_on_connect() {
        let mut t = T::new();
        let restored = |id, stage| crate::upstream::RestoredPublish {
            id,
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            retain: false,
            stage,
        };
        t.cmd(Command::Restore {
            publishes: vec![
                restored(7, RestoredStage::Sent),
                restored(8, RestoredStage::Recorded),
                restored(9, RestoredStage::Released),
            ],
            qos2_received: vec![40],
        });
        t.cmd(Command::Connect(Box::new(spec(false))));
        t.c.handle_transport_up(t.now);
        assert!(matches!(&t.sent()[..], [MqttPacket::Connect(_)]));
        t.pkt(MqttPacket::ConnAck { session_present: true, code: 0 });
        t.events();
        let sent = t.sent();
        assert!(matches!(&sent[0], MqttPacket::Publish(p) if p.dup && p.pkid == 7));
        assert_eq!(sent[1], MqttPacket::PubRel(9));
        assert_eq!(sent.len(), 2);
        // The session releases the recorded one: PUBREL with its packet id.
        t.cmd(Command::Release { id: 8 });
        assert_eq!(t.sent(), [MqttPacket::PubRel(8)]);
        // The broker sends a kept message again: PUBREC, no second delivery.
        t.incoming(40, QoS::ExactlyOnce, true);
        assert_eq!(t.sent(), [MqttPacket::PubRec(40)]);
        assert!(t.events().iter().all(|e| !matches!(e, Event::Message { .. })));
        // A new message reusing the identifier (no DUP) is delivered.
        t.incoming(40, QoS::ExactlyOnce, false);
        assert!(t.events().iter().any(|e| matches!(e, Event::Message { packet_id: 40, .. })));
    }

    #[test]
    fn a_copy_of_a_kept_qos2_message_is_answered_in_its_turn() {
        // After a restart: the broker sends again 39 (not yet acknowledged
        // when the gateway stopped), then 40 (kept by the session). The
        // PUBREC for 40 waits for the one for 39 (MQTT-4.6.0-3; seed 23 of
        // the simulation).
        let mut t = T::new();
        t.cmd(Command::Restore { publishes: vec![], qos2_received: vec![40] });
        t.cmd(Command::Connect(Box::new(spec(false))));
        t.c.handle_transport_up(t.now);
        t.sent();
        t.pkt(MqttPacket::ConnAck { session_present: true, code: 0 });
        t.events();
        t.incoming(39, QoS::ExactlyOnce, true);
        t.incoming(40, QoS::ExactlyOnce, true);
        let events = t.events();
        let [Event::Message { delivery: Some(d), packet_id: 39, .. }] = events[..] else {
            panic!("{events:?}")
        };
        assert!(t.sent().is_empty(), "the PUBREC for 40 waits for 39's");
        t.cmd(Command::Ack(d));
        assert_eq!(t.sent(), [MqttPacket::PubRec(39), MqttPacket::PubRec(40)]);
        // The same for a copy of a message delivered on this connection
        // whose PUBREC was lost.
        t.incoming(41, QoS::ExactlyOnce, false);
        let [Event::Message { delivery: Some(d41), .. }] = t.events()[..] else { panic!() };
        t.cmd(Command::Ack(d41));
        assert_eq!(t.sent(), [MqttPacket::PubRec(41)]);
        t.incoming(42, QoS::ExactlyOnce, false);
        let [Event::Message { delivery: Some(d42), .. }] = t.events()[..] else { panic!() };
        t.incoming(41, QoS::ExactlyOnce, true);
        assert!(t.events().is_empty() && t.sent().is_empty(), "41's PUBREC again, after 42's");
        t.cmd(Command::Ack(d42));
        assert_eq!(t.sent(), [MqttPacket::PubRec(42), MqttPacket::PubRec(41)]);
    }

    #[test]
    fn a_copy_of_an_unanswered_message_is_answered_in_the_copys_turn() {
        // 7 was answered, but the PUBACK was lost with the connection; 8
        // waits for the session. After the reconnect the broker sends 7
        // and 8 again: 7 is new to the client, 8 is known; 8's PUBACK
        // goes after 7's (MQTT-4.6.0-2; seed 381 of the simulation).
        let mut t = T::up(false, false);
        t.incoming(7, QoS::AtLeastOnce, false);
        t.incoming(8, QoS::AtLeastOnce, false);
        let ids = t.deliveries();
        t.cmd(Command::Ack(ids[0]));
        assert_eq!(t.sent(), [MqttPacket::PubAck(7)]);
        t.c.handle_transport_down("reset");
        t.events();
        t.c.handle_transport_up(t.now);
        t.sent();
        t.pkt(MqttPacket::ConnAck { session_present: true, code: 0 });
        t.events();
        t.incoming(7, QoS::AtLeastOnce, true);
        let [Event::Message { delivery: Some(again), .. }] = t.events()[..] else { panic!() };
        t.incoming(8, QoS::AtLeastOnce, true);
        assert!(t.events().is_empty(), "8 is not delivered twice");
        t.cmd(Command::Ack(ids[1]));
        assert!(t.sent().is_empty(), "8's PUBACK waits for 7's");
        t.cmd(Command::Ack(again));
        assert_eq!(t.sent(), [MqttPacket::PubAck(7), MqttPacket::PubAck(8)]);
    }

    #[test]
    fn lost_connection_resends_with_dup_when_the_session_survived() {
        let mut t = T::up(true, false);
        t.cmd(publish(1, QoS::AtLeastOnce));
        t.cmd(publish(2, QoS::ExactlyOnce));
        t.cmd(Command::Subscribe { id: 3, filter: "f".into(), qos: QoS::AtLeastOnce });
        t.sent();
        t.pkt(MqttPacket::PubRec(2));
        t.cmd(Command::Release { id: 2 });
        t.sent();
        t.events();
        t.c.handle_transport_down("reset");
        assert!(matches!(&t.events()[..], [Event::Unavailable { .. }]));
        assert_eq!(t.c.want(), Want::ConnectAfterBackoff);
        // Published while down: queued.
        t.cmd(publish(4, QoS::AtMostOnce));
        t.c.handle_connect_failed("refused");
        assert!(t.events().is_empty(), "one Unavailable per outage");
        t.c.handle_transport_up(t.now);
        let sent = t.sent();
        assert!(matches!(&sent[..], [MqttPacket::Connect(c)] if !c.clean_session));
        t.pkt(MqttPacket::ConnAck { session_present: true, code: 0 });
        let sent = t.sent();
        assert!(matches!(&sent[0], MqttPacket::Publish(p) if p.dup && p.pkid == 1));
        assert_eq!(sent[1], MqttPacket::PubRel(2));
        assert!(matches!(&sent[2], MqttPacket::Subscribe { .. }));
        assert!(matches!(&sent[3], MqttPacket::Publish(p) if p.qos == QoS::AtMostOnce));
        assert_eq!(t.events(), [Event::Connected { session_present: true }]);
    }

    #[test]
    fn lost_connection_resends_as_new_when_the_session_was_lost() {
        let mut t = T::up(false, false);
        t.cmd(publish(1, QoS::AtLeastOnce));
        t.sent();
        t.c.handle_transport_down("reset");
        t.c.handle_transport_up(t.now);
        t.sent();
        t.pkt(MqttPacket::ConnAck { session_present: false, code: 0 });
        let sent = t.sent();
        assert!(matches!(&sent[..], [MqttPacket::Publish(p)] if !p.dup && p.pkid == 1));
        t.pkt(MqttPacket::PubAck(1));
        assert!(t.events().contains(&Event::PublishAcked { id: 1 }));
    }

    #[test]
    fn keepalive_ping_and_timeout() {
        let mut t = T::up(true, false);
        assert_eq!(t.c.poll_timeout(), Some(t.now + Duration::from_secs(10)));
        t.now += Duration::from_secs(10);
        t.c.handle_timeout(t.now);
        assert_eq!(t.sent(), [MqttPacket::PingReq]);
        t.pkt(MqttPacket::PingResp);
        t.now += Duration::from_secs(10);
        t.c.handle_timeout(t.now);
        assert_eq!(t.sent(), [MqttPacket::PingReq]);
        t.now += Duration::from_secs(2);
        t.c.handle_timeout(t.now);
        assert!(t.c.poll_close(), "no PINGRESP: the connection is dropped");
        t.c.handle_transport_down("closed");
        assert!(matches!(&t.events()[..], [Event::Unavailable { .. }]));
    }

    #[test]
    fn replace_disconnects_then_connects_with_the_new_will() {
        let mut t = T::up(false, false);
        let mut s = spec(false);
        s.will = Some(crate::upstream::Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
        });
        t.cmd(Command::Connect(Box::new(s)));
        assert_eq!(t.sent(), [MqttPacket::Disconnect]);
        assert!(t.c.poll_close());
        t.c.handle_transport_down("closed by us");
        assert!(t.events().is_empty(), "a replacement is not an outage");
        assert_eq!(t.c.want(), Want::ConnectNow);
        t.c.handle_transport_up(t.now);
        let sent = t.sent();
        assert!(
            matches!(&sent[..], [MqttPacket::Connect(c)] if c.will.is_some() && !c.clean_session)
        );
    }

    #[test]
    fn disconnect_abort_and_refusal_end_the_session() {
        let mut t = T::up(false, false);
        t.cmd(Command::Disconnect);
        assert_eq!(t.sent(), [MqttPacket::Disconnect]);
        assert!(t.c.poll_close());
        t.c.handle_transport_down("closed");
        assert_eq!(t.events(), [Event::Closed]);
        assert!(t.c.is_finished());

        let mut t = T::up(false, false);
        t.cmd(Command::Abort);
        assert!(t.sent().is_empty(), "no DISCONNECT: the will fires");
        assert!(t.c.poll_close());
        t.c.handle_transport_down("closed");
        assert_eq!(t.events(), [Event::Closed]);

        let mut t = T::new();
        t.cmd(Command::Connect(Box::new(spec(true))));
        t.c.handle_transport_up(t.now);
        t.sent();
        t.pkt(MqttPacket::ConnAck { session_present: false, code: 5 });
        assert_eq!(t.events(), [Event::Refused { code: 5 }]);
        assert!(t.c.poll_close());
        t.c.handle_transport_down("closed");
        assert!(t.events().is_empty());
        assert!(t.c.is_finished());
    }
}
