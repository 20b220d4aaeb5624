//! Topics and messages end to end (spec 6.5, 6.7-6.11): REGISTER, PUBLISH at
//! QoS 0/1/2 both ways with normal, predefined and short topic ids,
//! SUBSCRIBE/UNSUBSCRIBE, wildcards with gateway REGISTER, retained
//! messages, retransmission and the queue toward the sensor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicFilter, TopicId, Unsubscribe};
use mqttsn_gateway::session::topics::Predefined;
use mqttsn_gateway::session::SessionConfig;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::{Received, Sensor};

const QUIET: Duration = Duration::from_millis(400);

/// A gateway whose predefined id 7 is `{base}/pre`.
fn gateway_with_predefined(broker: &Mosquitto, base: &str) -> Gateway {
    let mut pre = Predefined::new();
    assert!(pre.insert(7, &format!("{base}/pre")));
    Gateway::start_with(broker.port(), SessionConfig { predefined: Arc::new(pre), ..fast_config() })
}

fn puback(s: &Sensor, m: &Received) {
    s.send(Packet::PubAck(Ack {
        topic_id: m.topic.raw(),
        msg_id: m.msg_id,
        return_code: ReturnCode::Accepted,
    }));
}

#[test]
fn register_gives_one_id_per_name_and_refuses_wildcards() {
    let broker = Mosquitto::start();
    let base = unique("reg");
    let gw = gateway_with_predefined(&broker, &base);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let a = s.register(&format!("{base}/a"), 1);
    let b = s.register(&format!("{base}/b"), 2);
    assert_ne!(a, b);
    for id in [a, b] {
        assert!(id != 0 && id != 0xffff && id != 7, "{id}");
    }
    assert_eq!(s.register(&format!("{base}/a"), 3), a);
    // A predefined name registered by name gets its predefined id.
    assert_eq!(s.register(&format!("{base}/pre"), 4), 7);
    // Wildcards and invalid UTF-8 are refused.
    for (msg_id, name) in [(5u16, format!("{base}/+").into_bytes()), (6, vec![0xc3, 0x28])] {
        s.send(Packet::Register(mqttsn_codec::Register { topic_id: 0, msg_id, topic_name: &name }));
        s.expect(Packet::RegAck(Ack {
            topic_id: 0,
            msg_id,
            return_code: ReturnCode::NotSupported,
        }));
    }
}

#[test]
fn register_of_a_control_character_is_refused_and_the_sensor_goes_on() {
    let broker = Mosquitto::start();
    let base = unique("ctl");
    let gw = Gateway::start(broker.port());
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/#"), 1);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let bad = format!("{base}/a\u{1}b");
    s.send(Packet::Register(mqttsn_codec::Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: bad.as_bytes(),
    }));
    s.expect(Packet::RegAck(Ack {
        topic_id: 0,
        msg_id: 1,
        return_code: ReturnCode::InvalidTopicId,
    }));
    // The upstream connection is untouched: a good topic, beyond ASCII too,
    // registers and its messages arrive.
    let good = format!("{base}/Zürich/温度");
    let id = s.register(&good, 2);
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 3, b"21.5", false);
    s.expect(Packet::PubAck(Ack { topic_id: id, msg_id: 3, return_code: ReturnCode::Accepted }));
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), m.payload.as_slice()), (good.as_str(), &b"21.5"[..]));
}

