//! `mqttsn`: command-line tools for MQTT-SN.
fn main() {}
