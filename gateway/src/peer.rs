//! Where a sensor is: its UDP source address and, when it talks through a
//! forwarder (spec 5.5), its Wireless Node Id behind that forwarder.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use mqttsn_codec::{EncodeError, Forwarded, Frame, Packet};

/// A sensor's address as the gateway routes by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The UDP source address (the forwarder's, for a forwarded sensor).
    pub addr: SocketAddr,
    /// The Wireless Node Id, for a sensor behind a forwarder.
    pub node: Option<Arc<[u8]>>,
}

impl Peer {
    /// A sensor reached directly.
    pub fn direct(addr: SocketAddr) -> Self {
        Self { addr, node: None }
    }

    /// A sensor behind the forwarder at `addr`.
    pub fn forwarded(addr: SocketAddr, node: &[u8]) -> Self {
        Self { addr, node: Some(Arc::from(node)) }
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

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(node) = &self.node {
            f.write_str(" node ")?;
            for b in node.iter() {
                write!(f, "{b:02x}")?;
            }
        }
        Ok(())
    }
}
