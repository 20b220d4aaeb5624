//! A raw MQTT-SN sensor for end-to-end tests: a real UDP socket on
//! 127.0.0.1 that sends codec packets and waits (bounded) for answers.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mqttsn_codec::{Connect, Packet};

/// How long any wait for a datagram may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// One simulated sensor.
pub struct Sensor {
    sock: UdpSocket,
    gateway: SocketAddr,
    buf: Vec<u8>,
}

impl Sensor {
    /// A sensor on a fresh ephemeral port talking to `gateway`.
    pub fn new(gateway: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sensor socket");
        Self { sock, gateway, buf: vec![0u8; 65_536] }
    }

    /// The sensor's own address.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    /// Sends one packet.
    pub fn send(&self, p: Packet<'_>) {
        let mut buf = [0u8; 2048];
        let n = p.encode(&mut buf).expect("encode");
        self.send_raw(&buf[..n]);
    }

    /// Sends raw octets.
    pub fn send_raw(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.gateway).expect("send_to");
    }

    /// The next datagram from the gateway, decoded; `None` after `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).expect("timeout");
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, from)) if from == self.gateway => return Some(self.buf[..n].to_vec()),
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
