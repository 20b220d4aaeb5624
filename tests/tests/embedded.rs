//! First run: no broker configured, the embedded broker starts, and what a
//! sensor publishes reaches an MQTT subscriber on it. A taken port is
//! reported with the way out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::unique;
use mqttsn_tests::gateway::{gateway_binary, GatewayProcess};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config_with_embedded(port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("embedded"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nstore = \"\"\n[broker]\nembedded_listen = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn without_a_broker_the_embedded_one_carries_sensor_messages() {
    let port = free_port();
    let cfg = config_with_embedded(port);
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let topic = unique("first-run");
    let mut sub = MqttClient::connect(port, &unique("watch"));
    sub.subscribe(&format!("{topic}/#"), 1);
    let mut s = Sensor::new(gw.addr);
    s.connect(&unique("s"), true, 60);
    let topic = format!("{topic}/temperature");
    let id = s.register(&topic, 1);
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, b"zero set-up", false);
    s.expect(Packet::PubAck(Ack { topic_id: id, msg_id: 2, return_code: ReturnCode::Accepted }));
    let m = sub.recv();
    assert_eq!((m.topic, m.payload), (topic, b"zero set-up".to_vec()));
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

#[test]
fn a_taken_port_is_reported_with_the_way_out() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config_with_embedded(port);
    let out = std::process::Command::new(gateway_binary())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--broker mqtt://127.0.0.1:{port}")), "{err}");
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

/// The gateway binary with its embedded broker on a free port: (gateway,
/// broker port, config file).
fn embedded_gateway() -> (GatewayProcess, u16, std::path::PathBuf) {
    let port = free_port();
    let cfg = config_with_embedded(port);
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    (gw, port, cfg)
}

#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    // MQTT 3.1.1, 3.8.4: a message goes to a subscriber at the lower of
    // its publish QoS and the subscription's maximum QoS.
    let (gw, port, cfg) = embedded_gateway();
    let base = unique("minqos");
    let mut publisher = MqttClient::connect(port, &unique("pub"));
    // An MQTT subscriber at QoS 2 on the embedded broker.
    let mut sub2 = MqttClient::connect(port, &unique("sub2"));
    sub2.subscribe(&format!("{base}/#"), 2);
    let mut sub0 = MqttClient::connect(port, &unique("sub0"));
    sub0.subscribe(&format!("{base}/#"), 0);
    for (pub_qos, at_sub2, at_sub0) in [(0u8, 0u8, 0u8), (1, 1, 0), (2, 2, 0)] {
        let topic = format!("{base}/q{pub_qos}");
        publisher.publish(&topic, format!("q{pub_qos}").as_bytes(), pub_qos, false);
        let m = sub2.recv();
        assert_eq!(
            (m.topic.as_str(), m.qos),
            (topic.as_str(), at_sub2),
            "QoS {pub_qos} to a QoS 2 subscriber"
        );
        let m = sub0.recv();
        assert_eq!(
            (m.topic.as_str(), m.qos),
            (topic.as_str(), at_sub0),
            "QoS {pub_qos} to a QoS 0 subscriber"
        );
    }
    // A sensor subscribed at QoS 2 through the gateway: a QoS 0 publish
    // arrives at QoS 0.
    let mut s = Sensor::new(gw.addr);
    s.connect(&unique("s"), true, 60);
    let topic = format!("{base}/to-sensor");
    let ack = s.subscribe(mqttsn_codec::TopicFilter::Name(topic.as_bytes()), QoS::ExactlyOnce, 1);
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    publisher.publish(&topic, b"at most once", 0, false);
    let p = s.next_publish();
    assert_eq!((p.qos, p.data.as_slice()), (QoS::AtMostOnce, &b"at most once"[..]));
    publisher.publish(&topic, b"at least once", 1, false);
    let p = s.next_publish();
    assert_eq!((p.qos, p.data.as_slice()), (QoS::AtLeastOnce, &b"at least once"[..]));
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

#[test]
fn retained_messages_and_persistent_sessions_on_the_embedded_broker() {
    let (_gw, port, cfg) = embedded_gateway();
    let base = unique("retain");
    let mut publisher = MqttClient::connect(port, &unique("pub"));
    // Retained: a later subscriber gets the last one, retain flag set, at
    // the lower QoS; a live message has the flag clear.
    let topic = format!("{base}/state");
    publisher.publish(&topic, b"first", 1, true);
    publisher.publish(&topic, b"last", 1, true);
    let mut late = MqttClient::connect(port, &unique("late"));
    late.subscribe(&topic, 0);
    let m = late.recv();
    assert_eq!((m.payload.as_slice(), m.retain, m.qos), (&b"last"[..], true, 0));
    publisher.publish(&topic, b"live", 1, false);
    let m = late.recv();
    assert_eq!((m.payload.as_slice(), m.retain), (&b"live"[..], false));
    let mut late2 = MqttClient::connect(port, &unique("late2"));
    publisher.publish(&format!("{base}/zero"), b"r0", 0, true);
    std::thread::sleep(std::time::Duration::from_millis(100));
    late2.subscribe(&format!("{base}/zero"), 2);
    let m = late2.recv();
    assert_eq!((m.payload.as_slice(), m.retain, m.qos), (&b"r0"[..], true, 0));
    // A persistent session (CleanSession false) keeps its subscription and
    // its QoS 1 and 2 messages while disconnected.
    let id = unique("keeper");
    let cmd = format!("{base}/cmd");
    let mut keeper = MqttClient::connect_with(port, &id, false, None, None).unwrap();
    keeper.subscribe(&cmd, 2);
    keeper.disconnect();
    publisher.publish(&cmd, b"kept 1", 1, false);
    publisher.publish(&cmd, b"kept 2", 2, false);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut keeper = MqttClient::connect_with(port, &id, false, None, None).unwrap();
    let got: Vec<(Vec<u8>, u8)> =
        (0..2).map(|_| keeper.recv()).map(|m| (m.payload, m.qos)).collect();
    assert_eq!(got, vec![(b"kept 1".to_vec(), 1), (b"kept 2".to_vec(), 2)]);
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}
