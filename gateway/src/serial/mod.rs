//! Serial sensor networks: a radio module (an XBee coordinator, a USB
//! serial radio) or a sensor wired to a UART, beside the UDP socket.
//!
//! A serial line appears to the endpoint as a forwarder (spec 5.5) at an
//! address of its own that no UDP datagram can come from: `[100::N]:0`
//! for line N (the IPv6 discard-only prefix of RFC 6666, port 0). On an
//! addressed framing (XBee) each message is handed over encapsulated with
//! the radio's 64-bit address as its Wireless Node Id, so every radio is a
//! sensor address of its own; on a point-to-point framing (raw, SLIP) the
//! line's address is the sensor's. Sessions, sleeping buffers, the store,
//! limits and metrics therefore treat a serial sensor exactly like a UDP
//! one, and its address survives a restart in the store's usual form (as
//! long as the line keeps its place among the `[[serial]]` sections).
//!
//! [`line::run`] drives one line on the main runtime: it hands what it
//! reads to worker 0 over the workers' hand-over channel, and every worker
//! sends what it has for a line's address to that line's channel.

pub mod line;
pub mod tty;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

pub use mqttsn_codec::serial::Framing;

/// One configured serial line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialLine {
    /// The device (`/dev/ttyUSB0`, `/dev/serial/by-id/...`).
    pub device: PathBuf,
    /// The baud rate.
    pub baud: u32,
    /// How messages are framed on it.
    pub framing: Framing,
}

/// The first segment of every line's address: 100::/64 (RFC 6666).
const PREFIX: u16 = 0x0100;

/// The address line `index` has towards the endpoint.
pub fn line_addr(index: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::new(PREFIX, 0, 0, 0, 0, 0, 0, index), 0))
}

/// The line whose address `addr` is, if it is one.
pub fn line_of(addr: &SocketAddr) -> Option<u16> {
    let SocketAddr::V6(v6) = addr else { return None };
    match v6.ip().segments() {
        [PREFIX, 0, 0, 0, 0, 0, 0, index] if v6.port() == 0 => Some(index),
        _ => None,
    }
}

/// Whether `ip` is in the serial lines' prefix: a local link, which no
/// remote host can send from (admission does not bound it).
pub fn is_line_ip(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[..4] == [PREFIX, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_addresses() {
        for i in [0, 1, 65_535] {
            assert_eq!(line_of(&line_addr(i)), Some(i));
            assert!(is_line_ip(line_addr(i).ip()));
        }
        assert_eq!(line_of(&"[100::1]:5".parse().unwrap_or(line_addr(0))), None);
        assert_eq!(line_of(&"127.0.0.1:0".parse().unwrap_or(line_addr(0))), None);
        assert!(!is_line_ip([127, 0, 0, 1].into()));
    }
}
