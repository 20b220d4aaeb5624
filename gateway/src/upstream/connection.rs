//! The tokio driver of one upstream MQTT session: a task that owns the TCP
//! connection and runs the sans-IO [`Client`] over it, reconnecting with
//! exponential backoff after an outage.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::tls::ClientCert;
use super::{Command, Event};
use crate::mqtt::client::{Client, ClientOptions, Want};
use crate::mqtt::codec;
use crate::server::{UpstreamKey, Upstreams};

/// A byte stream to the broker (TCP today; TLS is the same shape).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A boxed transport.
pub type BoxedTransport = Box<dyn Transport>;

/// Opens transports to the broker.
pub trait Connector: Send + Sync + 'static {
    /// Opens one connection, with this sensor's TLS client certificate if
    /// it has one (ignored by plain TCP).
    fn connect<'a>(
        &'a self,
        cert: Option<&'a ClientCert>,
    ) -> Pin<Box<dyn Future<Output = io::Result<BoxedTransport>> + Send + 'a>>;
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
    ) -> Pin<Box<dyn Future<Output = io::Result<BoxedTransport>> + Send + 'a>> {
        Box::pin(async move {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxedTransport)
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
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            max_packet: 1 << 20,
            close_timeout: Duration::from_secs(1),
        }
    }
}

/// One MQTT connection per sensor session, to one broker.
#[derive(Clone)]
pub struct MqttUpstreams {
    connector: Arc<dyn Connector>,
    opts: UpstreamOptions,
}

impl MqttUpstreams {
    /// Upstreams through `connector`.
    pub fn new(connector: Arc<dyn Connector>, opts: UpstreamOptions) -> Self {
        Self { connector, opts }
    }
}

impl Upstreams for MqttUpstreams {
    fn start(
        &self,
        key: UpstreamKey,
        events: mpsc::UnboundedSender<(UpstreamKey, Event)>,
    ) -> mpsc::UnboundedSender<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(key, self.connector.clone(), self.opts, rx, events));
        tx
    }
}

fn jitter(d: Duration, key: UpstreamKey) -> Duration {
    // 50% to 100% of the delay, spread by key and clock without a RNG.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let spread = (u64::from(nanos) ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 500;
    d.mul_f64(0.5 + spread as f64 / 1000.0)
}

async fn run(
    key: UpstreamKey,
    connector: Arc<dyn Connector>,
    opts: UpstreamOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<(UpstreamKey, Event)>,
) {
    let mut client = Client::new(opts.client, Instant::now().into_std());
    let mut stream: Option<BoxedTransport> = None;
    let mut delay = opts.backoff.initial;
    let mut rbuf = BytesMut::with_capacity(4096);
    loop {
        while let Some(ev) = client.poll_event() {
            if matches!(ev, Event::Connected { .. }) {
                delay = opts.backoff.initial;
            }
            let _ = events.send((key, ev));
        }
        if client.is_finished() {
            break;
        }
        let Some(s) = stream.as_mut() else {
            match client.want() {
                Want::Nothing => {
                    let cmd = commands.recv().await.unwrap_or(Command::Abort);
                    client.handle_command(cmd, Instant::now().into_std());
                    continue;
                }
                Want::ConnectAfterBackoff => {
                    let wait = jitter(delay, key);
                    delay = (delay * 2).min(opts.backoff.max);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        cmd = commands.recv() => {
                            client.handle_command(cmd.unwrap_or(Command::Abort), Instant::now().into_std());
                            continue;
                        }
                    }
                    if client.want() == Want::Nothing {
                        continue;
                    }
                }
                Want::ConnectNow => {}
            }
            let cert = client.client_cert().cloned();
            match tokio::time::timeout(opts.connect_timeout, connector.connect(cert.as_ref())).await
            {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    rbuf.clear();
                    client.handle_transport_up(Instant::now().into_std());
                }
                Ok(Err(e)) => client.handle_connect_failed(&format!(
                    "cannot connect to {}: {e}",
                    connector.describe()
                )),
                Err(_) => client.handle_connect_failed(&format!(
                    "connect to {} timed out",
                    connector.describe()
                )),
            }
            continue;
        };
        let mut failed: Option<String> = None;
        while let Some(bytes) = client.poll_transmit() {
            if let Err(e) = s.write_all(&bytes).await {
                failed = Some(format!("write to broker: {e}"));
                break;
            }
        }
        if failed.is_none() && client.poll_close() {
            let _ = s.shutdown().await;
            // After DISCONNECT, wait (briefly) for the broker to close its
            // side: then it has processed the DISCONNECT before any new
            // connection with the same ClientId arrives, so a replacement
            // never looks like a takeover that fires the will.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(opts.close_timeout, async {
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            stream = None;
            client.handle_transport_down("closed by the gateway");
            continue;
        }
        if let Some(reason) = failed {
            stream = None;
            client.handle_transport_down(&reason);
            continue;
        }
        let deadline = client.poll_timeout().map(Instant::from_std);
        tokio::select! {
            read = s.read_buf(&mut rbuf) => match read {
                Ok(0) => failed = Some("connection closed by the broker".into()),
                Ok(_) => loop {
                    match codec::decode(&mut rbuf, opts.max_packet) {
                        Ok(Some(p)) => client.handle_packet(p, Instant::now().into_std()),
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(format!("bad packet from the broker: {e}"));
                            break;
                        }
                    }
                },
                Err(e) => failed = Some(format!("read from broker: {e}")),
            },
            cmd = commands.recv() => {
                client.handle_command(cmd.unwrap_or(Command::Abort), Instant::now().into_std());
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => client.handle_timeout(Instant::now().into_std()),
        }
        if let Some(reason) = failed {
            stream = None;
            client.handle_transport_down(&reason);
        }
    }
}
