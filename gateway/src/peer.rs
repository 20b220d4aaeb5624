//! Where a sensor is: its UDP source address, the link it uses (plain UDP
//! or DTLS) and, when it talks through a forwarder (spec 5.5), its
//! Wireless Node Id behind that forwarder. A serial line is such a
//! forwarder at an address of its own ([`crate::serial::line_addr`]), its
//! radios' addresses the node ids.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mqttsn_codec::{EncodeError, Forwarded, Frame, Packet};

/// How a sensor's datagrams arrive: the same address on another link is
/// another peer (a plain datagram from a DTLS sensor's address never
/// reaches its session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Link {
    /// Plain UDP, on the MQTT-SN listener.
    #[default]
    Udp,
    /// DTLS, on the DTLS listener (decrypted before the endpoint).
    Dtls,
}

/// A sensor's address as the gateway routes by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The UDP source address (the forwarder's, for a forwarded sensor).
    pub addr: SocketAddr,
    /// The Wireless Node Id, for a sensor behind a forwarder.
    pub node: Option<Arc<[u8]>>,
    /// The link it uses.
    pub link: Link,
}

impl Peer {
    /// A sensor reached directly over plain UDP.
    pub fn direct(addr: SocketAddr) -> Self {
        Self { addr, node: None, link: Link::Udp }
    }

    /// A sensor reached directly over DTLS.
    pub fn dtls(addr: SocketAddr) -> Self {
        Self { addr, node: None, link: Link::Dtls }
    }

    /// A sensor behind the forwarder at `addr` (plain UDP).
    pub fn forwarded(addr: SocketAddr, node: &[u8]) -> Self {
        Self { addr, node: Some(Arc::from(node)), link: Link::Udp }
    }

    /// Encodes `packet` for this peer: plain, or encapsulated for its
    /// forwarder (Radius 0, spec 5.5).
    pub fn encode(&self, packet: Packet<'_>, buf: &mut [u8]) -> Result<usize, EncodeError> {
        match &self.node {
            None => packet.encode(buf),
            Some(node) => Frame { forwarder: Some(Forwarded { radius: 0, node_id: node }), packet }
                .encode(buf),
        }
    }
}

impl Peer {
    /// The address as the session store keeps it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let addr = self.addr.to_string();
        let mut out = Vec::with_capacity(2 + addr.len());
        let kind = match (self.link, &self.node) {
            (Link::Udp, None) => 0,
            (Link::Udp, Some(_)) => 1,
            (Link::Dtls, _) => 2,
        };
        out.push(kind);
        out.push(addr.len() as u8);
        out.extend_from_slice(addr.as_bytes());
        if let Some(node) = &self.node {
            out.extend_from_slice(node);
        }
        out
    }

    /// The address [`Peer::to_bytes`] gave, if it is one.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let (&kind, rest) = b.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let addr = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?.parse().ok()?;
        let node = rest.get(usize::from(len)..)?;
        match kind {
            0 => Some(Self::direct(addr)),
            1 => Some(Self::forwarded(addr, node)),
            2 => Some(Self::dtls(addr)),
            _ => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.link == Link::Dtls {
            f.write_str("dtls:")?;
        }
        match crate::serial::line_of(&self.addr) {
            Some(line) => write!(f, "serial {line}")?,
            None => write!(f, "{}", self.addr)?,
        }
        if let Some(node) = &self.node {
            f.write_str(" node ")?;
            for b in node.iter() {
                write!(f, "{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        for p in [
            Peer::direct("127.0.0.1:1884".parse().unwrap()),
            Peer::direct("[::1]:5".parse().unwrap()),
            Peer::forwarded("10.0.0.1:9".parse().unwrap(), &[1, 2, 3]),
            Peer::forwarded("10.0.0.1:9".parse().unwrap(), &[]),
            Peer::dtls("127.0.0.1:8884".parse().unwrap()),
            Peer::direct(crate::serial::line_addr(2)),
            Peer::forwarded(crate::serial::line_addr(0), &[0, 0x13, 0xA2, 0, 1, 2, 3, 4]),
        ] {
            assert_eq!(Peer::from_bytes(&p.to_bytes()), Some(p));
        }
        assert_eq!(Peer::from_bytes(&[]), None);
        assert_eq!(Peer::from_bytes(&[0, 200, b'1']), None);
    }
}
