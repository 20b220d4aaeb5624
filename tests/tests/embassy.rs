//! The microcontroller client's embassy-net adapter on a real embassy-net
//! `Stack`, run on the host, against the real gateway and mosquitto.
//!
//! The stack's driver is IP-native (`Medium::Ip`) and bridges to a real
//! `std::net::UdpSocket` on 127.0.0.1: an outgoing IPv4/UDP packet is
//! parsed and its payload sent to its destination port; a datagram that
//! arrives is wrapped in IPv4 and UDP headers (with their checksums, which
//! smoltcp verifies) addressed to the stack. The stack's own address is
//! 127.0.0.2, so every address involved is on the loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration as StdDuration;

use embassy_futures::select::{select, Either};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState};
use embassy_time::{Duration, Instant, Timer};
use mqttsn_client::embassy_udp::{EmbassyClient, Message, UdpError};
use mqttsn_client::{Client, Event, QoS, Settings, Topic, TopicFilter};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;

const WAIT: Duration = Duration::from_secs(3);
/// The embassy-net stack's own address.
const STACK_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

// ----- the bridge between the embassy-net stack and a host socket -----

struct Shared {
    /// IPv4 packets for the stack.
    inbound: Mutex<(VecDeque<Vec<u8>>, Option<Waker>)>,
    /// The stack's UDP port, learnt from what it sends.
    stack_port: AtomicU16,
    stop: AtomicBool,
}

/// An IP-native embassy-net driver over a real UDP socket on 127.0.0.1.
struct Bridge {
    socket: Arc<StdUdpSocket>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    fn new() -> Self {
        let socket = Arc::new(StdUdpSocket::bind("127.0.0.1:0").expect("bind"));
        socket.set_read_timeout(Some(StdDuration::from_millis(20))).expect("timeout");
        let shared = Arc::new(Shared {
            inbound: Mutex::new((VecDeque::new(), None)),
            stack_port: AtomicU16::new(0),
            stop: AtomicBool::new(false),
        });
        let (sock, sh) = (socket.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !sh.stop.load(Ordering::Relaxed) {
                // Errors are read timeouts, or ICMP news of an earlier
                // datagram: nothing to deliver.
                let Ok((n, SocketAddr::V4(from))) = sock.recv_from(&mut buf) else { continue };
                let port = sh.stack_port.load(Ordering::Relaxed);
                if port == 0 {
                    continue;
                }
                let packet = ipv4_udp(*from.ip(), from.port(), STACK_ADDR, port, &buf[..n]);
                let mut inbound = sh.inbound.lock().unwrap();
                inbound.0.push_back(packet);
                if let Some(w) = inbound.1.take() {
                    w.wake();
                }
            }
        });
        Self { socket, shared, thread: Some(thread) }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Rx(Vec<u8>);

impl embassy_net_driver::RxToken for Rx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0)
    }
}

struct Tx<'a> {
    socket: &'a StdUdpSocket,
    shared: &'a Shared,
}

impl embassy_net_driver::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        let (src_port, dst, payload) = parse_ipv4_udp(&packet).expect("an IPv4/UDP packet");
        assert!(dst.ip().is_loopback(), "the stack sent to {dst}: loopback only");
        self.shared.stack_port.store(src_port, Ordering::Relaxed);
        // Loopback: the send does not block, and a closed port only makes
        // a later receive report an error.
        let _ = self.socket.send_to(payload, dst);
        r
    }
}

impl Driver for Bridge {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Rx, Tx<'_>)> {
        let mut inbound = self.shared.inbound.lock().unwrap();
        match inbound.0.pop_front() {
            Some(p) => Some((Rx(p), Tx { socket: &self.socket, shared: &self.shared })),
            None => {
                inbound.1 = Some(cx.waker().clone());
                None
            }
        }
    }

    fn transmit(&mut self, _cx: &mut Context<'_>) -> Option<Tx<'_>> {
        Some(Tx { socket: &self.socket, shared: &self.shared })
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        // Checksums stay on (both ways): the bridge writes correct ones.
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = 1500;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ip
    }
}

/// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying a UDP datagram, checksums included.
fn ipv4_udp(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&src_port.to_be_bytes());
    p[22..24].copy_from_slice(&dst_port.to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    // The pseudo-header: addresses, protocol, UDP length.
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let partial = u32::from(!checksum(0, &pseudo));
    let udp_sum = match checksum(partial, &p[20..]) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// The source port, destination and payload of an IPv4/UDP packet whose
/// checksums are right.
fn parse_ipv4_udp(p: &[u8]) -> Option<(u16, SocketAddrV4, &[u8])> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if checksum(0, &p[..ihl]) != 0 || total > p.len() {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let udp = &p[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let udp = udp.get(..udp_len)?;
    if udp[6..8] != [0, 0] {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        if checksum(u32::from(!checksum(0, &pseudo)), udp) != 0 {
            return None;
        }
    }
    let src_port = u16::from_be_bytes([udp[0], udp[1]]);
    let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
    Some((src_port, SocketAddrV4::new(dst, dst_port), &udp[8..]))
}

#[test]
fn the_bridge_writes_and_reads_checked_packets() {
    let p = ipv4_udp(Ipv4Addr::LOCALHOST, 1884, STACK_ADDR, 49152, b"hello");
    let (src_port, dst, payload) = parse_ipv4_udp(&p).unwrap();
    assert_eq!(
        (src_port, dst, payload),
        (1884, SocketAddrV4::new(STACK_ADDR, 49152), &b"hello"[..])
    );
    let mut bad = p.clone();
    bad[30] ^= 1;
    assert!(parse_ipv4_udp(&bad).is_none(), "a corrupted payload fails the UDP checksum");
}

// ----- running a test body on the stack -----

/// Runs `body` on an embassy-net stack (127.0.0.2/8) whose runner is
/// polled alongside it, on a single-threaded runtime.
fn on_stack(body: impl AsyncFnOnce(Stack<'_>)) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut resources = StackResources::<2>::new();
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(STACK_ADDR, 8),
        gateway: None,
        dns_servers: Default::default(),
    });
    let (stack, mut runner) = embassy_net::new(Bridge::new(), config, &mut resources, 0x5eed);
    rt.block_on(async {
        match select(runner.run(), body(stack)).await {
            Either::First(never) => match never {},
            Either::Second(()) => {}
        }
    });
}

fn settings() -> Settings {
    Settings { retry_ms: 300, max_retries: 3, ..Settings::default() }
}

fn endpoint(addr: SocketAddr) -> IpEndpoint {
    let SocketAddr::V4(v4) = addr else { panic!("an IPv4 gateway") };
    IpEndpoint::new((*v4.ip()).into(), v4.port())
}

/// What the callback received: topic text and payload.
type Inbox = Rc<RefCell<Vec<(Option<String>, Vec<u8>)>>>;

fn collector(inbox: &Inbox) -> impl FnMut(Message<'_>) {
    let inbox = inbox.clone();
    move |m| inbox.borrow_mut().push((m.topic_str().map(str::to_owned), m.payload.to_vec()))
}

#[test]
fn connect_register_publish_subscribe_sleep_and_wake() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("embassy");
    let own = format!("{base}/own");
    let reading = format!("{base}/reading");
    let will = format!("{base}/will");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&reading, 2);
    watcher.subscribe("eq", 0);
    let mut publisher = MqttClient::connect(broker.port(), &unique("pub"));
    let client_id = unique("e");

    on_stack(async move |stack| {
        let mut rx_meta = [PacketMetadata::EMPTY; 8];
        let mut rx_buf = [0u8; 2048];
        let mut tx_meta = [PacketMetadata::EMPTY; 8];
        let mut tx_buf = [0u8; 2048];
        let socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
        let inbox = Inbox::default();
        let client: Client<8, 2, 256> = Client::new(client_id.as_bytes(), settings()).unwrap();
        let mut c =
            EmbassyClient::new(socket, endpoint(gw.addr()), client, collector(&inbox)).unwrap();
        let started = Instant::now();

        // CONNECT with a will: the adapter answers WILLTOPICREQ and
        // WILLMSGREQ on the way.
        c.connect(false, 60, Some((&will, b"gone", QoS::AtLeastOnce, false)), WAIT).await.unwrap();
        assert!(c.client.is_connected());

        // A QoS 1 message on a subscribed topic comes back to us.
        let (id, granted) =
            c.subscribe(TopicFilter::Name(own.as_bytes()), QoS::AtLeastOnce, WAIT).await.unwrap();
        assert_ne!(id, 0, "a concrete name has a topic id");
        assert_eq!(granted, QoS::AtLeastOnce);
        c.publish(Topic::Name(&own), b"round trip", QoS::AtLeastOnce, false, WAIT).await.unwrap();
        if inbox.borrow().is_empty() {
            assert!(c.next_message(WAIT).await.unwrap(), "our message back");
        }
        assert_eq!(
            inbox.borrow_mut().remove(0),
            (Some(own.clone()), b"round trip".to_vec()),
            "delivered with its topic name"
        );

        // REGISTER, then QoS 0, 1 and 2 to a topic the broker watcher reads.
        let reading_id = c.register(&reading, WAIT).await.unwrap();
        assert_eq!(c.register(&reading, WAIT).await.unwrap(), reading_id, "known: no REGISTER");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("q{}", qos.level());
            c.publish(Topic::Id(reading_id), payload.as_bytes(), qos, false, WAIT).await.unwrap();
            let m = watcher.recv();
            assert_eq!(
                (m.topic.as_str(), m.payload.as_slice()),
                (reading.as_str(), payload.as_bytes())
            );
        }
        // QoS -1 to a short topic name.
        c.publish(Topic::Short(*b"eq"), b"minus one", QoS::NoSession, false, WAIT).await.unwrap();
        assert_eq!(watcher.recv().payload, b"minus one");

        // Asleep: the gateway buffers what the broker sends; waking takes
        // it (through the callback) until PINGRESP.
        c.sleep(60, WAIT).await.unwrap();
        assert!(c.client.is_asleep());
        publisher.publish(&own, b"while asleep", 1, false);
        let mut got = 0;
        for _ in 0..40 {
            got += c.wake(WAIT).await.unwrap();
            assert!(c.client.is_asleep(), "asleep again after PINGRESP");
            if got > 0 {
                break;
            }
            // Not buffered yet: the broker is still on its way.
            Timer::after(Duration::from_millis(25)).await;
        }
        assert_eq!(got, 1);
        assert_eq!(inbox.borrow_mut().remove(0), (Some(own.clone()), b"while asleep".to_vec()));
        assert_eq!(c.wake(WAIT).await.unwrap(), 0, "nothing delivered twice");

        // The sensor cycle: CONNECT again (session kept), publish by the
        // id known from before, sleep.
        c.connect(false, 60, None, WAIT).await.unwrap();
        c.publish(Topic::Id(reading_id), b"after sleep", QoS::AtLeastOnce, false, WAIT)
            .await
            .unwrap();
        assert_eq!(watcher.recv().payload, b"after sleep");
        c.unsubscribe(TopicFilter::Name(own.as_bytes()), WAIT).await.unwrap();
        c.disconnect(WAIT).await.unwrap();
        assert!(!c.client.is_connected());
        assert!(inbox.borrow().is_empty(), "no stray message: {:?}", inbox.borrow());
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    });
}

