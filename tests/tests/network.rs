//! The gateway on the network: dual-stack listening (IPv4 and IPv6
//! sensors on one `[::]` socket), discovery on a multicast group, and two
//! gateways with the same ClientId on one broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mqttsn_codec::{Ack, Advertise, GwInfo, Packet, QoS, ReturnCode, TopicFilter, TopicId};
use mqttsn_gateway::multicast::{Group, Interface};
use mqttsn_gateway::options::MulticastDiscovery;
use mqttsn_gateway::server::ServerOptions;
use mqttsn_gateway::upstream::connection::Backoff;
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::{fast_config, Gateway, GatewayProcess};
use mqttsn_tests::mqtt_client::MqttClient;
use mqttsn_tests::sn::Sensor;

const TEST_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(500) };

#[test]
fn a_dual_stack_gateway_serves_ipv4_and_ipv6_sensors() {
    let broker = Mosquitto::start();
    let gw = Gateway::start_on(
        "[::]:0".parse().unwrap(),
        broker.port(),
        fast_config(),
        ServerOptions::default(),
        TEST_BACKOFF,
    );
    let port = gw.addr().port();
    assert!(gw.addr().is_ipv6());
    let topic = unique("dual");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{topic}/#"), 1);
    let v4 = Sensor::bound("127.0.0.1:0".parse().unwrap(), ([127, 0, 0, 1], port).into());
    let v6 =
        Sensor::bound("[::1]:0".parse().unwrap(), SocketAddr::new("::1".parse().unwrap(), port));
    for (name, mut s) in [("v4", v4), ("v6", v6)] {
        let id = unique(name);
        s.connect(&id, true, 60);
        // Both ways: the sensor's subscription comes back to its address.
        let own = format!("{topic}-in/{name}");
        s.subscribe(TopicFilter::Name(own.as_bytes()), QoS::AtLeastOnce, 1);
        let t = format!("{topic}/{name}");
        let tid = s.register(&t, 2);
        s.publish(TopicId::Normal(tid), QoS::AtLeastOnce, 3, name.as_bytes(), false);
        s.expect(Packet::PubAck(Ack {
            topic_id: tid,
            msg_id: 3,
            return_code: ReturnCode::Accepted,
        }));
        let m = watcher.recv();
        assert_eq!((m.topic, m.payload), (t, name.as_bytes().to_vec()));
        watcher.publish(&own, b"down", 0, false);
        let got = s.next_publish();
        assert_eq!(got.data, b"down");
    }
    // IPv4 sensors are shown as plain IPv4, never as mapped addresses.
    let logs = gw.logs();
    assert!(logs.contains("127.0.0.1:"), "{logs}");
    assert!(!logs.contains("::ffff:"), "{logs}");
}

/// A group and port of their own for one test (tests run in parallel).
fn test_group() -> SocketAddr {
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let last = (port % 250) as u8 + 1;
    SocketAddr::from(([239, 255, 18, last], port))
}

/// A client's socket on the group, on the loopback interface: it hears
/// what is sent to the group (its own datagrams too) and sends to it.
fn group_client(group: SocketAddr) -> (UdpSocket, Group) {
    let g = Group { addr: group, interface: Interface::Addr(Ipv4Addr::LOCALHOST), hops: 1 };
    let s = g.join().expect("join the group");
    g.prepare_sender(&s).expect("send to the group");
    s.set_nonblocking(false).unwrap();
    (s, g)
}

