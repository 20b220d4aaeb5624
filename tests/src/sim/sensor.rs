//! A sensor: an `mqttsn_client::Client` running a script drawn from the
//! seed (connect, register its topic, subscribe to the others', publish
//! QoS 0/1/2 messages with unique payloads, maybe sleep and wake), and
//! what it saw, for the invariants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use mqttsn_client::{Client, Event, Millis, QoS, Settings, Topic, TopicFilter};

use super::rng::Rng;

/// The client's capacities: topics, requests in flight, datagram size.
pub type SimClient = Client<16, 4, 256>;

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CONNECT.
    Connect,
    /// REGISTER the sensor's own topic.
    Register,
    /// SUBSCRIBE to a filter.
    Subscribe(String, QoS),
    /// PUBLISH the next message at this QoS.
    Publish(QoS),
    /// Sleep for this many seconds.
    Sleep(u16),
    /// Wake up for the buffered messages.
    Wake,
}

/// The sensor's own topic.
pub fn topic_of(n: usize) -> String {
    format!("s/{n}")
}

/// Its MQTT ClientId (the endpoint adds no prefix here).
pub fn client_id_of(n: usize) -> String {
    format!("sensor-{n}")
}

/// A sensor and its record.
pub struct Sensor {
    /// Its number.
    pub n: usize,
    /// Its address.
    pub addr: SocketAddr,
    /// The client.
    pub client: SimClient,
    clean: bool,
    rng: Rng,
    plan: VecDeque<Action>,
    /// The subscriptions of the script, made again after a reconnect.
    subs: Vec<(String, QoS)>,
    next_at: Millis,
    published: u32,
    /// QoS 1/2 publishes waiting for their acknowledgement: MsgId →
    /// (payload, QoS).
    sent: BTreeMap<u16, (Vec<u8>, QoS)>,
    /// SUBSCRIBEs waiting for SUBACK: MsgId → filter.
    subscribing: BTreeMap<u16, String>,
    /// Publishes the client saw acknowledged, with their QoS.
    pub acked: Vec<(Vec<u8>, QoS)>,
    /// Messages received: payload → times, by QoS (0, 1, 2).
    pub received: BTreeMap<Vec<u8>, [u32; 3]>,
    /// The current session is CleanSession false (the last CONNECT the
    /// gateway accepted said so).
    pub persistent: bool,
    /// CleanSession of the CONNECT waiting for its CONNACK.
    connecting_clean: Option<bool>,
    /// When the current session began at the gateway (docs/simulation.md,
    /// "sessions"): every delivery the gateway acknowledged for it since
    /// must reach it.
    pub session_since: Millis,
    /// A new session begins with the CONNECT the gateway accepts next.
    pub session_pending: bool,
    /// When the last CONNECT reached the gateway.
    connect_seen: Millis,
    /// QoS 2 messages received in the current session: payload → times,
    /// and the connection it first came on and the gateway process that
    /// sent it.
    qos2_now: BTreeMap<Vec<u8>, (u32, u32, u32)>,
    /// The gateway process that sent the datagram being read.
    pub from_epoch: u32,
    /// A QoS 2 message received twice on one connection of a session.
    pub twice: Option<Vec<u8>>,
    /// QoS 2 messages received twice in one session, again on a later
    /// connection or from a gateway process restarted since (a known
    /// issue, docs/simulation.md).
    pub twice_after_loss: u32,
    /// Connections lost or made again, and gateway crashes, so far.
    pub losses: u32,
    /// Connections lost and gateway crashes so far.
    pub breaks: u32,
    /// QoS 2 messages never received that the client answered with PUBREC
    /// without delivering them, taking a MsgId held from a session before
    /// a loss or a crash for a copy (a known issue, docs/simulation.md).
    pub swallowed: BTreeSet<Vec<u8>>,
    /// A QoS 2 message never received, just answered without delivery:
    /// MsgId and payload, until the answer is seen.
    pub unanswered: Option<(u16, Vec<u8>)>,
    /// Times it connected.
    pub connects: u32,
}

