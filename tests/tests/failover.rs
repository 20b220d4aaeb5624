//! Sensors fail over between two gateways in front of one mosquitto: gateway
//! A is killed (SIGKILL) under traffic, and the sensors move to gateway B
//! with their session (CleanSession false), registering and subscribing
//! again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mqttsn_client::std_udp::{UdpClient, UdpError};
use mqttsn_client::{QoS, Settings, Topic, TopicFilter};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::mqtt_client::MqttClient;

const WAIT: Duration = Duration::from_secs(10);

/// Short timers: a lost gateway is noticed in 600 ms (Tretry 200 ms,
/// Nretry 2).
fn settings() -> Settings {
    Settings { retry_ms: 200, max_retries: 2, ..Settings::default() }
}

fn gateway(broker: &Mosquitto) -> GatewayProcess {
    let url = broker.url();
    GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &url])
}

/// Waits (bounded) for the gateway to die by SIGKILL.
fn kill(gw: &mut GatewayProcess) {
    use std::os::unix::process::ExitStatusExt;
    gw.child.kill().unwrap();
    let status = gw.child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

#[test]
fn sensors_move_to_the_next_gateway_when_one_is_killed() {
    let broker = Mosquitto::start();
    let mut a = gateway(&broker);
    let b = gateway(&broker);
    let base = unique("failover");
    let topic = format!("{base}/reading");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{base}/#"), 1);

    let gateways = [a.addr, b.addr];
    let mut sensor: UdpClient =
        UdpClient::with_gateways(&gateways, &unique("pub"), settings()).unwrap();
    sensor.connect(true, 60, None, WAIT).unwrap();
    // A subscribing sensor; its keepalive (1 s) notices the loss.
    let mut listener: UdpClient =
        UdpClient::with_gateways(&gateways, &unique("sub"), settings()).unwrap();
    listener.connect(true, 1, None, WAIT).unwrap();
    let filter = format!("{base}/to-sensor/#");
    listener.subscribe(TopicFilter::Name(filter.as_bytes()), QoS::AtLeastOnce, WAIT).unwrap();
    let mut feed = MqttClient::connect(broker.port(), &unique("feed"));
    feed.publish(&format!("{base}/to-sensor/x"), b"before", 1, false);
    let m = listener.next_message(WAIT).unwrap().expect("a message through A");
    assert_eq!(m.payload, b"before");
    assert_eq!(listener.gateway(), a.addr);

    let mut acked = Vec::new();
    let started = Instant::now();
    for i in 0..40u32 {
        if i == 15 {
            kill(&mut a);
        }
        let payload = format!("m{i}");
        match sensor.publish(Topic::Name(&topic), payload.as_bytes(), QoS::AtLeastOnce, false, WAIT)
        {
            Ok(()) => acked.push(payload.into_bytes()),
            Err(e) => panic!("publish {i}: {e}"),
        }
    }
    assert_eq!(sensor.gateway(), b.addr, "the publisher moved to B");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // Every acknowledged message reached the broker at least once.
    let mut seen = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < acked.iter().collect::<HashSet<_>>().len() && Instant::now() < deadline {
        if let Some(m) = watcher.recv_within(Duration::from_millis(200)) {
            if m.topic == topic {
                seen.insert(m.payload);
            }
        }
    }
    for p in &acked {
        assert!(
            seen.contains(p),
            "{} acknowledged but never delivered",
            String::from_utf8_lossy(p)
        );
    }

    // The subscribing sensor notices the loss by its keepalive, moves to
    // B, subscribes again there and keeps receiving.
    let deadline = Instant::now() + WAIT;
    while listener.gateway() != b.addr {
        assert!(Instant::now() < deadline, "the listener did not move to B");
        listener.poll(Duration::from_millis(100)).unwrap();
    }
    feed.publish(&format!("{base}/to-sensor/y"), b"after", 1, false);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "nothing after the move");
        match listener.next_message(Duration::from_millis(200)) {
            Ok(Some(m)) if m.payload == b"after" => {
                assert_eq!(m.topic, format!("{base}/to-sensor/y"));
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("listener: {e}"),
        }
    }
    sensor.disconnect(WAIT).unwrap();
    listener.disconnect(WAIT).unwrap();
}

#[test]
fn with_every_gateway_gone_the_call_fails() {
    let broker = Mosquitto::start();
    let mut a = gateway(&broker);
    let mut b = gateway(&broker);
    let mut sensor: UdpClient =
        UdpClient::with_gateways(&[a.addr, b.addr], &unique("gone"), settings()).unwrap();
    sensor.connect(true, 60, None, WAIT).unwrap();
    kill(&mut a);
    kill(&mut b);
    let started = Instant::now();
    let got = sensor.publish(Topic::Short(*b"xx"), b"m", QoS::AtLeastOnce, false, WAIT);
    assert!(matches!(got, Err(UdpError::GatewayGone)), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
