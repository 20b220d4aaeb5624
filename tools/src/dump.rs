//! `mqttsn dump`: print every MQTT-SN datagram, decoded, one line each;
//! optionally relaying between sensors and a gateway.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqttsn_codec::Frame;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Which way a datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the dump (listen mode).
    In,
    /// From a sensor toward the gateway (relay mode).
    ToGateway,
    /// From the gateway back to a sensor (relay mode).
    FromGateway,
}

/// The wall-clock time of day in UTC as `HH:MM:SS.mmm`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", secs / 3600, secs / 60 % 60, secs % 60, d.subsec_millis())
}

/// One line for a datagram: time, peer and direction, length, and the
/// decoded frame, or the decode error and the first 64 octets in hex.
pub fn format_datagram(time: &str, peer: SocketAddr, dir: Direction, datagram: &[u8]) -> String {
    let mut line = match dir {
        Direction::In => format!("{time} {peer}"),
        Direction::ToGateway => format!("{time} sensor {peer} -> gw"),
        Direction::FromGateway => format!("{time} sensor {peer} <- gw"),
    };
    let _ = write!(line, " len={} ", datagram.len());
    match Frame::decode(datagram) {
        Ok(frame) => {
            let _ = write!(line, "{frame}");
        }
        Err(e) => {
            let _ = write!(line, "MALFORMED ({e}):");
            for b in datagram.iter().take(64) {
                let _ = write!(line, " {b:02x}");
            }
            if datagram.len() > 64 {
                line.push_str(" ...");
            }
        }
    }
    line
}

/// Options of `mqttsn dump`.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The UDP address to listen on.
    pub listen: SocketAddr,
    /// Relay to this gateway instead of only listening.
    pub relay_to: Option<SocketAddr>,
    /// Stop after this many datagrams printed.
    pub count: Option<u64>,
    /// Sensors relayed at once; datagrams from further sensors are dropped.
    pub max_peers: usize,
    /// A relayed sensor silent this long is forgotten.
    pub idle_timeout: Duration,
}

/// Datagrams read from the gateway and not yet printed and sent on, over
/// all sensors; past this the upstream sockets wait (and the kernel's
/// receive buffers take the excess), so memory stays bounded.
const BACKLOG: usize = 256;

/// How often, at most, idle sensors are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Receive errors that say something about an earlier datagram (an ICMP
/// port unreachable from a peer that is down), not about the socket: the
/// socket stays usable.
fn transient(e: &std::io::Error) -> bool {
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

/// Prints datagram lines to stdout and counts them.
struct Printer {
    printed: u64,
    limit: Option<u64>,
}

impl Printer {
    /// Prints a line and flushes it. Returns `Ok(false)` once the count is
    /// reached or stdout is closed (`mqttsn dump | head`).
    fn print(
        &mut self,
        peer: SocketAddr,
        dir: Direction,
        datagram: &[u8],
    ) -> std::io::Result<bool> {
        let line = format_datagram(&timestamp(SystemTime::now()), peer, dir, datagram);
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(false),
            Err(e) => return Err(e),
        }
        self.printed += 1;
        Ok(self.limit.is_none_or(|l| self.printed < l))
    }
}

/// Runs `mqttsn dump` until the count is reached or stdout is closed (or
/// forever). `bound` receives the address actually listened on.
pub async fn run(opts: DumpOptions, bound: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let socket = UdpSocket::bind(opts.listen).await?;
    bound(socket.local_addr()?);
    if opts.count == Some(0) {
        return Ok(());
    }
    let mut printer = Printer { printed: 0, limit: opts.count };
    match opts.relay_to {
        None => listen(&socket, &mut printer).await,
        Some(gateway) => relay(&socket, gateway, &opts, &mut printer).await,
    }
}

/// Listen mode: print what arrives.
async fn listen(socket: &UdpSocket, printer: &mut Printer) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) if transient(&e) => continue,
            Err(e) => return Err(e),
        };
        if !printer.print(from, Direction::In, &buf[..n])? {
            return Ok(());
        }
    }
}

