//! Datagrams a session sends to its sensor, held owned until the driver
//! encodes them into its send buffer.

use std::sync::Arc;

use bytes::Bytes;
use mqttsn_codec::{EncodeError, Packet, Publish, QoS, Register, TopicId};

/// One message for the sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A message without variable-length fields (acknowledgements,
    /// CONNACK, PINGRESP, DISCONNECT, ...).
    Packet(Packet<'static>),
    /// A gateway REGISTER.
    Register {
        /// The id assigned.
        topic_id: u16,
        /// The message id.
        msg_id: u16,
        /// The topic name.
        name: Arc<str>,
    },
    /// A PUBLISH toward the sensor; the payload is shared, not copied.
    Publish {
        /// DUP.
        dup: bool,
        /// QoS.
        qos: QoS,
        /// RETAIN.
        retain: bool,
        /// The topic.
        topic: TopicId,
        /// The message id (0 at QoS 0).
        msg_id: u16,
        /// The payload.
        data: Bytes,
    },
}

impl Outgoing {
    /// The message as a codec packet borrowing from `self`.
    pub fn packet(&self) -> Packet<'_> {
        match self {
            Self::Packet(p) => *p,
            Self::Register { topic_id, msg_id, name } => Packet::Register(Register {
                topic_id: *topic_id,
                msg_id: *msg_id,
                topic_name: name.as_bytes(),
            }),
            Self::Publish { dup, qos, retain, topic, msg_id, data } => Packet::Publish(Publish {
                dup: *dup,
                qos: *qos,
                retain: *retain,
                topic: *topic,
                msg_id: *msg_id,
                data,
            }),
        }
    }

    /// Encodes the message into `buf`; returns the octets written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.packet().encode(buf)
    }
}

impl From<Packet<'static>> for Outgoing {
    fn from(p: Packet<'static>) -> Self {
        Self::Packet(p)
    }
}