#[test]
fn an_unanswered_request_times_out_then_the_gateway_is_lost() {
    // A port where nothing listens.
    let silent = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    on_stack(async move |stack| {
        let mut rx_meta = [PacketMetadata::EMPTY; 4];
        let mut rx_buf = [0u8; 512];
        let mut tx_meta = [PacketMetadata::EMPTY; 4];
        let mut tx_buf = [0u8; 512];
        let socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
        let settings = Settings { retry_ms: 100, max_retries: 2, ..Settings::default() };
        let client: Client = Client::new(b"lonely", settings).unwrap();
        let mut c = EmbassyClient::new(socket, endpoint(silent_addr), client, |_| {}).unwrap();
        assert_eq!(c.client.poll_timeout(), None);

        let err = c.connect(true, 60, None, Duration::from_millis(150)).await.unwrap_err();
        assert_eq!(err, UdpError::Timeout);
        assert_eq!(err.to_string(), "no answer from the gateway");

        // The CONNECT went out (and again after Tretry), the same octets
        // each time, through the stack and the bridge.
        let mut sent = Vec::new();
        silent.set_read_timeout(Some(StdDuration::from_millis(10))).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((n, _)) = silent.recv_from(&mut buf) {
            sent.push(buf[..n].to_vec());
        }
        assert!(!sent.is_empty());
        assert!(sent.iter().all(|d| d == &sent[0]), "retransmitted as it was: {sent:?}");
        assert_eq!(sent[0][1], 0x04, "a CONNECT");

        // Keep waiting: after Nretry the gateway is lost.
        let start = Instant::now();
        let lost =
            c.run_until(Duration::from_secs(2), |e| matches!(e, Event::Connected).then_some(()));
        assert_eq!(lost.await.unwrap_err(), UdpError::GatewayGone);
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(!c.client.is_connected());
    });
}
