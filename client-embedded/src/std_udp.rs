//! The client over a blocking `std::net::UdpSocket`, with calls that wait
//! (bounded) for their answer: for tools, tests and Linux sensors.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use mqttsn_codec::{Packet, QoS, TopicFilter};

use crate::adapter::{aside, gateway_list, message, steer, topic_text, GatewayList};
pub use crate::adapter::{describe, Message, UdpError, MAX_GATEWAYS};
use crate::link::Link;
use crate::wait;
use crate::{Client, Event, Settings, Topic};

/// A client on a UDP socket.
pub struct UdpClient<const T: usize = 16, const F: usize = 4, const B: usize = 1024> {
    /// The state machine.
    pub client: Client<T, F, B>,
    link: Link,
    gateway: SocketAddr,
    gateways: GatewayList,
    epoch: Instant,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Messages received while waiting for something else.
    pub inbox: Vec<Message>,
    /// Print every datagram (`-d` in the tools).
    pub debug: bool,
    /// MsgIds of QoS 2 messages received (PUBREC sent) whose PUBREL has
    /// not arrived yet.
    unreleased: Vec<u16>,
}

impl<const T: usize, const F: usize, const B: usize> UdpClient<T, F, B> {
    /// A client bound to an ephemeral port, talking to `gateway`.
    pub fn new(
        gateway: impl ToSocketAddrs,
        client_id: &str,
        settings: Settings,
    ) -> Result<Self, UdpError> {
        Self::with_link(gateway, client_id, settings, |sock, _| Ok(Link::Udp(sock)))
    }

    /// A client whose datagrams go over what `link` makes of an ephemeral
    /// socket and the gateway's address.
    pub(crate) fn with_link(
        gateway: impl ToSocketAddrs,
        client_id: &str,
        settings: Settings,
        link: impl FnOnce(UdpSocket, SocketAddr) -> Result<Link, UdpError>,
    ) -> Result<Self, UdpError> {
        let gateway = gateway
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address for the gateway"))?;
        Self::build(&[gateway], client_id, settings, link)
    }

    /// A client with a list of gateways (at most
    /// [`MAX_GATEWAYS`], all of one address
    /// family): it talks to the first and, when one is lost (Nretry
    /// without an answer, a missing PINGRESP) or sends DISCONNECT, moves
    /// the session to the next ([`crate::Client::fail_over`]); datagrams
    /// from any other address are ignored. A call fails with
    /// [`UdpError::GatewayGone`] once every gateway failed in a row.
    pub fn with_gateways(
        gateways: &[SocketAddr],
        client_id: &str,
        settings: Settings,
    ) -> Result<Self, UdpError> {
        Self::build(gateways, client_id, settings, |sock, _| Ok(Link::Udp(sock)))
    }

    /// A client with these gateways, over what `link` makes of an
    /// ephemeral socket and the first gateway's address.
    fn build(
        gateways: &[SocketAddr],
        client_id: &str,
        settings: Settings,
        link: impl FnOnce(UdpSocket, SocketAddr) -> Result<Link, UdpError>,
    ) -> Result<Self, UdpError> {
        let list = gateway_list(gateways)?;
        let gateway =
            list.current().ok_or_else(|| std::io::Error::other("no address for the gateway"))?;
        let bind: SocketAddr =
            if gateway.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        Ok(Self {
            client: Client::new(client_id.as_bytes(), settings)?,
            link: link(UdpSocket::bind(bind)?, gateway)?,
            gateway,
            gateways: list,
            epoch: Instant::now(),
            rx: vec![0; 65_536],
            tx: vec![0; B],
            inbox: Vec::new(),
            debug: false,
            unreleased: Vec::new(),
        })
    }

    /// The gateway the client talks to now.
    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// Milliseconds since the client was made.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sends what the client has to send.
    pub fn flush(&mut self) -> Result<(), UdpError> {
        while let Some(n) = self.client.poll_transmit(&mut self.tx) {
            if self.debug {
                eprintln!("-> {}", describe(&self.tx[..n]));
            }
            self.link.send_to(&self.tx[..n], self.gateway)?;
        }
        Ok(())
    }

