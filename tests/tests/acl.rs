//! Topic ACLs against a real mosquitto: what a sensor may publish reaches
//! the broker, what it may not is refused with return code 0x02 and never
//! reaches it, refused subscriptions and will topics get 0x02, QoS -1 to
//! a forbidden topic is dropped and counted, and a SIGHUP changes the ACL
//! of a sensor already connected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mqttsn_codec::{
    Ack, Connect, Packet, QoS, Register, ReturnCode, SubAck, TopicFilter, TopicId, WillTopic,
};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

fn refused(page: &str, action: &str) -> Option<u64> {
    let series = format!("mqttsn_acl_refused_total{{action=\"{action}\"}}");
    page.lines().find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

fn config(broker: &Mosquitto, extra_publish: &str) -> String {
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"{}\"\n\
         [qos_minus_one]\nenabled = true\n\
         [[predefined]]\nid = 7\nname = \"forbidden/m1\"\n\
         [[predefined]]\nid = 8\nname = \"public/m1\"\n\
         [acl]\npublish = [\"sensors/%c/#\", \"public/#\"{extra_publish}]\n\
         subscribe = [\"cmd/%c/#\"]\n",
        broker.url()
    )
}

fn puback(s: &mut Sensor) -> Ack {
    let d = s.expect_where("PUBACK", |p| matches!(p, Packet::PubAck(_)));
    match Packet::decode(&d).unwrap() {
        Packet::PubAck(a) => a,
        _ => unreachable!(),
    }
}

fn regack(s: &mut Sensor, name: &str, msg_id: u16) -> Ack {
    s.send(Packet::Register(Register { topic_id: 0, msg_id, topic_name: name.as_bytes() }));
    let d = s.expect_where("REGACK", |p| matches!(p, Packet::RegAck(_)));
    match Packet::decode(&d).unwrap() {
        Packet::RegAck(a) => a,
        _ => unreachable!(),
    }
}

/// Every topic the watcher gets until `last` arrives (bounded).
fn topics_until(watcher: &mut MqttClient, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(m) = watcher.recv_within(Duration::from_millis(200)) {
            let done = m.topic == last;
            seen.push(m.topic);
            if done {
                return seen;
            }
        }
    }
    panic!("{last} never reached the broker; seen {seen:?}")
}

#[test]
fn the_acl_lets_allowed_topics_through_and_refuses_the_rest_before_the_broker() {
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(unique("acl"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config(&broker, "")).unwrap();
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    gw.wait_for_line("broker reachable");
    let metrics = gw.metrics.expect("metrics address logged");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe("#", 0);

    let cid = unique("s");
    let mut s = Sensor::new(gw.addr);
    s.connect(&cid, true, 60);
    let own = format!("sensors/{cid}/temp");
    let id = s.register(&own, 1);

    // Refused: a REGISTER elsewhere, PUBLISH at QoS 0, 1 and 2 to a
    // predefined id and a short name outside the grants.
    let rc = regack(&mut s, "other/t", 2);
    assert_eq!((rc.topic_id, rc.return_code), (0, ReturnCode::InvalidTopicId));
    for (msg_id, qos) in [(0, QoS::AtMostOnce), (3, QoS::AtLeastOnce), (4, QoS::ExactlyOnce)] {
        for topic in [TopicId::Predefined(7), TopicId::Short(*b"zz")] {
            s.publish(topic, qos, msg_id, b"no", false);
            let a = puback(&mut s);
            assert_eq!(
                a,
                Ack { topic_id: topic.raw(), msg_id, return_code: ReturnCode::InvalidTopicId }
            );
        }
    }
    // QoS -1 without a connection: to the forbidden predefined topic
    // (dropped, nothing answered), then to the allowed one.
    let unconnected = Sensor::new(gw.addr);
    unconnected.publish(TopicId::Predefined(7), QoS::NoSession, 0, b"no", false);
    unconnected.publish(TopicId::Predefined(8), QoS::NoSession, 0, b"yes", false);
    assert_eq!(topics_until(&mut watcher, "public/m1"), ["public/m1"]);
    // Allowed: the sensor's own topic.
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 5, b"21.5", false);
    assert_eq!(puback(&mut s).return_code, ReturnCode::Accepted);
    assert_eq!(topics_until(&mut watcher, &own), [own], "nothing refused got through");

    // Subscriptions: a filter wider than the grant is refused, its own
    // commands are allowed and delivered.
    let sub = |s: &mut Sensor, f: &str, msg_id| {
        s.subscribe(TopicFilter::Name(f.as_bytes()), QoS::AtLeastOnce, msg_id)
    };
    let rc = sub(&mut s, "cmd/#", 6);
    assert_eq!(
        rc,
        SubAck {
            qos: QoS::AtLeastOnce,
            topic_id: 0,
            msg_id: 6,
            return_code: ReturnCode::InvalidTopicId
        }
    );
    assert_eq!(sub(&mut s, &format!("cmd/{cid}/#"), 7).return_code, ReturnCode::Accepted);
    let mut commander = MqttClient::connect(broker.port(), &unique("cmd"));
    commander.publish(&format!("cmd/{cid}/led"), b"on", 0, false);
    let d = s.expect_where("REGISTER", |p| matches!(p, Packet::Register(_)));
    let Ok(Packet::Register(r)) = Packet::decode(&d) else { unreachable!() };
    let topic_id = r.topic_id;
    s.send(Packet::RegAck(Ack { topic_id, msg_id: r.msg_id, return_code: ReturnCode::Accepted }));
    let m = s.next_publish();
    assert_eq!((m.topic, m.data.as_slice()), (TopicId::Normal(topic_id), &b"on"[..]));

    // A will topic outside the grants: CONNACK 0x02, no session.
    let mut w = Sensor::new(gw.addr);
    w.send(Packet::Connect(Connect {
        will: true,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: unique("w").as_bytes(),
    }));
    w.expect(Packet::WillTopicReq);
    w.send(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b"other/will",
    })));
    w.expect(Packet::ConnAck(ReturnCode::InvalidTopicId));

    let page = mqttsn_tests::http::get(metrics, "/metrics").body;
    assert_eq!(refused(&page, "publish"), Some(7), "six PUBLISHes and one QoS -1: {page}");
    assert_eq!(refused(&page, "register"), Some(1));
    assert_eq!(refused(&page, "subscribe"), Some(1));
    assert_eq!(refused(&page, "will"), Some(1));

    // SIGHUP with `other/#` granted: the connected sensor may now.
    std::fs::write(&cfg, config(&broker, ", \"other/#\"")).unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_line("SIGHUP:");
    assert!(line.contains("acl"), "{line}");
    let rc = regack(&mut s, "other/t", 8);
    assert_eq!(rc.return_code, ReturnCode::Accepted);
    s.publish(TopicId::Normal(rc.topic_id), QoS::AtLeastOnce, 9, b"now", false);
    assert_eq!(puback(&mut s).return_code, ReturnCode::Accepted);
    let seen = topics_until(&mut watcher, "other/t");
    let commands = format!("cmd/{cid}/led");
    assert!(seen.iter().all(|t| *t == commands || t == "other/t"), "{seen:?}");
}
