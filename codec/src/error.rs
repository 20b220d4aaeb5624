//! Typed errors of decoding and encoding.

use core::fmt;

use crate::MsgType;

/// Why a datagram could not be decoded.
///
/// Every variant is `Copy` so that a gateway can count drops by reason
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Fewer octets than a Length field and a MsgType need (an empty
    /// datagram, a lone octet, or a `0x01` long form cut short).
    Truncated,
    /// The Length field is below the size of its own header (0, 1 in short
    /// form, or a long form under 4).
    InvalidLength {
        /// The declared total length.
        declared: u16,
    },
    /// The Length field disagrees with the number of octets that are there.
    LengthMismatch {
        /// The declared total length.
        declared: u16,
        /// The octets actually available.
        actual: usize,
    },
    /// A reserved or unknown MsgType.
    UnknownMsgType(u8),
    /// The message is shorter than the fixed part of its type.
    TooShort {
        /// The message type.
        msg_type: MsgType,
    },
    /// The message is longer than its type allows (fixed-size messages only).
    TooLong {
        /// The message type.
        msg_type: MsgType,
    },
    /// An Encapsulated message inside an Encapsulated message, or an
    /// Encapsulated message where a plain one was expected.
    UnexpectedEncapsulation,
    /// The Encapsulated header's one-octet Length is below 3 or runs past the
    /// datagram.
    InvalidEncapsulation,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated header"),
            Self::InvalidLength { declared } => write!(f, "invalid length {declared}"),
            Self::LengthMismatch { declared, actual } => {
                write!(f, "length {declared} does not match the {actual} octets received")
            }
            Self::UnknownMsgType(t) => write!(f, "unknown message type 0x{t:02x}"),
            Self::TooShort { msg_type } => write!(f, "{msg_type} shorter than its fixed part"),
            Self::TooLong { msg_type } => write!(f, "{msg_type} longer than its format allows"),
            Self::UnexpectedEncapsulation => f.write_str("unexpected encapsulated message"),
            Self::InvalidEncapsulation => f.write_str("invalid encapsulation header"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl DecodeError {
    /// A short, stable name for metrics labels and logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::InvalidLength { .. } => "invalid_length",
            Self::LengthMismatch { .. } => "length_mismatch",
            Self::UnknownMsgType(_) => "unknown_type",
            Self::TooShort { .. } => "too_short",
            Self::TooLong { .. } => "too_long",
            Self::UnexpectedEncapsulation => "unexpected_encapsulation",
            Self::InvalidEncapsulation => "invalid_encapsulation",
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The output buffer is smaller than the encoded message.
    BufferTooSmall {
        /// The octets the encoding needs.
        needed: usize,
    },
    /// The message would exceed 65535 octets, or a wireless node id exceeds
    /// 252 octets.
    TooLong,
    /// A serial framing that addresses its frames was given no address.
    NoAddress,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} octets needed")
            }
            Self::TooLong => f.write_str("message too long for MQTT-SN"),
            Self::NoAddress => f.write_str("no radio address to send to"),
        }
    }
}

impl core::error::Error for EncodeError {}
