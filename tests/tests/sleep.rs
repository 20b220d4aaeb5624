//! Sleeping sensors end to end (spec 6.14): buffered while asleep, flushed
//! one at a time on PINGREQ with PINGRESP last, never redelivered, lost
//! (with its will) when it oversleeps, and found again at a new address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicFilter, TopicId, WillTopic};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::{describe, Sensor};

/// Wakes the sensor and answers everything until PINGRESP; returns the
/// payloads in order, and checks REGISTER comes before the PUBLISH that
/// needs it.
fn wake(s: &mut Sensor, client_id: &str, known: &mut HashSet<u16>) -> Vec<Vec<u8>> {
    s.send(Packet::PingReq(Some(client_id.as_bytes())));
    flushed(s, known)
}

/// Answers everything the gateway flushes until PINGRESP.
fn flushed(s: &mut Sensor, known: &mut HashSet<u16>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        let d = s.recv();
        match Packet::decode(&d).unwrap() {
            Packet::PingResp => return got,
            Packet::Register(r) => {
                known.insert(r.topic_id);
                s.send(Packet::RegAck(Ack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }));
            }
            Packet::Publish(p) => {
                if let TopicId::Normal(id) = p.topic {
                    assert!(known.contains(&id), "PUBLISH before its REGISTER");
                }
                got.push(p.data.to_vec());
                match p.qos {
                    QoS::AtLeastOnce => s.send(Packet::PubAck(Ack {
                        topic_id: p.topic.raw(),
                        msg_id: p.msg_id,
                        return_code: ReturnCode::Accepted,
                    })),
                    QoS::ExactlyOnce => {
                        s.send(Packet::PubRec(p.msg_id));
                        s.expect(Packet::PubRel(p.msg_id));
                        s.send(Packet::PubComp(p.msg_id));
                    }
                    _ => {}
                }
            }
            other => panic!("unexpected while awake: {other:?}"),
        }
    }
}

#[test]
fn a_sleeping_sensor_receives_everything_once_in_order_with_pingresp_last() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("sleep");
    let id = unique("sleeper");
    let mut s = Sensor::new(gw.addr());
    s.connect(&id, false, 60);
    let filter = format!("{base}/#");
    s.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::ExactlyOnce, 1);
    let mut known = HashSet::new();
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));

    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&format!("{base}/a"), b"q0", 0, false);
    publisher.publish(&format!("{base}/a"), b"q1", 1, false);
    publisher.publish(&format!("{base}/b"), b"q2", 2, false);
    publisher.publish(&format!("{base}/c"), b"retained", 1, true);
    s.expect_silence(Duration::from_millis(300));

    let got = wake(&mut s, &id, &mut known);
    assert_eq!(got, [b"q0".to_vec(), b"q1".to_vec(), b"q2".to_vec(), b"retained".to_vec()]);
    // A second wake does not redeliver what was acknowledged.
    assert!(wake(&mut s, &id, &mut known).is_empty());
    // More while asleep, another wake.
    publisher.publish(&format!("{base}/a"), b"later", 2, false);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(wake(&mut s, &id, &mut known), [b"later".to_vec()]);
}

#[test]
fn a_pingreq_without_client_id_from_the_sleepers_address_wakes_it() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("anon-wake");
    let id = unique("sleeper");
    let mut s = Sensor::new(gw.addr());
    s.connect(&id, false, 60);
    let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    let mut known = HashSet::from([ack.topic_id]);
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"one", 1, false);
    publisher.publish(&topic, b"two", 1, false);
    s.expect_silence(Duration::from_millis(300));
    // Another address without ClientId wakes nobody.
    let mut stranger = Sensor::new(gw.addr());
    stranger.send(Packet::PingReq(None));
    stranger.expect(Packet::Disconnect(None));
    s.expect_silence(Duration::from_millis(200));
    // The sleeper's own address without ClientId: the buffer, PINGRESP
    // last, asleep again (what comes later waits for the next wake-up).
    s.send(Packet::PingReq(None));
    assert_eq!(flushed(&mut s, &mut known), [b"one".to_vec(), b"two".to_vec()]);
    publisher.publish(&topic, b"three", 1, false);
    s.expect_silence(Duration::from_millis(300));
    s.send(Packet::PingReq(None));
    assert_eq!(flushed(&mut s, &mut known), [b"three".to_vec()]);
}

#[test]
fn a_sensor_that_never_wakes_is_lost_and_its_will_published() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let will = unique("will");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&will, 1);
    let mut s = Sensor::new(gw.addr());
    s.send(Packet::Connect(Connect {
        will: true,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: unique("s").as_bytes(),
    }));
    s.expect(Packet::WillTopicReq);
    s.send(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: will.as_bytes(),
    })));
    s.expect(Packet::WillMsgReq);
    s.send(Packet::WillMsg(b"overslept"));
    s.expect(Packet::ConnAck(ReturnCode::Accepted));
    // Sleep for 1 s; the timer (1 s + 50%) runs out.
    s.send(Packet::Disconnect(Some(1)));
    s.expect(Packet::Disconnect(None));
    let m = watcher.recv();
    assert_eq!(m.payload, b"overslept");
    assert_eq!(gw.metrics().sensors_lost, 1);
}

