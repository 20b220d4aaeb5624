//! Drives two endpoints (two workers sharing a directory, with a store)
//! from an octet string: datagrams from a handful of addresses, replies of
//! a broker to the commands they issue, store commits, forwards between
//! the workers and clock steps, in the order the octets say. The endpoint
//! fuzz target (`fuzz/fuzz_targets/endpoint.rs`) feeds it arbitrary
//! input; `gateway/tests/endpoint_corpus.rs` replays the committed corpus
//! on stable Rust.
//!
//! After every step it checks what must hold whatever the input: every
//! datagram out decodes, the gauges never go below zero, and the queues
//! stay bounded. A violation panics (the fuzzer's finding); anything else
//! the input does is fine.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::{
    Ack, Connect, Frame, Packet, Publish, QoS, Register, Subscribe, TopicFilter, TopicId,
};

use super::directory::Directory;
use super::{Endpoint, WallClock};
use crate::admission::{Limits, Rate};
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::session::topics::Predefined;
use crate::session::SessionConfig;
use crate::upstream::{Command, DeliveryId, Event, UpstreamKey};

/// The most steps one input runs.
const MAX_STEPS: usize = 2_000;
/// The most broker commands waiting for an answer.
const MAX_PENDING: usize = 512;
/// Outputs of one step beyond this are a runaway (an invariant).
const MAX_OUTPUTS_PER_STEP: usize = 10_000;

/// What one run did, for the replay test to see that inputs reach deep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Steps taken.
    pub steps: usize,
    /// Datagrams handed in.
    pub datagrams_in: usize,
    /// Datagrams out (all of which decoded).
    pub datagrams_out: usize,
    /// Sessions that reached the broker (`Event::Connected` delivered).
    pub connected: usize,
    /// Messages the broker delivered to sessions.
    pub messages: usize,
}

/// Reads octets off the input; zeros once it is used up.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The ClientIds and topic names inputs pick from (small sets, so that
/// sessions meet again).
const CLIENTS: [&str; 4] = ["a", "b", "sensor-3", "sensor-4"];
const TOPICS: [&str; 4] = ["t/1", "t/2", "pre/seven", "a/b/c"];

fn source(i: u8) -> SocketAddr {
    // Not loopback: the admission bounds and the address check apply.
    ([10, 0, 0, 1 + (i % 4)], 1000 + u16::from(i % 3)).into()
}

struct Run {
    eps: Vec<Endpoint>,
    metrics: Arc<Metrics>,
    now: Instant,
    /// Commands waiting for the broker's answer.
    pending: Vec<(usize, UpstreamKey, Command)>,
    /// Upstreams the broker accepted, per worker.
    open: Vec<(usize, UpstreamKey)>,
    /// Store writes not yet committed: (worker, ticket).
    writes: Vec<(usize, u64)>,
    /// MsgIds seen going out, for acknowledgements that match.
    msg_ids: Vec<u16>,
    next_delivery: u64,
    outcome: Outcome,
}

/// Runs one input through the endpoints; panics only when an invariant
/// is broken.
pub fn run(data: &[u8]) -> Outcome {
    let mut pre = Predefined::new();
    pre.insert(7, "pre/seven");
    let cfg = Arc::new(SessionConfig {
        retry_interval: Duration::from_millis(100),
        max_retries: 2,
        predefined: Arc::new(pre),
        max_topics: 4,
        ..SessionConfig::default()
    });
    let tight = Rate { per_sec: 5.0, burst: 3 };
    let admission = Limits {
        sessions_per_source: Some(3),
        connect_per_source: Some(tight),
        reply_per_source: Some(tight),
        connecting: Some(4),
        verify_moves: true,
        ..Limits::default()
    };
    let opts = Arc::new(ServerOptions { admission, ..ServerOptions::default() });
    let now = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let dir = Arc::new(Directory::new(2));
    let eps = (0..2)
        .map(|w| {
            Endpoint::new(
                cfg.clone(),
                opts.clone(),
                metrics.clone(),
                dir.clone(),
                w,
                true,
                now,
                WallClock::new(now, 1_000_000),
            )
        })
        .collect();
    let mut r = Run {
        eps,
        metrics,
        now,
        pending: Vec::new(),
        open: Vec::new(),
        writes: Vec::new(),
        msg_ids: Vec::new(),
        next_delivery: 1,
        outcome: Outcome::default(),
    };
    r.drain();
    let mut input = Input { data };
    while !input.is_empty() && r.outcome.steps < MAX_STEPS {
        r.step(&mut input);
        r.outcome.steps += 1;
        r.drain();
    }
    r.outcome
}

