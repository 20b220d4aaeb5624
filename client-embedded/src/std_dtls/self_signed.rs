//! The client's certificate when it has none of its own: dimpl's
//! certificate client needs one, and sends it only if the gateway asks.
//! An ephemeral P-256 key and a self-signed certificate for it, made at
//! each start (DER built here: a dozen fixed fields).

use dimpl::DtlsCertificate;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};

/// A fresh key from `random` (a secure generator filling a buffer) and a
/// self-signed certificate for it; `None` when the generator fails.
pub(crate) fn ephemeral(random: impl Fn(&mut [u8]) -> bool) -> Option<DtlsCertificate> {
    // A random 32-byte string is a valid scalar but with negligible
    // probability; a few draws are plenty.
    let key = (0..8).find_map(|_| {
        let mut bytes = [0u8; 32];
        random(&mut bytes).then(|| SigningKey::from_slice(&bytes).ok()).flatten()
    })?;
    let mut serial = [0u8; 8];
    if !random(&mut serial) {
        return None;
    }
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let spki = key.verifying_key().to_public_key_der().ok()?;
    let algorithm = tlv(0x30, &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]));
    let name = tlv(
        0x30,
        &tlv(
            0x31,
            &tlv(0x30, &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(0x0c, b"mqttsn-client")].concat()),
        ),
    );
    let validity =
        tlv(0x30, &[tlv(0x17, b"000101000000Z"), tlv(0x18, b"99991231235959Z")].concat());
    let tbs = tlv(
        0x30,
        &[
            tlv(0xa0, &tlv(0x02, &[0x02])),
            tlv(0x02, &serial),
            algorithm.clone(),
            name.clone(),
            validity,
            name,
            spki.as_bytes().to_vec(),
        ]
        .concat(),
    );
    let signature: Signature = key.sign(&tbs);
    let bits = [&[0u8][..], signature.to_der().as_bytes()].concat();
    let certificate = tlv(0x30, &[tbs, algorithm, tlv(0x03, &bits)].concat());
    let private_key = key.to_pkcs8_der().ok()?.as_bytes().to_vec();
    Some(DtlsCertificate { certificate, private_key })
}

/// One DER element: tag, definite length, content (under 64 KiB).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    match n {
        0..=0x7f => out.push(n as u8),
        0x80..=0xff => out.extend([0x81, n as u8]),
        _ => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use x509_cert::der::{Decode, Encode};

    use super::*;
    use crate::std_dtls::trust;

    fn os_random(buf: &mut [u8]) -> bool {
        dimpl::crypto::rust_crypto::default_provider().secure_random.fill(buf).is_ok()
    }

    #[test]
    fn the_certificate_parses_and_verifies_as_self_signed() {
        let cert = ephemeral(os_random).unwrap();
        let parsed = x509_cert::Certificate::from_der(&cert.certificate).unwrap();
        assert_eq!(parsed.tbs_certificate().subject(), parsed.tbs_certificate().issuer());
        // Its own issuer: its signature verifies with its own key.
        let tbs = parsed.tbs_certificate().to_der().unwrap();
        assert!(trust::verifies(&parsed, &parsed, &tbs));
        let key = dimpl::crypto::rust_crypto::default_provider().key_provider;
        assert!(key.load_private_key(&cert.private_key).is_ok());
    }

    #[test]
    fn a_failing_generator_gives_none() {
        assert!(ephemeral(|_| false).is_none());
    }
}
