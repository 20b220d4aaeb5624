//! Decoding arbitrary datagrams never panics, and whatever decodes can be
//! displayed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_codec::{Frame, Packet};

fuzz_target!(|data: &[u8]| {
    let _ = Packet::decode(data);
    if let Ok(frame) = Frame::decode(data) {
        let _ = frame.to_string();
        let _ = frame.encoded_len();
    }
});
