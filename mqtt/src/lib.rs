//! MQTT 3.1.1 as a client speaks it: the packets a client sends and the
//! ones a broker may send back, decoded incrementally from a `BytesMut`
//! (payloads are split off without copying) and encoded into one.
//!
//! The gateway's upstream sessions and the load tool's broker-side clients
//! (`mqttsn bench`) share this one codec.
#![forbid(unsafe_code)]

pub mod codec;

/// An MQTT QoS level (0, 1 or 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}
