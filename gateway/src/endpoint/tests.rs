//! Endpoint tests with virtual time: datagrams in and out as bytes, the
//! upstream played by the test (commands seen, events fed back), no
//! socket, no task, no clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::{
    Ack, Connect, Forwarded, Frame, Packet, Publish, QoS, Register, ReturnCode, TopicId,
};

use super::*;
use crate::auth::{AuthTable, ClientEntry};
use crate::session::topics::Predefined;
use crate::upstream::DeliveryId;

const MS: Duration = Duration::from_millis(1);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn encode(p: Packet<'_>) -> Bytes {
    let mut b = [0u8; 512];
    let n = p.encode(&mut b).unwrap();
    Bytes::copy_from_slice(&b[..n])
}

fn connect(id: &str, clean: bool) -> Bytes {
    encode(Packet::Connect(Connect {
        will: false,
        clean_session: clean,
        protocol_id: 1,
        duration: 10,
        client_id: id.as_bytes(),
    }))
}

fn register(msg_id: u16, name: &str) -> Bytes {
    encode(Packet::Register(Register { topic_id: 0, msg_id, topic_name: name.as_bytes() }))
}

fn publish(qos: QoS, topic: TopicId, msg_id: u16, data: &[u8]) -> Bytes {
    encode(Packet::Publish(Publish { dup: false, qos, retain: false, topic, msg_id, data }))
}

/// One endpoint (or several sharing a directory) under virtual time.
struct H {
    eps: Vec<Endpoint>,
    now: Instant,
    metrics: Arc<Metrics>,
}

impl H {
    fn new() -> Self {
        Self::with(ServerOptions::default(), 1, false)
    }

    fn with(opts: ServerOptions, workers: usize, store: bool) -> Self {
        let mut pre = Predefined::new();
        pre.insert(7, "pre/seven");
        let cfg = Arc::new(SessionConfig {
            retry_interval: 100 * MS,
            max_retries: 2,
            predefined: Arc::new(pre),
            ..SessionConfig::default()
        });
        let now = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let dir = Arc::new(Directory::new(workers));
        let opts = Arc::new(opts);
        let eps = (0..workers)
            .map(|w| {
                Endpoint::new(
                    cfg.clone(),
                    opts.clone(),
                    metrics.clone(),
                    dir.clone(),
                    w,
                    store,
                    now,
                    WallClock::new(now, 1_000_000),
                )
            })
            .collect();
        let mut h = Self { eps, now, metrics };
        // The gateway's own connection comes up.
        let own = h.cmds_of(0);
        assert!(matches!(&own[..], [(OWN_KEY, Command::Connect(_))]), "{own:?}");
        h.eps[0].handle_upstream(h.now, OWN_KEY, Event::Connected { session_present: false });
        h
    }

    fn ep(&mut self) -> &mut Endpoint {
        &mut self.eps[0]
    }

    fn dgram(&mut self, w: usize, from: u16, d: Bytes) {
        let now = self.now;
        self.eps[w].handle_datagram(now, addr(from), &d);
    }

    fn send(&mut self, from: u16, d: Bytes) {
        self.dgram(0, from, d);
    }

    /// Datagrams out of endpoint `w`, decoded, with their destination.
    fn out_of(&mut self, w: usize) -> Vec<(u16, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut v = Vec::new();
        while let Some(t) = self.eps[w].poll_transmit(&mut buf) {
            v.push((t.to.port(), buf[..t.len].to_vec()));
        }
        v
    }

    fn out(&mut self) -> Vec<(u16, Vec<u8>)> {
        self.out_of(0)
    }

    fn cmds_of(&mut self, w: usize) -> Vec<(UpstreamKey, Command)> {
        std::iter::from_fn(|| self.eps[w].poll_upstream()).collect()
    }

    fn cmds(&mut self) -> Vec<(UpstreamKey, Command)> {
        self.cmds_of(0)
    }

