//! `mqttsn dump`: print every MQTT-SN datagram, decoded, one line each;
//! optionally relaying between sensors and a gateway (on the relay's
//! sockets, `relay::peers`, shared with `mqttsn relay`), or reading the
//! frames of a serial line ([`serial`]).

pub mod serial;

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use mqttsn_codec::Frame;
use tokio::net::UdpSocket;

use crate::relay::peers::{transient, Arrival, PeerLimits, Peers};

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
    push_decoded(&mut line, datagram);
    line
}

/// Appends ` len=N ` and the decoded frame, or the decode error and the
/// first 64 octets in hex.
fn push_decoded(line: &mut String, datagram: &[u8]) {
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
    /// Relay mode: how many sensors, for how long.
    pub limits: PeerLimits,
    /// Read this serial line instead of a UDP socket.
    pub serial: Option<serial::SerialSource>,
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
    if let Some(source) = opts.serial {
        let count = opts.count;
        return tokio::task::spawn_blocking(move || serial::run(&source, count))
            .await
            .map_err(std::io::Error::other)?;
    }
    let mut printer = Printer { printed: 0, limit: opts.count };
    match opts.relay_to {
        None => {
            let socket = UdpSocket::bind(opts.listen).await?;
            bound(socket.local_addr()?);
            if opts.count == Some(0) {
                return Ok(());
            }
            listen(&socket, &mut printer).await
        }
        Some(gateway) => {
            let mut peers = Peers::bind(opts.listen, gateway, opts.limits).await?;
            bound(peers.local_addr()?);
            if opts.count == Some(0) {
                return Ok(());
            }
            relay(&mut peers, &mut printer).await
        }
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

/// Relay mode: print both directions, forward everything unchanged.
async fn relay(peers: &mut Peers, printer: &mut Printer) -> std::io::Result<()> {
    loop {
        let keep = match peers.recv().await? {
            Arrival::FromSensor(sensor, datagram) => {
                let keep = printer.print(sensor, Direction::ToGateway, &datagram)?;
                peers.to_gateway(sensor, &datagram).await;
                keep
            }
            Arrival::FromGateway(sensor, datagram) => {
                let keep = printer.print(sensor, Direction::FromGateway, &datagram)?;
                peers.to_sensor(sensor, &datagram).await;
                keep
            }
        };
        if !keep {
            return Ok(());
        }
    }
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
    fn timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(3_723_004);
        assert_eq!(timestamp(t), "01:02:03.004");
    }
}
