//! `mqtts://` toward the broker: the gateway (the binary, configured by
//! file) verifies mosquitto's certificate against a CA file and presents a
//! client certificate; mosquitto requires it and takes its CN as the user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::openssl::openssl;
use mqttsn_tests::sn::Sensor;

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    make_certs_with(dir, &["client"]);
}

/// A CA, a server certificate, and client certificates whose CN is their
/// name.
fn make_certs_with(dir: &Path, clients: &[&str]) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=mqttsn-test-ca"]);
    openssl(dir, &ca);
    // Extensions make v3 certificates, which webpki requires.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let mut names = vec![("server", "127.0.0.1")];
    names.extend(clients.iter().map(|c| (*c, if *c == "client" { "gateway-user" } else { c })));
    for (name, cn) in names {
        let mut req = vec!["req"];
        req.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={cn}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let crt = format!("{name}.crt");
        let mut sign = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
        ];
        let ext = if name == "server" { "server.ext".to_owned() } else { "client.ext".to_owned() };
        sign.extend(["-extfile", &ext]);
        openssl(dir, &sign);
    }
    // mosquitto started as root drops to its own user: let it read them.
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
}

#[test]
fn mqtts_with_a_client_certificate() {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    // The harness's own listener stays plain (for the test's subscriber);
    // the TLS listener requires a client certificate.
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n\
         keyfile {d}/server.key\nrequire_certificate true\nuse_identity_as_username true\n"
    ));
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\n\
             ca_file = \"{d}/ca.crt\"\ncert_file = \"{d}/client.crt\"\nkey_file = \"{d}/client.key\"\n"
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let topic = unique("tls");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&topic, 1);
    let mut s = Sensor::new(gw.addr);
    s.connect(&unique("s"), true, 60);
    let id = s.register(&topic, 1);
    s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, b"over TLS", false);
    s.expect(Packet::PubAck(Ack { topic_id: id, msg_id: 2, return_code: ReturnCode::Accepted }));
    assert_eq!(sub.recv().payload, b"over TLS");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused() {
    let dir = std::env::temp_dir().join(unique("tls-bad"));
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&dir);
    make_certs(&other);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    let _broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
    ));
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\n\
             ca_file = \"{}/ca.crt\"\n",
            other.display()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let mut s = Sensor::new(gw.addr);
    s.send(Packet::Connect(mqttsn_codec::Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: unique("s").as_bytes(),
    }));
    // The broker cannot be verified: try later.
    s.expect(Packet::ConnAck(ReturnCode::Congestion));
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn each_sensor_arrives_with_its_own_client_certificate() {
    let dir = std::env::temp_dir().join(unique("tls-users"));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs_with(&dir, &["client", "sensor-a", "sensor-b"]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    std::fs::write(
        dir.join("acl"),
        "topic read #\nuser sensor-a\ntopic readwrite a/#\nuser sensor-b\ntopic readwrite b/#\n\
         user gateway-user\ntopic readwrite #\n",
    )
    .unwrap();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n\
         keyfile {d}/server.key\nrequire_certificate true\nuse_identity_as_username true\n\
         acl_file {d}/acl\n"
    ));
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"mqtts://127.0.0.1:{tls_port}\"\n\
             ca_file = \"{d}/ca.crt\"\ncert_file = \"{d}/client.crt\"\nkey_file = \"{d}/client.key\"\n\
             [[clients]]\nclient_id = \"a\"\ncert_file = \"{d}/sensor-a.crt\"\nkey_file = \"{d}/sensor-a.key\"\n\
             [[clients]]\nclient_id = \"b\"\ncert_file = \"{d}/sensor-b.crt\"\nkey_file = \"{d}/sensor-b.key\"\n"
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe("#", 1);
    let publish = |client: &str, topic: &str| {
        let mut s = Sensor::new(gw.addr);
        s.connect(client, true, 60);
        let id = s.register(topic, 1);
        s.publish(TopicId::Normal(id), QoS::AtLeastOnce, 2, client.as_bytes(), false);
        s.expect(Packet::PubAck(Ack {
            topic_id: id,
            msg_id: 2,
            return_code: ReturnCode::Accepted,
        }));
    };
    // Each may write only its own tree: the broker saw two users.
    publish("a", "b/x");
    publish("a", "a/x");
    publish("b", "b/x");
    let mut got: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(m) = sub.recv_within(std::time::Duration::from_millis(500)) {
        if m.topic.starts_with("a/") || m.topic.starts_with("b/") {
            got.push((m.topic, m.payload));
        }
    }
    got.sort();
    assert_eq!(got, [("a/x".to_owned(), b"a".to_vec()), ("b/x".to_owned(), b"b".to_vec())]);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
