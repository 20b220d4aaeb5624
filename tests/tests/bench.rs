//! `mqttsn bench` end to end: the tool against the real gateway and a real
//! mosquitto, each run a few seconds at most; the JSON line is parsed and
//! its figures checked against each other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use mqttsn_tests::broker::Mosquitto;
use mqttsn_tests::gateway::{tools_binary, Gateway, GatewayProcess};
use serde_json::Value;

/// One run: exit code, the JSON report (`Null` when there is none), stderr.
struct Run {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

fn bench(gateway_port: u16, broker: &Mosquitto, args: &[&str]) -> Run {
    let out = Command::new(tools_binary())
        .arg("bench")
        .args(["-h", "127.0.0.1", "-p", &gateway_port.to_string()])
        .args(["--broker", &broker.url(), "--max-time", "20", "--drain", "0.5"])
        .args(args)
        .output()
        .expect("run mqttsn bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().last().and_then(|l| serde_json::from_str(l).ok());
    Run {
        code: out.status.code(),
        json: json.unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn u(v: &Value, path: &str) -> u64 {
    let x = path.split('.').fold(v, |v, k| &v[k]);
    x.as_u64().unwrap_or_else(|| panic!("{path} is not a count: {x} in {v}"))
}

/// The run succeeded, and its gateway (or direct) pass adds up: every
/// sensor connected, every message sent reached the broker once.
fn complete(r: &Run, pass: &str, sensors: u64, sent: u64) -> Value {
    assert_eq!(r.code, Some(0), "exit code; stderr:\n{}\njson: {}", r.stderr, r.json);
    let p = r.json[pass].clone();
    assert!(p.is_object(), "no {pass} pass in {}", r.json);
    assert_eq!(u(&p, "connect.connected"), sensors, "{p}");
    assert_eq!(u(&p, "connect.failed"), 0, "{p}");
    assert_eq!(u(&p, "publish.sent"), sent, "{p}");
    let by_qos: u64 =
        p["publish"]["sent_qos"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_qos, sent, "{p}");
    assert_eq!(u(&p, "received.unique"), sent, "{p}");
    assert_eq!(u(&p, "received.lost"), 0, "{p}");
    assert_eq!(u(&p, "received.duplicates_qos2"), 0, "{p}");
    assert_eq!(u(&p, "publish.unacked"), 0, "{p}");
    assert_eq!(u(&p, "lost"), 0, "{p}");
    assert_eq!(r.json["exit_code"], 0);
    assert_eq!(r.json["cut_short"], false);
    p
}

#[test]
fn qos_0_1_2_through_the_gateway_arrive_once() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let port = gw.addr().port();
    // QoS 0 at a modest rate: nothing lost on loopback.
    let r = bench(port, &broker, &["-c", "10", "-n", "100", "-q", "0", "--rate", "1000"]);
    let p = complete(&r, "gateway", 10, 1000);
    assert_eq!(p["publish"]["sent_qos"], serde_json::json!([1000, 0, 0]));
    assert!(p["received"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{p}");
    for (q, acked) in [("1", "acked"), ("2", "completed_qos2")] {
        let r = bench(port, &broker, &["-c", "10", "-n", "50", "-q", q]);
        let p = complete(&r, "gateway", 10, 500);
        assert_eq!(u(&p, &format!("publish.{acked}")), 500, "{p}");
        let ack = &p["publish"]["ack_latency_ms"];
        let (p50, p90, p99, max) =
            (ack["p50"].as_f64(), ack["p90"].as_f64(), ack["p99"].as_f64(), ack["max"].as_f64());
        assert!(p50 <= p90 && p90 <= p99 && p99 <= max && p50 > Some(0.0), "{ack}");
        // Registered: the connect phase measured every step.
        assert!(p["connect"]["registered_seconds"].as_f64().unwrap() > 0.0, "{p}");
    }
}

#[test]
fn a_qos_mix_keeps_its_proportions() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let r = bench(
        gw.addr().port(),
        &broker,
        &["-c", "10", "-n", "50", "--qos-mix", "0:70,1:20,2:10", "--inflight", "2"],
    );
    let p = complete(&r, "gateway", 10, 500);
    assert_eq!(p["publish"]["sent_qos"], serde_json::json!([350, 100, 50]), "{p}");
    assert_eq!(u(&p, "publish.acked"), 150, "{p}");
    assert_eq!(r.json["options"]["qos_mix"], "0:70,1:20,2:10");
}

#[test]
fn persistent_sensors() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let r = bench(gw.addr().port(), &broker, &["-c", "8", "-n", "30", "-q", "1", "--persistent"]);
    complete(&r, "gateway", 8, 240);
    assert_eq!(r.json["options"]["persistent"], true);
}

#[test]
fn sleeping_sensors_receive_their_buffer_on_waking() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let args =
        ["-c", "10", "-n", "20", "--sleepers", "40", "--sleep-messages", "5", "--sleep-qos", "1"];
    let r = bench(gw.addr().port(), &broker, &args);
    // Six awake sensors publish; four sleep and get five messages each.
    let p = complete(&r, "gateway", 10, 120);
    let s = &p["sleep"];
    assert_eq!((u(s, "sleepers"), u(s, "asleep"), u(s, "published")), (4, 4, 20), "{s}");
    assert_eq!((u(s, "delivered"), u(s, "lost"), u(s, "duplicates")), (20, 0, 0), "{s}");
    assert!(u(s, "wakes") >= 4, "{s}");
    assert_eq!(u(s, "wakes_without_pingresp"), 0, "{s}");
    assert!(s["wake_latency_ms"]["max"].as_f64().is_some(), "{s}");
    assert!(s["wake_seconds"].as_f64().is_some_and(|w| w > 0.0), "{s}");
}

#[test]
fn sensors_spread_over_source_addresses() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let args = ["-c", "6", "-n", "5", "--source", "127.0.3.1", "--source-addresses", "3"];
    let r = bench(gw.addr().port(), &broker, &args);
    complete(&r, "gateway", 6, 30);
    assert_eq!(r.json["options"]["source"], "127.0.3.1", "{}", r.json);
    assert_eq!(u(&r.json, "options.source_addresses"), 3, "{}", r.json);
    // More than one source address needs a gateway on IPv4 loopback.
    let args = ["bench", "-h", "::1", "--source-addresses", "2"];
    let out = Command::new(tools_binary()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--source-addresses 2") && err.contains("IPv4 loopback"), "{err}");
}

#[test]
fn broker_to_sensors_with_fan_out() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    for q in ["1", "2"] {
        // Ten sensors, five per topic: two topics, 20 messages each.
        let args = ["-c", "10", "-n", "0", "--down-count", "20", "--fanout", "5", "--down-qos", q];
        let r = bench(gw.addr().port(), &broker, &args);
        let p = complete(&r, "gateway", 10, 0);
        let d = &p["down"];
        assert_eq!((u(d, "topics"), u(d, "subscribers"), u(d, "published")), (2, 10, 40), "{d}");
        assert_eq!((u(d, "expected"), u(d, "delivered"), u(d, "lost")), (200, 200, 0), "{d}");
        assert_eq!(u(d, "duplicates_qos2"), 0, "{d}");
        // Wildcard subscriptions: the gateway registered the topic with
        // every sensor, and they answered REGACK.
        assert!(u(d, "registers") >= 10, "{d}");
        assert!(d["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{d}");
    }
}

#[test]
fn direct_mode_and_the_comparison() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let r = bench(gw.addr().port(), &broker, &["-c", "6", "-n", "30", "-q", "1", "--direct"]);
    complete(&r, "direct", 6, 180);
    assert!(r.json["gateway"].is_null() && r.json["ratio"].is_null(), "{}", r.json);
    // With broker-to-sensor traffic and two sleepers (in the direct pass,
    // persistent sessions that disconnect and connect again).
    let args = [
        "-c",
        "8",
        "-n",
        "30",
        "-q",
        "1",
        "--compare-direct",
        "--down-count",
        "5",
        "--sleepers",
        "25",
    ];
    let r = bench(gw.addr().port(), &broker, &args);
    complete(&r, "direct", 8, 180);
    complete(&r, "gateway", 8, 180);
    for pass in ["direct", "gateway"] {
        let s = &r.json[pass]["sleep"];
        assert_eq!((u(s, "asleep"), u(s, "delivered"), u(s, "lost")), (2, 20, 0), "{pass}: {s}");
    }
    let ratio = &r.json["ratio"];
    assert_eq!(ratio["publish"]["sent"], 1.0, "{ratio}");
    assert!(ratio["publish"]["sent_per_second"].as_f64().unwrap() > 0.0, "{ratio}");
    assert!(ratio["received"]["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{ratio}");
    assert_eq!(ratio["down"]["delivered"], 1.0, "{ratio}");
    assert!(r.stderr.contains("of direct"), "{}", r.stderr);
}

#[test]
fn gateway_process_figures() {
    let broker = Mosquitto::start();
    let gw = GatewayProcess::spawn(&["--broker", &broker.url(), "--listen", "127.0.0.1:0"]);
    let pid = gw.child.id().to_string();
    let r =
        bench(gw.addr.port(), &broker, &["-c", "50", "-n", "20", "-q", "1", "--gateway-pid", &pid]);
    let p = complete(&r, "gateway", 50, 1000);
    let g = &p["gateway_process"];
    assert!(u(g, "rss_connected_kib") > 0, "{g}");
    assert!(g["rss_per_sensor_bytes"].is_number() && g["cpu_us_per_msg"].is_number(), "{g}");
    assert!(p["tool"]["cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["udp_rcvbuf_errors"].is_u64(), "{p}");
    // A process that is not there is a usage error.
    let r = bench(gw.addr.port(), &broker, &["-c", "1", "--gateway-pid", "4294967295"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
}

#[test]
fn the_time_limit_cuts_short_with_exit_3() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let out = Command::new(tools_binary())
        .args(["bench", "-p", &gw.addr().port().to_string(), "--broker", &broker.url()])
        .args(["-c", "2", "-n", "100000", "-q", "1", "--rate", "200", "--max-time", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(
        (&json["cut_short"], &json["cut_short_reason"]),
        (&Value::Bool(true), &Value::from("max-time"))
    );
    assert_eq!(json["gateway"]["cut_short"], true);
    let sent = u(&json, "gateway.publish.sent");
    assert!(sent > 50 && sent < 100_000, "{json}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut short"));
}

#[test]
fn sensors_that_never_connect_exit_4() {
    let broker = Mosquitto::start();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let r =
        bench(port, &broker, &["-c", "3", "-n", "5", "--retry-ms", "100", "--max-retries", "1"]);
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert_eq!(u(&r.json, "gateway.connect.failed"), 3, "{}", r.json);
    assert!(r.json["gateway"]["connect"]["first_failure"].as_str().unwrap().contains("CONNECT"));
}

#[test]
fn a_short_payload_is_counted_and_said() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let r = bench(gw.addr().port(), &broker, &["-c", "4", "-n", "10", "-q", "1", "-s", "8"]);
    let p = complete(&r, "gateway", 4, 40);
    assert_eq!(p["received"]["stamped"], false);
    assert!(p["received"]["latency_ms"].is_null());
    let w = r.json["warnings"][0].as_str().unwrap();
    assert!(w.contains("stamp"), "{w}");
    assert!(r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn addresses_off_this_machine_are_refused() {
    for args in [
        ["-h", "192.0.2.1", "--broker", "mqtt://127.0.0.1:1"],
        ["-h", "127.0.0.1", "--broker", "mqtt://192.0.2.1"],
    ] {
        let out = Command::new(tools_binary()).arg("bench").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("not a loopback address") && err.contains("--allow-remote"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_short_soak_runs_and_loses_nothing() {
    // One pass of scripts/soak at a tenth of its rate: its own mosquitto and
    // gateway, the mixed load with sleepers, the report line.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gateway = mqttsn_tests::gateway::gateway_binary();
    let out = Command::new(root.join("scripts/soak"))
        .args(["-m", "0", "-r", "400", "-n", "40"])
        .arg(&gateway)
        .env("MQTTSN", tools_binary())
        .output()
        .expect("run scripts/soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with("passes=1 ") && summary.ends_with("lost_total=0"), "{stdout}");
    // pass,seconds,received,...: 180 publishers x 40 messages.
    let pass = stdout.lines().find(|l| l.starts_with("1,")).expect("a pass line");
    assert_eq!(pass.split(',').nth(2), Some("7200"), "{stdout}");
}
