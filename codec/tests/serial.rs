//! Property tests of the serial framings: what is encoded decodes to the
//! same messages, and arbitrary octets never panic and never stop a
//! decoder from finding the frames that follow them.
#![allow(clippy::unwrap_used)]

use mqttsn_codec::serial::{encode_going, Decoder, Direction, Family, Framing, Radio};
use proptest::prelude::*;

const N: usize = 1024;

fn framing() -> impl Strategy<Value = Framing> {
    prop::sample::select(Framing::ALL.to_vec())
}

fn radio() -> impl Strategy<Value = Radio> {
    (any::<[u8; 8]>(), any::<bool>()).prop_map(|(addr, legacy)| Radio {
        addr,
        family: if legacy { Family::Legacy } else { Family::Packet },
    })
}

/// An MQTT-SN-shaped message: its first octet (or three) is its length.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (2usize..=255, any::<u8>()).prop_flat_map(|(len, t)| {
            prop::collection::vec(any::<u8>(), len - 2).prop_map(move |rest| {
                let mut m = vec![len as u8, t];
                m.extend(rest);
                m
            })
        }),
        (256usize..600).prop_flat_map(|len| {
            prop::collection::vec(any::<u8>(), len - 3).prop_map(move |rest| {
                let mut m = vec![1, (len >> 8) as u8, len as u8];
                m.extend(rest);
                m
            })
        }),
    ]
}

fn framed(f: Framing, to: Radio, m: &[u8]) -> Vec<u8> {
    framed_going(f, Direction::FromRadio, to, m)
}

fn framed_going(f: Framing, dir: Direction, to: Radio, m: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 2 * m.len() + 64];
    let n = encode_going(f, dir, Some(to), m, &mut out).unwrap();
    out.truncate(n);
    out
}

fn decode_all(d: &mut Decoder<N>, input: &[u8]) -> Vec<(Option<Radio>, Vec<u8>)> {
    decode_going(d, input).into_iter().map(|(_, r, m)| (r, m)).collect()
}

fn decode_going(d: &mut Decoder<N>, input: &[u8]) -> Vec<(Direction, Option<Radio>, Vec<u8>)> {
    let mut got = Vec::new();
    for &b in input {
        if let Some(r) = d.push(b) {
            got.push((r.direction, r.radio, r.message.to_vec()));
        }
    }
    got
}

proptest! {
    #[test]
    fn frames_round_trip(
        f in framing(),
        to in radio(),
        msgs in prop::collection::vec((message(), any::<bool>()), 1..6),
    ) {
        let mut d = Decoder::<N>::new(f);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (m, out) in &msgs {
            // Raw and SLIP frames look the same both ways.
            let dir = if *out && f.addressed() { Direction::ToRadio } else { Direction::FromRadio };
            stream.extend(framed_going(f, dir, to, m));
            want.push((dir, f.addressed().then_some(to), m.clone()));
        }
        let got = decode_going(&mut d, &stream);
        prop_assert_eq!(got, want);
        prop_assert_eq!(d.dropped(), 0);
    }

    #[test]
    fn garbage_never_panics_and_the_next_frame_gets_through(
        f in framing(),
        to in radio(),
        garbage in prop::collection::vec(any::<u8>(), 0..2000),
        m in message(),
    ) {
        let mut d = Decoder::<N>::new(f);
        let _ = decode_all(&mut d, &garbage);
        // What a reader does after a silent gap; SLIP and mode 2 need no
        // help, but it does them no harm.
        d.reset();
        let got = decode_all(&mut d, &framed(f, to, &m));
        prop_assert_eq!(got, vec![(f.addressed().then_some(to), m)]);
    }

    #[test]
    fn slip_and_api_mode_2_resynchronise_without_a_gap(
        escaped in any::<bool>(),
        to in radio(),
        garbage in prop::collection::vec(any::<u8>(), 0..500),
        m in message(),
    ) {
        let f = if escaped { Framing::XbeeApi2 } else { Framing::Slip };
        let mut d = Decoder::<N>::new(f);
        let mut stream = garbage;
        stream.extend(framed(f, to, &m));
        let got = decode_all(&mut d, &stream);
        prop_assert_eq!(got.last(), Some(&(f.addressed().then_some(to), m)));
    }
}