impl Sensor {
    /// Sensor `n` of `count`, its script drawn from `rng`.
    pub fn new(n: usize, count: usize, mut rng: Rng, settings: Settings) -> Option<Self> {
        let client = SimClient::new(client_id_of(n).as_bytes(), settings).ok()?;
        let clean = rng.chance(0.5);
        let mut subs = Vec::new();
        for _ in 0..rng.range(0, 2) {
            let filter = match rng.range(0, 3) {
                0 => "s/+".to_owned(),
                1 => "s/#".to_owned(),
                _ => topic_of(rng.range(0, count as u64 - 1) as usize),
            };
            subs.push((filter, qos(rng.range(0, 2))));
        }
        let mut plan: VecDeque<Action> = VecDeque::new();
        plan.push_back(Action::Connect);
        plan.push_back(Action::Register);
        plan.extend(subs.iter().map(|(f, q)| Action::Subscribe(f.clone(), *q)));
        let sleeper = rng.chance(0.2);
        for i in 0..rng.range(3, 15) {
            plan.push_back(Action::Publish(qos(rng.range(0, 2))));
            if sleeper && i == 2 {
                plan.push_back(Action::Sleep(rng.range(2, 20) as u16));
                plan.push_back(Action::Wake);
                plan.push_back(Action::Connect);
            }
        }
        Some(Self {
            n,
            addr: ([127, 0, 0, 1], 20_000 + n as u16).into(),
            client,
            clean,
            next_at: rng.range(0, 3_000),
            rng,
            plan,
            subs,
            published: 0,
            sent: BTreeMap::new(),
            subscribing: BTreeMap::new(),
            acked: Vec::new(),
            received: BTreeMap::new(),
            persistent: false,
            connecting_clean: None,
            session_since: 0,
            session_pending: false,
            connect_seen: 0,
            qos2_now: BTreeMap::new(),
            twice: None,
            twice_after_loss: 0,
            from_epoch: 0,
            swallowed: BTreeSet::new(),
            unanswered: None,
            losses: 0,
            breaks: 0,
            connects: 0,
        })
    }

    /// When the script wants to act next.
    pub fn next_action(&self) -> Option<Millis> {
        (!self.plan.is_empty()).then_some(self.next_at)
    }

    /// The end of the run is near: only (re)connecting is left to do.
    pub fn finish(&mut self) {
        let keep =
            |a: &Action| matches!(a, Action::Connect | Action::Register | Action::Subscribe(..));
        let asleep = self.plan.iter().any(|a| matches!(a, Action::Wake));
        self.plan.retain(keep);
        if asleep && self.client.is_asleep() && self.plan.front() != Some(&Action::Connect) {
            self.plan.push_front(Action::Connect);
        }
    }

    /// Runs the script's next step if it is due; returns a line for the
    /// trace.
    pub fn act(&mut self, now: Millis) -> Option<String> {
        if now < self.next_at {
            return None;
        }
        let action = self.plan.front()?.clone();
        let topic = topic_of(self.n);
        let result = match &action {
            Action::Connect => self.client.connect(now, self.clean, 60, None).map(|_| {
                // A clean session, or one after a clean one, is a new
                // session.
                if self.clean || !self.persistent {
                    self.new_session(now);
                }
                self.connecting_clean = Some(self.clean);
                // A new connection.
                self.losses += 1;
                // CleanSession only on the first connect: later ones
                // resume the session.
                self.clean = false;
                self.sent.clear();
            }),
            Action::Register => self.client.register(now, &topic).map(|_| ()),
            Action::Subscribe(f, q) => {
                if self.client.topic_id(&topic).is_none() {
                    Err(mqttsn_client::Error::NotRegistered)
                } else {
                    let f = f.clone();
                    self.client
                        .subscribe(now, TopicFilter::Name(f.as_bytes()), *q)
                        .map(|id| drop(self.subscribing.insert(id, f)))
                }
            }
            Action::Publish(q) => {
                let payload = format!("s{}-{}-q{}", self.n, self.published, level(*q)).into_bytes();
                self.client.publish(now, Topic::Name(&topic), &payload, *q, false).map(|id| {
                    self.published += 1;
                    if let Some(id) = id {
                        self.sent.insert(id, (payload, *q));
                    }
                })
            }
            Action::Sleep(s) => self.client.sleep(now, *s),
            Action::Wake => self.client.wake(now),
        };
        match result {
            Ok(()) => {
                self.plan.pop_front();
                self.next_at = now + self.rng.range(10, 2_500);
                Some(format!("s{} {:?}", self.n, action))
            }
            Err(e) => {
                self.next_at = now + 200;
                Some(format!("s{} {:?}: {e}", self.n, action))
            }
        }
    }

