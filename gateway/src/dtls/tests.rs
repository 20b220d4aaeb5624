#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimpl::{Dtls, Output, PskResolver};
use mqttsn_codec::{Connect, Packet, ReturnCode};

use super::*;

const KEY: &str = "00112233445566778899aabbccddeeff";

struct Key(Vec<u8>);
impl PskResolver for Key {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn gateway(now: Instant) -> (Associations, Arc<Metrics>) {
    let mut c = Credentials::default();
    c.add_psk("k", "sensor-a", KEY).unwrap();
    c.add_psk("k", "sensor-b", "ffeeddccbbaa99887766554433221100").unwrap();
    let m = Arc::new(Metrics::default());
    (Associations::new(DtlsSettings::new(c), m.clone(), now).unwrap(), m)
}

fn client(identity: &str, key: &str, now: Instant) -> Dtls {
    let key: Vec<u8> = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).unwrap())
        .collect();
    let cfg = dimpl::Config::builder()
        .with_psk_client(identity.as_bytes().to_vec(), Arc::new(Key(key)))
        .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
        .build()
        .unwrap();
    let mut d = Dtls::new_12_psk(Arc::new(cfg), now);
    d.set_active(true);
    d
}

/// What the client's engine said: records to send, data received.
#[derive(Default)]
struct Said {
    packets: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
    connected: bool,
}

fn drain(c: &mut Dtls) -> Said {
    let mut said = Said::default();
    let mut buf = vec![0u8; 4096];
    loop {
        match c.poll_output(&mut buf) {
            Output::Packet(p) => said.packets.push(p.to_vec()),
            Output::ApplicationData(d) => said.data.push(d.to_vec()),
            Output::Connected => said.connected = true,
            Output::Timeout(_) => return said,
            _ => {}
        }
    }
}

/// Moves datagrams both ways until neither side has anything to say;
/// returns whether the client got connected and what data it received.
fn exchange(c: &mut Dtls, g: &mut Associations, from: SocketAddr, now: Instant) -> Said {
    let mut total = Said::default();
    c.handle_timeout(now).unwrap();
    for _ in 0..20 {
        let said = drain(c);
        total.connected |= said.connected;
        total.data.extend(said.data);
        let mut moved = false;
        for p in said.packets {
            g.handle_datagram(now, from, &p);
            moved = true;
        }
        while let Some((to, p)) = g.poll_transmit() {
            assert_eq!(to, from);
            if c.handle_packet(&p).is_err() {
                return total;
            }
            moved = true;
        }
        if !moved {
            break;
        }
    }
    total
}

/// A client of sensor-a, and its first ClientHello.
fn first_hello(now: Instant) -> (Dtls, Vec<u8>) {
    let mut c = client("sensor-a", KEY, now);
    c.handle_timeout(now).unwrap();
    let ch0 = drain(&mut c).packets.remove(0);
    (c, ch0)
}

/// A counter's value.
fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

fn connect(id: &str) -> Vec<u8> {
    let mut out = [0u8; 64];
    let c = Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: id.as_bytes(),
    };
    let n = Packet::Connect(c).encode(&mut out).unwrap();
    out[..n].to_vec()
}

#[test]
fn a_psk_sensor_connects_and_its_frames_reach_the_endpoint() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let mut c = client("sensor-a", KEY, now);
    let said = exchange(&mut c, &mut g, addr(1), now);
    assert!(said.connected, "handshake completes");
    assert_eq!(g.len(), 1);
    assert!(g.is_connected(&addr(1)));
    assert_eq!(
        g.poll_connected().map(|(a, who)| (a, who.to_string())),
        Some((addr(1), "sensor-a".into()))
    );
    assert_eq!(get(&m.dtls_hello_verify), 1);
    assert_eq!(get(&m.dtls_handshakes), 1);

    c.send_application_data(&connect("sensor-a")).unwrap();
    exchange(&mut c, &mut g, addr(1), now);
    let (from, frame) = g.poll_plaintext().expect("the CONNECT for the endpoint");
    assert_eq!((from, frame.as_ref()), (addr(1), connect("sensor-a").as_slice()));

    // The endpoint's answer, encrypted.
    assert!(g.send(now, addr(1), &[3, 5, 0]));
    let said = exchange(&mut c, &mut g, addr(1), now);
    assert_eq!(said.data, vec![vec![3, 5, 0]]);
    assert!(!g.send(now, addr(2), &[3, 5, 0]), "nobody at another address");
}

