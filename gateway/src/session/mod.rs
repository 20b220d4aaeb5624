//! The sans-IO session core: one state machine per sensor.
//!
//! A [`Session`] takes inputs with an explicit `now` — a decoded datagram
//! from its sensor ([`Session::handle_packet`]), an event from its upstream
//! MQTT session ([`Session::handle_upstream`]), a timeout
//! ([`Session::handle_timeout`]) — and hands out outputs: datagrams for the
//! sensor ([`Session::poll_transmit`]), commands for the upstream
//! ([`Session::poll_upstream`]), events for the driver
//! ([`Session::poll_event`]) and its next deadline
//! ([`Session::poll_timeout`]). There is no socket, task or clock inside, so
//! every protocol behaviour is tested with virtual time.
//!
//! # What a session is made of
//!
//! These are the fields that make up a sensor's session, and what a
//! persistent store must keep for a session to survive a gateway restart:
//!
//! | field | what it holds |
//! |---|---|
//! | `client_id`, `clean`, `keepalive` | from the sensor's CONNECT |
//! | `will` | the will topic, message, QoS and retain flag in force upstream |
//! | `regs` | the sensor's topic registrations (id ↔ name), and topics it refused |
//! | `subs` | the filters the sensor subscribed to, with the granted QoS |
//! | `queue`, `inflight` | messages from the broker not yet acknowledged by the sensor |
//! | `qos2_in` | MsgIds of the sensor's QoS 2 PUBLISHes not yet released |
//! | `released` | the last QoS 2 MsgIds completed, for a short while (not stored) |
//! | `next_msg_id` | the gateway's MsgId counter toward the sensor |
//!
//! Everything else (timers, retry counters, the upstream plan) is rebuilt
//! when a session is restored.

mod admin;
mod config;
mod from_sensor;
mod outgoing;
mod persist;
mod released;
mod sleep;
#[cfg(test)]
mod tests;
mod to_sensor;
pub mod topics;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::{Connect, Packet, ReturnCode};

pub use admin::{SessionState, UpstreamPhase};
pub use config::{BufferTotal, SessionConfig, Tolerance};
pub use outgoing::Outgoing;
pub use persist::{Persist, PersistError};
use released::Released;
use to_sensor::{Delivery, Inflight, PendingRegister};
use topics::Registrations;

use crate::mqtt::QoS as MqttQoS;
use crate::upstream::{Command, ConnectSpec, Event, RequestId, Will};

/// Why a message or request was dropped; the driver counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A message from the broker matched no current subscription.
    NotSubscribed,
    /// The sensor refused the REGISTER for the message's topic.
    TopicRefused,
    /// The sensor's topic table is full.
    TopicsFull,
    /// The message does not fit in a datagram.
    TooLong,
    /// The queue toward the sensor is full (QoS 0 only).
    QueueFull,
    /// The sensor rejected the PUBLISH.
    RejectedBySensor,
    /// A sensor's message arrived in a state where it has no meaning.
    Unexpected,
    /// The sensor published faster than its allowed rate.
    RateLimited,
    /// A topic name or filter from the sensor with a control character or
    /// a non-character, which the broker would drop the connection for.
    ForbiddenChar,
    /// A packet from an asleep sensor other than PINGREQ, CONNECT or
    /// DISCONNECT.
    Asleep,
}

impl DropReason {
    /// A short, stable name for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotSubscribed => "not_subscribed",
            Self::TopicRefused => "topic_refused",
            Self::TopicsFull => "topics_full",
            Self::TooLong => "too_long",
            Self::QueueFull => "queue_full",
            Self::RejectedBySensor => "rejected_by_sensor",
            Self::Unexpected => "unexpected",
            Self::RateLimited => "rate_limited",
            Self::ForbiddenChar => "forbidden_char",
            Self::Asleep => "asleep",
        }
    }
}

