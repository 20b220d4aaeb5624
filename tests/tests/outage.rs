//! The broker stopped and restarted under traffic: CONNECT gets CONNACK
//! congestion while it is down, sessions resume, and every message a sensor
//! got a PUBACK for reaches the subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Connect, Packet, Publish, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

#[test]
fn broker_restart_under_traffic_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(unique("persist"));
    std::fs::create_dir_all(&dir).unwrap();
    // mosquitto started as root drops to its own user: let it write here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut broker = Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\n",
        dir.display()
    ));
    let gw = Gateway::start(broker.port());
    let topic = unique("traffic");
    let sub_id = unique("sub");
    let mut sub =
        MqttClient::connect_with(broker.port(), &sub_id, false, None, None).expect("subscriber");
    sub.subscribe(&topic, 1);

    let mut s = Sensor::new(gw.addr());
    s.connect(&unique("s"), false, 60);
    let id = s.register(&topic, 1);
    let mut acked = BTreeSet::new();
    let total = 60u16;
    let mut stopped_at: Option<Instant> = None;
    for n in 1..=total {
        if n == 20 {
            broker.stop();
            stopped_at = Some(Instant::now());
        }
        let data = n.to_string();
        let mut dup = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        // Send, and send again with DUP until PUBACK (a sensor's retries).
        loop {
            s.send(Packet::Publish(Publish {
                dup,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: TopicId::Normal(id),
                msg_id: n,
                data: data.as_bytes(),
            }));
            let got = s.recv_within(Duration::from_millis(300));
            if got.as_deref().and_then(|d| Packet::decode(d).ok())
                == Some(Packet::PubAck(Ack {
                    topic_id: id,
                    msg_id: n,
                    return_code: ReturnCode::Accepted,
                }))
            {
                acked.insert(n);
                break;
            }
            assert!(Instant::now() < deadline, "message {n} never acknowledged");
            dup = true;
            if stopped_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
                stopped_at = None;
                // Down: a new sensor is told to try again later.
                let mut other = Sensor::new(gw.addr());
                other.send(Packet::Connect(Connect {
                    will: false,
                    clean_session: true,
                    protocol_id: 1,
                    duration: 60,
                    client_id: unique("late").as_bytes(),
                }));
                other.expect(Packet::ConnAck(ReturnCode::Congestion));
                broker.restart();
            }
        }
    }
    assert_eq!(acked.len(), usize::from(total));
    // The subscriber lost its connection with the broker; back with its
    // persistent session, it gets everything.
    let mut sub =
        MqttClient::connect_with(broker.port(), &sub_id, false, None, None).expect("subscriber");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < usize::from(total) && Instant::now() < deadline {
        if let Some(m) = sub.recv_within(Duration::from_millis(500)) {
            seen.insert(String::from_utf8(m.payload).unwrap().parse::<u16>().unwrap());
        }
    }
    // Messages delivered before the stop went to the first connection.
    let missing: Vec<u16> =
        acked.iter().copied().filter(|n| !seen.contains(n) && *n >= 20).collect();
    assert!(missing.is_empty(), "acknowledged to the sensor but lost: {missing:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
