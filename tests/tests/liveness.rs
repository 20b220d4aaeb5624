//! Keepalive, PINGREQ, unknown senders, bad input, broker outages and
//! graceful shutdown, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicFilter, TopicId, WillTopic};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

#[test]
fn pingreq_gets_pingresp_and_keeps_the_sensor_alive() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 1);
    // 1 s keepalive: pinging every 0.5 s for 2.5 s keeps the session.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        s.send(Packet::PingReq(None));
        s.expect(Packet::PingResp);
    }
    assert_eq!(gw.metrics().sensors_lost, 0);
    assert_eq!(gw.metrics().sessions_active, 1);
}

#[test]
fn silent_sensor_is_lost_and_then_unknown() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 1);
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(gw.metrics().sensors_lost, 1);
    // Its address has no session any more.
    s.send(Packet::PingReq(None));
    s.expect(Packet::Disconnect(None));
}

#[test]
fn messages_from_unknown_addresses_get_a_rate_limited_disconnect() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.publish(TopicId::Normal(1), QoS::AtLeastOnce, 1, b"after a restart", false);
    s.expect(Packet::Disconnect(None));
    // Within the interval: no second DISCONNECT.
    s.send(Packet::PingReq(None));
    s.expect_silence(Duration::from_millis(300));
    // The sensor reconnects and carries on.
    s.connect(&unique("s"), true, 60);
    s.send(Packet::PingReq(None));
    s.expect(Packet::PingResp);
}

#[test]
fn malformed_datagrams_are_dropped_and_counted_without_harm() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), true, 60);
    let bad: &[&[u8]] = &[
        &[],
        &[0x01],
        &[0x01, 0x00],
        &[0x00, 0x0c],
        &[0x05, 0x0e, 0x00, 0x01],
        &[0x04, 0x04, 0x04, 0x01],
        &[0x08, 0xfe, 0x00, 0x01, 0x02, 0x03],
        &[0x02, 0x99],
    ];
    let other = Sensor::new(gw.addr());
    for b in bad {
        other.send_raw(b);
        s.send_raw(b);
    }
    // The session is untouched.
    s.send(Packet::PingReq(None));
    s.expect(Packet::PingResp);
    let m = gw.metrics();
    assert_eq!(m.malformed, 2 * bad.len() as u64, "{m:?}");
}

#[test]
fn broker_outage_is_survived_and_nothing_acknowledged_is_lost() {
    let mut broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("outage");
    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), false, 60);
    let id = s.register(&topic, 1);
    s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 2);

    broker.kill();
    // Published (retained) during the outage: no PUBACK yet.
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 3, b"during outage", true);
    s.expect_silence(Duration::from_millis(300));
    broker.restart();
    // Once the broker is back, the publish goes through, then PUBACK.
    s.expect_where("PUBACK", |p| {
        *p == Packet::PubAck(Ack { topic_id: id, msg_id: 3, return_code: ReturnCode::Accepted })
    });
    let mut late = MqttClient::connect(broker.port(), &unique("late"));
    late.subscribe(&topic, 1);
    assert_eq!(late.recv().payload, b"during outage");
    // The new broker had no session: the gateway subscribed again, so
    // messages reach the sensor.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        late.publish(&topic, b"after outage", 1, false);
        if let Some(d) = s.recv_within(Duration::from_millis(200)) {
            if let Ok(Packet::Publish(p)) = Packet::decode(&d) {
                if p.data == b"after outage" {
                    break;
                }
                // The retained message comes first with the subscription.
                s.send(Packet::PubAck(Ack {
                    topic_id: p.topic.raw(),
                    msg_id: p.msg_id,
                    return_code: ReturnCode::Accepted,
                }));
            }
        }
        assert!(std::time::Instant::now() < deadline, "subscription not restored");
    }
}

#[test]
fn the_binary_runs_and_stops_gracefully_on_sigterm() {
    let broker = Mosquitto::start();
    let will = unique("bin-will");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&will, 1);
    let mut gw = mqttsn_tests::gateway::GatewayProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &broker.url(),
    ]);
    let addr = gw.addr;
    let mut s = Sensor::new(addr);
    s.send(Packet::Connect(Connect {
        will: true,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: unique("bin").as_bytes(),
    }));
    s.expect(Packet::WillTopicReq);
    s.send(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: will.as_bytes(),
    })));
    s.expect(Packet::WillMsgReq);
    s.send(Packet::WillMsg(b"must not fire"));
    s.expect(Packet::ConnAck(ReturnCode::Accepted));

    let status = gw.terminate();
    // The sensor is told, the process exits by itself, and no will fires.
    s.expect(Packet::Disconnect(None));
    assert!(status.success(), "{status}");
    assert!(watcher.recv_within(Duration::from_millis(500)).is_none(), "a will fired on shutdown");
}

#[test]
fn session_limit_answers_congestion() {
    let broker = Mosquitto::start();
    let opts = mqttsn_gateway::server::ServerOptions {
        max_sessions: Some(1),
        ..mqttsn_gateway::server::ServerOptions::default()
    };
    let gw = Gateway::start_full(broker.port(), mqttsn_tests::gateway::fast_config(), opts);
    let mut a = Sensor::new(gw.addr());
    let id = unique("a");
    a.connect(&id, true, 60);
    let mut b = Sensor::new(gw.addr());
    b.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: unique("b").as_bytes(),
    }));
    b.expect(Packet::ConnAck(ReturnCode::Congestion));
    // The existing ClientId still reconnects.
    a.connect(&id, true, 60);
}

#[test]
fn ended_persistent_sessions_expire() {
    let broker = Mosquitto::start();
    let opts = mqttsn_gateway::server::ServerOptions {
        session_expiry: Some(Duration::from_millis(100)),
        ..mqttsn_gateway::server::ServerOptions::default()
    };
    let gw = Gateway::start_full(broker.port(), mqttsn_tests::gateway::fast_config(), opts);
    let id = unique("expiring");
    let mut s = Sensor::new(gw.addr());
    s.connect(&id, false, 60);
    let tid = s.register(&unique("t"), 1);
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    // Back quickly: the session (and its topic id) is still there.
    s.connect(&id, false, 60);
    s.publish(TopicId::Normal(tid), QoS::AtLeastOnce, 2, b"kept", false);
    s.expect(Packet::PubAck(Ack { topic_id: tid, msg_id: 2, return_code: ReturnCode::Accepted }));
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    // Past the expiry (checked every second), it is forgotten.
    std::thread::sleep(Duration::from_millis(1300));
    s.connect(&id, false, 60);
    s.publish(TopicId::Normal(tid), QoS::AtLeastOnce, 3, b"forgotten", false);
    s.expect(Packet::PubAck(Ack {
        topic_id: tid,
        msg_id: 3,
        return_code: ReturnCode::InvalidTopicId,
    }));
}
