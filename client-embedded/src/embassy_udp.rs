//! The client over an [`embassy_net::udp::UdpSocket`], with
//! [`embassy_time`] for its clock: async calls that wait (bounded) for
//! their answer, `no_std` and without allocation.
//!
//! [`EmbassyClient`] owns the [`Client`], the socket and the gateway's
//! address. Each call queues its request, then runs the same loop
//! ([`EmbassyClient::run_until`]): send what the client has to send, wait
//! for a datagram or the next deadline (`select` of `recv_from` and a
//! [`Timer`]), feed the client, until the answer arrives or the wait
//! passes. Messages are handed to the callback given at construction,
//! whichever call is running when they arrive; they borrow the receive
//! buffer, so nothing is copied or stored.
//!
//! ```ignore
//! let mut mq = EmbassyClient::new(socket, gateway, client, |m: Message<'_>| {
//!     info!("{:?}: {:?}", m.topic_str(), m.payload);
//! })?;
//! mq.connect(true, 60, None, WAIT).await?;
//! mq.publish(Topic::Name("sensors/7/temp"), b"21.5", QoS::AtLeastOnce, false, WAIT).await?;
//! mq.sleep(300, WAIT).await?;
//! // ... later: buffered messages go to the callback, then asleep again.
//! let n = mq.wake(WAIT).await?;
//! ```
//!
//! The socket must outlive the adapter and the embassy-net `Runner` must
//! run (in its own task, or joined with the caller's future). Datagrams
//! larger than `B` octets are dropped on receipt: `B` bounds both
//! directions.

use embassy_futures::select::{select, Either};
use embassy_net::udp::{BindError, RecvError, SendError, UdpSocket};
use embassy_net::IpEndpoint;
use embassy_time::{Duration, Instant, Timer};
use mqttsn_codec::{QoS, ReturnCode, TopicFilter};

use crate::wait;
use crate::{Client, Error, Event, MessageTopic, Millis, Topic};

/// What can go wrong in the embassy-net adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpError {
    /// The socket could not be bound.
    Bind(BindError),
    /// The socket could not send (no route yet, not bound, too large).
    Send(SendError),
    /// The client refused the call or a datagram.
    Client(Error),
    /// The gateway refused (CONNACK, REGACK, PUBACK, SUBACK return code).
    Refused(ReturnCode),
    /// No answer within the wait.
    Timeout,
    /// The gateway sent DISCONNECT, or went silent past Nretry.
    GatewayGone,
}

impl From<ReturnCode> for UdpError {
    fn from(rc: ReturnCode) -> Self {
        Self::Refused(rc)
    }
}

impl core::fmt::Display for UdpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Bind(BindError::InvalidState) => f.write_str("socket: already bound"),
            Self::Bind(BindError::NoRoute) => f.write_str("socket: no address to bind"),
            Self::Send(SendError::NoRoute) => f.write_str("socket: no route to the gateway"),
            Self::Send(SendError::SocketNotBound) => f.write_str("socket: not bound"),
            Self::Send(SendError::PacketTooLarge) => {
                f.write_str("socket: datagram larger than the transmit buffer")
            }
            Self::Client(e) => write!(f, "{e}"),
            Self::Refused(rc) => write!(f, "refused by the gateway: {rc}"),
            Self::Timeout => f.write_str("no answer from the gateway"),
            Self::GatewayGone => f.write_str("the gateway disconnected or is unreachable"),
        }
    }
}

impl core::error::Error for UdpError {}

impl From<Error> for UdpError {
    fn from(e: Error) -> Self {
        Self::Client(e)
    }
}

impl From<SendError> for UdpError {
    fn from(e: SendError) -> Self {
        Self::Send(e)
    }
}

impl From<BindError> for UdpError {
    fn from(e: BindError) -> Self {
        Self::Bind(e)
    }
}

/// A received message, borrowed from the adapter's receive buffer and
/// topic table: copy out what must outlive the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The topic as it arrived.
    pub topic: MessageTopic,
    /// The topic name, for a topic id the client knows (registered by
    /// either side, or learnt from a SUBACK).
    pub topic_name: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
    /// The QoS it arrived with.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
}

impl Message<'_> {
    /// The topic as text: the name of a known id, or a short name; `None`
    /// for a predefined id.
    pub fn topic_str(&self) -> Option<&str> {
        match &self.topic {
            MessageTopic::Id(_) => self.topic_name,
            MessageTopic::Short(s) => core::str::from_utf8(s).ok(),
            MessageTopic::Predefined(_) => None,
        }
    }
}

