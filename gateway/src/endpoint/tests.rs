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

/// The session settings of the tests: predefined topic 7 is `pre/seven`.
fn config() -> SessionConfig {
    let mut pre = Predefined::new();
    pre.insert(7, "pre/seven");
    SessionConfig {
        retry_interval: 100 * MS,
        max_retries: 2,
        predefined: Arc::new(pre),
        ..SessionConfig::default()
    }
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
        Self::with_cfg(opts, workers, store, config())
    }

    fn with_cfg(opts: ServerOptions, workers: usize, store: bool, cfg: SessionConfig) -> Self {
        let cfg = Arc::new(cfg);
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
    // (A close right after CONNACK is a takeover, not an outage: see
    // the_own_connection_closed_right_after_connack_keeps_sensors_admitted.)
    h.advance(Duration::from_secs(10));
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
fn a_pingreq_without_client_id_from_the_sleepers_address_wakes_it() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.send(5000, encode(Packet::Disconnect(Some(60))));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    for (delivery, payload) in [(1, &b"m1"[..]), (2, b"m2")] {
        h.up(
            key,
            Event::Message {
                delivery: Some(DeliveryId(delivery)),
                packet_id: delivery as u16,
                topic: Arc::from("pre/seven"),
                payload: Bytes::copy_from_slice(payload),
                qos: crate::mqtt::QoS::AtLeastOnce,
                retain: false,
                dup: false,
            },
        );
    }
    h.cmds();
    // From another address, a PINGREQ without ClientId is nobody's.
    h.send(7000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(7000, encode(Packet::Disconnect(None)).to_vec())]);
    // From the sleeper's own address, it wakes it: the buffer, then
    // PINGRESP, then asleep again.
    for round in 0..2 {
        h.advance(Duration::from_secs(30));
        h.send(5000, encode(Packet::PingReq(None)));
        let mut got = Vec::new();
        for _ in 0..4 {
            let out = h.out();
            let [(5000, d)] = &out[..] else { panic!("{out:?}") };
            match decoded(d) {
                Packet::Publish(p) => {
                    got.push(p.data.to_vec());
                    h.send(
                        5000,
                        encode(Packet::PubAck(Ack {
                            topic_id: p.topic.raw(),
                            msg_id: p.msg_id,
                            return_code: ReturnCode::Accepted,
                        })),
                    );
                }
                Packet::PingResp => break,
                other => panic!("{other:?}"),
            }
        }
        let want: Vec<Vec<u8>> =
            if round == 0 { vec![b"m1".to_vec(), b"m2".to_vec()] } else { Vec::new() };
        assert_eq!(got, want);
        let acks = h.cmds();
        assert_eq!(acks.len(), 0, "acknowledged to the broker when buffered: {acks:?}");
    }
    // Still asleep: its sleep timer (60 s x 1.1) was restarted by each
    // wake-up, so it is not lost 61 s after the first one.
    h.advance(Duration::from_secs(40));
    assert_eq!(h.ep().session_count(), 1);
    assert_eq!(h.metrics.snapshot().sensors_lost, 0);
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
fn in_aggregating_mode_a_session_lives_on_its_client_ids_home_worker() {
    let opts = ServerOptions {
        aggregating: Some(crate::upstream::aggregating::PoolOptions {
            connections: 1,
            client_id: "gw".into(),
            worker: 0,
            keep_alive: 60,
            username: None,
            password: None,
            own_client_id: "own".into(),
            max_offline: 10,
        }),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 2, false);
    let dir = Directory::new(2);
    // A ClientId whose home is worker 1, heard by worker 0.
    let id = (0..).map(|i| format!("s{i}")).find(|c| dir.home_of(c) == 1).unwrap();
    h.dgram(0, 5000, connect(&id, true));
    assert!(h.cmds_of(0).is_empty(), "worker 0 makes no session");
    let Some((1, fwd)) = h.eps[0].poll_forward() else { panic!("not forwarded home") };
    let now = h.now;
    h.eps[1].handle_forward(now, fwd);
    let cmds = h.cmds_of(1);
    assert!(matches!(&cmds[..], [(_, Command::Connect(_))]), "{cmds:?}");
    assert_eq!(h.eps[1].session_count(), 1);
    assert_eq!(h.eps[0].session_count(), 0);
    // One whose home is worker 0 stays there.
    let id = (0..).map(|i| format!("t{i}")).find(|c| dir.home_of(c) == 0).unwrap();
    h.dgram(0, 5001, connect(&id, true));
    assert!(h.eps[0].poll_forward().is_none());
    assert_eq!(h.eps[0].session_count(), 1);
}

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
fn the_own_connection_closed_right_after_connack_keeps_sensors_admitted() {
    let mut h = H::new();
    h.advance(100 * MS);
    // Taken over (the same ClientId elsewhere): the broker answered
    // moments ago, so a CONNECT is still admitted.
    h.up(OWN_KEY, Event::Unavailable { reason: "eof".into() });
    h.send(5000, connect("s1", true));
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [(_, Command::Connect(_))]), "{cmds:?}");
    // A close after a connection that lasted: the broker is gone.
    h.up(OWN_KEY, Event::Connected { session_present: false });
    h.advance(Duration::from_secs(6));
    h.up(OWN_KEY, Event::Unavailable { reason: "eof".into() });
    h.send(5001, connect("s2", true));
    let out = h.out();
    assert!(
        out.contains(&(5001, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())),
        "{out:?}"
    );
}