#[test]
fn publish_from_the_sensor_at_every_qos_and_topic_type() {
    let broker = Mosquitto::start();
    let base = unique("up");
    let gw = gateway_with_predefined(&broker, &base);
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/#"), 2);
    sub.subscribe("zq", 2);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let normal = s.register(&format!("{base}/normal"), 1);

    let topics = [
        (TopicId::Normal(normal), format!("{base}/normal")),
        (TopicId::Predefined(7), format!("{base}/pre")),
        (TopicId::Short(*b"zq"), "zq".to_owned()),
    ];
    let mut msg_id = 10;
    for (topic, name) in &topics {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            msg_id += 1;
            let id = if qos == QoS::AtMostOnce { 0 } else { msg_id };
            let data = format!("{name} {qos}");
            s.publish(*topic, qos, id, data.as_bytes(), false);
            match qos {
                QoS::AtLeastOnce => s.expect(Packet::PubAck(Ack {
                    topic_id: topic.raw(),
                    msg_id: id,
                    return_code: ReturnCode::Accepted,
                })),
                QoS::ExactlyOnce => {
                    s.expect(Packet::PubRec(id));
                    s.send(Packet::PubRel(id));
                    s.expect(Packet::PubComp(id));
                }
                _ => {}
            }
            let m = sub.recv();
            assert_eq!((&m.topic, m.payload.as_slice()), (name, data.as_bytes()));
            assert_eq!(m.qos, qos.level() as u8);
        }
    }
}

#[test]
fn retained_publish_arrives_with_retain_after_suback() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("retained");
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let id = s.register(&topic, 1);
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, b"kept", true);
    s.expect(Packet::PubAck(Ack { topic_id: id, msg_id: 2, return_code: ReturnCode::Accepted }));
    // A later subscriber (MQTT) sees it retained...
    let mut late = MqttClient::connect(broker.port(), &unique("late"));
    late.subscribe(&topic, 1);
    let m = late.recv();
    assert!(m.retain);
    assert_eq!(m.payload, b"kept");
    // ...and so does a sensor that subscribes: SUBACK first, then PUBLISH.
    let mut t = Sensor::new(gw.addr());
    t.connect(&unique("t"), true, 60);
    t.send(Packet::Subscribe(mqttsn_codec::Subscribe {
        dup: false,
        qos: QoS::AtLeastOnce,
        msg_id: 3,
        topic: TopicFilter::Name(topic.as_bytes()),
    }));
    let first = t.recv();
    assert!(matches!(Packet::decode(&first), Ok(Packet::SubAck(_))), "SUBACK comes first");
    let m = t.next_publish();
    assert!(m.retain);
    assert_eq!(m.data, b"kept");
}

#[test]
fn unknown_topic_id_gets_puback_invalid_topic_id() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    for (qos, msg_id) in [(QoS::AtMostOnce, 0), (QoS::AtLeastOnce, 9), (QoS::ExactlyOnce, 10)] {
        s.publish(TopicId::Normal(4242), qos, msg_id, b"x", false);
        s.expect(Packet::PubAck(Ack {
            topic_id: 4242,
            msg_id,
            return_code: ReturnCode::InvalidTopicId,
        }));
    }
    s.publish(TopicId::Predefined(999), QoS::AtLeastOnce, 11, b"x", false);
    s.expect(Packet::PubAck(Ack {
        topic_id: 999,
        msg_id: 11,
        return_code: ReturnCode::InvalidTopicId,
    }));
}

#[test]
fn qos2_retransmission_is_published_once() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("once");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&topic, 2);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let id = s.register(&topic, 1);
    s.publish(TopicId::Normal(id), QoS::ExactlyOnce, 5, b"exactly once", false);
    s.expect(Packet::PubRec(5));
    // The PUBREC was "lost": the sensor sends the PUBLISH again with DUP.
    s.send(Packet::Publish(mqttsn_codec::Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicId::Normal(id),
        msg_id: 5,
        data: b"exactly once",
    }));
    s.expect(Packet::PubRec(5));
    s.send(Packet::PubRel(5));
    s.expect(Packet::PubComp(5));
    assert_eq!(sub.recv().payload, b"exactly once");
    assert!(sub.recv_within(QUIET).is_none(), "published twice");
}

