//! `mqttsn relay` end to end: sensors (the client crate's std adapter,
//! which retries as MQTT-SN does: Tretry, Nretry) through the relay at
//! 20 % loss with duplication and reordering in both directions, fixed
//! seeds, to the gateway and mosquitto. QoS 1 arrives at least once, QoS 2
//! exactly once both ways (sensor to broker, broker to sensor), and a
//! sleeping sensor gets everything buffered for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqttsn_client::std_udp::UdpClient;
use mqttsn_client::{QoS, Settings, Topic, TopicFilter};
use mqttsn_gateway::session::SessionConfig;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, tools_binary, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;

/// Every wait of a test; the runs take a few seconds.
const WAIT: Duration = Duration::from_secs(20);

/// The impairment of every test, both directions; the hold is longer
/// than Tretry, so that a sensor's retransmission can overtake the
/// original.
const IMPAIRED: &[&str] = &[
    "--loss",
    "20%",
    "--duplicate",
    "10%",
    "--reorder",
    "10%",
    "--reorder-hold",
    "250",
    "--delay",
    "2",
    "--jitter",
    "2",
];

/// Tretry 150 ms and enough retries that a run of losses at 20 % in both
/// directions never exhausts them.
fn settings() -> Settings {
    Settings { retry_ms: 150, max_retries: 15, ..Settings::default() }
}

/// The gateway's side of the same: its retransmissions to the sensor.
fn gateway(broker: &Mosquitto) -> Gateway {
    let cfg = SessionConfig {
        retry_interval: Duration::from_millis(150),
        max_retries: 15,
        ..fast_config()
    };
    Gateway::start_with(broker.port(), cfg)
}

/// The relay's counters of one direction, from its summary.
type Counters = BTreeMap<String, u64>;

/// `mqttsn relay` as a process, stopped with SIGTERM (by its PID).
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Relay {
    fn start(gateway: SocketAddr, seed: u64) -> Self {
        Self::start_with(gateway, seed, IMPAIRED)
    }

    fn start_with(gateway: SocketAddr, seed: u64, impairment: &[&str]) -> Self {
        let mut child = Command::new(tools_binary())
            .args(["relay", "--listen", "127.0.0.1:0", "--to", &gateway.to_string()])
            .args(impairment)
            .args(["--seed", &seed.to_string(), "--duration", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mqttsn relay");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("relay: {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("the relay's ready line");
            if let Some(rest) = line.strip_prefix("relaying udp://") {
                break rest.split(' ').next().unwrap().parse().unwrap();
            }
        };
        Self { child, addr }
    }

    /// SIGTERM, then the summary: (up, down).
    fn stop(mut self) -> (Counters, Counters) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the relay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        eprintln!("relay summary:\n{out}");
        let side = |name: &str| -> Counters {
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} line in {out}"));
            line.split(' ')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.parse().unwrap())
                })
                .collect()
        };
        (side("up"), side("down"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both directions were impaired: losses and duplicates in each, and
/// datagrams overtaken.
fn check_impaired((up, down): &(Counters, Counters)) {
    for (name, c) in [("up", up), ("down", down)] {
        assert!(c["dropped"] > 0 && c["duplicated"] > 0, "{name}: {c:?}");
        assert_eq!(
            c["received"] - c["dropped"] - c["partitioned"] - c["overflow"] + c["duplicated"],
            c["forwarded"] + c["pending"]
        );
    }
    assert!(up["reordered"] + down["reordered"] > 0, "{up:?} {down:?}");
}

/// Publishes `n` messages at `qos` through the relay; returns the
/// payloads the subscriber on the broker received, with how many times.
fn publish_through(qos: QoS, sub_qos: u8, seed: u64, n: u32) -> BTreeMap<Vec<u8>, u32> {
    let broker = Mosquitto::start();
    let gw = gateway(&broker);
    let relay = Relay::start(gw.addr(), seed);
    let topic = unique("relayed");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&topic, sub_qos);
    let mut c: UdpClient = UdpClient::new(relay.addr, &unique("s"), settings()).unwrap();
    c.connect(true, 60, None, WAIT).unwrap();
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("m{i}").into_bytes()).collect();
    for p in &payloads {
        c.publish(Topic::Name(&topic), p, qos, false, WAIT).unwrap();
    }
    // Everything acknowledged; what the broker delivers, then a moment
    // for any copy that would come late.
    let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while payloads.iter().any(|p| !got.contains_key(p)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = sub.recv_within(left).expect("every message on the broker within the wait");
        *got.entry(m.payload).or_default() += 1;
    }
    while let Some(m) = sub.recv_within(Duration::from_millis(500)) {
        *got.entry(m.payload).or_default() += 1;
    }
    check_impaired(&relay.stop());
    assert_eq!(got.len(), payloads.len(), "only what was sent: {got:?}");
    got
}

#[test]
fn qos_1_publishes_through_a_lossy_relay_all_arrive() {
    let got = publish_through(QoS::AtLeastOnce, 1, 1, 20);
    assert!(got.values().all(|n| *n >= 1));
}

#[test]
fn qos_2_publishes_through_a_lossy_relay_arrive_exactly_once() {
    let got = publish_through(QoS::ExactlyOnce, 2, 2, 20);
    let more: Vec<_> = got.iter().filter(|(_, n)| **n != 1).collect();
    assert!(more.is_empty(), "delivered more than once: {more:?}");
}