#[test]
fn searchgw_via_the_group_is_answered_to_the_group_and_advertise_goes_there() {
    let group: SocketAddr = ([239, 1, 2, 3], 1883).into();
    let opts = ServerOptions {
        gateway_id: 5,
        multicast: Some(crate::options::MulticastDiscovery {
            group: crate::multicast::Group {
                addr: group,
                interface: crate::multicast::Interface::Default,
                hops: 1,
            },
            advertise_every: Duration::from_secs(30),
        }),
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 1, false);
    let search = encode(Packet::SearchGw { radius: 1 });
    let gwinfo = encode(Packet::GwInfo(mqttsn_codec::GwInfo { gw_id: 5, gw_addr: &[] }));
    let mut buf = [0u8; 64];
    let mut sent = |h: &mut H| {
        let mut v = Vec::new();
        while let Some(t) = h.ep().poll_transmit(&mut buf) {
            v.push((t.to, buf[..t.len].to_vec()));
        }
        v
    };
    // Via the group: to the group, once for a burst of searchers.
    let now = h.now;
    h.ep().handle_group_datagram(now, addr(5000), &search);
    h.ep().handle_group_datagram(now, addr(5002), &search);
    assert_eq!(sent(&mut h), [(group, gwinfo.to_vec())]);
    h.advance(500 * MS);
    let now = h.now;
    h.ep().handle_group_datagram(now, addr(5002), &search);
    assert_eq!(sent(&mut h), [(group, gwinfo.to_vec())]);
    // To the gateway's address: back to the searcher.
    h.send(5000, search.clone());
    assert_eq!(sent(&mut h), [(addr(5000), gwinfo.to_vec())]);
    // Other gateways' (and its own looped-back) messages on the group are
    // not answered.
    h.ep().handle_group_datagram(now, addr(5001), &gwinfo);
    let adv = encode(Packet::Advertise(mqttsn_codec::Advertise { gw_id: 5, duration: 30 }));
    h.ep().handle_group_datagram(now, addr(5001), &adv);
    assert!(sent(&mut h).is_empty());
    // ADVERTISE to the group every 30 s.
    h.advance(Duration::from_secs(30));
    assert_eq!(sent(&mut h), [(group, adv.to_vec())]);
    h.advance(Duration::from_secs(29));
    assert!(sent(&mut h).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(sent(&mut h), [(group, adv.to_vec())]);
}

// ----- the management API -----

use crate::control::{
    Control, ControlError, Registration, SessionFilter, Subscription, UpstreamState,
};
use crate::session::SessionState;

fn ids(list: &crate::control::SessionList) -> Vec<&str> {
    list.sessions.iter().map(|s| s.client_id.as_str()).collect()
}

/// Writes every pending store write and commits it.
fn commit(h: &mut H) {
    while let Some(w) = h.ep().poll_store() {
        let now = h.now;
        h.ep().handle_committed(now, w.ticket);
    }
}

#[test]
fn sessions_are_listed_by_client_id_filtered_by_state_and_name_and_limited() {
    let mut h = H::new();
    h.connected("green-2", 5002);
    h.connected("barn-1", 5001);
    h.connected("green-1", 5000);
    h.send(5002, encode(Packet::Disconnect(Some(60))));
    h.out();
    let all = h.ep().sessions(&SessionFilter::default());
    assert_eq!((all.total, ids(&all)), (3, vec!["barn-1", "green-1", "green-2"]));
    let s = &all.sessions[1];
    assert_eq!((s.state, s.peer.as_deref()), (SessionState::Active, Some("127.0.0.1:5000")));
    assert_eq!((s.keepalive_secs, s.clean_session, s.upstream), (10, true, UpstreamState::Up));
    assert_eq!(s.since, 1_000_000);
    assert!(s.subscriptions.is_none() && s.registrations.is_none(), "counts only in a list");
    let asleep = SessionFilter { states: vec![SessionState::Asleep], ..SessionFilter::default() };
    let asleep = h.ep().sessions(&asleep);
    assert_eq!(ids(&asleep), ["green-2"]);
    assert_eq!(asleep.sessions[0].sleep_secs, Some(60));
    let named = SessionFilter { client_id: Some("een".into()), ..SessionFilter::default() };
    assert_eq!(ids(&h.ep().sessions(&named)), ["green-1", "green-2"]);
    let first = SessionFilter { limit: 1, ..SessionFilter::default() };
    let first = h.ep().sessions(&first);
    assert_eq!((first.total, ids(&first)), (3, vec!["barn-1"]));
}

#[test]
fn one_session_in_detail_lists_its_subscriptions_and_registrations() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.send(5000, register(1, "a/b"));
    h.send(5000, register(2, "c/d"));
    h.out();
    h.send(
        5000,
        encode(Packet::Subscribe(mqttsn_codec::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 3,
            topic: mqttsn_codec::TopicFilter::Name(b"e/#"),
        })),
    );
    let cmds = h.cmds();
    let [(_, Command::Subscribe { id, .. })] = &cmds[..] else { panic!("{cmds:?}") };
    let id = *id;
    assert_eq!(h.ep().session("s1").map(|s| s.pending_upstream), Some(1));
    h.up(key, Event::SubAcked { id, granted: Some(crate::mqtt::QoS::AtLeastOnce) });
    h.out();
    let s = h.ep().session("s1").expect("s1 is here");
    assert_eq!((s.subscription_count, s.registration_count, s.pending_upstream), (1, 2, 0));
    assert_eq!(s.subscriptions, Some(vec![Subscription { filter: "e/#".into(), qos: 1 }]));
    assert_eq!(
        s.registrations,
        Some(vec![
            Registration { topic_id: 1, topic: "a/b".into() },
            Registration { topic_id: 2, topic: "c/d".into() },
        ])
    );
    assert_eq!(h.ep().session("nobody"), None);
}

#[test]
fn since_is_when_the_session_entered_its_state_and_an_outage_shows_down() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    h.advance(Duration::from_secs(5));
    h.send(5000, encode(Packet::Disconnect(Some(60))));
    h.out();
    let s = h.ep().session("s1").expect("s1");
    assert_eq!((s.state, s.since, s.last_heard), (SessionState::Asleep, 1_000_005, 1_000_005));
    h.up(key, Event::Unavailable { reason: "refused".into() });
    assert_eq!(h.ep().session("s1").map(|s| s.upstream), Some(UpstreamState::Down));
    h.up(key, Event::Connected { session_present: true });
    assert_eq!(h.ep().session("s1").map(|s| s.upstream), Some(UpstreamState::Up));
}

#[test]
fn a_disconnected_sensor_gets_disconnect_and_its_upstream_closes_without_its_will() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    let now = h.now;
    assert_eq!(h.ep().disconnect(now, "s1", false), Ok(()));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    assert_eq!(h.cmds(), [(key, Command::Disconnect)], "DISCONNECT upstream: no will");
    assert_eq!(h.ep().session("s1").map(|s| s.state), Some(SessionState::Ended));
    assert_eq!(h.metrics.snapshot().sessions_active, 0);
    assert_eq!(h.ep().disconnect(now, "s1", false), Err(ControlError::NotConnected));
    assert_eq!(h.ep().disconnect(now, "nobody", false), Err(ControlError::NotFound));
    h.up(key, Event::Closed);
    // The clean session is wiped upstream, then forgotten.
    let cmds = h.cmds();
    let [(wipe, Command::Connect(_))] = &cmds[..] else { panic!("{cmds:?}") };
    let wipe = *wipe;
    h.up(wipe, Event::Connected { session_present: false });
    h.cmds();
    h.up(wipe, Event::Closed);
    assert_eq!(h.ep().session_count(), 0);
}

