//! MQTT-SN over DTLS, end to end: DTLS 1.2 with DTLS implementations not
//! written here, OpenSSL's `s_client` (PSK, and certificates both ways)
//! and GnuTLS's `gnutls-cli` (PSK), each carrying real MQTT-SN frames
//! through the gateway binary to a real mosquitto; DTLS 1.3 with the
//! project's own tools (neither OpenSSL 3.0 nor GnuTLS here speaks DTLS
//! 1.3).
//!
//! The DTLS client runs as a process; a small bridge gives it a UDP face
//! on 127.0.0.1, so the test's raw sensor (`Sensor`) speaks through it:
//! each datagram the sensor sends is written to the client's stdin (one
//! read, one DTLS record), and the frames it prints are sent back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqttsn_codec::{Connect, Packet, QoS, ReturnCode, TopicFilter, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::openssl::openssl;
use mqttsn_tests::sn::Sensor;

const KEY: &str = "00112233445566778899aabbccddeeff";

/// A DTLS client process with a UDP face.
struct Bridge {
    addr: SocketAddr,
    child: Arc<Mutex<Child>>,
    stop: Arc<AtomicBool>,
}

impl Bridge {
    /// Runs `cmd`; `marker` is the text its stdout prints before the data
    /// (empty: none).
    fn start(mut cmd: Command, marker: &'static str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} runs: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sensor: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let back = sock.try_clone().unwrap();
        let (to, s) = (sensor.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    *to.lock().unwrap() = Some(from);
                    if stdin.write_all(&buf[..n]).and_then(|()| stdin.flush()).is_err() {
                        break;
                    }
                    // One write, one read by the client, one record.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            let mut started = marker.is_empty();
            let mut buf = [0u8; 2048];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                if !started {
                    let Some(at) = find(&pending, marker.as_bytes()) else { continue };
                    pending.drain(..at + marker.len());
                    started = true;
                }
                while let Some(len) = frame_len(&pending) {
                    let frame: Vec<u8> = pending.drain(..len).collect();
                    if let Some(s) = *sensor.lock().unwrap() {
                        let _ = back.send_to(&frame, s);
                    }
                }
            }
        });
        Self { addr, child: Arc::new(Mutex::new(child)), stop }
    }

    /// `openssl s_client -dtls1_2` with these arguments.
    fn openssl(to: SocketAddr, args: &[&str]) -> Self {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-dtls1_2", "-quiet", "-connect", &to.to_string()]).args(args);
        Self::start(cmd, "")
    }

    /// `openssl s_client` with a PSK.
    fn openssl_psk(to: SocketAddr, identity: &str, key: &str) -> Self {
        Self::openssl(to, &["-psk", key, "-psk_identity", identity, "-cipher", "PSK-AES128-CCM8"])
    }

    /// Whether the client process is still running.
    fn running(&self) -> bool {
        self.child.lock().unwrap().try_wait().ok().flatten().is_none()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the MQTT-SN frame at the front of `b`, if it is all there.
fn frame_len(b: &[u8]) -> Option<usize> {
    let len = match *b.first()? {
        0x01 => usize::from(u16::from_be_bytes([*b.get(1)?, *b.get(2)?])),
        n => usize::from(n),
    };
    (len >= 2 && b.len() >= len).then_some(len)
}

/// Certificates made with openssl for one test: a server certificate
/// (self-signed, EC P-256) and a client one.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Self {
        for name in ["server", "client", "stranger"] {
            let (key, crt, subj) =
                (format!("{name}.key"), format!("{name}.crt"), format!("/CN={name}"));
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &subj,
                    "-keyout",
                    &key,
                    "-out",
                    &crt,
                ],
            );
        }
        Self { dir: dir.to_path_buf() }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The SHA-256 fingerprint of `name`.crt, as openssl prints it.
    fn fingerprint(&self, name: &str) -> String {
        let crt = format!("{name}.crt");
        let text = openssl(&self.dir, &["x509", "-noout", "-fingerprint", "-sha256", "-in", &crt]);
        text.trim().rsplit('=').next().unwrap().to_owned()
    }
}

