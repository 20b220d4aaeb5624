//! Per-sensor credentials: the gateway supplies each sensor's upstream
//! identity from its table, pins ClientIds to source networks, and refuses
//! unknown ClientIds when told to. The broker is a mosquitto with a
//! password file and an ACL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicId};
use mqttsn_gateway::auth::{AuthTable, ClientEntry, Identity};
use mqttsn_gateway::server::ServerOptions;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

/// A mosquitto that knows admin, alice and bob, each writing only under
/// their own name (admin everywhere).
fn secured_broker() -> Mosquitto {
    let dir = std::env::temp_dir().join(unique("auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = dir.join("passwd");
    for (i, (user, pass)) in
        [("admin", "admin-pw"), ("alice", "alice-pw"), ("bob", "bob-pw")].iter().enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd.arg("-b").arg(&passwd).args([user, pass]).status().unwrap_or_else(|e| {
            panic!("mosquitto_passwd is required ({e}); scripts/test installs mosquitto")
        });
        assert!(status.success());
    }
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user admin\ntopic readwrite #\nuser alice\ntopic readwrite alice/#\n\
         user bob\ntopic readwrite bob/#\n",
    )
    .unwrap();
    Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ))
}

fn user(name: &str, password: &str, pins: &[&str]) -> ClientEntry {
    ClientEntry {
        identity: Identity {
            username: Some(name.into()),
            password: Some(Bytes::from(password.to_owned())),
            client_cert: None,
        },
        allow_from: pins.iter().map(|p| p.parse().unwrap()).collect(),
        dtls: false,
    }
}

fn connect(s: &mut Sensor, id: &str) -> Packet<'static> {
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: id.as_bytes(),
    }));
    let d = s.recv();
    match Packet::decode(&d).unwrap() {
        Packet::ConnAck(rc) => Packet::ConnAck(rc),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sensors_arrive_upstream_as_their_own_users_and_pins_hold() {
    let broker = secured_broker();
    let mut table = AuthTable::default();
    table.insert("sensor-alice", user("alice", "alice-pw", &[]));
    table.insert("sensor-bob", user("bob", "bob-pw", &["127.0.0.0/8"]));
    table.insert("sensor-pinned", user("alice", "alice-pw", &["10.0.0.0/8"]));
    table.insert("sensor-badpw", user("alice", "wrong", &[]));
    let opts = ServerOptions { auth: Arc::new(table), ..ServerOptions::default() };
    let gw = Gateway::start_full(broker.port(), fast_config(), opts);
    let mut admin = MqttClient::connect_with(
        broker.port(),
        &unique("admin"),
        true,
        None,
        Some(("admin", "admin-pw")),
    )
    .unwrap();
    admin.subscribe("#", 1);

    // Unknown ClientIds are refused (the policy here), and so is a pinned
    // ClientId from outside its network.
    let mut s = Sensor::new(gw.addr());
    assert_eq!(connect(&mut s, "stranger"), Packet::ConnAck(ReturnCode::NotSupported));
    assert_eq!(connect(&mut s, "sensor-pinned"), Packet::ConnAck(ReturnCode::NotSupported));
    // A wrong password is refused by the broker.
    assert_eq!(connect(&mut s, "sensor-badpw"), Packet::ConnAck(ReturnCode::NotSupported));

    // alice and bob, each with their own identity upstream.
    let mut alice = Sensor::new(gw.addr());
    assert_eq!(connect(&mut alice, "sensor-alice"), Packet::ConnAck(ReturnCode::Accepted));
    let mut bob = Sensor::new(gw.addr());
    assert_eq!(connect(&mut bob, "sensor-bob"), Packet::ConnAck(ReturnCode::Accepted));
    let publish = |s: &mut Sensor, topic: &str, data: &[u8]| {
        let id = s.register(topic, 1);
        s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, data, false);
        s.expect(Packet::PubAck(Ack {
            topic_id: id,
            msg_id: 2,
            return_code: ReturnCode::Accepted,
        }));
    };
    publish(&mut alice, "bob/x", b"alice writing as bob");
    publish(&mut alice, "alice/x", b"from alice");
    publish(&mut bob, "bob/x", b"from bob");
    let mut got = [admin.recv(), admin.recv()];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!((got[0].topic.as_str(), got[0].payload.as_slice()), ("alice/x", &b"from alice"[..]));
    assert_eq!((got[1].topic.as_str(), got[1].payload.as_slice()), ("bob/x", &b"from bob"[..]));
    assert!(
        admin.recv_within(Duration::from_millis(300)).is_none(),
        "the ACL let alice write bob/x"
    );
}