/// What a session tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The sensor is connected (CONNACK accepted sent).
    Connected,
    /// A message or request was dropped.
    Dropped(DropReason),
    /// The sensor went silent past its keepalive or its sleep; its will
    /// is published.
    Lost(LostReason),
    /// The sensor went to sleep for this long (DISCONNECT with a
    /// Duration, or back to sleep after a wake).
    Asleep {
        /// The Duration it gave.
        duration: Duration,
    },
    /// A sleeping sensor woke up (PINGREQ with its ClientId).
    Awake,
    /// The sensor disconnected cleanly (DISCONNECT without a Duration).
    Disconnected,
    /// Retransmissions to the sensor gave up; they resume when it is heard
    /// from.
    Stalled,
    /// The session is over and its upstream closed. A session with
    /// `persistent()` may be kept for the sensor's next CONNECT.
    Ended,
    /// A sensor's PUBLISH was acknowledged by the broker (QoS 0 and -1:
    /// handed to the upstream), `latency` after it arrived.
    Published {
        /// The sensor's QoS.
        qos: mqttsn_codec::QoS,
        /// From the sensor's PUBLISH to the broker's acknowledgement.
        latency: Duration,
    },
    /// A broker's message reached the sensor (acknowledged by it for QoS 1
    /// and 2, sent for QoS 0).
    Delivered {
        /// The QoS toward the sensor.
        qos: MqttQoS,
    },
    /// A REGISTER, PUBLISH or PUBREL was sent to the sensor again.
    Retransmitted,
    /// The ACL refused a topic of the sensor's (answered with the return
    /// code `0x02`; nothing went to the broker).
    AclRefused(crate::acl::Action),
    /// A late copy (the same MsgId and payload) of a QoS 2 PUBLISH whose
    /// exchange had ended was answered with PUBREC and not published again.
    LateDuplicate,
}

/// Why a sensor was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Nothing heard within its keepalive (with the tolerance).
    KeepaliveTimeout,
    /// Asleep past its Duration (with the tolerance).
    SleepTimeout,
}

impl LostReason {
    /// For logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeepaliveTimeout => "keepalive timeout",
            Self::SleepTimeout => "sleep timeout",
        }
    }
}

/// Where the sensor is in its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// WILLTOPICREQ sent, waiting for WILLTOPIC.
    WillTopic { deadline: Instant, retries: u32 },
    /// WILLMSGREQ sent, waiting for WILLMSG.
    WillMsg { topic: WillDraft, deadline: Instant, retries: u32 },
    /// Waiting for the upstream before CONNACK.
    Connecting,
    /// Connected.
    Active,
    /// Asleep (spec 6.14): messages are buffered until the sensor wakes;
    /// lost when `deadline` passes.
    Asleep { deadline: Instant, duration: Duration },
    /// Awake: the buffer is being flushed; PINGRESP when it is empty.
    Awake { duration: Duration },
    /// DISCONNECTed, lost or refused: the upstream is being closed.
    Ending,
    /// Over.
    Ended,
}

/// The topic part of a will received in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WillDraft {
    topic: String,
    qos: MqttQoS,
    retain: bool,
}

/// One step of the upstream plan: connections are opened and closed one
/// after another, each step waiting for the previous to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Connect (or replace the connection) with this CleanSession and the
    /// session's will (`with_will`) or none.
    Connect { clean: bool, with_will: bool },
    /// After the previous Connect: if the broker still had a session for a
    /// sensor that asked for a clean one, wipe it and connect again.
    WipeIfPresent,
    /// Close with DISCONNECT: no will.
    Disconnect,
    /// Close without DISCONNECT: the will fires.
    Abort,
    /// Send this to the sensor.
    Reply(Packet<'static>),
    /// The sensor is connected.
    Activate,
}

/// What the running step waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Connected,
    Closed,
}

/// A request sent upstream on the sensor's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UpRequest {
    Publish {
        msg_id: u16,
        topic_id: u16,
        qos: mqttsn_codec::QoS,
        sent: Instant,
    },
    Subscribe {
        msg_id: u16,
        topic_id: u16,
        filter: Arc<str>,
        qos: MqttQoS,
    },
    Unsubscribe {
        msg_id: u16,
    },
    /// Restores a subscription the broker lost; no answer to the sensor.
    Resubscribe,
}

/// A sensor's QoS 2 PUBLISH between PUBLISH and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Qos2In {
    request: RequestId,
    /// The sensor's TopicId, for the acknowledgements.
    topic_id: u16,
    /// The payload's [`released::fingerprint`], remembered after PUBCOMP;
    /// `None` when not known (restored after the broker recorded it).
    fingerprint: Option<u64>,
    /// Topic name, payload and retain flag until the broker recorded it:
    /// a session restored from the store publishes it again with the same
    /// packet identifier.
    message: Option<(Arc<str>, Bytes, bool)>,
    /// The broker recorded it (PUBREC sent to the sensor).
    recorded: bool,
    /// PUBREL received, PUBREL sent upstream.
    releasing: bool,
}