/// The gateway binary with this much of a configuration file (beside
/// `[gateway]`, `[broker]` and the DTLS listener's address).
fn gateway(broker: &Mosquitto, dir: &Path, extra: &str) -> GatewayProcess {
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!("[broker]\nurl = \"{}\"\n[dtls]\nlisten = \"127.0.0.1:0\"\n{extra}", broker.url()),
    )
    .unwrap();
    let file = file.display().to_string();
    let gw = GatewayProcess::spawn(&["-c", &file, "--listen", "127.0.0.1:0"]);
    assert!(gw.dtls.is_some(), "the DTLS listener runs");
    gw
}

fn psk_clients(ids: &[&str]) -> String {
    ids.iter().map(|id| format!("[[clients]]\nclient_id = \"{id}\"\npsk = \"{KEY}\"\n")).collect()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn connect(s: &mut Sensor, id: &str, clean: bool) -> ReturnCode {
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: clean,
        protocol_id: 1,
        duration: 60,
        client_id: id.as_bytes(),
    }));
    let d = s.expect_where("CONNACK", |p| matches!(p, Packet::ConnAck(_)));
    match Packet::decode(&d) {
        Ok(Packet::ConnAck(rc)) => rc,
        other => panic!("{other:?}"),
    }
}

/// A sensor publishes at QoS 1 and receives what the broker sends it.
fn publish_and_receive(s: &mut Sensor, broker: &Mosquitto, id: &str) {
    let topic = unique("dtls/t");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{topic}/up"), 1);
    let up = s.register(&format!("{topic}/up"), 1);
    s.publish(TopicId::Normal(up), QoS::AtLeastOnce, 2, b"over dtls", false);
    s.expect_where("PUBACK", |p| matches!(p, Packet::PubAck(a) if a.msg_id == 2));
    let m = sub.recv();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        (format!("{topic}/up").as_str(), &b"over dtls"[..])
    );
    let down = format!("{topic}/down");
    let ack = s.subscribe(TopicFilter::Name(down.as_bytes()), QoS::AtLeastOnce, 3);
    assert_eq!(ack.return_code, ReturnCode::Accepted, "{id} subscribes");
    sub.publish(&down, b"to the sensor", 1, false);
    let p = s.next_publish();
    assert_eq!(p.data, b"to the sensor");
}

#[test]
fn openssl_psk_sensor_publishes_and_receives() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-psk");
    let gw = gateway(&broker, &dir, &psk_clients(&["psk-1"]));
    let bridge = Bridge::openssl_psk(gw.dtls.unwrap(), "psk-1", KEY);
    let mut s = Sensor::new(bridge.addr);
    assert_eq!(connect(&mut s, "psk-1", true), ReturnCode::Accepted);
    publish_and_receive(&mut s, &broker, "psk-1");
    assert!(bridge.running());
}

#[test]
fn a_psk_sensor_can_be_only_itself_and_only_over_dtls() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-who");
    let gw = gateway(&broker, &dir, &psk_clients(&["psk-a", "psk-b"]));
    // Authenticated as psk-a, it cannot connect as psk-b.
    let bridge = Bridge::openssl_psk(gw.dtls.unwrap(), "psk-a", KEY);
    let mut s = Sensor::new(bridge.addr);
    assert_eq!(connect(&mut s, "psk-b", true), ReturnCode::NotSupported);
    assert_eq!(connect(&mut s, "psk-a", true), ReturnCode::Accepted);
    // Over plain UDP, a ClientId with a PSK is refused.
    let mut plain = Sensor::new(gw.addr);
    assert_eq!(connect(&mut plain, "psk-b", true), ReturnCode::NotSupported);
    // A wrong key fails the handshake: nothing arrives.
    let wrong = Bridge::openssl_psk(gw.dtls.unwrap(), "psk-b", "ffeeddccbbaa99887766554433221100");
    let mut s = Sensor::new(wrong.addr);
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: b"psk-b",
    }));
    s.expect_silence(Duration::from_secs(2));
}