#[test]
fn a_sensor_cannot_connect_as_another_client_id() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let mut c = client("sensor-a", KEY, now);
    assert!(exchange(&mut c, &mut g, addr(1), now).connected);
    c.send_application_data(&connect("sensor-b")).unwrap();
    let said = exchange(&mut c, &mut g, addr(1), now);
    assert!(g.poll_plaintext().is_none(), "nothing reaches the endpoint");
    let mut connack = [0u8; 8];
    let n = Packet::ConnAck(ReturnCode::NotSupported).encode(&mut connack).unwrap();
    assert_eq!(said.data, vec![connack[..n].to_vec()]);
    // A wake-up naming another sensor is dropped as well.
    let mut ping = [0u8; 32];
    let n = Packet::PingReq(Some(b"sensor-b")).encode(&mut ping).unwrap();
    c.send_application_data(&ping[..n]).unwrap();
    exchange(&mut c, &mut g, addr(1), now);
    assert!(g.poll_plaintext().is_none());
    assert_eq!(get(&m.dtls_refused_identity), 2);
}

#[test]
fn a_wrong_key_or_unknown_identity_fails_the_handshake() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let mut c = client("sensor-a", "ffeeddccbbaa99887766554433221100", now);
    assert!(!exchange(&mut c, &mut g, addr(1), now).connected);
    let mut c = client("nobody", KEY, now);
    assert!(!exchange(&mut c, &mut g, addr(2), now).connected);
    assert!(!g.is_connected(&addr(1)) && !g.is_connected(&addr(2)));
    // Failed handshakes are dropped, at the latest when they time out.
    g.handle_timeout(now + Duration::from_secs(31));
    assert!(g.is_empty());
    assert_eq!(get(&m.dtls_associations), 0);
    assert!(get(&m.dtls_handshakes_failed) >= 2);
}

#[test]
fn a_first_client_hello_leaves_no_state_and_is_not_amplified() {
    let now = Instant::now();
    let (mut g, _) = gateway(now);
    let (mut c, ch0) = first_hello(now);
    g.handle_datagram(now, addr(1), &ch0);
    assert!(g.is_empty(), "no state for a first ClientHello");
    let (_, hvr) = g.poll_transmit().unwrap();
    assert!(hvr.len() <= ch0.len());
    // The cookie is for addr(1): the same second ClientHello from a
    // spoofed address gets a HelloVerifyRequest of its own, no state.
    c.handle_packet(&hvr).unwrap();
    let ch2 = drain(&mut c).packets.remove(0);
    g.handle_datagram(now, addr(9), &ch2);
    assert!(g.is_empty());
    // From addr(1) it starts the handshake.
    g.handle_datagram(now, addr(1), &ch2);
    assert_eq!(g.len(), 1);
}

#[test]
fn hello_verify_requests_are_bounded_per_second() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let (_c, ch0) = first_hello(now);
    for port in 0..1_500u16 {
        g.handle_datagram(now, addr(port), &ch0);
    }
    let mut sent = 0;
    while g.poll_transmit().is_some() {
        sent += 1;
    }
    assert_eq!(sent, 1_000);
    assert_eq!(get(&m.dtls_refused_limit), 500);
    g.handle_datagram(now + Duration::from_secs(1), addr(1), &ch0);
    assert!(g.poll_transmit().is_some(), "the budget refills");
}