    /// What the client reported; returns the acknowledged publish, if
    /// that is what it was, and a line for the trace.
    pub fn event(&mut self, now: Millis, e: Event<'_>) -> (Option<(Vec<u8>, QoS)>, String) {
        let line = match e {
            Event::Message { topic, payload, qos, .. } => format!(
                "s{} event Message {{ topic: {topic:?}, payload: {:?}, qos: {qos:?} }}",
                self.n,
                String::from_utf8_lossy(payload)
            ),
            e => format!("s{} event {e:?}", self.n),
        };
        let mut acked = None;
        match e {
            Event::Connected => {
                self.connects += 1;
                // The session began when the gateway took the CONNECT it
                // accepted (a refused one ends the last session too).
                if std::mem::take(&mut self.session_pending) {
                    self.session_since = self.connect_seen;
                }
                if let Some(clean) = self.connecting_clean.take() {
                    self.persistent = !clean;
                }
            }
            Event::Published { msg_id, result: Ok(()) } => {
                if let Some(p) = self.sent.remove(&msg_id) {
                    self.acked.push(p.clone());
                    acked = Some(p);
                }
            }
            Event::Subscribed { msg_id, result: Ok((id, _)) } => {
                // A SUBACK for a name carries its topic id.
                if let Some(f) = self.subscribing.remove(&msg_id).filter(|_| id != 0) {
                    let _ = self.client.learn_topic(&f, id);
                }
            }
            Event::Message { payload, qos, .. } => {
                let slot = self.received.entry(payload.to_vec()).or_default();
                slot[usize::from(level(qos)).min(2)] += 1;
                if qos == QoS::ExactlyOnce {
                    let first = (0, self.losses, self.from_epoch);
                    let n = self.qos2_now.entry(payload.to_vec()).or_insert(first);
                    n.0 += 1;
                    if n.0 > 1 && (n.1 != self.losses || n.2 != self.from_epoch) {
                        self.twice_after_loss += 1;
                    } else if n.0 > 1 && self.twice.is_none() {
                        self.twice = Some(payload.to_vec());
                    }
                }
            }
            Event::ConnectRefused(_) | Event::GatewayLost | Event::DisconnectedByGateway => {
                self.lost(now);
            }
            _ => {}
        }
        (acked, line)
    }

    /// A new session begins: what the gateway acknowledged for the last
    /// one need not reach this one.
    fn new_session(&mut self, now: Millis) {
        self.session_since = now;
        self.session_pending = true;
        self.qos2_now.clear();
    }

    /// A CONNECT from this sensor reached the gateway at `now`.
    pub fn connect_arrived(&mut self, now: Millis) {
        self.connect_seen = now;
    }

    /// The gateway crashed: a clean session is gone with it.
    pub fn gateway_crashed(&mut self, now: Millis) {
        self.losses += 1;
        self.breaks += 1;
        if !self.persistent {
            self.new_session(now);
        }
    }

    /// The connection is gone: connect again, register and subscribe.
    fn lost(&mut self, now: Millis) {
        self.losses += 1;
        self.breaks += 1;
        if !self.persistent {
            self.new_session(now);
        }
        if self.plan.front() == Some(&Action::Wake) {
            return;
        }
        while matches!(
            self.plan.front(),
            Some(Action::Connect | Action::Register | Action::Subscribe(..))
        ) {
            self.plan.pop_front();
        }
        for (f, q) in self.subs.iter().rev() {
            self.plan.push_front(Action::Subscribe(f.clone(), *q));
        }
        self.plan.push_front(Action::Register);
        self.plan.push_front(Action::Connect);
        self.next_at = now + self.rng.range(500, 3_000);
    }
}

fn qos(n: u64) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// 0, 1 or 2 (3 for QoS -1).
pub fn level(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
        QoS::NoSession => 3,
    }
}