/// One sensor's session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    client_id: Arc<str>,
    clean: bool,
    keepalive: Duration,
    last_heard: Instant,
    /// The publish rate limiter: tokens left, and when they were counted.
    tokens: f64,
    tokens_at: Instant,
    phase: Phase,
    will: Option<Will>,
    /// The upstream identity; `None` for the default one (no credentials).
    identity: Option<Box<crate::auth::Identity>>,
    /// The topic ACL as it applies to this sensor; `None`: everything is
    /// allowed.
    acl: Option<Box<crate::acl::SensorAcl>>,
    regs: Registrations,
    /// Subscribed filters and granted QoS.
    subs: Vec<(Arc<str>, MqttQoS)>,
    /// False when the broker may hold subscriptions this session does not
    /// know (a non-clean session the gateway did not see being made).
    subs_known: bool,

    // Sensor to broker.
    next_request: RequestId,
    requests: HashMap<RequestId, UpRequest>,
    /// Sensor MsgIds of QoS 1 PUBLISH, SUBSCRIBE and UNSUBSCRIBE waiting
    /// upstream, to ignore DUP retransmissions.
    pending_msg_ids: HashMap<u16, RequestId>,
    qos2_in: HashMap<u16, Qos2In>,
    /// QoS 2 MsgIds completed lately, to recognise late copies.
    released: Released,

    // Broker to sensor.
    queue: VecDeque<Delivery>,
    inflight: VecDeque<Inflight>,
    register: Option<PendingRegister>,
    next_msg_id: u16,
    /// Retransmissions gave up; wait until the sensor is heard from.
    stalled: bool,
    /// The session ended because the sensor went silent (its will was
    /// published); cleared by its next CONNECT.
    lost: bool,

    // The upstream.
    upstream_open: bool,
    /// The connection being opened has CleanSession true (a wipe).
    connecting_clean: bool,
    plan: VecDeque<Step>,
    waiting: Option<Wait>,

    // The store (see `persist`).
    /// The last key given to a stored message.
    next_seq: u64,
    /// What the store holds of this session; made at its first write
    /// (a clean session never has one).
    stored: Option<Box<persist::Stored>>,
    /// Request ids below this may have been used: a restored session
    /// starts here (see `persist`).
    request_lease: RequestId,
    /// `next_msg_id` when the stored MsgId lease was taken.
    msg_id_mark: u16,

    /// The datagram being handled, whose payloads are shared rather than
    /// copied (see [`Session::handle_datagram`]).
    source: Option<Bytes>,

    // Outputs.
    transmits: VecDeque<Outgoing>,
    commands: VecDeque<Command>,
    events: VecDeque<SessionEvent>,
}

/// Requests from the sensor waiting upstream at once; beyond this a QoS 1
/// or 2 PUBLISH, SUBSCRIBE or UNSUBSCRIBE is answered with congestion.
const MAX_PENDING_REQUESTS: usize = 64;

/// Why a CONNECT is refused before a session exists.
pub fn check_connect(connect: &Connect<'_>, cfg: &SessionConfig) -> Result<(), ReturnCode> {
    if connect.protocol_id != mqttsn_codec::PROTOCOL_ID {
        return Err(ReturnCode::NotSupported);
    }
    mqttsn_codec::validate::client_id(connect.client_id, cfg.max_client_id_len)
        .map_err(|_| ReturnCode::NotSupported)?;
    Ok(())
}

