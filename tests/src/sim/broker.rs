//! A model MQTT 3.1.1 broker behind the gateway's real upstream side
//! (`mqttsn_gateway::upstream::transparent::Transparent`, one MQTT client
//! per sensor): it speaks MQTT packets over modelled TCP connections.
//!
//! Per ClientId a session (clean or kept), its subscriptions (exact
//! names, `+` and `#`), QoS 0/1/2 delivery to subscribers at the lower of
//! the two QoS, messages for a kept session queued while it has no
//! connection and sent again (DUP) on the next, QoS 2 deduplicated by
//! packet identifier until PUBREL, a second connection with a ClientId
//! taking the session over (the first is closed), and a connection that
//! ends without DISCONNECT ending a clean session. Octets and connection
//! events take 0 to 30 ms each way, in order.
//!
//! Outages (the broker unreachable: every connection drops, opens fail)
//! and restarts (the same, and the broker loses its sessions: the clean
//! ones, or all of them when it runs without persistence) are drawn from
//! the seed. A gateway crash ([`Broker::crash`]) drops every connection of
//! that gateway process without DISCONNECT, after the octets it wrote.
//!
//! It checks what the gateway owes MQTT as it goes (a broken rule is kept
//! in [`Broker::violations`]): every packet decodes, CONNECT first, and
//! PUBACK and PUBREC in the order of the PUBLISHes they answer, per
//! connection (MQTT 3.1.1 section 4.6). It records every message it
//! accepted (by payload: the sensors' payloads are unique) and every
//! delivery the gateway acknowledged (PUBACK, PUBREC), for the
//! invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mqttsn_codec::validate::topic_matches;
use mqttsn_gateway::mqtt::codec::{self, MqttPacket, PublishPacket};
use mqttsn_gateway::mqtt::QoS;
use mqttsn_gateway::upstream::ConnId;

use super::rng::Rng;

/// A connection: the gateway process it comes from (a restarted gateway
/// numbers its connections from 1 again) and its id there.
pub type Conn = (u32, ConnId);

/// What the broker hands the gateway's upstream side.
#[derive(Debug)]
pub enum ToGateway {
    /// The transport asked for is up.
    Opened(ConnId),
    /// It could not be opened (the broker is down).
    OpenFailed(ConnId),
    /// Octets from the broker.
    Bytes(ConnId, BytesMut),
    /// The broker closed the connection.
    Closed(ConnId),
}

#[derive(Debug)]
enum FromGateway {
    Open,
    Bytes(BytesMut),
    Close {
        linger: bool,
    },
    /// The gateway process died: every connection of its epoch drops.
    Crash,
}

#[derive(Debug, Clone)]
struct Msg {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
}

/// A QoS 1/2 message for a session, until completed.
#[derive(Debug)]
struct Out {
    pkid: u16,
    msg: Msg,
    /// PUBREC received, PUBREL sent: waits for PUBCOMP.
    released: bool,
    /// Sent on some connection already (DUP when sent again).
    sent: bool,
}

/// One session, by ClientId.
#[derive(Debug, Default)]
struct BSession {
    clean: bool,
    subs: BTreeMap<String, QoS>,
    /// Packet identifiers of QoS 2 publishes received and not released,
    /// with the gateway process that sent them.
    qos2_in: BTreeMap<u16, u32>,
    /// QoS 1/2 messages not completed, in order.
    out: VecDeque<Out>,
    conn: Option<Conn>,
    next_pkid: u16,
}

/// One connection.
#[derive(Debug, Default)]
struct Link {
    cid: Option<String>,
    inbuf: BytesMut,
    /// PUBLISHes sent on it waiting for PUBACK (QoS 1, `[0]`) or PUBREC
    /// (QoS 2, `[1]`), in the order sent, each with the number of its
    /// octets toward the gateway (see [`Broker::polled`]).
    wait_ack: [VecDeque<(u16, u64)>; 2],
    /// PUBRECs sent for the gateway's QoS 2 publishes, waiting for PUBREL,
    /// in order.
    wait_rel: VecDeque<u16>,
}

