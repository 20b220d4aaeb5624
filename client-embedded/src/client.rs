//! The client state machine.

use mqttsn_codec::{
    Ack, Connect, Header, Packet, Publish, QoS, Register, ReturnCode, Subscribe, TopicFilter,
    TopicId, Unsubscribe, WillTopic,
};

use crate::buf::Buf;

/// Milliseconds on a monotonic clock the application chooses.
pub type Millis = u64;

/// The longest ClientId, topic name and will topic the client stores.
pub const MAX_NAME: usize = 64;

/// Timers and retries (spec 6.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Tretry: wait before sending a message again, in milliseconds.
    pub retry_ms: u32,
    /// Nretry: how many times to send it again.
    pub max_retries: u8,
    /// T_WAIT: after a "rejected: congestion" answer, requests wait this
    /// long (the spec suggests more than five minutes), in milliseconds.
    pub congestion_wait_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self { retry_ms: 10_000, max_retries: 5, congestion_wait_ms: 300_000 }
    }
}

/// Why a call or a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Not connected (or asleep) for this operation.
    NotConnected,
    /// Another request of this kind is still in flight; try after its
    /// event.
    Busy,
    /// A name or payload does not fit the client's buffers.
    TooLong,
    /// The topic name was never registered.
    NotRegistered,
    /// QoS -1 needs a predefined id or a short name.
    BadTopicForQoS,
    /// The topic table is full.
    TopicsFull,
    /// The datagram did not decode.
    Malformed(mqttsn_codec::DecodeError),
    /// The gateway answered "congestion" less than T_WAIT ago.
    Congested,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::Busy => f.write_str("a request is already in flight"),
            Self::TooLong => f.write_str("does not fit the client's buffers"),
            Self::NotRegistered => f.write_str("topic not registered"),
            Self::BadTopicForQoS => f.write_str("QoS -1 needs a predefined id or a short name"),
            Self::TopicsFull => f.write_str("topic table full"),
            Self::Malformed(e) => write!(f, "malformed datagram: {e}"),
            Self::Congested => f.write_str("the gateway is congested: wait T_WAIT"),
        }
    }
}

impl core::error::Error for Error {}

/// Where a PUBLISH goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// A registered topic name (see [`Client::register`]).
    Name(&'a str),
    /// A topic id the gateway gave (REGISTER or SUBACK).
    Id(u16),
    /// A predefined topic id.
    Predefined(u16),
    /// A two-character short topic name.
    Short([u8; 2]),
}

/// The topic of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageTopic {
    /// A normal topic id; [`Client::topic_name`] gives its name.
    Id(u16),
    /// A predefined id.
    Predefined(u16),
    /// A short name.
    Short([u8; 2]),
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// CONNACK accepted.
    Connected,
    /// CONNACK with a rejection; after congestion, wait before trying again.
    ConnectRefused(ReturnCode),
    /// REGACK: the topic id of a REGISTER.
    Registered {
        /// The REGISTER's MsgId.
        msg_id: u16,
        /// The id, or the refusal.
        result: Result<u16, ReturnCode>,
    },
    /// A PUBLISH was acknowledged (PUBACK at QoS 1, PUBCOMP at QoS 2).
    Published {
        /// Its MsgId.
        msg_id: u16,
        /// Accepted, or the gateway's refusal.
        result: Result<(), ReturnCode>,
    },
    /// SUBACK.
    Subscribed {
        /// The SUBSCRIBE's MsgId.
        msg_id: u16,
        /// The topic id (0 for wildcards and short names) and granted QoS,
        /// or the refusal.
        result: Result<(u16, QoS), ReturnCode>,
    },
    /// UNSUBACK.
    Unsubscribed {
        /// The UNSUBSCRIBE's MsgId.
        msg_id: u16,
    },
    /// A message; the payload borrows from the datagram.
    Message {
        /// Its topic.
        topic: MessageTopic,
        /// The payload.
        payload: &'a [u8],
        /// The QoS it arrived with.
        qos: QoS,
        /// RETAIN.
        retain: bool,
    },
    /// PINGRESP: the gateway is alive; after a wake-up, every buffered
    /// message has been delivered and the client sleeps again.
    PingResp,
    /// The gateway answered DISCONNECT: asleep (after [`Client::sleep`]) or
    /// disconnected.
    Disconnected,
    /// The gateway sent DISCONNECT on its own: connect again.
    DisconnectedByGateway,
    /// WILLTOPICRESP or WILLMSGRESP.
    WillUpdated(ReturnCode),
    /// A message was sent Nretry times without an answer (a missing
    /// PINGRESP included), or the CONNACK of a fail-over refused: the
    /// gateway is considered lost. Requests in flight are kept for
    /// [`Client::fail_over`]; [`Client::connect`] drops them.
    GatewayLost,
    /// After [`Client::fail_over`]: the next gateway accepted the session,
    /// every topic name is registered again, every subscription renewed,
    /// and the requests that were in flight have been sent to it again.
    GatewayChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Connecting,
    Connected,
    /// DISCONNECT with Duration sent / acknowledged.
    Asleep,
    /// PINGREQ with ClientId sent, receiving buffered messages.
    Awake,
    Disconnecting,
    /// Lost the gateway (Nretry): waiting for [`Client::fail_over`] or
    /// [`Client::connect`].
    Lost,
    /// After a fail-over's CONNACK: registering topics and subscribing
    /// again, one request at a time.
    #[cfg(feature = "failover")]
    Restoring,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connect,
    Register { name_slot: usize },
    Publish { qos: QoS, released: bool },
    Subscribe,
    Unsubscribe,
    Ping,
    Disconnect,
    WillUpdate,
}

#[derive(Debug, Clone, Copy)]
struct Pending<const B: usize> {
    kind: Kind,
    msg_id: u16,
    datagram: Buf<B>,
    /// [`PARKED`] while the gateway is lost.
    deadline: Millis,
    retries: u8,
    /// The topic table slot of a PUBLISH to a normal topic id, so that a
    /// fail-over sends it with the next gateway's id.
    #[cfg_attr(not(feature = "failover"), allow(dead_code))]
    topic_slot: Option<usize>,
}

