//! Admission under a flood, on real sockets and a real broker: a flood of
//! CONNECTs from one address (each would open a broker connection) is held
//! to that address's bounds, its CONNACKs to the reply budget, and the
//! sensors already connected, and new ones from other addresses, are
//! served throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicId};
use mqttsn_gateway::admission::{Limits, Rate};
use mqttsn_gateway::server::ServerOptions;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

const FLOOD: usize = 2000;

fn encode(p: Packet<'_>) -> Vec<u8> {
    let mut b = [0u8; 256];
    let n = p.encode(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn a_connect_flood_from_one_address_is_bounded_and_sensors_are_served_throughout() {
    let broker = Mosquitto::start();
    // Loopback stands in for the network: nothing is exempt here, and
    // 127.0.0.2 (the flood), .3 and .4 (sensors) are three addresses.
    let admission = Limits {
        sessions_per_source: Some(20),
        connect_per_source: Some(Rate { per_sec: 50.0, burst: 100 }),
        connect: Some(Rate { per_sec: 1000.0, burst: 2000 }),
        connecting: Some(500),
        reply_per_source: Some(Rate { per_sec: 10.0, burst: 20 }),
        reply: Some(Rate { per_sec: 1000.0, burst: 2000 }),
        ..Limits::default()
    };
    let gw = Gateway::start_full(
        broker.port(),
        fast_config(),
        ServerOptions { admission, ..ServerOptions::default() },
    );
    let topic = unique("flood");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{topic}/#"), 1);
    let to: SocketAddr = ([127, 0, 0, 1], gw.addr().port()).into();
    let mut real = Sensor::bound("127.0.0.3:0".parse().unwrap(), to);
    real.connect(&unique("real"), true, 60);
    let tid = real.register(&format!("{topic}/real"), 1);

    let flood = UdpSocket::bind("127.0.0.2:0").unwrap();
    flood.set_nonblocking(true).unwrap();
    let started = Instant::now();
    let mut replies = 0usize;
    let mut buf = [0u8; 64];
    for i in 0..FLOOD {
        let id = format!("spoof-{i}");
        let c = Connect {
            will: false,
            clean_session: true,
            protocol_id: 1,
            duration: 60,
            client_id: id.as_bytes(),
        };
        flood.send_to(&encode(Packet::Connect(c)), to).unwrap();
        while flood.recv_from(&mut buf).is_ok() {
            replies += 1;
        }
        if i % 50 == 49 {
            // Paced so that the kernel's receive buffer takes it all: the
            // gateway has read what was sent (the real sensor's CONNECT,
            // REGISTER and PUBLISHes included) before more is sent.
            let sent = (i + 1) as u64 + 2 + (i / 200) as u64;
            let deadline = Instant::now() + Duration::from_secs(5);
            while gw.metrics().datagrams_in < sent && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if i % 200 == 199 {
            // The connected sensor is served in the middle of the flood.
            let msg_id = 2 + (i / 200) as u16;
            real.publish(TopicId::Normal(tid), QoS::AtLeastOnce, msg_id, b"x", false);
            real.expect(Packet::PubAck(Ack {
                topic_id: tid,
                msg_id,
                return_code: ReturnCode::Accepted,
            }));
            assert_eq!(watcher.recv().payload, b"x");
        }
    }
    // A new sensor from another address is admitted at once.
    let mut late = Sensor::bound("127.0.0.4:0".parse().unwrap(), to);
    late.connect(&unique("late"), true, 60);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    while flood.recv_from(&mut buf).is_ok() {
        replies += 1;
    }
    let m = gw.metrics();
    // At most 20 sessions for the flooding address: everything else
    // refused, and counted.
    assert_eq!(m.datagrams_in, (FLOOD + 13) as u64, "{m:?}");
    assert_eq!(m.admission_refused, (FLOOD - 20) as u64, "{m:?}");
    assert!(m.sessions_active <= 22, "{m:?}");
    // Replies to it: the 20 accepted CONNACKs, and refusals within the
    // reply budget (a burst of 20, 10 a second).
    let budget = 20 + 20 + (elapsed.as_secs_f64() * 10.0).ceil() as usize + 10;
    assert!(replies <= budget, "{replies} replies in {elapsed:?}, budget {budget}");
    assert!(m.replies_suppressed > 0, "{m:?}");
    assert!(replies >= 20, "{replies}");
}
