//! What the IO adapters (`std_udp`, `tokio_udp`) share: errors, owned
//! messages, and what each call waits for.

use mqttsn_codec::{QoS, ReturnCode};

use std::net::SocketAddr;

use crate::gateways::Gateways;
use crate::{Client, Error, Event, MessageTopic};

/// How many gateways an adapter keeps.
pub const MAX_GATEWAYS: usize = 8;

/// An adapter's gateways.
pub(crate) type GatewayList = Gateways<SocketAddr, MAX_GATEWAYS>;

/// The list of `gateways` (at least one, at most [`MAX_GATEWAYS`]).
pub(crate) fn gateway_list(gateways: &[SocketAddr]) -> Result<GatewayList, UdpError> {
    let mut list = GatewayList::new();
    for g in gateways {
        list.add(*g).map_err(|_| std::io::Error::other("more gateways than the list holds"))?;
    }
    if list.is_empty() {
        return Err(std::io::Error::other("no address for the gateway").into());
    }
    Ok(list)
}

/// The gateway is lost or sent DISCONNECT: the session moves to the next
/// gateway of the list, or, when every gateway failed since the last
/// CONNACK (always with one gateway) or the client sleeps, the gateways
/// are gone.
pub(crate) fn fail_over<const T: usize, const F: usize, const B: usize>(
    client: &mut Client<T, F, B>,
    gateways: &mut GatewayList,
    now: u64,
) -> Result<SocketAddr, UdpError> {
    if client.is_asleep() {
        return Err(UdpError::GatewayGone);
    }
    let next = gateways.fail_over().ok_or(UdpError::GatewayGone)?;
    client.fail_over(now)?;
    Ok(next)
}

/// What an adapter does with an event before its caller sees it: a lost
/// gateway (or its DISCONNECT) is a fail-over, an accepted CONNACK resets
/// the list's failures. True when the event is the adapter's own.
pub(crate) fn steer<const T: usize, const F: usize, const B: usize>(
    client: &mut Client<T, F, B>,
    gateways: &mut GatewayList,
    gateway: &mut SocketAddr,
    now: u64,
    event: &Event<'_>,
) -> Result<bool, UdpError> {
    match event {
        Event::GatewayLost | Event::DisconnectedByGateway => {
            *gateway = fail_over(client, gateways, now)?;
            Ok(true)
        }
        Event::Connected | Event::GatewayChanged => {
            gateways.connected();
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// What can go wrong in an adapter.
#[derive(Debug)]
pub enum UdpError {
    /// The socket failed.
    Io(std::io::Error),
    /// The client refused the call or a datagram.
    Client(Error),
    /// The gateway refused (CONNACK, REGACK, PUBACK, SUBACK return code).
    Refused(ReturnCode),
    /// No answer within the wait.
    Timeout,
    /// The gateway sent DISCONNECT, or went silent past Nretry.
    GatewayGone,
    /// The DTLS association failed or could not be made.
    #[cfg(feature = "dtls")]
    Dtls(crate::std_dtls::DtlsError),
}

impl core::fmt::Display for UdpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "socket: {e}"),
            Self::Client(e) => write!(f, "{e}"),
            Self::Refused(rc) => write!(f, "refused by the gateway: {rc}"),
            Self::Timeout => f.write_str("no answer from the gateway"),
            Self::GatewayGone => f.write_str("the gateway disconnected or is unreachable"),
            #[cfg(feature = "dtls")]
            Self::Dtls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UdpError {}

#[cfg(feature = "dtls")]
impl From<crate::std_dtls::DtlsError> for UdpError {
    fn from(e: crate::std_dtls::DtlsError) -> Self {
        Self::Dtls(e)
    }
}

impl From<std::io::Error> for UdpError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ReturnCode> for UdpError {
    fn from(rc: ReturnCode) -> Self {
        Self::Refused(rc)
    }
}

impl From<Error> for UdpError {
    fn from(e: Error) -> Self {
        Self::Client(e)
    }
}

/// A received message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic name when the client knows it, else the id or short name
    /// as text (`#123`, `@7` predefined).
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
}

/// One line for a datagram, for debug output.
pub fn describe(d: &[u8]) -> String {
    match mqttsn_codec::Frame::decode(d) {
        Ok(f) => f.to_string(),
        Err(e) => format!("malformed ({e})"),
    }
}

/// A message's topic as text.
pub(crate) fn topic_text<const T: usize, const F: usize, const B: usize>(
    client: &Client<T, F, B>,
    topic: MessageTopic,
) -> String {
    match topic {
        MessageTopic::Id(id) => client
            .topic_name(id)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_else(|| format!("#{id}")),
        MessageTopic::Predefined(id) => format!("@{id}"),
        MessageTopic::Short(s) => String::from_utf8_lossy(&s).into_owned(),
    }
}

/// An event nobody waits for: messages go to the inbox; a DISCONNECT from
/// the gateway ends the wait.
pub(crate) fn aside<const T: usize, const F: usize, const B: usize>(
    client: &Client<T, F, B>,
    inbox: &mut Vec<Message>,
    event: Event<'_>,
) -> Result<(), UdpError> {
    match event {
        Event::Message { topic, payload, qos, retain } => {
            let topic = topic_text(client, topic);
            inbox.push(Message { topic, payload: payload.to_vec(), qos, retain });
            Ok(())
        }
        Event::DisconnectedByGateway => Err(UdpError::GatewayGone),
        _ => Ok(()),
    }
}

/// A received message, owned: what `run_until(wait, message)` takes.
pub(crate) fn message(e: &Event<'_>) -> Option<(MessageTopic, Vec<u8>, QoS, bool)> {
    match e {
        Event::Message { topic, payload, qos, retain } => {
            Some((*topic, payload.to_vec(), *qos, *retain))
        }
        _ => None,
    }
}