/// The deadline of a request kept across a fail-over: never due.
const PARKED: Millis = Millis::MAX;

/// A subscription, kept to be renewed at the next gateway.
#[cfg(feature = "failover")]
#[derive(Debug, Clone, Copy)]
struct Sub {
    filter: SubFilter,
    qos: QoS,
}

#[cfg(feature = "failover")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubFilter {
    Name(Buf<MAX_NAME>),
    Predefined(u16),
    Short([u8; 2]),
}

#[cfg(feature = "failover")]
impl SubFilter {
    fn of(filter: &TopicFilter<'_>) -> Option<Self> {
        match filter {
            TopicFilter::Name(n) => Buf::from_slice(n).map(Self::Name),
            TopicFilter::Predefined(id) => Some(Self::Predefined(*id)),
            TopicFilter::Short(s) => Some(Self::Short(*s)),
            TopicFilter::Reserved(_) => None,
        }
    }

    fn filter(&self) -> TopicFilter<'_> {
        match self {
            Self::Name(n) => TopicFilter::Name(n.as_slice()),
            Self::Predefined(id) => TopicFilter::Predefined(*id),
            Self::Short(s) => TopicFilter::Short(*s),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TopicEntry {
    id: u16,
    name: Buf<MAX_NAME>,
    /// Registered (REGACK accepted or gateway REGISTER).
    known: bool,
}

/// A QoS 2 message from the gateway released lately (PUBREL), to tell a
/// late copy (same MsgId and payload) from a new message.
#[derive(Debug, Clone, Copy, Default)]
struct Released {
    /// 0: a free slot.
    msg_id: u16,
    /// Refused with "invalid topic id" rather than delivered: the gateway
    /// sends it again under a new MsgId, so a copy is refused too.
    refused: bool,
    fingerprint: u32,
    /// When, in milliseconds modulo 2^32 (the window is far shorter).
    at: u32,
}

/// Released QoS 2 MsgIds remembered; the oldest goes first.
pub(crate) const RELEASED: usize = 8;

/// FNV-1a of a payload: copies of one message have the same.
fn fingerprint(payload: &[u8]) -> u32 {
    payload.iter().fold(0x811c_9dc5, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The MQTT-SN client: `T` topic names, `F` requests in flight, datagrams
/// of up to `B` octets.
pub struct Client<const T: usize = 8, const F: usize = 2, const B: usize = 128> {
    settings: Settings,
    client_id: Buf<MAX_NAME>,
    state: State,
    keepalive_ms: u64,
    will: Option<(Buf<MAX_NAME>, QoS, bool, Buf<B>)>,
    topics: [TopicEntry; T],
    pending: [Option<Pending<B>>; F],
    tx: [Option<Buf<B>>; 4],
    tx_head: usize,
    qos2_rx: [(u16, u32); 4],
    /// QoS 2 messages released lately: late copies are not delivered.
    released: [Released; RELEASED],
    /// Where the next released message goes (the oldest).
    released_head: u8,
    next_msg_id: u16,
    last_sent: Millis,
    /// No requests before this time (T_WAIT after congestion).
    congested_until: Millis,
    #[cfg(feature = "failover")]
    /// Subscriptions acknowledged, renewed after a fail-over.
    subs: [Option<Sub>; T],
    /// The fail-over's own request (CONNECT, then each REGISTER and
    /// SUBSCRIBE of the restore), beside the application's in flight.
    control: Option<Pending<B>>,
    #[cfg(feature = "failover")]
    /// While restoring: the next topic slot (`0..T`), then subscription
    /// (`T..2T`) to renew.
    restore_at: usize,
    #[cfg(feature = "failover")]
    /// CleanSession of the last [`Client::connect`].
    clean_requested: bool,
    #[cfg(feature = "failover")]
    /// A CONNACK accepted since the last [`Client::connect`]: a fail-over
    /// resumes that session (CleanSession false).
    established: bool,
}

impl<const T: usize, const F: usize, const B: usize> Client<T, F, B> {
    /// A client with this ClientId (1 to 64 octets).
    pub fn new(client_id: &[u8], settings: Settings) -> Result<Self, Error> {
        if client_id.is_empty() {
            return Err(Error::TooLong);
        }
        Ok(Self {
            settings,
            client_id: Buf::from_slice(client_id).ok_or(Error::TooLong)?,
            state: State::Disconnected,
            keepalive_ms: 0,
            will: None,
            topics: [TopicEntry::default(); T],
            pending: [None; F],
            tx: [None; 4],
            tx_head: 0,
            qos2_rx: [(0, 0); 4],
            released: [Released::default(); RELEASED],
            released_head: 0,
            next_msg_id: 0,
            last_sent: 0,
            congested_until: 0,
            #[cfg(feature = "failover")]
            subs: [None; T],
            control: None,
            #[cfg(feature = "failover")]
            restore_at: 0,
            #[cfg(feature = "failover")]
            clean_requested: false,
            #[cfg(feature = "failover")]
            established: false,
        })
    }

    /// True once CONNACK accepted (and not asleep or disconnected).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected | State::Awake)
    }

    /// True while asleep.
    pub fn is_asleep(&self) -> bool {
        self.state == State::Asleep
    }

    /// The name of a topic id, if the client knows it.
    pub fn topic_name(&self, id: u16) -> Option<&[u8]> {
        self.topics.iter().find(|t| t.known && t.id == id).map(|t| t.name.as_slice())
    }

    /// The id of a registered name.
    pub fn topic_id(&self, name: &str) -> Option<u16> {
        self.topics.iter().find(|t| t.known && t.name.as_slice() == name.as_bytes()).map(|t| t.id)
    }

    /// Remembers the id of a topic name learnt outside REGISTER (a SUBACK
    /// for a concrete name).
    pub fn learn_topic(&mut self, name: &str, id: u16) -> Result<(), Error> {
        self.remember(name.as_bytes(), id)
    }

    // ----- requests -----

    /// CONNECT; with a will, the will handshake follows by itself.
    /// [`Event::Connected`] or [`Event::ConnectRefused`] answers.
    pub fn connect(
        &mut self,
        now: Millis,
        clean_session: bool,
        keepalive_s: u16,
        will: Option<(&str, &[u8], QoS, bool)>,
    ) -> Result<(), Error> {
        self.will = match will {
            None => None,
            Some((topic, msg, qos, retain)) => Some((
                Buf::from_slice(topic.as_bytes()).ok_or(Error::TooLong)?,
                qos,
                retain,
                Buf::from_slice(msg).ok_or(Error::TooLong)?,
            )),
        };
        if clean_session {
            self.topics = [TopicEntry::default(); T];
            #[cfg(feature = "failover")]
            {
                self.subs = [None; T];
            }
            self.qos2_rx = [(0, 0); 4];
            self.released = [Released::default(); RELEASED];
        }
        self.pending = [None; F];
        self.control = None;
        #[cfg(feature = "failover")]
        {
            self.clean_requested = clean_session;
            self.established = false;
        }
        self.keepalive_ms = u64::from(keepalive_s) * 1000;
        let client_id = self.client_id;
        let packet = Packet::Connect(Connect {
            will: self.will.is_some(),
            clean_session,
            protocol_id: mqttsn_codec::PROTOCOL_ID,
            duration: keepalive_s,
            client_id: client_id.as_slice(),
        });
        self.state = State::Connecting;
        self.request(now, Kind::Connect, 0, &packet)
    }

    /// REGISTER a topic name; [`Event::Registered`] answers with its id.
    pub fn register(&mut self, now: Millis, name: &str) -> Result<u16, Error> {
        self.require_connected()?;
        let slot = self.topic_slot(name)?;
        let msg_id = self.alloc_msg_id();
        let packet =
            Packet::Register(Register { topic_id: 0, msg_id, topic_name: name.as_bytes() });
        self.request(now, Kind::Register { name_slot: slot }, msg_id, &packet)?;
        Ok(msg_id)
    }

    /// PUBLISH. Returns the MsgId for QoS 1 and 2 ([`Event::Published`]
    /// follows), `None` for QoS 0 and -1. QoS -1 works without a
    /// connection, to predefined ids and short names only (spec 6.8).
    pub fn publish(
        &mut self,
        now: Millis,
        topic: Topic<'_>,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Option<u16>, Error> {
        let topic = match topic {
            Topic::Name(n) => TopicId::Normal(self.topic_id(n).ok_or(Error::NotRegistered)?),
            Topic::Id(id) => TopicId::Normal(id),
            Topic::Predefined(id) => TopicId::Predefined(id),
            Topic::Short(s) => TopicId::Short(s),
        };
        if qos == QoS::NoSession {
            if matches!(topic, TopicId::Normal(_)) {
                return Err(Error::BadTopicForQoS);
            }
        } else {
            self.require_connected()?;
        }
        let msg_id = match qos {
            QoS::AtLeastOnce | QoS::ExactlyOnce => self.alloc_msg_id(),
            _ => 0,
        };
        let packet =
            Packet::Publish(Publish { dup: false, qos, retain, topic, msg_id, data: payload });
        match qos {
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                self.request(now, Kind::Publish { qos, released: false }, msg_id, &packet)?;
                #[cfg(feature = "failover")]
                if let TopicId::Normal(id) = topic {
                    let slot = self.topics.iter().position(|t| t.known && t.id == id);
                    let kind = |k| matches!(k, Kind::Publish { .. });
                    if let Some(p) =
                        self.pending_slot(kind, msg_id).and_then(|i| self.pending[i].as_mut())
                    {
                        p.topic_slot = slot;
                    }
                }
                Ok(Some(msg_id))
            }
            _ => {
                self.send(now, &packet)?;
                Ok(None)
            }
        }
    }

    /// SUBSCRIBE; [`Event::Subscribed`] answers.
    pub fn subscribe(
        &mut self,
        now: Millis,
        filter: TopicFilter<'_>,
        qos: QoS,
    ) -> Result<u16, Error> {
        self.require_connected()?;
        #[cfg(feature = "failover")]
        {
            let kept = SubFilter::of(&filter).ok_or(Error::TooLong)?;
            if !self.subs.iter().any(|s| s.is_none() || s.is_some_and(|s| s.filter == kept)) {
                return Err(Error::TopicsFull);
            }
        }
        let msg_id = self.alloc_msg_id();
        let packet = Packet::Subscribe(Subscribe { dup: false, qos, msg_id, topic: filter });
        self.request(now, Kind::Subscribe, msg_id, &packet)?;
        Ok(msg_id)
    }

    /// UNSUBSCRIBE; [`Event::Unsubscribed`] answers.
    pub fn unsubscribe(&mut self, now: Millis, filter: TopicFilter<'_>) -> Result<u16, Error> {
        self.require_connected()?;
        let msg_id = self.alloc_msg_id();
        let packet = Packet::Unsubscribe(Unsubscribe { msg_id, topic: filter });
        self.request(now, Kind::Unsubscribe, msg_id, &packet)?;
        Ok(msg_id)
    }

    /// PINGREQ; [`Event::PingResp`] answers. Sent by itself when the
    /// keepalive period passes without traffic.
    pub fn ping(&mut self, now: Millis) -> Result<(), Error> {
        self.require_connected()?;
        self.request(now, Kind::Ping, 0, &Packet::PingReq(None))
    }

    /// Go to sleep for `duration_s` seconds (DISCONNECT with Duration);
    /// [`Event::Disconnected`] answers, then the client is asleep.
    pub fn sleep(&mut self, now: Millis, duration_s: u16) -> Result<(), Error> {
        if !matches!(self.state, State::Connected | State::Awake | State::Asleep) {
            return Err(Error::NotConnected);
        }
        self.state = State::Asleep;
        self.request(now, Kind::Disconnect, 0, &Packet::Disconnect(Some(duration_s)))
    }

    /// Wake up for a moment (PINGREQ with the ClientId): buffered messages
    /// arrive as [`Event::Message`], then [`Event::PingResp`] and the
    /// client sleeps again.
    pub fn wake(&mut self, now: Millis) -> Result<(), Error> {
        if self.state != State::Asleep {
            return Err(Error::NotConnected);
        }
        self.state = State::Awake;
        let client_id = self.client_id;
        self.request(now, Kind::Ping, 0, &Packet::PingReq(Some(client_id.as_slice())))
    }

    /// DISCONNECT; [`Event::Disconnected`] answers.
    pub fn disconnect(&mut self, now: Millis) -> Result<(), Error> {
        if self.state == State::Disconnected {
            return Err(Error::NotConnected);
        }
        self.state = State::Disconnecting;
        self.request(now, Kind::Disconnect, 0, &Packet::Disconnect(None))
    }

    /// WILLTOPICUPD (`None` deletes the will); [`Event::WillUpdated`]
    /// answers.
    pub fn update_will_topic(
        &mut self,
        now: Millis,
        will: Option<(&str, QoS, bool)>,
    ) -> Result<(), Error> {
        self.require_connected()?;
        let packet = Packet::WillTopicUpd(will.map(|(topic, qos, retain)| WillTopic {
            qos,
            retain,
            topic: topic.as_bytes(),
        }));
        self.request(now, Kind::WillUpdate, 0, &packet)
    }

    /// WILLMSGUPD; [`Event::WillUpdated`] answers.
    pub fn update_will_message(&mut self, now: Millis, msg: &[u8]) -> Result<(), Error> {
        self.require_connected()?;
        self.request(now, Kind::WillUpdate, 0, &Packet::WillMsgUpd(msg))
    }

    /// Moves the session to the next gateway, after [`Event::GatewayLost`]
    /// or [`Event::DisconnectedByGateway`]: the caller sends from now on
    /// to the next gateway of its list (see [`crate::gateways`]) and
    /// calls this. CONNECT goes out with CleanSession false (with the
    /// first CONNECT's CleanSession when no gateway accepted it yet), the
    /// same keepalive and will; after CONNACK every topic name is
    /// registered again (topic ids are the gateway's) and every
    /// subscription is renewed, whether or not the gateway knew the
    /// session (one that did not answers CONNACK all the same and forgets
    /// the subscriptions). Then the requests that were in flight are sent
    /// again (a PUBLISH with the new id of its topic, DUP set), and
    /// [`Event::GatewayChanged`] reports the move ([`Event::Connected`]
    /// when no gateway had accepted the session before). A refused CONNACK,
    /// or Nretry without an answer, is [`Event::GatewayLost`] again.
    #[cfg(feature = "failover")]
    pub fn fail_over(&mut self, now: Millis) -> Result<(), Error> {
        if self.state == State::Asleep {
            return Err(Error::NotConnected);
        }
        self.park();
        for t in self.topics.iter_mut() {
            t.known = false;
        }
        let client_id = self.client_id;
        let packet = Packet::Connect(Connect {
            will: self.will.is_some(),
            clean_session: !self.established && self.clean_requested,
            protocol_id: mqttsn_codec::PROTOCOL_ID,
            duration: u16::try_from(self.keepalive_ms / 1000).unwrap_or(u16::MAX),
            client_id: client_id.as_slice(),
        });
        self.state = State::Connecting;
        self.control_request(now, Kind::Connect, 0, &packet)
    }

    // ----- inputs -----

    /// A datagram from the gateway. The event, if any, may borrow from it.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Millis,
        datagram: &'a [u8],
    ) -> Result<Option<Event<'a>>, Error> {
        let packet = Packet::decode(datagram).map_err(Error::Malformed)?;
        let verdict = match packet {
            Packet::ConnAck(rc) => rc,
            Packet::RegAck(a) | Packet::PubAck(a) => a.return_code,
            Packet::SubAck(s) => s.return_code,
            _ => ReturnCode::Accepted,
        };
        if verdict == ReturnCode::Congestion {
            self.congested_until = now + u64::from(self.settings.congestion_wait_ms);
        }
        Ok(match packet {
            #[cfg(feature = "failover")]
            Packet::ConnAck(rc) if self.control.is_some_and(|c| c.kind == Kind::Connect) => {
                self.control = None;
                if rc.is_accepted() {
                    self.state = State::Restoring;
                    self.restore_at = 0;
                    self.restore_next(now)?
                } else {
                    self.state = State::Lost;
                    Some(Event::GatewayLost)
                }
            }
            Packet::ConnAck(rc) => {
                self.finish(Kind::Connect, 0)?;
                if rc.is_accepted() {
                    self.state = State::Connected;
                    #[cfg(feature = "failover")]
                    {
                        self.established = true;
                    }
                    Some(Event::Connected)
                } else {
                    self.state = State::Disconnected;
                    Some(Event::ConnectRefused(rc))
                }
            }
            Packet::WillTopicReq => {
                let p = match &self.will {
                    Some((topic, qos, retain, _)) => {
                        let topic = *topic;
                        let (qos, retain) = (*qos, *retain);
                        Buf::<B>::encode(&Packet::WillTopic(Some(WillTopic {
                            qos,
                            retain,
                            topic: topic.as_slice(),
                        })))
                    }
                    None => Buf::<B>::encode(&Packet::WillTopic(None)),
                };
                self.push_tx(now, p.ok_or(Error::TooLong)?);
                None
            }
            Packet::WillMsgReq => {
                let msg = self.will.as_ref().map(|w| w.3).unwrap_or_default();
                let p = Buf::<B>::encode(&Packet::WillMsg(msg.as_slice())).ok_or(Error::TooLong)?;
                self.push_tx(now, p);
                None
            }
            #[cfg(feature = "failover")]
            Packet::RegAck(a) if self.is_control(a.msg_id) => {
                if let (Some(Kind::Register { name_slot }), true) =
                    (self.control.map(|c| c.kind), a.return_code.is_accepted())
                {
                    if let Some(t) = self.topics.get_mut(name_slot) {
                        t.id = a.topic_id;
                        t.known = true;
                    }
                }
                self.control = None;
                self.restore_next(now)?
            }
            Packet::RegAck(a) => {
                let Some(slot) =
                    self.pending_slot(|k| matches!(k, Kind::Register { .. }), a.msg_id)
                else {
                    return Ok(None);
                };
                let kind = self.pending[slot].map(|p| p.kind);
                self.pending[slot] = None;
                if let (Some(Kind::Register { name_slot }), true) =
                    (kind, a.return_code.is_accepted())
                {
                    if let Some(t) = self.topics.get_mut(name_slot) {
                        t.id = a.topic_id;
                        t.known = true;
                    }
                }
                Some(Event::Registered {
                    msg_id: a.msg_id,
                    result: if a.return_code.is_accepted() {
                        Ok(a.topic_id)
                    } else {
                        Err(a.return_code)
                    },
                })
            }
            Packet::Register(r) => {
                // The gateway names a topic before publishing on it.
                let rc = match self.remember(r.topic_name, r.topic_id) {
                    Ok(()) => ReturnCode::Accepted,
                    Err(_) => ReturnCode::Congestion,
                };
                let ack =
                    Packet::RegAck(Ack { topic_id: r.topic_id, msg_id: r.msg_id, return_code: rc });
                self.push_tx(now, Buf::encode(&ack).ok_or(Error::TooLong)?);
                None
            }
            Packet::PubAck(a) => {
                let Some(slot) = self.pending_slot(|k| matches!(k, Kind::Publish { .. }), a.msg_id)
                else {
                    return Ok(None);
                };
                self.pending[slot] = None;
                Some(Event::Published {
                    msg_id: a.msg_id,
                    result: if a.return_code.is_accepted() { Ok(()) } else { Err(a.return_code) },
                })
            }
            Packet::PubRec(msg_id) => {
                // Our QoS 2 PUBLISH is recorded: PUBREL until PUBCOMP.
                if let Some(slot) = self.pending_slot(|k| matches!(k, Kind::Publish { .. }), msg_id)
                {
                    let rel = Buf::encode(&Packet::PubRel(msg_id)).ok_or(Error::TooLong)?;
                    if let Some(p) = self.pending[slot].as_mut() {
                        p.kind = Kind::Publish { qos: QoS::ExactlyOnce, released: true };
                        p.datagram = rel;
                        p.deadline = now + u64::from(self.settings.retry_ms);
                        p.retries = 0;
                    }
                    self.push_tx(now, rel);
                }
                None
            }
            Packet::PubComp(msg_id) => {
                let slot = self
                    .pending_slot(|k| matches!(k, Kind::Publish { released: true, .. }), msg_id);
                let Some(slot) = slot else { return Ok(None) };
                self.pending[slot] = None;
                Some(Event::Published { msg_id, result: Ok(()) })
            }
            Packet::Publish(p) => self.incoming(now, p)?,
            Packet::PubRel(msg_id) => {
                if let Some(x) = self.qos2_rx.iter_mut().find(|x| x.0 == msg_id && msg_id != 0) {
                    let fingerprint = x.1;
                    *x = (0, 0);
                    self.remember_released(msg_id, fingerprint, false, now);
                }
                self.push_tx(now, Buf::encode(&Packet::PubComp(msg_id)).ok_or(Error::TooLong)?);
                None
            }
            #[cfg(feature = "failover")]
            Packet::SubAck(s) if self.is_control(s.msg_id) => {
                if let Some(c) = self.control.take() {
                    self.learn_from_suback(&c.datagram, s.topic_id, s.return_code);
                }
                self.restore_next(now)?
            }
            Packet::SubAck(s) => {
                let Some(slot) = self.pending_slot(|k| k == Kind::Subscribe, s.msg_id) else {
                    return Ok(None);
                };
                let _taken = self.pending[slot].take();
                #[cfg(feature = "failover")]
                if let (Some(p), true) = (_taken, s.return_code.is_accepted()) {
                    self.keep_sub(&p.datagram);
                }
                Some(Event::Subscribed {
                    msg_id: s.msg_id,
                    result: if s.return_code.is_accepted() {
                        Ok((s.topic_id, s.qos))
                    } else {
                        Err(s.return_code)
                    },
                })
            }
            Packet::UnsubAck(msg_id) => {
                let slot = self.pending_slot(|k| k == Kind::Unsubscribe, msg_id);
                let Some(slot) = slot else { return Ok(None) };
                let _taken = self.pending[slot].take();
                #[cfg(feature = "failover")]
                if let Some(p) = _taken {
                    self.drop_sub(&p.datagram);
                }
                Some(Event::Unsubscribed { msg_id })
            }
            Packet::PingReq(_) => {
                // The gateway checks on us (spec 6.11).
                self.push_tx(now, Buf::encode(&Packet::PingResp).ok_or(Error::TooLong)?);
                None
            }
            Packet::PingResp => {
                self.finish(Kind::Ping, 0)?;
                if self.state == State::Awake {
                    self.state = State::Asleep;
                }
                Some(Event::PingResp)
            }
            Packet::Disconnect(_) => {
                let ours = self.finish(Kind::Disconnect, 0).is_ok();
                if ours {
                    if self.state != State::Asleep {
                        self.state = State::Disconnected;
                    }
                    Some(Event::Disconnected)
                } else {
                    self.state = State::Disconnected;
                    self.park();
                    Some(Event::DisconnectedByGateway)
                }
            }
            Packet::WillTopicResp(rc) | Packet::WillMsgResp(rc) => {
                let _ = self.finish(Kind::WillUpdate, 0);
                Some(Event::WillUpdated(rc))
            }
            _ => None,
        })
    }

