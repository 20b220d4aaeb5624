//! The relay between sensors and a gateway, shared by `mqttsn dump
//! --relay-to` and `mqttsn relay`: one listening socket for the sensors,
//! and one upstream socket per sensor address, so that the gateway still
//! tells sensors apart by address (each appears to it on a port of its
//! own). At most `max_peers` sensors are relayed at once; a sensor silent
//! for `idle_timeout` is forgotten and its upstream socket closed.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Datagrams read from the gateway and not yet taken by [`Peers::recv`],
/// over all sensors; past this the upstream sockets wait (and the kernel's
/// receive buffers take the excess), so memory stays bounded.
const BACKLOG: usize = 256;

/// How often, at most, idle sensors are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Receive errors that say something about an earlier datagram (an ICMP
/// port unreachable from a peer that is down), not about the socket: the
/// socket stays usable.
pub fn transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset)
}

/// The local address for a sensor's upstream socket: loopback toward a
/// gateway on loopback, any address of the gateway's family otherwise.
fn upstream_bind(gateway: SocketAddr) -> SocketAddr {
    let ip: IpAddr = match (gateway.ip(), gateway.ip().is_loopback()) {
        (IpAddr::V4(_), true) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V4(_), false) => Ipv4Addr::UNSPECIFIED.into(),
        (IpAddr::V6(_), true) => Ipv6Addr::LOCALHOST.into(),
        (IpAddr::V6(_), false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    (ip, 0).into()
}

/// How many sensors are relayed and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Sensors relayed at once; datagrams from further sensors are not
    /// forwarded.
    pub max_peers: usize,
    /// A sensor silent this long is forgotten.
    pub idle_timeout: Duration,
}

/// A datagram that arrived at the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// From a sensor, for the gateway.
    FromSensor(SocketAddr, Vec<u8>),
    /// From the gateway, for this sensor.
    FromGateway(SocketAddr, Vec<u8>),
}

/// What became of a datagram for the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Sent on the sensor's upstream socket.
    Sent,
    /// Not sent: too many sensors already, or a socket error (noted on
    /// stderr).
    Refused,
}

/// A relayed sensor: its upstream socket and the task reading answers.
struct Peer {
    socket: Arc<UdpSocket>,
    seen: Instant,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The task holds the other reference to the socket: stopping it
        // closes the socket.
        self.task.abort();
    }
}

/// The sockets of a relay: the sensors' side and one upstream socket per
/// sensor.
pub struct Peers {
    socket: UdpSocket,
    gateway: SocketAddr,
    limits: PeerLimits,
    peers: HashMap<SocketAddr, Peer>,
    back_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    back_rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    last_sweep: Instant,
    buf: Vec<u8>,
}

impl Peers {
    /// Binds the sensors' side on `listen`, relaying to `gateway`.
    pub async fn bind(
        listen: SocketAddr,
        gateway: SocketAddr,
        limits: PeerLimits,
    ) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(listen).await?;
        let (back_tx, back_rx) = mpsc::channel(BACKLOG);
        Ok(Self {
            socket,
            gateway,
            limits,
            peers: HashMap::new(),
            back_tx,
            back_rx,
            last_sweep: Instant::now(),
            buf: vec![0u8; 65_536],
        })
    }

    /// The address actually bound for the sensors.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The next datagram from a sensor or from the gateway. Cancel-safe:
    /// nothing is lost when another branch of a `select!` wins.
    pub async fn recv(&mut self) -> std::io::Result<Arrival> {
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut self.buf) => match received {
                    Ok((n, from)) => return Ok(Arrival::FromSensor(from, self.buf[..n].to_vec())),
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                },
                // The channel never closes: `self` holds a sender.
                Some((sensor, datagram)) = self.back_rx.recv() => {
                    return Ok(Arrival::FromGateway(sensor, datagram));
                }
            }
        }
    }

    /// Sends a sensor's datagram to the gateway on that sensor's upstream
    /// socket, opened on its first datagram.
    pub async fn to_gateway(&mut self, sensor: SocketAddr, datagram: &[u8]) -> Forward {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY
            || self.peers.len() >= self.limits.max_peers
        {
            let idle = self.limits.idle_timeout;
            self.peers.retain(|_, p| now.duration_since(p.seen) < idle);
            self.last_sweep = now;
        }
        // A reader task that stopped on a hard error leaves a peer that
        // can no longer hear the gateway: start afresh.
        if self.peers.get(&sensor).is_some_and(|p| p.task.is_finished()) {
            self.peers.remove(&sensor);
        }
        let gateway = self.gateway;
        let upstream = if let Some(p) = self.peers.get_mut(&sensor) {
            p.seen = now;
            p.socket.clone()
        } else if self.peers.len() >= self.limits.max_peers {
            eprintln!(
                "relay: {} sensors already, dropping datagram from {sensor}",
                self.peers.len()
            );
            return Forward::Refused;
        } else {
            match open_upstream(gateway, sensor, self.back_tx.clone()).await {
                Ok((s, task)) => {
                    self.peers.insert(sensor, Peer { socket: s.clone(), seen: now, task });
                    s
                }
                Err(e) => {
                    eprintln!("relay: cannot open a socket toward {gateway}: {e}");
                    return Forward::Refused;
                }
            }
        };
        match upstream.send(datagram).await {
            Ok(_) => Forward::Sent,
            Err(e) => {
                eprintln!("relay: send to {gateway} for {sensor}: {e}");
                Forward::Refused
            }
        }
    }

    /// Sends the gateway's datagram back to the sensor; `false` on a
    /// socket error (noted on stderr).
    pub async fn to_sensor(&self, sensor: SocketAddr, datagram: &[u8]) -> bool {
        match self.socket.send_to(datagram, sensor).await {
            Ok(_) => true,
            Err(e) => {
                eprintln!("relay: send to {sensor}: {e}");
                false
            }
        }
    }
}