#[test]
fn qos_2_messages_to_a_sensor_through_a_lossy_relay_arrive_exactly_once() {
    // The other direction: the gateway's retransmissions (DUP) overtake
    // the held-back originals, which arrive after PUBREL.
    let broker = Mosquitto::start();
    let gw = gateway(&broker);
    let relay = Relay::start(gw.addr(), 5);
    let topic = unique("to-sensor");
    let mut c: UdpClient = UdpClient::new(relay.addr, &unique("s"), settings()).unwrap();
    c.connect(true, 60, None, WAIT).unwrap();
    c.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::ExactlyOnce, WAIT).unwrap();
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let sent: Vec<Vec<u8>> = (0..20).map(|i| format!("d{i}").into_bytes()).collect();
    for p in &sent {
        publisher.publish(&topic, p, 2, false);
    }
    let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while sent.iter().any(|p| !got.contains_key(p)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "still missing: {got:?}");
        if let Some(m) = c.next_message(left).unwrap() {
            *got.entry(m.payload).or_default() += 1;
        }
    }
    // A moment for any copy that would come late.
    let quiet = Instant::now() + Duration::from_millis(800);
    while let Some(m) = c.next_message(quiet.saturating_duration_since(Instant::now())).unwrap() {
        *got.entry(m.payload).or_default() += 1;
    }
    check_impaired(&relay.stop());
    assert_eq!(got.len(), sent.len(), "only what was sent: {got:?}");
    let more: Vec<_> = got.iter().filter(|(_, n)| **n != 1).collect();
    assert!(more.is_empty(), "delivered more than once: {more:?}");
}

#[test]
fn a_sleeping_sensor_behind_a_lossy_relay_gets_all_its_buffered_messages() {
    let broker = Mosquitto::start();
    let gw = gateway(&broker);
    let relay = Relay::start(gw.addr(), 3);
    let topic = unique("sleeper");
    let mut c: UdpClient = UdpClient::new(relay.addr, &unique("s"), settings()).unwrap();
    c.connect(false, 60, None, WAIT).unwrap();
    let filter = format!("{topic}/#");
    c.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::ExactlyOnce, WAIT).unwrap();
    c.sleep(60, WAIT).unwrap();
    assert!(c.client.is_asleep());

    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let sent: Vec<(String, Vec<u8>, u8)> = (0..12)
        .map(|i| (format!("{topic}/{}", i % 3), format!("w{i}").into_bytes(), 1 + (i % 2)))
        .collect();
    for (t, p, q) in &sent {
        publisher.publish(t, p, *q, false);
    }
    // All buffered by the gateway before the sensor wakes.
    let deadline = Instant::now() + WAIT;
    while gw.metrics().buffered_messages < sent.len() as u64 {
        assert!(Instant::now() < deadline, "not buffered: {:?}", gw.metrics().buffered_messages);
        std::thread::sleep(Duration::from_millis(10));
    }

    // PINGREQ (retransmitted until PINGRESP) and everything flushed before
    // it; again while something is missing.
    let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    let mut wakes = 0;
    while sent.iter().any(|(_, p, _)| !got.contains_key(p)) {
        assert!(Instant::now() < deadline, "still missing after {wakes} wake-ups: {got:?}");
        wakes += 1;
        for m in c.wake(WAIT).unwrap() {
            assert!(m.topic.starts_with(&topic), "{}", m.topic);
            *got.entry(m.payload).or_default() += 1;
        }
        assert!(c.client.is_asleep());
    }
    // Nothing more comes on a further wake-up than late copies of QoS 1.
    for m in c.wake(WAIT).unwrap() {
        *got.entry(m.payload).or_default() += 1;
    }
    let counters = relay.stop();
    check_impaired(&counters);
    let expected: BTreeSet<Vec<u8>> = sent.iter().map(|(_, p, _)| p.clone()).collect();
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (_, p, q) in &sent {
        if *q == 2 {
            assert_eq!(got[p], 1, "QoS 2 {:?} more than once", String::from_utf8_lossy(p));
        }
    }
}

#[test]
fn a_sensor_retries_across_a_partition() {
    let broker = Mosquitto::start();
    let gw = gateway(&broker);
    // Cut both ways from 0.8 s to 1.6 s after the start; Tretry x Nretry
    // (2.25 s) outlasts it.
    let relay = Relay::start_with(gw.addr(), 4, &["--loss", "10%", "--partition", "0.8+0.8"]);
    let topic = unique("partition");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&topic, 1);
    let mut c: UdpClient = UdpClient::new(relay.addr, &unique("s"), settings()).unwrap();
    c.connect(true, 60, None, WAIT).unwrap();
    let start = Instant::now();
    let mut sent = Vec::new();
    // One every 100 ms until well past the partition.
    while start.elapsed() < Duration::from_millis(2_200) {
        let p = format!("p{}", sent.len()).into_bytes();
        c.publish(Topic::Name(&topic), &p, QoS::AtLeastOnce, false, WAIT).unwrap();
        sent.push(p);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while sent.iter().any(|p| !got.contains(p)) {
        let left = deadline.saturating_duration_since(Instant::now());
        got.insert(sub.recv_within(left).expect("every message within the wait").payload);
    }
    let (up, down) = relay.stop();
    assert!(up["partitioned"] > 0 && down["partitioned"] + up["partitioned"] > 1, "{up:?}");
}
