//! The management API of the gateway binary, over HTTP, with real sensors
//! over UDP and a real mosquitto: listing and filtering sessions, one
//! session in detail, the broker status and the rates, disconnecting a
//! sensor (with and without its will), the token, and deleting a stored
//! session so that a restart does not bring it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Connect, Packet, QoS, ReturnCode, TopicFilter, TopicId, WillTopic};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::http::{call, get};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;
use serde_json::Value;

const TOKEN: &str = "api-test-token-0123456789";

/// A folder of its own for one test.
fn folder() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("mqttsn-api"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The gateway binary with `token` (or none) and `store` (or none).
fn start(broker: &Mosquitto, dir: &Path, token: Option<&str>, store: Option<&Path>) -> Running {
    let cfg = dir.join("gateway.toml");
    let token = token.map(|t| format!("api_token = \"{t}\"\n")).unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n[broker]\nurl = \"{}\"\n\
             [monitoring]\nsys_interval_secs = 0\n{token}",
            broker.url()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let mut args = vec!["--config".to_owned(), cfg];
    if let Some(store) = store {
        args.extend(["--store".to_owned(), store.to_str().unwrap().to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = GatewayProcess::spawn(&args);
    let api = gw.metrics.expect("the monitoring address is logged");
    Running { gw, api }
}

struct Running {
    gw: GatewayProcess,
    api: SocketAddr,
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client_ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["client_id"].as_str().expect("client_id").to_owned())
        .collect()
}

fn path(id: &str) -> String {
    format!("/api/v1/sessions/{id}")
}

#[test]
fn sessions_are_listed_filtered_and_shown_in_detail() {
    let broker = Mosquitto::start();
    let dir = folder();
    let run = start(&broker, &dir, None, None);
    let gh1 = unique("gh");
    let gh2 = unique("gh");
    let barn = unique("barn");

    let mut s1 = Sensor::new(run.gw.addr);
    s1.connect(&gh1, true, 30);
    let topic = unique("t");
    let id = s1.register(&topic, 1);
    let filter = format!("{}/#", unique("cmd"));
    let ack = s1.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::AtLeastOnce, 2);
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    for msg_id in 3..8 {
        s1.publish(TopicId::Normal(id), QoS::AtLeastOnce, msg_id, b"21.5", false);
        s1.expect(Packet::PubAck(Ack { topic_id: id, msg_id, return_code: ReturnCode::Accepted }));
    }
    let mut s2 = Sensor::new(run.gw.addr);
    s2.connect(&gh2, true, 30);
    s2.send(Packet::Disconnect(Some(120)));
    s2.expect(Packet::Disconnect(None));
    let mut s3 = Sensor::new(run.gw.addr);
    s3.connect(&barn, true, 45);

    let all = get(run.api, "/api/v1/sessions");
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(all.header("content-type").is_some_and(|t| t.starts_with("application/json")));
    let all = all.json();
    assert_eq!(all["total"], 3, "{all}");
    let mut expected = vec![gh1.clone(), gh2.clone(), barn.clone()];
    expected.sort();
    assert_eq!(client_ids(&all), expected, "sorted by ClientId");
    let one = all["sessions"].as_array().unwrap().iter().find(|s| s["client_id"] == gh1).unwrap();
    assert_eq!(one["state"], "active");
    assert_eq!(one["peer"], s1.addr().to_string());
    assert_eq!(one["keepalive_secs"], 30);
    assert_eq!(
        (one["subscription_count"].clone(), one["registration_count"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(one["upstream"], "up");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let since = one["since"].as_u64().expect("since in unix seconds");
    assert!(since <= now && now - since < 60, "since {since}, now {now}");

    let asleep = get(run.api, "/api/v1/sessions?state=asleep").json();
    assert_eq!(client_ids(&asleep), [gh2.as_str()]);
    assert_eq!(asleep["sessions"][0]["sleep_secs"], 120);
    let either = get(run.api, "/api/v1/sessions?state=active,asleep&client_id=gh-").json();
    assert_eq!(client_ids(&either).len(), 2, "{either}");
    let named = get(run.api, &format!("/api/v1/sessions?client_id={barn}")).json();
    assert_eq!(client_ids(&named), [barn.as_str()]);
    let first = get(run.api, "/api/v1/sessions?limit=1").json();
    assert_eq!((first["total"].as_u64(), client_ids(&first)), (Some(3), vec![expected[0].clone()]));
    for bad in ["state=sleepy", "limit=0", "limit=many", "sort=up"] {
        let r = get(run.api, &format!("/api/v1/sessions?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.json()["error"], "bad_parameter");
    }

    let detail = get(run.api, &path(&gh1));
    assert_eq!(detail.status, 200, "{}", detail.body);
    let detail = detail.json();
    assert_eq!(detail["subscriptions"], serde_json::json!([{ "filter": filter, "qos": 1 }]));
    assert_eq!(detail["registrations"], serde_json::json!([{ "topic_id": id, "topic": topic }]));
    let missing = get(run.api, &path("nobody-here"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");

    let b = get(run.api, "/api/v1/broker").json();
    assert_eq!(b["state"], "up", "{b}");
    assert!(b["url"].as_str().unwrap().contains(&broker.port().to_string()), "{b}");
    assert!(b["connections"].as_u64().unwrap() >= 4, "3 sensors and the gateway's own: {b}");

    let rates = get(run.api, "/api/v1/rates").json();
    assert_eq!(rates["interval_secs"], 10);
    let counted = rates["buckets"].as_array().unwrap().iter().chain([&rates["current"]]);
    let messages_in: u64 = counted.map(|b| b["messages_in"].as_u64().unwrap_or(0)).sum();
    assert_eq!(messages_in, 5, "{rates}");

    let status = get(run.api, "/api/v1/status").json();
    assert_eq!(status["broker"]["state"], "up");
    assert_eq!(status["gateway"]["api"], "read-only");
    assert_eq!(status["sessions"]["total"], 3);
    assert_eq!(status["limits"]["max_topics"], 1000);
    assert!(get(run.api, "/api/v1/nothing").status == 404);
    assert_eq!(call(run.api, "DELETE", "/api/v1/sessions", None).status, 405);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CONNECT with a will through the handshake.
fn connect_with_will(s: &mut Sensor, id: &str, topic: &str, msg: &[u8]) {
    s.send(Packet::Connect(Connect {
        will: true,
        clean_session: true,
        protocol_id: 1,
        duration: 30,
        client_id: id.as_bytes(),
    }));
    s.expect(Packet::WillTopicReq);
    s.send(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.as_bytes(),
    })));
    s.expect(Packet::WillMsgReq);
    s.send(Packet::WillMsg(msg));
    s.expect(Packet::ConnAck(ReturnCode::Accepted));
}

#[test]
fn a_disconnect_needs_the_token_reaches_the_sensor_and_fires_the_will_only_when_asked() {
    let broker = Mosquitto::start();
    let dir = folder();
    let run = start(&broker, &dir, Some(TOKEN), None);
    let wills = unique("will");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{wills}/#"), 1);

    let quiet = unique("quiet");
    let mut s = Sensor::new(run.gw.addr);
    connect_with_will(&mut s, &quiet, &format!("{wills}/quiet"), b"gone");
    let url = format!("{}/disconnect", path(&quiet));
    let r = call(run.api, "POST", &url, None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(call(run.api, "POST", &url, Some("not-the-token-at-all")).status, 401);
    // Still connected: it answers a ping.
    s.send(Packet::PingReq(None));
    s.expect(Packet::PingResp);

    let r = call(run.api, "POST", &url, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], true);
    s.expect(Packet::Disconnect(None));
    eventually("the session to end", || {
        let r = get(run.api, &path(&quiet));
        r.status == 404 || r.json()["state"] == "ended"
    });
    let again = call(run.api, "POST", &url, Some(TOKEN)).status;
    assert!(again == 404 || again == 409, "{again}");
    assert!(watcher.recv_within(Duration::from_millis(500)).is_none(), "no will by default");

    let loud = unique("loud");
    let mut s = Sensor::new(run.gw.addr);
    connect_with_will(&mut s, &loud, &format!("{wills}/loud"), b"lost");
    let url = format!("{}/disconnect?will=true", path(&loud));
    let r = call(run.api, "POST", &url, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    s.expect(Packet::Disconnect(None));
    let m = watcher.recv_within(Duration::from_secs(10)).expect("the will, when asked for");
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (format!("{wills}/loud").as_str(), &b"lost"[..])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_token_configured_the_api_refuses_every_change() {
    let broker = Mosquitto::start();
    let dir = folder();
    let run = start(&broker, &dir, None, None);
    let id = unique("s");
    let mut s = Sensor::new(run.gw.addr);
    s.connect(&id, false, 30);
    for (method, url) in
        [("POST", format!("{}/disconnect", path(&id))), ("DELETE", format!("{}/stored", path(&id)))]
    {
        let r = call(run.api, method, &url, Some(TOKEN));
        assert_eq!(r.status, 403, "{method} {url}: {}", r.body);
        assert_eq!(r.json()["error"], "read_only");
    }
    s.send(Packet::PingReq(None));
    s.expect(Packet::PingResp);
    assert_eq!(get(run.api, &path(&id)).json()["state"], "active");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deleted_stored_session_is_gone_and_stays_gone_after_a_restart() {
    let broker = Mosquitto::start();
    let dir = folder();
    let store = dir.join("sessions.redb");
    let mut run = start(&broker, &dir, Some(TOKEN), Some(&store));
    let (doomed, kept) = (unique("doomed"), unique("kept"));
    for id in [&doomed, &kept] {
        let mut s = Sensor::new(run.gw.addr);
        s.connect(id, false, 30);
        s.register(&unique("t"), 1);
        s.send(Packet::Disconnect(None));
        s.expect(Packet::Disconnect(None));
    }
    for id in [&doomed, &kept] {
        eventually("the session to end", || get(run.api, &path(id)).json()["state"] == "ended");
    }

    // A connected sensor's session is not deleted.
    let live = unique("live");
    let mut s = Sensor::new(run.gw.addr);
    s.connect(&live, false, 30);
    let r = call(run.api, "DELETE", &format!("{}/stored", path(&live)), Some(TOKEN));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "connected");

    let url = format!("{}/stored", path(&doomed));
    assert_eq!(call(run.api, "DELETE", &url, None).status, 401);
    let r = call(run.api, "DELETE", &url, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["deleted"], true);
    eventually("the session to be gone", || get(run.api, &path(&doomed)).status == 404);
    assert_eq!(call(run.api, "DELETE", &url, Some(TOKEN)).status, 404);
    let status = run.gw.terminate();
    assert!(status.success(), "{status}");

    run = start(&broker, &dir, Some(TOKEN), Some(&store));
    let restored = get(run.api, &path(&kept));
    assert_eq!(restored.status, 200, "the store restores the other session: {}", restored.body);
    assert_eq!(restored.json()["registration_count"], 1);
    assert_eq!(get(run.api, &path(&doomed)).status, 404, "deleted from the store too");
    drop(run);
    let _ = std::fs::remove_dir_all(&dir);
}
