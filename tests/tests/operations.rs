//! Running the gateway binary for real: its log flags and lines, the
//! configuration check, SIGHUP reloads and the metrics of a broker outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{gateway_binary, GatewayProcess};
use mqttsn_tests::sn::Sensor;

fn temp_config(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("ops"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn scrape(addr: std::net::SocketAddr) -> String {
    mqttsn_tests::http::get(addr, "/metrics").body
}

fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn connect_packet(client_id: &str, duration: u16) -> Packet<'_> {
    Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration,
        client_id: client_id.as_bytes(),
    })
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_key_of_a_bad_one() {
    let good = temp_config(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n[[predefined]]\nid = 3\nname = \"a/b\"\n",
    );
    let out = std::process::Command::new(gateway_binary())
        .args(["--check-config", "-c", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("config OK: {}", good.display()));

    for (text, key) in [
        ("[timers]\nretry_interval_ms = 0\n", "timers.retry_interval_ms"),
        ("[[predefined]]\nid = 0\nname = \"a\"\n", "predefined[0].id"),
        ("[limits]\nmax_inflight = \"x\"\n", "max_inflight"),
        (
            "[[clients]]\nclient_id = \"s\"\nallow_from = [\"300.1.1.1\"]\n",
            "clients[0].allow_from[0]",
        ),
    ] {
        let bad = temp_config(text);
        let out = std::process::Command::new(gateway_binary())
            .args(["--check-config", "-c", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
        assert!(out.stdout.is_empty(), "nothing bound, nothing logged: {out:?}");
    }
}

#[test]
fn json_logs_one_object_a_line_and_no_colour_on_a_pipe() {
    let broker = Mosquitto::start();
    let gw = GatewayProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &broker.url(),
        "--log-format",
        "json",
    ]);
    let line = gw.wait_for_line("broker reachable");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(v["fields"]["message"].as_str().unwrap().contains("broker reachable"), "{line}");

    // Text on a pipe, with NO_COLOR unset: no escape sequences.
    let gw = GatewayProcess::spawn_with_env(
        &["--listen", "127.0.0.1:0", "--broker", &broker.url()],
        &[("NO_COLOR", "")],
    );
    let line = gw.wait_for_line("broker reachable");
    assert!(!line.contains('\u{1b}'), "{line:?}");
}

#[test]
fn log_level_flag_and_rust_log_over_it() {
    let broker = Mosquitto::start();
    // RUST_LOG empty: --log-level decides, and debug shows each datagram.
    let gw = GatewayProcess::spawn_with_env(
        &["--listen", "127.0.0.1:0", "--broker", &broker.url(), "--log-level", "debug"],
        &[("RUST_LOG", "")],
    );
    let s = Sensor::new(gw.addr);
    s.send(Packet::PingReq(None));
    gw.wait_for_line("in: PINGREQ");

    // RUST_LOG set: it wins over --log-level error (the info lines are there).
    let gw = GatewayProcess::spawn_with_env(
        &["--listen", "127.0.0.1:0", "--broker", &broker.url(), "--log-level", "error"],
        &[("RUST_LOG", "info")],
    );
    gw.wait_for_line("broker reachable");
}

#[test]
fn a_sensors_life_is_logged_at_info() {
    let broker = Mosquitto::start();
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &broker.url()]);
    let mut s = Sensor::new(gw.addr);
    let id = unique("life");
    s.connect(&id, true, 30);
    let line = gw.wait_for_line("sensor connected");
    for part in [id.as_str(), &s.addr().to_string(), "clean_session=true", "keepalive_secs=30"] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    s.send(Packet::Disconnect(Some(20)));
    s.expect(Packet::Disconnect(None));
    let line = gw.wait_for_line("sensor asleep");
    assert!(line.contains(&id) && line.contains("sleep_secs=20"), "{line}");
    s.send(Packet::PingReq(Some(id.as_bytes())));
    s.expect(Packet::PingResp);
    assert!(gw.wait_for_line("sensor awake").contains(&id));
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));
    assert!(gw.wait_for_line("sensor disconnected").contains(&id));

    // Lost: a keepalive of 1 s, then silence (1.5 s with the tolerance).
    let lost = unique("lost");
    let mut s = Sensor::new(gw.addr);
    s.connect(&lost, true, 1);
    let line = gw.wait_for_line("sensor lost");
    assert!(line.contains(&lost) && line.contains("keepalive timeout"), "{line}");
}

