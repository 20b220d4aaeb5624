//! A `no_std`, no-alloc, sans-IO MQTT-SN v1.2 client for microcontrollers.
//!
//! [`Client`] is a state machine: the application calls requests
//! ([`Client::connect`], [`Client::register`], [`Client::publish`],
//! [`Client::subscribe`], [`Client::sleep`], [`Client::wake`], ...), feeds
//! in what arrives ([`Client::handle_datagram`]) and the time
//! ([`Client::handle_timeout`]), and takes out datagrams to send
//! ([`Client::poll_transmit`]) and the next deadline
//! ([`Client::poll_timeout`]). Time is milliseconds on any monotonic clock.
//! Capacities are const generics: topic names, requests in flight, and
//! the largest datagram.
//!
//! With the `std` feature, [`std_udp::UdpClient`] runs it over a blocking
//! `std::net::UdpSocket`, and with `dtls` over DTLS 1.2 or 1.3 on one
//! (`std_dtls`); with `tokio`, `tokio_udp::TokioClient` over a
//! tokio socket. With `embassy-net` (no `std`, no allocation),
//! `embassy_udp::EmbassyClient` runs it over an embassy-net `UdpSocket`
//! with embassy-time.
//!
//! [`gateways::Gateways`] keeps a list of gateways; after
//! [`Event::GatewayLost`] the session moves to the next with
//! `Client::fail_over` (feature `failover`, on by default; docs/failover.md).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
mod adapter;
mod buf;
mod client;
pub mod discovery;
#[cfg(feature = "embassy-net")]
pub mod embassy_udp;
#[cfg(all(test, feature = "failover"))]
mod failover_tests;
pub mod gateways;
#[cfg(feature = "std")]
mod link;
#[cfg(feature = "dtls")]
pub mod std_dtls;
#[cfg(feature = "std")]
pub mod std_udp;
#[cfg(test)]
mod tests;
#[cfg(feature = "tokio")]
pub mod tokio_udp;
#[cfg(any(feature = "std", feature = "embassy-net"))]
mod wait;

pub use buf::Buf;
pub use client::{Client, Error, Event, MessageTopic, Millis, Settings, Topic, MAX_NAME};
pub use mqttsn_codec::{QoS, ReturnCode, TopicFilter};
