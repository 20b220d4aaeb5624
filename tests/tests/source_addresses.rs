//! Transparent mode past one address's ephemeral ports: with
//! `broker.source_addresses` the broker connections are made from those
//! local addresses in turn, as mosquitto sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::sn::Sensor;

#[test]
fn broker_connections_come_from_each_source_address_in_turn() {
    let broker = Mosquitto::start_with("log_type notice");
    let dir = std::env::temp_dir().join(unique("sources"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[broker]\nurl = \"{}\"\nsource_addresses = [\"127.0.0.2\", \"127.0.0.3\"]\n",
            broker.url()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&["-c", &file.display().to_string(), "--listen", "127.0.0.1:0"]);
    let mut sensors = Vec::new();
    for i in 0..4 {
        let mut s = Sensor::new(gw.addr);
        s.connect(&unique(&format!("src{i}")), true, 60);
        sensors.push(s);
    }
    let log = broker.dir().join("mosquitto.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let from = |ip: &str| text.matches(&format!("New client connected from {ip}:")).count();
        if from("127.0.0.2") >= 2 && from("127.0.0.3") >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "connections not from both addresses:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_source_address_that_is_not_one_is_refused_by_name() {
    let dir = std::env::temp_dir().join(unique("sources-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "[broker]\nsource_addresses = [\"127.0.0.2\", \"gw.local\"]\n").unwrap();
    let out = std::process::Command::new(mqttsn_tests::gateway::gateway_binary())
        .args(["-c", &file.display().to_string(), "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.source_addresses[1]") && err.contains("not an IP address"),
        "{err}"
    );
}
