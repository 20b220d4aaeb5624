//! Which gateway certificates the DTLS client accepts: dimpl checks that
//! the gateway holds the key of the certificate it sent, not who issued
//! it. A leaf is accepted when it is one of the CA file's certificates
//! (a pinned self-signed certificate) or is signed by one of them (ECDSA
//! P-256 or P-384), and when it is valid now.

use std::time::SystemTime;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256, Sha384};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

use super::pem;

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Why the gateway's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    /// It is not a DER X.509 certificate.
    #[error("it is not an X.509 certificate")]
    Malformed,
    /// Its validity period has not begun or is over.
    #[error("it is not valid now (expired or not yet valid)")]
    NotValidNow,
    /// It is not in the CA file and no certificate there signed it.
    #[error("it is not in the CA file and not signed by a certificate in it")]
    NotTrusted,
}

/// The certificates of a CA file.
#[derive(Debug, Clone)]
pub(crate) struct Trust {
    anchors: Vec<(Vec<u8>, Certificate)>,
}

impl Trust {
    /// Every CERTIFICATE block of a PEM file; an error names what is
    /// wrong with it.
    pub(crate) fn from_pem(text: &[u8]) -> Result<Self, String> {
        let mut anchors = Vec::new();
        for (label, der) in pem::blocks(text)? {
            if label != "CERTIFICATE" {
                continue;
            }
            let cert = Certificate::from_der(&der).map_err(|e| format!("a certificate: {e}"))?;
            anchors.push((der, cert));
        }
        if anchors.is_empty() {
            return Err("no CERTIFICATE in it".into());
        }
        Ok(Self { anchors })
    }

    /// Accepts the gateway's leaf certificate (DER) at `now`, or says why
    /// not.
    pub(crate) fn check(&self, leaf_der: &[u8], now: SystemTime) -> Result<(), CertificateRefusal> {
        let leaf = Certificate::from_der(leaf_der).map_err(|_| CertificateRefusal::Malformed)?;
        if !valid_at(&leaf, now) {
            return Err(CertificateRefusal::NotValidNow);
        }
        if self.anchors.iter().any(|(der, _)| der == leaf_der) {
            return Ok(());
        }
        let tbs = leaf.tbs_certificate().to_der().map_err(|_| CertificateRefusal::Malformed)?;
        let signed = self.anchors.iter().any(|(_, ca)| {
            ca.tbs_certificate().subject() == leaf.tbs_certificate().issuer()
                && valid_at(ca, now)
                && verifies(ca, &leaf, &tbs)
        });
        if signed {
            Ok(())
        } else {
            Err(CertificateRefusal::NotTrusted)
        }
    }
}

fn valid_at(cert: &Certificate, now: SystemTime) -> bool {
    let validity = cert.tbs_certificate().validity();
    validity.not_before.to_system_time() <= now && now <= validity.not_after.to_system_time()
}

/// True when `ca`'s ECDSA key signed `leaf` (whose TBS is `tbs`).
pub(super) fn verifies(ca: &Certificate, leaf: &Certificate, tbs: &[u8]) -> bool {
    let algorithm = leaf.signature_algorithm().oid;
    let digest = if algorithm == ECDSA_WITH_SHA256 {
        Sha256::digest(tbs).to_vec()
    } else if algorithm == ECDSA_WITH_SHA384 {
        Sha384::digest(tbs).to_vec()
    } else {
        return false;
    };
    let Some(signature) = leaf.signature().as_bytes() else { return false };
    let spki = ca.tbs_certificate().subject_public_key_info();
    let Some(curve) = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as().ok()) else {
        return false;
    };
    let Some(key) = spki.subject_public_key.as_bytes() else { return false };
    let curve: ObjectIdentifier = curve;
    if curve == P256 {
        let (Ok(key), Ok(sig)) = (
            p256::ecdsa::VerifyingKey::from_sec1_bytes(key),
            p256::ecdsa::Signature::from_der(signature),
        ) else {
            return false;
        };
        key.verify_prehash(&digest, &sig).is_ok()
    } else if curve == P384 {
        let (Ok(key), Ok(sig)) = (
            p384::ecdsa::VerifyingKey::from_sec1_bytes(key),
            p384::ecdsa::Signature::from_der(signature),
        ) else {
            return false;
        };
        key.verify_prehash(&digest, &sig).is_ok()
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, SystemTime};

    use super::*;

    // Made with openssl (see testdata/README): a P-256 CA, a P-384 CA, a
    // leaf signed by each, and a self-signed certificate nobody trusts.
    const CA256: &[u8] = include_bytes!("testdata/ca-p256.pem");
    const CA384: &[u8] = include_bytes!("testdata/ca-p384.pem");
    const LEAF256: &[u8] = include_bytes!("testdata/leaf-p256.pem");
    const LEAF384: &[u8] = include_bytes!("testdata/leaf-p384.pem");
    const OTHER: &[u8] = include_bytes!("testdata/other.pem");

    fn der(pem_text: &[u8]) -> Vec<u8> {
        pem::blocks(pem_text).unwrap().remove(0).1
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_pinned_certificate_is_accepted() {
        let trust = Trust::from_pem(OTHER).unwrap();
        assert_eq!(trust.check(&der(OTHER), now()), Ok(()));
    }

    #[test]
    fn a_leaf_signed_by_a_ca_of_the_file_is_accepted() {
        let both = [CA384, CA256].concat();
        let trust = Trust::from_pem(&both).unwrap();
        assert_eq!(trust.check(&der(LEAF256), now()), Ok(()));
        assert_eq!(trust.check(&der(LEAF384), now()), Ok(()));
    }

    #[test]
    fn a_leaf_of_another_ca_is_refused() {
        let trust = Trust::from_pem(CA256).unwrap();
        assert_eq!(trust.check(&der(LEAF384), now()), Err(CertificateRefusal::NotTrusted));
        assert_eq!(trust.check(&der(OTHER), now()), Err(CertificateRefusal::NotTrusted));
    }

    #[test]
    fn a_forged_signature_is_refused() {
        // The leaf's last signature byte changed: the DER still parses.
        let mut leaf = der(LEAF256);
        let last = leaf.len() - 1;
        leaf[last] ^= 0x01;
        let trust = Trust::from_pem(CA256).unwrap();
        assert_eq!(trust.check(&leaf, now()), Err(CertificateRefusal::NotTrusted));
    }

    #[test]
    fn a_certificate_outside_its_validity_is_refused() {
        let trust = Trust::from_pem(OTHER).unwrap();
        let later = now() + Duration::from_secs(200 * 365 * 86_400);
        assert_eq!(trust.check(&der(OTHER), later), Err(CertificateRefusal::NotValidNow));
        let earlier = SystemTime::UNIX_EPOCH;
        assert_eq!(trust.check(&der(OTHER), earlier), Err(CertificateRefusal::NotValidNow));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let trust = Trust::from_pem(CA256).unwrap();
        assert_eq!(trust.check(b"", now()), Err(CertificateRefusal::Malformed));
        assert_eq!(trust.check(&[0x30, 0x82, 0xff], now()), Err(CertificateRefusal::Malformed));
    }

    #[test]
    fn a_file_without_certificates_is_an_error() {
        assert!(Trust::from_pem(b"").is_err());
        assert!(Trust::from_pem(b"-----BEGIN CERTIFICATE-----\nnot base64\n").is_err());
    }
}
