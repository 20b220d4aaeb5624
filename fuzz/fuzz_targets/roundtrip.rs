//! decode, encode, decode: whatever decodes encodes to octets that decode to
//! the same frame, and the encoder writes exactly `encoded_len` octets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_codec::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else { return };
    let len = frame.encoded_len().expect("a decoded frame has a length");
    let mut buf = vec![0u8; len];
    let n = frame.encode(&mut buf).expect("a decoded frame encodes");
    assert_eq!(n, len);
    let again = Frame::decode(&buf[..n]).expect("re-encoded frame decodes");
    assert_eq!(again, frame);
    // The encoder never picks a longer form than needed.
    assert!(n <= data.len());
    // Too small a buffer is an error, not a panic.
    if n > 0 {
        assert!(frame.encode(&mut buf[..n - 1]).is_err());
    }
});
