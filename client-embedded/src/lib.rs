//! A `no_std`, no-alloc, sans-IO MQTT-SN v1.2 client for microcontrollers.
#![no_std]
#![forbid(unsafe_code)]
