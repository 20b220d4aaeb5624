//! The first end-to-end flow: CONNECT, REGISTER, PUBLISH QoS 1, seen on a
//! real mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{Ack, Packet, Publish, QoS, Register, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

#[test]
fn connect_register_publish_qos1() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("smoke");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    assert_eq!(sub.subscribe(&format!("{topic}/#"), 1), 1);

    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("sensor"), true, 60);
    let name = format!("{topic}/temp");
    s.send(Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: name.as_bytes() }));
    let got = s.recv();
    let Packet::RegAck(a) = Packet::decode(&got).unwrap() else { panic!() };
    assert_eq!(a.return_code, ReturnCode::Accepted);
    s.send(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicId::Normal(a.topic_id),
        msg_id: 2,
        data: b"21.5",
    }));
    s.expect(Packet::PubAck(Ack {
        topic_id: a.topic_id,
        msg_id: 2,
        return_code: ReturnCode::Accepted,
    }));
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), &m.payload[..]), (name.as_str(), &b"21.5"[..]));
}
