//! What DTLS costs the gateway per sensor: a PSK handshake through the
//! listener's associations (the client's half included, on the same
//! core), certificate handshakes over DTLS 1.2 and 1.3 (the stateless
//! cookie exchange included), the memory an association keeps, and one
//! MQTT-SN datagram decrypted and one encrypted.
//!
//! `cargo bench -p mqttsn-gateway --bench dtls`: the `alloc`/`dealloc`
//! columns of `handshake` differ by what each association keeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dimpl::{Dtls, Output, PskResolver};
use mqttsn_gateway::dtls::{Associations, Credentials, DtlsSettings};
use mqttsn_gateway::metrics::Metrics;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

const KEY: [u8; 16] = [7; 16];

struct Key;
impl PskResolver for Key {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(KEY.to_vec())
    }
}

fn main() {
    divan::main();
}

fn gateway() -> Associations {
    let mut c = Credentials::default();
    c.add_psk("k", "sensor", &"07".repeat(16)).unwrap();
    let mut s = DtlsSettings::new(c);
    s.max_associations = 1_000_000;
    s.max_handshakes = 1_000_000;
    s.hello_verify_per_sec = u32::MAX;
    Associations::new(s, Arc::new(Metrics::default()), Instant::now()).unwrap()
}

/// The test certificate (self-signed, P-256), for both sides.
fn certificate() -> dimpl::DtlsCertificate {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dtls/testdata");
    mqttsn_gateway::dtls::credentials::load_certificate(
        &dir.join("server.crt"),
        &dir.join("server.key"),
    )
    .unwrap()
}

fn cert_gateway() -> Associations {
    let mut s = DtlsSettings::new(Credentials::default());
    s.certificate = Some(certificate());
    s.max_associations = 1_000_000;
    s.max_handshakes = 1_000_000;
    s.hello_verify_per_sec = u32::MAX;
    Associations::new(s, Arc::new(Metrics::default()), Instant::now()).unwrap()
}

/// A whole certificate handshake (ECDHE-ECDSA P-256, no client
/// certificate) over DTLS 1.2 or 1.3.
fn certificate_handshake(bencher: divan::Bencher<'_, '_>, dtls13: bool) {
    let cfg = Arc::new(dimpl::Config::builder().build().unwrap());
    let cert = certificate();
    let mut g = cert_gateway();
    let mut port = 0u32;
    bencher.bench_local(|| {
        port += 1;
        let now = Instant::now();
        let from = SocketAddr::from(([127, (port >> 16) as u8, (port >> 8) as u8, port as u8], 9));
        let mut c = if dtls13 {
            Dtls::new_13(cfg.clone(), cert.clone(), now)
        } else {
            Dtls::new_12(cfg.clone(), cert.clone(), now)
        };
        c.set_active(true);
        exchange(&mut c, &mut g, from, now);
        assert!(g.is_connected(&from));
        from
    });
}

/// A certificate handshake over DTLS 1.2 (HelloVerifyRequest first).
#[divan::bench(sample_count = 10, sample_size = 10)]
fn handshake_certificate_dtls12(bencher: divan::Bencher<'_, '_>) {
    certificate_handshake(bencher, false);
}

/// A certificate handshake over DTLS 1.3 (stateless HelloRetryRequest
/// first).
#[divan::bench(sample_count = 10, sample_size = 10)]
fn handshake_certificate_dtls13(bencher: divan::Bencher<'_, '_>) {
    certificate_handshake(bencher, true);
}

fn client_config() -> Arc<dimpl::Config> {
    Arc::new(
        dimpl::Config::builder()
            .with_psk_client(b"sensor".to_vec(), Arc::new(Key))
            .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
            .build()
            .unwrap(),
    )
}

/// Runs datagrams both ways until both sides are quiet; the client's
/// received application data.
fn exchange(c: &mut Dtls, g: &mut Associations, from: SocketAddr, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    let mut data = Vec::new();
    c.handle_timeout(now).unwrap();
    for _ in 0..20 {
        let mut moved = false;
        loop {
            match c.poll_output(&mut buf) {
                Output::Packet(p) => {
                    g.handle_datagram(now, from, p);
                    moved = true;
                }
                Output::ApplicationData(d) => data.push(d.to_vec()),
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        while let Some((_, p)) = g.poll_transmit() {
            c.handle_packet(&p).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    data
}

fn connected(cfg: &Arc<dimpl::Config>, g: &mut Associations, port: u32) -> (Dtls, SocketAddr) {
    let now = Instant::now();
    let from = SocketAddr::from(([127, (port >> 16) as u8, (port >> 8) as u8, port as u8], 9));
    let mut c = Dtls::new_12_psk(cfg.clone(), now);
    c.set_active(true);
    exchange(&mut c, g, from, now);
    assert!(g.is_connected(&from));
    (c, from)
}

/// A whole PSK handshake; the association stays in the listener.
#[divan::bench(sample_count = 20, sample_size = 50)]
fn handshake(bencher: divan::Bencher<'_, '_>) {
    let cfg = client_config();
    let mut g = gateway();
    let mut port = 0u32;
    bencher.bench_local(|| {
        port += 1;
        connected(&cfg, &mut g, port).1
    });
}

/// One PUBLISH-sized datagram from the sensor, decrypted.
#[divan::bench]
fn decrypt(bencher: divan::Bencher<'_, '_>) {
    let cfg = client_config();
    let mut g = gateway();
    let (mut c, from) = connected(&cfg, &mut g, 1);
    let mut buf = vec![0u8; 2048];
    let publish = [28u8; 28];
    bencher.bench_local(|| {
        c.send_application_data(&publish).unwrap();
        while let Output::Packet(p) = c.poll_output(&mut buf) {
            g.handle_datagram(Instant::now(), from, p);
        }
        g.poll_plaintext()
    });
}

/// One PUBLISH-sized datagram to the sensor, encrypted.
#[divan::bench]
fn encrypt(bencher: divan::Bencher<'_, '_>) {
    let cfg = client_config();
    let mut g = gateway();
    let (_c, from) = connected(&cfg, &mut g, 1);
    let publish = [28u8; 28];
    bencher.bench_local(|| {
        g.send(Instant::now(), from, &publish);
        g.poll_transmit()
    });
}
