//! In aggregating mode the sessions hold no descriptor: with an open files
//! limit that gives transparent mode 64 sessions (`descriptors.rs`), the
//! gateway binary in aggregating mode takes more sensors than the limit
//! allows descriptors, and serves them all.
//!
//! One test in its own binary: it lowers this process's open files limit,
//! which the gateway inherits. (The binary's name starts with
//! `aggregating`, so the harness starts the gateway in aggregating mode.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{Packet, QoS, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

const LIMIT: usize = 128;
/// More sensors than the limit leaves transparent mode (LIMIT - 64), and
/// more than the limit itself less the test's own descriptors.
const SENSORS: usize = 96;

#[test]
fn sessions_take_no_descriptor_in_aggregating_mode() {
    assert!(mqttsn_tests::mode::aggregating());
    let broker = Mosquitto::start();
    let topic = unique("fd-agg");
    let mut watcher = MqttClient::connect(broker.port(), &unique("w"));
    watcher.subscribe(&format!("{topic}/#"), 1);
    mqttsn_tests::gateway::lower_open_files(LIMIT);
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &broker.url()]);
    let mut sensors = Vec::new();
    for i in 0..SENSORS {
        let mut s = Sensor::new(gw.addr);
        s.connect(&unique(&format!("fa{i}")), true, 60);
        sensors.push(s);
    }
    for (i, s) in sensors.iter_mut().enumerate() {
        let id = s.register(&format!("{topic}/{i}"), 1);
        s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, b"x", false);
        s.expect_where("PUBACK", |p| matches!(p, Packet::PubAck(_)));
    }
    for _ in 0..SENSORS {
        watcher.recv_within(std::time::Duration::from_secs(5)).expect("every sensor's message");
    }
}
