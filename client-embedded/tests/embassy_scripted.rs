//! The embassy-net adapter on a real embassy-net stack whose IP-native
//! driver talks to a scripted gateway in the same process: what a real
//! gateway will not do on demand (lose a datagram, answer from another
//! port, send more than the client can take, hang up mid-request).
//! `tests/tests/embassy.rs` runs the adapter against the real gateway.
#![cfg(feature = "embassy-net")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::task::{Context, Waker};

use embassy_futures::select::{select, Either};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_driver::{
    Capabilities, Checksum, Driver, HardwareAddress, LinkState, RxToken, TxToken,
};
use embassy_time::{Duration, Instant};
use mqttsn_client::embassy_udp::{EmbassyClient, Message, UdpError};
use mqttsn_client::{Client, Error, MessageTopic, QoS, ReturnCode, Settings, Topic, TopicFilter};
use mqttsn_codec::{Ack, Packet, Publish, SubAck, TopicId};

const STACK_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const GATEWAY_PORT: u16 = 1884;
const WAIT: Duration = Duration::from_secs(2);

/// The scripted gateway: given each datagram the client sends, the
/// datagrams to answer with, each from a source port.
type Script = Box<dyn FnMut(&[u8]) -> Vec<(u16, Vec<u8>)>>;

struct Wire {
    to_stack: VecDeque<Vec<u8>>,
    waker: Option<Waker>,
    script: Script,
    /// Every datagram the client sent.
    sent: Vec<Vec<u8>>,
}

#[derive(Clone)]
struct ScriptDriver(Rc<RefCell<Wire>>);

struct Rx(Vec<u8>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0)
    }
}

struct Tx(ScriptDriver);

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        // IPv4 (no options) then UDP: the checksums are off both ways.
        assert_eq!((packet[0], packet[9]), (0x45, 17), "IPv4/UDP");
        assert_eq!(packet[16..20], GATEWAY_ADDR.octets(), "to the gateway");
        let src_port = u16::from_be_bytes([packet[20], packet[21]]);
        assert_eq!(u16::from_be_bytes([packet[22], packet[23]]), GATEWAY_PORT);
        let payload = packet[28..].to_vec();
        let mut wire = (self.0).0.borrow_mut();
        let replies = (wire.script)(&payload);
        wire.sent.push(payload);
        for (from_port, datagram) in replies {
            wire.to_stack.push_back(ipv4_udp(from_port, src_port, &datagram));
        }
        if let Some(w) = wire.waker.take() {
            w.wake();
        }
        r
    }
}

impl Driver for ScriptDriver {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Rx, Tx)> {
        let mut wire = self.0.borrow_mut();
        match wire.to_stack.pop_front() {
            Some(p) => Some((Rx(p), Tx(self.clone()))),
            None => {
                wire.waker = Some(cx.waker().clone());
                None
            }
        }
    }

    fn transmit(&mut self, _cx: &mut Context<'_>) -> Option<Tx> {
        Some(Tx(self.clone()))
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = 1500;
        caps.checksum.ipv4 = Checksum::None;
        caps.checksum.udp = Checksum::None;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ip
    }
}

/// An IPv4/UDP packet from the gateway's address to the stack, checksums
/// left at zero (the stack does not check them here).
fn ipv4_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&GATEWAY_ADDR.octets());
    p[16..20].copy_from_slice(&STACK_ADDR.octets());
    p[20..22].copy_from_slice(&src_port.to_be_bytes());
    p[22..24].copy_from_slice(&dst_port.to_be_bytes());
    p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn encode(packet: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0; 1024];
    let n = packet.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Runs `body` with an adapter on a stack whose gateway follows `script`;
/// returns what the client sent.
fn scripted(
    script: impl FnMut(&[u8]) -> Vec<(u16, Vec<u8>)> + 'static,
    body: impl AsyncFnOnce(&mut EmbassyClient<'_, Box<dyn FnMut(Message<'_>) + '_>>),
    on_message: impl FnMut(Message<'_>),
) -> Vec<Vec<u8>> {
    let wire = Rc::new(RefCell::new(Wire {
        to_stack: VecDeque::new(),
        waker: None,
        script: Box::new(script),
        sent: Vec::new(),
    }));
    let mut resources = StackResources::<2>::new();
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(STACK_ADDR, 8),
        gateway: None,
        dns_servers: Default::default(),
    });
    let (stack, mut runner) =
        embassy_net::new(ScriptDriver(wire.clone()), config, &mut resources, 7);
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx_buf = [0u8; 1024];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_buf = [0u8; 1024];
    let socket: UdpSocket<'_> =
        UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    let settings = Settings { retry_ms: 50, max_retries: 2, ..Settings::default() };
    let client = Client::new(b"scripted", settings).unwrap();
    let gateway = IpEndpoint::new(GATEWAY_ADDR.into(), GATEWAY_PORT);
    let on_message: Box<dyn FnMut(Message<'_>) + '_> = Box::new(on_message);
    let mut c = EmbassyClient::new(socket, gateway, client, on_message).unwrap();
    embassy_futures::block_on(async {
        match select(runner.run(), body(&mut c)).await {
            Either::First(never) => match never {},
            Either::Second(()) => {}
        }
    });
    drop(c);
    let sent = std::mem::take(&mut wire.borrow_mut().sent);
    sent
}