#[test]
fn a_lost_flight_is_sent_again_by_the_timer() {
    let now = Instant::now();
    let (mut g, _) = gateway(now);
    let (mut c, ch0) = first_hello(now);
    g.handle_datagram(now, addr(1), &ch0);
    let (_, hvr) = g.poll_transmit().unwrap();
    c.handle_packet(&hvr).unwrap();
    for p in drain(&mut c).packets {
        g.handle_datagram(now, addr(1), &p);
    }
    // The server's flight is lost.
    while g.poll_transmit().is_some() {}
    // The timers, in virtual time, until the flight goes again.
    let mut t = now;
    let mut resent = 0;
    for _ in 0..10 {
        t = g.poll_timeout().expect("a retransmission timer");
        assert!(t > now);
        g.handle_timeout(t);
        while let Some((_, p)) = g.poll_transmit() {
            resent += 1;
            c.handle_packet(&p).unwrap();
        }
        if resent > 0 {
            break;
        }
    }
    assert!(resent > 0, "the flight again");
    assert!(exchange(&mut c, &mut g, addr(1), t).connected);
}

#[test]
fn a_sensor_that_starts_over_gets_a_new_association() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let mut c = client("sensor-a", KEY, now);
    assert!(exchange(&mut c, &mut g, addr(1), now).connected);
    // The sensor rebooted: a new handshake from the same address.
    let mut c = client("sensor-a", KEY, now);
    assert!(exchange(&mut c, &mut g, addr(1), now).connected);
    assert_eq!(g.len(), 1);
    assert_eq!(get(&m.dtls_associations), 1);
    c.send_application_data(&connect("sensor-a")).unwrap();
    exchange(&mut c, &mut g, addr(1), now);
    assert!(g.poll_plaintext().is_some());
}

#[test]
fn idle_associations_are_dropped() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let mut c = client("sensor-a", KEY, now);
    assert!(exchange(&mut c, &mut g, addr(1), now).connected);
    g.handle_timeout(now + Duration::from_secs(86_401));
    assert!(g.is_empty());
    assert_eq!(get(&m.dtls_associations), 0);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let now = Instant::now();
    let (mut g, m) = gateway(now);
    let (_c, ch0) = first_hello(now);
    for n in 0..ch0.len() {
        g.handle_datagram(now, addr(1), &ch0[..n]);
        let mut flipped = ch0.clone();
        flipped[n] ^= 0x55;
        g.handle_datagram(now, addr(2), &flipped);
    }
    assert!(g.is_empty());
    assert!(get(&m.dtls_dropped) > 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Arbitrary datagrams, from a handshaking and an established peer's
    /// address and from strangers, never panic and never make state for
    /// a stranger.
    #[test]
    fn arbitrary_datagrams_never_panic(
        datagrams in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 1..20)
    ) {
        let now = Instant::now();
        let (mut g, _) = gateway(now);
        let mut c = client("sensor-a", KEY, now);
        assert!(exchange(&mut c, &mut g, addr(1), now).connected);
        for (i, d) in datagrams.iter().enumerate() {
            let mut hello = d.clone();
            if let Some(b) = hello.get_mut(0) {
                *b = 22;
            }
            g.handle_datagram(now, addr(1), d);
            g.handle_datagram(now, addr(2 + (i % 3) as u16), &hello);
            g.handle_timeout(now + Duration::from_secs(i as u64));
            while g.poll_transmit().is_some() {}
            while g.poll_plaintext().is_some() {}
        }
        proptest::prop_assert!(g.len() <= 1);
    }
}

/// The test certificate and key (a self-signed P-256 one).
fn certificate() -> dimpl::DtlsCertificate {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dtls/testdata");
    credentials::load_certificate(&dir.join("server.crt"), &dir.join("server.key")).unwrap()
}

