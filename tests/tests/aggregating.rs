//! The end-to-end flows of the transparent gateway, run again with the
//! gateway in aggregating mode: the same test files, compiled into this
//! binary, against a real mosquitto, with every gateway the harness starts
//! sharing a pool of broker connections (see `mqttsn_tests::mode`).
//! Behaviour that differs by design (what the broker sees as the
//! publisher, per-sensor credentials, wills on a gateway crash) has its
//! own tests in `aggregating_only`.

#[path = "acl.rs"]
mod acl;
#[path = "admission.rs"]
mod admission;
#[path = "client.rs"]
mod client;
#[path = "connect.rs"]
mod connect;
#[path = "embedded.rs"]
mod embedded;
#[path = "discovery.rs"]
mod discovery;
#[path = "monitoring.rs"]
mod monitoring;
#[path = "tls.rs"]
mod tls;
#[path = "store_full.rs"]
mod store_full;
#[path = "dtls.rs"]
mod dtls;
#[path = "serial.rs"]
mod serial;
#[path = "failover.rs"]
mod failover;
#[path = "api.rs"]
mod api;
#[path = "status_page.rs"]
mod status_page;
#[path = "tools.rs"]
mod tools;
#[path = "gateway_smoke.rs"]
mod gateway_smoke;
#[path = "liveness.rs"]
mod liveness;
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
#[path = "sleep.rs"]
mod sleep;

#[test]
fn this_binary_runs_the_gateway_in_aggregating_mode() {
    assert!(mqttsn_tests::mode::aggregating(), "{}", mqttsn_tests::mode::name());
}
