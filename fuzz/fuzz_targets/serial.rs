//! The serial framings' decoders take arbitrary octets without panicking,
//! and after them (and a silent gap) a whole frame still gets through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_codec::serial::{encode_going, Decoder, Direction, Family, Framing, Radio};

fuzz_target!(|data: &[u8]| {
    let radio = Radio { addr: [0, 0x13, 0xA2, 0, 0x7E, 0x7D, 0x11, 0x13], family: Family::Packet };
    let message = [2u8, 0x16];
    for framing in Framing::ALL {
        let mut d = Box::new(Decoder::<1024>::new(framing));
        for &b in data {
            let _ = d.push(b);
        }
        d.reset();
        let mut out = [0u8; 64];
        let Ok(n) = encode_going(framing, Direction::FromRadio, Some(radio), &message, &mut out)
        else {
            panic!("a PINGREQ frames");
        };
        let got = out[..n].iter().filter(|&&b| d.push(b).is_some_and(|r| r.message == message));
        assert_eq!(got.count(), 1, "{framing}: the frame after the noise");
    }
});
