//! The microcontroller client (through its `std` adapter) against the real
//! gateway and mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mqttsn_client::std_udp::UdpClient;
use mqttsn_client::{QoS, Settings, Topic, TopicFilter};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> Settings {
    Settings { retry_ms: 300, max_retries: 3, ..Settings::default() }
}

#[test]
fn publish_at_every_qos_and_topic_kind() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("client");
    let mut sub = MqttClient::connect(broker.port(), &unique("sub"));
    sub.subscribe(&format!("{base}/#"), 2);
    sub.subscribe("cq", 2);
    let mut c: UdpClient = UdpClient::new(gw.addr(), &unique("c"), settings()).unwrap();
    c.connect(true, 60, None, WAIT).unwrap();
    let name = format!("{base}/reading");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        c.publish(Topic::Name(&name), format!("q{}", qos.level()).as_bytes(), qos, false, WAIT)
            .unwrap();
        let m = sub.recv();
        assert_eq!((m.topic.as_str(), m.qos), (name.as_str(), qos.level() as u8));
    }
    c.publish(Topic::Short(*b"cq"), b"short", QoS::AtLeastOnce, false, WAIT).unwrap();
    assert_eq!(sub.recv().topic, "cq");
    c.disconnect(WAIT).unwrap();
}

#[test]
fn subscribe_receive_wildcards_and_unsubscribe() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("csub");
    let mut c: UdpClient = UdpClient::new(gw.addr(), &unique("c"), settings()).unwrap();
    c.connect(true, 60, None, WAIT).unwrap();
    let filter = format!("{base}/#");
    let (id, granted) =
        c.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::ExactlyOnce, WAIT).unwrap();
    assert_eq!((id, granted), (0, QoS::ExactlyOnce));
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    for (i, qos) in [0u8, 1, 2].into_iter().enumerate() {
        publisher.publish(&format!("{base}/t{i}"), format!("m{i}").as_bytes(), qos, false);
    }
    // The gateway REGISTERs each new topic first; the client answers and
    // knows the names.
    for i in 0..3 {
        let m = c.next_message(WAIT).unwrap().expect("a message");
        assert_eq!(m.topic, format!("{base}/t{i}"));
        assert_eq!(m.payload, format!("m{i}").into_bytes());
    }
    let now = c.now();
    c.client.unsubscribe(now, TopicFilter::Name(filter.as_bytes())).unwrap();
    c.run_until(WAIT, |e| matches!(e, mqttsn_client::Event::Unsubscribed { .. }).then_some(()))
        .unwrap();
    publisher.publish(&format!("{base}/t0"), b"gone", 1, false);
    assert!(c.next_message(Duration::from_millis(400)).unwrap().is_none());
}

#[test]
fn sleep_and_wake_collect_buffered_messages() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("csleep");
    let mut c: UdpClient = UdpClient::new(gw.addr(), &unique("c"), settings()).unwrap();
    c.connect(false, 60, None, WAIT).unwrap();
    c.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, WAIT).unwrap();
    c.sleep(60, WAIT).unwrap();
    assert!(c.client.is_asleep());
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    publisher.publish(&topic, b"one", 1, false);
    publisher.publish(&topic, b"two", 2, false);
    std::thread::sleep(Duration::from_millis(100));
    let got = c.wake(WAIT).unwrap();
    let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(payloads, [&b"one"[..], &b"two"[..]]);
    assert!(c.client.is_asleep());
    assert!(c.wake(WAIT).unwrap().is_empty(), "nothing delivered twice");
}

#[test]
fn will_is_set_through_the_handshake() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let will = unique("cwill");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&will, 1);
    let mut c: UdpClient = UdpClient::new(gw.addr(), &unique("c"), settings()).unwrap();
    c.connect(true, 1, Some((&will, b"client gone", QoS::AtLeastOnce, false)), WAIT).unwrap();
    // Silent past 1 s + 50%: the will fires.
    let m = watcher.recv();
    assert_eq!(m.payload, b"client gone");
}

#[test]
fn the_tokio_adapter_publishes_subscribes_and_sleeps() {
    use mqttsn_client::tokio_udp::TokioClient;
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let topic = unique("tokio");
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c: TokioClient =
            TokioClient::new(gw.addr(), &unique("t"), settings()).await.unwrap();
        c.connect(false, 60, None, WAIT).await.unwrap();
        c.subscribe(TopicFilter::Name(topic.as_bytes()), QoS::AtLeastOnce, WAIT).await.unwrap();
        c.publish(Topic::Name(&topic), b"from tokio", QoS::AtLeastOnce, false, WAIT).await.unwrap();
        let m = c.next_message(WAIT).await.unwrap().expect("our own message back");
        assert_eq!((m.topic.as_str(), m.payload.as_slice()), (topic.as_str(), &b"from tokio"[..]));
        c.sleep(60, WAIT).await.unwrap();
        publisher.publish(&topic, b"while asleep", 1, false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = c.wake(WAIT).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"while asleep");
        c.disconnect(WAIT).await.unwrap();
    });
}