#[test]
fn gnutls_psk_sensor_publishes_and_receives() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-gnutls");
    let gw = gateway(&broker, &dir, &psk_clients(&["gnutls-1"]));
    let to = gw.dtls.unwrap();
    let mut cmd = Command::new("gnutls-cli");
    cmd.args(["--udp", "--port", &to.port().to_string(), &to.ip().to_string()])
        .args(["--pskusername", "gnutls-1", "--pskkey", KEY, "--insecure"])
        .args(["--priority", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:+AES-128-CCM-8"]);
    let bridge = Bridge::start(cmd, "- Simple Client Mode:\n\n");
    let mut s = Sensor::new(bridge.addr);
    assert_eq!(connect(&mut s, "gnutls-1", true), ReturnCode::Accepted);
    publish_and_receive(&mut s, &broker, "gnutls-1");
}

#[test]
fn openssl_with_certificates_both_ways() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-certs");
    let certs = Certs::make(&dir);
    let extra = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nrequire_client_certificate = true\n\
         [[clients]]\nclient_id = \"cert-1\"\ndtls_cert_sha256 = \"{}\"\n",
        certs.path("server.crt"),
        certs.path("server.key"),
        certs.fingerprint("client"),
    );
    let gw = gateway(&broker, &dir, &extra);
    let to = gw.dtls.unwrap();
    let ca = certs.path("server.crt");
    let (cert, key) = (certs.path("client.crt"), certs.path("client.key"));
    let bridge = Bridge::openssl(
        to,
        &["-CAfile", &ca, "-verify_return_error", "-cert", &cert, "-key", &key],
    );
    let mut s = Sensor::new(bridge.addr);
    assert_eq!(connect(&mut s, "cert-2", true), ReturnCode::NotSupported, "not its ClientId");
    assert_eq!(connect(&mut s, "cert-1", true), ReturnCode::Accepted);
    publish_and_receive(&mut s, &broker, "cert-1");
    // A certificate pinned to no ClientId: the association is dropped.
    let (cert, key) = (certs.path("stranger.crt"), certs.path("stranger.key"));
    let stranger = Bridge::openssl(to, &["-CAfile", &ca, "-cert", &cert, "-key", &key]);
    let mut s = Sensor::new(stranger.addr);
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: b"cert-1",
    }));
    s.expect_silence(Duration::from_secs(2));
}

#[test]
fn a_dtls_sensor_whose_port_changes_keeps_its_session() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-nat");
    let gw = gateway(&broker, &dir, &psk_clients(&["roamer"]));
    let to = gw.dtls.unwrap();
    let topic = unique("dtls/nat");
    let first = Bridge::openssl_psk(to, "roamer", KEY);
    let mut s = Sensor::new(first.addr);
    assert_eq!(connect(&mut s, "roamer", false), ReturnCode::Accepted);
    let ack = s.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, 1);
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    // The NAT gives the sensor a new port: a new DTLS handshake, and a
    // CONNECT that finds its session by ClientId.
    drop(first);
    let second = Bridge::openssl_psk(to, "roamer", KEY);
    let mut s = Sensor::new(second.addr);
    assert_eq!(connect(&mut s, "roamer", false), ReturnCode::Accepted);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"still subscribed", 1, false);
    let p = s.next_publish();
    assert_eq!(p.data, b"still subscribed");
}