#[test]
fn subscribe_by_name_predefined_and_short_with_deliveries_at_every_qos() {
    let broker = Mosquitto::start();
    let base = unique("down");
    let gw = gateway_with_predefined(&broker, &base);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let name = format!("{base}/name");
    let by_name = s.subscribe(TopicFilter::Name(name.as_bytes()), QoS::ExactlyOnce, 1);
    assert_eq!((by_name.return_code, by_name.qos), (ReturnCode::Accepted, QoS::ExactlyOnce));
    assert_ne!(by_name.topic_id, 0);
    let pre = s.subscribe(TopicFilter::Predefined(7), QoS::AtLeastOnce, 2);
    assert_eq!((pre.return_code, pre.topic_id), (ReturnCode::Accepted, 7));
    let short = s.subscribe(TopicFilter::Short(*b"q8"), QoS::AtMostOnce, 3);
    assert_eq!((short.return_code, short.topic_id), (ReturnCode::Accepted, 0));
    let bad = s.subscribe(TopicFilter::Predefined(8), QoS::AtMostOnce, 4);
    assert_eq!(bad.return_code, ReturnCode::InvalidTopicId);

    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    // QoS 2 to the name: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    publisher.publish(&name, b"two", 2, false);
    let m = s.next_publish();
    assert_eq!(
        (m.topic, m.qos, m.data.as_slice()),
        (TopicId::Normal(by_name.topic_id), QoS::ExactlyOnce, &b"two"[..])
    );
    s.send(Packet::PubRec(m.msg_id));
    s.expect(Packet::PubRel(m.msg_id));
    s.send(Packet::PubComp(m.msg_id));
    // QoS 1 to the predefined topic.
    publisher.publish(&format!("{base}/pre"), b"one", 1, false);
    let m = s.next_publish();
    assert_eq!((m.topic, m.qos), (TopicId::Predefined(7), QoS::AtLeastOnce));
    puback(&s, &m);
    // QoS 0 to the short name.
    publisher.publish("q8", b"zero", 0, false);
    let m = s.next_publish();
    assert_eq!((m.topic, m.qos, m.msg_id), (TopicId::Short(*b"q8"), QoS::AtMostOnce, 0));

    // UNSUBSCRIBE: UNSUBACK, then nothing more.
    s.send(Packet::Unsubscribe(Unsubscribe { msg_id: 5, topic: TopicFilter::Short(*b"q8") }));
    s.expect(Packet::UnsubAck(5));
    publisher.publish("q8", b"gone", 0, false);
    s.expect_silence(QUIET);
}

#[test]
fn wildcard_subscription_registers_each_topic_before_its_first_publish() {
    let broker = Mosquitto::start();
    let base = unique("wild");
    let gw = gateway_with_predefined(&broker, &base);
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let filter = format!("{base}/#");
    let ack = s.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::AtLeastOnce, 1);
    assert_eq!((ack.return_code, ack.topic_id), (ReturnCode::Accepted, 0));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    // Two messages on a new topic, the second while the REGISTER is in
    // flight: both wait, then go in order.
    let kitchen = format!("{base}/kitchen");
    publisher.publish(&kitchen, b"k1", 1, false);
    publisher.publish(&kitchen, b"k2", 1, false);
    let d = s.recv();
    let Ok(Packet::Register(r)) = Packet::decode(&d) else { panic!("expected REGISTER") };
    assert_eq!(r.topic_name, kitchen.as_bytes());
    let tid = r.topic_id;
    s.expect_silence(Duration::from_millis(100));
    s.send(Packet::RegAck(Ack {
        topic_id: tid,
        msg_id: r.msg_id,
        return_code: ReturnCode::Accepted,
    }));
    let m = s.next_publish();
    assert_eq!((m.topic, m.data.as_slice()), (TopicId::Normal(tid), &b"k1"[..]));
    puback(&s, &m);
    let m = s.next_publish();
    assert_eq!(m.data, b"k2");
    puback(&s, &m);

    // A refused REGACK stops that topic; the broker is still acknowledged,
    // so the next topic flows.
    let attic = format!("{base}/attic");
    publisher.publish(&attic, b"a1", 1, false);
    let d = s.recv();
    let Ok(Packet::Register(r)) = Packet::decode(&d) else { panic!("expected REGISTER") };
    s.send(Packet::RegAck(Ack {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::NotSupported,
    }));
    publisher.publish(&attic, b"a2", 1, false);
    // Predefined and two-character topics need no REGISTER.
    publisher.publish(&format!("{base}/pre"), b"p", 1, false);
    let m = s.next_publish();
    assert_eq!((m.topic, m.data.as_slice()), (TopicId::Predefined(7), &b"p"[..]));
    puback(&s, &m);
    assert!(gw.metrics().dropped >= 2, "{:?}", gw.metrics());
}

