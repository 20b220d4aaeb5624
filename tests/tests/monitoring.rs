//! Monitoring: the Prometheus endpoint and the key figures published on the
//! broker, both read after real traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn prometheus_endpoint_and_broker_topics_show_the_traffic() {
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(unique("mon"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    let prefix = unique("gwsys");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"{}\"\n\
             [monitoring]\nsys_interval_secs = 1\nsys_prefix = \"{prefix}\"\n",
            broker.url()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let metrics = gw.metrics.expect("metrics address logged");

    let mut s = Sensor::new(gw.addr);
    s.connect(&unique("s"), true, 60);
    let topic = unique("t");
    let id = s.register(&topic, 1);
    for msg_id in 2..5 {
        s.publish(TopicId::Normal(id), QoS::AtLeastOnce, msg_id, b"x", false);
        s.expect(Packet::PubAck(Ack { topic_id: id, msg_id, return_code: ReturnCode::Accepted }));
    }
    s.send_raw(&[0x05, 0x0e, 0x00]);
    std::thread::sleep(Duration::from_millis(1200));

    let page = scrape(metrics, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(value(&page, "mqttsn_sensors{state=\"connected\"}"), Some(1.0), "{page}");
    assert_eq!(
        value(&page, "mqttsn_messages_total{direction=\"sensor_to_broker\",qos=\"1\"}"),
        Some(3.0)
    );
    assert_eq!(value(&page, "mqttsn_malformed_datagrams_total"), Some(1.0));
    assert_eq!(value(&page, "mqttsn_publish_latency_seconds_count"), Some(3.0));
    assert!(value(&page, "mqttsn_datagrams_total{direction=\"in\"}").unwrap() >= 6.0);
    assert!(value(&page, "mqttsn_upstream_connects_total").unwrap() >= 1.0);
    assert!(scrape(metrics, "/nothing").starts_with("HTTP/1.1 404"));

    // The same figures, retained on the broker.
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{prefix}/#"), 0);
    let mut seen = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 12 && std::time::Instant::now() < deadline {
        if let Some(m) = watcher.recv_within(Duration::from_millis(500)) {
            seen.insert(m.topic, String::from_utf8(m.payload).unwrap());
        }
    }
    assert_eq!(seen.get(&format!("{prefix}/sensors/connected")).map(String::as_str), Some("1"));
    assert_eq!(seen.get(&format!("{prefix}/datagrams/malformed")).map(String::as_str), Some("1"));
    assert!(seen.contains_key(&format!("{prefix}/uptime")), "{seen:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