/// The project's own client (`mqttsn pub`/`sub` over the client crate's
/// DTLS adapter) against the gateway: PSK, and the gateway's certificate
/// checked against a CA file with a pinned client certificate.
#[test]
fn mqttsn_pub_and_sub_over_dtls() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-tools");
    let certs = Certs::make(&dir);
    let extra = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\nrequire_client_certificate = true\n{}\
         [[clients]]\nclient_id = \"tool-cert\"\ndtls_cert_sha256 = \"{}\"\n",
        certs.path("server.crt"),
        certs.path("server.key"),
        psk_clients(&["tool-psk", "tool-sub"]),
        certs.fingerprint("client"),
    );
    let gw = gateway(&broker, &dir, &extra);
    let to = gw.dtls.unwrap();
    let (host, port) = (to.ip().to_string(), to.port().to_string());
    let topic = unique("dtls/tools");
    let mut watch = MqttClient::connect(broker.port(), &unique("watch"));
    watch.subscribe(&topic, 1);
    let tools = mqttsn_tests::gateway::tools_binary();
    let run = |args: &[&str]| {
        let out = Command::new(&tools).args(args).output().expect("mqttsn runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "pub", "-h", &host, "-p", &port, "-i", "tool-psk", "--psk", KEY, "-t", &topic, "-m", "psk",
        "-q", "1",
    ]);
    assert_eq!(watch.recv().payload, b"psk");
    let (ca, cert, key) =
        (certs.path("server.crt"), certs.path("client.crt"), certs.path("client.key"));
    run(&[
        "pub",
        "-h",
        &host,
        "-p",
        &port,
        "-i",
        "tool-cert",
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-t",
        &topic,
        "-m",
        "cert",
        "-q",
        "1",
    ]);
    assert_eq!(watch.recv().payload, b"cert");
    // A wrong key: the tool fails, nothing is published.
    let out = Command::new(&tools)
        .args(["pub", "-h", &host, "-p", &port, "-i", "tool-psk", "--wait", "2"])
        .args(["--psk", "ffeeddccbbaa99887766554433221100", "-t", &topic, "-m", "no", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(watch.recv_within(Duration::from_millis(500)).is_none());
    // `mqttsn sub` over DTLS receives what the broker sends.
    let sub = Command::new(&tools)
        .args(["sub", "-h", &host, "-p", &port, "-i", "tool-sub", "--psk", KEY, "-t", &topic])
        .args(["-q", "1", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sub_receives(sub, &broker, &topic, "to the tool");
}

/// `mqttsn pub`/`sub --dtls-version 1.3` through the gateway binary to a
/// real mosquitto: the gateway answers the first ClientHello with a
/// stateless HelloRetryRequest and completes a DTLS 1.3 handshake with a
/// pinned client certificate, whose ClientId rules hold; PSK stays on
/// 1.2; a gateway offering only 1.2 serves `auto` and refuses `1.3`.
#[test]
fn mqttsn_pub_and_sub_over_dtls13() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls13-tools");
    let certs = Certs::make(&dir);
    let config = |versions: &str| {
        format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\nversions = {versions}\n\
             require_client_certificate = true\n{}\
             [[clients]]\nclient_id = \"tool13-cert\"\ndtls_cert_sha256 = \"{}\"\n",
            certs.path("server.crt"),
            certs.path("server.key"),
            psk_clients(&["tool13-psk"]),
            certs.fingerprint("client"),
        )
    };
    let gw = gateway(&broker, &dir, &config("[\"1.2\", \"1.3\"]"));
    let to = gw.dtls.unwrap();
    let (host, port) = (to.ip().to_string(), to.port().to_string());
    let topic = unique("dtls13/tools");
    let mut watch = MqttClient::connect(broker.port(), &unique("watch"));
    watch.subscribe(&topic, 1);
    let tools = mqttsn_tests::gateway::tools_binary();
    let (ca, cert, key) =
        (certs.path("server.crt"), certs.path("client.crt"), certs.path("client.key"));
    let pub13 = |id: &str, payload: &str| {
        Command::new(&tools)
            .args(["pub", "-h", &host, "-p", &port, "-i", id, "--cafile", &ca])
            .args(["--cert", &cert, "--key", &key, "--dtls-version", "1.3"])
            .args(["--wait", "3", "-t", &topic, "-m", payload, "-q", "1"])
            .output()
            .unwrap()
    };
    let out = pub13("tool13-cert", "pinned over 1.3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(watch.recv().payload, b"pinned over 1.3");
    let line = gw.wait_for_line("client=tool13-cert");
    assert!(line.contains("DTLS handshake complete") && line.contains("1.3"), "{line}");
    // Over 1.3 the identity rules hold: authenticated as tool13-cert, it
    // cannot be another ClientId with DTLS credentials.
    let out = pub13("tool13-psk", "not mine");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"), "not its ClientId");
    // `mqttsn sub` over 1.3 receives what the broker sends.
    let sub = Command::new(&tools)
        .args(["sub", "-h", &host, "-p", &port, "-i", "tool13-cert", "--cafile", &ca])
        .args(["--cert", &cert, "--key", &key, "--dtls-version", "1.3"])
        .args(["-t", &topic, "-q", "1", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sub_receives(sub, &broker, &topic, "to the 1.3 tool");
    while watch.recv_within(Duration::from_millis(300)).is_some() {}
    // A PSK with 1.3 is a usage error; with auto it is 1.2.
    let out = Command::new(&tools)
        .args(["pub", "-h", &host, "-p", &port, "-i", "tool13-psk", "--psk", KEY])
        .args(["--dtls-version", "1.3", "-t", &topic, "-m", "no"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dtls-version 1.3"));
    let out = Command::new(&tools)
        .args(["pub", "-h", &host, "-p", &port, "-i", "tool13-psk", "--psk", KEY])
        .args(["-t", &topic, "-m", "psk over 1.2", "-q", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(watch.recv().payload, b"psk over 1.2");
    let line = gw.wait_for_line("client=tool13-psk");
    assert!(line.contains("DTLS handshake complete") && line.contains("1.2"), "{line}");

    // A gateway offering 1.2 only: auto gets 1.2, 1.3 gets nothing.
    let dir12 = tempdir("dtls13-only12");
    let gw12 = gateway(&broker, &dir12, &config("[\"1.2\"]"));
    let to = gw12.dtls.unwrap();
    let (host, port) = (to.ip().to_string(), to.port().to_string());
    let pub_to = |version: &str, payload: &str| {
        Command::new(&tools)
            .args(["pub", "-h", &host, "-p", &port, "-i", "tool13-cert", "--cafile", &ca])
            .args(["--cert", &cert, "--key", &key, "--dtls-version", version, "--wait", "2"])
            .args(["-t", &topic, "-m", payload, "-q", "1"])
            .output()
            .unwrap()
    };
    let out = pub_to("auto", "auto over 1.2");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(watch.recv().payload, b"auto over 1.2");
    let line = gw12.wait_for_line("client=tool13-cert");
    assert!(line.contains("DTLS handshake complete") && line.contains("1.2"), "{line}");
    let out = pub_to("1.3", "never");
    assert!(!out.status.success());
    assert!(watch.recv_within(Duration::from_millis(500)).is_none());
}

/// A SIGHUP gives a new sensor its key without a restart; one whose key
/// was removed cannot handshake any more.
#[test]
fn a_reload_changes_the_keys() {
    let broker = Mosquitto::start();
    let dir = tempdir("dtls-reload");
    let gw = gateway(&broker, &dir, &psk_clients(&["old-key"]));
    let to = gw.dtls.unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[broker]\nurl = \"{}\"\n[dtls]\nlisten = \"127.0.0.1:0\"\n{}",
            broker.url(),
            psk_clients(&["new-key"])
        ),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_line("SIGHUP:");
    assert!(line.contains("clients"), "{line}");
    let bridge = Bridge::openssl_psk(to, "new-key", KEY);
    let mut s = Sensor::new(bridge.addr);
    assert_eq!(connect(&mut s, "new-key", true), ReturnCode::Accepted);
    let gone = Bridge::openssl_psk(to, "old-key", KEY);
    let mut s = Sensor::new(gone.addr);
    s.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: b"old-key",
    }));
    s.expect_silence(Duration::from_secs(2));
}

/// A running `mqttsn sub -C 1` gets `payload`, published on `topic` until
/// its subscription is in place and it exits.
fn sub_receives(mut sub: std::process::Child, broker: &Mosquitto, topic: &str, payload: &str) {
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    for _ in 0..50 {
        if sub.try_wait().unwrap().is_some() {
            break;
        }
        publisher.publish(topic, payload.as_bytes(), 1, false);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "mqttsn sub: {:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains(payload));
}
