//! The client's DTLS 1.2 adapter against OpenSSL's `s_server -dtls1_2` on
//! 127.0.0.1: the PSK suite and ECDHE-ECDSA with the server's certificate
//! checked against a CA file, each after the cookie exchange (`-listen`:
//! a HelloVerifyRequest first, as the gateway does). s_server prints what
//! it receives and sends what it reads on standard input, so the CONNECT
//! frame is seen there and a CONNACK written back completes `connect`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqttsn_client::std_dtls::{CertificateRefusal, DtlsError, DtlsSettings};
use mqttsn_client::std_udp::{UdpClient, UdpError};
use mqttsn_client::{QoS, Settings, Topic};
use mqttsn_tests::broker::unique;
use mqttsn_tests::openssl::openssl;

/// Datagrams up to 4 KiB, as the tools'.
type Client = UdpClient<16, 4, 4096>;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "00112233445566778899aabbccddeeff";

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("dtls-client"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed EC P-256 certificate `name.pem` and its key `name.key`.
fn self_signed(dir: &Path, name: &str) {
    let (key, cert, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={name}"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &subj,
        ],
    );
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `openssl s_server -dtls1_2` on a free port of 127.0.0.1, killed (by its
/// own handle) when dropped.
struct SServer {
    child: Child,
    stdin: ChildStdin,
    port: u16,
    /// Everything it printed so far.
    out: Arc<Mutex<Vec<u8>>>,
}

impl SServer {
    fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_on(dir, free_port(), args)
    }

    fn start_on(dir: &Path, port: u16, args: &[&str]) -> Self {
        let accept = format!("127.0.0.1:{port}");
        let mut child = Command::new("openssl")
            .current_dir(dir)
            .args(["s_server", "-dtls1_2", "-listen", "-accept", &accept, "-naccept", "1"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("openssl is required ({e}); scripts/test installs it"));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let server = Self { child, stdin, port, out };
        server.wait_for(b"ACCEPT");
        server
    }

    /// Waits (bounded) until s_server has printed `bytes`.
    fn wait_for(&self, bytes: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !self.printed(bytes) {
            assert!(Instant::now() < deadline, "s_server never printed {bytes:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn printed(&self, bytes: &[u8]) -> bool {
        self.out.lock().unwrap().windows(bytes.len()).any(|w| w == bytes)
    }

    fn gateway(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CONNECT frame `connect(true, 60, None, _)` sends for `id`.
fn connect_frame(id: &str) -> Vec<u8> {
    let mut frame = vec![6 + id.len() as u8, 0x04, 0x04, 0x01, 0x00, 60];
    frame.extend_from_slice(id.as_bytes());
    frame
}

/// Connects over DTLS: the CONNECT frame must reach s_server, whose
/// CONNACK (written to its standard input) must come back.
fn connect_through(server: &mut SServer, dtls: &DtlsSettings, id: &str) -> Client {
    let client = Client::new_dtls(server.gateway(), id, Settings::default(), dtls, WAIT).unwrap();
    connect_over(server, client, id)
}

/// CONNECT on a client whose handshake is done, as above.
fn connect_over(server: &mut SServer, mut client: Client, id: &str) -> Client {
    let frame = connect_frame(id);
    std::thread::scope(|s| {
        let answer = s.spawn(|| {
            server.wait_for(&frame);
            // CONNACK, accepted: one record, one datagram.
            server.stdin.write_all(&[0x03, 0x05, 0x00]).unwrap();
            server.stdin.flush().unwrap();
        });
        client.connect(true, 60, None, WAIT).unwrap();
        answer.join().unwrap();
    });
    assert!(server.printed(&frame));
    client
}

#[test]
fn psk_connect_reaches_s_server_and_its_connack_comes_back() {
    let dir = temp_dir();
    let mut server = SServer::start(
        &dir,
        &["-nocert", "-psk", KEY, "-psk_identity", "sensor-psk", "-cipher", "PSK-AES128-CCM8"],
    );
    let dtls = DtlsSettings::psk(b"sensor-psk", KEY).unwrap();
    let mut client = connect_through(&mut server, &dtls, "sensor-psk");
    // A message over dimpl's MTU (1150) still goes as one record.
    let payload: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    client.publish(Topic::Short(*b"ab"), &payload, QoS::AtMostOnce, false, WAIT).unwrap();
    server.wait_for(&payload);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_lost_client_hello_is_sent_again() {
    let dir = temp_dir();
    let port = free_port();
    let dtls = DtlsSettings::psk(b"sensor-late", KEY).unwrap();
    // The first ClientHello goes to a port nobody listens on yet; dimpl's
    // timer (1 s, with jitter) sends it again once s_server is there.
    let handshake = std::thread::spawn(move || {
        let gateway = format!("127.0.0.1:{port}");
        Client::new_dtls(gateway, "sensor-late", Settings::default(), &dtls, WAIT)
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut server = SServer::start_on(
        &dir,
        port,
        &["-nocert", "-psk", KEY, "-psk_identity", "sensor-late", "-cipher", "PSK-AES128-CCM8"],
    );
    let client = handshake.join().unwrap().unwrap();
    connect_over(&mut server, client, "sensor-late");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_psk_fails_the_handshake() {
    let dir = temp_dir();
    let server = SServer::start(
        &dir,
        &["-nocert", "-psk", KEY, "-psk_identity", "sensor-psk", "-cipher", "PSK-AES128-CCM8"],
    );
    let wrong = DtlsSettings::psk(b"sensor-psk", "ffeeddccbbaa99887766554433221100").unwrap();
    let wait = Duration::from_secs(2);
    let started = Instant::now();
    let result: Result<Client, _> =
        Client::new_dtls(server.gateway(), "sensor-psk", Settings::default(), &wrong, wait);
    let err = result.err().expect("a wrong PSK must not complete the handshake");
    // OpenSSL drops the Finished it cannot decrypt, as DTLS does with any
    // bad record: the handshake never completes.
    assert!(matches!(err, UdpError::Dtls(DtlsError::HandshakeTimeout(_))), "{err}");
    // Bounded by the wait, not by dimpl's own retries (30 s and more).
    assert!(started.elapsed() < wait + Duration::from_secs(1), "{:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn certificate_in_the_ca_file_connects() {
    let dir = temp_dir();
    self_signed(&dir, "server");
    // -verify: s_server asks for a client certificate without requiring
    // one that verifies; the client sends its ephemeral one.
    let mut server =
        SServer::start(&dir, &["-cert", "server.pem", "-key", "server.key", "-verify", "1"]);
    let dtls = DtlsSettings::certificate(&dir.join("server.pem"), None).unwrap();
    connect_through(&mut server, &dtls, "sensor-cert");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mutual_authentication_with_a_client_certificate() {
    let dir = temp_dir();
    self_signed(&dir, "server");
    self_signed(&dir, "client");
    // -Verify: the client certificate is required and must verify.
    let mut server = SServer::start(
        &dir,
        &[
            "-cert",
            "server.pem",
            "-key",
            "server.key",
            "-Verify",
            "1",
            "-CAfile",
            "client.pem",
            "-verify_return_error",
        ],
    );
    // The key as SEC1 (EC PRIVATE KEY), as `openssl ec` writes it.
    openssl(&dir, &["ec", "-in", "client.key", "-out", "client-sec1.key"]);
    let client = Some((dir.join("client.pem"), dir.join("client-sec1.key")));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let dtls = DtlsSettings::certificate(&dir.join("server.pem"), client).unwrap();
    connect_through(&mut server, &dtls, "sensor-mutual");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_certificate_not_in_the_ca_file_is_refused() {
    let dir = temp_dir();
    self_signed(&dir, "server");
    self_signed(&dir, "stranger");
    let server = SServer::start(&dir, &["-cert", "server.pem", "-key", "server.key"]);
    let dtls = DtlsSettings::certificate(&dir.join("stranger.pem"), None).unwrap();
    let result: Result<Client, _> =
        Client::new_dtls(server.gateway(), "sensor-x", Settings::default(), &dtls, WAIT);
    let err = result.err().expect("an untrusted certificate must be refused");
    assert!(
        matches!(
            err,
            UdpError::Dtls(DtlsError::CertificateRefused(CertificateRefusal::NotTrusted))
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mqttsn_pub_speaks_dtls_with_psk() {
    let dir = temp_dir();
    // The PSK identity defaults to the ClientId.
    let mut server = SServer::start(
        &dir,
        &["-nocert", "-psk", KEY, "-psk_identity", "sensor-tool", "-cipher", "PSK-AES128-CCM8"],
    );
    let port = server.port.to_string();
    let mut child = Command::new(mqttsn_tests::gateway::tools_binary())
        .args(["pub", "-h", "127.0.0.1", "-p", &port, "--wait", "5", "-i", "sensor-tool"])
        .args(["--psk", KEY, "-t", "ab", "-m", "hello", "-q", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    server.wait_for(&connect_frame("sensor-tool"));
    server.stdin.write_all(&[0x03, 0x05, 0x00]).unwrap();
    server.stdin.flush().unwrap();
    // PUBLISH QoS 0 to the short name "ab", then DISCONNECT, answered.
    server.wait_for(&[12, 0x0c, 0x02, b'a', b'b', 0, 0, b'h', b'e', b'l', b'l', b'o']);
    server.wait_for(&[0x02, 0x18]);
    server.stdin.write_all(&[0x02, 0x18]).unwrap();
    server.stdin.flush().unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mqttsn pub did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "exit {:?}: {stderr}", status.code());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mqttsn_pub_refuses_a_bad_psk_before_sending() {
    let out = Command::new(mqttsn_tests::gateway::tools_binary())
        .args(["pub", "-h", "127.0.0.1", "--wait", "1", "--psk", "xyz", "-t", "ab", "-m", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PSK"));
}
