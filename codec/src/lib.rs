//! The MQTT-SN v1.2 wire format.
//!
//! `mqttsn-codec` decodes and encodes every message of the MQTT-SN v1.2
//! specification, including the forwarder encapsulation, without
//! allocating and without `unsafe`. It is `#![no_std]` and is shared by the
//! gateway, the microcontroller client and the command-line tools.
//!
//! * [`Packet`] is one message. Decoding borrows variable-length fields
//!   (ClientId, topic names, payloads) from the datagram; encoding writes
//!   into a caller's `&mut [u8]` and reports the length it needs.
//! * [`Frame`] is a whole datagram: a packet, optionally inside the
//!   Encapsulated message a forwarder adds (spec 5.5).
//! * [`serial`] frames messages on a serial line: the raw framing of
//!   mqtt-sn-tools' serial bridge, SLIP and XBee API frames.
//! * [`validate`] holds the checks the wire format leaves to endpoints:
//!   ClientId bounds, topic names, topic filters and matching.
//!
//! ```
//! use mqttsn_codec::{Packet, Publish, QoS, TopicId};
//!
//! let publish = Packet::Publish(Publish {
//!     dup: false,
//!     qos: QoS::AtLeastOnce,
//!     retain: false,
//!     topic: TopicId::Normal(1),
//!     msg_id: 7,
//!     data: b"21.5",
//! });
//! let mut buf = [0u8; 64];
//! let n = publish.encode(&mut buf).unwrap();
//! assert_eq!(&buf[..n], &[11, 0x0C, 0x20, 0, 1, 0, 7, b'2', b'1', b'.', b'5']);
//! assert_eq!(Packet::decode(&buf[..n]), Ok(publish));
//! ```
//!
//! Decoding never panics and never reads past the datagram: a Length that
//! disagrees with the datagram, a truncated header or a message shorter
//! than its fixed part is a [`DecodeError`].
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod display;
mod error;
mod frame;
mod packet;
pub mod serial;
mod types;
pub mod validate;
mod wire;

pub use error::{DecodeError, EncodeError};
pub use frame::{Forwarded, Frame, MAX_NODE_ID_LEN};
pub use packet::{
    Ack, Advertise, Connect, GwInfo, Packet, Publish, Register, SubAck, Subscribe, TopicFilter,
    Unsubscribe, WillTopic,
};
pub use types::{Flags, MsgType, QoS, ReturnCode, TopicId, TopicIdType};
pub use wire::{Header, MAX_MESSAGE_LEN};

/// The only ProtocolId defined by MQTT-SN v1.2 (spec 5.3.8).
pub const PROTOCOL_ID: u8 = 0x01;
