//! A whole datagram: one MQTT-SN message, optionally inside the forwarder
//! encapsulation of spec 5.5.

use crate::wire::{Header, Writer};
use crate::{DecodeError, EncodeError, MsgType, Packet};

/// The largest Wireless Node Id: the Encapsulated header's one-octet Length
/// counts itself, MsgType and Ctrl, so at most 255 - 3 octets remain.
pub const MAX_NODE_ID_LEN: usize = 252;

/// The forwarder encapsulation header (spec 5.5, tables 28 and 29).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forwarded<'a> {
    /// The broadcast radius, bits 1 and 0 of the Ctrl octet (only relevant
    /// from gateway to forwarder). The reserved bits are written as zero.
    pub radius: u8,
    /// The Wireless Node Id, 0 to 252 octets.
    pub node_id: &'a [u8],
}

/// One datagram: a message and, when it came through a forwarder, the
/// encapsulation header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame<'a> {
    /// The encapsulation, if any.
    pub forwarder: Option<Forwarded<'a>>,
    /// The MQTT-SN message.
    pub packet: Packet<'a>,
}

impl<'a> Frame<'a> {
    /// A frame without encapsulation.
    pub const fn plain(packet: Packet<'a>) -> Self {
        Self { forwarder: None, packet }
    }

    /// Decodes a datagram. An Encapsulated message's own Length covers
    /// Length, MsgType, Ctrl and the Wireless Node Id; the inner message
    /// follows and its Length must equal what remains of the datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let header = Header::parse(buf)?;
        if header.msg_type != MsgType::Encapsulated as u8 {
            return Packet::decode(buf).map(Self::plain);
        }
        // The encapsulation Length is always one octet (spec 5.5).
        if header.header_len != 2 {
            return Err(DecodeError::InvalidEncapsulation);
        }
        let outer = usize::from(header.len);
        if outer < 3 {
            return Err(DecodeError::InvalidEncapsulation);
        }
        let (head, inner) = buf.split_at_checked(outer).ok_or(DecodeError::InvalidEncapsulation)?;
        let [_, _, ctrl, node_id @ ..] = head else {
            return Err(DecodeError::InvalidEncapsulation);
        };
        if Header::parse(inner)?.msg_type == MsgType::Encapsulated as u8 {
            return Err(DecodeError::UnexpectedEncapsulation);
        }
        let packet = Packet::decode(inner)?;
        Ok(Self { forwarder: Some(Forwarded { radius: ctrl & 0b11, node_id }), packet })
    }

    /// The total encoded length of the datagram.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let inner = self.packet.encoded_len()?;
        match &self.forwarder {
            None => Ok(inner),
            Some(f) if f.node_id.len() > MAX_NODE_ID_LEN => Err(EncodeError::TooLong),
            Some(f) => Ok(3 + f.node_id.len() + inner),
        }
    }

    /// Encodes the datagram into `buf` and returns the octets written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let Some(f) = &self.forwarder else {
            return self.packet.encode(buf);
        };
        let total = self.encoded_len()?;
        let head = 3 + f.node_id.len();
        let mut w = Writer::new(buf, total)?;
        w.u8(head as u8);
        w.u8(MsgType::Encapsulated as u8);
        w.u8(f.radius & 0b11);
        w.bytes(f.node_id);
        let rest = buf.get_mut(head..).ok_or(EncodeError::BufferTooSmall { needed: total })?;
        Ok(head + self.packet.encode(rest)?)
    }
}