impl Run {
    fn step(&mut self, input: &mut Input<'_>) {
        let op = input.byte();
        let w = usize::from(op >> 7);
        match op % 8 {
            // Raw octets from an address.
            0 => {
                let from = source(input.byte());
                let n = usize::from(input.byte());
                let d = Bytes::copy_from_slice(input.bytes(n));
                self.datagram(w, from, d);
            }
            // A well-formed packet from an address.
            1 | 2 => {
                let from = source(input.byte());
                let d = self.packet(input);
                self.datagram(w, from, d);
            }
            // The broker answers a pending command (or fails it).
            3 => self.broker_answers(input),
            // The broker delivers a message to an open upstream.
            4 => self.broker_message(input),
            // The clock moves on.
            5 => {
                let b = input.byte();
                let step = if b & 0x80 != 0 {
                    Duration::from_secs(u64::from(b & 0x7f))
                } else {
                    Duration::from_millis(u64::from(b) * 10)
                };
                self.now += step;
                let now = self.now;
                for e in &mut self.eps {
                    e.handle_timeout(now);
                }
            }
            // The store commits what was written (or some of it).
            6 => {
                let keep = usize::from(input.byte() % 4);
                let n = self.writes.len().saturating_sub(keep);
                let now = self.now;
                for (worker, ticket) in self.writes.drain(..n) {
                    if let Some(e) = self.eps.get_mut(worker) {
                        e.handle_committed(now, ticket);
                    }
                }
            }
            // A SEARCHGW to the discovery group, or a quiet step.
            _ => {
                let now = self.now;
                let from = source(input.byte());
                let d = encode(Packet::SearchGw { radius: 1 });
                self.eps[w].handle_group_datagram(now, from, &d);
            }
        }
    }

    fn datagram(&mut self, w: usize, from: SocketAddr, d: Bytes) {
        self.outcome.datagrams_in += 1;
        let now = self.now;
        self.eps[w].handle_datagram(now, from, &d);
    }

    fn msg_id(&self, input: &mut Input<'_>) -> u16 {
        let b = input.byte();
        if b & 0x80 == 0 && !self.msg_ids.is_empty() {
            self.msg_ids[usize::from(b) % self.msg_ids.len()]
        } else {
            u16::from(b & 0x7f)
        }
    }

