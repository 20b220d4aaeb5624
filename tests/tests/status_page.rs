//! The status page in a real headless Chromium: the page's script fills
//! the sessions table with the connected sensors (the dumped DOM has
//! their ClientIds), draws the rate chart, and the screenshot is a real
//! picture of the page's size. Chromium is required: without it the test
//! fails (scripts/test installs Debian's `chromium`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, TopicId};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::http::get;
use mqttsn_tests::sn::Sensor;

/// Runs headless Chromium on `url` with `args`; returns its stdout.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the page's fetches and script finish before the dump.
        .arg("--virtual-time-budget=5000")
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): install Debian's chromium package (scripts/test does)"
            )
        });
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("chromium output")
}

/// A PNG's width, height and the octets of its image data.
fn png_facts(png: &[u8]) -> (u32, u32, usize) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (mut size, mut data) = (None, 0);
    let mut rest = &png[8..];
    while rest.len() >= 12 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let kind = &rest[4..8];
        let body = rest.get(8..8 + len).expect("a whole chunk");
        if kind == b"IHDR" {
            let w = u32::from_be_bytes(body[..4].try_into().unwrap());
            let h = u32::from_be_bytes(body[4..8].try_into().unwrap());
            size = Some((w, h));
        } else if kind == b"IDAT" {
            data += len;
        }
        rest = &rest[12 + len..];
    }
    let (w, h) = size.expect("an IHDR chunk");
    (w, h, data)
}

#[test]
fn the_status_page_lists_the_connected_sensors_in_a_real_browser() {
    let broker = Mosquitto::start();
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &broker.url()]);
    let api = gw.metrics.expect("the monitoring address is logged");
    let ids = [unique("greenhouse"), unique("barn"), unique("orchard")];
    let mut sensors = Vec::new();
    for id in &ids {
        let mut s = Sensor::new(gw.addr);
        s.connect(id, true, 60);
        let topic = s.register(&unique("t"), 1);
        for msg_id in 2..5 {
            s.publish(TopicId::Normal(topic), QoS::AtLeastOnce, msg_id, b"7", false);
            s.expect(Packet::PubAck(Ack {
                topic_id: topic,
                msg_id,
                return_code: ReturnCode::Accepted,
            }));
        }
        sensors.push(s);
    }
    let page = get(api, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|t| t.starts_with("text/html")));

    let dir = std::env::temp_dir().join(unique("mqttsn-chromium"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("http://{api}/");
    let dom = chromium(&dir.join("profile"), &["--dump-dom"], &url);
    let rows = dom
        .split("<tbody id=\"rows\">")
        .nth(1)
        .and_then(|r| r.split("</tbody>").next())
        .unwrap_or_else(|| panic!("no sessions table in the DOM: {dom}"));
    for id in &ids {
        assert!(rows.contains(&format!(">{id}<")), "{id} not in the sessions table: {rows}");
    }
    assert_eq!(rows.matches("<tr>").count(), 3, "{rows}");
    assert!(dom.contains(">healthy<"), "the broker is up: {dom}");
    assert!(dom.contains("<polyline"), "the rate chart is drawn: {dom}");

    let shot = dir.join("status.png");
    let screenshot = format!("--screenshot={}", shot.display());
    chromium(&dir.join("profile"), &[&screenshot, "--window-size=1200,900"], &url);
    let png = std::fs::read(&shot).expect("the screenshot");
    let (w, h, data) = png_facts(&png);
    assert_eq!((w, h), (1200, 900));
    // A blank page of that size compresses to about 5 kB; this one has
    // text, tables and a chart.
    assert!(data > 30_000, "the screenshot looks blank: {data} octets of image data");
    drop(sensors);
    let _ = std::fs::remove_dir_all(&dir);
}
