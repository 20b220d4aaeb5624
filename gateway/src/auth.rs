//! Who may connect, and as whom on the broker.
//!
//! MQTT-SN 1.2 CONNECT carries no credentials, so the gateway supplies the
//! identity: a table maps ClientIds to upstream usernames and passwords,
//! optionally pinned to source networks; a policy decides for ClientIds not
//! in the table.

use std::collections::HashMap;

use bytes::Bytes;

use crate::cidr::Cidr;
use crate::peer::{Link, Peer};

/// The upstream identity of a sensor. Its `Debug` hides the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// MQTT username, if any.
    pub username: Option<String>,
    /// MQTT password, if any.
    pub password: Option<Bytes>,
    /// TLS client certificate (`mqtts://`), if any.
    pub client_cert: Option<crate::upstream::tls::ClientCert>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// One known sensor.
#[derive(Debug, Clone, Default)]
pub struct ClientEntry {
    /// Its upstream identity.
    pub identity: Identity,
    /// Source networks it may connect from; empty: anywhere.
    pub allow_from: Vec<Cidr>,
    /// It has DTLS credentials (a PSK, a pinned certificate): it may
    /// connect only over DTLS, authenticated as itself.
    pub dtls: bool,
}

/// Why a sensor may not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The ClientId is not in the table and the policy refuses unknown ones.
    UnknownClient,
    /// The source address is outside the ClientId's pinned networks.
    OutsidePin,
    /// The ClientId has DTLS credentials and came over plain UDP.
    NeedsDtls,
}

impl Refusal {
    /// For logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownClient => "unknown ClientId",
            Self::OutsidePin => "source address outside the ClientId's pinned networks",
            Self::NeedsDtls => "the ClientId has DTLS credentials and may connect only over DTLS",
        }
    }
}

/// The credentials table and policy.
#[derive(Debug, Clone, Default)]
pub struct AuthTable {
    clients: HashMap<String, ClientEntry>,
    /// Allow ClientIds not in the table (with `default_identity`).
    pub allow_unknown: bool,
    /// The identity of sensors not in the table.
    pub default_identity: Identity,
}

impl AuthTable {
    /// Everyone allowed, no credentials: the default.
    pub fn open() -> Self {
        Self { allow_unknown: true, ..Self::default() }
    }

    /// Adds or replaces a known sensor.
    pub fn insert(&mut self, client_id: &str, entry: ClientEntry) {
        self.clients.insert(client_id.to_owned(), entry);
    }

    /// The identity for `client_id` connecting from `peer`, or why not.
    pub fn check(&self, client_id: &str, peer: &Peer) -> Result<Identity, Refusal> {
        let ip = peer.addr.ip();
        match self.clients.get(client_id) {
            Some(entry) if entry.dtls && peer.link != Link::Dtls => Err(Refusal::NeedsDtls),
            Some(entry) => {
                if entry.allow_from.is_empty() || entry.allow_from.iter().any(|n| n.contains(ip)) {
                    Ok(entry.identity.clone())
                } else {
                    Err(Refusal::OutsidePin)
                }
            }
            None if self.allow_unknown => Ok(self.default_identity.clone()),
            None => Err(Refusal::UnknownClient),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_pins_and_policy() {
        let mut t = AuthTable::default();
        t.insert(
            "a",
            ClientEntry {
                identity: Identity {
                    username: Some("alice".into()),
                    password: None,
                    client_cert: None,
                },
                allow_from: vec!["10.0.0.0/8".parse().unwrap()],
                dtls: false,
            },
        );
        t.insert("b", ClientEntry::default());
        let inside = Peer::direct("10.1.2.3:1".parse().unwrap());
        let outside = Peer::direct("192.168.0.1:1".parse().unwrap());
        assert_eq!(t.check("a", &inside).unwrap().username.as_deref(), Some("alice"));
        assert_eq!(t.check("a", &outside), Err(Refusal::OutsidePin));
        assert!(t.check("b", &outside).is_ok());
        assert_eq!(t.check("c", &inside), Err(Refusal::UnknownClient));
        t.allow_unknown = true;
        assert!(t.check("c", &inside).is_ok());
        t.insert("d", ClientEntry { dtls: true, ..ClientEntry::default() });
        assert_eq!(t.check("d", &inside), Err(Refusal::NeedsDtls));
        assert!(t.check("d", &Peer::dtls("10.1.2.3:1".parse().unwrap())).is_ok());
    }
}