    /// A packet built from the input's choices.
    fn packet(&mut self, input: &mut Input<'_>) -> Bytes {
        let kind = input.byte();
        let client = CLIENTS[usize::from(kind >> 4) % CLIENTS.len()];
        let topic = TOPICS[usize::from(kind >> 6) % TOPICS.len()];
        let flags = input.byte();
        let qos = match flags % 4 {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::NoSession,
        };
        let msg_id = self.msg_id(input);
        let topic_id = match flags >> 6 {
            0 => TopicId::Normal(u16::from(flags >> 2 & 0x0f)),
            1 => TopicId::Predefined(7),
            2 => TopicId::Short(*b"ab"),
            _ => TopicId::Normal(u16::from(input.byte())),
        };
        let ack = |return_code| Ack { topic_id: topic_id.raw(), msg_id, return_code };
        let p = match kind % 16 {
            0 | 1 => Packet::Connect(Connect {
                will: false,
                clean_session: flags & 0x10 != 0,
                protocol_id: 1,
                duration: u16::from(flags & 0x0f) * 10,
                client_id: client.as_bytes(),
            }),
            2 => Packet::Register(Register { topic_id: 0, msg_id, topic_name: topic.as_bytes() }),
            3 | 4 => Packet::Publish(Publish {
                dup: flags & 0x20 != 0,
                qos,
                retain: false,
                topic: topic_id,
                msg_id,
                data: b"x",
            }),
            5 => Packet::Subscribe(Subscribe {
                dup: false,
                qos,
                msg_id,
                topic: TopicFilter::Name(topic.as_bytes()),
            }),
            6 => Packet::PingReq(Some(client.as_bytes())),
            7 => Packet::PingReq(None),
            8 => Packet::Disconnect((flags & 1 != 0).then_some(u16::from(flags >> 1))),
            9 => Packet::PubAck(ack(mqttsn_codec::ReturnCode::Accepted)),
            10 => Packet::RegAck(ack(mqttsn_codec::ReturnCode::Accepted)),
            11 => Packet::PubRec(msg_id),
            12 => Packet::PubComp(msg_id),
            13 => Packet::PubRel(msg_id),
            14 => Packet::Unsubscribe(mqttsn_codec::Unsubscribe {
                msg_id,
                topic: TopicFilter::Name(topic.as_bytes()),
            }),
            _ => Packet::SearchGw { radius: 1 },
        };
        encode(p)
    }

    fn broker_answers(&mut self, input: &mut Input<'_>) {
        if self.pending.is_empty() {
            return;
        }
        let i = usize::from(input.byte()) % self.pending.len();
        let how = input.byte();
        let (w, key, cmd) = self.pending.swap_remove(i);
        let event = match (&cmd, how % 8) {
            (_, 7) => Event::Unavailable { reason: "gone".into() },
            (Command::Connect(_), 6) => Event::Refused { code: 5 },
            (Command::Connect(_) | Command::Restore { .. }, _) => {
                if !self.open.contains(&(w, key)) {
                    self.open.push((w, key));
                }
                self.outcome.connected += 1;
                Event::Connected { session_present: how & 0x10 != 0 }
            }
            (Command::Publish { id, qos, .. }, _) => match qos {
                crate::mqtt::QoS::AtMostOnce => return,
                _ => Event::PublishAcked { id: *id },
            },
            (Command::Release { id }, _) => Event::PublishCompleted { id: *id },
            (Command::Subscribe { id, qos, .. }, n) => {
                Event::SubAcked { id: *id, granted: (n != 5).then_some(*qos) }
            }
            (Command::Unsubscribe { id, .. }, _) => Event::UnsubAcked { id: *id },
            (Command::Disconnect | Command::Abort, _) => {
                self.open.retain(|o| *o != (w, key));
                Event::Closed
            }
            (Command::Ack(_) | Command::ReleaseStale, _) => return,
        };
        let now = self.now;
        self.eps[w].handle_upstream(now, key, event);
    }

