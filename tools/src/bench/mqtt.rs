//! One MQTT 3.1.1 connection on tokio, for the tool's clients on the
//! broker (the counting subscriber, the publishers, the direct mode's
//! clients), over the shared `mqttsn-mqtt` codec. Reads and writes are
//! non-blocking (`try_read` / `try_write` after readiness), so a client can
//! wait on its socket and on timers in one `select!`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqttsn_mqtt::codec::{decode, CodecError, ConnectPacket, MqttPacket, PublishPacket};
use mqttsn_mqtt::QoS;
use tokio::net::TcpStream;

/// The largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;

/// How an MQTT connection failed.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The broker sent something that is not MQTT 3.1.1.
    #[error("broker sent a malformed packet: {0}")]
    Codec(#[from] CodecError),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// No answer in time.
    #[error("no {0} from the broker within {1:?}")]
    Timeout(&'static str, Duration),
    /// CONNACK with a refusal, or an unexpected packet in the handshake.
    #[error("the broker refused: {0}")]
    Refused(String),
}

/// The QoS of the codec for 0, 1, 2.
pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// An open MQTT connection.
#[derive(Debug)]
pub struct MqttConn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    quickack: bool,
}

impl MqttConn {
    /// Connects and waits for CONNACK; returns the connection and the
    /// CONNACK's session-present flag.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        clean_session: bool,
        keep_alive: u16,
        wait: Duration,
    ) -> Result<(Self, bool), MqttError> {
        let stream = tokio::time::timeout(wait, TcpStream::connect(addr))
            .await
            .map_err(|_| MqttError::Timeout("TCP connection", wait))??;
        stream.set_nodelay(true)?;
        let mut c = Self {
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(4 * 1024),
            quickack: false,
        };
        c.queue(&MqttPacket::Connect(ConnectPacket {
            client_id: client_id.to_owned(),
            clean_session,
            keep_alive,
            will: None,
            username: None,
            password: None,
        }));
        c.flush().await?;
        match c.expect("CONNACK", wait).await? {
            MqttPacket::ConnAck { code: 0, session_present } => Ok((c, session_present)),
            MqttPacket::ConnAck { code, .. } => {
                Err(MqttError::Refused(format!("CONNACK return code {code}")))
            }
            other => Err(MqttError::Refused(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// Subscribes to one filter and waits for SUBACK (PUBLISHes that come
    /// first are dropped: nothing is published before the subscriptions are
    /// in place).
    pub async fn subscribe(
        &mut self,
        filter: &str,
        q: u8,
        wait: Duration,
    ) -> Result<u8, MqttError> {
        self.queue(&MqttPacket::Subscribe { pkid: 1, filters: vec![(filter.to_owned(), qos(q))] });
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.expect("SUBACK", left).await? {
                MqttPacket::SubAck { codes, .. } => match codes.first() {
                    Some(&c) if c < 0x80 => return Ok(c),
                    _ => return Err(MqttError::Refused(format!("SUBSCRIBE {filter} refused"))),
                },
                _ => continue,
            }
        }
    }

    async fn expect(
        &mut self,
        what: &'static str,
        wait: Duration,
    ) -> Result<MqttPacket, MqttError> {
        tokio::time::timeout(wait, self.next()).await.map_err(|_| MqttError::Timeout(what, wait))?
    }

    /// Waits for the next packet.
    pub async fn next(&mut self) -> Result<MqttPacket, MqttError> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(p);
            }
            self.stream.readable().await?;
            self.try_fill()?;
        }
    }

    /// Decodes the next packet already read, if any.
    pub fn try_next(&mut self) -> Result<Option<MqttPacket>, MqttError> {
        Ok(decode(&mut self.rbuf, MAX_PACKET)?)
    }

    /// Reads what the socket has without waiting; `Ok(false)` when nothing
    /// was there.
    pub fn try_fill(&mut self) -> Result<bool, MqttError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(64 * 1024);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => Err(MqttError::Closed),
            Ok(_) => {
                #[cfg(target_os = "linux")]
                if self.quickack {
                    let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Acknowledges every read at once (`TCP_QUICKACK`), for a connection
    /// that only receives: a broker without TCP_NODELAY (mosquitto's
    /// default) holds its next small write until the previous one is
    /// acknowledged, and a delayed ACK would add up to 40 ms to what is
    /// measured. A client that also sends carries its ACKs on what it sends.
    pub fn set_quickack(&mut self) {
        self.quickack = true;
    }

    /// Waits until the socket may have something to read.
    pub async fn readable(&self) -> std::io::Result<()> {
        self.stream.readable().await
    }

    /// Waits until the socket can take more.
    pub async fn writable(&self) -> std::io::Result<()> {
        self.stream.writable().await
    }

    /// Encodes a packet into the write buffer.
    pub fn queue(&mut self, p: &MqttPacket) {
        p.encode(&mut self.wbuf);
    }

    /// Encodes a PUBLISH into the write buffer.
    pub fn queue_publish(&mut self, topic: &str, q: u8, pkid: u16, dup: bool, payload: &[u8]) {
        self.queue(&MqttPacket::Publish(PublishPacket {
            dup,
            qos: qos(q),
            retain: false,
            topic: topic.into(),
            pkid,
            payload: Bytes::copy_from_slice(payload),
        }));
    }

    /// Writes what the socket takes now; `Ok(true)` when nothing is left.
    pub fn try_flush(&mut self) -> Result<bool, MqttError> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(MqttError::Closed),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// True when the write buffer holds something.
    pub fn pending_write(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Writes the whole write buffer.
    pub async fn flush(&mut self) -> Result<(), MqttError> {
        while !self.try_flush()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes (best effort, bounded).
    pub async fn disconnect(mut self) {
        self.queue(&MqttPacket::Disconnect);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
    }
}
