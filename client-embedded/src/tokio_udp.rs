//! The client over a tokio `UdpSocket`, with async calls that wait
//! (bounded) for their answer.

use std::net::SocketAddr;
use std::time::Duration;

use mqttsn_codec::{QoS, TopicFilter};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::adapter::{aside, gateway_list, message, steer, topic_text, GatewayList};
pub use crate::adapter::{describe, Message, UdpError};
use crate::wait;
use crate::{Client, Event, Settings, Topic};

/// A client on a tokio UDP socket.
pub struct TokioClient<const T: usize = 16, const F: usize = 4, const B: usize = 1024> {
    /// The state machine.
    pub client: Client<T, F, B>,
    sock: UdpSocket,
    gateway: SocketAddr,
    gateways: GatewayList,
    epoch: Instant,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Messages received while waiting for something else.
    pub inbox: Vec<Message>,
}

impl<const T: usize, const F: usize, const B: usize> TokioClient<T, F, B> {
    /// A client bound to an ephemeral port, talking to `gateway`.
    pub async fn new(
        gateway: SocketAddr,
        client_id: &str,
        settings: Settings,
    ) -> Result<Self, UdpError> {
        Self::with_gateways(&[gateway], client_id, settings).await
    }

    /// A client with a list of gateways that fails over between them, as
    /// [`crate::std_udp::UdpClient::with_gateways`] does.
    pub async fn with_gateways(
        gateways: &[SocketAddr],
        client_id: &str,
        settings: Settings,
    ) -> Result<Self, UdpError> {
        let list = gateway_list(gateways)?;
        let gateway =
            list.current().ok_or_else(|| std::io::Error::other("no address for the gateway"))?;
        let bind: SocketAddr =
            if gateway.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        Ok(Self {
            client: Client::new(client_id.as_bytes(), settings)?,
            sock: UdpSocket::bind(bind).await?,
            gateway,
            gateways: list,
            epoch: Instant::now(),
            rx: vec![0; 65_536],
            tx: vec![0; B],
            inbox: Vec::new(),
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
    pub async fn flush(&mut self) -> Result<(), UdpError> {
        while let Some(n) = self.client.poll_transmit(&mut self.tx) {
            self.sock.send_to(&self.tx[..n], self.gateway).await?;
        }
        Ok(())
    }

    /// Runs the client until `done` accepts an event, or `wait` passes.
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
            tokio::select! {
                got = self.sock.recv_from(&mut self.rx) => {
                    let (n, from) = match got {
                        Ok(x) => x,
                        // An ICMP error about an earlier datagram.
                        Err(_) => continue,
                    };
                    if from != self.gateway {
                        continue;
                    }
                    let now = self.now();
                    let Ok(Some(event)) = self.client.handle_datagram(now, &self.rx[..n]) else {
                        continue;
                    };
                    if let Some(r) = done(&event) {
                        return Ok(r);
                    }
                    if steer(&mut self.client, &mut self.gateways, &mut self.gateway, now, &event)? {
                        continue;
                    }
                    aside(&self.client, &mut self.inbox, event)?;
                }
                () = tokio::time::sleep_until(until) => {
                    if Instant::now() >= deadline {
                        return Err(UdpError::Timeout);
                    }
                    let now = self.now();
                    if let Some(event) = self.client.handle_timeout(now) {
                        let (client, gateways) = (&mut self.client, &mut self.gateways);
                        steer(client, gateways, &mut self.gateway, now, &event)?;
                    }
                }
            }
        }
    }

    /// CONNECT and wait for CONNACK.
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

    /// REGISTER (unless known) and wait for the id.
    pub async fn register(&mut self, name: &str, wait: Duration) -> Result<u16, UdpError> {
        if let Some(id) = self.client.topic_id(name) {
            return Ok(id);
        }
        let now = self.now();
        let msg_id = self.client.register(now, name)?;
        self.run_until(wait, wait::registered(msg_id)).await?
    }

    /// PUBLISH; for QoS 1 and 2, wait for the acknowledgement.
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
            return self.flush().await;
        };
        self.run_until(wait, wait::published(msg_id)).await?
    }

    /// SUBSCRIBE and wait for SUBACK.
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
            if let Ok(name) = std::str::from_utf8(n) {
                self.client.learn_topic(name, id)?;
            }
        }
        Ok((id, granted))
    }

    /// The next message (from the inbox first), or `None` after `wait`.
    pub async fn next_message(&mut self, wait: Duration) -> Result<Option<Message>, UdpError> {
        if !self.inbox.is_empty() {
            return Ok(Some(self.inbox.remove(0)));
        }
        match self.run_until(wait, message).await {
            Ok((topic, payload, qos, retain)) => {
                Ok(Some(Message { topic: topic_text(&self.client, topic), payload, qos, retain }))
            }
            Err(UdpError::Timeout) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// DISCONNECT with Duration, and wait for the answer.
    pub async fn sleep(&mut self, duration_s: u16, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.sleep(now, duration_s)?;
        self.run_until(wait, wait::disconnected).await
    }

    /// Wake up and return the buffered messages, received until PINGRESP.
    pub async fn wake(&mut self, wait: Duration) -> Result<Vec<Message>, UdpError> {
        let now = self.now();
        self.client.wake(now)?;
        self.inbox.clear();
        self.run_until(wait, wait::pingresp).await?;
        Ok(std::mem::take(&mut self.inbox))
    }

    /// DISCONNECT and wait for the answer.
    pub async fn disconnect(&mut self, wait: Duration) -> Result<(), UdpError> {
        let now = self.now();
        self.client.disconnect(now)?;
        self.run_until(wait, wait::disconnected).await
    }
}