/// A gateway with a server certificate (and sensor-a's PSK), offering
/// `versions`.
fn cert_gateway(now: Instant, versions: Versions) -> (Associations, Arc<Metrics>) {
    let mut c = Credentials::default();
    c.add_psk("k", "sensor-a", KEY).unwrap();
    let mut s = DtlsSettings::new(c);
    s.certificate = Some(certificate());
    s.versions = versions;
    let m = Arc::new(Metrics::default());
    (Associations::new(s, m.clone(), now).unwrap(), m)
}

const BOTH: Versions = Versions { dtls12: true, dtls13: true };

/// A DTLS 1.3 certificate client (without a certificate the gateway
/// would check).
fn client13(now: Instant) -> Dtls {
    let cfg = dimpl::Config::builder().build().unwrap();
    let mut d = Dtls::new_13(Arc::new(cfg), certificate(), now);
    d.set_active(true);
    d
}

/// A DTLS 1.3 client, its first ClientHello, and the HelloRetryRequest
/// the gateway answered it with from `from`.
fn retried(g: &mut Associations, from: SocketAddr, now: Instant) -> (Dtls, Vec<u8>, Vec<u8>) {
    let mut c = client13(now);
    c.handle_timeout(now).unwrap();
    let ch1 = drain(&mut c).packets.remove(0);
    g.handle_datagram(now, from, &ch1);
    let (to, hrr) = g.poll_transmit().expect("a HelloRetryRequest");
    assert_eq!(to, from);
    (c, ch1, hrr)
}

#[test]
fn a_certificate_sensor_connects_over_dtls13_after_a_stateless_retry() {
    let now = Instant::now();
    let (mut g, m) = cert_gateway(now, BOTH);
    let (mut c, ch1, hrr) = retried(&mut g, addr(1), now);
    assert!(g.is_empty(), "no state for a first ClientHello");
    assert!(hrr.len() <= ch1.len(), "no amplification: {} > {}", hrr.len(), ch1.len());
    assert_eq!(hrr.len(), 145, "a SHA-256 suite, no group named");
    assert_eq!(hrr[13], 2, "a ServerHello (HelloRetryRequest)");
    assert_eq!(get(&m.dtls_hello_retry), 1);
    assert_eq!(get(&m.dtls_hello_verify), 0);
    c.handle_packet(&hrr).unwrap();
    let said = exchange(&mut c, &mut g, addr(1), now);
    assert!(said.connected, "the handshake completes");
    assert!(g.is_connected(&addr(1)));
    assert_eq!(get(&m.dtls_handshakes_13), 1);
    assert_eq!(get(&m.dtls_handshakes), 0);
    assert_eq!(c.protocol_version(), Some(dimpl::ProtocolVersion::DTLS1_3));
    assert_eq!(g.poll_connected().map(|(a, who)| (a, who.to_string())), Some((addr(1), "".into())));

    c.send_application_data(&connect("sensor-x")).unwrap();
    exchange(&mut c, &mut g, addr(1), now);
    let (from, frame) = g.poll_plaintext().expect("the CONNECT for the endpoint");
    assert_eq!((from, frame.as_ref()), (addr(1), connect("sensor-x").as_slice()));
    assert!(g.send(now, addr(1), &[3, 5, 0]));
    assert_eq!(exchange(&mut c, &mut g, addr(1), now).data, vec![vec![3, 5, 0]]);
    // A ClientId with a PSK is not for an unauthenticated peer.
    c.send_application_data(&connect("sensor-a")).unwrap();
    exchange(&mut c, &mut g, addr(1), now);
    assert!(g.poll_plaintext().is_none());
}