    fn up(&mut self, key: UpstreamKey, e: Event) {
        let now = self.now;
        self.eps[0].handle_upstream(now, key, e);
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.eps.iter_mut().filter_map(|e| e.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(self.now);
                    let now = self.now;
                    for e in &mut self.eps {
                        e.handle_timeout(now);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Connects `id` from `port` through the whole exchange; returns its
    /// upstream key.
    fn connected(&mut self, id: &str, port: u16) -> UpstreamKey {
        self.send(port, connect(id, true));
        let cmds = self.cmds();
        let [(key, Command::Connect(spec))] = &cmds[..] else { panic!("{cmds:?}") };
        assert_eq!(spec.client_id, id);
        let key = *key;
        assert!(self.out().is_empty(), "CONNACK waits for the broker");
        self.up(key, Event::Connected { session_present: false });
        assert_eq!(self.out(), [(port, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);
        key
    }
}

fn decoded(d: &[u8]) -> Packet<'_> {
    Packet::decode(d).unwrap()
}

#[test]
fn connect_is_routed_by_client_id_and_the_rest_by_address() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    assert_ne!(key, OWN_KEY);
    assert_eq!(h.ep().session_count(), 1);
    h.send(5000, register(1, "a/b"));
    let out = h.out();
    assert!(
        matches!(decoded(&out[0].1), Packet::RegAck(a) if a.return_code == ReturnCode::Accepted)
    );
    h.send(5000, publish(QoS::AtMostOnce, TopicId::Normal(1), 0, b"21.5"));
    let cmds = h.cmds();
    let [(k, Command::Publish { topic, payload, .. })] = &cmds[..] else { panic!("{cmds:?}") };
    assert_eq!((*k, &**topic, &payload[..]), (key, "a/b", &b"21.5"[..]));
    // Another address is nobody.
    h.send(5001, publish(QoS::AtMostOnce, TopicId::Normal(1), 0, b"x"));
    assert!(h.cmds().is_empty());
    assert_eq!(h.out(), [(5001, encode(Packet::Disconnect(None)).to_vec())]);
    assert_eq!(h.metrics.snapshot().unknown_sender, 1);
}

#[test]
fn a_publish_payload_is_a_slice_of_the_datagram_not_a_copy() {
    let mut h = H::new();
    h.connected("s1", 5000);
    h.send(5000, register(1, "a/b"));
    h.out();
    let d = publish(QoS::AtMostOnce, TopicId::Normal(1), 0, b"payload");
    h.send(5000, d.clone());
    let cmds = h.cmds();
    let [(_, Command::Publish { payload, .. })] = &cmds[..] else { panic!() };
    let (start, end) = (d.as_ptr() as usize, d.as_ptr() as usize + d.len());
    let p = payload.as_ptr() as usize;
    assert!(p >= start && p + payload.len() <= end, "shared with the datagram");
}

#[test]
fn malformed_datagrams_are_counted_and_answered_with_nothing() {
    let mut h = H::new();
    for d in [&[][..], &[1][..], &[5, 4, 0][..], &[200, 1, 2][..]] {
        h.send(5000, Bytes::copy_from_slice(d));
    }
    assert!(h.out().is_empty());
    assert!(h.cmds().is_empty());
    assert_eq!(h.metrics.snapshot().malformed, 4);
}

#[test]
fn bad_connects_are_refused_before_a_session_exists() {
    let mut table = AuthTable::default();
    table.insert("known", ClientEntry::default());
    let opts = ServerOptions { auth: Arc::new(table), ..ServerOptions::default() };
    let mut h = H::with(opts, 1, false);
    let bad_protocol = encode(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 2,
        duration: 10,
        client_id: b"known",
    }));
    h.send(5000, bad_protocol);
    h.send(5001, connect("stranger", true));
    let refused = encode(Packet::ConnAck(ReturnCode::NotSupported)).to_vec();
    assert_eq!(h.out(), [(5000, refused.clone()), (5001, refused)]);
    assert!(h.cmds().is_empty());
    assert_eq!(h.ep().session_count(), 0);
    assert_eq!(h.metrics.snapshot().connects_refused, 2);
}

#[test]
fn the_broker_being_down_is_congestion_and_it_clears_when_back() {
    let mut h = H::new();
    h.up(OWN_KEY, Event::Unavailable { reason: "refused".into() });
    h.send(5000, connect("s1", true));
    assert_eq!(h.out(), [(5000, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())]);
    assert!(h.cmds().is_empty());
    h.up(OWN_KEY, Event::Connected { session_present: false });
    h.connected("s1", 5000);
}

#[test]
fn the_session_limit_refuses_new_client_ids_only() {
    let opts = ServerOptions { max_sessions: Some(1), ..ServerOptions::default() };
    let mut h = H::with(opts, 1, false);
    h.connected("s1", 5000);
    h.send(5001, connect("s2", true));
    assert_eq!(h.out(), [(5001, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())]);
    // The known one reconnects.
    h.send(5000, connect("s1", true));
    assert!(!h.cmds().is_empty());
}

#[test]
fn a_connect_from_a_new_address_takes_the_session_over() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.send(6000, connect("s1", true));
    // Clean session on a live upstream: wipe, then connect again.
    let cmds = h.cmds();
    assert!(cmds.iter().all(|(k, _)| *k == key), "same upstream: {cmds:?}");
    assert_eq!(h.metrics.snapshot().takeovers, 1);
    h.up(key, Event::Connected { session_present: false });
    h.up(key, Event::Connected { session_present: false });
    let out = h.out();
    assert_eq!(out, [(6000, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);
    // The old address is nobody now.
    h.send(5000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    h.send(6000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(6000, encode(Packet::PingResp).to_vec())]);
}

#[test]
fn unsolicited_disconnects_are_rate_limited_per_address() {
    let mut h = H::new();
    let ping = encode(Packet::PingReq(None));
    h.send(5000, ping.clone());
    h.send(5000, ping.clone());
    h.send(5001, ping.clone());
    assert_eq!(h.out().len(), 2, "one per address");
    h.advance(500 * MS);
    h.send(5000, ping.clone());
    assert!(h.out().is_empty());
    h.advance(600 * MS);
    h.send(5000, ping);
    assert_eq!(h.out().len(), 1);
    assert_eq!(h.metrics.snapshot().unknown_sender, 5);
}

#[test]
fn searchgw_is_answered_with_gwinfo_unless_turned_off() {
    let opts = ServerOptions { gateway_id: 9, ..ServerOptions::default() };
    let mut h = H::with(opts, 1, false);
    h.send(5000, encode(Packet::SearchGw { radius: 1 }));
    let out = h.out();
    assert!(matches!(decoded(&out[0].1), Packet::GwInfo(g) if g.gw_id == 9));
    let opts = ServerOptions { answer_searchgw: false, ..ServerOptions::default() };
    let mut h = H::with(opts, 1, false);
    h.send(5000, encode(Packet::SearchGw { radius: 1 }));
    assert!(h.out().is_empty());
}

#[test]
fn qos_minus_one_goes_out_on_the_gateways_own_connection_when_allowed() {
    let pub_m1 = publish(QoS::NoSession, TopicId::Predefined(7), 0, b"hi");
    let mut h = H::new();
    h.send(5000, pub_m1.clone());
    assert!(h.cmds().is_empty(), "refused by default");
    assert_eq!(h.metrics.snapshot().qos_minus_one_refused, 1);
    let opts = ServerOptions {
        qos_minus_one: Some(vec!["127.0.0.0/8".parse().unwrap()]),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 1, false);
    h.send(5000, pub_m1);
    h.send(5000, publish(QoS::NoSession, TopicId::Short(*b"ab"), 0, b"x"));
    h.send(5000, publish(QoS::NoSession, TopicId::Predefined(99), 0, b"x"));
    let topics: Vec<String> = h
        .cmds()
        .into_iter()
        .map(|(k, c)| match c {
            Command::Publish { topic, qos: crate::mqtt::QoS::AtMostOnce, .. } if k == OWN_KEY => {
                topic.to_string()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["pre/seven", "ab"]);
    assert!(h.out().is_empty(), "nothing is answered");
}

#[test]
fn advertise_goes_out_periodically_while_the_broker_is_up() {
    let opts = ServerOptions {
        advertise: Some((addr(1999), Duration::from_secs(10))),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 1, false);
    h.advance(Duration::from_secs(10));
    let out = h.out();
    assert!(
        matches!(&out[..], [(1999, d)] if matches!(decoded(d), Packet::Advertise(a) if a.duration == 10))
    );
    h.up(OWN_KEY, Event::Unavailable { reason: "x".into() });
    h.advance(Duration::from_secs(30));
    assert!(h.out().is_empty(), "paused while the broker is down");
    h.up(OWN_KEY, Event::Connected { session_present: false });
    h.advance(Duration::from_secs(10));
    assert_eq!(h.out().len(), 1);
}

#[test]
fn a_silent_sensor_is_lost_after_its_keepalive_and_its_upstream_aborted() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    // Keepalive 10 s, tolerance 1.5: lost after 15 s of silence.
    h.advance(Duration::from_secs(9));
    h.send(5000, encode(Packet::PingReq(None)));
    h.out();
    h.advance(Duration::from_secs(14));
    assert!(h.cmds().is_empty(), "heard 14 s ago");
    h.advance(Duration::from_secs(2));
    assert_eq!(h.cmds(), [(key, Command::Abort)]);
    assert_eq!(h.metrics.snapshot().sensors_lost, 1);
    h.up(key, Event::Closed);
    // A clean session: wiped upstream (on a new connection), then
    // forgotten.
    let cmds = h.cmds();
    let [(wipe, Command::Connect(c))] = &cmds[..] else { panic!("{cmds:?}") };
    assert!(c.clean_session && c.will.is_none());
    let wipe = *wipe;
    assert_ne!(wipe, key, "upstream keys are never reused");
    h.up(wipe, Event::Connected { session_present: false });
    assert_eq!(h.cmds(), [(wipe, Command::Disconnect)]);
    h.up(wipe, Event::Closed);
    assert_eq!(h.ep().session_count(), 0);
    assert_eq!(h.ep().upstreams_open(), 1, "only the gateway's own");
}

#[test]
fn events_of_a_finished_upstream_are_ignored() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.send(5000, encode(Packet::Disconnect(None)));
    h.out();
    assert_eq!(h.cmds(), [(key, Command::Disconnect)]);
    h.up(key, Event::Closed);
    h.cmds();
    h.up(key, Event::Connected { session_present: false });
    h.up(
        key,
        Event::Message {
            delivery: Some(DeliveryId(1)),
            packet_id: 1,
            topic: Arc::from("a"),
            payload: Bytes::new(),
            qos: crate::mqtt::QoS::AtLeastOnce,
            retain: false,
            dup: false,
        },
    );
    assert!(h.out().is_empty());
}

#[test]
fn a_persistent_sessions_outputs_wait_for_the_store() {
    let mut h = H::with(ServerOptions::default(), 1, true);
    h.send(5000, connect("p1", false));
    let cmds = h.cmds();
    assert!(cmds.is_empty(), "the new session is written first: {cmds:?}");
    let w = h.ep().poll_store().expect("a write");
    assert_eq!(&*w.client_id, "p1");
    let now = h.now;
    h.ep().handle_committed(now, w.ticket);
    let cmds = h.cmds();
    let [(key, Command::Connect(_))] = &cmds[..] else { panic!("{cmds:?}") };
    let key = *key;
    h.up(key, Event::Connected { session_present: false });
    assert!(h.out().is_empty(), "CONNACK waits for the write of the connected state");
    let w = h.ep().poll_store().expect("a write");
    let now = h.now;
    h.ep().handle_committed(now, w.ticket);
    assert_eq!(h.out(), [(5000, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);
    // A QoS 1 PUBLISH changes nothing durable: no write, no wait.
    h.send(5000, register(1, "a/b"));
    let w = h.ep().poll_store();
    if let Some(w) = w {
        let now = h.now;
        h.ep().handle_committed(now, w.ticket);
    }
    h.out();
    h.send(5000, publish(QoS::AtLeastOnce, TopicId::Normal(1), 2, b"v"));
    assert!(h.ep().poll_store().is_none(), "no record rewrite per publish");
    assert!(matches!(&h.cmds()[..], [(_, Command::Publish { .. })]));
    h.up(key, Event::PublishAcked { id: 1 });
    let out = h.out();
    assert!(matches!(decoded(&out[0].1), Packet::PubAck(a) if a.msg_id == 2));
    assert!(h.ep().poll_store().is_none());
}

#[test]
fn an_ended_persistent_session_expires_and_leaves_the_store() {
    let opts =
        ServerOptions { session_expiry: Some(Duration::from_secs(60)), ..ServerOptions::default() };
    let mut h = H::with(opts, 1, true);
    h.send(5000, connect("p1", false));
    let commit = |h: &mut H| {
        while let Some(w) = h.ep().poll_store() {
            let now = h.now;
            h.ep().handle_committed(now, w.ticket);
        }
    };
    commit(&mut h);
    let cmds = h.cmds();
    let key = cmds[0].0;
    h.up(key, Event::Connected { session_present: false });
    commit(&mut h);
    h.out();
    h.send(5000, encode(Packet::Disconnect(None)));
    commit(&mut h);
    h.out();
    assert_eq!(h.cmds(), [(key, Command::Disconnect)]);
    h.up(key, Event::Closed);
    commit(&mut h);
    assert_eq!(h.ep().session_count(), 1, "kept for its return");
    h.advance(Duration::from_secs(59));
    assert_eq!(h.ep().session_count(), 1);
    h.advance(Duration::from_secs(2));
    assert_eq!(h.ep().session_count(), 0);
    let writes: Vec<_> = std::iter::from_fn(|| h.ep().poll_store()).collect();
    assert!(writes.iter().any(|w| w.persist.remove), "{writes:?}");
}

#[test]
fn a_sleeper_wakes_from_a_new_address_by_client_id() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.send(5000, encode(Packet::Disconnect(Some(60))));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    h.up(
        key,
        Event::Message {
            delivery: Some(DeliveryId(1)),
            packet_id: 1,
            topic: Arc::from("pre/seven"),
            payload: Bytes::from_static(b"m"),
            qos: crate::mqtt::QoS::AtLeastOnce,
            retain: false,
            dup: false,
        },
    );
    assert_eq!(h.cmds(), [(key, Command::Ack(DeliveryId(1)))], "buffered and acknowledged");
    // Woken from another port (a NAT rebinding): the buffer goes there.
    h.send(7000, encode(Packet::PingReq(Some(b"s1"))));
    let out = h.out();
    assert!(
        matches!(&out[..], [(7000, d)] if matches!(decoded(d), Packet::Publish(p) if p.data == b"m"))
    );
    let Packet::Publish(p) = decoded(&out[0].1) else { unreachable!() };
    h.send(
        7000,
        encode(Packet::PubAck(Ack {
            topic_id: p.topic.raw(),
            msg_id: p.msg_id,
            return_code: ReturnCode::Accepted,
        })),
    );
    assert_eq!(h.out(), [(7000, encode(Packet::PingResp).to_vec())]);
    // A PINGREQ naming another ClientId does not move it.
    h.send(7001, encode(Packet::PingReq(Some(b"nobody"))));
    assert_eq!(h.out(), [(7001, encode(Packet::Disconnect(None)).to_vec())]);
}

#[test]
fn a_forwarded_sensor_is_answered_through_its_forwarder() {
    let mut h = H::new();
    let frame = |p: Packet<'_>| {
        let mut b = [0u8; 256];
        let f =
            Frame { forwarder: Some(Forwarded { radius: 1, node_id: &[0xab, 0xcd] }), packet: p };
        let n = f.encode(&mut b).unwrap();
        Bytes::copy_from_slice(&b[..n])
    };
    h.send(
        5000,
        frame(Packet::Connect(Connect {
            will: false,
            clean_session: true,
            protocol_id: 1,
            duration: 10,
            client_id: b"node",
        })),
    );
    let cmds = h.cmds();
    let key = cmds[0].0;
    h.up(key, Event::Connected { session_present: false });
    let out = h.out();
    let f = Frame::decode(&out[0].1).unwrap();
    assert_eq!(f.forwarder.map(|f| f.node_id), Some(&[0xab, 0xcd][..]));
    assert_eq!(f.packet, Packet::ConnAck(ReturnCode::Accepted));
    // The forwarder's own address without the encapsulation is nobody.
    h.send(5000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
}

#[test]
fn shutdown_disconnects_sensors_and_upstreams_without_wills() {
    let mut h = H::new();
    let a = h.connected("s1", 5000);
    let b = h.connected("s2", 5001);
    let now = h.now;
    h.ep().shutdown(now);
    let mut out: Vec<u16> = h.out().into_iter().map(|(p, _)| p).collect();
    out.sort();
    assert_eq!(out, [5000, 5001]);
    let mut cmds = h.cmds();
    cmds.sort_by_key(|(k, _)| *k);
    assert_eq!(
        cmds,
        [(OWN_KEY, Command::Disconnect), (a, Command::Disconnect), (b, Command::Disconnect)]
    );
}

#[test]
fn key_figures_are_published_retained_on_the_gateways_own_connection() {
    let opts = ServerOptions {
        sys_topics: Some(("gw/1".into(), Duration::from_secs(5))),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 1, false);
    h.connected("s1", 5000);
    h.advance(Duration::from_secs(5));
    let cmds = h.cmds();
    let connected = cmds.iter().find_map(|(k, c)| match c {
        Command::Publish { topic, payload, retain: true, .. }
            if *k == OWN_KEY && &**topic == "gw/1/sensors/connected" =>
        {
            Some(payload.clone())
        }
        _ => None,
    });
    assert_eq!(connected.as_deref(), Some(&b"1"[..]));
}

// ----- several workers -----

#[test]
fn a_takeover_from_an_address_another_worker_hears_finds_the_session() {
    let mut h = H::with(ServerOptions::default(), 2, false);
    let key = h.connected("s1", 5000);
    // The sensor comes back from a port the kernel gives to worker 1.
    h.dgram(1, 6000, connect("s1", true));
    assert!(h.out_of(1).is_empty());
    assert!(h.cmds_of(1).is_empty(), "worker 1 makes no session");
    let f = h.eps[1].poll_forward();
    let Some((0, fwd)) = f else { panic!("{f:?}") };
    let now = h.now;
    h.eps[0].handle_forward(now, fwd);
    let cmds = h.cmds();
    assert!(cmds.iter().all(|(k, _)| *k == key));
    h.up(key, Event::Connected { session_present: false });
    h.up(key, Event::Connected { session_present: false });
    assert_eq!(h.out(), [(6000, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);
    // Later datagrams from that address, heard by worker 1, go to worker 0.
    h.dgram(1, 6000, encode(Packet::PingReq(None)));
    let (w, fwd) = h.eps[1].poll_forward().expect("forwarded");
    assert_eq!(w, 0);
    let now = h.now;
    h.eps[0].handle_forward(now, fwd);
    assert_eq!(h.out(), [(6000, encode(Packet::PingResp).to_vec())]);
    assert_eq!(h.eps[1].session_count(), 0);
}

#[test]
fn a_wake_up_heard_by_another_worker_reaches_the_sleeper() {
    let mut h = H::with(ServerOptions::default(), 2, false);
    h.connected("s1", 5000);
    h.send(5000, encode(Packet::Disconnect(Some(60))));
    h.out();
    h.dgram(1, 7000, encode(Packet::PingReq(Some(b"s1"))));
    let (w, fwd) = h.eps[1].poll_forward().expect("forwarded");
    assert_eq!(w, 0);
    let now = h.now;
    h.eps[0].handle_forward(now, fwd);
    assert_eq!(h.out(), [(7000, encode(Packet::PingResp).to_vec())]);
}

#[test]
fn the_session_limit_counts_every_workers_sessions() {
    let opts = ServerOptions { max_sessions: Some(1), ..ServerOptions::default() };
    let mut h = H::with(opts, 2, false);
    h.connected("s1", 5000);
    h.dgram(1, 5001, connect("s2", true));
    assert_eq!(h.out_of(1), [(5001, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())]);
}

#[test]
fn qos_minus_one_heard_by_another_worker_goes_to_the_own_connection() {
    let opts = ServerOptions { qos_minus_one: Some(Vec::new()), ..ServerOptions::default() };
    let mut h = H::with(opts, 2, false);
    h.dgram(1, 5000, publish(QoS::NoSession, TopicId::Predefined(7), 0, b"hi"));
    assert!(h.cmds_of(1).is_empty());
    let (w, fwd) = h.eps[1].poll_forward().expect("forwarded");
    assert_eq!(w, 0);
    let now = h.now;
    h.eps[0].handle_forward(now, fwd);
    assert!(matches!(&h.cmds()[..], [(OWN_KEY, Command::Publish { .. })]));
}

#[test]
fn only_worker_zero_has_the_own_connection_and_sends_advertise() {
    let opts = ServerOptions {
        advertise: Some((addr(1999), Duration::from_secs(10))),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 2, false);
    assert!(h.cmds_of(1).is_empty());
    h.advance(Duration::from_secs(10));
    assert_eq!(h.out_of(0).len(), 1);
    assert!(h.out_of(1).is_empty());
}

#[test]
fn broker_outages_are_counted_once_each_with_the_up_gauge() {
    let mut h = H::new();
    let get = |m: &Metrics| {
        use std::sync::atomic::Ordering::Relaxed;
        (m.broker_up.load(Relaxed), m.broker_outages.load(Relaxed))
    };
    assert_eq!(get(&h.metrics), (1, 0));
    // Every failed reconnect says Unavailable again: still one outage.
    for _ in 0..3 {
        h.up(OWN_KEY, Event::Unavailable { reason: "refused".into() });
        h.advance(Duration::from_secs(30));
    }
    assert_eq!(get(&h.metrics), (0, 1));
    h.up(OWN_KEY, Event::Connected { session_present: false });
    assert_eq!(get(&h.metrics), (1, 1));
    h.up(OWN_KEY, Event::Unavailable { reason: "closed".into() });
    assert_eq!(get(&h.metrics), (0, 2));
}

#[test]
fn reloaded_settings_apply_to_the_next_connect_on_every_worker() {
    let cfg = Arc::new(SessionConfig::default());
    let live = Arc::new(crate::reload::Live::new(crate::reload::Current {
        session: cfg.clone(),
        auth: Arc::new(AuthTable::open()),
    }));
    let opts = ServerOptions { live: Some(live.clone()), ..ServerOptions::default() };
    let mut h = H::with(opts, 2, false);
    h.connected("s1", 5000);
    let mut refuse = AuthTable::open();
    refuse.allow_unknown = false;
    live.replace(crate::reload::Current { session: cfg, auth: Arc::new(refuse) });
    for w in 0..2 {
        h.dgram(w, 5001 + w as u16, connect(&format!("new-{w}"), true));
        let out = h.out_of(w);
        assert_eq!(
            out,
            [(5001 + w as u16, encode(Packet::ConnAck(ReturnCode::NotSupported)).to_vec())]
        );
    }
    // The session already connected goes on.
    h.send(5000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(5000, encode(Packet::PingResp).to_vec())]);
}
