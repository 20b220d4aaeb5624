//! What only the aggregating gateway does, against a real mosquitto: the
//! sensors share the pool's connections and its identity, subscriptions
//! are counted across sensors, retained messages reach only the sensor
//! that subscribed, and the gateway publishes wills itself. (The flows
//! both modes share run in aggregating mode in `aggregating.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use mqttsn_codec::{Packet, QoS, TopicFilter, TopicId, Unsubscribe};
use mqttsn_gateway::options::ServerOptions;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

/// A gateway in aggregating mode with one worker and a pool of `n`.
fn gateway(broker: &Mosquitto, n: usize, extra: &str) -> Gateway {
    let mut pool = mqttsn_tests::mode::pool("agg", None);
    pool.connections = n;
    if !extra.is_empty() {
        pool.username = Some(extra.to_string());
        pool.password = Some(bytes::Bytes::from_static(b"secret"));
    }
    let opts = ServerOptions { workers: 1, aggregating: Some(pool), ..ServerOptions::default() };
    Gateway::start_full(broker.port(), fast_config(), opts)
}

/// The next PUBLISH, acknowledged when it needs it.
fn take(s: &mut Sensor) -> mqttsn_tests::sn::Received {
    let got = s.next_publish();
    if got.qos == QoS::AtLeastOnce {
        let topic_id = match got.topic {
            TopicId::Normal(id) | TopicId::Predefined(id) | TopicId::Reserved(id) => id,
            TopicId::Short(_) => 0,
        };
        s.send(Packet::PubAck(mqttsn_codec::Ack {
            topic_id,
            msg_id: got.msg_id,
            return_code: mqttsn_codec::ReturnCode::Accepted,
        }));
    }
    got
}

fn sensor(gw: &Gateway, id: &str) -> Sensor {
    let mut s = Sensor::new(gw.addr());
    s.connect(id, true, 60);
    s
}

#[test]
fn many_sensors_share_the_pool_under_the_gateways_own_identity() {
    // The broker knows only the gateway's user: the sensors have none.
    let dir = std::env::temp_dir().join(unique("mqttsn-agg-passwd"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gateway", "secret"])
        .status()
        .unwrap_or_else(|e| panic!("mosquitto_passwd is required ({e}); scripts/test installs it"));
    assert!(status.success());
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    let gw = gateway(&broker, 2, "gateway");
    let topic = unique("shared");
    let mut watcher = MqttClient::connect_with(
        broker.port(),
        &unique("w"),
        true,
        None,
        Some(("gateway", "secret")),
    )
    .expect("watcher");
    watcher.subscribe(&format!("{topic}/#"), 1);
    let mut sensors: Vec<Sensor> =
        (0..20).map(|i| sensor(&gw, &unique(&format!("s{i}")))).collect();
    for (i, s) in sensors.iter_mut().enumerate() {
        let id = s.register(&format!("{topic}/{i}"), 1);
        s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, b"x", false);
        s.expect_where("PUBACK", |p| matches!(p, Packet::PubAck(_)));
    }
    let mut got = 0;
    while got < 20 {
        watcher.recv_within(Duration::from_secs(5)).expect("every sensor's message");
        got += 1;
    }
    let m = gw.metrics_handle();
    assert_eq!(m.pool_connections.load(Ordering::Relaxed), 2);
    assert_eq!(m.pool_connections_up.load(Ordering::Relaxed), 2, "20 sensors, 2 connections");
    assert_eq!(m.mode_aggregating.load(Ordering::Relaxed), 1);
}

#[test]
fn a_filter_is_subscribed_upstream_while_any_sensor_holds_it() {
    let broker = Mosquitto::start();
    let gw = gateway(&broker, 1, "");
    let topic = unique("rc");
    let mut a = sensor(&gw, &unique("a"));
    let mut b = sensor(&gw, &unique("b"));
    for s in [&mut a, &mut b] {
        let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
        assert_eq!(ack.return_code, mqttsn_codec::ReturnCode::Accepted);
    }
    let m = gw.metrics_handle();
    assert_eq!(m.pool_filters.load(Ordering::Relaxed), 1);
    assert_eq!(m.pool_subscriptions.load(Ordering::Relaxed), 2);
    let mut publisher = MqttClient::connect(broker.port(), &unique("p"));
    publisher.publish(&topic, b"one", 1, false);
    assert_eq!(take(&mut a).data, b"one");
    assert_eq!(take(&mut b).data, b"one");
    // `a` leaves; `b` still receives.
    a.send(Packet::Unsubscribe(Unsubscribe {
        msg_id: 2,
        topic: TopicFilter::Name(topic.as_bytes()),
    }));
    a.expect_where("UNSUBACK", |p| matches!(p, Packet::UnsubAck(2)));
    publisher.publish(&topic, b"two", 1, false);
    assert_eq!(take(&mut b).data, b"two");
    a.expect_silence(Duration::from_millis(300));
    assert_eq!(m.pool_subscriptions.load(Ordering::Relaxed), 1);
    // The last leaves: unsubscribed upstream.
    b.send(Packet::Unsubscribe(Unsubscribe {
        msg_id: 3,
        topic: TopicFilter::Name(topic.as_bytes()),
    }));
    b.expect_where("UNSUBACK", |p| matches!(p, Packet::UnsubAck(3)));
    assert_eq!(m.pool_filters.load(Ordering::Relaxed), 0);
}

#[test]
fn a_retained_message_reaches_only_the_sensor_that_subscribed() {
    let broker = Mosquitto::start();
    let gw = gateway(&broker, 1, "");
    let topic = unique("ret");
    let mut publisher = MqttClient::connect(broker.port(), &unique("p"));
    publisher.publish(&topic, b"kept", 1, true);
    let mut first = sensor(&gw, &unique("first"));
    first.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtMostOnce, 1);
    let r = first.next_publish();
    assert!(r.retain && r.data == b"kept");
    let mut second = sensor(&gw, &unique("second"));
    second.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtMostOnce, 1);
    let r = second.next_publish();
    assert!(r.retain && r.data == b"kept", "the retained message for the new subscriber");
    first.expect_silence(Duration::from_millis(500));
    // A live retained publish reaches both, as a live message.
    publisher.publish(&topic, b"live", 0, true);
    for s in [&mut first, &mut second] {
        let r = s.next_publish();
        assert_eq!((r.data.as_slice(), r.retain), (&b"live"[..], false));
    }
}
