//! Who may use DTLS, and as which ClientId: pre-shared keys (the PSK
//! identity is the ClientId) and client certificates pinned to ClientIds
//! by their SHA-256 fingerprint; the server's certificate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A credential that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A PSK that is not hexadecimal, or too short.
    #[error("{key}: {reason}")]
    Psk {
        /// The configuration key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// A fingerprint that is not 64 hexadecimal digits.
    #[error("{key}: a SHA-256 fingerprint is 64 hexadecimal digits (colons allowed)")]
    Fingerprint {
        /// The configuration key.
        key: String,
    },
    /// A certificate or key file that cannot be used.
    #[error("{key}: {path}: {reason}")]
    File {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl CredentialsError {
    /// Why, without the configuration key.
    pub fn reason(&self) -> String {
        match self {
            Self::Psk { reason, .. } => (*reason).to_owned(),
            Self::Fingerprint { .. } => {
                "a SHA-256 fingerprint is 64 hexadecimal digits (colons allowed)".to_owned()
            }
            Self::File { reason, .. } => reason.clone(),
        }
    }
}

/// The DTLS credentials of the sensors, as one configuration gives them.
#[derive(Default)]
pub struct Credentials {
    psks: HashMap<String, Vec<u8>>,
    certificates: HashMap<[u8; 32], Arc<str>>,
    pinned: HashMap<String, ()>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("psks", &self.psks.len())
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// The credentials the DTLS listener uses now: shared with the DTLS
/// engines (as their PSK resolver) and replaced by a reload (SIGHUP), so a
/// new sensor's key works without a restart. Handshakes that completed
/// keep their association.
#[derive(Debug, Default)]
pub struct LiveCredentials(RwLock<Arc<Credentials>>);

impl LiveCredentials {
    /// These credentials, until replaced.
    pub fn new(c: Credentials) -> Self {
        Self(RwLock::new(Arc::new(c)))
    }

    /// The credentials now.
    pub fn get(&self) -> Arc<Credentials> {
        match self.0.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Takes these from now on.
    pub fn replace(&self, c: Arc<Credentials>) {
        match self.0.write() {
            Ok(mut cur) => *cur = c,
            Err(poisoned) => *poisoned.into_inner() = c,
        }
    }
}

impl dimpl::PskResolver for LiveCredentials {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self.get().resolve(identity)
    }
}

impl Credentials {
    /// Gives `client_id` the PSK `hex` (configuration key `key`, for errors).
    pub fn add_psk(
        &mut self,
        key: &str,
        client_id: &str,
        hex: &str,
    ) -> Result<(), CredentialsError> {
        let err = |reason| CredentialsError::Psk { key: key.to_owned(), reason };
        let psk = decode_hex(hex).ok_or_else(|| err("not an even number of hexadecimal digits"))?;
        if psk.len() < 16 {
            return Err(err("at least 16 octets (32 hexadecimal digits)"));
        }
        if psk.len() > 64 {
            return Err(err("at most 64 octets (128 hexadecimal digits)"));
        }
        self.psks.insert(client_id.to_owned(), psk);
        self.pinned.insert(client_id.to_owned(), ());
        Ok(())
    }

    /// Pins the client certificate with SHA-256 fingerprint `hex` to
    /// `client_id`.
    pub fn add_certificate(
        &mut self,
        key: &str,
        client_id: &str,
        hex: &str,
    ) -> Result<(), CredentialsError> {
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        let fp: [u8; 32] = decode_hex(&digits)
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| CredentialsError::Fingerprint { key: key.to_owned() })?;
        self.certificates.insert(fp, Arc::from(client_id));
        self.pinned.insert(client_id.to_owned(), ());
        Ok(())
    }

    /// Whether any sensor has a PSK.
    pub fn has_psks(&self) -> bool {
        !self.psks.is_empty()
    }

    /// Whether `client_id` has a PSK or a pinned certificate: then only
    /// a DTLS peer authenticated as it may use it.
    pub fn has_dtls_credentials(&self, client_id: &[u8]) -> bool {
        std::str::from_utf8(client_id).is_ok_and(|id| self.pinned.contains_key(id))
    }

    /// The ClientId the client certificate `der` is pinned to.
    pub fn certificate_client(&self, der: &[u8]) -> Option<Arc<str>> {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let fp: [u8; 32] = digest.as_ref().try_into().ok()?;
        self.certificates.get(&fp).cloned()
    }
}

impl dimpl::PskResolver for Credentials {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self.psks.get(std::str::from_utf8(identity).ok()?).cloned()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

/// The SHA-256 fingerprint of a certificate, as `add_certificate` takes it.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the server certificate (the first in `cert_file`) and its key
/// (ECDSA P-256 or P-384, PKCS#8 or SEC1 PEM), checking that the DTLS
/// engine can sign with it.
pub fn load_certificate(
    cert_file: &Path,
    key_file: &Path,
) -> Result<dimpl::DtlsCertificate, CredentialsError> {
    let file = |key, path: &Path, reason: String| CredentialsError::File {
        key,
        path: path.display().to_string(),
        reason,
    };
    let cert = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file("dtls.cert_file", cert_file, e.to_string()))?
        .next()
        .ok_or_else(|| file("dtls.cert_file", cert_file, "no certificate in the file".into()))?
        .map_err(|e| file("dtls.cert_file", cert_file, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file("dtls.key_file", key_file, e.to_string()))?;
    let key = key.secret_der().to_vec();
    dimpl::crypto::rust_crypto::default_provider().key_provider.load_private_key(&key).map_err(
        |e| file("dtls.key_file", key_file, format!("not an ECDSA P-256/P-384 key: {e}")),
    )?;
    Ok(dimpl::DtlsCertificate { certificate: cert.to_vec(), private_key: key })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use dimpl::PskResolver;

    use super::*;

    #[test]
    fn psks_and_pins() {
        let mut c = Credentials::default();
        assert!(c.add_psk("clients[0].psk", "a", "00112233").is_err());
        assert!(c.add_psk("clients[0].psk", "a", &"ab".repeat(65)).is_err());
        let e = c.add_psk("clients[0].psk", "a", "zz").unwrap_err();
        assert!(e.to_string().starts_with("clients[0].psk: "), "{e}");
        c.add_psk("clients[0].psk", "a", "00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(c.resolve(b"a").unwrap().len(), 16);
        assert!(c.resolve(b"b").is_none());
        assert!(c.has_dtls_credentials(b"a") && !c.has_dtls_credentials(b"b"));
        let der = b"not really a certificate";
        let fp = fingerprint(der);
        assert!(c.add_certificate("clients[1].cert_sha256", "b", "12:34").is_err());
        c.add_certificate("clients[1].cert_sha256", "b", &fp.to_uppercase()).unwrap();
        assert_eq!(c.certificate_client(der).as_deref(), Some("b"));
        assert!(c.certificate_client(b"other").is_none());
        assert!(c.has_dtls_credentials(b"b"));
        let live = LiveCredentials::new(c);
        assert!(live.resolve(b"a").is_some());
        live.replace(Arc::default());
        assert!(live.resolve(b"a").is_none() && !live.get().has_dtls_credentials(b"b"));
    }
}
