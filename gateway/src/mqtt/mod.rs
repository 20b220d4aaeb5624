//! MQTT 3.1.1 toward the broker: the packet codec and a sans-IO client
//! session that leaves every acknowledgement under the gateway's control.

pub mod client;
pub mod codec;

/// An MQTT QoS level (0, 1 or 2) on the upstream side.
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