    fn broker_message(&mut self, input: &mut Input<'_>) {
        if self.open.is_empty() {
            return;
        }
        let (w, key) = self.open[usize::from(input.byte()) % self.open.len()];
        let b = input.byte();
        let qos = match b % 3 {
            0 => crate::mqtt::QoS::AtMostOnce,
            1 => crate::mqtt::QoS::AtLeastOnce,
            _ => crate::mqtt::QoS::ExactlyOnce,
        };
        let delivery = (!b.is_multiple_of(3)).then(|| {
            self.next_delivery += 1;
            DeliveryId(self.next_delivery)
        });
        let topic = TOPICS[usize::from(b >> 2) % TOPICS.len()];
        let event = Event::Message {
            delivery,
            packet_id: u16::from(b >> 3) + 1,
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"payload"),
            qos,
            retain: b & 0x40 != 0,
            dup: b & 0x80 != 0,
        };
        self.outcome.messages += 1;
        let now = self.now;
        self.eps[w].handle_upstream(now, key, event);
    }

    /// Takes every output, checking it, and passes forwards between the
    /// workers until none is left.
    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        let mut outputs = 0usize;
        loop {
            let mut any = false;
            for w in 0..self.eps.len() {
                while let Some(t) = self.eps[w].poll_transmit(&mut buf) {
                    any = true;
                    outputs += 1;
                    let Some(d) = buf.get(..t.len) else {
                        panic!("transmit longer than its buffer")
                    };
                    match Frame::decode(d) {
                        Ok(f) => self.note_msg_id(&f.packet),
                        Err(e) => panic!("a datagram out does not decode ({e}): {d:02x?}"),
                    }
                    self.outcome.datagrams_out += 1;
                }
                while let Some((key, cmd)) = self.eps[w].poll_upstream() {
                    any = true;
                    outputs += 1;
                    if self.pending.len() >= MAX_PENDING {
                        self.pending.remove(0);
                    }
                    self.pending.push((w, key, cmd));
                }
                while let Some(write) = self.eps[w].poll_store() {
                    any = true;
                    outputs += 1;
                    self.writes.push((write.worker, write.ticket));
                }
                while let Some((to, f)) = self.eps[w].poll_forward() {
                    any = true;
                    outputs += 1;
                    let now = self.now;
                    if let Some(e) = self.eps.get_mut(to) {
                        e.handle_forward(now, f);
                    }
                }
            }
            assert!(outputs <= MAX_OUTPUTS_PER_STEP, "a step produced {outputs} outputs");
            if !any {
                break;
            }
        }
        for e in &mut self.eps {
            e.flush_metrics();
        }
        let active = self.metrics.sessions_active.load(Ordering::Relaxed);
        let sessions: usize = self.eps.iter().map(Endpoint::session_count).sum();
        assert!(
            active <= sessions as u64,
            "sessions_active {active} with {sessions} sessions (a gauge below zero?)"
        );
        let buffered = self.metrics.buffered_messages.load(Ordering::Relaxed);
        assert!(buffered < 1 << 40, "buffered_messages {buffered}: a gauge below zero");
        assert!(self.msg_ids.len() <= 64);
    }

    fn note_msg_id(&mut self, p: &Packet<'_>) {
        let id = match p {
            Packet::Publish(p) if p.msg_id != 0 => p.msg_id,
            Packet::Register(r) => r.msg_id,
            Packet::PubRel(id) | Packet::PubRec(id) => *id,
            _ => return,
        };
        if self.msg_ids.len() >= 64 {
            self.msg_ids.remove(0);
        }
        self.msg_ids.push(id);
    }
}

fn encode(p: Packet<'_>) -> Bytes {
    let mut b = [0u8; 256];
    match p.encode(&mut b) {
        Ok(n) => Bytes::copy_from_slice(&b[..n]),
        Err(_) => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_input_and_a_typical_exchange_run() {
        assert_eq!(run(&[]).steps, 0);
        // CONNECT "a" from source 0, the broker accepts it (and the
        // gateway's own connection), REGISTER, PUBLISH QoS 1, the broker
        // acknowledges, the clock moves.
        let input = [
            1, 0, 0x00, 0x10, 0x80, 3, 0, 0, 3, 0, 0, 1, 0, 0x02, 0, 0x80, 1, 0, 0x03, 0x45, 0x80,
            3, 0, 0, 5, 10,
        ];
        let o = run(&input);
        assert!(o.connected >= 1, "{o:?}");
        assert!(o.datagrams_out >= 1, "{o:?}");
    }

    #[test]
    fn seeded_random_inputs_keep_every_invariant() {
        // xorshift64*: the same inputs on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut total = Outcome::default();
        for _ in 0..300 {
            let len = (next() % 600) as usize;
            let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let o = run(&input);
            total.connected += o.connected;
            total.datagrams_out += o.datagrams_out;
            total.messages += o.messages;
        }
        assert!(total.connected > 50 && total.messages > 50, "{total:?}");
    }
}