/// Relay mode: one upstream socket per sensor, so the gateway sees each
/// sensor on its own port; print both directions.
async fn relay(
    socket: &UdpSocket,
    gateway: SocketAddr,
    opts: &DumpOptions,
    printer: &mut Printer,
) -> std::io::Result<()> {
    let (back_tx, mut back_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(BACKLOG);
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let mut last_sweep = Instant::now();
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = match received {
                    Ok(r) => r,
                    Err(e) if transient(&e) => continue,
                    Err(e) => return Err(e),
                };
                let datagram = &buf[..n];
                let keep = printer.print(from, Direction::ToGateway, datagram)?;
                let now = Instant::now();
                if now.duration_since(last_sweep) >= SWEEP_EVERY || peers.len() >= opts.max_peers {
                    peers.retain(|_, p| now.duration_since(p.seen) < opts.idle_timeout);
                    last_sweep = now;
                }
                // A reader task that stopped on a hard error leaves a peer
                // that can no longer hear the gateway: start afresh.
                if peers.get(&from).is_some_and(|p| p.task.is_finished()) {
                    peers.remove(&from);
                }
                let upstream = if let Some(p) = peers.get_mut(&from) {
                    p.seen = now;
                    Some(p.socket.clone())
                } else if peers.len() >= opts.max_peers {
                    eprintln!("relay: {} sensors already, dropping datagram from {from}", peers.len());
                    None
                } else {
                    match open_upstream(gateway, from, back_tx.clone()).await {
                        Ok((s, task)) => {
                            peers.insert(from, Peer { socket: s.clone(), seen: now, task });
                            Some(s)
                        }
                        Err(e) => {
                            eprintln!("relay: cannot open a socket toward {gateway}: {e}");
                            None
                        }
                    }
                };
                if let Some(s) = upstream {
                    if let Err(e) = s.send(datagram).await {
                        eprintln!("relay: send to {gateway} for {from}: {e}");
                    }
                }
                if !keep {
                    return Ok(());
                }
            }
            Some((sensor, datagram)) = back_rx.recv() => {
                let keep = printer.print(sensor, Direction::FromGateway, &datagram)?;
                if let Err(e) = socket.send_to(&datagram, sensor).await {
                    eprintln!("relay: send to {sensor}: {e}");
                }
                if !keep {
                    return Ok(());
                }
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

    fn peer() -> SocketAddr {
        ([127, 0, 0, 1], 5000).into()
    }

    #[test]
    fn lines() {
        let publish = [0x09, 0x0c, 0x20, 0x00, 0x01, 0x00, 0x02, b'h', b'i'];
        let line = format_datagram("12:00:00.000", peer(), Direction::In, &publish);
        assert!(line.starts_with("12:00:00.000 127.0.0.1:5000 len=9 PUBLISH"), "{line}");
        assert!(line.contains("hi"), "{line}");

        let encapsulated = [0x05, 0xfe, 0x01, 0xab, 0xcd, 0x02, 0x16];
        let line = format_datagram("t", peer(), Direction::ToGateway, &encapsulated);
        assert!(line.contains("sensor 127.0.0.1:5000 -> gw"), "{line}");
        assert!(line.contains("PINGREQ"), "{line}");

        let bad = [0x05, 0x0e, 0x00, 0x01];
        let line = format_datagram("t", peer(), Direction::FromGateway, &bad);
        assert!(line.contains("<- gw"), "{line}");
        assert!(
            line.ends_with(
                "len=4 MALFORMED (length 5 does not match the 4 octets received): 05 0e 00 01"
            ),
            "{line}"
        );
    }

    #[test]
    fn malformed_edges() {
        let line = format_datagram("t", peer(), Direction::In, &[]);
        assert_eq!(line, "t 127.0.0.1:5000 len=0 MALFORMED (truncated header):");

        let line = format_datagram("t", peer(), Direction::In, &[0x03, 0x99, 0x00]);
        assert!(line.contains("MALFORMED (unknown message type 0x99): 03 99 00"), "{line}");

        // Only the first 64 octets are shown.
        let mut long = vec![0x00u8; 100];
        long[0] = 0x01;
        long[1] = 0x00;
        long[2] = 0x10;
        let line = format_datagram("t", peer(), Direction::In, &long);
        assert!(line.contains("len=100 MALFORMED ("), "{line}");
        assert_eq!(line.matches(" 00").count(), 64 - 2, "{line}");
        assert!(line.ends_with(" 00 ..."), "{line}");
    }

    #[test]
    fn upstream_sockets_follow_the_gateway() {
        let bind = |gw: &str| upstream_bind(gw.parse().unwrap()).to_string();
        assert_eq!(bind("127.0.0.1:1884"), "127.0.0.1:0");
        assert_eq!(bind("192.168.1.2:1884"), "0.0.0.0:0");
        assert_eq!(bind("[::1]:1884"), "[::1]:0");
        assert_eq!(bind("[fe80::1]:1884"), "[::]:0");
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(3_723_004);
        assert_eq!(timestamp(t), "01:02:03.004");
    }
}