fn connack() -> Vec<u8> {
    encode(&Packet::ConnAck(ReturnCode::Accepted))
}

#[test]
fn a_lost_connect_is_sent_again_and_messages_reach_the_callback_mid_request() {
    let mut connects = 0;
    let script = move |d: &[u8]| match Packet::decode(d).unwrap() {
        // The first CONNECT is lost.
        Packet::Connect(_) => {
            connects += 1;
            if connects == 1 {
                vec![]
            } else {
                vec![(GATEWAY_PORT, connack())]
            }
        }
        Packet::Publish(p) => {
            let message = encode(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: TopicId::Predefined(5),
                msg_id: 0,
                data: b"from the gateway",
            }));
            let puback = encode(&Packet::PubAck(Ack {
                topic_id: p.topic.raw(),
                msg_id: p.msg_id,
                return_code: ReturnCode::Accepted,
            }));
            // A message first, then a stranger's PUBACK (another source
            // port: ignored), then the gateway's.
            vec![
                (GATEWAY_PORT, message),
                (GATEWAY_PORT + 1, puback.clone()),
                (GATEWAY_PORT, puback),
            ]
        }
        _ => vec![],
    };
    let got = Rc::new(RefCell::new(Vec::new()));
    let sink = got.clone();
    let sent = scripted(
        script,
        async |c| {
            let start = Instant::now();
            c.connect(true, 60, None, WAIT).await.unwrap();
            assert!(start.elapsed() >= Duration::from_millis(50), "answered after Tretry");
            c.publish(Topic::Short(*b"ab"), b"x", QoS::AtLeastOnce, false, WAIT).await.unwrap();
            assert_eq!(c.delivered(), 1);
        },
        move |m| {
            assert_eq!(m.topic_str(), None, "a predefined id has no name");
            sink.borrow_mut().push((m.topic, m.payload.to_vec(), m.qos, m.retain));
        },
    );
    assert_eq!(
        *got.borrow(),
        [(MessageTopic::Predefined(5), b"from the gateway".to_vec(), QoS::AtMostOnce, true)]
    );
    assert_eq!(sent.len(), 3, "CONNECT twice, PUBLISH once: {sent:?}");
    assert_eq!(sent[0], sent[1], "the same CONNECT again");
}

#[test]
fn a_datagram_larger_than_the_buffer_is_dropped() {
    let script = |d: &[u8]| match Packet::decode(d).unwrap() {
        Packet::Connect(_) => {
            let big = encode(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: TopicId::Short(*b"bg"),
                msg_id: 0,
                data: &[7; 300],
            }));
            vec![(GATEWAY_PORT, big), (GATEWAY_PORT, connack())]
        }
        _ => vec![],
    };
    scripted(
        script,
        async |c| {
            c.connect(true, 60, None, WAIT).await.unwrap();
            assert_eq!(c.delivered(), 0, "300 octets do not fit a 128-octet client");
        },
        |_| panic!("no message"),
    );
}

#[test]
fn a_disconnect_from_the_gateway_ends_the_wait_and_refusals_are_errors() {
    let script = |d: &[u8]| match Packet::decode(d).unwrap() {
        Packet::Connect(_) => vec![(GATEWAY_PORT, connack())],
        Packet::Register(r) => vec![(
            GATEWAY_PORT,
            encode(&Packet::RegAck(Ack {
                topic_id: 0,
                msg_id: r.msg_id,
                return_code: ReturnCode::NotSupported,
            })),
        )],
        Packet::Subscribe(s) if s.topic == TopicFilter::Short(*b"ok") => vec![(
            GATEWAY_PORT,
            encode(&Packet::SubAck(SubAck {
                qos: QoS::AtLeastOnce,
                topic_id: 0,
                msg_id: s.msg_id,
                return_code: ReturnCode::Accepted,
            })),
        )],
        Packet::Subscribe(_) => vec![(GATEWAY_PORT, encode(&Packet::Disconnect(None)))],
        _ => vec![],
    };
    scripted(
        script,
        async |c| {
            c.connect(true, 60, None, WAIT).await.unwrap();
            let refused = c.register("not/here", WAIT).await.unwrap_err();
            assert_eq!(refused, UdpError::Refused(ReturnCode::NotSupported));
            assert!(refused.to_string().starts_with("refused by the gateway"));
            // A name that was never registered cannot be published by id.
            let err = c
                .publish(Topic::Name("not/here"), b"x", QoS::NoSession, false, WAIT)
                .await
                .unwrap_err();
            assert_eq!(err, UdpError::Client(Error::NotRegistered));
            let ok = c.subscribe(TopicFilter::Short(*b"ok"), QoS::AtLeastOnce, WAIT).await;
            assert_eq!(ok, Ok((0, QoS::AtLeastOnce)));
            let gone = c.subscribe(TopicFilter::Name(b"x/#"), QoS::AtMostOnce, WAIT).await;
            assert_eq!(gone, Err(UdpError::GatewayGone));
            assert!(!c.client.is_connected());
            assert_eq!(
                c.sleep(10, WAIT).await,
                Err(UdpError::Client(Error::NotConnected)),
                "asleep needs a connection"
            );
        },
        |_| {},
    );
}