    fn incoming<'a>(&mut self, now: Millis, p: Publish<'a>) -> Result<Option<Event<'a>>, Error> {
        let qos2 = p.qos == QoS::ExactlyOnce && p.msg_id != 0;
        let late = if qos2 { self.late_copy(now, p.msg_id, p.data) } else { None };
        if qos2 && (self.qos2_rx.iter().any(|x| x.0 == p.msg_id) || late == Some(false)) {
            // A retransmission of a message delivered already, or a late
            // copy of one released since: PUBREC again, whatever its topic
            // id has become since (the gateway may have named the topic
            // again in between).
            self.push_tx(now, Buf::encode(&Packet::PubRec(p.msg_id)).ok_or(Error::TooLong)?);
            return Ok(None);
        }
        let topic = match p.topic {
            TopicId::Normal(id) => {
                if late == Some(true) || self.topic_name(id).is_none() {
                    // Unknown id (spec 6.10): tell the gateway, which
                    // names the topic and sends the message again under a
                    // new MsgId; so a copy of a QoS 2 message refused is
                    // refused again, even once the id is known.
                    let ack = Packet::PubAck(Ack {
                        topic_id: id,
                        msg_id: p.msg_id,
                        return_code: ReturnCode::InvalidTopicId,
                    });
                    self.push_tx(now, Buf::encode(&ack).ok_or(Error::TooLong)?);
                    if qos2 && late.is_none() {
                        self.remember_released(p.msg_id, fingerprint(p.data), true, now);
                    }
                    return Ok(None);
                }
                MessageTopic::Id(id)
            }
            TopicId::Predefined(id) => MessageTopic::Predefined(id),
            TopicId::Short(s) => MessageTopic::Short(s),
            TopicId::Reserved(_) => return Ok(None),
        };
        match p.qos {
            QoS::AtLeastOnce => {
                let ack = Packet::PubAck(Ack {
                    topic_id: p.topic.raw(),
                    msg_id: p.msg_id,
                    return_code: ReturnCode::Accepted,
                });
                self.push_tx(now, Buf::encode(&ack).ok_or(Error::TooLong)?);
            }
            QoS::ExactlyOnce => {
                self.push_tx(now, Buf::encode(&Packet::PubRec(p.msg_id)).ok_or(Error::TooLong)?);
                let entry = (p.msg_id, fingerprint(p.data));
                if let Some(x) = self.qos2_rx.iter_mut().find(|x| x.0 == 0) {
                    *x = entry;
                } else {
                    // Full: the oldest goes, the others move up one.
                    let mut carry = entry;
                    for x in self.qos2_rx.iter_mut().rev() {
                        core::mem::swap(x, &mut carry);
                    }
                }
            }
            _ => {}
        }
        // Each message received while awake restarts the wait.
        for pending in self.pending.iter_mut().flatten() {
            if pending.kind == Kind::Ping {
                pending.deadline = now + u64::from(self.settings.retry_ms);
            }
        }
        Ok(Some(Event::Message { topic, payload: p.data, qos: p.qos, retain: p.retain }))
    }

    /// Time has reached [`Client::poll_timeout`]: retransmissions (with
    /// DUP), the keepalive PINGREQ. Returns [`Event::GatewayLost`] when a
    /// message went unanswered Nretry times.
    pub fn handle_timeout(&mut self, now: Millis) -> Option<Event<'static>> {
        let retry = u64::from(self.settings.retry_ms);
        let mut lost = false;
        let mut resend: [Option<Buf<B>>; F] = [None; F];
        for (i, slot) in self.pending.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            if now < p.deadline {
                continue;
            }
            if p.retries >= self.settings.max_retries {
                // Kept (parked below) for the next gateway.
                lost = true;
                continue;
            }
            p.retries += 1;
            p.deadline = now + retry;
            set_dup(&mut p.datagram);
            if let Some(r) = resend.get_mut(i) {
                *r = Some(p.datagram);
            }
        }
        for d in resend.into_iter().flatten() {
            self.push_tx(now, d);
        }
        if let Some(c) = self.control.as_mut().filter(|c| now >= c.deadline) {
            if c.retries >= self.settings.max_retries {
                self.control = None;
                lost = true;
            } else {
                c.retries += 1;
                c.deadline = now + retry;
                set_dup(&mut c.datagram);
                let d = c.datagram;
                self.push_tx(now, d);
            }
        }
        if lost {
            if self.state == State::Awake {
                self.pending = [None; F];
                self.state = State::Asleep;
            } else {
                self.park();
                self.state = State::Lost;
            }
            return Some(Event::GatewayLost);
        }
        if self.state == State::Connected
            && self.keepalive_ms > 0
            && now >= self.last_sent + self.keepalive_ms
            && !self.pending.iter().flatten().any(|p| p.kind == Kind::Ping)
        {
            let _ = self.ping(now);
        }
        None
    }

    // ----- outputs -----

    /// The next datagram to send, copied into `out`; returns its length.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        for i in 0..self.tx.len() {
            let idx = (self.tx_head + i) % self.tx.len();
            if let Some(d) = self.tx[idx].take() {
                self.tx_head = (idx + 1) % self.tx.len();
                let bytes = d.as_slice();
                out.get_mut(..bytes.len())?.copy_from_slice(bytes);
                return Some(bytes.len());
            }
        }
        None
    }

    /// When [`Client::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let retry = self
            .pending
            .iter()
            .chain(core::iter::once(&self.control))
            .flatten()
            .map(|p| p.deadline)
            .filter(|d| *d != PARKED)
            .min();
        let keepalive = (self.state == State::Connected && self.keepalive_ms > 0)
            .then_some(self.last_sent + self.keepalive_ms);
        match (retry, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- fail-over -----

    /// Keeps the application's requests for the next gateway: never due
    /// until [`Client::resume`]. CONNECT and PINGREQ are not kept.
    fn park(&mut self) {
        self.control = None;
        for slot in self.pending.iter_mut() {
            match slot {
                Some(p) if matches!(p.kind, Kind::Connect | Kind::Ping) => *slot = None,
                Some(p) => {
                    p.deadline = PARKED;
                    p.retries = 0;
                }
                None => {}
            }
        }
    }

    #[cfg(feature = "failover")]
    fn is_control(&self, msg_id: u16) -> bool {
        msg_id != 0 && self.control.is_some_and(|c| c.msg_id == msg_id)
    }

    #[cfg(feature = "failover")]
    fn control_request(
        &mut self,
        now: Millis,
        kind: Kind,
        msg_id: u16,
        packet: &Packet<'_>,
    ) -> Result<(), Error> {
        let datagram = Buf::<B>::encode(packet).ok_or(Error::TooLong)?;
        self.control = Some(self.fresh(now, kind, msg_id, datagram));
        self.push_tx(now, datagram);
        Ok(())
    }

    #[cfg(feature = "failover")]
    /// The next REGISTER or SUBSCRIBE of the restore; at the end, the
    /// parked requests go out and the move is reported.
    fn restore_next(&mut self, now: Millis) -> Result<Option<Event<'static>>, Error> {
        while self.restore_at < 2 * T {
            let i = self.restore_at;
            self.restore_at += 1;
            if let Some(t) = self.topics.get(i).copied() {
                if t.name.as_slice().is_empty() || t.known {
                    continue;
                }
                let msg_id = self.alloc_msg_id();
                let packet = Packet::Register(Register {
                    topic_id: 0,
                    msg_id,
                    topic_name: t.name.as_slice(),
                });
                self.control_request(now, Kind::Register { name_slot: i }, msg_id, &packet)?;
                return Ok(None);
            }
            let Some(sub) = self.subs.get(i - T).copied().flatten() else { continue };
            let msg_id = self.alloc_msg_id();
            let packet = Packet::Subscribe(Subscribe {
                dup: false,
                qos: sub.qos,
                msg_id,
                topic: sub.filter.filter(),
            });
            self.control_request(now, Kind::Subscribe, msg_id, &packet)?;
            return Ok(None);
        }
        self.resume(now);
        self.state = State::Connected;
        let event = if self.established { Event::GatewayChanged } else { Event::Connected };
        self.established = true;
        Ok(Some(event))
    }

    #[cfg(feature = "failover")]
    /// Sends the parked requests to the new gateway.
    fn resume(&mut self, now: Millis) {
        let retry = u64::from(self.settings.retry_ms);
        for i in 0..F {
            let Some(mut p) = self.pending.get(i).copied().flatten() else { continue };
            if p.deadline != PARKED {
                continue;
            }
            if let (Kind::Publish { released: false, .. }, Some(t)) =
                (p.kind, p.topic_slot.and_then(|s| self.topics.get(s)))
            {
                if let Some(d) = t.known.then(|| with_topic_id(&p.datagram, t.id)).flatten() {
                    p.datagram = d;
                }
            }
            set_dup(&mut p.datagram);
            p.deadline = now + retry;
            p.retries = 0;
            if let Some(slot) = self.pending.get_mut(i) {
                *slot = Some(p);
            }
            self.push_tx(now, p.datagram);
        }
    }

    #[cfg(feature = "failover")]
    /// A restore's SUBACK: a concrete name's topic id.
    fn learn_from_suback(&mut self, subscribe: &Buf<B>, topic_id: u16, rc: ReturnCode) {
        if !rc.is_accepted() || topic_id == 0 {
            return;
        }
        if let Ok(Packet::Subscribe(s)) = Packet::decode(subscribe.as_slice()) {
            if let TopicFilter::Name(n) = s.topic {
                if !n.iter().any(|c| matches!(c, b'#' | b'+')) {
                    let _ = self.remember(n, topic_id);
                }
            }
        }
    }

    #[cfg(feature = "failover")]
    /// An accepted SUBSCRIBE of the application, to renew after a
    /// fail-over.
    fn keep_sub(&mut self, subscribe: &Buf<B>) {
        let Ok(Packet::Subscribe(s)) = Packet::decode(subscribe.as_slice()) else { return };
        let Some(filter) = SubFilter::of(&s.topic) else { return };
        let slot = match self.subs.iter().position(|x| x.is_some_and(|x| x.filter == filter)) {
            Some(i) => self.subs.get_mut(i),
            None => self.subs.iter_mut().find(|x| x.is_none()),
        };
        if let Some(slot) = slot {
            *slot = Some(Sub { filter, qos: s.qos });
        }
    }

    #[cfg(feature = "failover")]
    /// An acknowledged UNSUBSCRIBE: not renewed any more.
    fn drop_sub(&mut self, unsubscribe: &Buf<B>) {
        let Ok(Packet::Unsubscribe(u)) = Packet::decode(unsubscribe.as_slice()) else { return };
        let Some(filter) = SubFilter::of(&u.topic) else { return };
        for slot in self.subs.iter_mut() {
            if slot.is_some_and(|x| x.filter == filter) {
                *slot = None;
            }
        }
    }

    // ----- internals -----

    /// How long a released QoS 2 MsgId is remembered: while the gateway
    /// may still be retransmitting its PUBLISH, Tretry × (Nretry + 1).
    fn qos2_window(&self) -> Millis {
        u64::from(self.settings.retry_ms) * (u64::from(self.settings.max_retries) + 1)
    }

    /// True when a PUBLISH with `msg_id` and `payload` is a late copy (a
    /// retransmission with DUP set, or a datagram the network duplicated)
    /// of a QoS 2 message released less than the window ago. Another
    /// payload is a new message: the gateway may use a MsgId again once
    /// its exchange is over.
    /// `Some(refused)`: whether that message was refused (see
    /// [`Released`]).
    fn late_copy(&self, now: Millis, msg_id: u16, payload: &[u8]) -> Option<bool> {
        let window = self.qos2_window();
        let f = fingerprint(payload);
        let now = now as u32;
        self.released
            .iter()
            .find(|r| {
                r.msg_id == msg_id
                    && r.fingerprint == f
                    && u64::from(now.wrapping_sub(r.at)) < window
            })
            .map(|r| r.refused)
    }

    /// Remembers a released (or refused) QoS 2 message in place of the
    /// oldest.
    fn remember_released(&mut self, msg_id: u16, fingerprint: u32, refused: bool, now: Millis) {
        let i = usize::from(self.released_head) % RELEASED;
        if let Some(r) = self.released.get_mut(i) {
            *r = Released { msg_id, refused, fingerprint, at: now as u32 };
        }
        self.released_head = self.released_head.wrapping_add(1) % RELEASED as u8;
    }

    /// How many released QoS 2 MsgIds are remembered now.
    #[cfg(test)]
    pub(crate) fn released_count(&self, now: Millis) -> usize {
        let window = self.qos2_window();
        let now = now as u32;
        self.released
            .iter()
            .filter(|r| r.msg_id != 0 && u64::from(now.wrapping_sub(r.at)) < window)
            .count()
    }

    fn require_connected(&self) -> Result<(), Error> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(Error::NotConnected)
        }
    }

    fn alloc_msg_id(&mut self) -> u16 {
        loop {
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            let id = self.next_msg_id;
            let busy = self.pending.iter().chain(core::iter::once(&self.control)).flatten();
            if id != 0 && !busy.clone().any(|p| p.msg_id == id) {
                return id;
            }
        }
    }

    /// Queues `packet` and keeps it for retransmission until answered.
    fn request(
        &mut self,
        now: Millis,
        kind: Kind,
        msg_id: u16,
        packet: &Packet<'_>,
    ) -> Result<(), Error> {
        if now < self.congested_until && !matches!(kind, Kind::Disconnect | Kind::Ping) {
            return Err(Error::Congested);
        }
        let datagram = Buf::<B>::encode(packet).ok_or(Error::TooLong)?;
        // One request of each kind without a MsgId at a time.
        let same = |p: &Pending<B>| msg_id == 0 && p.msg_id == 0 && p.kind == kind;
        if let Some(slot) = self.pending.iter_mut().find(|s| s.as_ref().is_some_and(same)) {
            *slot = None;
        }
        let fresh = self.fresh(now, kind, msg_id, datagram);
        let slot = self.pending.iter_mut().find(|s| s.is_none()).ok_or(Error::Busy)?;
        *slot = Some(fresh);
        self.push_tx(now, datagram);
        Ok(())
    }

    /// A request just sent, waiting for its answer.
    fn fresh(&self, now: Millis, kind: Kind, msg_id: u16, datagram: Buf<B>) -> Pending<B> {
        Pending {
            kind,
            msg_id,
            datagram,
            deadline: now + u64::from(self.settings.retry_ms),
            retries: 0,
            topic_slot: None,
        }
    }

    fn send(&mut self, now: Millis, packet: &Packet<'_>) -> Result<(), Error> {
        let d = Buf::<B>::encode(packet).ok_or(Error::TooLong)?;
        self.push_tx(now, d);
        Ok(())
    }

    fn push_tx(&mut self, now: Millis, d: Buf<B>) {
        self.last_sent = now;
        let n = self.tx.len();
        for i in 0..n {
            let idx = (self.tx_head + i) % n;
            if self.tx[idx].is_none() {
                // Keep order: only append after the last occupied slot.
                let after_all = (1..n - i).all(|j| self.tx[(idx + j) % n].is_none());
                if after_all {
                    self.tx[idx] = Some(d);
                    return;
                }
            }
        }
        // Full: the oldest datagram is dropped (it is retransmitted if it
        // was a request).
        self.tx[self.tx_head] = Some(d);
        self.tx_head = (self.tx_head + 1) % n;
    }

    fn pending_slot(&self, kind: impl Fn(Kind) -> bool, msg_id: u16) -> Option<usize> {
        self.pending
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| kind(p.kind) && p.msg_id == msg_id))
    }

    fn finish(&mut self, kind: Kind, msg_id: u16) -> Result<(), Error> {
        let slot = self.pending_slot(|k| k == kind, msg_id).ok_or(Error::NotConnected)?;
        self.pending[slot] = None;
        Ok(())
    }

    /// A slot for `name`: its own if known or pending, else a free one.
    fn topic_slot(&mut self, name: &str) -> Result<usize, Error> {
        if let Some(i) = self.topics.iter().position(|t| t.name.as_slice() == name.as_bytes()) {
            return Ok(i);
        }
        let i = self
            .topics
            .iter()
            .position(|t| t.name.as_slice().is_empty())
            .ok_or(Error::TopicsFull)?;
        self.topics[i] = TopicEntry {
            id: 0,
            name: Buf::from_slice(name.as_bytes()).ok_or(Error::TooLong)?,
            known: false,
        };
        Ok(i)
    }

    fn remember(&mut self, name: &[u8], id: u16) -> Result<(), Error> {
        let name = core::str::from_utf8(name).map_err(|_| Error::TooLong)?;
        let i = self.topic_slot(name)?;
        self.topics[i].id = id;
        self.topics[i].known = true;
        Ok(())
    }
}

#[cfg(feature = "failover")]
/// A stored PUBLISH with another topic id (the next gateway's).
fn with_topic_id<const B: usize>(d: &Buf<B>, id: u16) -> Option<Buf<B>> {
    match Packet::decode(d.as_slice()).ok()? {
        Packet::Publish(p) => {
            Buf::encode(&Packet::Publish(Publish { topic: TopicId::Normal(id), ..p }))
        }
        _ => None,
    }
}

/// Sets DUP on a stored PUBLISH or SUBSCRIBE before it is sent again.
fn set_dup<const B: usize>(d: &mut Buf<B>) {
    let Ok(h) = Header::parse(d.as_slice()) else { return };
    if h.msg_type == mqttsn_codec::MsgType::Publish as u8
        || h.msg_type == mqttsn_codec::MsgType::Subscribe as u8
    {
        if let Some(flags) = d.as_mut_slice().get_mut(h.header_len) {
            *flags |= 0x80;
        }
    }
}
