//! The MQTT-SN gateway: a sans-IO session core and the tokio drivers around it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cidr;
pub mod config;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod failpoint;
pub mod limits;
pub mod metrics;
pub mod monitor;
pub mod mqtt;
pub mod peer;
pub mod server;
pub mod session;
pub mod store;
pub mod upstream;
