//! The upstream side of the gateway: the interface between the sensors'
//! sessions and their MQTT sessions on the broker.
//!
//! A session speaks to its upstream only through [`Command`] and
//! [`Event`], tagged with its [`UpstreamKey`]. [`Upstreams`] is the sans-IO
//! shape every upstream side takes: it takes commands, bytes read and
//! transport changes with an explicit `now`, and hands out events, bytes to
//! write and transport requests ([`Io`]). [`transparent::Transparent`]
//! gives every sensor its own MQTT 3.1.1 connection (the transparent
//! gateway of spec 4.2); [`aggregating::Aggregating`] shares a small pool
//! of connections among all of them (the aggregating gateway of spec 4.3);
//! [`mode::ByMode`] is whichever the configuration chose. [`driver::Driver`] moves the bytes
//! of any implementation over TCP or TLS.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

pub mod aggregating;
pub mod connection;
pub mod driver;
pub mod mode;
pub mod tls;
pub mod transparent;

/// Identifies one sensor session's upstream; chosen by the endpoint, never
/// reused, so events from a finished upstream cannot reach a later one.
pub type UpstreamKey = u64;

/// Identifies one transport (one TCP connection, or one attempt to make
/// it); never reused.
pub type ConnId = u64;

/// What an upstream side asks of the transports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a transport to the broker (TCP, or TLS with this client
    /// certificate instead of the connector's default); answer with
    /// [`Upstreams::handle_opened`] or [`Upstreams::handle_open_failed`].
    Open {
        /// The new transport.
        conn: ConnId,
        /// A TLS client certificate for this connection.
        cert: Option<tls::ClientCert>,
    },
    /// Close the transport once what was handed out for it is written.
    /// With `linger`, the driver half-closes and waits (bounded) for the
    /// broker to close its side, then reports
    /// [`Upstreams::handle_closed`]; without, it drops the transport and
    /// reports nothing.
    Close {
        /// The transport.
        conn: ConnId,
        /// Wait for the broker to close first.
        linger: bool,
    },
}

/// The upstream side as the endpoint drives it: sans-IO, inputs with an
/// explicit `now`, outputs polled.
pub trait Upstreams {
    /// A command from the session behind `key`. The first
    /// [`Command::Connect`] or [`Command::Restore`] of a key starts its
    /// upstream; it ends after reporting [`Event::Closed`] or
    /// [`Event::Refused`].
    fn handle_command(&mut self, key: UpstreamKey, cmd: Command, now: Instant);
    /// The transport asked for with [`Io::Open`] is up.
    fn handle_opened(&mut self, conn: ConnId, now: Instant);
    /// The transport could not be opened.
    fn handle_open_failed(&mut self, conn: ConnId, reason: &str, now: Instant);
    /// Octets read from `conn`: complete packets are taken from the front
    /// of `data`; an incomplete one is left there.
    fn handle_received(&mut self, conn: ConnId, data: &mut BytesMut, now: Instant);
    /// The transport is gone (closed by the broker, failed, or closed
    /// after [`Io::Close`] with linger).
    fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Instant);
    /// Time has reached [`Upstreams::poll_timeout`] (or later).
    fn handle_timeout(&mut self, now: Instant);
    /// The next event for a session.
    fn poll_event(&mut self) -> Option<(UpstreamKey, Event)>;
    /// The next octets to write to a transport.
    fn poll_transmit(&mut self) -> Option<(ConnId, BytesMut)>;
    /// The next transport request.
    fn poll_io(&mut self) -> Option<Io>;
    /// When [`Upstreams::handle_timeout`] must be called next.
    fn poll_timeout(&mut self) -> Option<Instant>;
    /// Upstreams still running (not yet closed or refused).
    fn open_count(&self) -> usize;
}

pub use crate::mqtt::QoS;

/// Identifies one request (publish, subscribe, unsubscribe) from the
/// session to the upstream; chosen by the session, echoed in the event that
/// completes it. Unique per sensor while the request is outstanding.
pub type RequestId = u64;

/// The MQTT packet identifier of a request: derived from its id, so that a
/// session restored from the store sends a QoS 2 PUBLISH (or its PUBREL)
/// again with the packet identifier the broker already knows.
pub const fn packet_id_of(id: RequestId) -> u16 {
    ((id.wrapping_sub(1) % 0xffff) + 1) as u16
}

/// A QoS 2 publish restored from the store, handed to a new upstream
/// before its first connect (see [`Command::Restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredPublish {
    /// The request; its packet identifier is [`packet_id_of`] it.
    pub id: RequestId,
    /// The topic name.
    pub topic: Arc<str>,
    /// The payload.
    pub payload: Bytes,
    /// The retain flag.
    pub retain: bool,
    /// Where it was: `Sent` (no PUBREC yet: PUBLISH again with DUP),
    /// `Recorded` (PUBREC received: waits for [`Command::Release`]) or
    /// `Released` (PUBREL sent: PUBREL again).
    pub stage: RestoredStage,
}

/// See [`RestoredPublish::stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredStage {
    /// PUBLISH sent, no PUBREC known.
    Sent,
    /// PUBREC received.
    Recorded,
    /// PUBREL sent.
    Released,
}

/// Identifies one message received from the broker that needs an
/// acknowledgement (QoS 1 or 2). Echoed back in [`Command::Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

/// The last will of an upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The will topic.
    pub topic: String,
    /// The will message.
    pub payload: Bytes,
    /// The will QoS.
    pub qos: QoS,
    /// The will retain flag.
    pub retain: bool,
}

