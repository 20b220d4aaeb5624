//! A bounded load through the whole path: sensors over real UDP, the
//! gateway, mosquitto. Prints throughput and PUBACK latency. Run with
//! `cargo bench -p mqttsn-tests --bench gateway_load` (mosquitto needed).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use mqttsn_codec::{Packet, QoS, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::sn::Sensor;

const SENSORS: usize = 50;
const MESSAGES: u16 = 400;

fn main() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let addr = gw.addr();
    let started = Instant::now();
    let handles: Vec<_> = (0..SENSORS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = Sensor::new(addr);
                s.connect(&unique(&format!("load{i}")), true, 600);
                let id = s.register(&format!("load/{i}"), 1);
                let mut latencies = Vec::with_capacity(usize::from(MESSAGES));
                for n in 1..=MESSAGES {
                    let t = Instant::now();
                    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, n, b"21.5", false);
                    let d = s.recv();
                    assert!(matches!(Packet::decode(&d), Ok(Packet::PubAck(a)) if a.msg_id == n));
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{SENSORS} sensors x {MESSAGES} QoS 1 PUBLISH (one outstanding each): {} messages in {:.2} s = {:.0} msg/s; PUBACK latency p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        all[all.len() - 1],
    );
    let m = gw.metrics();
    println!(
        "gateway: {} datagrams in, {} out, {} dropped",
        m.datagrams_in, m.datagrams_out, m.dropped
    );

    // Memory of idle sessions: connect more sensors (each with its own
    // upstream MQTT connection) and compare the resident set.
    let _ = mqttsn_gateway::limits::raise_open_files();
    const IDLE: usize = 2000;
    let before = rss_kib();
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        // A bare socket (not `Sensor`, whose 64 KiB buffer would dominate).
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let id = unique(&format!("idle{i}"));
        let mut buf = [0u8; 64];
        let n = Packet::Connect(mqttsn_codec::Connect {
            will: false,
            clean_session: true,
            protocol_id: 1,
            duration: 600,
            client_id: id.as_bytes(),
        })
        .encode(&mut buf)
        .unwrap();
        sock.send_to(&buf[..n], addr).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[3, 5, 0], "CONNACK accepted");
        idle.push(sock);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib();
    println!(
        "{IDLE} idle sessions: resident set +{} KiB = {:.1} KiB per session \
         (gateway session and its upstream MQTT connection task)",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / IDLE as f64
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
