//! MQTT 3.1.1 toward the broker: the packet codec (the `mqttsn-mqtt`
//! crate) and a sans-IO client session that leaves every acknowledgement
//! under the gateway's control.

pub mod client;

pub use mqttsn_mqtt::{codec, QoS};
