//! Connection flows end to end (spec 6.3, 6.4, 6.6): CONNECT/CONNACK, the
//! will handshake, will updates, identifiers, duplicate CONNECT, takeover.
//! Raw MQTT-SN over real UDP on one side, a real mosquitto on the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mqttsn_codec::{Connect, Packet, QoS, ReturnCode, TopicFilter, TopicId, WillTopic};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

const QUIET: Duration = Duration::from_millis(400);

fn connect(client_id: &[u8], will: bool, clean: bool, duration: u16) -> Packet<'_> {
    Packet::Connect(Connect { will, clean_session: clean, protocol_id: 1, duration, client_id })
}

/// CONNECT with a will, through the handshake, until CONNACK.
fn connect_with_will(s: &mut Sensor, id: &str, duration: u16, topic: &str, msg: &[u8]) {
    s.send(connect(id.as_bytes(), true, true, duration));
    s.expect(Packet::WillTopicReq);
    s.send(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.as_bytes(),
    })));
    s.expect(Packet::WillMsgReq);
    s.send(Packet::WillMsg(msg));
    s.expect(Packet::ConnAck(ReturnCode::Accepted));
}

#[test]
fn clean_session_true_and_false() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("persist");
    let id = unique("sensor");

    // A persistent session: subscribe, disconnect, a message arrives while
    // the sensor is away, reconnect with CleanSession false: it is there.
    let mut s = Sensor::new(gw.addr());
    s.connect(&id, false, 60);
    let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"while away", 1, false);
    s.connect(&id, false, 60);
    let m = s.next_publish();
    assert_eq!(m.data, b"while away");
    assert_eq!(m.qos, QoS::AtLeastOnce);

    // CleanSession true: the subscription is gone.
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    s.connect(&id, true, 60);
    publisher.publish(&topic, b"after clean", 1, false);
    s.expect_silence(QUIET);
}

#[test]
fn protocol_id_other_than_one_is_not_supported() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 2,
        duration: 60,
        client_id: b"p2",
    }));
    s.expect(Packet::ConnAck(ReturnCode::NotSupported));
}

#[test]
fn bad_client_ids_are_refused() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    let long = [b'x'; 65];
    for id in [&b""[..], &[0xff, 0xfe][..], b"nul\0id", &long[..]] {
        s.send(connect(id, false, true, 60));
        s.expect(Packet::ConnAck(ReturnCode::NotSupported));
    }
    // 64 octets, the documented bound, are fine.
    let ok = "y".repeat(64);
    s.connect(&ok, true, 60);
    assert_eq!(gw.metrics().connects_refused, 4);
}

#[test]
fn will_fires_when_the_sensor_is_lost_not_after_disconnect() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let will_topic = unique("will");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{will_topic}/#"), 1);

    // Clean DISCONNECT: no will.
    let mut s = Sensor::new(gw.addr());
    connect_with_will(&mut s, &unique("a"), 60, &format!("{will_topic}/a"), b"a gone");
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    assert!(watcher.recv_within(QUIET).is_none(), "no will after a clean DISCONNECT");

    // Silent past keepalive (1 s + 50%): the will is published.
    let mut s = Sensor::new(gw.addr());
    connect_with_will(&mut s, &unique("b"), 1, &format!("{will_topic}/b"), b"b lost");
    let m = watcher.recv();
    assert_eq!((m.topic, m.payload), (format!("{will_topic}/b"), b"b lost".to_vec()));
    assert_eq!(gw.metrics().sensors_lost, 1);
}

#[test]
fn empty_willtopic_means_no_will() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.send(connect(unique("e").as_bytes(), true, true, 60));
    s.expect(Packet::WillTopicReq);
    s.send(Packet::WillTopic(None));
    s.expect(Packet::ConnAck(ReturnCode::Accepted));
    s.send(Packet::PingReq(None));
    s.expect(Packet::PingResp);
}

#[test]
fn publish_register_or_early_willmsg_in_the_handshake_get_disconnect() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let publish = [0x08u8, 0x0c, 0x00, 0x00, 0x01, 0x00, 0x00, b'x'];
    let register = [0x07u8, 0x0a, 0x00, 0x00, 0x00, 0x01, b'a'];
    let willmsg = [0x03u8, 0x09, b'm'];
    for bad in [&publish[..], &register[..], &willmsg[..]] {
        let mut s = Sensor::new(gw.addr());
        s.send(connect(unique("h").as_bytes(), true, true, 60));
        s.expect(Packet::WillTopicReq);
        s.send_raw(bad);
        s.expect(Packet::Disconnect(None));
        // The session is gone: anything else gets the unsolicited DISCONNECT.
        s.send(Packet::PingReq(None));
        s.expect(Packet::Disconnect(None));
    }
}