#[test]
fn a_dtls13_cookie_is_good_for_its_address_and_two_minutes() {
    let now = Instant::now();
    let (mut g, m) = cert_gateway(now, BOTH);
    let (mut c, _, hrr) = retried(&mut g, addr(1), now);
    c.handle_packet(&hrr).unwrap();
    let ch2 = drain(&mut c).packets.remove(0);
    g.handle_datagram(now, addr(9), &ch2);
    assert!(g.is_empty() && g.poll_transmit().is_none(), "bound to the source address");
    g.handle_datagram(now + Duration::from_secs(121), addr(1), &ch2);
    assert!(g.is_empty() && g.poll_transmit().is_none(), "too old");
    assert_eq!(get(&m.dtls_dropped), 2);
    g.handle_datagram(now + Duration::from_secs(119), addr(1), &ch2);
    assert_eq!(g.len(), 1, "the handshake starts");
    assert!(g.poll_transmit().is_some(), "the server's flight");
}

#[test]
fn a_lost_dtls13_flight_is_sent_again_and_a_retried_hello_goes_to_its_engine() {
    let now = Instant::now();
    let (mut g, _) = cert_gateway(now, BOTH);
    let (mut c, _, hrr) = retried(&mut g, addr(1), now);
    c.handle_packet(&hrr).unwrap();
    let ch2 = drain(&mut c).packets.remove(0);
    g.handle_datagram(now, addr(1), &ch2);
    while g.poll_transmit().is_some() {}
    // The same second ClientHello again: the engine's, not a new one.
    g.handle_datagram(now, addr(1), &ch2);
    assert_eq!(g.len(), 1);
    while g.poll_transmit().is_some() {}
    let mut t = now;
    let mut resent = Vec::new();
    for _ in 0..10 {
        t = g.poll_timeout().expect("a retransmission timer");
        g.handle_timeout(t);
        resent.extend(std::iter::from_fn(|| g.poll_transmit()));
        if !resent.is_empty() {
            break;
        }
    }
    assert!(!resent.is_empty(), "the flight again");
    for (_, p) in resent {
        c.handle_packet(&p).unwrap();
    }
    assert!(exchange(&mut c, &mut g, addr(1), t).connected);
}

#[test]
fn hello_retry_requests_share_the_budget_with_hello_verify_requests() {
    let now = Instant::now();
    let (mut g, m) = cert_gateway(now, BOTH);
    let mut c = client13(now);
    c.handle_timeout(now).unwrap();
    let ch13 = drain(&mut c).packets.remove(0);
    let (_c, ch12) = first_hello(now);
    for port in 0..750u16 {
        g.handle_datagram(now, addr(port), &ch13);
        g.handle_datagram(now, addr(port), &ch12);
    }
    assert_eq!(std::iter::from_fn(|| g.poll_transmit()).count(), 1_000);
    assert_eq!(get(&m.dtls_hello_retry) + get(&m.dtls_hello_verify), 1_000);
    assert_eq!(get(&m.dtls_refused_limit), 500);
    assert!(g.is_empty());
    g.handle_datagram(now + Duration::from_secs(1), addr(1), &ch13);
    assert!(g.poll_transmit().is_some(), "the budget refills");
}

#[test]
fn versions_choose_the_handshake() {
    let now = Instant::now();
    // A client offering both (dimpl's auto mode) gets DTLS 1.3...
    let auto = |now| {
        let cfg = dimpl::Config::builder().build().unwrap();
        let mut d = Dtls::new_auto(Arc::new(cfg), certificate(), now);
        d.set_active(true);
        d
    };
    let (mut g, m) = cert_gateway(now, BOTH);
    assert!(exchange(&mut auto(now), &mut g, addr(1), now).connected);
    assert_eq!((get(&m.dtls_handshakes), get(&m.dtls_handshakes_13)), (0, 1));
    // ...and DTLS 1.2 from a gateway without 1.3,
    let (mut g, m) = cert_gateway(now, Versions { dtls12: true, dtls13: false });
    assert!(exchange(&mut auto(now), &mut g, addr(1), now).connected);
    assert_eq!((get(&m.dtls_handshakes), get(&m.dtls_handshakes_13)), (1, 0));
    // PSK stays on DTLS 1.2.
    let (mut g, m) = cert_gateway(now, BOTH);
    assert!(exchange(&mut client("sensor-a", KEY, now), &mut g, addr(1), now).connected);
    assert_eq!((get(&m.dtls_handshakes), get(&m.dtls_handshakes_13)), (1, 0));
    // A gateway with only 1.3 answers no DTLS 1.2 ClientHello.
    let (mut g, m) = cert_gateway(now, Versions { dtls12: false, dtls13: true });
    assert!(!exchange(&mut client("sensor-a", KEY, now), &mut g, addr(1), now).connected);
    assert!(g.is_empty());
    assert!(get(&m.dtls_dropped) > 0);
    assert!(exchange(&mut client13(now), &mut g, addr(2), now).connected);
}

