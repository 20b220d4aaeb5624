//! A raw MQTT-SN sensor for end-to-end tests: a real UDP socket on
//! 127.0.0.1 (or a serial line, [`crate::serial::Port`]) that sends codec
//! packets and waits (bounded) for answers.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mqttsn_codec::{Connect, Packet};

/// How long any wait for a datagram may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// One simulated sensor.
pub struct Sensor {
    link: Link,
    buf: Vec<u8>,
}

/// How a sensor reaches the gateway.
enum Link {
    Udp { sock: UdpSocket, gateway: SocketAddr },
    Serial(Box<crate::serial::Port>),
}

impl Sensor {
    /// A sensor on a fresh ephemeral port talking to `gateway`.
    pub fn new(gateway: SocketAddr) -> Self {
        Self::bound("127.0.0.1:0".parse().expect("addr"), gateway)
    }

    /// A sensor on `local` (`[::1]:0`: over IPv6) talking to `gateway`.
    pub fn bound(local: SocketAddr, gateway: SocketAddr) -> Self {
        let sock = UdpSocket::bind(local).expect("bind sensor socket");
        Self { link: Link::Udp { sock, gateway }, buf: vec![0u8; 65_536] }
    }

    /// A sensor on a serial line.
    pub fn serial(port: crate::serial::Port) -> Self {
        Self { link: Link::Serial(Box::new(port)), buf: Vec::new() }
    }

    /// The sensor's own address (a UDP sensor's).
    pub fn addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp { sock, .. } => sock.local_addr().expect("local addr"),
            Link::Serial(_) => panic!("a serial sensor has no socket address"),
        }
    }

    /// Sends one packet.
    pub fn send(&self, p: Packet<'_>) {
        let mut buf = [0u8; 2048];
        let n = p.encode(&mut buf).expect("encode");
        self.send_raw(&buf[..n]);
    }

    /// Sends raw octets.
    pub fn send_raw(&self, bytes: &[u8]) {
        match &self.link {
            Link::Udp { sock, gateway } => {
                sock.send_to(bytes, gateway).expect("send_to");
            }
            Link::Serial(port) => port.send(bytes),
        }
    }

    /// The next datagram from the gateway, decoded; `None` after `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let (sock, gateway) = match &mut self.link {
            Link::Udp { sock, gateway } => (sock, *gateway),
            Link::Serial(port) => return port.recv_within(wait),
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            sock.set_read_timeout(Some(left)).expect("timeout");
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) if from == gateway => return Some(self.buf[..n].to_vec()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }

    /// The next datagram; fails the test after [`WAIT`].
    pub fn recv(&mut self) -> Vec<u8> {
        self.recv_within(WAIT).expect("no datagram from the gateway within the wait")
    }

    /// Waits for the next datagram and checks it decodes to `expected`.
    pub fn expect(&mut self, expected: Packet<'_>) {
        let got = self.recv();
        let p = Packet::decode(&got).unwrap_or_else(|e| panic!("bad datagram {got:02x?}: {e}"));
        assert_eq!(p, expected);
    }

    /// Receives until `pred` accepts a packet (others are returned for
    /// inspection); fails after [`WAIT`].
    pub fn expect_where(&mut self, what: &str, pred: impl Fn(&Packet<'_>) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.recv_within(left).unwrap_or_else(|| panic!("no {what} within the wait"));
            let p = Packet::decode(&got).unwrap_or_else(|e| panic!("bad datagram {got:02x?}: {e}"));
            if pred(&p) {
                return got;
            }
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(d) = self.recv_within(wait) {
            panic!("unexpected datagram: {}", describe(&d));
        }
    }

    /// CONNECT without will, then waits for CONNACK accepted.
    pub fn connect(&mut self, client_id: &str, clean: bool, duration: u16) {
        self.send(Packet::Connect(Connect {
            will: false,
            clean_session: clean,
            protocol_id: 1,
            duration,
            client_id: client_id.as_bytes(),
        }));
        self.expect(Packet::ConnAck(mqttsn_codec::ReturnCode::Accepted));
    }
}

/// One line describing a datagram, for assertion messages.
pub fn describe(d: &[u8]) -> String {
    match mqttsn_codec::Frame::decode(d) {
        Ok(f) => f.to_string(),
        Err(e) => format!("{d:02x?} ({e})"),
    }
}

/// An owned copy of a received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// DUP.
    pub dup: bool,
    /// QoS.
    pub qos: mqttsn_codec::QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic.
    pub topic: mqttsn_codec::TopicId,
    /// MsgId.
    pub msg_id: u16,
    /// Payload.
    pub data: Vec<u8>,
}

impl Sensor {
    /// REGISTERs a topic name; returns the id (fails the test on refusal).
    pub fn register(&mut self, name: &str, msg_id: u16) -> u16 {
        self.send(Packet::Register(mqttsn_codec::Register {
            topic_id: 0,
            msg_id,
            topic_name: name.as_bytes(),
        }));
        let d = self.expect_where("REGACK", |p| matches!(p, Packet::RegAck(_)));
        match Packet::decode(&d) {
            Ok(Packet::RegAck(a)) => {
                assert_eq!(a.msg_id, msg_id);
                assert_eq!(a.return_code, mqttsn_codec::ReturnCode::Accepted, "REGISTER {name}");
                a.topic_id
            }
            other => panic!("{other:?}"),
        }
    }

    /// SUBSCRIBEs and returns the SUBACK.
    pub fn subscribe(
        &mut self,
        topic: mqttsn_codec::TopicFilter<'_>,
        qos: mqttsn_codec::QoS,
        msg_id: u16,
    ) -> mqttsn_codec::SubAck {
        self.send(Packet::Subscribe(mqttsn_codec::Subscribe { dup: false, qos, msg_id, topic }));
        let d = self.expect_where("SUBACK", |p| matches!(p, Packet::SubAck(_)));
        match Packet::decode(&d) {
            Ok(Packet::SubAck(s)) => {
                assert_eq!(s.msg_id, msg_id);
                s
            }
            other => panic!("{other:?}"),
        }
    }

    /// Waits for the next PUBLISH (other datagrams are skipped).
    pub fn next_publish(&mut self) -> Received {
        let d = self.expect_where("PUBLISH", |p| matches!(p, Packet::Publish(_)));
        match Packet::decode(&d) {
            Ok(Packet::Publish(p)) => Received {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: p.topic,
                msg_id: p.msg_id,
                data: p.data.to_vec(),
            },
            other => panic!("{other:?}"),
        }
    }

    /// The next datagram, decoded into an owned description for
    /// assertions.
    pub fn next_line(&mut self) -> String {
        describe(&self.recv())
    }

    /// PUBLISH with the given fields.
    pub fn publish(
        &self,
        topic: mqttsn_codec::TopicId,
        qos: mqttsn_codec::QoS,
        msg_id: u16,
        data: &[u8],
        retain: bool,
    ) {
        self.send(Packet::Publish(mqttsn_codec::Publish {
            dup: false,
            qos,
            retain,
            topic,
            msg_id,
            data,
        }));
    }
}
