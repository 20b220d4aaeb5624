//! The session store's disk fills and frees again while the gateway runs
//! (`MQTTSN_STORE_FULL`: redb's writes fail with ENOSPC while a file
//! exists). A persistent sensor's QoS 1 PUBLISH waits, unacknowledged,
//! while the store cannot write and is acknowledged and delivered once it
//! can, without a restart; a transient sensor is served all along; a new
//! persistent session is refused with congestion meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mqttsn_codec::{Packet, Publish, QoS, Register, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::http;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

fn publish(topic: TopicId, msg_id: u16, data: &[u8]) -> Packet<'_> {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        msg_id,
        data,
    })
}

fn is_puback(p: &Packet<'_>, msg_id: u16) -> bool {
    matches!(p, Packet::PubAck(a) if a.msg_id == msg_id && a.return_code == ReturnCode::Accepted)
}

/// One sample of the gateway's metrics.
fn metric(gw: &GatewayProcess, name: &str) -> u64 {
    let body = http::get(gw.metrics.expect("metrics address"), "/metrics").body;
    let line = body
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
}

#[test]
fn a_full_store_disk_holds_persistent_sessions_until_it_frees_without_a_restart() {
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(unique("store-full"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("sessions.redb");
    let full = dir.join("disk-full");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe("fp", 1);
    sub.subscribe("full/t", 1);
    let url = broker.url();
    let gw = GatewayProcess::spawn_with_env(
        &["--listen", "127.0.0.1:0", "--broker", &url, "--store", store.to_str().unwrap()],
        &[("MQTTSN_STORE_FULL", full.to_str().unwrap())],
    );

    let mut p = Sensor::new(gw.addr);
    p.connect("full-p", false, 60);
    let mut t = Sensor::new(gw.addr);
    t.connect("full-t", true, 60);
    let tid = t.register("full/t", 1);

    // The disk fills. The persistent sensor registers a topic (a write
    // for the store) and publishes QoS 1 behind it.
    std::fs::write(&full, b"").unwrap();
    p.send(Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"full/p" }));
    gw.wait_for_line("the session store cannot write");
    p.send(publish(TopicId::Short(*b"fp"), 2, b"waited"));
    p.expect_silence(Duration::from_millis(800));
    assert!(sub.recv_within(Duration::from_millis(100)).is_none(), "nothing reached the broker");
    assert_eq!(metric(&gw, "mqttsn_store_failing"), 1);
    assert!(metric(&gw, "mqttsn_store_writes_waiting") >= 1);
    let status = http::get(gw.metrics.unwrap(), "/api/v1/status").json();
    assert_eq!(status["store"]["failing"], true, "{status}");

    // The transient sensor goes on as usual.
    t.send(publish(TopicId::Normal(tid), 7, b"transient"));
    t.expect_where("PUBACK", |p| is_puback(p, 7));
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("full/t", &b"transient"[..]));
    // A new persistent session is told to come back later.
    let mut q = Sensor::new(gw.addr);
    q.send(Packet::Connect(mqttsn_codec::Connect {
        will: false,
        clean_session: false,
        protocol_id: 1,
        duration: 60,
        client_id: b"full-q",
    }));
    q.expect(Packet::ConnAck(ReturnCode::Congestion));

    // Space comes back: no restart, the REGACK and the PUBACK arrive and
    // the message reaches the broker.
    std::fs::remove_file(&full).unwrap();
    gw.wait_for_line("session store writing again");
    p.expect_where("REGACK", |p| matches!(p, Packet::RegAck(a) if a.msg_id == 1));
    p.expect_where("PUBACK", |p| is_puback(p, 2));
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("fp", &b"waited"[..]));
    assert_eq!(metric(&gw, "mqttsn_store_failing"), 0);
    assert_eq!(metric(&gw, "mqttsn_store_writes_waiting"), 0);
    assert!(metric(&gw, "mqttsn_store_reopens_total") >= 1);
    assert_eq!(metric(&gw, "mqttsn_store_refused_total{what=\"connect\"}"), 1);
    // And the persistent sensor is served as before.
    p.send(publish(TopicId::Short(*b"fp"), 3, b"after"));
    p.expect_where("PUBACK", |p| is_puback(p, 3));
    q.connect("full-q", false, 60);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
