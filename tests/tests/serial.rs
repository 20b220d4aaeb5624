//! Serial sensor networks end to end: sensors on pseudo-terminal lines
//! that the gateway opens as its serial devices, against a real mosquitto.
//! The raw framing (mqtt-sn-tools' serial bridge) runs every flow of the
//! UDP tests: CONNECT, REGISTER, PUBLISH at QoS 0/1/2 both ways, SUBSCRIBE,
//! sleep and wake-up with buffered messages, a restart from the store;
//! SLIP and XBee API modes 1 and 2 connect, publish at QoS 1 and receive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqttsn_codec::serial::{Family, Framing, Radio};
use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicFilter, TopicId};
use mqttsn_gateway::server::ServerOptions;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::serial::Port;
use mqttsn_tests::sn::Sensor;

/// A gateway with these serial lines (and its UDP socket), and a store.
fn gateway(broker: &Mosquitto, lines: &[&Port], store: Option<PathBuf>) -> Gateway {
    let opts = ServerOptions {
        serial: lines.iter().map(|p| p.line()).collect(),
        store_path: store,
        ..ServerOptions::default()
    };
    Gateway::start_full(broker.port(), fast_config(), opts)
}

fn accepted(topic_id: u16, msg_id: u16) -> Packet<'static> {
    Packet::PubAck(Ack { topic_id, msg_id, return_code: ReturnCode::Accepted })
}

/// The broker's next message on the subscriber, as (topic, payload).
fn next(sub: &mut MqttClient) -> (String, Vec<u8>) {
    let m = sub.recv();
    (m.topic, m.payload)
}

/// Publishes at QoS 0, 1 and 2 from the sensor and checks the broker's
/// subscriber gets each.
fn publish_all_qos(s: &mut Sensor, sub: &mut MqttClient, topic: &str) {
    let t = s.register(topic, 1);
    s.publish(TopicId::Normal(t), QoS::AtMostOnce, 0, b"up0", false);
    assert_eq!(next(sub), (topic.to_owned(), b"up0".to_vec()));
    s.publish(TopicId::Normal(t), QoS::AtLeastOnce, 2, b"up1", false);
    s.expect(accepted(t, 2));
    assert_eq!(next(sub), (topic.to_owned(), b"up1".to_vec()));
    s.publish(TopicId::Normal(t), QoS::ExactlyOnce, 3, b"up2", false);
    s.expect(Packet::PubRec(3));
    s.send(Packet::PubRel(3));
    s.expect(Packet::PubComp(3));
    assert_eq!(next(sub), (topic.to_owned(), b"up2".to_vec()));
}

/// Answers a PUBLISH from the gateway as its QoS asks; returns its payload.
fn take(s: &mut Sensor) -> (QoS, Vec<u8>) {
    let p = s.next_publish();
    match p.qos {
        QoS::AtLeastOnce => s.send(accepted(p.topic.raw(), p.msg_id)),
        QoS::ExactlyOnce => {
            s.send(Packet::PubRec(p.msg_id));
            s.expect(Packet::PubRel(p.msg_id));
            s.send(Packet::PubComp(p.msg_id));
        }
        _ => {}
    }
    (p.qos, p.data)
}

/// Wakes the sleeping sensor (PINGREQ, with its ClientId or none) and
/// answers the flush; returns the payloads before PINGRESP.
fn wake(s: &mut Sensor, client_id: Option<&str>) -> Vec<Vec<u8>> {
    s.send(Packet::PingReq(client_id.map(str::as_bytes)));
    let mut got = Vec::new();
    loop {
        let d = s.recv();
        match Packet::decode(&d).unwrap() {
            Packet::PingResp => return got,
            Packet::Register(r) => s.send(Packet::RegAck(Ack {
                topic_id: r.topic_id,
                msg_id: r.msg_id,
                return_code: ReturnCode::Accepted,
            })),
            Packet::Publish(p) => {
                got.push(p.data.to_vec());
                match p.qos {
                    QoS::AtLeastOnce => s.send(accepted(p.topic.raw(), p.msg_id)),
                    QoS::ExactlyOnce => {
                        s.send(Packet::PubRec(p.msg_id));
                        s.expect(Packet::PubRel(p.msg_id));
                        s.send(Packet::PubComp(p.msg_id));
                    }
                    _ => {}
                }
            }
            other => panic!("unexpected in the flush: {other:?}"),
        }
    }
}

