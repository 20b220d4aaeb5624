//! The gateway's endpoint (two workers, a store, admission bounds and the
//! address check on) driven by arbitrary sequences of datagrams, broker
//! answers and messages, store commits and clock steps: no panic, every
//! datagram out decodes, the gauges never go below zero (see
//! `mqttsn_gateway::endpoint::script`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mqttsn_gateway::endpoint::script::run(data);
});
