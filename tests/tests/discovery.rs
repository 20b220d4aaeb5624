//! Gateway discovery (SEARCHGW, GWINFO, ADVERTISE), QoS -1 without a
//! connection, and sensors behind a forwarder, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use mqttsn_codec::{
    Connect, Forwarded, Frame, GwInfo, Packet, Publish, QoS, ReturnCode, TopicFilter, TopicId,
};
use mqttsn_gateway::server::ServerOptions;
use mqttsn_gateway::session::topics::Predefined;
use mqttsn_gateway::session::SessionConfig;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

#[test]
fn searchgw_is_answered_with_gwinfo() {
    let broker = Mosquitto::start();
    let opts = ServerOptions { gateway_id: 42, ..ServerOptions::default() };
    let gw = Gateway::start_full(broker.port(), fast_config(), opts);
    let mut s = Sensor::new(gw.addr());
    s.send(Packet::SearchGw { radius: 1 });
    s.expect(Packet::GwInfo(GwInfo { gw_id: 42, gw_addr: &[] }));
}

#[test]
fn advertise_is_sent_periodically_and_paused_while_the_broker_is_down() {
    let mut broker = Mosquitto::start();
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let opts = ServerOptions {
        gateway_id: 7,
        advertise: Some((listener.local_addr().unwrap(), Duration::from_secs(1))),
        ..ServerOptions::default()
    };
    let _gw = Gateway::start_full(broker.port(), fast_config(), opts);
    let mut buf = [0u8; 64];
    let (n, _) = listener.recv_from(&mut buf).expect("ADVERTISE");
    assert_eq!(
        Packet::decode(&buf[..n]).unwrap(),
        Packet::Advertise(mqttsn_codec::Advertise { gw_id: 7, duration: 1 })
    );
    broker.kill();
    // Drain what was on its way, then silence while the broker is down.
    std::thread::sleep(Duration::from_millis(1500));
    listener.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    while listener.recv_from(&mut buf).is_ok() {}
    listener.set_read_timeout(Some(Duration::from_millis(2500))).unwrap();
    assert!(listener.recv_from(&mut buf).is_err(), "ADVERTISE while the broker is down");
    broker.restart();
    listener.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(listener.recv_from(&mut buf).is_ok(), "ADVERTISE resumes");
}

fn qos_minus_one_gateway(broker: &Mosquitto, base: &str, allow: Option<Vec<&str>>) -> Gateway {
    let mut pre = Predefined::new();
    pre.insert(9, &format!("{base}/pre"));
    let cfg = SessionConfig { predefined: Arc::new(pre), ..fast_config() };
    let opts = ServerOptions {
        qos_minus_one: allow.map(|l| l.iter().map(|n| n.parse().unwrap()).collect()),
        ..ServerOptions::default()
    };
    Gateway::start_full(broker.port(), cfg, opts)
}

fn minus_one(topic: TopicId, data: &[u8]) -> Packet<'_> {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::NoSession,
        retain: false,
        topic,
        msg_id: 0,
        data,
    })
}

#[test]
fn qos_minus_one_to_predefined_and_short_topics() {
    let broker = Mosquitto::start();
    let base = unique("m1");
    let gw = qos_minus_one_gateway(&broker, &base, Some(vec!["127.0.0.0/8"]));
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/pre"), 1);
    sub.subscribe("m9", 1);
    let mut s = Sensor::new(gw.addr());
    // The gateway's own connection may still be coming up: retry briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        s.send(minus_one(TopicId::Predefined(9), b"no connection"));
        if let Some(m) = sub.recv_within(Duration::from_millis(200)) {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "QoS -1 never arrived");
    };
    assert_eq!((first.payload.as_slice(), first.qos), (&b"no connection"[..], 0));
    s.send(minus_one(TopicId::Short(*b"m9"), b"short"));
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("m9", &b"short"[..]));
    // Nothing is answered, and no DISCONNECT either.
    s.expect_silence(Duration::from_millis(200));
    // A normal topic id cannot be used without a connection.
    s.send(minus_one(TopicId::Normal(1), b"x"));
    s.expect_silence(Duration::from_millis(200));
    assert!(gw.metrics().qos_minus_one_refused >= 1);
}

#[test]
fn qos_minus_one_is_refused_when_off_or_not_allowed() {
    let broker = Mosquitto::start();
    let base = unique("m1off");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/pre"), 1);
    for allow in [None, Some(vec!["10.0.0.0/8"])] {
        let gw = qos_minus_one_gateway(&broker, &base, allow);
        let s = Sensor::new(gw.addr());
        for _ in 0..5 {
            s.send(minus_one(TopicId::Predefined(9), b"refused"));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(sub.recv_within(Duration::from_millis(300)).is_none());
        assert_eq!(gw.metrics().qos_minus_one_refused, 5);
    }
}

/// A forwarder: one UDP socket carrying several sensors, each known by its
/// Wireless Node Id.
struct Forwarder {
    sock: UdpSocket,
    gw: std::net::SocketAddr,
}

impl Forwarder {
    fn send(&self, node: &[u8], p: Packet<'_>) {
        let mut buf = [0u8; 600];
        let frame = Frame { forwarder: Some(Forwarded { radius: 0, node_id: node }), packet: p };
        let n = frame.encode(&mut buf).unwrap();
        self.sock.send_to(&buf[..n], self.gw).unwrap();
    }

    /// The next datagram: the node id it is for, and its inner packet's
    /// octets.
    fn recv(&self) -> (Vec<u8>, Vec<u8>) {
        let mut buf = [0u8; 2048];
        let (n, _) = self.sock.recv_from(&mut buf).expect("a datagram for the forwarder");
        let frame = Frame::decode(&buf[..n]).unwrap();
        let f = frame.forwarder.expect("replies are encapsulated");
        let mut inner = [0u8; 2048];
        let m = frame.packet.encode(&mut inner).unwrap();
        (f.node_id.to_vec(), inner[..m].to_vec())
    }
}

#[test]
fn sensors_behind_a_forwarder_are_separate_sessions_and_get_encapsulated_replies() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let fwd = Forwarder { sock, gw: gw.addr() };
    let (a, b) = (b"\x00\x01".as_slice(), b"node-b-long-id".as_slice());
    for (node, id) in [(a, unique("fa")), (b, unique("fb"))] {
        fwd.send(
            node,
            Packet::Connect(Connect {
                will: false,
                clean_session: true,
                protocol_id: 1,
                duration: 60,
                client_id: id.as_bytes(),
            }),
        );
        let (to, inner) = fwd.recv();
        assert_eq!(to, node);
        assert_eq!(Packet::decode(&inner).unwrap(), Packet::ConnAck(ReturnCode::Accepted));
    }
    let topic = unique("fwd");
    fwd.send(
        b,
        Packet::Subscribe(mqttsn_codec::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 1,
            topic: TopicFilter::Name(topic.as_bytes()),
        }),
    );
    let (to, inner) = fwd.recv();
    assert_eq!(to, b);
    assert!(matches!(Packet::decode(&inner).unwrap(), Packet::SubAck(_)));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"to node b", 0, false);
    let (to, inner) = fwd.recv();
    assert_eq!(to, b, "only node b subscribed");
    let Packet::Publish(p) = Packet::decode(&inner).unwrap() else { panic!() };
    assert_eq!(p.data, b"to node b");
    // Node a is alive and separate.
    fwd.send(a, Packet::PingReq(None));
    let (to, inner) = fwd.recv();
    assert_eq!((to.as_slice(), Packet::decode(&inner).unwrap()), (a, Packet::PingResp));
}