/// A message accepted from a publisher.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Its QoS.
    pub qos: QoS,
    /// Times accepted.
    pub times: u32,
    /// When first accepted.
    pub first_at: u64,
}

/// A delivery the gateway acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The subscriber.
    pub cid: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS of the delivery.
    pub qos: QoS,
    /// When (PUBACK or PUBREC received).
    pub at: u64,
}

/// A planned outage: from, to, and whether the broker restarts.
pub type Outage = (u64, u64, bool);

/// The broker. See the module documentation.
#[derive(Debug)]
pub struct Broker {
    rng: Rng,
    /// Keeps CleanSession-false sessions across a restart.
    persistent: bool,
    sessions: BTreeMap<String, BSession>,
    links: BTreeMap<Conn, Link>,
    /// From the gateway, by arrival, each with [`Broker::polled`] when it
    /// was written.
    inbox: VecDeque<(u64, Conn, FromGateway, u64)>,
    /// To the gateway, by arrival, each numbered.
    outbox: VecDeque<(u64, Conn, ToGateway, u64)>,
    /// The number of the last thing sent toward the gateway.
    sent_seq: u64,
    /// The number of the last thing the gateway took: what it writes
    /// after it answers everything up to there.
    polled: u64,
    /// [`Broker::polled`] when the octets being read were written.
    written_after: u64,
    /// Arrived at the gateway, with their numbers.
    ready: VecDeque<(ToGateway, u64)>,
    /// The gateway process now running.
    epoch: u32,
    down_until: Option<u64>,
    plan: VecDeque<Outage>,
    now: u64,
    /// Every message accepted from a publisher, by payload.
    pub accepted: BTreeMap<Bytes, Accepted>,
    /// Deliveries the gateway acknowledged, in order.
    pub acked: Vec<Acked>,
    /// Rules the gateway broke.
    pub violations: Vec<String>,
    /// Outages and restarts that happened.
    pub outage_count: u32,
    /// Restarts among them.
    pub restart_count: u32,
    /// The last restart that lost the kept sessions too.
    pub wiped_at: Option<u64>,
    /// QoS 2 messages accepted again after such a restart (the broker
    /// forgot their packet identifiers: not the gateway's to prevent).
    pub qos2_again_after_wipe: u32,
    /// PUBRELs not in the order of their PUBRECs (MQTT-4.6.0-4), counted.
    pub pubrel_reordered: u32,
    /// QoS 2 messages taken for a copy: a new gateway process reused a
    /// packet identifier that a broker session left by a crashed one
    /// still held.
    pub lost_to_stale_id: BTreeSet<Bytes>,
}

impl Broker {
    /// A broker with these outages planned; `persistent`: it keeps
    /// CleanSession-false sessions across a restart.
    pub fn new(rng: Rng, plan: Vec<Outage>, persistent: bool) -> Self {
        Self {
            rng,
            persistent,
            sessions: BTreeMap::new(),
            links: BTreeMap::new(),
            inbox: VecDeque::new(),
            outbox: VecDeque::new(),
            sent_seq: 0,
            polled: 0,
            written_after: 0,
            ready: VecDeque::new(),
            epoch: 0,
            down_until: None,
            plan: plan.into(),
            now: 0,
            accepted: BTreeMap::new(),
            acked: Vec::new(),
            violations: Vec::new(),
            outage_count: 0,
            restart_count: 0,
            wiped_at: None,
            qos2_again_after_wipe: 0,
            pubrel_reordered: 0,
            lost_to_stale_id: BTreeSet::new(),
        }
    }

    /// Cancels the outages still to come (the quiet drain).
    pub fn heal(&mut self) {
        self.plan.clear();
    }

    fn arrival(&mut self, now: u64, last: Option<u64>) -> u64 {
        (now + self.rng.range(0, 30)).max(last.unwrap_or(0))
    }

    fn receive(&mut self, now: u64, conn: ConnId, what: FromGateway) {
        let at = self.arrival(now, self.inbox.back().map(|i| i.0));
        self.inbox.push_back((at, (self.epoch, conn), what, self.polled));
    }