#[test]
fn raw_framing_connect_register_publish_and_subscribe_at_every_qos() {
    let broker = Mosquitto::start();
    let port = Port::open(Framing::Raw, None);
    let gw = gateway(&broker, &[&port], None);
    let base = unique("serial");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/up"), 2);
    let mut s = Sensor::serial(port);
    s.connect(&unique("raw"), true, 60);
    publish_all_qos(&mut s, &mut sub, &format!("{base}/up"));

    let down = format!("{base}/down");
    let ack = s.subscribe(TopicFilter::Name(down.as_bytes()), QoS::ExactlyOnce, 4);
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    for (qos, payload) in [(0u8, b"d0"), (1, b"d1"), (2, b"d2")] {
        publisher.publish(&down, payload, qos, false);
        let want = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(qos)];
        assert_eq!(take(&mut s), (want, payload.to_vec()));
    }
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    assert!(gw.metrics().malformed == 0, "every frame read");
}

#[test]
fn raw_framing_sleep_and_wake_with_buffered_messages() {
    let broker = Mosquitto::start();
    let port = Port::open(Framing::Raw, None);
    let _gw = gateway(&broker, &[&port], None);
    let base = unique("sleep");
    let id = unique("sleeper");
    let mut s = Sensor::serial(port);
    s.connect(&id, false, 60);
    let filter = format!("{base}/#");
    s.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::ExactlyOnce, 1);
    s.send(Packet::Disconnect(Some(60)));
    s.expect(Packet::Disconnect(None));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&format!("{base}/a"), b"q0", 0, false);
    publisher.publish(&format!("{base}/a"), b"q1", 1, false);
    publisher.publish(&format!("{base}/b"), b"q2", 2, false);
    s.expect_silence(Duration::from_millis(300));
    assert_eq!(wake(&mut s, Some(&id)), [b"q0".to_vec(), b"q1".to_vec(), b"q2".to_vec()]);
    // Nothing twice; a wake from the line's address alone works too.
    assert!(wake(&mut s, None).is_empty());
}