impl Session {
    /// A new session for a sensor whose CONNECT passed [`check_connect`].
    /// Call [`Session::handle_connect`] with that CONNECT next.
    pub fn new(cfg: Arc<SessionConfig>, client_id: &str, now: Instant) -> Self {
        let predefined = cfg.predefined_by_client.get(client_id).unwrap_or(&cfg.predefined).clone();
        let regs = Registrations::new(predefined, cfg.max_topics);
        let tokens = cfg.publish_rate.map_or(0.0, |(_, burst)| f64::from(burst));
        let client_id: Arc<str> = Arc::from(client_id);
        let acl = cfg.acl.as_ref().map(|a| Box::new(a.for_sensor(&client_id, None)));
        Self {
            cfg,
            client_id,
            clean: true,
            keepalive: Duration::ZERO,
            last_heard: now,
            tokens,
            tokens_at: now,
            phase: Phase::Ended,
            will: None,
            identity: None,
            acl,
            regs,
            subs: Vec::new(),
            subs_known: false,
            next_request: 1,
            requests: HashMap::new(),
            pending_msg_ids: HashMap::new(),
            qos2_in: HashMap::new(),
            released: Released::default(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            register: None,
            next_msg_id: 0,
            stalled: false,
            lost: false,
            upstream_open: false,
            connecting_clean: false,
            plan: VecDeque::new(),
            waiting: None,
            next_seq: 0,
            stored: None,
            request_lease: 0,
            msg_id_mark: 0,
            source: None,
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The sensor's ClientId.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// True while the sensor is connected (CONNACK sent, no DISCONNECT):
    /// active, asleep or awake.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active | Phase::Asleep { .. } | Phase::Awake { .. })
    }

    /// True while the sensor sleeps or is awake between two sleeps.
    pub fn is_sleeping(&self) -> bool {
        matches!(self.phase, Phase::Asleep { .. } | Phase::Awake { .. })
    }

    /// True once the session is over and its upstream closed.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended && self.plan.is_empty() && self.waiting.is_none()
    }

    /// True when the session is worth keeping after it ended: the sensor
    /// asked for a persistent session (CleanSession false).
    pub fn persistent(&self) -> bool {
        !self.clean
    }

    /// When the session ended, in seconds since the Unix epoch, if it
    /// ended and has been stored since.
    pub fn ended_wall(&self) -> Option<u64> {
        self.stored.as_ref().and_then(|s| s.ended_wall)
    }

    /// Sets the upstream identity used by the next connection.
    pub fn set_identity(&mut self, identity: crate::auth::Identity) {
        self.identity = (identity != crate::auth::Identity::default()).then(|| Box::new(identity));
        // `%u` and the rules by username follow the identity.
        if let Some(acl) = self.acl.take() {
            self.set_acl(Some(acl.acl()));
        }
    }

    /// Sets the topic ACL the next checks use (at creation, from the
    /// session's settings; on a reload, the new one). `None` allows
    /// everything.
    pub fn set_acl(&mut self, acl: Option<&Arc<crate::acl::Acl>>) {
        let username = self.identity.as_ref().and_then(|i| i.username.as_deref());
        self.acl = acl.map(|a| Box::new(a.for_sensor(&self.client_id, username)));
    }

    /// True when the ACL lets the sensor publish to `topic`.
    fn may_publish(&self, topic: &str) -> bool {
        self.acl.as_ref().is_none_or(|a| a.may_publish(topic))
    }

    /// True when the ACL lets the sensor subscribe to `filter`.
    fn may_subscribe(&self, filter: &str) -> bool {
        self.acl.as_ref().is_none_or(|a| a.may_subscribe(filter))
    }

    /// Counts an ACL refusal; the return code that answers it.
    fn acl_refused(&mut self, action: crate::acl::Action) -> ReturnCode {
        self.events.push_back(SessionEvent::AclRefused(action));
        ReturnCode::InvalidTopicId
    }

    /// The keepalive the sensor asked for.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// Messages waiting for the sensor and their octets (payloads and
    /// topic names).
    pub fn buffered(&self) -> (usize, usize) {
        let queued = self.queue.iter().map(|d| d.payload.len() + d.topic.len());
        let inflight =
            self.inflight.iter().map(|i| i.message.payload.len() + i.message.topic.len());
        (self.queue.len() + self.inflight.len(), queued.chain(inflight).sum())
    }

    /// Gives back the memory of queues and tables that are empty (an idle
    /// session keeps only its state, not the capacity its busiest moment
    /// left behind).
    pub fn shrink_idle(&mut self) {
        fn deque<T>(q: &mut VecDeque<T>) {
            if q.is_empty() && q.capacity() > 0 {
                *q = VecDeque::new();
            }
        }
        fn map<K, V>(m: &mut HashMap<K, V>) {
            if m.is_empty() && m.capacity() > 0 {
                *m = HashMap::new();
            }
        }
        deque(&mut self.transmits);
        deque(&mut self.commands);
        deque(&mut self.events);
        deque(&mut self.queue);
        deque(&mut self.inflight);
        deque(&mut self.plan);
        map(&mut self.requests);
        map(&mut self.pending_msg_ids);
        map(&mut self.qos2_in);
        // Nothing is handled before `last_heard`: what expired by then is
        // expired now.
        self.released.expire(self.last_heard, self.qos2_window());
        self.released.shrink_idle();
        if let Some(st) = self.stored.as_mut() {
            st.scratch = Vec::new();
        }
        if self.subs.is_empty() {
            self.subs = Vec::new();
        }
    }

    /// Messages waiting for the sensor, in flight or queued.
    pub fn pending_deliveries(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    // ----- inputs -----

    /// A CONNECT from the sensor (that passed [`check_connect`]), new or on
    /// an existing session: a reconnect, a retransmission or a takeover
    /// from another address.
    pub fn handle_connect(&mut self, connect: &Connect<'_>, now: Instant) {
        self.last_heard = now;
        self.stalled = false;
        self.lost = false;
        // A retransmitted CONNECT while the first is still being answered.
        if self.phase == Phase::Connecting && !connect.will && connect.clean_session == self.clean {
            return;
        }
        if matches!(self.phase, Phase::Ending) {
            // The previous session is still closing upstream; the plan runs
            // in order, so the new connect simply follows.
        }
        self.clean = connect.clean_session;
        self.keepalive = Duration::from_secs(u64::from(connect.duration));
        if self.clean {
            self.clear_state();
            self.subs_known = true;
        }
        if connect.will {
            let deadline = now + self.cfg.retry_interval;
            self.phase = Phase::WillTopic { deadline, retries: 0 };
            self.send(Packet::WillTopicReq);
        } else {
            self.open(None);
        }
    }

    /// A decoded datagram from the sensor (anything but CONNECT, which goes
    /// to [`Session::handle_connect`]).
    pub fn handle_packet(&mut self, packet: &Packet<'_>, now: Instant) {
        // An asleep sensor sends only PINGREQ, CONNECT or DISCONNECT (spec
        // 6.14): anything else from its address is not the sensor's, or
        // not meant for this state, and changes nothing.
        if matches!(self.phase, Phase::Asleep { .. })
            && !matches!(packet, Packet::PingReq(_) | Packet::Disconnect(_))
        {
            return self.dropped(DropReason::Asleep);
        }
        self.last_heard = now;
        if self.stalled {
            self.stalled = false;
            self.resend_inflight(now);
        }
        match self.phase.clone() {
            Phase::WillTopic { .. } => self.in_will_topic(packet, now),
            Phase::WillMsg { topic, .. } => self.in_will_msg(packet, topic, now),
            Phase::Connecting => self.dropped(DropReason::Unexpected),
            Phase::Active => self.in_active(packet, now),
            Phase::Asleep { .. } => self.in_asleep(packet, now),
            Phase::Awake { .. } => self.in_awake(packet, now),
            Phase::Ending | Phase::Ended => match packet {
                Packet::Disconnect(_) => self.send(Packet::Disconnect(None)),
                _ => self.dropped(DropReason::Unexpected),
            },
        }
    }

    /// [`Session::handle_packet`] for a packet decoded from `datagram`:
    /// the payloads it forwards are slices of the datagram's buffer, not
    /// copies.
    pub fn handle_datagram(&mut self, packet: &Packet<'_>, datagram: &Bytes, now: Instant) {
        self.source = Some(datagram.clone());
        self.handle_packet(packet, now);
        self.source = None;
    }

    /// `data` as `Bytes`: a slice of the datagram being handled when it
    /// lies in it, a copy otherwise.
    pub(crate) fn payload(&self, data: &[u8]) -> Bytes {
        if let Some(src) = &self.source {
            let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
            let p = data.as_ptr() as usize;
            if p >= start && p + data.len() <= end {
                return src.slice_ref(data);
            }
        }
        Bytes::copy_from_slice(data)
    }

    /// An event from this session's upstream.
    pub fn handle_upstream(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected { session_present } => {
                if !session_present {
                    self.forget_packet_ids();
                }
                if !session_present && !self.connecting_clean {
                    // The broker lost the session (a restart without
                    // persistence, say): subscribe again to what the
                    // sensor subscribed to.
                    self.resubscribe();
                }
                if self.waiting == Some(Wait::Connected) {
                    self.waiting = None;
                    if self.plan.front() == Some(&Step::WipeIfPresent) {
                        self.plan.pop_front();
                        if session_present {
                            self.plan.push_front(Step::Connect { clean: false, with_will: true });
                            self.plan.push_front(Step::Connect { clean: true, with_will: false });
                        }
                    }
                    self.run_plan(now);
                }
            }
            Event::Refused { code } => {
                // No retry follows: the upstream is gone.
                self.upstream_open = false;
                self.waiting = None;
                self.plan.clear();
                match self.phase {
                    Phase::Connecting => {
                        self.send(Packet::ConnAck(refusal_code(code)));
                    }
                    Phase::Active | Phase::Asleep { .. } | Phase::Awake { .. } => {
                        self.send(Packet::Disconnect(None));
                    }
                    _ => {}
                }
                self.end_now();
            }
            Event::Unavailable { .. } => {
                if self.phase == Phase::Connecting && self.waiting == Some(Wait::Connected) {
                    // Tell the sensor to try again later, and stop trying.
                    self.send(Packet::ConnAck(ReturnCode::Congestion));
                    self.phase = Phase::Ending;
                    self.waiting = None;
                    self.plan.clear();
                    self.plan.push_back(Step::Disconnect);
                    self.run_plan(now);
                }
            }
            Event::Closed => {
                self.upstream_open = false;
                if self.waiting == Some(Wait::Closed) {
                    self.waiting = None;
                }
                self.run_plan(now);
            }
            Event::PublishAcked { id } => self.publish_acked(id, now),
            Event::PublishCompleted { id } => self.publish_completed(id, now),
            Event::SubAcked { id, granted } => self.sub_acked(id, granted),
            Event::UnsubAcked { id } => self.unsub_acked(id),
            Event::Message { delivery, packet_id, topic, payload, qos, retain, dup: _ } => {
                self.message(delivery, packet_id, topic, payload, qos, retain, now);
            }
        }
    }

    /// Time has reached [`Session::poll_timeout`] (or later).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase.clone() {
            Phase::WillTopic { deadline, retries } if now >= deadline => {
                if retries >= self.cfg.max_retries {
                    self.end_now();
                } else {
                    self.phase = Phase::WillTopic {
                        deadline: now + self.cfg.retry_interval,
                        retries: retries + 1,
                    };
                    self.send(Packet::WillTopicReq);
                }
            }
            Phase::WillMsg { topic, deadline, retries } if now >= deadline => {
                if retries >= self.cfg.max_retries {
                    self.end_now();
                } else {
                    self.phase = Phase::WillMsg {
                        topic,
                        deadline: now + self.cfg.retry_interval,
                        retries: retries + 1,
                    };
                    self.send(Packet::WillMsgReq);
                }
            }
            Phase::Active => {
                if let Some(deadline) = self.keepalive_deadline() {
                    if now >= deadline {
                        self.lost(LostReason::KeepaliveTimeout, now);
                        return;
                    }
                }
                self.retransmit(now);
            }
            Phase::Asleep { deadline, .. } if now >= deadline => {
                self.lost(LostReason::SleepTimeout, now)
            }
            Phase::Awake { duration } => {
                self.retransmit(now);
                if self.stalled {
                    // The sensor stopped answering: it sleeps again, and
                    // the messages wait for the next wake.
                    self.stalled = false;
                    self.fall_asleep(duration, now);
                }
            }
            _ => {}
        }
    }

    // ----- outputs -----

    /// The next datagram for the sensor.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmits.pop_front()
    }

    /// The next command for the upstream.
    pub fn poll_upstream(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::WillTopic { deadline, .. } | Phase::WillMsg { deadline, .. } => Some(*deadline),
            Phase::Active => {
                let retry = if self.stalled { None } else { self.retry_deadline() };
                match (self.keepalive_deadline(), retry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Asleep { deadline, .. } => Some(*deadline),
            Phase::Awake { .. } => self.retry_deadline(),
            _ => None,
        }
    }

    // ----- connection and will -----

    fn keepalive_deadline(&self) -> Option<Instant> {
        if self.keepalive.is_zero() {
            return None;
        }
        Some(self.last_heard + self.cfg.keepalive_tolerance.deadline(self.keepalive))
    }

    fn in_will_topic(&mut self, packet: &Packet<'_>, now: Instant) {
        match packet {
            Packet::WillTopic(None) => self.open(None),
            Packet::WillTopic(Some(w)) => self.will_topic(w, now),
            Packet::PingReq(_) => {}
            Packet::Disconnect(_) => self.disconnect_in_handshake(),
            // PUBLISH, REGISTER, WILLMSG before WILLTOPIC, ...
            _ => self.disconnect_in_handshake(),
        }
    }

    fn in_will_msg(&mut self, packet: &Packet<'_>, topic: WillDraft, now: Instant) {
        match packet {
            Packet::WillMsg(msg) => {
                let will = Will {
                    topic: topic.topic,
                    payload: Bytes::copy_from_slice(msg),
                    qos: topic.qos,
                    retain: topic.retain,
                };
                self.open(Some(will));
            }
            // The WILLMSGREQ was lost and the sensor sent WILLTOPIC again.
            Packet::WillTopic(Some(w)) => self.will_topic(w, now),
            Packet::WillTopic(None) => self.open(None),
            Packet::PingReq(_) => {}
            _ => self.disconnect_in_handshake(),
        }
    }

    /// WILLTOPIC with a topic: WILLMSGREQ next, or CONNACK refusing a topic
    /// that cannot be a will topic.
    fn will_topic(&mut self, w: &mqttsn_codec::WillTopic<'_>, now: Instant) {
        match will_draft(w) {
            Ok(topic) if !self.may_publish(&topic.topic) => {
                let rc = self.acl_refused(crate::acl::Action::Will);
                self.refuse_connect(rc);
            }
            Ok(topic) => {
                let deadline = now + self.cfg.retry_interval;
                self.phase = Phase::WillMsg { topic, deadline, retries: 0 };
                self.send(Packet::WillMsgReq);
            }
            Err(e) => {
                let rc = self.topic_refused(e);
                self.refuse_connect(rc);
            }
        }
    }

    /// A message that has no place in the will handshake: DISCONNECT, and
    /// the session is over.
    fn disconnect_in_handshake(&mut self) {
        self.send(Packet::Disconnect(None));
        self.end_now();
    }

    fn refuse_connect(&mut self, code: ReturnCode) {
        self.send(Packet::ConnAck(code));
        self.end_now();
    }

    /// Opens (or re-opens) the upstream with `will` and answers CONNACK
    /// when it is up.
    fn open(&mut self, will: Option<Will>) {
        let reuse = self.upstream_open
            && self.plan.is_empty()
            && self.waiting.is_none()
            && !self.clean
            && will == self.will
            && matches!(
                self.phase,
                Phase::Active | Phase::Connecting | Phase::Asleep { .. } | Phase::Awake { .. }
            );
        self.will = will;
        self.phase = Phase::Connecting;
        if reuse {
            self.plan.push_back(Step::Reply(Packet::ConnAck(ReturnCode::Accepted)));
            self.plan.push_back(Step::Activate);
        } else if self.clean && self.upstream_open {
            // A clean session on a live upstream: wipe, then connect.
            self.plan.push_back(Step::Connect { clean: true, with_will: false });
            self.plan.push_back(Step::Connect { clean: false, with_will: true });
            self.plan.push_back(Step::Reply(Packet::ConnAck(ReturnCode::Accepted)));
            self.plan.push_back(Step::Activate);
        } else {
            // Always persistent upstream, so that a will update can replace
            // the connection without losing the session; a sensor that
            // asked for a clean session gets one by the wipe below.
            self.plan.push_back(Step::Connect { clean: false, with_will: true });
            if self.clean {
                self.plan.push_back(Step::WipeIfPresent);
            }
            self.plan.push_back(Step::Reply(Packet::ConnAck(ReturnCode::Accepted)));
            self.plan.push_back(Step::Activate);
        }
        self.run_plan(self.last_heard);
    }

    /// Runs the plan until a step has to wait.
    fn run_plan(&mut self, now: Instant) {
        while self.waiting.is_none() {
            let Some(step) = self.plan.pop_front() else { break };
            match step {
                Step::Connect { clean, with_will } => {
                    if !self.upstream_open {
                        // Messages the last upstream delivered and nobody
                        // acknowledged: their upstream is gone, and the
                        // broker sends them again on the new one.
                        self.queue.retain(|d| d.delivery.is_none());
                    }
                    if !self.upstream_open && !clean {
                        // A new upstream: it learns what is in flight.
                        self.restore_upstream(now);
                    }
                    let spec = ConnectSpec {
                        client_id: format!("{}{}", self.cfg.client_id_prefix, self.client_id),
                        clean_session: clean,
                        keep_alive: 0,
                        will: if with_will { self.will.clone() } else { None },
                        username: self.identity.as_ref().and_then(|i| i.username.clone()),
                        password: self.identity.as_ref().and_then(|i| i.password.clone()),
                        client_cert: self.identity.as_ref().and_then(|i| i.client_cert.clone()),
                    };
                    self.upstream_open = true;
                    self.connecting_clean = clean;
                    self.commands.push_back(Command::Connect(Box::new(spec)));
                    self.waiting = Some(Wait::Connected);
                }
                Step::WipeIfPresent => {}
                Step::Disconnect | Step::Abort => {
                    if self.upstream_open {
                        self.commands.push_back(if step == Step::Abort {
                            Command::Abort
                        } else {
                            Command::Disconnect
                        });
                        self.waiting = Some(Wait::Closed);
                    }
                }
                Step::Reply(p) => self.send(p),
                Step::Activate => {
                    self.phase = Phase::Active;
                    self.last_heard = now.max(self.last_heard);
                    self.events.push_back(SessionEvent::Connected);
                    self.pump(now);
                }
            }
        }
        if self.waiting.is_none()
            && self.plan.is_empty()
            && self.phase == Phase::Ending
            && !self.upstream_open
        {
            self.phase = Phase::Ended;
            self.events.push_back(SessionEvent::Ended);
        }
    }

    /// Ends the session: closes the upstream (clean: also wipes the broker
    /// session), without publishing the will unless `abort`.
    fn close(&mut self, abort: bool, now: Instant) {
        self.phase = Phase::Ending;
        self.plan.clear();
        if self.upstream_open || self.waiting.is_some() {
            self.plan.push_back(if abort { Step::Abort } else { Step::Disconnect });
            if self.clean {
                self.plan.push_back(Step::Connect { clean: true, with_will: false });
                self.plan.push_back(Step::Disconnect);
            }
        }
        // Messages not yet acknowledged upstream go back to the broker: it
        // redelivers them on the next connection of a persistent session.
        // Those the gateway acknowledged already (buffered for a sleeper)
        // stay with a persistent session for its next connection.
        let inflight: Vec<_> = self.inflight.drain(..).map(|i| i.message).collect();
        let mut kept: VecDeque<_> = inflight.into_iter().chain(self.queue.drain(..)).collect();
        kept.retain(|d| !self.clean && d.delivery.is_none() && d.qos != MqttQoS::AtMostOnce);
        self.queue = kept;
        self.register = None;
        self.requests.clear();
        self.pending_msg_ids.clear();
        // A step in progress is superseded; its completion is not awaited.
        self.waiting = None;
        self.run_plan(now);
    }

    /// Ends without an upstream to close (handshake failures, refusals).
    fn end_now(&mut self) {
        if self.upstream_open {
            self.phase = Phase::Ending;
            self.plan.clear();
            self.waiting = None;
            self.plan.push_back(Step::Disconnect);
            self.run_plan(self.last_heard);
        } else {
            self.phase = Phase::Ending;
            self.plan.clear();
            self.waiting = None;
            self.run_plan(self.last_heard);
        }
    }

    fn lost(&mut self, why: LostReason, now: Instant) {
        self.lost = true;
        self.events.push_back(SessionEvent::Lost(why));
        self.close(true, now);
    }

    fn clear_state(&mut self) {
        // Messages queued for the old session are still acknowledged.
        // In flight first: they were received before the queued ones.
        for i in self.inflight.drain(..) {
            if let Some(id) = i.unacked_delivery() {
                self.commands.push_back(Command::Ack(id));
            }
        }
        for d in self.queue.drain(..) {
            if let Some(id) = d.delivery {
                self.commands.push_back(Command::Ack(id));
            }
        }
        self.register = None;
        self.regs.clear();
        self.subs.clear();
        self.qos2_in.clear();
        self.released.clear();
        self.pending_msg_ids.clear();
        self.requests.clear();
    }

    fn resubscribe(&mut self) {
        let subs = self.subs.clone();
        for (filter, qos) in subs {
            let id = self.next_request();
            self.requests.insert(id, UpRequest::Resubscribe);
            self.commands.push_back(Command::Subscribe { id, filter: filter.to_string(), qos });
        }
    }

    fn send(&mut self, p: Packet<'static>) {
        self.transmits.push_back(Outgoing::Packet(p));
    }

    fn dropped(&mut self, reason: DropReason) {
        self.events.push_back(SessionEvent::Dropped(reason));
    }

    /// How long a completed QoS 2 MsgId is remembered: while the sensor
    /// may still be retransmitting its PUBLISH, Tretry × (Nretry + 1).
    fn qos2_window(&self) -> Duration {
        self.cfg.retry_interval.saturating_mul(self.cfg.max_retries.saturating_add(1))
    }

    /// The next request id; never one whose packet identifier belongs to
    /// a QoS 2 publish still in flight.
    fn next_request(&mut self) -> RequestId {
        loop {
            let id = self.next_request;
            self.next_request += 1;
            let pkid = crate::upstream::packet_id_of(id);
            if !self.qos2_in.values().any(|q| crate::upstream::packet_id_of(q.request) == pkid) {
                return id;
            }
        }
    }
}