    /// The gateway asks for a connection (`Io::Open`).
    pub fn open(&mut self, now: u64, conn: ConnId) {
        self.receive(now, conn, FromGateway::Open);
    }

    /// The gateway writes octets.
    pub fn write(&mut self, now: u64, conn: ConnId, data: BytesMut) {
        self.receive(now, conn, FromGateway::Bytes(data));
    }

    /// The gateway closes a connection (`Io::Close`).
    pub fn close(&mut self, now: u64, conn: ConnId, linger: bool) {
        self.receive(now, conn, FromGateway::Close { linger });
    }

    /// The gateway process dies: what it wrote still arrives, then every
    /// connection it had drops without DISCONNECT; nothing reaches it any
    /// more. The next process numbers its connections afresh.
    pub fn crash(&mut self, now: u64) {
        self.receive(now, 0, FromGateway::Crash);
        self.epoch += 1;
        self.ready.clear();
    }

    /// Sends toward the gateway; returns the number it goes under.
    fn emit(&mut self, conn: Conn, what: ToGateway) -> u64 {
        if conn.0 != self.epoch {
            return u64::MAX;
        }
        let at = self.arrival(self.now, self.outbox.back().map(|o| o.0));
        self.sent_seq += 1;
        self.outbox.push_back((at, conn, what, self.sent_seq));
        self.sent_seq
    }

    fn send(&mut self, conn: Conn, p: &MqttPacket) -> u64 {
        let mut b = BytesMut::new();
        p.encode(&mut b);
        self.emit(conn, ToGateway::Bytes(conn.1, b))
    }

