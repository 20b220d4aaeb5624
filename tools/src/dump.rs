//! `mqttsn dump`: print every MQTT-SN datagram, decoded, one line each;
//! optionally relaying between sensors and a gateway.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqttsn_codec::Frame;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

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
    /// Sensors relayed at once.
    pub max_peers: usize,
    /// A relayed sensor silent this long is forgotten.
    pub idle_timeout: Duration,
}

/// A relayed sensor: its upstream socket and the task reading answers.
struct Peer {
    socket: Arc<UdpSocket>,
    seen: Instant,
    task: tokio::task::JoinHandle<()>,
}

struct Printer {
    printed: u64,
    limit: Option<u64>,
}

impl Printer {
    /// Prints a line; returns false once the count is reached.
    fn print(&mut self, peer: SocketAddr, dir: Direction, datagram: &[u8]) -> bool {
        let line = format_datagram(&timestamp(SystemTime::now()), peer, dir, datagram);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        self.printed += 1;
        self.limit.is_none_or(|l| self.printed < l)
    }
}

/// Runs `mqttsn dump` until the count is reached (or forever). `bound`
/// receives the address actually listened on.
pub async fn run(opts: DumpOptions, bound: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let socket = Arc::new(UdpSocket::bind(opts.listen).await?);
    bound(socket.local_addr()?);
    let mut printer = Printer { printed: 0, limit: opts.count };
    if opts.count == Some(0) {
        return Ok(());
    }
    let mut buf = vec![0u8; 65_536];
    let Some(gateway) = opts.relay_to else {
        loop {
            let (n, from) = socket.recv_from(&mut buf).await?;
            if !printer.print(from, Direction::In, &buf[..n]) {
                return Ok(());
            }
        }
    };
    // Relay: one upstream socket per sensor, so the gateway sees each
    // sensor on its own port.
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<(SocketAddr, Vec<u8>)>();
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = received?;
                let datagram = &buf[..n];
                let keep = printer.print(from, Direction::ToGateway, datagram);
                let now = Instant::now();
                peers.retain(|_, p| {
                    let live = now.duration_since(p.seen) < opts.idle_timeout;
                    if !live {
                        p.task.abort();
                    }
                    live
                });
                let upstream = match peers.get_mut(&from) {
                    Some(p) => {
                        p.seen = now;
                        p.socket.clone()
                    }
                    None => {
                        if peers.len() >= opts.max_peers {
                            eprintln!("relay: {} sensors already, dropping datagram from {from}", peers.len());
                            if !keep { return Ok(()); }
                            continue;
                        }
                        let bind: SocketAddr = if gateway.is_ipv4() {
                            ([0, 0, 0, 0], 0).into()
                        } else {
                            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                        };
                        let s = Arc::new(UdpSocket::bind(bind).await?);
                        s.connect(gateway).await?;
                        let (s2, tx) = (s.clone(), back_tx.clone());
                        let task = tokio::spawn(async move {
                            let mut b = vec![0u8; 65_536];
                            while let Ok(n) = s2.recv(&mut b).await {
                                if tx.send((from, b[..n].to_vec())).is_err() {
                                    break;
                                }
                            }
                        });
                        peers.insert(from, Peer { socket: s.clone(), seen: now, task });
                        s
                    }
                };
                if let Err(e) = upstream.send(datagram).await {
                    eprintln!("relay: send to {gateway}: {e}");
                }
                if !keep {
                    return Ok(());
                }
            }
            Some((sensor, datagram)) = back_rx.recv() => {
                let keep = printer.print(sensor, Direction::FromGateway, &datagram);
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

#[cfg(test)]
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
        assert!(line.contains("MALFORMED"), "{line}");
        assert!(line.ends_with("05 0e 00 01"), "{line}");
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(3_723_004);
        assert_eq!(timestamp(t), "01:02:03.004");
    }
}