#[test]
fn a_disconnect_with_the_will_drops_the_upstream_so_the_broker_publishes_it() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    let now = h.now;
    assert_eq!(h.ep().disconnect(now, "s1", true), Ok(()));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    assert_eq!(h.cmds(), [(key, Command::Abort)]);
    assert_eq!(h.metrics.snapshot().sensors_lost, 0, "not counted as lost");
}

#[test]
fn a_silent_sensor_shows_lost_until_it_connects_again() {
    let mut h = H::new();
    h.send(5000, connect("p1", false));
    let cmds = h.cmds();
    let key = cmds[0].0;
    h.up(key, Event::Connected { session_present: false });
    h.out();
    h.advance(Duration::from_secs(16));
    assert_eq!(h.cmds(), [(key, Command::Abort)]);
    h.up(key, Event::Closed);
    let s = h.ep().session("p1").expect("kept: CleanSession false");
    assert_eq!((s.state, s.upstream), (SessionState::Lost, UpstreamState::Closed));
    assert_eq!(s.since, 1_000_015, "lost when the keepalive ran out (10 s x 1.5)");
    let lost = SessionFilter { states: vec![SessionState::Lost], ..SessionFilter::default() };
    assert_eq!(ids(&h.ep().sessions(&lost)), ["p1"]);
    h.send(5000, connect("p1", false));
    assert_eq!(h.ep().session("p1").map(|s| s.state), Some(SessionState::Connecting));
}

#[test]
fn a_deleted_ended_session_is_forgotten_and_removed_from_the_store() {
    let mut h = H::with(ServerOptions::default(), 1, true);
    h.send(5000, connect("p1", false));
    commit(&mut h);
    let key = h.cmds()[0].0;
    h.up(key, Event::Connected { session_present: false });
    commit(&mut h);
    h.out();
    let now = h.now;
    assert_eq!(h.ep().forget(now, "p1"), Err(ControlError::Connected));
    assert_eq!(h.ep().forget(now, "nobody"), Err(ControlError::NotFound));
    assert_eq!(h.ep().disconnect(now, "p1", false), Ok(()));
    // Deleted while its upstream is still closing: forgotten once closed.
    assert_eq!(h.ep().forget(now, "p1"), Ok(()));
    commit(&mut h);
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    assert_eq!(h.cmds(), [(key, Command::Disconnect)]);
    assert_eq!(h.ep().session_count(), 1, "its upstream is still open");
    h.up(key, Event::Closed);
    let writes: Vec<_> = std::iter::from_fn(|| h.ep().poll_store()).collect();
    assert_eq!(h.ep().session_count(), 0);
    assert_eq!(h.ep().session("p1"), None);
    let last = writes.last().expect("writes");
    assert!(last.persist.remove && &*last.client_id == "p1", "{writes:?}");
}

#[test]
fn a_sensor_that_returns_before_its_deletion_completes_keeps_its_session() {
    let mut h = H::new();
    h.send(5000, connect("p1", false));
    let key = h.cmds()[0].0;
    h.up(key, Event::Connected { session_present: false });
    h.send(5000, register(1, "a/b"));
    h.out();
    let now = h.now;
    h.ep().disconnect(now, "p1", false).expect("disconnected");
    h.ep().forget(now, "p1").expect("deletion under way");
    h.out();
    h.cmds();
    h.send(5000, connect("p1", false));
    h.up(key, Event::Closed);
    assert_eq!(h.ep().session("p1").map(|s| s.registration_count), Some(1));
}

#[test]
fn the_broker_share_counts_connections_and_sessions() {
    let mut h = H::with(ServerOptions::default(), 2, false);
    h.connected("s1", 5000);
    let b0 = h.eps[0].broker_share();
    let b1 = h.eps[1].broker_share();
    assert!(b0.up && !b0.down && !b1.up, "only worker 0 holds the own connection");
    assert_eq!((b0.connections, b0.sessions), (2, 1));
    assert_eq!((b1.connections, b1.sessions), (0, 0));
}

#[test]
fn control_requests_are_answered_on_their_reply_channel() {
    let mut h = H::new();
    h.connected("s1", 5000);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let now = h.now;
    h.ep().handle_control(
        now,
        Control::Disconnect { client_id: "s1".into(), with_will: false, reply: tx },
    );
    assert_eq!(rx.try_recv(), Ok(Ok(())));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    h.ep().handle_control(now, Control::Sessions { filter: SessionFilter::default(), reply: tx });
    assert_eq!(rx.try_recv().map(|l| l.total), Ok(1));
}

