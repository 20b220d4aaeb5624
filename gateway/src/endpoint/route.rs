//! Routing: a datagram to its session (CONNECT by ClientId, the rest by
//! source address, or to the worker holding the session), admission,
//! binding addresses, senders without a session, QoS -1.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqttsn_codec::{Frame, Packet, ReturnCode};
use tracing::{debug, info, warn};

use super::{Activity, Endpoint, Entry, Forward, WorkerId, MAX_HOPS, OWN_KEY};
use crate::admission::{Refusal, Source};
use crate::failpoint;
use crate::metrics::Metrics;
use crate::peer::{Link, Peer};
use crate::session::{check_connect, Session};
use crate::upstream::Command;

impl Endpoint {
    pub(super) fn datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        link: Link,
        data: &Bytes,
        hops: u8,
    ) {
        if hops == 0 {
            self.local.datagrams_in += 1;
        }
        self.refresh_settings();
        let frame = match Frame::decode(data) {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.metrics.malformed);
                if self.may_log(now) {
                    warn!(%from, len = data.len(), "malformed datagram dropped: {e}");
                }
                return;
            }
        };
        debug!(%from, "in: {frame}");
        let peer = match frame.forwarder {
            None => Peer { addr: from, node: None, link },
            Some(f) => Peer { addr: from, node: Some(Arc::from(f.node_id)), link },
        };
        match frame.packet {
            Packet::Connect(c) => self.connect(now, &c, peer, data, hops),
            packet => {
                // A sleeping sensor that wakes from a new address (NAT
                // rebinding, NB-IoT) names itself in PINGREQ.
                if let Packet::PingReq(Some(id)) = &packet {
                    if self.wake_elsewhere(id, &peer, data, hops) {
                        return;
                    }
                }
                let Some(&idx) = self.by_addr.get(&peer) else {
                    if hops < MAX_HOPS {
                        if let Some(w) = self.dir.addr_elsewhere(&peer, self.me) {
                            let data = data.clone();
                            self.forwards.push_back((
                                w,
                                Forward::Datagram { from, link, data, hops: hops + 1 },
                            ));
                            return;
                        }
                    }
                    return self.unknown_sender(&packet, peer, data.len(), now);
                };
                if self.entries.get(idx).is_some_and(|e| e.over_store_bound(&self.dir)) {
                    // It waits for the store; its sensor tries again.
                    Metrics::inc(&self.metrics.store_refused_datagrams);
                    debug!(%from, "{} dropped: the session store cannot write", packet.msg_type());
                    return;
                }
                if self.check_heard(idx, &packet, data.len()) {
                    return self.flush(idx, now);
                }
                if let Some(e) = self.entries.get_mut(idx) {
                    e.session.handle_datagram(&packet, data, now);
                    if e.session.is_sleeping()
                        && matches!(packet, Packet::PubAck(_) | Packet::PubComp(_))
                    {
                        failpoint::hit("acked-before-delete");
                    }
                }
                self.flush(idx, now);
                self.probe(idx);
            }
        }
    }

    /// A wake-up PINGREQ(ClientId): binds the new address to the sleeper
    /// here, or forwards it to the worker holding the session. True when
    /// it was forwarded.
    pub(super) fn wake_elsewhere(
        &mut self,
        id: &[u8],
        peer: &Peer,
        data: &Bytes,
        hops: u8,
    ) -> bool {
        let Ok(id) = std::str::from_utf8(id) else { return false };
        if self.opts.auth.check(id, peer).is_err() {
            return false;
        }
        if let Some(&idx) = self.by_cid.get(id) {
            // Asleep, or awake at an address still unverified: the
            // sensor may be back where it was.
            let asleep = self.entries.get(idx).is_some_and(|e| e.session.is_sleeping());
            if asleep || self.is_checking(idx) {
                if let Some(old) = self.bind(idx, peer.clone()) {
                    self.moved(idx, old, peer, 0);
                }
            }
            return false;
        }
        if hops >= MAX_HOPS {
            return false;
        }
        match self.dir.owner_elsewhere(id, self.me) {
            Some(w) => {
                let f = Forward::Datagram {
                    from: peer.addr,
                    link: peer.link,
                    data: data.clone(),
                    hops: hops + 1,
                };
                self.forwards.push_back((w, f));
                true
            }
            None => false,
        }
    }

    pub(super) fn connect(
        &mut self,
        now: Instant,
        c: &mqttsn_codec::Connect<'_>,
        peer: Peer,
        data: &Bytes,
        hops: u8,
    ) {
        let len = data.len();
        let ip = peer.addr.ip();
        let source = {
            let mut adm = self.dir.admission();
            if adm.is_exempt(ip) {
                None
            } else {
                // Counted once, where the datagram arrived.
                let rate = if hops == 0 { adm.connect(Source::of(ip), now) } else { Ok(()) };
                let busy = adm.limits().connecting.is_some_and(|max| self.dir.connecting() >= max);
                drop(adm);
                match rate.and(if busy { Err(Refusal::Connecting) } else { Ok(()) }) {
                    Ok(()) => Some(Source::of(ip)),
                    Err(why) => return self.refuse_admission(now, why, peer, len),
                }
            }
        };
        if let Err(rc) = check_connect(c, &self.cfg) {
            Metrics::inc(&self.metrics.connects_refused);
            if self.may_log(now) {
                warn!(from = %peer, "CONNECT refused: {rc}");
            }
            return self.reply_unverified(now, Packet::ConnAck(rc), peer, len);
        }
        let Ok(client_id) = std::str::from_utf8(c.client_id) else { return };
        let identity = match self.opts.auth.check(client_id, &peer) {
            Ok(identity) => identity,
            Err(why) => {
                Metrics::inc(&self.metrics.connects_refused);
                if self.may_log(now) {
                    warn!(from = %peer, client_id, "CONNECT refused: {}", why.as_str());
                }
                return self.reply_unverified(
                    now,
                    Packet::ConnAck(ReturnCode::NotSupported),
                    peer,
                    len,
                );
            }
        };
        if self.dir.broker_down() {
            // Try again later: the broker is unreachable.
            return self.reply_unverified(now, Packet::ConnAck(ReturnCode::Congestion), peer, len);
        }
        if self.dir.store_failing() && self.needs_store(c.clean_session, client_id) {
            // Its CONNACK would wait for the store: try again later.
            Metrics::inc(&self.metrics.connects_refused);
            Metrics::inc(&self.metrics.store_refused_connects);
            if self.may_log(now) {
                warn!(from = %peer, client_id, "CONNECT refused: the session store cannot write");
            }
            return self.reply_unverified(now, Packet::ConnAck(ReturnCode::Congestion), peer, len);
        }
        let idx = match self.by_cid.get(client_id) {
            Some(&idx) => idx,
            None => {
                if let Some(w) = self.dir.owner_elsewhere(client_id, self.me) {
                    return self.forward_connect(w, peer, data, hops, now);
                }
                if self.opts.aggregating.is_some() {
                    // Its home worker's pool holds its subscriptions, in
                    // this run and the next (docs/aggregating.md).
                    let home = self.dir.home_of(client_id);
                    if home != self.me {
                        return self.forward_connect(home, peer, data, hops, now);
                    }
                }
                let full = self.opts.max_sessions.is_some_and(|max| self.dir.sessions() >= max);
                if full {
                    Metrics::inc(&self.metrics.connects_refused);
                    if self.may_log(now) {
                        warn!(from = %peer, client_id, "CONNECT refused: session limit reached");
                    }
                    return self.reply_unverified(
                        now,
                        Packet::ConnAck(ReturnCode::Congestion),
                        peer,
                        len,
                    );
                }
                if let Some(src) = source {
                    let started = self.dir.admission().session_started(src, now);
                    if let Err(why) = started {
                        return self.refuse_admission(now, why, peer, len);
                    }
                }
                let cid: Arc<str> = Arc::from(client_id);
                if let Some(w) = self.dir.claim(&cid, self.me) {
                    if let Some(src) = source {
                        self.dir.admission().session_ended(src);
                    }
                    return self.forward_connect(w, peer, data, hops, now);
                }
                let idx = self.insert(cid, Session::new(self.cfg.clone(), client_id, now), now);
                if let Some(e) = self.entries.get_mut(idx) {
                    e.source = source;
                }
                idx
            }
        };
        if let Some(e) = self.entries.get_mut(idx) {
            e.ended_at = None;
            // The sensor's return wins over a deletion still under way.
            e.forget = false;
        }
        match self.bind(idx, peer.clone()) {
            // A clean start takes nothing of the old session along.
            _ if c.clean_session => self.end_check(idx),
            Some(old) => self.moved(idx, old, &peer, len),
            None => {}
        }
        if let Some(e) = self.entries.get_mut(idx) {
            e.session.set_identity(identity);
            e.session.handle_connect(c, now);
        }
        self.flush(idx, now);
    }

    /// A CONNECT of `client_id` must write to the store: the sensor asks
    /// for a persistent session, or its session here is one (and would be
    /// removed from the store).
    fn needs_store(&self, clean_session: bool, client_id: &str) -> bool {
        self.persistent_store
            && (!clean_session
                || self
                    .by_cid
                    .get(client_id)
                    .and_then(|&idx| self.entries.get(idx))
                    .is_some_and(|e| e.session.persistent()))
    }

    /// A CONNECT over an admission bound: CONNACK congestion (the sensor
    /// tries again later), counted by reason.
    fn refuse_admission(&mut self, now: Instant, why: Refusal, peer: Peer, len: usize) {
        Metrics::inc(&self.metrics.connects_refused);
        Metrics::inc(&self.metrics.admission_refused[why.index()]);
        if self.may_log(now) {
            warn!(from = %peer, "CONNECT refused: admission limit ({})", why.as_str());
        }
        self.reply_unverified(now, Packet::ConnAck(ReturnCode::Congestion), peer, len);
    }

    pub(super) fn forward_connect(
        &mut self,
        w: WorkerId,
        peer: Peer,
        data: &Bytes,
        hops: u8,
        now: Instant,
    ) {
        if hops >= MAX_HOPS {
            if self.may_log(now) {
                warn!(from = %peer, "CONNECT refused: its session is moving between workers");
            }
            let len = data.len();
            return self.reply_unverified(now, Packet::ConnAck(ReturnCode::Congestion), peer, len);
        }
        let f = Forward::Datagram {
            from: peer.addr,
            link: peer.link,
            data: data.clone(),
            hops: hops + 1,
        };
        self.forwards.push_back((w, f));
    }

    pub(super) fn insert(&mut self, cid: Arc<str>, session: Session, now: Instant) -> usize {
        let uid = self.next_uid;
        self.next_uid += 1;
        let state = session.state();
        let idx = self.entries.insert(Box::new(Entry {
            uid,
            cid: cid.clone(),
            session,
            addr: None,
            addr_bytes: Vec::new(),
            upstream: None,
            scheduled: None,
            counted_active: false,
            ended_at: None,
            held: VecDeque::new(),
            buffered: (0, 0),
            activity: Activity::default(),
            state,
            since: now,
            upstream_down: false,
            forget: false,
            source: None,
            gate: None,
        }));
        if state == crate::session::SessionState::Connecting {
            self.dir.set_connecting(true);
        }
        self.by_cid.insert(cid, idx);
        self.dir.session_added();
        idx
    }

    /// Forgets a session: it is gone from every map and the directory.
    pub(super) fn remove(&mut self, idx: usize) -> Option<Box<Entry>> {
        let e = self.entries.try_remove(idx)?;
        self.by_cid.remove(&e.cid);
        if let Some(addr) = &e.addr {
            if self.by_addr.get(addr) == Some(&idx) {
                self.by_addr.remove(addr);
                self.dir.unbind_addr(addr, self.me);
            }
        }
        if let Some(key) = e.upstream {
            self.by_key.remove(&key);
        }
        if e.counted_active {
            Metrics::dec(&self.metrics.sessions_active);
        }
        if e.state == crate::session::SessionState::Connecting {
            self.dir.set_connecting(false);
        }
        if let Some(src) = e.source {
            self.dir.admission().session_ended(src);
        }
        self.cfg.buffer_total.update(e.buffered, (0, 0));
        self.dir.release(&e.cid, self.me);
        self.dir.session_removed();
        Some(e)
    }

    /// Binds `peer` to the session `idx`: a session has one address, an
    /// address one session. Returns the address it moved from, if it
    /// moved.
    pub(super) fn bind(&mut self, idx: usize, peer: Peer) -> Option<Peer> {
        // The address may belong to another session (a NAT reused it).
        if let Some(other) = self.by_addr.insert(peer.clone(), idx) {
            if other != idx {
                if let Some(e) = self.entries.get_mut(other) {
                    e.addr = None;
                    e.addr_bytes.clear();
                }
            }
        }
        self.dir.bind_addr(&peer, self.me);
        let e = self.entries.get_mut(idx)?;
        let old = e.addr.replace(peer.clone());
        e.addr_bytes = peer.to_bytes();
        if let Some(old) = old {
            if old != peer {
                // A takeover: the old address hears nothing more.
                let cid = e.cid.clone();
                if self.by_addr.get(&old) == Some(&idx) {
                    self.by_addr.remove(&old);
                    self.dir.unbind_addr(&old, self.me);
                }
                Metrics::inc(&self.metrics.takeovers);
                info!(client_id = %cid, %old, new = %peer, "session moved to a new address");
                return Some(old);
            }
        }
        None
    }

    /// A datagram from an address without a session: an unsolicited
    /// DISCONNECT (rate-limited per address) tells a sensor that missed a
    /// gateway restart or a NAT rebinding to connect again.
    pub(super) fn unknown_sender(
        &mut self,
        packet: &Packet<'_>,
        from: Peer,
        len: usize,
        now: Instant,
    ) {
        match packet {
            Packet::SearchGw { .. } => {
                // Sent to the gateway's own address: answered there.
                if self.opts.answer_searchgw {
                    debug!(to = %from, gw_id = self.opts.gateway_id, "GWINFO");
                    let info = mqttsn_codec::GwInfo { gw_id: self.opts.gateway_id, gw_addr: &[] };
                    self.reply_unverified(now, Packet::GwInfo(info), from, len);
                }
                return;
            }
            Packet::Advertise(_) | Packet::GwInfo(_) => return,
            Packet::Publish(p) if p.qos == mqttsn_codec::QoS::NoSession => {
                return self.qos_minus_one(p, &from, now);
            }
            _ => {}
        }
        Metrics::inc(&self.metrics.unknown_sender);
        if let Some(last) = self.unknown_sent.get(&from) {
            if now.saturating_duration_since(*last) < self.opts.unknown_disconnect_interval {
                return;
            }
        }
        if self.unknown_sent.len() > 65_536 {
            let horizon = self.opts.unknown_disconnect_interval;
            self.unknown_sent.retain(|_, t| now.saturating_duration_since(*t) < horizon);
        }
        debug!(%from, "{} from an address without a session: DISCONNECT", packet.msg_type());
        self.unknown_sent.insert(from.clone(), now);
        self.reply_unverified(now, Packet::Disconnect(None), from, len);
    }

    /// A QoS -1 PUBLISH (spec 6.8): to a predefined id or a short name,
    /// from an allowed source, forwarded at QoS 0. Nothing is answered.
    pub(super) fn qos_minus_one(
        &mut self,
        p: &mqttsn_codec::Publish<'_>,
        from: &Peer,
        now: Instant,
    ) {
        let allowed = self.opts.qos_minus_one.as_ref().is_some_and(|list| {
            list.is_empty() || list.iter().any(|net| net.contains(from.addr.ip()))
        });
        let topic: Option<Arc<str>> = match p.topic {
            mqttsn_codec::TopicId::Predefined(id) => self.cfg.predefined.name(id).cloned(),
            mqttsn_codec::TopicId::Short(s) => {
                mqttsn_codec::validate::topic_name(&s).ok().map(Arc::from)
            }
            _ => None,
        };
        let (true, Some(topic)) = (allowed, topic) else {
            Metrics::inc(&self.metrics.qos_minus_one_refused);
            if self.may_log(now) {
                let why = if allowed { "unknown topic" } else { "not allowed" };
                warn!(%from, "QoS -1 PUBLISH dropped: {why}");
            }
            return;
        };
        if self.cfg.acl.as_ref().is_some_and(|acl| !acl.may_publish_unconnected(&topic)) {
            Metrics::inc(&self.metrics.qos_minus_one_refused);
            Metrics::inc(&self.metrics.acl_refused[crate::acl::Action::Publish.index()]);
            if self.may_log(now) {
                warn!(%from, %topic, "QoS -1 PUBLISH dropped: refused by the ACL");
            }
            return;
        }
        Metrics::inc(&self.metrics.qos_minus_one);
        self.own_publish(topic, Bytes::copy_from_slice(p.data), p.retain);
    }

    /// A QoS 0 publish on the gateway's own connection (worker 0's).
    pub(super) fn own_publish(&mut self, topic: Arc<str>, payload: Bytes, retain: bool) {
        let id = self.own_next_request;
        self.own_next_request += 1;
        let cmd =
            Command::Publish { id, topic, payload, qos: crate::mqtt::QoS::AtMostOnce, retain };
        if self.own {
            self.upstream.push_back((OWN_KEY, cmd));
        } else {
            self.forwards.push_back((0, Forward::Own(cmd)));
        }
    }
}