#[test]
fn a_broker_down_from_the_start_is_one_outage_in_the_metrics_and_the_log() {
    let url = format!("mqtt://127.0.0.1:{}", closed_port());
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &url]);
    let metrics = gw.metrics.expect("metrics address logged");
    gw.wait_for_line("broker unreachable");
    // Sensors asking meanwhile are told to come back later; that is no
    // second outage in the log.
    let mut s = Sensor::new(gw.addr);
    for i in 0..3 {
        s.send(connect_packet(&format!("{}-{i}", unique("down")), 60));
        s.expect(Packet::ConnAck(ReturnCode::Congestion));
    }
    let page = scrape(metrics);
    assert_eq!(value(&page, "mqttsn_broker_up"), Some(0.0), "{page}");
    assert_eq!(value(&page, "mqttsn_broker_outages_total"), Some(1.0), "{page}");
    assert_eq!(
        value(&page, &format!("mqttsn_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        Some(1.0)
    );
    for name in ["process_start_time_seconds", "process_resident_memory_bytes", "process_open_fds"]
    {
        assert!(value(&page, name).is_some_and(|v| v > 0.0), "{name}: {page}");
    }
    assert!(value(&page, "process_cpu_seconds_total").is_some(), "{page}");
    assert!(value(&page, "mqttsn_store_commit_seconds_total").is_some(), "{page}");
    // docs/monitoring.md lists every metric.
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring.md"),
    )
    .unwrap();
    for name in page.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()) {
        assert!(docs.contains(&format!("`{name}")), "{name} is not in docs/monitoring.md");
    }
    // Reconnect attempts go on (backoff) without more outage lines.
    std::thread::sleep(Duration::from_millis(1500));
    let more: Vec<String> =
        gw.lines.try_iter().filter(|l| l.contains("broker unreachable")).collect();
    assert!(more.is_empty(), "{more:?}");
}

#[test]
fn the_outage_ends_with_its_duration_and_the_broker_up_gauge() {
    let mut broker = Mosquitto::start();
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &broker.url()]);
    let metrics = gw.metrics.expect("metrics address logged");
    gw.wait_for_line("broker reachable");
    assert_eq!(value(&scrape(metrics), "mqttsn_broker_up"), Some(1.0));
    broker.stop();
    gw.wait_for_line("broker unreachable");
    assert_eq!(value(&scrape(metrics), "mqttsn_broker_up"), Some(0.0));
    broker.restart();
    let line = gw.wait_for_line("broker reachable again after");
    assert!(line.contains("outage_secs="), "{line}");
    let page = scrape(metrics);
    assert_eq!(value(&page, "mqttsn_broker_up"), Some(1.0), "{page}");
    assert_eq!(value(&page, "mqttsn_broker_outages_total"), Some(1.0), "{page}");
}

/// CONNECT as `client_id`, the CONNACK's return code.
fn connack(s: &mut Sensor, client_id: &str) -> ReturnCode {
    s.send(connect_packet(client_id, 60));
    let got = s.recv();
    match Packet::decode(&got).unwrap() {
        Packet::ConnAck(rc) => rc,
        other => panic!("not a CONNACK: {other:?}"),
    }
}

/// A QoS 1 PUBLISH to predefined topic 7: the PUBACK's return code.
fn publish_predefined(s: &mut Sensor) -> ReturnCode {
    s.publish(TopicId::Predefined(7), QoS::AtLeastOnce, 1, b"x", false);
    let got = s.expect_where("PUBACK", |p| matches!(p, Packet::PubAck(_)));
    match Packet::decode(&got).unwrap() {
        Packet::PubAck(Ack { return_code, .. }) => return_code,
        _ => unreachable!(),
    }
}

#[test]
fn sighup_reloads_credentials_and_predefined_topics_and_survives_a_broken_file() {
    let broker = Mosquitto::start();
    let cfg = temp_config("[auth]\nunknown_clients = \"allow\"\n");
    let gw = GatewayProcess::spawn(&[
        "-c",
        cfg.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &broker.url(),
    ]);
    gw.wait_for_line("broker reachable");
    let stranger = unique("stranger");
    let mut s = Sensor::new(gw.addr);
    assert_eq!(connack(&mut s, &stranger), ReturnCode::Accepted);
    assert_ne!(publish_predefined(&mut s), ReturnCode::Accepted, "no topic 7 yet");
    s.send(Packet::Disconnect(None));
    s.expect(Packet::Disconnect(None));

    let known = unique("known");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nunknown_clients = \"refuse\"\n[[clients]]\nclient_id = \"{known}\"\n\
             [[predefined]]\nid = 7\nname = \"{}\"\n[gateway]\nworkers = 3\n",
            unique("pre")
        ),
    )
    .unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_line("SIGHUP:");
    assert!(
        line.contains("reloaded") && line.contains("auth") && line.contains("predefined"),
        "{line}"
    );
    let line = gw.wait_for_line("only applied by a restart");
    assert!(line.contains("gateway"), "{line}");

    let mut s = Sensor::new(gw.addr);
    assert_eq!(
        connack(&mut s, &stranger),
        ReturnCode::NotSupported,
        "unknown ClientIds refused now"
    );
    assert_eq!(connack(&mut s, &known), ReturnCode::Accepted);
    assert_eq!(publish_predefined(&mut s), ReturnCode::Accepted, "topic 7 is there now");

    // A broken file: an error naming the key, the gateway goes on as it was.
    std::fs::write(&cfg, "[timers]\nretry_interval_ms = 0\n").unwrap();
    gw.signal("HUP");
    let line = gw.wait_for_line("not reloaded");
    assert!(line.contains("timers.retry_interval_ms"), "{line}");
    let mut s2 = Sensor::new(gw.addr);
    assert_eq!(
        connack(&mut s2, &unique("stranger")),
        ReturnCode::NotSupported,
        "old settings kept"
    );
    let mut gw = gw;
    assert!(gw.child.try_wait().unwrap().is_none(), "still running");
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        s.send(Packet::PingReq(None));
        s.expect(Packet::PingResp);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gw.terminate().success());
}