    /// Runs the client until `done` accepts an event, or `wait` passes.
    /// Messages that arrive meanwhile go to [`UdpClient::inbox`].
    pub fn run_until<R>(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&Event<'_>) -> Option<R>,
    ) -> Result<R, UdpError> {
        let deadline = Instant::now() + wait;
        loop {
            self.flush()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(UdpError::Timeout);
            }
            let mut until = deadline - now;
            if let Some(t) = self.client.poll_timeout() {
                let left = Duration::from_millis(t.saturating_sub(self.now()));
                until = until.min(left.max(Duration::from_millis(1)));
            }
            match self.link.recv_from(&mut self.rx, until) {
                Ok((n, from)) if from == self.gateway => {
                    let now = self.now();
                    let datagram = &self.rx[..n];
                    if self.debug {
                        eprintln!("<- {}", describe(datagram));
                    }
                    match Packet::decode(datagram) {
                        Ok(Packet::Publish(p))
                            if p.qos == QoS::ExactlyOnce
                                && !self.unreleased.contains(&p.msg_id) =>
                        {
                            self.unreleased.push(p.msg_id);
                        }
                        Ok(Packet::PubRel(id)) => self.unreleased.retain(|m| *m != id),
                        _ => {}
                    }
                    let event = match self.client.handle_datagram(now, datagram) {
                        Ok(e) => e,
                        Err(_) => continue,
                    };
                    let Some(event) = event else { continue };
                    if let Some(r) = done(&event) {
                        return Ok(r);
                    }
                    if steer(&mut self.client, &mut self.gateways, &mut self.gateway, now, &event)?
                    {
                        continue;
                    }
                    aside(&self.client, &mut self.inbox, event)?;
                }
                Ok(_) => {}
                Err(UdpError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let now = self.now();
                    if let Some(event) = self.client.handle_timeout(now) {
                        let (client, gateways) = (&mut self.client, &mut self.gateways);
                        steer(client, gateways, &mut self.gateway, now, &event)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// CONNECT and wait for CONNACK.
    pub fn connect(
        &mut self,
        clean: bool,
        keepalive_s: u16,
        will: Option<(&str, &[u8], QoS, bool)>,
        wait: Duration,
    ) -> Result<(), UdpError> {
        let now = self.now();
        self.client.connect(now, clean, keepalive_s, will)?;
        self.run_until(wait, wait::connected)?
    }

    /// REGISTER (unless known) and wait for the id.
    pub fn register(&mut self, name: &str, wait: Duration) -> Result<u16, UdpError> {
        if let Some(id) = self.client.topic_id(name) {
            return Ok(id);
        }
        let now = self.now();
        let msg_id = self.client.register(now, name)?;
        self.run_until(wait, wait::registered(msg_id))?
    }

    /// PUBLISH; for QoS 1 and 2, wait for the acknowledgement. A topic
    /// name is registered first when needed.
    pub fn publish(
        &mut self,
        topic: Topic<'_>,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        wait: Duration,
    ) -> Result<(), UdpError> {
        let topic = match topic {
            Topic::Name(n) if qos != QoS::NoSession => Topic::Id(self.register(n, wait)?),
            t => t,
        };
        let now = self.now();
        let Some(msg_id) = self.client.publish(now, topic, payload, qos, retain)? else {
            return self.flush();
        };
        self.run_until(wait, wait::published(msg_id))?
    }

    /// SUBSCRIBE and wait for SUBACK; returns the topic id and granted QoS.
    pub fn subscribe(
        &mut self,
        filter: TopicFilter<'_>,
        qos: QoS,
        wait: Duration,
    ) -> Result<(u16, QoS), UdpError> {
        let now = self.now();
        let msg_id = self.client.subscribe(now, filter, qos)?;
        let name = match filter {
            TopicFilter::Name(n) => Some(n.to_vec()),
            _ => None,
        };
        let (id, granted) = self.run_until(wait, wait::subscribed::<UdpError>(msg_id))??;
        // A concrete name's id is known from SUBACK.
        if let (Some(name), true) = (name, id != 0) {
            if let Ok(name) = std::str::from_utf8(&name) {
                self.client.learn_topic(name, id)?;
            }
        }
        Ok((id, granted))
    }

    /// UNSUBSCRIBE and wait for UNSUBACK.
    pub fn unsubscribe(&mut self, filter: TopicFilter<'_>, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        let msg_id = self.client.unsubscribe(now, filter)?;
        self.run_until(wait, wait::unsubscribed(msg_id))
    }

    /// Runs the client for `wait` with nothing to wait for: answers the
    /// gateway, sends the keepalive PINGREQ and retransmissions. For a
    /// program that waits on something else (standard input, say) between
    /// calls. Messages that arrive go to [`UdpClient::inbox`].
    pub fn poll(&mut self, wait: Duration) -> Result<(), UdpError> {
        match self.run_until(wait, |_| None::<()>) {
            Ok(()) | Err(UdpError::Timeout) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// True while a QoS 2 message was received (PUBREC sent) and its
    /// PUBREL has not arrived: the exchange is not complete.
    pub fn awaiting_release(&self) -> bool {
        !self.unreleased.is_empty()
    }

    /// Runs the client until every QoS 2 message received has been
    /// released (PUBREL answered with PUBCOMP), or `wait` passes; for
    /// before a DISCONNECT. Messages that arrive meanwhile go to
    /// [`UdpClient::inbox`].
    pub fn settle(&mut self, wait: Duration) -> Result<(), UdpError> {
        let deadline = Instant::now() + wait;
        while self.awaiting_release() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(UdpError::Timeout);
            }
            self.poll(left.min(Duration::from_millis(20)))?;
        }
        // The last PUBCOMP is queued: send it.
        self.flush()
    }

    /// The next message (from the inbox first), or `None` after `wait`.
    pub fn next_message(&mut self, wait: Duration) -> Result<Option<Message>, UdpError> {
        if !self.inbox.is_empty() {
            return Ok(Some(self.inbox.remove(0)));
        }
        match self.run_until(wait, message) {
            Ok((topic, payload, qos, retain)) => {
                Ok(Some(Message { topic: topic_text(&self.client, topic), payload, qos, retain }))
            }
            Err(UdpError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DISCONNECT with Duration, and wait for the answer.
    pub fn sleep(&mut self, duration_s: u16, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.sleep(now, duration_s)?;
        self.run_until(wait, wait::disconnected)
    }

    /// Wake up: PINGREQ with the ClientId; returns the buffered messages,
    /// received until PINGRESP.
    pub fn wake(&mut self, wait: Duration) -> Result<Vec<Message>, UdpError> {
        let now = self.now();
        self.client.wake(now)?;
        self.inbox.clear();
        self.run_until(wait, wait::pingresp)?;
        Ok(std::mem::take(&mut self.inbox))
    }

    /// DISCONNECT and wait for the answer.
    pub fn disconnect(&mut self, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.disconnect(now)?;
        self.run_until(wait, wait::disconnected)
    }
}