/// Opens the upstream socket for `sensor`, connected to the gateway, and
/// starts the task passing the gateway's answers back.
async fn open_upstream(
    gateway: SocketAddr,
    sensor: SocketAddr,
    back: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) -> std::io::Result<(Arc<UdpSocket>, JoinHandle<()>)> {
    let s = Arc::new(UdpSocket::bind(upstream_bind(gateway)).await?);
    s.connect(gateway).await?;
    let reader = s.clone();
    let task = tokio::spawn(async move {
        let mut b = vec![0u8; 65_536];
        loop {
            match reader.recv(&mut b).await {
                Ok(n) => {
                    if back.send((sensor, b[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                // The gateway was down for an earlier datagram; it may be
                // back for the next one.
                Err(e) if transient(&e) => continue,
                Err(e) => {
                    eprintln!("relay: receive from {gateway} for {sensor}: {e}");
                    return;
                }
            }
        }
    });
    Ok((s, task))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn upstream_sockets_follow_the_gateway() {
        let bind = |gw: &str| upstream_bind(gw.parse().unwrap()).to_string();
        assert_eq!(bind("127.0.0.1:1884"), "127.0.0.1:0");
        assert_eq!(bind("192.168.1.2:1884"), "0.0.0.0:0");
        assert_eq!(bind("[::1]:1884"), "[::1]:0");
        assert_eq!(bind("[fe80::1]:1884"), "[::]:0");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn both_directions_and_the_peer_bound() {
        let gateway = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let limits = PeerLimits { max_peers: 1, idle_timeout: Duration::from_secs(60) };
        let mut peers =
            Peers::bind("127.0.0.1:0".parse().unwrap(), gateway.local_addr().unwrap(), limits)
                .await
                .unwrap();
        let relay = peers.local_addr().unwrap();
        let sensor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sensor.send_to(b"up", relay).await.unwrap();
        let Arrival::FromSensor(from, d) = peers.recv().await.unwrap() else { panic!() };
        assert_eq!((from, d.as_slice()), (sensor.local_addr().unwrap(), &b"up"[..]));
        assert_eq!(peers.to_gateway(from, &d).await, Forward::Sent);
        let mut b = [0u8; 16];
        let (n, upstream) = gateway.recv_from(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"up");
        assert_ne!(upstream, from, "the gateway sees the relay's upstream socket");
        gateway.send_to(b"down", upstream).await.unwrap();
        let Arrival::FromGateway(to, d) = peers.recv().await.unwrap() else { panic!() };
        assert_eq!(to, from);
        assert!(peers.to_sensor(to, &d).await);
        let (n, _) = sensor.recv_from(&mut b).await.unwrap();
        assert_eq!(&b[..n], b"down");
        // A second sensor is past the bound.
        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(peers.to_gateway(other, b"x").await, Forward::Refused);
    }
}
