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
