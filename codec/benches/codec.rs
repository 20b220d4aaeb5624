//! Micro-benchmarks of decode and encode for PUBLISH and CONNECT, the two
//! messages on a gateway's hot path. Run with `cargo bench -p mqttsn-codec`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use divan::{black_box, Bencher};
use mqttsn_codec::{Connect, Frame, Packet, Publish, QoS, TopicId};

fn main() {
    divan::main();
}

fn publish(data: &[u8]) -> Packet<'_> {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicId::Normal(17),
        msg_id: 4242,
        data,
    })
}

fn connect() -> Packet<'static> {
    Packet::Connect(Connect {
        will: true,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: b"sensor-node-0042-livingroom",
    })
}

fn encoded(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; p.encoded_len().unwrap()];
    p.encode(&mut buf).unwrap();
    buf
}

/// PUBLISH payload sizes: a small reading, and one in the long Length form.
const SIZES: [usize; 2] = [16, 512];

#[divan::bench(args = SIZES)]
fn decode_publish(bencher: Bencher<'_, '_>, size: usize) {
    let data = vec![0xa5u8; size];
    let bytes = encoded(&publish(&data));
    bencher.counter(divan::counter::BytesCount::new(bytes.len())).bench(|| {
        let p = Packet::decode(black_box(&bytes)).unwrap();
        black_box(p);
    });
}

#[divan::bench(args = SIZES)]
fn encode_publish(bencher: Bencher<'_, '_>, size: usize) {
    let data = vec![0xa5u8; size];
    let p = publish(&data);
    let mut buf = vec![0u8; 600];
    bencher.counter(divan::counter::BytesCount::new(p.encoded_len().unwrap())).bench_local(|| {
        let n = black_box(&p).encode(black_box(&mut buf)).unwrap();
        black_box(n);
    });
}

#[divan::bench]
fn decode_connect(bencher: Bencher<'_, '_>) {
    let bytes = encoded(&connect());
    bencher.bench(|| {
        let p = Packet::decode(black_box(&bytes)).unwrap();
        black_box(p);
    });
}

#[divan::bench]
fn encode_connect(bencher: Bencher<'_, '_>) {
    let p = connect();
    let mut buf = [0u8; 64];
    bencher.bench_local(|| {
        let n = black_box(&p).encode(black_box(&mut buf)).unwrap();
        black_box(n);
    });
}

#[divan::bench]
fn decode_frame_publish(bencher: Bencher<'_, '_>) {
    let data = [0xa5u8; 16];
    let bytes = encoded(&publish(&data));
    bencher.bench(|| {
        let f = Frame::decode(black_box(&bytes)).unwrap();
        black_box(f);
    });
}
