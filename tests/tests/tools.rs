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
    // -W: nothing arrives, exit 27 after the timeout (mosquitto_sub's
    // code), with "Timed out" on stderr.
    let start = std::time::Instant::now();
    let out = mqttsn(&gw, &["sub", "-t", &format!("{base}/none"), "-W", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(27));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Timed out"));
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
    // Usage (exit 1, as mosquitto's tools): QoS out of range, an unknown
    // flag.
    let out = mqttsn(&gw, &["pub", "-t", "a/b", "-m", "x", "-q", "5"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = mqttsn(&gw, &["pub", "-t", "a/b", "-m", "x", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Too long a ClientId for the client itself: a usage error.
    let long = "c".repeat(65);
    let out = mqttsn(&gw, &["pub", "-t", "a/b", "-m", "x", "-i", &long]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Refused: a gateway that admits no unknown ClientIds.
    let closed = Gateway::start_full(
        broker.port(),
        fast_config(),
        ServerOptions {
            auth: Arc::new(mqttsn_gateway::auth::AuthTable::default()),
            ..ServerOptions::default()
        },
    );
    // The exit code is the CONNACK return code (3: not supported), as
    // mosquitto's tools exit with theirs.
    let out = mqttsn(&closed, &["pub", "-t", "a/b", "-m", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
    // Unreachable: nothing listens there.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port().to_string();
    drop(dead);
    let out = Command::new(tools_binary())
        .args(["pub", "-h", "127.0.0.1", "-p", &port, "-t", "a/b", "-m", "x", "--wait", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Spawns `mqttsn` with piped stdio.
fn spawn(mut cmd: Command) -> std::process::Child {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn pub_lines_keeps_the_connection_alive_on_a_quiet_input() {
    let broker = Mosquitto::start();
    let base = unique("quiet");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    let topic = format!("{base}/log");
    sub.subscribe(&topic, 1);
    // Keepalive 1 s: the gateway loses a sensor silent for 1.5 s. The input
    // stays quiet for 4 s; without PINGREQ meanwhile the session is gone.
    let mut child = spawn({
        let mut c = mqttsn(&gw, &["pub", "-t", &topic, "-l", "-q", "1", "-k", "1", "-d"]);
        c.env("RUST_LOG", "off");
        c
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    assert_eq!(sub.recv().payload, b"first");
    std::thread::sleep(Duration::from_secs(4));
    stdin.write_all(b"after a quiet while\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    assert!(err.contains("-> PINGREQ") && err.contains("<- PINGRESP"), "{err}");
    assert_eq!(sub.recv().payload, b"after a quiet while");
}

#[test]
fn pub_stdin_as_one_message_and_the_qos_minus_one_warning() {
    let broker = Mosquitto::start();
    let base = unique("stdin");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/#"), 1);
    let mut child = spawn(mqttsn(&gw, &["pub", "-t", &format!("{base}/file"), "-s", "-q", "1"]));
    child.stdin.take().unwrap().write_all(b"line 1\nline 2\n").unwrap();
    ok(child.wait_with_output().unwrap());
    assert_eq!(sub.recv().payload, b"line 1\nline 2\n");
    // QoS -1: sent, never acknowledged; the tool says so.
    let out = mqttsn(&gw, &["pub", "-T", "42", "-m", "m1", "-q", "-1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    assert!(
        err.contains("QoS -1 is never acknowledged") && err.contains("[qos_minus_one]"),
        "{err}"
    );
    assert_eq!(sub.recv().payload, b"m1");
}

#[test]
fn sub_qos_2_completes_the_exchange_before_disconnecting() {
    let broker = Mosquitto::start();
    let base = unique("q2");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let topic = format!("{base}/t");
    let child = spawn(mqttsn(&gw, &["sub", "-t", &topic, "-q", "2", "-C", "1", "-d", "-W", "20"]));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let out = publish_until_exit_qos(child, &mut publisher, &topic, 2);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    let pos = |what: &str| err.find(what).unwrap_or_else(|| panic!("no {what} in {err}"));
    assert!(pos("-> PUBREC") < pos("<- PUBREL"), "{err}");
    assert!(pos("<- PUBREL") < pos("-> PUBCOMP"), "{err}");
    assert!(pos("-> PUBCOMP") < pos("-> DISCONNECT"), "{err}");
}

/// As [`publish_until_exit`], at a given QoS.
fn publish_until_exit_qos(
    mut child: std::process::Child,
    publisher: &mut MqttClient,
    topic: &str,
    qos: u8,
) -> Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "{topic}: sub did not finish");
        publisher.publish(topic, b"m", qos, false);
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn sub_prints_as_mosquitto_sub_does() {
    let broker = Mosquitto::start();
    let base = unique("fmt");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let filter = format!("{base}/#");
    let format = "%t|%p|%q|%r|%l|%x|%X|[%5t][%-5t][%.3t][%05l][%3p][%-4p][%A][%3E][%m]|\\t@@%%";
    let ours = |extra: &[&str]| {
        let mut args = vec!["sub", "-t", filter.as_str(), "-C", "3", "-W", "20"];
        args.extend_from_slice(extra);
        spawn(mqttsn(&gw, &args))
    };
    let theirs = |extra: &[&str]| {
        let mut c = Command::new("mosquitto_sub");
        c.args(["-p", &broker.port().to_string(), "-t", &filter, "-C", "3", "-W", "20"]);
        c.args(extra);
        spawn(c)
    };
    for extra in [
        vec!["-v"],
        vec!["-v", "-N"],
        vec!["-N"],
        vec![],
        vec!["-F", format],
        vec!["-F", format, "-N"],
    ] {
        let children = [ours(&extra), theirs(&extra)];
        let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
        // Both subscribers are in place when a probe reaches each (the
        // probes are printed too, and ignored).
        let mut children: Vec<_> = children.into_iter().collect();
        std::thread::sleep(Duration::from_millis(500));
        let _ = &mut children;
        for (topic, payload) in [("a", &b"hello"[..]), ("bb", b""), ("c", &[0xab, 0x01, b'z'])] {
            publisher.publish(&format!("{base}/{topic}"), payload, 0, false);
            std::thread::sleep(Duration::from_millis(50));
        }
        let outs: Vec<Output> =
            children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        for o in &outs {
            assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        assert_eq!(
            String::from_utf8_lossy(&outs[0].stdout),
            String::from_utf8_lossy(&outs[1].stdout),
            "{extra:?}: mqttsn sub (left) and mosquitto_sub (right) differ"
        );
    }
}

#[test]
fn sub_retained_unsubscribe_exit_after_subscribe_and_will() {
    let broker = Mosquitto::start();
    let base = unique("subflags");
    let gw = gateway(&broker, &format!("{base}/pre"));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let stale = format!("{base}/stale");
    publisher.publish(&stale, b"old", 1, true);
    // Without -R the retained message is printed; with -R it is not.
    let text = ok(mqttsn(&gw, &["sub", "-t", &stale, "-C", "1", "-W", "10", "-F", "%p %r"])
        .output()
        .unwrap());
    assert_eq!(text, "old 1\n");
    let child =
        spawn(mqttsn(&gw, &["sub", "-t", &stale, "-R", "-C", "1", "-W", "20", "-F", "%p %r"]));
    let out = publish_until_exit(
        child,
        &mut publisher,
        &stale,
        |_| b"new".to_vec(),
        Duration::from_millis(200),
    );
    assert_eq!(ok(out), "new 0\n");
    // -c -E: a kept session with a subscription, and the tool exits at
    // once; -U removes the subscription again.
    let id = unique("keeper");
    let cmd = format!("{base}/cmd");
    ok(mqttsn(&gw, &["sub", "-c", "-i", &id, "-t", &cmd, "-q", "1", "-E"]).output().unwrap());
    publisher.publish(&cmd, b"queued", 1, false);
    std::thread::sleep(Duration::from_millis(300));
    let text =
        ok(mqttsn(&gw, &["sub", "-c", "-i", &id, "-t", &cmd, "-q", "1", "-C", "1", "-W", "10"])
            .output()
            .unwrap());
    assert_eq!(text, "queued\n");
    ok(mqttsn(&gw, &["sub", "-c", "-i", &id, "-U", &cmd, "-E"]).output().unwrap());
    publisher.publish(&cmd, b"not for me", 1, false);
    let out = mqttsn(&gw, &["sub", "-c", "-i", &id, "-T", "42", "-W", "2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(27));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // --will-*: a subscriber that goes silent has its will published.
    let mut watcher = MqttClient::connect(broker.port(), &unique("w"));
    let will = format!("{base}/will");
    watcher.subscribe(&will, 1);
    let mut child = spawn(mqttsn(
        &gw,
        &[
            "sub",
            "-t",
            &cmd,
            "-k",
            "1",
            "--will-topic",
            &will,
            "--will-payload",
            "sub gone",
            "--will-qos",
            "1",
        ],
    ));
    std::thread::sleep(Duration::from_millis(800));
    child.kill().unwrap();
    let _ = child.wait();
    let m = watcher.recv();
    assert_eq!((m.topic, m.payload), (will, b"sub gone".to_vec()));
}

#[test]
fn pub_and_sub_over_ipv6() {
    let broker = Mosquitto::start();
    let base = unique("v6");
    let gw = mqttsn_tests::gateway::GatewayProcess::spawn(&[
        "--listen",
        "[::1]:0",
        "--broker",
        &broker.url(),
    ]);
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    let port = gw.addr.port().to_string();
    let topic = format!("{base}/t");
    let child = Command::new(tools_binary())
        .args(["sub", "-h", "::1", "-p", &port, "-t", &topic, "-C", "1", "-W", "20", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "sub over IPv6 did not finish");
        let out = Command::new(tools_binary())
            .args(["pub", "-h", "::1", "-p", &port, "-t", &topic, "-m", "six", "-q", "1"])
            .output()
            .unwrap();
        ok(out);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ok(child.wait_with_output().unwrap()), "six\n");
}

#[test]
fn pub_fails_over_to_the_next_gateway() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    // A gateway that never answers: a bound socket nobody reads.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let topic = unique("failover");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&topic, 1);
    let bin = tools_binary();
    let started = std::time::Instant::now();
    let out = Command::new(bin)
        .args(["pub", "-h", &silent.local_addr().unwrap().to_string()])
        .args(["-h", &gw.addr().to_string(), "-t", &topic, "-m", "moved", "-q", "1"])
        .args(["--wait", "10"])
        .output()
        .unwrap();
    ok(out);
    let m = sub.recv();
    assert_eq!((m.topic.as_str(), &m.payload[..]), (topic.as_str(), &b"moved"[..]));
    // Tretry 1 s, Nretry 3: the silent gateway is left after 4 s.
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
}
