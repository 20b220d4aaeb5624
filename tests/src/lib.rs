//! Shared harness for the end-to-end tests: free ports, external tools and
//! processes that are killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod gateway;
pub mod http;
pub mod mode;
pub mod mqtt_client;
pub mod openssl;
pub mod pcap;
pub mod serial;
pub mod sim;
pub mod sn;
