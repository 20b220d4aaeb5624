//! The blocking client over DTLS 1.2 or 1.3 (feature `dtls`): every call of
//! [`UdpClient`] works the same, its datagrams carried one per DTLS
//! application-data record on a [dimpl] association.
//!
//! ```no_run
//! use std::time::Duration;
//! use mqttsn_client::std_dtls::DtlsSettings;
//! use mqttsn_client::std_udp::UdpClient;
//! use mqttsn_client::Settings;
//!
//! let dtls = DtlsSettings::psk(b"sensor-1", "000102030405060708090a0b0c0d0e0f")?;
//! let wait = Duration::from_secs(5);
//! let mut c: UdpClient =
//!     UdpClient::new_dtls("127.0.0.1:8884", "sensor-1", Settings::default(), &dtls, wait)?;
//! c.connect(true, 60, None, wait)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Two kinds of credentials: a pre-shared key (the `PSK_AES128_CCM_8`
//! suite; the gateway takes the identity to be the ClientId), or the
//! gateway's certificate checked against a CA file (ECDHE-ECDSA suites),
//! with an optional client certificate for mutual authentication.
//!
//! [`DtlsVersion`] picks the version: DTLS 1.2, DTLS 1.3 (certificates
//! only: dimpl has no DTLS 1.3 PSK), or `Auto` (the default), one
//! ClientHello offering both, the gateway choosing.

mod pem;
mod self_signed;
mod trust;

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dimpl::{Config, Dtls, DtlsCertificate, Output, PskResolver};

use crate::link::Link;
use crate::std_udp::{UdpClient, UdpError};
use crate::Settings;
pub use trust::CertificateRefusal;
use trust::Trust;