#[test]
fn raw_framing_a_restart_from_the_store_keeps_the_serial_sensors_session() {
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(unique("serial-store"));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("sessions.redb");
    let port = Port::open(Framing::Raw, None);
    let mut gw = gateway(&broker, &[&port], Some(store.clone()));
    let base = unique("restart");
    let id = unique("kept");
    let device = port.device();
    let mut s = Sensor::serial(port);
    s.connect(&id, false, 600);
    let topic = format!("{base}/t");
    s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    s.send(Packet::Disconnect(Some(600)));
    s.expect(Packet::Disconnect(None));
    gw.stop();
    // A gateway that stops tells its sensors, asleep or not.
    s.expect(Packet::Disconnect(None));
    // The store's writer thread lets go of the file just after the stop.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mqttsn_gateway::store::Store::open(&store).is_err() {
        assert!(Instant::now() < deadline, "the store stays open after the stop");
        std::thread::sleep(Duration::from_millis(10));
    }

    let line = mqttsn_gateway::serial::SerialLine { device, baud: 115_200, framing: Framing::Raw };
    let opts =
        ServerOptions { serial: vec![line], store_path: Some(store), ..ServerOptions::default() };
    let gw = Gateway::start_full(broker.port(), fast_config(), opts);
    if mqttsn_tests::mode::aggregating() {
        // The restored session subscribes again on its worker's pool, which
        // need not be the one it had (docs/aggregating.md): what is
        // published before that is not delivered to it.
        let m = gw.metrics_handle();
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.pool_subscriptions.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the restored subscription");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"after", 1, false);
    // The restarted gateway gets it once its upstream session is back; the
    // sensor wakes from the line's address alone, which the store kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = wake(&mut s, None);
        if got.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(got, [b"after".to_vec()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CONNECT, PUBLISH QoS 1 up, a QoS 1 message down, on `framing`.
fn connect_publish_receive(framing: Framing, radio: Option<Radio>) {
    let broker = Mosquitto::start();
    let port = Port::open(framing, radio);
    let gw = gateway(&broker, &[&port], None);
    let base = unique(framing.name());
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/up"), 1);
    let mut s = Sensor::serial(port);
    s.connect(&unique("s"), true, 60);
    let t = s.register(&format!("{base}/up"), 1);
    s.publish(TopicId::Normal(t), QoS::AtLeastOnce, 2, b"up", false);
    s.expect(accepted(t, 2));
    assert_eq!(next(&mut sub), (format!("{base}/up"), b"up".to_vec()));
    let down = format!("{base}/down");
    s.subscribe(TopicFilter::Name(down.as_bytes()), QoS::AtLeastOnce, 3);
    MqttClient::connect(broker.port(), &unique("pub")).publish(&down, b"down", 1, false);
    assert_eq!(take(&mut s), (QoS::AtLeastOnce, b"down".to_vec()));
    assert!(gw.metrics().malformed == 0, "every frame read");
}

#[test]
fn slip_framing_connect_publish_and_receive() {
    connect_publish_receive(Framing::Slip, None);
}

#[test]
fn xbee_api_mode_1_connect_publish_and_receive() {
    let addr = [0x00, 0x13, 0xA2, 0x00, 0x41, 0x7E, 0x11, 0x13];
    connect_publish_receive(Framing::XbeeApi1, Some(Radio { addr, family: Family::Packet }));
}

#[test]
fn xbee_api_mode_2_connect_publish_and_receive() {
    // Octets that mode 2 escapes, in the address.
    let addr = [0x00, 0x13, 0xA2, 0x00, 0x7D, 0x7E, 0x11, 0x13];
    connect_publish_receive(Framing::XbeeApi2, Some(Radio { addr, family: Family::Packet }));
}

#[test]
fn two_lines_at_once_and_a_legacy_radio_answered_in_kind() {
    let broker = Mosquitto::start();
    let a = Radio { addr: [0, 0x13, 0xA2, 0, 1, 2, 3, 4], family: Family::Packet };
    // RX 0x80 in, so TX 0x00 out: the port takes only frames to this radio
    // in this family.
    let b = Radio { addr: [0, 0x13, 0xA2, 0, 5, 6, 7, 8], family: Family::Legacy };
    let port_a = Port::open(Framing::XbeeApi2, Some(a));
    let port_b = Port::open(Framing::XbeeApi1, Some(b));
    let gw = gateway(&broker, &[&port_a, &port_b], None);
    let mut sa = Sensor::serial(port_a);
    let mut sb = Sensor::serial(port_b);
    let mut udp = Sensor::new(gw.addr());
    sa.connect(&unique("a"), true, 60);
    sb.connect(&unique("b"), true, 60);
    udp.connect(&unique("u"), true, 60);
    for s in [&mut sa, &mut sb, &mut udp] {
        s.send(Packet::PingReq(None));
        s.expect(Packet::PingResp);
    }
}

#[test]
fn mqttsn_dump_decodes_a_serial_line_in_each_framing() {
    use std::io::Read;
    let radio = Radio { addr: [0, 0x13, 0xA2, 0, 0x40, 0x52, 0x2B, 0xAA], family: Family::Packet };
    for framing in Framing::ALL {
        let port = Port::open(framing, framing.addressed().then_some(radio));
        let mut child = std::process::Command::new(mqttsn_tests::gateway::tools_binary())
            .arg("dump")
            .arg("--serial")
            .arg(port.device())
            .args(["--baud", "115200", "--framing", framing.name(), "--count", "2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn mqttsn dump");
        // Line noise first is skipped (SLIP would show it: it ends in the
        // frame's leading END, so it is a frame of its own).
        if framing != Framing::Slip {
            port.write_all(&[0x00]);
        }
        port.send(&[2, 0x16]);
        port.send(&[9, 0x0C, 0x20, 0, 1, 0, 2, b'h', b'i']);
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let out = rx.recv_timeout(Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        let out = out.expect("dump exits after --count messages");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{framing}: {out}");
        let from = if framing.addressed() {
            " serial radio 0013a20040522baa len="
        } else {
            " serial len="
        };
        assert!(lines[0].contains(&format!("{from}2 PINGREQ")), "{framing}: {}", lines[0]);
        assert!(lines[1].contains(&format!("{from}9 PUBLISH")), "{framing}: {}", lines[1]);
        assert!(lines[1].contains("hi"), "{framing}: {}", lines[1]);
    }
}