/// The next datagram on the group that is not `skip`, within `wait`.
fn next_on_group(s: &UdpSocket, skip: &[u8], wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.recv_from(&mut buf) {
            Ok((n, from)) if buf[..n] != *skip => return Some((buf[..n].to_vec(), from)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn encode(p: Packet<'_>) -> Vec<u8> {
    let mut b = [0u8; 64];
    let n = p.encode(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn searchgw_on_the_group_gets_gwinfo_on_the_group_and_advertise_arrives_there() {
    let broker = Mosquitto::start();
    let group = test_group();
    let (client, _) = group_client(group);
    let opts = ServerOptions {
        gateway_id: 23,
        multicast: Some(MulticastDiscovery {
            group: Group { addr: group, interface: Interface::Addr(Ipv4Addr::LOCALHOST), hops: 1 },
            advertise_every: Duration::from_secs(1),
        }),
        ..ServerOptions::default()
    };
    // Dual-stack: the group is IPv4, the gateway's socket IPv6.
    let gw = Gateway::start_on(
        "[::]:0".parse().unwrap(),
        broker.port(),
        fast_config(),
        opts,
        TEST_BACKOFF,
    );
    let search = encode(Packet::SearchGw { radius: 1 });
    let gwinfo = encode(Packet::GwInfo(GwInfo { gw_id: 23, gw_addr: &[] }));
    let advertise = encode(Packet::Advertise(Advertise { gw_id: 23, duration: 1 }));
    // The client's socket is bound to the group address: what it hears
    // was sent to the group. The gateway joins the group once it runs,
    // a little after its socket is bound, so the client searches again
    // when no answer comes, as a sensor does (spec 6.1).
    let mut got_gwinfo = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got_gwinfo.is_none() && Instant::now() < deadline {
        client.send_to(&search, group).unwrap();
        let wait = Instant::now() + Duration::from_millis(500);
        while got_gwinfo.is_none() {
            let left = wait.saturating_duration_since(Instant::now());
            let Some((d, from)) = next_on_group(&client, &search, left) else {
                break;
            };
            if d == gwinfo {
                got_gwinfo = Some(from);
            } else {
                assert_eq!(d, advertise, "only GWINFO and ADVERTISE on the group");
            }
        }
    }
    let from = got_gwinfo.expect("GWINFO on the group");
    // From the gateway's own address: the one sensors connect to.
    assert_eq!(from.port(), gw.addr().port());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (d, from) = next_on_group(&client, &search, Duration::from_secs(3))
            .expect("ADVERTISE on the group");
        if d == advertise {
            assert_eq!(from.port(), gw.addr().port());
            break;
        }
        assert!(Instant::now() < deadline, "no ADVERTISE");
    }
    // Each GWINFO and ADVERTISE is logged with its destination.
    let logs = gw.logs();
    assert!(logs.contains(&format!("to={group}")) && logs.contains("GWINFO"), "{logs}");
    assert!(logs.contains("ADVERTISE"), "{logs}");
}

#[test]
fn the_discovery_group_comes_from_the_configuration() {
    let group = test_group();
    let (client, _) = group_client(group);
    let dir = std::env::temp_dir().join(unique("mcast"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    let broker = Mosquitto::start();
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nlisten = \"[::]:0\"\n[broker]\nurl = \"mqtt://127.0.0.1:{}\"\n\
             [discovery]\ngateway_id = 61\nmulticast_group = \"{group}\"\n\
             multicast_interface = \"127.0.0.1\"\nadvertise_interval_secs = 1\n",
            broker.port()
        ),
    )
    .unwrap();
    // Interface and interval from the configuration; the group is given as
    // the flag too, as the harness turns the default group off with
    // --multicast-group "" unless the flag is there.
    let gw = GatewayProcess::spawn(&[
        "--config",
        cfg.to_str().unwrap(),
        "--multicast-group",
        &group.to_string(),
    ]);
    let search = encode(Packet::SearchGw { radius: 0 });
    let advertise = encode(Packet::Advertise(Advertise { gw_id: 61, duration: 1 }));
    let (d, from) =
        next_on_group(&client, &search, Duration::from_secs(5)).expect("ADVERTISE on the group");
    assert_eq!(d, advertise);
    assert_eq!(from.port(), gw.addr.port());
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_gateways_with_one_client_id_are_reported_and_back_off() {
    let broker = Mosquitto::start();
    let id = unique("same-gw");
    let backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2) };
    let opts = ServerOptions { own_client_id: id.clone(), ..ServerOptions::default() };
    let start = || {
        Gateway::start_on(
            "127.0.0.1:0".parse().unwrap(),
            broker.port(),
            fast_config(),
            opts.clone(),
            backoff,
        )
    };
    let (a, b) = (start(), start());
    let warning = "another client probably uses the same ClientId";
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(a.logs().contains(warning) || b.logs().contains(warning)) {
        assert!(Instant::now() < deadline, "no warning:\n{}\n{}", a.logs(), b.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let ups = |g: &Gateway| g.logs().matches("the gateway's own connection is up").count();
    let before = (ups(&a), ups(&b));
    std::thread::sleep(Duration::from_secs(4));
    let after = (ups(&a), ups(&b));
    // Backing off to 2 s (with jitter, at least 1 s): a few reconnects in
    // 4 s, not the dozens a fixed 50 ms delay would give.
    for (n, g) in [(after.0 - before.0, &a), (after.1 - before.1, &b)] {
        assert!(n <= 8, "{n} reconnects in 4 s:\n{}", g.logs());
        let logs = g.logs();
        assert!(logs.matches(warning).count() <= 1, "warned more than once:\n{logs}");
        if logs.contains(warning) {
            assert!(logs.contains("broker.client_id") && logs.contains(&id), "{logs}");
        }
    }
    // Sensors are still admitted meanwhile.
    let mut s = Sensor::new(a.addr());
    s.connect(&unique("s"), true, 60);
}

const IPV6_LINK: &str = "MQTTSN_NETWORK_IPV6_LINK";

/// The interface the IPv6 group test uses, inside its network namespace.
const LINK: &str = "mqsn0";

#[test]
fn an_ipv6_group_on_a_link_gets_gwinfo_and_advertise() {
    if std::env::var_os(IPV6_LINK).is_none() {
        // Loopback carries no IPv6 multicast: again, inside a private
        // network namespace with a veth pair of its own.
        let exe = std::env::current_exe().unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let mut cmd = std::process::Command::new("unshare");
        cmd.arg("--net");
        if !root {
            cmd.arg("--map-root-user");
        }
        let setup = format!(
            "ip link set lo up && echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && \
             ip link add {LINK} type veth peer name mqsn1 && ip link set {LINK} up && \
             ip link set mqsn1 up && exec \"$0\" \"$@\""
        );
        let out = cmd
            .args(["--", "sh", "-c", &setup])
            .arg(exe)
            .args([
                "--exact",
                &this_test("an_ipv6_group_on_a_link_gets_gwinfo_and_advertise"),
                "--nocapture",
            ])
            .env(IPV6_LINK, "1")
            .output()
            .expect("unshare (util-linux) is required; scripts/test installs it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let index = mqttsn_gateway::multicast::interface_index(LINK).expect("the veth interface");
    // Bounded: the link-local address comes when the link is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/net/if_inet6").unwrap().contains(LINK) {
        assert!(Instant::now() < deadline, "no IPv6 address on {LINK}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let broker = Mosquitto::start();
    let port = UdpSocket::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::V6(std::net::SocketAddrV6::new(
        "ff02::1:1883".parse().unwrap(),
        port,
        0,
        index,
    ));
    let group = Group { addr, interface: Interface::Index(index), hops: 1 };
    let client = group.join().expect("join the group");
    group.prepare_sender(&client).expect("send to the group");
    client.set_nonblocking(false).unwrap();
    let opts = ServerOptions {
        gateway_id: 66,
        multicast: Some(MulticastDiscovery { group, advertise_every: Duration::from_secs(1) }),
        ..ServerOptions::default()
    };
    let gw = Gateway::start_on(
        "[::]:0".parse().unwrap(),
        broker.port(),
        fast_config(),
        opts,
        TEST_BACKOFF,
    );
    let search = encode(Packet::SearchGw { radius: 1 });
    let gwinfo = encode(Packet::GwInfo(GwInfo { gw_id: 66, gw_addr: &[] }));
    let advertise = encode(Packet::Advertise(Advertise { gw_id: 66, duration: 1 }));
    let (mut saw_gwinfo, mut saw_advertise) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !(saw_gwinfo && saw_advertise) {
        // A searcher searches again until answered, as clients do: the
        // first SEARCHGW may leave before the new link carries the group.
        if !saw_gwinfo {
            client.send_to(&search, addr).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "GWINFO {saw_gwinfo}, ADVERTISE {saw_advertise}\n{}",
            gw.logs()
        );
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((d, from)) = next_on_group(&client, &search, left.min(Duration::from_millis(300)))
        else {
            continue;
        };
        assert_eq!(from.port(), gw.addr().port(), "from the gateway's own socket");
        saw_gwinfo |= d == gwinfo;
        saw_advertise |= d == advertise;
    }
}

/// The full name of a test of this file, as the test binary knows it (the
/// file is compiled into the aggregating test binary too, as a module).
fn this_test(name: &str) -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_string(),
    }
}