#[test]
fn will_updates_apply_upstream_without_firing_or_losing_anything() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("wu");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{base}/will/#"), 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));

    let mut s = Sensor::new(gw.addr());
    connect_with_will(&mut s, &unique("s"), 2, &format!("{base}/will/old"), b"old");
    let data = format!("{base}/data");
    s.subscribe(TopicFilter::Name(data.as_bytes()), QoS::AtLeastOnce, 1);

    // Update the topic: the old connection is closed without firing.
    let new_topic = format!("{base}/will/new");
    s.send(Packet::WillTopicUpd(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: new_topic.as_bytes(),
    })));
    // A message published during the swap is not lost.
    publisher.publish(&data, b"during swap", 1, false);
    s.expect_where("WILLTOPICRESP", |p| *p == Packet::WillTopicResp(ReturnCode::Accepted));
    s.send(Packet::WillMsgUpd(b"new message"));
    s.expect_where("WILLMSGRESP", |p| *p == Packet::WillMsgResp(ReturnCode::Accepted));
    assert!(watcher.recv_within(QUIET).is_none(), "a will fired during the swap");
    let m = s.next_publish();
    assert_eq!(m.data, b"during swap");
    s.send(Packet::PubAck(mqttsn_codec::Ack {
        topic_id: m.topic.raw(),
        msg_id: m.msg_id,
        return_code: ReturnCode::Accepted,
    }));

    // The sensor goes silent: the updated will fires.
    let m = watcher.recv();
    assert_eq!((m.topic, m.payload), (new_topic, b"new message".to_vec()));
}

#[test]
fn empty_willtopicupd_deletes_the_will() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("wd");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{base}/#"), 1);
    let mut s = Sensor::new(gw.addr());
    connect_with_will(&mut s, &unique("s"), 1, &format!("{base}/will"), b"x");
    s.send(Packet::WillTopicUpd(None));
    s.expect(Packet::WillTopicResp(ReturnCode::Accepted));
    // Lost after 1.5 s, but there is no will any more.
    assert!(watcher.recv_within(Duration::from_millis(2500)).is_none());
}

#[test]
fn duplicate_connect_and_disconnect_before_connect() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    // DISCONNECT before any CONNECT: answered with DISCONNECT.
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    let id = unique("dup");
    s.connect(&id, false, 60);
    let topic = unique("t");
    let tid = s.register(&topic, 1);
    // The same CONNECT again (CONNACK lost): CONNACK again, session kept.
    s.connect(&id, false, 60);
    s.publish(TopicId::Normal(tid), QoS::AtLeastOnce, 2, b"still registered", false);
    s.expect(Packet::PubAck(mqttsn_codec::Ack {
        topic_id: tid,
        msg_id: 2,
        return_code: ReturnCode::Accepted,
    }));
}

#[test]
fn connect_from_a_new_address_takes_the_session_over() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let id = unique("roam");
    let topic = unique("t");
    let mut old = Sensor::new(gw.addr());
    old.connect(&id, false, 60);
    old.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtMostOnce, 1);

    // The same sensor after a NAT rebinding: a new source port.
    let mut new = Sensor::new(gw.addr());
    new.connect(&id, false, 60);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"to the new address", 0, false);
    assert_eq!(new.next_publish().data, b"to the new address");
    old.expect_silence(QUIET);
    // The old address no longer has a session.
    old.send(Packet::PingReq(None));
    old.expect(Packet::Disconnect(None));
    assert_eq!(gw.metrics().takeovers, 1);
}

#[test]
fn two_sensors_never_see_each_others_messages() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let (ta, tb) = (unique("a"), unique("b"));
    let mut a = Sensor::new(gw.addr());
    let mut b = Sensor::new(gw.addr());
    a.connect(&unique("sa"), true, 60);
    b.connect(&unique("sb"), true, 60);
    a.subscribe(TopicFilter::Name(ta.as_bytes()), QoS::AtMostOnce, 1);
    b.subscribe(TopicFilter::Name(tb.as_bytes()), QoS::AtMostOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&ta, b"for a", 0, false);
    publisher.publish(&tb, b"for b", 0, false);
    assert_eq!(a.next_publish().data, b"for a");
    assert_eq!(b.next_publish().data, b"for b");
    a.expect_silence(QUIET);
    b.expect_silence(QUIET);
}