/// A client on an embassy-net UDP socket: `T` topic names, `F` requests
/// in flight, datagrams of up to `B` octets (see [`Client`]); `H` is the
/// callback that receives messages.
pub struct EmbassyClient<
    'd,
    H: FnMut(Message<'_>),
    const T: usize = 8,
    const F: usize = 2,
    const B: usize = 128,
> {
    /// The state machine, for what the calls here do not cover (will
    /// updates, a manual PINGREQ, topic lookups).
    pub client: Client<T, F, B>,
    socket: UdpSocket<'d>,
    gateway: IpEndpoint,
    epoch: Instant,
    on_message: H,
    /// Messages handed to `on_message` so far.
    delivered: usize,
    rx: [u8; B],
    tx: [u8; B],
}

impl<'d, H: FnMut(Message<'_>), const T: usize, const F: usize, const B: usize>
    EmbassyClient<'d, H, T, F, B>
{
    /// The adapter over `socket` (bound to an ephemeral port here if it is
    /// not bound yet), talking to `gateway`; messages go to `on_message`.
    pub fn new(
        mut socket: UdpSocket<'d>,
        gateway: IpEndpoint,
        client: Client<T, F, B>,
        on_message: H,
    ) -> Result<Self, UdpError> {
        if !socket.is_open() {
            socket.bind(0)?;
        }
        Ok(Self {
            client,
            socket,
            gateway,
            epoch: Instant::now(),
            on_message,
            delivered: 0,
            rx: [0; B],
            tx: [0; B],
        })
    }

    /// The gateway's address.
    pub fn gateway(&self) -> IpEndpoint {
        self.gateway
    }

    /// Points the client at another gateway (after discovery, or when the
    /// first one is lost); connect again afterwards.
    pub fn set_gateway(&mut self, gateway: IpEndpoint) {
        self.gateway = gateway;
    }

    /// The socket, for its local endpoint or buffer state.
    pub fn socket(&self) -> &UdpSocket<'d> {
        &self.socket
    }

    /// Gives back the socket and the client.
    pub fn into_parts(self) -> (UdpSocket<'d>, Client<T, F, B>) {
        (self.socket, self.client)
    }

    /// Milliseconds since the adapter was made: the client's clock.
    pub fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis()
    }

    /// How many messages went to the callback so far (wrapping).
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// Sends what the client has to send.
    pub async fn flush(&mut self) -> Result<(), UdpError> {
        while let Some(n) = self.client.poll_transmit(&mut self.tx) {
            let datagram = self.tx.get(..n).unwrap_or_default();
            self.socket.send_to(datagram, self.gateway).await?;
        }
        Ok(())
    }

    /// Runs the client until `done` accepts an event, or `wait` passes
    /// ([`UdpError::Timeout`]). Messages go to the callback first, then
    /// every event goes to `done`; a DISCONNECT from the gateway that
    /// `done` does not take ends the wait with [`UdpError::GatewayGone`].
    /// Retransmissions and keepalive PINGREQs happen on the way.
    pub async fn run_until<R>(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&Event<'_>) -> Option<R>,
    ) -> Result<R, UdpError> {
        let deadline = Instant::now() + wait;
        loop {
            self.flush().await?;
            let mut until = deadline;
            if let Some(t) = self.client.poll_timeout() {
                until = until.min(self.epoch + Duration::from_millis(t));
            }
            match select(self.socket.recv_from(&mut self.rx), Timer::at(until)).await {
                Either::First(Ok((n, meta))) => {
                    if meta.endpoint != self.gateway {
                        continue;
                    }
                    let now = self.now();
                    let datagram = self.rx.get(..n).unwrap_or_default();
                    let Ok(Some(event)) = self.client.handle_datagram(now, datagram) else {
                        continue;
                    };
                    if let Event::Message { topic, payload, qos, retain } = event {
                        let topic_name = match topic {
                            MessageTopic::Id(id) => self
                                .client
                                .topic_name(id)
                                .and_then(|n| core::str::from_utf8(n).ok()),
                            _ => None,
                        };
                        (self.on_message)(Message { topic, topic_name, payload, qos, retain });
                        self.delivered = self.delivered.wrapping_add(1);
                    }
                    if let Some(r) = done(&event) {
                        return Ok(r);
                    }
                    if event == Event::DisconnectedByGateway {
                        return Err(UdpError::GatewayGone);
                    }
                }
                // Larger than the receive buffer: dropped.
                Either::First(Err(RecvError::Truncated)) => {}
                Either::Second(()) => {
                    if Instant::now() >= deadline {
                        return Err(UdpError::Timeout);
                    }
                    let now = self.now();
                    if let Some(Event::GatewayLost) = self.client.handle_timeout(now) {
                        return Err(UdpError::GatewayGone);
                    }
                }
            }
        }
    }

    /// Serves the client for `wait`: messages go to the callback,
    /// keepalive and retransmissions run. Returns how many messages
    /// arrived.
    pub async fn run_for(&mut self, wait: Duration) -> Result<usize, UdpError> {
        let before = self.delivered;
        match self.run_until(wait, |_| None::<()>).await {
            Err(UdpError::Timeout) | Ok(()) => Ok(self.delivered.wrapping_sub(before)),
            Err(e) => Err(e),
        }
    }

    /// CONNECT (with the will handshake when `will` is given: topic,
    /// message, QoS, retain) and wait for CONNACK.
    pub async fn connect(
        &mut self,
        clean: bool,
        keepalive_s: u16,
        will: Option<(&str, &[u8], QoS, bool)>,
        wait: Duration,
    ) -> Result<(), UdpError> {
        let now = self.now();
        self.client.connect(now, clean, keepalive_s, will)?;
        self.run_until(wait, wait::connected).await?
    }

    /// REGISTER `name` (unless the client knows it) and wait for its id.
    pub async fn register(&mut self, name: &str, wait: Duration) -> Result<u16, UdpError> {
        if let Some(id) = self.client.topic_id(name) {
            return Ok(id);
        }
        let now = self.now();
        let msg_id = self.client.register(now, name)?;
        self.run_until(wait, wait::registered(msg_id)).await?
    }

    /// PUBLISH; a topic name is registered first (QoS 0 to 2). QoS 0 and
    /// -1 return once the datagram has left the socket for the driver;
    /// QoS 1 and 2 wait for PUBACK or PUBCOMP.
    pub async fn publish(
        &mut self,
        topic: Topic<'_>,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        wait: Duration,
    ) -> Result<(), UdpError> {
        let topic = match topic {
            Topic::Name(n) if qos != QoS::NoSession => Topic::Id(self.register(n, wait).await?),
            t => t,
        };
        let now = self.now();
        let Some(msg_id) = self.client.publish(now, topic, payload, qos, retain)? else {
            self.flush().await?;
            // Until the datagram has left the socket for the driver.
            return match select(self.socket.flush(), Timer::after(wait)).await {
                Either::First(()) => Ok(()),
                Either::Second(()) => Err(UdpError::Timeout),
            };
        };
        self.run_until(wait, wait::published(msg_id)).await?
    }

    /// SUBSCRIBE and wait for SUBACK: the topic id (0 for wildcards and
    /// short names) and the granted QoS. A concrete name's id is
    /// remembered, so its messages carry the name.
    pub async fn subscribe(
        &mut self,
        filter: TopicFilter<'_>,
        qos: QoS,
        wait: Duration,
    ) -> Result<(u16, QoS), UdpError> {
        let now = self.now();
        let msg_id = self.client.subscribe(now, filter, qos)?;
        let (id, granted) = self.run_until(wait, wait::subscribed::<UdpError>(msg_id)).await??;
        if let (TopicFilter::Name(n), true) = (filter, id != 0) {
            if let Ok(name) = core::str::from_utf8(n) {
                self.client.learn_topic(name, id)?;
            }
        }
        Ok((id, granted))
    }

    /// UNSUBSCRIBE and wait for UNSUBACK.
    pub async fn unsubscribe(
        &mut self,
        filter: TopicFilter<'_>,
        wait: Duration,
    ) -> Result<(), UdpError> {
        let now = self.now();
        let msg_id = self.client.unsubscribe(now, filter)?;
        self.run_until(wait, wait::unsubscribed(msg_id)).await
    }

    /// Waits for the next message (it goes to the callback); `false` when
    /// none came within `wait`.
    pub async fn next_message(&mut self, wait: Duration) -> Result<bool, UdpError> {
        match self.run_until(wait, wait::any_message).await {
            Ok(()) => Ok(true),
            Err(UdpError::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Go to sleep for `duration_s` seconds (DISCONNECT with Duration) and
    /// wait for the gateway's DISCONNECT; the gateway buffers messages
    /// until [`EmbassyClient::wake`].
    pub async fn sleep(&mut self, duration_s: u16, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.sleep(now, duration_s)?;
        self.run_until(wait, wait::disconnected).await
    }

    /// Wake up (PINGREQ with the ClientId): the buffered messages go to the
    /// callback until PINGRESP, then the client is asleep again. Returns
    /// how many arrived.
    pub async fn wake(&mut self, wait: Duration) -> Result<usize, UdpError> {
        let now = self.now();
        self.client.wake(now)?;
        let before = self.delivered;
        self.run_until(wait, wait::pingresp).await?;
        Ok(self.delivered.wrapping_sub(before))
    }

    /// DISCONNECT and wait for the answer.
    pub async fn disconnect(&mut self, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.disconnect(now)?;
        self.run_until(wait, wait::disconnected).await
    }
}
