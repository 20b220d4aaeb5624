//! The MQTT-SN gateway: a sans-IO session core and endpoint, and the tokio
//! drivers around them.
#![forbid(unsafe_code)]

pub mod acl;
pub mod activity;
pub mod admission;
pub mod auth;
pub mod cidr;
pub mod config;
pub mod control;
pub mod dtls;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod endpoint;
pub mod failpoint;
pub mod limits;
pub mod metrics;
pub mod monitor;
pub mod mqtt;
pub mod multicast;
pub mod options;
pub mod peer;
pub mod process;
pub mod reload;
pub mod secret;
pub mod serial;
pub mod server;
pub mod session;
pub mod store;
pub mod udp;
pub mod upstream;
pub mod worker;
