//! How the gateway reaches the broker: [`Connector`]s that open transports
//! (plain TCP here, TLS in [`super::tls`]) and the settings of the upstream
//! connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::TcpStream;

use super::tls::ClientCert;
use crate::mqtt::client::ClientOptions;

/// An open transport to the broker: a TCP stream and, for `mqtts://`, the
/// TLS session over it (handshake done). The driver moves the bytes.
pub struct Transport {
    /// The TCP stream.
    pub tcp: TcpStream,
    /// The TLS session, if any.
    pub tls: Option<rustls::ClientConnection>,
}

/// Opens transports to the broker.
pub trait Connector: Send + Sync + 'static {
    /// Opens one connection, with this sensor's TLS client certificate if
    /// it has one (ignored by plain TCP).
    fn connect<'a>(
        &'a self,
        cert: Option<&'a ClientCert>,
    ) -> Pin<Box<dyn Future<Output = io::Result<Transport>> + Send + 'a>>;
    /// The broker, for logs.
    fn describe(&self) -> String;
}

/// Plain TCP to `host:port`.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    /// `host:port`.
    pub addr: String,
}

impl Connector for TcpConnector {
    fn connect<'a>(
        &'a self,
        _cert: Option<&'a ClientCert>,
    ) -> Pin<Box<dyn Future<Output = io::Result<Transport>> + Send + 'a>> {
        Box::pin(async move {
            let tcp = TcpStream::connect(&self.addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Transport { tcp, tls: None })
        })
    }

    fn describe(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Reconnect delays: from `initial`, doubling up to `max`, with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay after an outage.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(30) }
    }
}

/// Settings of the upstream connections.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    /// Client timers.
    pub client: ClientOptions,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// How long a connect may take.
    pub connect_timeout: Duration,
    /// The largest packet accepted from the broker.
    pub max_packet: usize,
    /// How long to wait for the broker to close after DISCONNECT.
    pub close_timeout: Duration,
    /// Connections being opened at once, per worker; more wait their turn.
    pub max_connecting: usize,
    /// How long octets that hold only QoS 0 PUBLISHes may wait for more
    /// before they are written: fewer, fuller TCP segments for the broker
    /// (and the kernel) to handle. Anything else waiting for an answer is
    /// written at once. Zero: every batch is written at its end.
    pub qos0_linger: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            max_packet: 1 << 20,
            close_timeout: Duration::from_secs(1),
            max_connecting: 32,
            qos0_linger: Duration::ZERO,
        }
    }
}