    /// When something is due next.
    pub fn next_due(&self) -> Option<u64> {
        let planned = self.plan.front().filter(|_| self.down_until.is_none()).map(|o| o.0);
        [
            self.inbox.front().map(|i| i.0),
            self.outbox.front().map(|o| o.0),
            self.down_until,
            planned,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does what is due at `now`.
    pub fn advance(&mut self, now: u64) {
        self.now = now;
        if self.down_until.is_some_and(|t| t <= now) {
            self.down_until = None;
        }
        if self.down_until.is_none() && self.plan.front().is_some_and(|o| o.0 <= now) {
            if let Some((_, end, restart)) = self.plan.pop_front() {
                self.down(end.max(now + 1), restart);
            }
        }
        while self.inbox.front().is_some_and(|i| i.0 <= now) {
            let Some((_, conn, what, after)) = self.inbox.pop_front() else { break };
            self.written_after = after;
            self.handle(conn, what);
        }
        while self.outbox.front().is_some_and(|o| o.0 <= now) {
            let Some((_, conn, what, seq)) = self.outbox.pop_front() else { break };
            if conn.0 == self.epoch {
                self.ready.push_back((what, seq));
            }
        }
    }

    /// The next thing for the gateway.
    pub fn poll(&mut self) -> Option<ToGateway> {
        let (what, seq) = self.ready.pop_front()?;
        self.polled = seq;
        Some(what)
    }

    /// Deliveries not completed for a session of this ClientId.
    pub fn unacked_for(&self, cid: &str) -> usize {
        self.sessions.get(cid).map_or(0, |s| s.out.iter().filter(|o| !o.released).count())
    }

    fn down(&mut self, until: u64, restart: bool) {
        self.down_until = Some(until);
        self.outage_count += 1;
        let conns: Vec<Conn> = self.links.keys().copied().collect();
        for c in conns {
            self.drop_link(c);
            self.emit(c, ToGateway::Closed(c.1));
        }
        if restart {
            self.restart_count += 1;
            if self.persistent {
                self.sessions.retain(|_, s| !s.clean);
            } else {
                self.sessions.clear();
                self.wiped_at = Some(self.now);
            }
        }
    }

    /// A connection ends; without DISCONNECT a will would fire (the
    /// sensors set none). A clean session ends with it.
    fn drop_link(&mut self, conn: Conn) {
        let Some(link) = self.links.remove(&conn) else { return };
        let Some(cid) = link.cid else { return };
        let Some(s) = self.sessions.get_mut(&cid).filter(|s| s.conn == Some(conn)) else { return };
        s.conn = None;
        if s.clean {
            self.sessions.remove(&cid);
        }
    }

    fn violation(&mut self, conn: Conn, what: String) {
        let cid = self.links.get(&conn).and_then(|l| l.cid.clone()).unwrap_or_default();
        self.violations.push(format!("connection {conn:?} ({cid}): {what}"));
    }

    fn handle(&mut self, conn: Conn, what: FromGateway) {
        match what {
            FromGateway::Open => {
                if self.down_until.is_some() {
                    self.emit(conn, ToGateway::OpenFailed(conn.1));
                } else {
                    self.links.insert(conn, Link::default());
                    self.emit(conn, ToGateway::Opened(conn.1));
                }
            }
            FromGateway::Close { linger } => {
                if self.links.contains_key(&conn) {
                    self.drop_link(conn);
                    if linger {
                        self.emit(conn, ToGateway::Closed(conn.1));
                    }
                }
            }
            FromGateway::Crash => {
                let conns: Vec<Conn> =
                    self.links.keys().filter(|c| c.0 == conn.0).copied().collect();
                for c in conns {
                    self.drop_link(c);
                }
            }
            FromGateway::Bytes(data) => {
                let Some(link) = self.links.get_mut(&conn) else { return };
                link.inbuf.extend_from_slice(&data);
                loop {
                    let Some(link) = self.links.get_mut(&conn) else { return };
                    match codec::decode(&mut link.inbuf, 1 << 20) {
                        Ok(Some(p)) => self.packet(conn, p),
                        Ok(None) => break,
                        Err(e) => {
                            self.violation(conn, format!("undecodable octets: {e}"));
                            self.drop_link(conn);
                            self.emit(conn, ToGateway::Closed(conn.1));
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The ClientId of a connection that holds its session.
    fn live_cid(&self, conn: Conn) -> Option<String> {
        let cid = self.links.get(&conn)?.cid.clone()?;
        self.sessions.get(&cid).filter(|s| s.conn == Some(conn))?;
        Some(cid)
    }

    fn packet(&mut self, conn: Conn, p: MqttPacket) {
        let now = self.now;
        if let MqttPacket::Connect(c) = p {
            return self.connect(conn, &c.client_id, c.clean_session);
        }
        let Some(cid) = self.live_cid(conn) else {
            if self.links.get(&conn).is_some_and(|l| l.cid.is_none()) {
                self.violation(conn, format!("{p:?} before CONNECT"));
            }
            return;
        };
        match p {
            MqttPacket::Publish(p) => {
                let fresh = match p.qos {
                    QoS::ExactlyOnce => {
                        let held =
                            self.sessions.get_mut(&cid).map(|s| s.qos2_in.insert(p.pkid, conn.0));
                        match held {
                            Some(Some(epoch)) if !p.dup => {
                                // A new message under a packet identifier
                                // the broker still holds: taken for a copy.
                                self.id_reused(conn, &p, epoch);
                                false
                            }
                            Some(held) => held.is_none(),
                            None => false,
                        }
                    }
                    _ => true,
                };
                if fresh {
                    self.accept(&p, now);
                    self.route(Msg { topic: p.topic, payload: p.payload, qos: p.qos });
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.send(conn, &MqttPacket::PubAck(p.pkid));
                    }
                    QoS::ExactlyOnce => {
                        if let Some(l) = self.links.get_mut(&conn) {
                            l.wait_rel.retain(|k| *k != p.pkid);
                            l.wait_rel.push_back(p.pkid);
                        }
                        self.send(conn, &MqttPacket::PubRec(p.pkid));
                    }
                }
            }
            MqttPacket::PubRel(pkid) => {
                if let Some(l) = self.links.get_mut(&conn) {
                    if let Some(pos) = l.wait_rel.iter().position(|k| *k == pkid) {
                        if pos != 0 {
                            self.pubrel_reordered += 1;
                        }
                        l.wait_rel.remove(pos);
                    }
                }
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.qos2_in.remove(&pkid);
                }
                self.send(conn, &MqttPacket::PubComp(pkid));
            }
            MqttPacket::Subscribe { pkid, filters } => {
                let codes = filters.iter().map(|(_, q)| *q as u8).collect();
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.subs.extend(filters);
                }
                self.send(conn, &MqttPacket::SubAck { pkid, codes });
            }
            MqttPacket::Unsubscribe { pkid, filters } => {
                if let Some(s) = self.sessions.get_mut(&cid) {
                    for f in &filters {
                        s.subs.remove(f);
                    }
                }
                self.send(conn, &MqttPacket::UnsubAck(pkid));
            }
            MqttPacket::PingReq => {
                self.send(conn, &MqttPacket::PingResp);
            }
            MqttPacket::Disconnect => {
                self.drop_link(conn);
                self.emit(conn, ToGateway::Closed(conn.1));
            }
            MqttPacket::PubAck(pkid) => self.answer(conn, &cid, pkid, QoS::AtLeastOnce),
            MqttPacket::PubRec(pkid) => self.answer(conn, &cid, pkid, QoS::ExactlyOnce),
            MqttPacket::PubComp(pkid) => {
                if let Some(s) = self.sessions.get_mut(&cid) {
                    s.out.retain(|o| !(o.pkid == pkid && o.released));
                }
            }
            p => self.violation(conn, format!("{p:?} from a client")),
        }
    }

    fn connect(&mut self, conn: Conn, cid: &str, clean: bool) {
        if self.links.get(&conn).is_none_or(|l| l.cid.is_some()) {
            return self.violation(conn, "a second CONNECT".into());
        }
        let existed = self.sessions.contains_key(cid);
        if clean {
            self.sessions.remove(cid);
        }
        let old = self.sessions.get(cid).and_then(|s| s.conn).filter(|c| *c != conn);
        if let Some(old) = old {
            // Taken over: the first connection is closed.
            self.drop_link(old);
            self.emit(old, ToGateway::Closed(old.1));
        }
        let s = self.sessions.entry(cid.to_owned()).or_default();
        s.clean = clean;
        s.conn = Some(conn);
        if let Some(l) = self.links.get_mut(&conn) {
            l.cid = Some(cid.to_owned());
        }
        let present = existed && !clean;
        self.send(conn, &MqttPacket::ConnAck { session_present: present, code: 0 });
        // What is not completed goes again, in order.
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let mut packets = Vec::new();
        for o in s.out.iter_mut() {
            packets.push(if o.released {
                MqttPacket::PubRel(o.pkid)
            } else {
                let p = publish(o, o.sent);
                o.sent = true;
                p
            });
        }
        for p in packets {
            let seq = self.send(conn, &p);
            self.note_sent(conn, &p, seq);
        }
    }

    fn note_sent(&mut self, conn: Conn, p: &MqttPacket, seq: u64) {
        if let (MqttPacket::Publish(p), Some(l)) = (p, self.links.get_mut(&conn)) {
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => l.wait_ack[0].push_back((p.pkid, seq)),
                QoS::ExactlyOnce => l.wait_ack[1].push_back((p.pkid, seq)),
            }
        }
    }

    /// PUBACK or PUBREC for a message the broker sent.
    fn answer(&mut self, conn: Conn, cid: &str, pkid: u16, qos: QoS) {
        let (slot, rule, name) = match qos {
            QoS::ExactlyOnce => (1, "MQTT-4.6.0-3", "PUBREC"),
            _ => (0, "MQTT-4.6.0-2", "PUBACK"),
        };
        if let Some(l) = self.links.get_mut(&conn) {
            match l.wait_ack[slot].iter().position(|k| k.0 == pkid) {
                Some(0) => {
                    l.wait_ack[slot].pop_front();
                }
                // Written before this PUBLISH reached the gateway: the
                // answer to a copy received on an earlier connection (the
                // client keeps what it owes across connections).
                Some(pos) if l.wait_ack[slot][pos].1 > self.written_after => {
                    l.wait_ack[slot].remove(pos);
                }
                Some(pos) => {
                    let first = l.wait_ack[slot][0].0;
                    l.wait_ack[slot].remove(pos);
                    let what = format!(
                        "{name} for packet id {pkid} before the one for {first}, sent before it ({rule})"
                    );
                    self.violation(conn, what);
                }
                None => {}
            }
        }
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let Some(pos) = s.out.iter().position(|o| o.pkid == pkid && o.msg.qos == qos) else {
            return;
        };
        let o = &mut s.out[pos];
        let first = !o.released;
        if qos == QoS::ExactlyOnce {
            o.released = true;
        }
        let msg = o.msg.clone();
        if qos == QoS::AtLeastOnce {
            s.out.remove(pos);
        }
        if first {
            self.acked.push(Acked { cid: cid.to_owned(), payload: msg.payload, qos, at: self.now });
        }
        if qos == QoS::ExactlyOnce {
            self.send(conn, &MqttPacket::PubRel(pkid));
        }
    }

    fn id_reused(&mut self, conn: Conn, p: &PublishPacket, epoch: u32) {
        let name = String::from_utf8_lossy(&p.payload).into_owned();
        if epoch == conn.0 {
            let what = format!("QoS 2 {name} sent under packet id {} still in use", p.pkid);
            return self.violation(conn, what);
        }
        // Known: the id is held by the broker session of a clean MQTT-SN
        // session that a crashed gateway process never ended (see
        // docs/simulation.md); the message is lost.
        self.lost_to_stale_id.insert(p.payload.clone());
    }

    fn accept(&mut self, p: &PublishPacket, now: u64) {
        let wiped = self.wiped_at;
        let a = self.accepted.entry(p.payload.clone()).or_insert(Accepted {
            qos: p.qos,
            times: 0,
            first_at: now,
        });
        a.times += 1;
        if p.qos == QoS::ExactlyOnce && a.times > 1 {
            if wiped.is_some_and(|w| w >= a.first_at) {
                self.qos2_again_after_wipe += 1;
            } else {
                let name = String::from_utf8_lossy(&p.payload).into_owned();
                self.violations.push(format!("QoS 2 {name} accepted {} times", a.times));
            }
        }
    }

    /// A QoS 2 message accepted twice, allowed because the broker forgot
    /// it in between.
    pub fn forgot(&self, payload: &[u8]) -> bool {
        let a = self.accepted.get(payload);
        a.is_some_and(|a| self.wiped_at.is_some_and(|w| w >= a.first_at))
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
                    .max_by_key(|q| *q as u8)?;
                Some((cid.clone(), q))
            })
            .collect();
        for (cid, q) in targets {
            let qos = if (q as u8) < (msg.qos as u8) { q } else { msg.qos };
            self.deliver(&cid, Msg { qos, ..msg.clone() });
        }
    }

    fn deliver(&mut self, cid: &str, msg: Msg) {
        let Some(s) = self.sessions.get_mut(cid) else { return };
        let conn = s.conn;
        if msg.qos == QoS::AtMostOnce {
            if let Some(c) = conn {
                let p = MqttPacket::Publish(PublishPacket {
                    dup: false,
                    qos: msg.qos,
                    retain: false,
                    topic: msg.topic,
                    pkid: 0,
                    payload: msg.payload,
                });
                self.send(c, &p);
            }
            return;
        }
        s.next_pkid = s.next_pkid.wrapping_add(1).max(1);
        let o = Out { pkid: s.next_pkid, msg, released: false, sent: conn.is_some() };
        let p = publish(&o, false);
        s.out.push_back(o);
        if let Some(c) = conn {
            let seq = self.send(c, &p);
            self.note_sent(c, &p, seq);
        }
    }
}

fn publish(o: &Out, dup: bool) -> MqttPacket {
    MqttPacket::Publish(PublishPacket {
        dup,
        qos: o.msg.qos,
        retain: false,
        topic: o.msg.topic.clone(),
        pkid: o.pkid,
        payload: o.msg.payload.clone(),
    })
}