/// What can go wrong setting up or running a DTLS association.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// The pre-shared key is not an even number of hex digits, or empty.
    #[error("the PSK must be hex digits, an even number of them: {0:?}")]
    BadPsk(String),
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {}: {reason}", path.display())]
    BadCaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The client certificate file cannot be read or holds no certificate.
    #[error("certificate file {}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The client key file cannot be read or is not an ECDSA P-256 or
    /// P-384 private key.
    #[error("key file {}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The gateway's certificate was refused.
    #[error("the gateway's certificate was refused: {0}")]
    CertificateRefused(#[from] CertificateRefusal),
    /// No handshake completed within the wait: nothing answers DTLS there,
    /// or the gateway dropped the client's Finished (a wrong PSK).
    #[error("no DTLS handshake with the gateway within {0:?} (a wrong PSK, or no DTLS listener)")]
    HandshakeTimeout(Duration),
    /// The handshake failed (an alert from the gateway, no common cipher
    /// suite, a bad signature).
    #[error("the DTLS handshake failed: {0}")]
    Handshake(#[source] dimpl::Error),
    /// The association failed after the handshake.
    #[error("the DTLS association failed: {0}")]
    Association(#[source] dimpl::Error),
    /// DTLS 1.3 was asked for with a pre-shared key.
    #[error("DTLS 1.3 has no PSK handshake here: use DTLS 1.2 with a PSK")]
    PskNeedsDtls12,
    /// The gateway closed the association (close_notify).
    #[error("the gateway closed the DTLS association")]
    Closed,
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The DTLS version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtlsVersion {
    /// DTLS 1.2 only.
    Dtls12,
    /// DTLS 1.3 only (certificates).
    Dtls13,
    /// Both offered, the gateway chooses (a PSK: DTLS 1.2).
    #[default]
    Auto,
}

/// How the client authenticates the gateway and itself.
#[derive(Clone)]
pub struct DtlsSettings {
    auth: Auth,
    version: DtlsVersion,
}

#[derive(Clone)]
enum Auth {
    Psk { identity: Vec<u8>, key: Vec<u8> },
    Certificate { trust: Trust, client: Option<DtlsCertificate> },
}

impl std::fmt::Debug for DtlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        match &self.auth {
            Auth::Psk { identity, .. } => f
                .debug_struct("DtlsSettings::Psk")
                .field("identity", &String::from_utf8_lossy(identity))
                .field("version", &self.version)
                .finish_non_exhaustive(),
            Auth::Certificate { client, .. } => f
                .debug_struct("DtlsSettings::Certificate")
                .field("client_certificate", &client.is_some())
                .field("version", &self.version)
                .finish_non_exhaustive(),
        }
    }
}

impl DtlsSettings {
    /// A pre-shared key given as hex digits, and the identity to send
    /// (the gateway takes it to be the ClientId).
    pub fn psk(identity: &[u8], key_hex: &str) -> Result<Self, DtlsError> {
        let key = from_hex(key_hex).ok_or_else(|| DtlsError::BadPsk(key_hex.to_owned()))?;
        Ok(Self {
            auth: Auth::Psk { identity: identity.to_vec(), key },
            version: DtlsVersion::Auto,
        })
    }

    /// The gateway's certificate must be in the PEM file `cafile` or be
    /// signed by a certificate in it; `client` is the client's own
    /// certificate and key (PEM files, ECDSA P-256 or P-384) for a gateway
    /// that asks for one.
    pub fn certificate(cafile: &Path, client: Option<(&Path, &Path)>) -> Result<Self, DtlsError> {
        let bad_ca = |reason: String| DtlsError::BadCaFile { path: cafile.to_owned(), reason };
        let text = std::fs::read(cafile).map_err(|e| bad_ca(e.to_string()))?;
        let trust = Trust::from_pem(&text).map_err(bad_ca)?;
        let client = match client {
            Some((cert, key)) => Some(client_certificate(cert, key)?),
            None => None,
        };
        Ok(Self { auth: Auth::Certificate { trust, client }, version: DtlsVersion::Auto })
    }

    /// Speaks `version` (default: [`DtlsVersion::Auto`]); DTLS 1.3 with a
    /// pre-shared key is an error.
    pub fn with_version(mut self, version: DtlsVersion) -> Result<Self, DtlsError> {
        if version == DtlsVersion::Dtls13 && matches!(self.auth, Auth::Psk { .. }) {
            return Err(DtlsError::PskNeedsDtls12);
        }
        self.version = version;
        Ok(self)
    }

    /// The version it speaks.
    pub fn version(&self) -> DtlsVersion {
        self.version
    }
}

/// The first certificate of `cert` and the private key of `key`.
fn client_certificate(cert: &Path, key: &Path) -> Result<DtlsCertificate, DtlsError> {
    let bad_cert = |reason: String| DtlsError::BadCertificate { path: cert.to_owned(), reason };
    let bad_key = |reason: String| DtlsError::BadKey { path: key.to_owned(), reason };
    let text = std::fs::read(cert).map_err(|e| bad_cert(e.to_string()))?;
    let certificate = pem::blocks(&text)
        .map_err(bad_cert)?
        .into_iter()
        .find(|(label, _)| label == "CERTIFICATE")
        .ok_or_else(|| bad_cert("no CERTIFICATE in it".into()))?
        .1;
    let text = std::fs::read(key).map_err(|e| bad_key(e.to_string()))?;
    let private_key = pem::blocks(&text)
        .map_err(bad_key)?
        .into_iter()
        .find(|(label, _)| label == "PRIVATE KEY" || label == "EC PRIVATE KEY")
        .ok_or_else(|| bad_key("no PRIVATE KEY or EC PRIVATE KEY in it".into()))?
        .1;
    // dimpl panics on a key it cannot load: check it first.
    let provider = dimpl::crypto::rust_crypto::default_provider();
    if provider.key_provider.load_private_key(&private_key).is_err() {
        return Err(bad_key("not an ECDSA P-256 or P-384 private key".into()));
    }
    Ok(DtlsCertificate { certificate, private_key })
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

/// The one key of a PSK client, whatever hint the gateway sends.
struct OneKey(Vec<u8>);

impl PskResolver for OneKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

impl<const T: usize, const F: usize, const B: usize> UdpClient<T, F, B> {
    /// A client over DTLS to `gateway`: the handshake is done (within
    /// `wait`, dimpl retransmitting its flights meanwhile) before this
    /// returns.
    pub fn new_dtls(
        gateway: impl ToSocketAddrs,
        client_id: &str,
        settings: Settings,
        dtls: &DtlsSettings,
        wait: Duration,
    ) -> Result<Self, UdpError> {
        Self::with_link(gateway, client_id, settings, |sock, gateway| {
            let association = Association::open(sock, gateway, dtls, wait)?;
            Ok(Link::Dtls(Box::new(association)))
        })
    }
}

/// A DTLS client association with the gateway on a UDP socket.
pub(crate) struct Association {
    sock: UdpSocket,
    gateway: SocketAddr,
    dtls: Dtls,
    trust: Option<Trust>,
    /// dimpl's output buffer.
    out: Vec<u8>,
    /// Datagrams as received.
    rx: Vec<u8>,
    /// Application data decrypted, not yet taken.
    received: VecDeque<Vec<u8>>,
    /// When dimpl wants `handle_timeout`.
    timer: Option<Instant>,
    connected: bool,
}

impl Association {
    /// Runs the handshake on `sock` with `gateway`, for at most `wait`.
    pub(crate) fn open(
        sock: UdpSocket,
        gateway: SocketAddr,
        settings: &DtlsSettings,
        wait: Duration,
    ) -> Result<Self, DtlsError> {
        let now = Instant::now();
        let (dtls, trust) = match &settings.auth {
            Auth::Psk { identity, key } => {
                let config = Config::builder()
                    .with_psk_client(identity.clone(), Arc::new(OneKey(key.clone())))
                    .build()
                    .map_err(DtlsError::Handshake)?;
                (Dtls::new_12_psk(Arc::new(config), now), None)
            }
            Auth::Certificate { trust, client } => {
                let config = Config::builder().build().map_err(DtlsError::Handshake)?;
                let certificate = match client {
                    Some(c) => c.clone(),
                    None => {
                        let random = &config.crypto_provider().secure_random;
                        self_signed::ephemeral(|buf| random.fill(buf).is_ok()).ok_or_else(|| {
                            DtlsError::Io(std::io::Error::other("no random numbers for a key"))
                        })?
                    }
                };
                let config = Arc::new(config);
                let dtls = match settings.version {
                    DtlsVersion::Dtls12 => Dtls::new_12(config, certificate, now),
                    DtlsVersion::Dtls13 => Dtls::new_13(config, certificate, now),
                    DtlsVersion::Auto => Dtls::new_auto(config, certificate, now),
                };
                (dtls, Some(trust.clone()))
            }
        };
        let mut association = Self {
            sock,
            gateway,
            dtls,
            trust,
            out: vec![0; 2048],
            rx: vec![0; 65_536],
            received: VecDeque::new(),
            timer: None,
            connected: false,
        };
        association.dtls.set_active(true);
        let deadline = now + wait;
        let handshake = |e: DtlsError| match e {
            DtlsError::Association(e) => DtlsError::Handshake(e),
            e => e,
        };
        association.drain().map_err(handshake)?;
        while !association.connected {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DtlsError::HandshakeTimeout(wait));
            }
            association.step(left).map_err(handshake)?;
        }
        Ok(association)
    }

    /// Sends one datagram as one application-data record.
    pub(crate) fn send(&mut self, datagram: &[u8]) -> Result<(), DtlsError> {
        self.dtls.send_application_data(datagram).map_err(DtlsError::Association)?;
        self.drain()
    }

    /// The next datagram of application data from the gateway into `buf`,
    /// or `None` when `wait` passes first. dimpl's timers run meanwhile.
    pub(crate) fn recv(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<Option<usize>, DtlsError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(data) = self.received.pop_front() {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                return Ok(Some(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.step(left)?;
        }
    }

    /// The gateway's address.
    pub(crate) fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// Waits at most `left` for a datagram from the gateway or dimpl's
    /// timer, hands it to dimpl and does what dimpl then asks.
    fn step(&mut self, left: Duration) -> Result<(), DtlsError> {
        let now = Instant::now();
        let mut until = left;
        if let Some(t) = self.timer {
            until = until.min(t.saturating_duration_since(now).max(Duration::from_millis(1)));
        }
        self.sock.set_read_timeout(Some(until))?;
        let received = match self.sock.recv_from(&mut self.rx) {
            Ok((n, from)) if from == self.gateway => Some(n),
            Ok(_) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        self.dtls.handle_timeout(Instant::now()).map_err(DtlsError::Association)?;
        if let Some(n) = received {
            self.dtls.handle_packet(&self.rx[..n]).map_err(DtlsError::Association)?;
        }
        self.drain()
    }

    /// Takes dimpl's output until its next timer: records to send, the
    /// gateway's certificate to check, data received.
    fn drain(&mut self) -> Result<(), DtlsError> {
        loop {
            match self.dtls.poll_output(&mut self.out) {
                Output::Packet(p) => {
                    self.sock.send_to(p, self.gateway)?;
                }
                Output::BufferTooSmall { needed } => self.out.resize(needed, 0),
                Output::Timeout(t) => {
                    self.timer = Some(t);
                    return Ok(());
                }
                Output::Connected => self.connected = true,
                Output::PeerCert(der) => match &self.trust {
                    Some(trust) => trust.check(der, SystemTime::now())?,
                    None => return Err(CertificateRefusal::NotTrusted.into()),
                },
                Output::ApplicationData(data) => self.received.push_back(data.to_vec()),
                Output::CloseNotify => return Err(DtlsError::Closed),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_psk_is_hex() {
        assert!(matches!(
            DtlsSettings::psk(b"id", "0a1B").map(|s| s.auth),
            Ok(Auth::Psk { key, .. }) if key == [0x0a, 0x1b]
        ));
        for bad in ["", "abc", "zz", "0x12", "é1"] {
            assert!(matches!(DtlsSettings::psk(b"id", bad), Err(DtlsError::BadPsk(_))), "{bad}");
        }
    }

    #[test]
    fn the_debug_form_hides_the_key() {
        let s = DtlsSettings::psk(b"id", "deadbeef").unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("deadbeef") && !text.contains("222, 173"), "{text}");
    }

    #[test]
    fn missing_and_bad_files_are_named() {
        let nowhere = Path::new("/nonexistent/ca.pem");
        let e = DtlsSettings::certificate(nowhere, None).unwrap_err();
        assert!(matches!(&e, DtlsError::BadCaFile { path, .. } if path == nowhere), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("mqttsn-dtls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, include_bytes!("std_dtls/testdata/ca-p256.pem")).unwrap();
        let not_a_key = dir.join("key.pem");
        std::fs::write(&not_a_key, include_bytes!("std_dtls/testdata/other.pem")).unwrap();
        let e = DtlsSettings::certificate(&ca, Some((&ca, &not_a_key))).unwrap_err();
        assert!(matches!(e, DtlsError::BadKey { .. }), "{e}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n")
            .unwrap();
        let e = DtlsSettings::certificate(&ca, Some((&ca, &garbage))).unwrap_err();
        assert!(matches!(e, DtlsError::BadKey { .. }), "{e}");
        let e = DtlsSettings::certificate(&ca, Some((&garbage, &garbage))).unwrap_err();
        assert!(matches!(e, DtlsError::BadCertificate { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
