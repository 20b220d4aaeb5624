//! A small blocking MQTT 3.1.1 client for the broker side of end-to-end
//! tests, written independently of the gateway's own MQTT code so the two
//! check each other. Every wait is bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// The QoS of the delivery.
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
}

/// One MQTT connection.
pub struct MqttClient {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u16,
    /// Messages received while waiting for something else.
    pending: Vec<Message>,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A will for [`MqttClient::connect_with`].
pub struct TestWill<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// QoS.
    pub qos: u8,
    /// Retain.
    pub retain: bool,
}

impl MqttClient {
    /// Connects with CleanSession true and no will.
    pub fn connect(port: u16, client_id: &str) -> Self {
        Self::connect_with(port, client_id, true, None, None).expect("CONNACK accepted")
    }

    /// Connects; returns the CONNACK code on refusal.
    pub fn connect_with(
        port: u16,
        client_id: &str,
        clean: bool,
        will: Option<TestWill<'_>>,
        credentials: Option<(&str, &str)>,
    ) -> Result<Self, u8> {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to broker");
        stream.set_nodelay(true).ok();
        let mut c = Self { stream, buf: Vec::new(), next_id: 1, pending: Vec::new() };
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.push(4);
        let mut flags = if clean { 0x02 } else { 0 };
        if let Some(w) = &will {
            flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
        }
        if credentials.is_some() {
            flags |= 0xc0;
        }
        body.push(flags);
        // Keepalive 60 s (tests are shorter; some brokers refuse 0).
        body.extend_from_slice(&60u16.to_be_bytes());
        string(client_id.as_bytes(), &mut body);
        if let Some(w) = &will {
            string(w.topic.as_bytes(), &mut body);
            string(w.payload, &mut body);
        }
        if let Some((u, p)) = credentials {
            string(u.as_bytes(), &mut body);
            string(p.as_bytes(), &mut body);
        }
        c.write(&packet(0x10, &body));
        let (h, b) = c.read_packet().expect("CONNACK");
        assert_eq!(h >> 4, 2, "expected CONNACK");
        match b.get(1) {
            Some(0) => Ok(c),
            Some(code) => Err(*code),
            None => panic!("short CONNACK"),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// Reads one packet (header octet, body), or `None` after `wait`.
    fn read_packet_within(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((h, body, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some((h, body));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("broker closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) => panic!("read from broker: {e}"),
            }
        }
    }

    fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        self.read_packet_within(WAIT)
    }

    fn id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Subscribes and waits for SUBACK; returns the granted QoS (0x80 on
    /// refusal).
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        let id = self.id();
        let mut body = id.to_be_bytes().to_vec();
        string(filter.as_bytes(), &mut body);
        body.push(qos);
        self.write(&packet(0x82, &body));
        loop {
            let (h, b) = self.read_packet().expect("SUBACK");
            if h >> 4 == 9 {
                return b[2];
            }
            self.handle_other(h, b);
        }
    }

    /// Publishes and, for QoS 1 and 2, waits for the flow to complete.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        let id = self.id();
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let header = 0x30 | (qos << 1) | u8::from(retain);
        self.write(&packet(header, &body));
        if qos == 0 {
            return;
        }
        loop {
            let (h, b) = self.read_packet().expect("publish acknowledgement");
            match h >> 4 {
                4 if qos == 1 => return,
                5 if qos == 2 => {
                    self.write(&packet(0x62, &b[..2]));
                }
                7 if qos == 2 => return,
                _ => self.handle_other(h, b),
            }
        }
    }

    fn handle_other(&mut self, h: u8, b: Vec<u8>) {
        if h >> 4 == 3 {
            if let Some(m) = self.accept_publish(h, &b) {
                self.pending.push(m);
            }
        } else if h >> 4 == 6 {
            // PUBREL for a QoS 2 message we received.
            self.write(&packet(0x70, &b[..2]));
        }
    }

    fn accept_publish(&mut self, h: u8, b: &[u8]) -> Option<Message> {
        let qos = (h >> 1) & 3;
        let retain = h & 1 == 1;
        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8_lossy(&b[2..2 + tlen]).into_owned();
        let mut rest = &b[2 + tlen..];
        if qos > 0 {
            let id = [rest[0], rest[1]];
            rest = &rest[2..];
            let ack = if qos == 1 { 0x40 } else { 0x50 };
            self.write(&packet(ack, &id));
        }
        Some(Message { topic, payload: rest.to_vec(), qos, retain })
    }

    /// The next message, or `None` after `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Message> {
        if !self.pending.is_empty() {
            return Some(self.pending.remove(0));
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (h, b) = self.read_packet_within(left)?;
            match h >> 4 {
                3 => return self.accept_publish(h, &b),
                _ => self.handle_other(h, b),
            }
        }
    }

    /// The next message; fails the test after [`WAIT`].
    pub fn recv(&mut self) -> Message {
        self.recv_within(WAIT).expect("no message from the broker within the wait")
    }

    /// Disconnects cleanly.
    pub fn disconnect(mut self) {
        self.write(&[0xe0, 0x00]);
    }
}

/// Splits one packet off the front of `buf`: header, body, octets used.
fn parse(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let h = *buf.first()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len += usize::from(b & 0x7f) * mult;
        mult *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            panic!("bad remaining length from broker");
        }
    }
    let body = buf.get(i..i + len)?.to_vec();
    Some((h, body, i + len))
}