/// The will topic of a WILLTOPIC, or why it is not a valid topic name.
fn will_draft(
    w: &mqttsn_codec::WillTopic<'_>,
) -> Result<WillDraft, mqttsn_codec::validate::InvalidName> {
    let topic = mqttsn_codec::validate::topic_name(w.topic)?;
    Ok(WillDraft { topic: topic.to_owned(), qos: mqtt_qos(w.qos), retain: w.retain })
}

/// The upstream QoS for an MQTT-SN QoS (-1 travels as 0).
fn mqtt_qos(q: mqttsn_codec::QoS) -> MqttQoS {
    match q {
        mqttsn_codec::QoS::AtMostOnce | mqttsn_codec::QoS::NoSession => MqttQoS::AtMostOnce,
        mqttsn_codec::QoS::AtLeastOnce => MqttQoS::AtLeastOnce,
        mqttsn_codec::QoS::ExactlyOnce => MqttQoS::ExactlyOnce,
    }
}

/// The MQTT-SN QoS for an upstream QoS.
fn sn_qos(q: MqttQoS) -> mqttsn_codec::QoS {
    match q {
        MqttQoS::AtMostOnce => mqttsn_codec::QoS::AtMostOnce,
        MqttQoS::AtLeastOnce => mqttsn_codec::QoS::AtLeastOnce,
        MqttQoS::ExactlyOnce => mqttsn_codec::QoS::ExactlyOnce,
    }
}

/// The CONNACK code for an MQTT 3.1.1 CONNACK refusal: the broker being
/// unavailable (3) is worth a retry (congestion); the others are not.
fn refusal_code(code: u8) -> ReturnCode {
    match code {
        3 => ReturnCode::Congestion,
        _ => ReturnCode::NotSupported,
    }
}
