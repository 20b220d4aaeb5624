//! How the gateway reaches the broker: [`Connector`]s that open transports
//! (plain TCP here, TLS in [`super::tls`]) and the settings of the upstream
//! connections.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

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

/// The local addresses the broker connections are made from, in turn
/// (`broker.source_addresses`). Each local address gives the connections
/// to one broker address its own range of ephemeral ports (about 28,000
/// with Linux's default `ip_local_port_range`), so N addresses lift
/// transparent mode's ceiling to N times that. Empty: the system chooses.
#[derive(Debug, Default)]
pub struct SourceAddresses {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourceAddresses {
    /// Connections from these addresses, in turn.
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Self { addrs, next: AtomicUsize::new(0) }
    }

    /// A TCP connection to `addr` (`host:port`), from the next source
    /// address of its family (the first resolved address that has one).
    pub async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        if self.addrs.is_empty() {
            return TcpStream::connect(addr).await;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for target in tokio::net::lookup_host(addr).await? {
            let n = self.addrs.len();
            let Some(src) = (0..n)
                .map(|i| self.addrs[(start + i) % n])
                .find(|a| a.is_ipv4() == target.is_ipv4())
            else {
                continue;
            };
            let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            match socket.bind(SocketAddr::new(src, 0)) {
                Ok(()) => match socket.connect(target).await {
                    Ok(tcp) => return Ok(tcp),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(io::Error::new(e.kind(), format!("bind {src}: {e}"))),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::other(format!("{addr}: no address of a source address's family"))
        }))
    }
}

/// Plain TCP to `host:port`.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    /// `host:port`.
    pub addr: String,
    /// Where the connections are made from.
    pub sources: Arc<SourceAddresses>,
}

impl TcpConnector {
    /// Connections to `addr` from addresses the system chooses.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into(), sources: Arc::default() }
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(
        &'a self,
        _cert: Option<&'a ClientCert>,
    ) -> Pin<Box<dyn Future<Output = io::Result<Transport>> + Send + 'a>> {
        Box::pin(async move {
            let tcp = self.sources.connect(&self.addr).await?;
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
