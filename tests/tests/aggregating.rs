//! The end-to-end flows of the transparent gateway, run again with the
//! gateway in aggregating mode: the same test files, compiled into this
//! binary, against a real mosquitto, with every gateway the harness starts
//! sharing a pool of broker connections (see `mqttsn_tests::mode`).
//! Behaviour that differs by design has its own tests in
//! `aggregating_only`: what the broker sees as the publisher, and so
//! per-sensor broker credentials (`credentials.rs`) and per-sensor TLS
//! client certificates (`tls.rs`), which aggregating mode does not use
//! (docs/aggregating.md).

#[path = "acl.rs"]
mod acl;
#[path = "admission.rs"]
mod admission;
#[path = "api.rs"]
mod api;
#[path = "client.rs"]
mod client;
#[path = "connect.rs"]
mod connect;
#[path = "discovery.rs"]
mod discovery;
#[path = "dtls.rs"]
mod dtls;
#[path = "embedded.rs"]
mod embedded;
#[path = "failover.rs"]
mod failover;
#[path = "gateway_smoke.rs"]
mod gateway_smoke;
#[path = "liveness.rs"]
mod liveness;
#[path = "monitoring.rs"]
mod monitoring;
#[path = "network.rs"]
mod network;
#[path = "outage.rs"]
mod outage;
#[path = "persistence.rs"]
mod persistence;
#[path = "publish.rs"]
mod publish;
#[path = "relay.rs"]
mod relay;
#[path = "serial.rs"]
mod serial;
#[path = "sleep.rs"]
mod sleep;
#[path = "status_page.rs"]
mod status_page;
#[path = "store_full.rs"]
mod store_full;
#[path = "tools.rs"]
mod tools;

#[test]
fn this_binary_runs_the_gateway_in_aggregating_mode() {
    assert!(mqttsn_tests::mode::aggregating(), "{}", mqttsn_tests::mode::name());
}