#[test]
fn a_sensor_disconnected_in_its_will_handshake_is_over_at_once() {
    let mut h = H::new();
    h.send(
        5000,
        encode(Packet::Connect(Connect {
            will: true,
            clean_session: true,
            protocol_id: 1,
            duration: 10,
            client_id: b"w1",
        })),
    );
    assert_eq!(h.out(), [(5000, encode(Packet::WillTopicReq).to_vec())]);
    assert_eq!(h.ep().session("w1").map(|s| s.state), Some(SessionState::Connecting));
    let now = h.now;
    assert_eq!(h.ep().disconnect(now, "w1", false), Ok(()));
    assert_eq!(h.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
    assert!(h.cmds().is_empty(), "no broker connection was opened");
    assert_eq!(h.ep().session_count(), 0);
    assert_eq!(h.ep().upstreams_open(), 1, "only the gateway's own");
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
    // (A close right after CONNACK would be a takeover, not an outage.)
    h.advance(Duration::from_secs(10));
    h.up(OWN_KEY, Event::Unavailable { reason: "closed".into() });
    assert_eq!(get(&h.metrics), (0, 2));
}

#[test]
fn a_broker_gone_right_after_connack_is_an_outage_unless_it_accepts_again() {
    let mut h = H::new();
    let get = |m: &Metrics| {
        use std::sync::atomic::Ordering::Relaxed;
        (m.broker_up.load(Relaxed), m.broker_outages.load(Relaxed))
    };
    h.up(OWN_KEY, Event::Connected { session_present: false });
    h.advance(Duration::from_secs(1));
    // Closed moments after CONNACK: a takeover, or a broker going away.
    h.up(OWN_KEY, Event::Unavailable { reason: "eof".into() });
    assert_eq!(get(&h.metrics), (1, 0), "not an outage yet");
    h.advance(Duration::from_secs(3));
    assert_eq!(get(&h.metrics), (1, 0), "not an outage yet");
    // Not accepted again within 5 s: it was the broker, gone since.
    h.advance(Duration::from_secs(3));
    assert_eq!(get(&h.metrics), (0, 1));
    h.send(5000, connect("s1", true));
    let out = h.out();
    assert!(
        out.contains(&(5000, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())),
        "{out:?}"
    );
}

#[test]
fn reloaded_settings_apply_to_the_next_connect_on_every_worker() {
    let cfg = Arc::new(SessionConfig::default());
    let live = Arc::new(crate::reload::Live::new(crate::reload::Current {
        session: cfg.clone(),
        auth: Arc::new(AuthTable::open()),
        admission: Default::default(),
    }));
    let opts = ServerOptions { live: Some(live.clone()), ..ServerOptions::default() };
    let mut h = H::with(opts, 2, false);
    h.connected("s1", 5000);
    let mut refuse = AuthTable::open();
    refuse.allow_unknown = false;
    live.replace(crate::reload::Current {
        session: cfg,
        auth: Arc::new(refuse),
        admission: Default::default(),
    });
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

// ----- admission under a flood (see crate::admission) -----

use crate::admission::{Limits, Rate, Refusal, Source};

fn at(ip: [u8; 4], port: u16) -> SocketAddr {
    (ip, port).into()
}

impl H {
    fn dgram_at(&mut self, w: usize, from: SocketAddr, d: Bytes) {
        let now = self.now;
        self.eps[w].handle_datagram(now, from, &d);
    }

    /// Datagrams out of endpoint `w` with their whole destination.
    fn out_at(&mut self, w: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        let mut v = Vec::new();
        while let Some(t) = self.eps[w].poll_transmit(&mut buf) {
            v.push((t.to, buf[..t.len].to_vec()));
        }
        v
    }

    /// Answers every upstream command of worker 0 as a working broker
    /// would, until none is left; returns the Connects seen.
    fn settle(&mut self) -> usize {
        let mut connects = 0;
        for _ in 0..100 {
            let cmds = self.cmds();
            if cmds.is_empty() {
                break;
            }
            for (key, cmd) in cmds {
                match cmd {
                    Command::Connect(_) => {
                        connects += 1;
                        self.up(key, Event::Connected { session_present: false });
                    }
                    Command::Disconnect | Command::Abort => self.up(key, Event::Closed),
                    _ => {}
                }
            }
        }
        connects
    }

    fn refused(&self, why: Refusal) -> u64 {
        self.metrics.admission_refused[why.index()].load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn connects_in(cmds: &[(UpstreamKey, Command)]) -> usize {
    cmds.iter().filter(|(_, c)| matches!(c, Command::Connect(_))).count()
}

#[test]
fn a_connect_flood_from_one_address_is_bounded_while_established_sensors_are_served() {
    let admission = Limits {
        sessions_per_source: Some(3),
        connect_per_source: Some(Rate { per_sec: 10.0, burst: 5 }),
        ..Limits::default()
    };
    let mut h = H::with(ServerOptions { admission, ..ServerOptions::default() }, 1, false);
    h.connected("real", 5000);
    let flood = [192, 0, 2, 1];
    for i in 0..100u16 {
        h.dgram_at(0, at(flood, 6000 + i), connect(&format!("spoof-{i}"), true));
    }
    // Three sessions (the per-address bound), two more CONNECTs within the
    // rate refused for the session bound, the other 95 for the rate.
    assert_eq!(connects_in(&h.cmds()), 3);
    assert_eq!(h.ep().session_count(), 4);
    let congestion = encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec();
    let out = h.out_at(0);
    assert_eq!(out.len(), 97);
    assert!(out.iter().all(|(to, d)| to.ip() == std::net::IpAddr::from(flood) && *d == congestion));
    assert_eq!(h.refused(Refusal::SourceSessions), 2);
    assert_eq!(h.refused(Refusal::SourceConnectRate), 95);
    assert_eq!(h.metrics.snapshot().admission_refused, 97);
    // The established sensor is served as before.
    h.send(5000, register(1, "a/b"));
    let out = h.out();
    assert!(
        matches!(decoded(&out[0].1), Packet::RegAck(a) if a.return_code == ReturnCode::Accepted)
    );
    h.send(5000, encode(Packet::PingReq(None)));
    assert_eq!(h.out(), [(5000, encode(Packet::PingResp).to_vec())]);
    // Another address is admitted at once.
    h.dgram_at(0, at([198, 51, 100, 7], 7000), connect("other", true));
    assert_eq!(connects_in(&h.cmds()), 1);

    // The spoofed sessions never hear from their sensors again: their
    // upstreams come up, then they are lost and forgotten, and their
    // address's count comes back down.
    let flood_src = Source::of(flood.into());
    assert_eq!(h.eps[0].dir.admission().sessions_of(flood_src), 3);
    // (The broker answers the three spoofed sessions' and "other"'s
    // connects here; those are in the queue already taken above, so the
    // CONNACKs go out as each key is answered.)
    for key in 2..=5 {
        h.up(key, Event::Connected { session_present: false });
    }
    h.out_at(0);
    for _ in 0..2 {
        h.advance(Duration::from_secs(8));
        h.send(5000, encode(Packet::PingReq(None)));
        h.settle();
        h.out_at(0);
    }
    assert_eq!(h.eps[0].dir.admission().sessions_of(flood_src), 0);
    assert_eq!(h.ep().session_count(), 1, "only the real sensor is left");
    assert_eq!(h.eps[0].dir.sessions(), 1);
    // And the address may connect again.
    h.dgram_at(0, at(flood, 6000), connect("spoof-0", true));
    assert_eq!(connects_in(&h.cmds()), 1);
}

#[test]
fn connects_from_many_addresses_are_bounded_in_all_and_in_progress() {
    let admission = Limits {
        connect: Some(Rate { per_sec: 2.0, burst: 4 }),
        connecting: Some(3),
        ..Limits::default()
    };
    let mut h = H::with(ServerOptions { admission, ..ServerOptions::default() }, 1, false);
    for i in 0..4u8 {
        h.dgram_at(0, at([10, 0, 0, i], 6000), connect(&format!("s{i}"), true));
    }
    // Three wait for the broker; the fourth is over the bound in progress.
    let cmds = h.cmds();
    assert_eq!(connects_in(&cmds), 3);
    assert_eq!(h.refused(Refusal::Connecting), 1);
    assert_eq!(h.eps[0].dir.connecting(), 3);
    // The broker accepts them: none is in progress any more.
    for (key, _) in &cmds {
        h.up(*key, Event::Connected { session_present: false });
    }
    assert_eq!(h.eps[0].dir.connecting(), 0);
    h.out_at(0);
    // The overall rate: 4 at once, used up; 2 a second after that.
    h.dgram_at(0, at([10, 0, 1, 1], 6000), connect("late", true));
    assert_eq!(h.refused(Refusal::ConnectRate), 1);
    assert!(h.cmds().is_empty());
    h.advance(Duration::from_millis(500));
    h.dgram_at(0, at([10, 0, 1, 1], 6000), connect("late", true));
    let cmds = h.cmds();
    assert_eq!(connects_in(&cmds), 1);
    assert_eq!(h.eps[0].dir.connecting(), 1);
    // A session the broker refuses is not in progress either.
    h.up(cmds[0].0, Event::Refused { code: 5 });
    assert_eq!(h.eps[0].dir.connecting(), 0);
    h.settle();
    assert_eq!(h.eps[0].dir.connecting(), 0);
}

#[test]
fn replies_to_unknown_addresses_are_rate_bounded_and_never_larger_than_the_request() {
    let admission = Limits {
        reply_per_source: Some(Rate { per_sec: 1.0, burst: 3 }),
        reply: Some(Rate { per_sec: 100.0, burst: 10 }),
        ..Limits::default()
    };
    let opts = ServerOptions {
        admission,
        unknown_disconnect_interval: Duration::ZERO,
        ..ServerOptions::default()
    };
    let mut h = H::with(opts, 1, false);
    let victim = [203, 0, 113, 5];
    let search = encode(Packet::SearchGw { radius: 1 });
    for i in 0..20 {
        h.dgram_at(0, at(victim, 6000 + i), search.clone());
    }
    let out = h.out_at(0);
    assert_eq!(out.len(), 3, "the address's burst");
    assert!(out.iter().all(|(_, d)| d.len() <= search.len()));
    // A PINGREQ of 2 octets from nobody: DISCONNECT, 2 octets, within the
    // address's budget only.
    h.dgram_at(0, at(victim, 7000), encode(Packet::PingReq(None)));
    assert!(h.out_at(0).is_empty(), "budget spent");
    assert_eq!(h.metrics.snapshot().replies_suppressed, 18);
    // Many addresses: the overall burst (10, 3 used) bounds them.
    for i in 0..12u8 {
        h.dgram_at(0, at([203, 0, 114, i], 6000), encode(Packet::PingReq(None)));
    }
    let out = h.out_at(0);
    assert_eq!(out.len(), 7);
    assert!(out.iter().all(|(_, d)| *d == encode(Packet::Disconnect(None)).to_vec()));
    // A refusing CONNACK is a reply like the others.
    let bad = encode(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 9,
        duration: 10,
        client_id: b"x",
    }));
    h.dgram_at(0, at(victim, 8000), bad.clone());
    assert!(h.out_at(0).is_empty());
    // A second later the address has one more token.
    h.advance(Duration::from_secs(1));
    h.dgram_at(0, at(victim, 8000), bad.clone());
    let out = h.out_at(0);
    assert_eq!(out.len(), 1);
    assert!(out[0].1.len() <= bad.len());
}

#[test]
fn exempt_networks_and_the_default_options_bound_nothing() {
    let tight = Rate { per_sec: 0.001, burst: 1 };
    let admission = Limits {
        exempt: vec!["127.0.0.0/8".parse().unwrap()],
        sessions_per_source: Some(1),
        connect_per_source: Some(tight),
        connect: Some(tight),
        connecting: Some(1),
        reply_per_source: Some(tight),
        reply: Some(tight),
        verify_moves: true,
    };
    let mut h = H::with(ServerOptions { admission, ..ServerOptions::default() }, 1, false);
    for i in 0..5u16 {
        h.connected(&format!("s{i}"), 5000 + i);
    }
    for i in 0..5u16 {
        h.send(6000 + i, encode(Packet::SearchGw { radius: 1 }));
    }
    assert_eq!(h.out().len(), 5);
    assert_eq!(h.metrics.snapshot().admission_refused, 0);
    assert_eq!(h.metrics.snapshot().replies_suppressed, 0);
}

#[test]
fn admission_bounds_are_shared_by_the_workers() {
    let admission = Limits { sessions_per_source: Some(2), ..Limits::default() };
    let mut h = H::with(ServerOptions { admission, ..ServerOptions::default() }, 2, false);
    let src = [192, 0, 2, 44];
    // Sessions of one address made on both workers count together.
    for i in 0..6u16 {
        h.dgram_at(usize::from(i % 2), at(src, 6000 + i), connect(&format!("w-{i}"), true));
    }
    assert_eq!(h.eps[0].session_count(), 1);
    assert_eq!(h.eps[1].session_count(), 1);
    assert_eq!(h.refused(Refusal::SourceSessions), 4);
    assert_eq!(h.eps[1].dir.admission().sessions_of(Source::of(src.into())), 2);
}

// ----- a session moving to a new address: the return-routability check -----

use crate::admission::Check;

fn checked() -> H {
    let opts = ServerOptions {
        admission: Limits { verify_moves: true, ..Limits::default() },
        ..ServerOptions::default()
    };
    H::with(opts, 1, false)
}

impl H {
    fn checks(&self, c: Check) -> u64 {
        self.metrics.address_checks[c.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `s1` connected from 5000, with "t/a" registered, asleep, and one
    /// QoS 1 message on "t/a" buffered for it.
    fn asleep_with_a_message(&mut self, topic: &str) -> UpstreamKey {
        let key = self.connected("s1", 5000);
        if topic != "pre/seven" {
            self.send(5000, register(1, topic));
            let out = self.out();
            assert!(
                matches!(decoded(&out[0].1), Packet::RegAck(a) if a.return_code == ReturnCode::Accepted)
            );
        }
        self.send(5000, encode(Packet::Disconnect(Some(60))));
        assert_eq!(self.out(), [(5000, encode(Packet::Disconnect(None)).to_vec())]);
        self.up(
            key,
            Event::Message {
                delivery: Some(DeliveryId(1)),
                packet_id: 1,
                topic: Arc::from(topic),
                payload: Bytes::from_static(b"secret"),
                qos: crate::mqtt::QoS::AtLeastOnce,
                retain: false,
                dup: false,
            },
        );
        assert_eq!(self.cmds(), [(key, Command::Ack(DeliveryId(1)))]);
        key
    }

    /// Acknowledges a PUBLISH from the gateway at `port`.
    fn puback(&mut self, port: u16, d: &[u8]) {
        let Packet::Publish(p) = decoded(d) else { panic!("{:?}", decoded(d)) };
        let ack =
            Ack { topic_id: p.topic.raw(), msg_id: p.msg_id, return_code: ReturnCode::Accepted };
        self.send(port, encode(Packet::PubAck(ack)));
    }
}

fn is_publish(d: &[u8]) -> bool {
    matches!(decoded(d), Packet::Publish(_))
}

#[test]
fn a_forged_wake_up_gets_only_a_probe_and_the_sensor_gets_its_messages_from_its_own_address() {
    let mut h = checked();
    h.asleep_with_a_message("t/a");
    // A forged PINGREQ(ClientId) "from" 7000: only a REGISTER probe,
    // within three times the octets received, goes there.
    let wake = encode(Packet::PingReq(Some(b"s1")));
    h.send(7000, wake.clone());
    let out = h.out();
    let [(7000, probe)] = &out[..] else { panic!("{out:?}") };
    let Packet::Register(r) = decoded(probe) else { panic!("{:?}", decoded(probe)) };
    assert_eq!(r.topic_name, b"t/a");
    assert!(probe.len() <= 3 * wake.len());
    let probe_id = r.msg_id;
    // A REGACK with a guessed MsgId proves nothing.
    let guess = Ack {
        topic_id: r.topic_id,
        msg_id: probe_id.wrapping_add(1),
        return_code: ReturnCode::Accepted,
    };
    h.send(7000, encode(Packet::RegAck(guess)));
    assert!(h.out().iter().all(|(_, d)| !is_publish(d)), "nothing but probes");
    // The store would keep the verified address, not the forged one.
    let ep = h.ep();
    let e = ep.by_cid.get("s1").and_then(|&i| ep.entries.get(i)).unwrap();
    assert_eq!(e.addr_bytes, crate::peer::Peer::direct(addr(5000)).to_bytes());
    h.advance(Duration::from_secs(1));
    assert!(h.out().iter().all(|(_, d)| !is_publish(d)), "retransmissions are withheld too");
    // The sensor wakes from its own address: its message goes there.
    h.send(5000, wake);
    let out = h.out();
    assert!(!out.is_empty() && out.iter().all(|(p, _)| *p == 5000), "{out:?}");
    let publish = out.iter().find(|(_, d)| is_publish(d)).expect("the buffered message");
    let Packet::Publish(p) = decoded(&publish.1) else { unreachable!() };
    assert_eq!(p.data, b"secret");
    let publish = publish.1.clone();
    h.puback(5000, &publish);
    let out = h.out();
    assert!(out.contains(&(5000, encode(Packet::PingResp).to_vec())), "{out:?}");
    assert_eq!(h.checks(Check::Failed), 1);
    assert_eq!(h.checks(Check::Verified), 0);
}

#[test]
fn a_sensor_that_really_moved_echoes_the_probe_and_gets_its_messages_there() {
    let mut h = checked();
    h.asleep_with_a_message("t/a");
    h.send(7000, encode(Packet::PingReq(Some(b"s1"))));
    let out = h.out();
    let [(7000, probe)] = &out[..] else { panic!("{out:?}") };
    let Packet::Register(r) = decoded(probe) else { panic!() };
    let echo = Ack { topic_id: r.topic_id, msg_id: r.msg_id, return_code: ReturnCode::Accepted };
    h.send(7000, encode(Packet::RegAck(echo)));
    let out = h.out();
    let [(7000, publish)] = &out[..] else { panic!("{out:?}") };
    assert!(is_publish(publish));
    let publish = publish.clone();
    h.puback(7000, &publish);
    assert_eq!(h.out(), [(7000, encode(Packet::PingResp).to_vec())]);
    assert_eq!(h.checks(Check::Verified), 1);
    // Verified: the next wake-up there is not checked again.
    h.send(7000, encode(Packet::PingReq(Some(b"s1"))));
    assert_eq!(h.out(), [(7000, encode(Packet::PingResp).to_vec())]);
}

#[test]
fn a_probe_longer_than_the_budget_waits_for_more_from_the_new_address() {
    let mut h = checked();
    let long = "sensors/a-rather-long-topic-name/temperature";
    h.asleep_with_a_message(long);
    let wake = encode(Packet::PingReq(Some(b"s1")));
    let register_len = 6 + long.len();
    let mut wakes = 0;
    let probe = loop {
        h.send(7000, wake.clone());
        wakes += 1;
        let out = h.out();
        assert!(out.iter().all(|(_, d)| !is_publish(d)));
        if let Some((_, d)) = out.iter().find(|(_, d)| matches!(decoded(d), Packet::Register(_))) {
            break d.clone();
        }
        assert!(wakes < 20, "no probe after {wakes} wake-ups");
    };
    assert_eq!(probe.len(), register_len);
    assert!(probe.len() <= 3 * wakes * wake.len(), "amplification within 3");
    assert!(probe.len() > 3 * (wakes - 1) * wake.len(), "sent as soon as the budget allowed");
}

#[test]
fn a_session_without_topic_names_cannot_be_checked_and_is_counted() {
    let mut h = checked();
    h.asleep_with_a_message("pre/seven");
    h.send(7000, encode(Packet::PingReq(Some(b"s1"))));
    let out = h.out();
    let [(7000, publish)] = &out[..] else { panic!("{out:?}") };
    assert!(is_publish(publish));
    assert_eq!(h.checks(Check::Unverifiable), 1);
}

#[test]
fn a_takeover_by_connect_is_checked_and_a_clean_start_is_not() {
    let mut h = checked();
    // A persistent session at 5000 with "t/a" registered.
    h.send(5000, connect("p1", false));
    let cmds = h.cmds();
    let [(key, Command::Connect(_))] = &cmds[..] else { panic!("{cmds:?}") };
    let key = *key;
    h.up(key, Event::Connected { session_present: false });
    assert_eq!(h.out(), [(5000, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);
    h.send(5000, register(1, "t/a"));
    let _ = h.out();
    // CONNECT(CleanSession false) from 7000: CONNACK goes there (a reply),
    // a message from the broker waits for the probe's echo.
    h.send(7000, connect("p1", false));
    let out = h.out();
    assert!(out.iter().all(|(p, d)| *p == 7000 && !is_publish(d)), "{out:?}");
    for (key, cmd) in h.cmds() {
        if matches!(cmd, Command::Connect(_)) {
            h.up(key, Event::Connected { session_present: true });
        }
    }
    let mut out = h.out();
    let message = Event::Message {
        delivery: Some(DeliveryId(1)),
        packet_id: 1,
        topic: Arc::from("t/a"),
        payload: Bytes::from_static(b"secret"),
        qos: crate::mqtt::QoS::AtLeastOnce,
        retain: false,
        dup: false,
    };
    let ep = h.ep();
    let key =
        ep.by_cid.get("p1").and_then(|&i| ep.entries.get(i)).and_then(|e| e.upstream).unwrap();
    h.up(key, message.clone());
    out.extend(h.out());
    assert!(out.iter().all(|(_, d)| !is_publish(d)), "{out:?}");
    let probe = out.iter().find_map(|(_, d)| match decoded(d) {
        Packet::Register(r) => {
            Some(Ack { topic_id: r.topic_id, msg_id: r.msg_id, return_code: ReturnCode::Accepted })
        }
        _ => None,
    });
    h.send(7000, encode(Packet::RegAck(probe.expect("a probe"))));
    let out = h.out();
    assert!(matches!(&out[..], [(7000, d)] if is_publish(d)), "{out:?}");
    assert_eq!(h.checks(Check::Verified), 1);
    // A clean start from 7100 takes nothing along and is not checked.
    h.send(7100, connect("p1", true));
    h.settle();
    let out = h.out();
    assert!(
        out.contains(&(7100, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())),
        "{out:?}"
    );
    let ep = h.ep();
    assert!(!ep.is_checking(*ep.by_cid.get("p1").unwrap()));
}

#[test]
fn moves_on_exempt_networks_and_without_the_setting_are_not_checked() {
    for admission in [
        Limits {
            verify_moves: true,
            exempt: vec!["127.0.0.0/8".parse().unwrap()],
            ..Limits::default()
        },
        Limits::default(),
    ] {
        let opts = ServerOptions { admission, ..ServerOptions::default() };
        let mut h = H::with(opts, 1, false);
        h.asleep_with_a_message("t/a");
        h.send(7000, encode(Packet::PingReq(Some(b"s1"))));
        let out = h.out();
        assert!(matches!(&out[..], [(7000, d)] if is_publish(d)), "{out:?}");
        assert!(Check::ALL.iter().all(|c| h.checks(*c) == 0));
    }
}

// ----- the topic ACL -----

/// Publishing allowed under `sensors/<ClientId>/` and to `pre/seven`.
fn acl_config() -> SessionConfig {
    use crate::acl::{Acl, Grants, Pattern};
    let p = |t: &str| Pattern::parse(t).unwrap();
    let default = Grants { publish: vec![p("sensors/%c/#"), p("pre/seven")], subscribe: vec![] };
    let acl = Acl::new(default, vec![]);
    SessionConfig { acl: Some(Arc::new(acl)), ..config() }
}

fn acl_refused(h: &H, action: crate::acl::Action) -> u64 {
    h.metrics.acl_refused[action.index()].load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn qos_minus_one_to_a_topic_the_acl_refuses_is_dropped_and_counted() {
    let opts = ServerOptions { qos_minus_one: Some(Vec::new()), ..ServerOptions::default() };
    let mut h = H::with_cfg(opts, 1, false, acl_config());
    h.send(5000, publish(QoS::NoSession, TopicId::Short(*b"ab"), 0, b"x"));
    assert!(h.cmds().is_empty() && h.out().is_empty(), "dropped, nothing answered");
    assert_eq!(acl_refused(&h, crate::acl::Action::Publish), 1);
    assert_eq!(h.metrics.snapshot().qos_minus_one_refused, 1);
    h.send(5000, publish(QoS::NoSession, TopicId::Predefined(7), 0, b"x"));
    let cmds = h.cmds();
    assert!(
        matches!(&cmds[..], [(OWN_KEY, Command::Publish { topic, .. })] if &**topic == "pre/seven")
    );
    assert_eq!(h.metrics.snapshot().acl_refused, 1);
}

#[test]
fn a_reloaded_acl_applies_to_connected_sensors() {
    let live = Arc::new(crate::reload::Live::new(crate::reload::Current {
        session: Arc::new(acl_config()),
        auth: Arc::new(AuthTable::open()),
        admission: crate::admission::Limits::default(),
    }));
    let opts = ServerOptions { live: Some(live.clone()), ..ServerOptions::default() };
    let mut h = H::with_cfg(opts, 1, false, acl_config());
    let key = h.connected("s1", 5000);
    h.send(5000, publish(QoS::AtLeastOnce, TopicId::Short(*b"ab"), 3, b"x"));
    let refused = Packet::PubAck(Ack {
        topic_id: 0x6162,
        msg_id: 3,
        return_code: ReturnCode::InvalidTopicId,
    });
    assert_eq!(h.out(), [(5000, encode(refused).to_vec())]);
    assert!(h.cmds().is_empty());
    assert_eq!(acl_refused(&h, crate::acl::Action::Publish), 1);
    // SIGHUP: the ACL is gone; the connected sensor's next publish goes on.
    live.replace(crate::reload::Current {
        session: Arc::new(config()),
        auth: Arc::new(AuthTable::open()),
        admission: crate::admission::Limits::default(),
    });
    h.send(5000, publish(QoS::AtLeastOnce, TopicId::Short(*b"ab"), 4, b"x"));
    let cmds = h.cmds();
    assert!(
        matches!(&cmds[..], [(k, Command::Publish { topic, .. })] if *k == key && &**topic == "ab"),
        "{cmds:?}"
    );
}

#[test]
fn while_the_store_fails_persistent_sessions_wait_within_a_bound_and_transient_ones_go_on() {
    let mut h = H::with(ServerOptions::default(), 1, true);
    h.send(5000, connect("p1", false));
    commit(&mut h);
    let cmds = h.cmds();
    let [(key, Command::Connect(_))] = &cmds[..] else { panic!("{cmds:?}") };
    let key = *key;
    h.up(key, Event::Connected { session_present: false });
    commit(&mut h);
    assert_eq!(h.out(), [(5000, encode(Packet::ConnAck(ReturnCode::Accepted)).to_vec())]);

    h.ep().dir.set_store_failing(true);
    // A new persistent session would wait for the store: refused.
    h.send(5001, connect("p2", false));
    assert_eq!(h.out(), [(5001, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())]);
    assert!(h.cmds().is_empty() && h.ep().poll_store().is_none());
    assert_eq!(h.metrics.store_refused_connects.load(std::sync::atomic::Ordering::Relaxed), 1);
    // A transient one is served as usual.
    let t1 = h.connected("t1", 5002);

    // p1's REGISTER is stored: its REGACK waits, and so does all that
    // follows, up to the bound.
    h.send(5000, register(1, "a/b"));
    let w = h.ep().poll_store().expect("the registration is written");
    for i in 0..100u16 {
        h.send(5000, publish(QoS::AtLeastOnce, TopicId::Normal(1), 2 + i, b"v"));
    }
    assert!(h.out().is_empty() && h.cmds().is_empty(), "nothing of p1 goes out");
    let refused = h.metrics.store_refused_datagrams.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused, 100 - (STORE_HELD_MAX as u64 - 1), "one REGACK and the rest PUBLISHes");

    // Meanwhile t1 publishes and is acknowledged.
    h.send(5002, publish(QoS::AtLeastOnce, TopicId::Predefined(7), 9, b"t"));
    let cmds = h.cmds();
    let [(k, Command::Publish { id, .. })] = &cmds[..] else { panic!("{cmds:?}") };
    assert_eq!(*k, t1);
    h.up(t1, Event::PublishAcked { id: *id });
    let out = h.out();
    assert!(matches!(decoded(&out[0].1), Packet::PubAck(a) if a.msg_id == 9), "{out:?}");

    // The store writes again: what waited goes out, in order.
    h.ep().dir.set_store_failing(false);
    let now = h.now;
    h.ep().handle_committed(now, w.ticket);
    let out = h.out();
    assert!(matches!(decoded(&out[0].1), Packet::RegAck(a) if a.msg_id == 1), "{out:?}");
    let cmds = h.cmds();
    assert_eq!(cmds.len(), STORE_HELD_MAX - 1);
    assert!(cmds.iter().all(|(k, c)| *k == key && matches!(c, Command::Publish { .. })));
    // And p1's datagrams are taken again.
    h.send(5000, publish(QoS::AtLeastOnce, TopicId::Normal(1), 500, b"v"));
    assert_eq!(h.cmds().len(), 1);
    h.send(5001, connect("p2", false));
    assert!(h.ep().poll_store().is_some(), "a persistent CONNECT is admitted again");
}

#[test]
fn a_restored_session_counts_against_its_address() {
    let admission = Limits { sessions_per_source: Some(1), ..Limits::default() };
    let mut h = H::with(ServerOptions { admission, ..ServerOptions::default() }, 1, false);
    let cfg = h.ep().cfg.clone();
    let now = h.now;
    let mut session = Session::new(cfg, "kept", now);
    let c = Connect {
        will: false,
        clean_session: false,
        protocol_id: 1,
        duration: 60,
        client_id: b"kept",
    };
    session.handle_connect(&c, now);
    let peer = crate::peer::Peer::direct(addr(5000));
    h.ep().restore(session, Some(peer), None, now);
    let src = Source::of(addr(5000).ip());
    assert_eq!(h.ep().dir.admission().sessions_of(src), 1);
    // Its address holds its one session: another ClientId from there is
    // refused.
    h.send(5000, connect("other", true));
    assert_eq!(h.out(), [(5000, encode(Packet::ConnAck(ReturnCode::Congestion)).to_vec())]);
    assert_eq!(h.refused(Refusal::SourceSessions), 1);
}

#[test]
fn addresses_told_disconnect_are_forgotten_once_they_may_be_told_again() {
    let mut h = H::new();
    for port in 0..100u16 {
        h.send(9000 + port, encode(Packet::PingReq(None)));
    }
    assert_eq!(h.out().len(), 100);
    assert_eq!(h.ep().unknown_sent.len(), 100);
    let interval = h.ep().opts.unknown_disconnect_interval;
    h.advance(interval + Duration::from_secs(2));
    assert_eq!(h.ep().unknown_sent.len(), 0);
}

#[test]
fn late_qos2_copies_are_counted_in_the_metrics() {
    let mut h = H::new();
    let key = h.connected("s1", 5000);
    let first = publish(QoS::ExactlyOnce, TopicId::Short(*b"q2"), 9, b"late");
    h.send(5000, first);
    let cmds = h.cmds();
    let [(_, Command::Publish { id, .. })] = &cmds[..] else { panic!("{cmds:?}") };
    let id = *id;
    h.up(key, Event::PublishAcked { id });
    h.send(5000, encode(Packet::PubRel(9)));
    h.cmds();
    h.up(key, Event::PublishCompleted { id });
    h.out();
    // A copy with DUP set, held back by the network, after PUBCOMP.
    let copy = Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicId::Short(*b"q2"),
        msg_id: 9,
        data: b"late",
    });
    h.send(5000, encode(copy));
    assert_eq!(h.out(), [(5000, encode(Packet::PubRec(9)).to_vec())]);
    assert!(h.cmds().is_empty(), "published again");
    h.ep().flush_metrics();
    let page = h.metrics.prometheus();
    assert!(page.contains("mqttsn_qos2_late_duplicates_total 1\n"), "{page}");
}