#[test]
fn two_character_topics_under_a_wildcard_go_as_short_names() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    s.subscribe(TopicFilter::Name(b"+"), QoS::AtMostOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish("xy", b"short", 0, false);
    let m = s.next_publish();
    assert_eq!((m.topic, m.data.as_slice()), (TopicId::Short(*b"xy"), &b"short"[..]));
}

#[test]
fn puback_invalid_topic_id_from_the_sensor_registers_again_and_replays() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("replay");
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"again", 1, false);
    let m = s.next_publish();
    assert_eq!(m.topic, TopicId::Normal(ack.topic_id));
    // The sensor lost its table (it rebooted, say).
    s.send(Packet::PubAck(Ack {
        topic_id: ack.topic_id,
        msg_id: m.msg_id,
        return_code: ReturnCode::InvalidTopicId,
    }));
    let d = s.recv();
    let Ok(Packet::Register(r)) = Packet::decode(&d) else { panic!("expected REGISTER") };
    assert_eq!(r.topic_name, topic.as_bytes());
    s.send(Packet::RegAck(Ack {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::Accepted,
    }));
    let m = s.next_publish();
    assert_eq!((m.topic, m.data.as_slice()), (TopicId::Normal(r.topic_id), &b"again"[..]));
}

#[test]
fn one_message_in_flight_fifo_and_retransmission_with_dup() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("fifo");
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"m1", 1, false);
    publisher.publish(&topic, b"m2", 0, false);
    publisher.publish(&topic, b"m3", 1, false);
    let first = s.next_publish();
    assert_eq!((first.data.as_slice(), first.dup), (&b"m1"[..], false));
    // Not acknowledged: sent again with DUP after Tretry (200 ms), and
    // nothing else overtakes it.
    let again = s.next_publish();
    assert_eq!((again.data.as_slice(), again.dup, again.msg_id), (&b"m1"[..], true, first.msg_id));
    puback(&s, &again);
    assert_eq!(s.next_publish().data, b"m2");
    let m3 = s.next_publish();
    assert_eq!(m3.data, b"m3");
    puback(&s, &m3);
    s.expect_silence(Duration::from_millis(500));
}

#[test]
fn retransmissions_stop_after_nretry_until_the_sensor_is_heard_from() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("nretry");
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 0);
    s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"hello?", 1, false);
    // The first send and Nretry = 3 retransmissions, then silence.
    for i in 0..4 {
        let m = s.next_publish();
        assert_eq!(m.dup, i > 0);
    }
    s.expect_silence(Duration::from_millis(600));
    // The sensor is back: the message is sent again.
    s.send(Packet::PingReq(None));
    let m = s.next_publish();
    assert_eq!(m.data, b"hello?");
    puback(&s, &m);
}

#[test]
fn too_long_messages_are_dropped_counted_and_acknowledged() {
    let broker = Mosquitto::start();
    let gw =
        Gateway::start_with(broker.port(), SessionConfig { max_datagram: 64, ..fast_config() });
    let topic = "tl";
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    s.subscribe(TopicFilter::Short(*b"tl"), QoS::AtLeastOnce, 1);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(topic, &[b'x'; 100], 1, false);
    publisher.publish(topic, b"fits", 1, false);
    let m = s.next_publish();
    assert_eq!(m.data, b"fits");
    assert_eq!(gw.metrics().dropped, 1);
}
