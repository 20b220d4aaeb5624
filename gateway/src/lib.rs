//! The MQTT-SN gateway: a sans-IO session core and the tokio drivers around it.
#![forbid(unsafe_code)]

pub mod mqtt;
pub mod session;
pub mod upstream;
