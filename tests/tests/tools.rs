//! `mqttsn pub` and `mqttsn sub` end to end: each flag through the gateway
//! to mosquitto and back, exit codes for scripts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mqttsn_gateway::server::ServerOptions;
use mqttsn_gateway::session::topics::Predefined;
use mqttsn_gateway::session::SessionConfig;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, tools_binary, Gateway};
use mqttsn_tests::mqtt_client::MqttClient;

fn mqttsn(gw: &Gateway, args: &[&str]) -> Command {
    let mut c = Command::new(tools_binary());
    c.args(args).args(["-h", "127.0.0.1", "-p", &gw.addr().port().to_string(), "--wait", "5"]);
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Publishes `payload` to `topic` every `every` until `child` exits
/// (bounded), then returns its output.
fn publish_until_exit(
    mut child: std::process::Child,
    publisher: &mut MqttClient,
    topic: &str,
    payload: impl Fn(u32) -> Vec<u8>,
    every: Duration,
) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut i = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{topic}: sub did not finish");
        i += 1;
        publisher.publish(topic, &payload(i), 1, false);
        std::thread::sleep(every);
    }
    child.wait_with_output().unwrap()
}

fn gateway(broker: &Mosquitto, predefined: &str) -> Gateway {
    let mut pre = Predefined::new();
    pre.insert(42, predefined);
    let cfg = SessionConfig { predefined: Arc::new(pre), ..fast_config() };
    let opts = ServerOptions { qos_minus_one: Some(Vec::new()), ..ServerOptions::default() };
    Gateway::start_full(broker.port(), cfg, opts)
}

#[test]
fn pub_sends_with_every_message_source_and_qos() {
    let broker = Mosquitto::start();
    let base = unique("pub");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/#"), 2);
    let topic = format!("{base}/t");
    for q in ["0", "1", "2"] {
        ok(mqttsn(&gw, &["pub", "-t", &topic, "-m", &format!("q{q}"), "-q", q]).output().unwrap());
        let m = sub.recv();
        assert_eq!((m.payload, m.qos.to_string()), (format!("q{q}").into_bytes(), q.to_owned()));
    }
    // -T with QoS -1: no connection at all.
    ok(mqttsn(&gw, &["pub", "-T", "42", "-m", "minus one", "-q", "-1"]).output().unwrap());
    assert_eq!(sub.recv().payload, b"minus one");
    // -l: one message per line of standard input.
    let mut child = mqttsn(&gw, &["pub", "-t", &topic, "-l", "-q", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"line 1\nline 2\n").unwrap();
    ok(child.wait_with_output().unwrap());
    assert_eq!(sub.recv().payload, b"line 1");
    assert_eq!(sub.recv().payload, b"line 2");
    // -f and -n, with -r.
    // -d prints every datagram, decoded, on stderr.
    let out = mqttsn(&gw, &["pub", "-t", &topic, "-m", "debug", "-d"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(err.contains("-> CONNECT") && err.contains("<- CONNACK"), "{err}");
    assert_eq!(sub.recv().payload, b"debug");
    let file = std::env::temp_dir().join(unique("payload"));
    std::fs::write(&file, b"from a file").unwrap();
    ok(mqttsn(&gw, &["pub", "-t", &topic, "-f", file.to_str().unwrap()]).output().unwrap());
    assert_eq!(sub.recv().payload, b"from a file");
    let _ = std::fs::remove_file(&file);
    ok(mqttsn(&gw, &["pub", "-t", &topic, "-n", "-r", "-q", "1"]).output().unwrap());
    assert_eq!(sub.recv().payload, b"");
}

#[test]
fn pub_with_a_will_that_oversleeps() {
    let broker = Mosquitto::start();
    let base = unique("will");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let mut watcher = MqttClient::connect(broker.port(), &unique("w"));
    watcher.subscribe(&format!("{base}/#"), 1);
    let args = [
        "pub",
        "-t",
        &format!("{base}/data"),
        "-m",
        "x",
        "-q",
        "1",
        "-k",
        "1",
        "--will-topic",
        &format!("{base}/will"),
        "--will-payload",
        "asleep too long",
        "--will-qos",
        "1",
        "--sleep",
        "1",
    ];
    ok(mqttsn(&gw, &args).output().unwrap());
    assert_eq!(watcher.recv().payload, b"x");
    // Slept for 1 s and never woke: lost after 1.5 s, the will is published.
    let m = watcher.recv();
    assert_eq!((m.topic, m.payload), (format!("{base}/will"), b"asleep too long".to_vec()));
}

#[test]
fn sub_prints_messages_with_topics_and_stops_at_count() {
    let broker = Mosquitto::start();
    let base = unique("sub");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let child = mqttsn(
        &gw,
        &["sub", "-t", &format!("{base}/#"), "-T", "42", "-v", "-C", "3", "-q", "1", "-W", "20"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    // Publish until the subscriber is in place and has printed three.
    let out = publish_until_exit(
        child,
        &mut publisher,
        &format!("{base}/a"),
        |i| format!("m{i}").into_bytes(),
        Duration::from_millis(100),
    );
    let text = ok(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines.iter().all(|l| l.starts_with(&format!("{base}/a m"))), "{text}");
}

#[test]
fn sub_timeout_and_sleep_cycles() {
    let broker = Mosquitto::start();
    let base = unique("subsleep");
    let gw = gateway(&broker, &format!("{base}/pre"));
    // -W: nothing arrives, exit 0 after the timeout.
    let start = std::time::Instant::now();
    ok(mqttsn(&gw, &["sub", "-t", &format!("{base}/none"), "-W", "1"]).output().unwrap());
    assert!(start.elapsed() < Duration::from_secs(5));
    // --sleep: messages published while asleep are printed after waking.
    let child = mqttsn(
        &gw,
        &[
            "sub",
            "-t",
            &format!("{base}/cmd"),
            "--sleep",
            "1",
            "-C",
            "1",
            "-q",
            "1",
            "-i",
            &unique("sleeper"),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let out = publish_until_exit(
        child,
        &mut publisher,
        &format!("{base}/cmd"),
        |_| b"wake up".to_vec(),
        Duration::from_millis(300),
    );
    let text = ok(out);
    assert_eq!(text.lines().next(), Some("wake up"), "{text}");
}

#[test]
fn exit_codes_tell_what_went_wrong() {
    let broker = Mosquitto::start();
    let gw = gateway(&broker, "x/pre");
    // Usage: QoS out of range.
    let out = mqttsn(&gw, &["pub", "-t", "a/b", "-m", "x", "-q", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Too long a ClientId for the client itself: a usage error.
    let long = "c".repeat(65);
    let out = mqttsn(&gw, &["pub", "-t", "a/b", "-m", "x", "-i", &long]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Refused: a gateway that admits no unknown ClientIds.
    let closed = Gateway::start_full(
        broker.port(),
        fast_config(),
        ServerOptions {
            auth: Arc::new(mqttsn_gateway::auth::AuthTable::default()),
            ..ServerOptions::default()
        },
    );
    let out = mqttsn(&closed, &["pub", "-t", "a/b", "-m", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    // Unreachable: nothing listens there.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port().to_string();
    drop(dead);
    let out = Command::new(tools_binary())
        .args(["pub", "-h", "127.0.0.1", "-p", &port, "-t", "a/b", "-m", "x", "--wait", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