#[test]
fn a_hello_answering_a_hello_verify_request_stays_on_dtls12() {
    // The first ClientHello (offering both) got a HelloVerifyRequest (1.3
    // could not answer it); the second, offering 1.3 too, echoes the
    // DTLS 1.2 cookie and goes on over 1.2.
    let now = Instant::now();
    let (mut g, m) = cert_gateway(now, Versions { dtls12: true, dtls13: false });
    let cfg = dimpl::Config::builder().build().unwrap();
    let mut c = Dtls::new_auto(Arc::new(cfg), certificate(), now);
    c.set_active(true);
    c.handle_timeout(now).unwrap();
    let ch1 = drain(&mut c).packets.remove(0);
    g.handle_datagram(now, addr(1), &ch1);
    let (_, hvr) = g.poll_transmit().unwrap();
    assert_eq!(get(&m.dtls_hello_verify), 1);
    g.settings.versions.dtls13 = true;
    c.handle_packet(&hvr).unwrap();
    assert!(exchange(&mut c, &mut g, addr(1), now).connected);
    assert_eq!((get(&m.dtls_handshakes), get(&m.dtls_handshakes_13)), (1, 0));
}

#[test]
fn dtls13_garbage_never_panics_nor_makes_state_for_a_first_hello() {
    let now = Instant::now();
    let (mut g, _) = cert_gateway(now, BOTH);
    let (mut c, ch1, hrr) = retried(&mut g, addr(1), now);
    c.handle_packet(&hrr).unwrap();
    let ch2 = drain(&mut c).packets.remove(0);
    for n in 0..ch1.len() {
        g.handle_datagram(now, addr(2), &ch1[..n]);
        let mut flipped = ch1.clone();
        flipped[n] ^= 0x55;
        g.handle_datagram(now, addr(2), &flipped);
        assert!(g.is_empty(), "a first ClientHello, byte {n} flipped");
    }
    for n in 0..ch2.len() {
        g.handle_datagram(now, addr(1), &ch2[..n]);
        let mut flipped = ch2.clone();
        flipped[n] ^= 0x55;
        g.handle_datagram(now, addr(1), &flipped);
        while g.poll_transmit().is_some() {}
    }
    assert!(g.len() <= 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
    /// DTLS 1.3 ClientHellos with arbitrary octets changed never panic;
    /// a first one never makes state, a second one at most its sender's.
    #[test]
    fn mangled_dtls13_hellos_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<u16>(), proptest::prelude::any::<u8>()), 1..8)
    ) {
        let now = Instant::now();
        let (mut g, _) = cert_gateway(now, BOTH);
        let (mut c, ch1, hrr) = retried(&mut g, addr(1), now);
        c.handle_packet(&hrr).unwrap();
        let ch2 = drain(&mut c).packets.remove(0);
        let mangle = |p: &[u8]| {
            let mut p = p.to_vec();
            for (at, v) in &edits {
                let n = p.len();
                p[usize::from(*at) % n] = *v;
            }
            p
        };
        g.handle_datagram(now, addr(2), &mangle(&ch1));
        proptest::prop_assert!(g.is_empty());
        g.handle_datagram(now, addr(1), &mangle(&ch2));
        while g.poll_transmit().is_some() {}
        proptest::prop_assert!(g.len() <= 1);
    }
}