/// How to open (or re-open) the upstream session of a sensor. Its `Debug`
/// hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectSpec {
    /// The MQTT ClientId on the broker (prefix applied already).
    pub client_id: String,
    /// CleanSession on this connect. Automatic reconnects after a lost
    /// connection always use `false`, so the broker session survives.
    pub clean_session: bool,
    /// The MQTT keepalive in seconds, kept by the upstream itself.
    pub keep_alive: u16,
    /// The last will, if any.
    pub will: Option<Will>,
    /// Upstream username, if any.
    pub username: Option<String>,
    /// Upstream password, if any.
    pub password: Option<Bytes>,
    /// TLS client certificate for this sensor (`mqtts://` only), instead
    /// of the connector's default.
    pub client_cert: Option<tls::ClientCert>,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// What a session asks of its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open the upstream session, or replace the current connection with a
    /// new one (for a will update or a takeover): the old connection is
    /// closed with DISCONNECT, so no will fires, and requests still in
    /// flight are carried over to the new connection. (Boxed: it is rare
    /// and large, and every other command is small.)
    Connect(Box<ConnectSpec>),
    /// Publish. QoS 0 is complete once handed over (no event follows);
    /// QoS 1 is completed by [`Event::PublishAcked`] at the broker's PUBACK,
    /// QoS 2 at its PUBREC.
    Publish {
        /// Echoed in the completion events.
        id: RequestId,
        /// The topic name, shared with the session's registrations.
        topic: Arc<str>,
        /// The payload.
        payload: Bytes,
        /// The QoS.
        qos: QoS,
        /// The retain flag.
        retain: bool,
    },
    /// QoS 2: release a publish that was acknowledged with PUBREC (send
    /// PUBREL). Completed by [`Event::PublishCompleted`].
    Release {
        /// The id of the publish.
        id: RequestId,
    },
    /// Subscribe to one filter. Completed by [`Event::SubAcked`].
    Subscribe {
        /// Echoed in the completion event.
        id: RequestId,
        /// The topic filter.
        filter: String,
        /// The requested QoS.
        qos: QoS,
    },
    /// Unsubscribe from one filter. Completed by [`Event::UnsubAcked`].
    Unsubscribe {
        /// Echoed in the completion event.
        id: RequestId,
        /// The topic filter.
        filter: String,
    },
    /// Acknowledge a received QoS 1 (PUBACK) or QoS 2 (PUBREC; the PUBREL
    /// and PUBCOMP that follow are handled by the upstream) message.
    /// Acknowledgements go out in the order the messages were received.
    Ack(DeliveryId),
    /// Before the first [`Command::Connect`] of a session restored from the
    /// store: the QoS 2 publishes it had in flight, and the packet
    /// identifiers of QoS 2 messages from the broker it already holds (a
    /// PUBLISH sent again with DUP for one of them is acknowledged, not
    /// delivered twice).
    Restore {
        /// QoS 2 publishes in flight.
        publishes: Vec<RestoredPublish>,
        /// Packet identifiers of QoS 2 messages received and kept.
        qos2_received: Vec<u16>,
    },
    /// After the first [`Command::Connect`] of a connection whose earlier
    /// run's QoS 2 packet identifiers are unknown (the aggregating pool's):
    /// when the broker says it kept the session, release (PUBREL) every
    /// packet identifier this client does not use itself before anything
    /// else is sent, so that the QoS 2 messages the broker holds from that
    /// run are delivered and no new PUBLISH is taken for one of them. The
    /// broker answers PUBCOMP to each (MQTT 3.1.1 section 4.3.3).
    ReleaseStale,
    /// End the upstream session cleanly with DISCONNECT: no will.
    Disconnect,
    /// Drop the connection without DISCONNECT, so the broker publishes the
    /// will (a lost sensor).
    Abort,
}

/// What the upstream reports to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted.
    Connected {
        /// The broker kept a session for this ClientId.
        session_present: bool,
    },
    /// CONNACK refused with this MQTT return code; no retry follows.
    Refused {
        /// The MQTT 3.1.1 CONNACK return code (1 to 5).
        code: u8,
    },
    /// The connection failed or was lost; the upstream retries with
    /// backoff and reports [`Event::Connected`] when it is back.
    Unavailable {
        /// Why, for logs.
        reason: String,
    },
    /// A publish was acknowledged (see [`Command::Publish`]).
    PublishAcked {
        /// The request.
        id: RequestId,
    },
    /// A QoS 2 publish was completed (PUBCOMP).
    PublishCompleted {
        /// The request.
        id: RequestId,
    },
    /// SUBACK for one filter: the granted QoS, or `None` for a refusal
    /// (return code 0x80).
    SubAcked {
        /// The request.
        id: RequestId,
        /// The granted QoS.
        granted: Option<QoS>,
    },
    /// UNSUBACK.
    UnsubAcked {
        /// The request.
        id: RequestId,
    },
    /// A message from the broker. QoS 1 and 2 carry a delivery id that must
    /// be acknowledged exactly once with [`Command::Ack`].
    Message {
        /// `Some` for QoS 1 and 2.
        delivery: Option<DeliveryId>,
        /// The broker's packet identifier (0 for QoS 0).
        packet_id: u16,
        /// The topic name.
        topic: Arc<str>,
        /// The payload.
        payload: Bytes,
        /// The QoS of the delivery.
        qos: QoS,
        /// The retain flag.
        retain: bool,
        /// The DUP flag.
        dup: bool,
    },
    /// The upstream session ended after [`Command::Disconnect`] or
    /// [`Command::Abort`].
    Closed,
}