#[test]
fn a_sleeper_waking_from_a_new_address_gets_its_messages_and_nobody_else_does() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("nat");
    let id = unique("sleeper");
    let mut old = Sensor::new(gw.addr());
    old.connect(&id, false, 60);
    let ack = old.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    let mut known = HashSet::from([ack.topic_id]);
    old.send(Packet::Disconnect(Some(60)));
    old.expect(Packet::Disconnect(None));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"for the sleeper", 1, false);

    // Another sensor (different ClientId) now sends from the sleeper's old
    // address: it must not get the sleeper's messages.
    old.connect(&unique("intruder"), true, 60);
    old.send(Packet::PingReq(None));
    old.expect(Packet::PingResp);
    old.expect_silence(Duration::from_millis(300));

    // The sleeper wakes from a new port (NAT rebinding).
    let mut new = Sensor::new(gw.addr());
    assert_eq!(wake(&mut new, &id, &mut known), [b"for the sleeper".to_vec()]);
}

#[test]
fn an_asleep_sensors_address_gets_only_what_spec_6_14_allows() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("asleep");
    let id = unique("sleeper");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{topic}/#"), 1);
    let mut s = Sensor::new(gw.addr());
    s.connect(&id, false, 60);
    let inbox = format!("{topic}/in");
    let ack = s.subscribe(TopicFilter::Name(inbox.as_bytes()), QoS::AtLeastOnce, 1);
    let mut known = HashSet::from([ack.topic_id]);
    let out = s.register(&format!("{topic}/out"), 2);
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));
    let dropped = gw.metrics().dropped;

    // From the sleeper's address while it sleeps: a PUBLISH (QoS 1 and 0),
    // a SUBSCRIBE and a REGISTER get no answer and reach nothing.
    let publish = |qos, msg_id| {
        Packet::Publish(mqttsn_codec::Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicId::Normal(out),
            msg_id,
            data: b"forged",
        })
    };
    s.send(publish(QoS::AtLeastOnce, 3));
    s.send(publish(QoS::AtMostOnce, 0));
    s.send(Packet::Subscribe(mqttsn_codec::Subscribe {
        dup: false,
        qos: QoS::AtMostOnce,
        msg_id: 4,
        topic: TopicFilter::Name(b"#"),
    }));
    s.send(Packet::Register(mqttsn_codec::Register { topic_id: 0, msg_id: 5, topic_name: b"x/y" }));
    s.expect_silence(Duration::from_millis(300));
    assert!(watcher.recv_within(Duration::from_millis(300)).is_none(), "forwarded");
    assert_eq!(gw.metrics().dropped, dropped + 4);

    // The sensor wakes as usual and gets what came for it meanwhile.
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&inbox, b"while asleep", 1, false);
    // Past the broker and into the buffer before the wake-up.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gw.metrics().buffered_messages == 0 {
        assert!(std::time::Instant::now() < deadline, "not buffered");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(wake(&mut s, &id, &mut known), [b"while asleep".to_vec()]);
}

#[test]
fn a_forged_wake_up_gets_only_a_probe_and_a_sensor_that_moved_proves_its_new_address() {
    use mqttsn_gateway::admission::{Check, Limits};
    use mqttsn_gateway::server::ServerOptions;
    use std::sync::atomic::Ordering;

    let broker = Mosquitto::start();
    // Nothing is exempt: loopback stands in for a network.
    let admission = Limits { verify_moves: true, ..Limits::default() };
    let gw = Gateway::start_full(
        broker.port(),
        mqttsn_tests::gateway::fast_config(),
        ServerOptions { admission, ..ServerOptions::default() },
    );
    let metrics = gw.metrics_handle();
    let checks = |c: Check| metrics.address_checks[c.index()].load(Ordering::Relaxed);
    let topic = unique("probe");
    let id = unique("sleeper");
    let to = gw.addr();
    let mut s = Sensor::bound("127.0.0.1:0".parse().unwrap(), to);
    s.connect(&id, false, 60);
    s.register(&topic, 1);
    let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 2);
    let mut known = HashSet::from([ack.topic_id]);
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"first", 1, false);
    std::thread::sleep(Duration::from_millis(200));

    // A wake-up forged with the sleeper's ClientId from 127.0.0.7: what
    // reaches that address is one REGISTER probe, never the message.
    let mut forger = Sensor::bound("127.0.0.7:0".parse().unwrap(), to);
    let wake_up = Packet::PingReq(Some(id.as_bytes()));
    forger.send(wake_up);
    let probe = forger.recv();
    assert!(matches!(Packet::decode(&probe), Ok(Packet::Register(_))), "{}", describe(&probe));
    let mut wake_len = [0u8; 128];
    let wake_len = wake_up.encode(&mut wake_len).unwrap();
    assert!(probe.len() <= 3 * wake_len, "amplification within 3");
    forger.expect_silence(Duration::from_millis(500));

    // The sleeper wakes from its own address and gets its message there.
    assert_eq!(wake(&mut s, &id, &mut known), [b"first".to_vec()]);
    forger.expect_silence(Duration::from_millis(100));
    assert_eq!(checks(Check::Failed), 1);

    // It sleeps, and wakes from a new address (NAT rebinding): it answers
    // the probe (a REGISTER, as every client does) and gets its message.
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));
    publisher.publish(&topic, b"second", 1, false);
    std::thread::sleep(Duration::from_millis(200));
    let mut moved = Sensor::bound("127.0.0.8:0".parse().unwrap(), to);
    assert_eq!(wake(&mut moved, &id, &mut known), [b"second".to_vec()]);
    assert_eq!(checks(Check::Verified), 1);
    assert_eq!(metrics.address_withheld.load(Ordering::Relaxed), 0, "nothing discarded");
}
