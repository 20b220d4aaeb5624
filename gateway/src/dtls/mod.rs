//! MQTT-SN over DTLS 1.2 and 1.3 (sans-IO): the associations of one
//! listener.
//!
//! [`Associations`] sits between the DTLS socket and the endpoint. It
//! answers first ClientHellos statelessly ([`hello`]): a HelloVerifyRequest
//! for DTLS 1.2, a HelloRetryRequest for DTLS 1.3 (offered for
//! certificate handshakes; the DTLS crate has no DTLS 1.3 PSK, so PSK
//! handshakes stay on DTLS 1.2). It creates a DTLS
//! engine (the `dimpl` crate) only for a ClientHello that echoes a valid
//! cookie, hands the endpoint each decrypted MQTT-SN frame and encrypts
//! what the endpoint sends back. It knows who is at the other end: the
//! PSK identity, or the ClientId a pinned client certificate maps to, and
//! holds every CONNECT and wake-up PINGREQ to it:
//!
//! - an authenticated peer may only use its own ClientId;
//! - a peer without credentials (a certificate handshake without a client
//!   certificate) may not use a ClientId that has DTLS credentials;
//! - forwarder encapsulation is not taken over DTLS (the identity would
//!   be the forwarder's, not the sensors').
//!
//! Refused CONNECTs get CONNACK "rejected: not supported" (0x03).
//! Like the endpoint, it takes inputs with an explicit `now` and hands
//! out outputs through `poll_*`, so every behaviour is tested with
//! virtual time.

pub mod credentials;
pub mod hello;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dimpl::{Dtls, Output};
use mqttsn_codec::{Frame, Packet, ReturnCode};
use tracing::{debug, info};

pub use credentials::{Credentials, CredentialsError, LiveCredentials};
use hello::{ClientHello, Cookies};

use crate::metrics::Metrics;

/// The PSK cipher suite (TLS_PSK_WITH_AES_128_CCM_8, RFC 6655).
const PSK_AES128_CCM_8: u16 = 0xc0a8;

/// The ECDHE-ECDSA suites the certificate handshake takes.
const ECDHE_ECDSA: [u16; 3] = [0xc02b, 0xc02c, 0xcca9];

/// The DTLS versions a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// DTLS 1.2 (PSK and certificate handshakes).
    pub dtls12: bool,
    /// DTLS 1.3 (certificate handshakes only).
    pub dtls13: bool,
}

/// How the DTLS listener is set up.
#[derive(Clone)]
pub struct DtlsSettings {
    /// The versions offered.
    pub versions: Versions,
    /// PSKs and pinned client certificates (replaced by a reload).
    pub credentials: Arc<LiveCredentials>,
    /// The server certificate and key (DER), for certificate handshakes.
    pub certificate: Option<dimpl::DtlsCertificate>,
    /// Certificate handshakes must present a client certificate pinned
    /// in the credentials.
    pub require_client_certificate: bool,
    /// Associations at most (handshakes included).
    pub max_associations: usize,
    /// Handshakes in progress at most.
    pub max_handshakes: usize,
    /// HelloVerifyRequests per second at most, over all sources.
    pub hello_verify_per_sec: u32,
    /// An association nobody sent anything on for this long is dropped.
    pub idle_timeout: Duration,
    /// A handshake not complete after this long is dropped.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for DtlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsSettings")
            .field("versions", &self.versions)
            .field("credentials", &self.credentials)
            .field("certificate", &self.certificate.is_some())
            .field("require_client_certificate", &self.require_client_certificate)
            .field("max_associations", &self.max_associations)
            .field("max_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

impl DtlsSettings {
    /// Settings with these credentials and the defaults.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            versions: Versions { dtls12: true, dtls13: true },
            credentials: Arc::new(LiveCredentials::new(credentials)),
            certificate: None,
            require_client_certificate: false,
            max_associations: 10_000,
            max_handshakes: 256,
            hello_verify_per_sec: 1_000,
            idle_timeout: Duration::from_secs(86_400),
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// The DTLS engine refused its configuration.
    #[error("DTLS configuration: {0}")]
    Config(String),
    /// No randomness for the cookie key.
    #[error("no system randomness for the DTLS cookie key")]
    Random,
}

/// Who an association's peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    /// Authenticated as this ClientId (PSK identity, pinned certificate).
    Client(Arc<str>),
    /// Encrypted, not authenticated.
    Anonymous,
    /// A client certificate that maps to no ClientId.
    Unknown,
}

struct Association {
    dtls: Dtls,
    dtls13: bool,
    connected: bool,
    who: Who,
    heard: Instant,
    started: Instant,
    timeout: Option<Instant>,
    close: bool,
}

/// The DTLS associations of one listener.
pub struct Associations {
    settings: DtlsSettings,
    psk_config: Arc<dimpl::Config>,
    cert_config: Option<Arc<dimpl::Config>>,
    cookies: Cookies,
    table: HashMap<SocketAddr, Association>,
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    handshakes: usize,
    plaintext: VecDeque<(SocketAddr, Bytes)>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<(SocketAddr, Arc<str>)>,
    verify_budget: (Instant, u32),
    housekeeping_at: Instant,
    buf: Vec<u8>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Associations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Associations")
            .field("associations", &self.table.len())
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl Associations {
    /// A listener's associations, none yet.
    pub fn new(
        settings: DtlsSettings,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        let cfg = |e: dimpl::Error| DtlsError::Config(e.to_string());
        // The PSK engine is there even without keys yet: a reload may
        // bring some.
        let psk_config = Arc::new(
            dimpl::Config::builder()
                .with_psk_server(None, settings.credentials.clone())
                .dtls12_cipher_suites(&[dimpl::crypto::Dtls12CipherSuite::PSK_AES128_CCM_8])
                .handshake_timeout(settings.handshake_timeout)
                .build()
                .map_err(cfg)?,
        );
        let cert_config = if settings.certificate.is_some() {
            let c = dimpl::Config::builder()
                .require_client_certificate(settings.require_client_certificate)
                .handshake_timeout(settings.handshake_timeout)
                .build()
                .map_err(cfg)?;
            Some(Arc::new(c))
        } else {
            None
        };
        Ok(Self {
            cookies: Cookies::new(now).map_err(|_| DtlsError::Random)?,
            settings,
            psk_config,
            cert_config,
            table: HashMap::new(),
            timers: BinaryHeap::new(),
            handshakes: 0,
            plaintext: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            verify_budget: (now, 0),
            housekeeping_at: now + Duration::from_secs(1),
            buf: vec![0; 2048],
            metrics,
        })
    }

    /// Associations held (handshakes included).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// No associations held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether `addr` has an established association.
    pub fn is_connected(&self, addr: &SocketAddr) -> bool {
        self.table.get(addr).is_some_and(|a| a.connected)
    }

    /// A datagram from `from` arrived on the DTLS socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if let Some(hello) = ClientHello::parse(data) {
            let handshaking = self.table.get(&from).is_some_and(|a| !a.connected);
            if !hello.has_cookie() || !handshaking {
                // A new handshake. A first ClientHello is answered without
                // state, even from an address with an association (a
                // spoofed one cannot end it); one with a valid cookie
                // replaces the association.
                return self.new_handshake(now, from, &hello, data);
            }
            // A retransmission during the handshake: the engine's.
        }
        let Some(a) = self.table.get_mut(&from) else {
            Metrics::inc(&self.metrics.dtls_dropped);
            return;
        };
        a.heard = now;
        let r = a.dtls.handle_timeout(now).and_then(|()| a.dtls.handle_packet(data));
        if let Err(e) = r {
            debug!(%from, "DTLS association ended: {e}");
            return self.remove(from, !self.is_connected(&from));
        }
        self.drain(now, from);
    }

    /// Sends `frame` (one MQTT-SN datagram) to `to`, encrypted; false when
    /// `to` has no established association.
    pub fn send(&mut self, now: Instant, to: SocketAddr, frame: &[u8]) -> bool {
        let Some(a) = self.table.get_mut(&to).filter(|a| a.connected) else {
            Metrics::inc(&self.metrics.dtls_unsendable);
            return false;
        };
        if let Err(e) = a.dtls.send_application_data(frame) {
            debug!(%to, "DTLS association ended: {e}");
            self.remove(to, false);
            return false;
        }
        self.drain(now, to);
        true
    }

    /// The next decrypted MQTT-SN datagram for the endpoint.
    pub fn poll_plaintext(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.plaintext.pop_front()
    }

    /// The next datagram for the DTLS socket.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next completed handshake: the address and who it is.
    pub fn poll_connected(&mut self) -> Option<(SocketAddr, Arc<str>)> {
        self.events.pop_front()
    }

    /// When [`Associations::handle_timeout`] is due next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, addr))) = self.timers.peek() {
            if self.table.get(&addr).is_some_and(|a| a.timeout == Some(t)) {
                return Some(t.min(self.housekeeping_at));
            }
            self.timers.pop();
        }
        (!self.table.is_empty()).then_some(self.housekeeping_at)
    }

    /// Retransmissions, handshake deadlines and idle associations.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, addr))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.table.get_mut(&addr).filter(|a| a.timeout == Some(t)) else {
                continue;
            };
            a.timeout = None;
            if let Err(e) = a.dtls.handle_timeout(now) {
                debug!(%addr, "DTLS association ended: {e}");
                let failed = !a.connected;
                self.remove(addr, failed);
                continue;
            }
            self.drain(now, addr);
        }
        if now >= self.housekeeping_at {
            self.housekeeping_at = now + Duration::from_secs(1);
            let idle = self.settings.idle_timeout;
            let handshake = self.settings.handshake_timeout;
            let gone: Vec<(SocketAddr, bool)> = self
                .table
                .iter()
                .filter(|(_, a)| {
                    now.saturating_duration_since(a.heard) >= idle
                        || (!a.connected && now.saturating_duration_since(a.started) >= handshake)
                })
                .map(|(addr, a)| (*addr, !a.connected))
                .collect();
            for (addr, failed) in gone {
                self.remove(addr, failed);
            }
        }
    }

    /// A ClientHello that starts a handshake: DTLS 1.3 when it offers it
    /// and the gateway has a certificate, DTLS 1.2 otherwise.
    fn new_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        data: &[u8],
    ) {
        // A ClientHello echoing a DTLS 1.2 cookie answers a
        // HelloVerifyRequest: DTLS 1.2's, even if it offers 1.3 too.
        let dtls13 = self.settings.versions.dtls13
            && self.settings.certificate.is_some()
            && hello.offers_dtls13()
            && hello.cookie().is_empty();
        if let Some(config) = self.cert_config.clone().filter(|_| dtls13) {
            if hello.has_cookie13() {
                return match self.cookies.verify13(now, from, hello, &config) {
                    Some(secret) => self.accept13(now, from, hello, data, secret, config),
                    None => Metrics::inc(&self.metrics.dtls_dropped),
                };
            }
            if !self.budget(now) {
                return;
            }
            let mut out = Vec::new();
            if self.cookies.hello_retry_request(now, from, hello, &config, &mut out) {
                self.spend();
                Metrics::inc(&self.metrics.dtls_hello_retry);
                self.transmits.push_back((from, out));
                return;
            }
            // Nothing in common for DTLS 1.3: DTLS 1.2 may still take it.
        }
        if !self.settings.versions.dtls12 {
            Metrics::inc(&self.metrics.dtls_dropped);
            return;
        }
        match self.cookies.verify(now, from, hello) {
            Some(secret) => self.accept(now, from, hello, data, secret),
            None => self.hello_verify(now, from, hello),
        }
    }

    /// Whether a stateless answer fits in this second's budget (counted
    /// as refused when not).
    fn budget(&mut self, now: Instant) -> bool {
        let (since, sent) = &mut self.verify_budget;
        if now.saturating_duration_since(*since) >= Duration::from_secs(1) {
            *since = now;
            *sent = 0;
        }
        if *sent >= self.settings.hello_verify_per_sec {
            Metrics::inc(&self.metrics.dtls_refused_limit);
            return false;
        }
        true
    }

    /// A stateless answer was sent.
    fn spend(&mut self) {
        self.verify_budget.1 += 1;
    }

    fn hello_verify(&mut self, now: Instant, from: SocketAddr, hello: &ClientHello<'_>) {
        if !self.budget(now) {
            return;
        }
        let mut out = [0u8; hello::HELLO_VERIFY_LEN];
        if let Some(n) = self.cookies.hello_verify_request(now, from, hello, &mut out) {
            self.spend();
            Metrics::inc(&self.metrics.dtls_hello_verify);
            self.transmits.push_back((from, out.get(..n).unwrap_or_default().to_vec()));
        }
    }

    /// Room for one more handshake, after `from`'s old association (if
    /// any) is gone.
    fn room(&mut self, from: SocketAddr) -> bool {
        if self.table.remove(&from).is_some() {
            // The sensor started over (a restart, a lost association).
            Metrics::dec(&self.metrics.dtls_associations);
        }
        if self.handshakes >= self.settings.max_handshakes
            || self.table.len() >= self.settings.max_associations
        {
            Metrics::inc(&self.metrics.dtls_refused_limit);
            return false;
        }
        true
    }

    /// A DTLS 1.3 ClientHello with a valid cookie: a new association,
    /// whose engine takes up after the stateless HelloRetryRequest.
    fn accept13(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        data: &[u8],
        secret: [u8; 32],
        config: Arc<dimpl::Config>,
    ) {
        let Some(cert) = self.settings.certificate.clone() else { return };
        if !self.room(from) {
            return;
        }
        let mut dtls = Dtls::new_13(config, cert, now);
        // The engine reads its clock (and draws its random) before any
        // packet: it must never see one first.
        if !dtls.continue_stateless_retry(secret, hello.record_seq())
            || dtls.handle_timeout(now).is_err()
        {
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        }
        if let Err(e) = dtls.handle_packet(data) {
            debug!(%from, "DTLS 1.3 handshake refused: {e}");
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        }
        self.insert(now, from, dtls, true);
    }

    /// A new association, in its handshake.
    fn insert(&mut self, now: Instant, from: SocketAddr, dtls: Dtls, dtls13: bool) {
        let who =
            if self.settings.require_client_certificate { Who::Unknown } else { Who::Anonymous };
        self.table.insert(
            from,
            Association {
                dtls,
                dtls13,
                connected: false,
                who,
                heard: now,
                started: now,
                timeout: None,
                close: false,
            },
        );
        self.handshakes += 1;
        Metrics::inc(&self.metrics.dtls_associations);
        self.drain(now, from);
    }

    /// A ClientHello with a valid cookie: a new association.
    fn accept(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        data: &[u8],
        secret: [u8; 32],
    ) {
        if !self.room(from) {
            return;
        }
        let psk = hello.offers(PSK_AES128_CCM_8).then(|| self.psk_config.clone());
        let mut dtls = match (psk, &self.cert_config, &self.settings.certificate) {
            (Some(c), _, _) => Dtls::new_12_psk(c, now),
            (None, Some(c), Some(cert)) if ECDHE_ECDSA.iter().any(|s| hello.offers(*s)) => {
                Dtls::new_12(c.clone(), cert.clone(), now)
            }
            _ => {
                Metrics::inc(&self.metrics.dtls_handshakes_failed);
                debug!(%from, "DTLS ClientHello offers no suite the gateway has keys for");
                return;
            }
        };
        dtls.set_server_cookie_secret(secret);
        // The engine reads its clock (and draws its random) here, before
        // any packet: it must never see one first.
        if dtls.handle_timeout(now).is_err() {
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        }
        // The engine answers the first ClientHello (the answer was sent
        // already, statelessly) and takes this one as its own.
        let Some(first) = hello.first_hello() else {
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        };
        if dtls.handle_packet(&first).is_err() {
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        }
        loop {
            match dtls.poll_output(&mut self.buf) {
                Output::Timeout(_) => break,
                Output::BufferTooSmall { needed } => self.buf.resize(needed, 0),
                _ => {}
            }
        }
        if let Err(e) = dtls.handle_packet(data) {
            debug!(%from, "DTLS handshake refused: {e}");
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
            return;
        }
        self.insert(now, from, dtls, false);
    }

    /// Takes everything the engine of `addr` has to say.
    fn drain(&mut self, now: Instant, addr: SocketAddr) {
        let Some(a) = self.table.get_mut(&addr) else { return };
        let mut frames: Vec<Bytes> = Vec::new();
        let mut established = false;
        loop {
            match a.dtls.poll_output(&mut self.buf) {
                Output::Packet(p) => self.transmits.push_back((addr, p.to_vec())),
                Output::BufferTooSmall { needed } => self.buf.resize(needed, 0),
                Output::Timeout(t) => {
                    if a.timeout != Some(t) {
                        a.timeout = Some(t);
                        self.timers.push(Reverse((t, addr)));
                    }
                    break;
                }
                Output::PeerCert(der) => {
                    a.who = match self.settings.credentials.get().certificate_client(der) {
                        Some(id) => Who::Client(id),
                        None if self.settings.require_client_certificate => Who::Unknown,
                        None => Who::Anonymous,
                    };
                }
                Output::Connected => {
                    if let Some(id) = a.dtls.peer_psk_identity() {
                        a.who = match std::str::from_utf8(id) {
                            Ok(id) => Who::Client(Arc::from(id)),
                            Err(_) => Who::Unknown,
                        };
                    }
                    if a.who == Who::Unknown {
                        Metrics::inc(&self.metrics.dtls_refused_certificate);
                        a.close = true;
                    }
                    a.connected = true;
                    established = true;
                }
                Output::ApplicationData(d) => frames.push(Bytes::copy_from_slice(d)),
                Output::CloseNotify => a.close = true,
                _ => {}
            }
        }
        if established {
            self.handshakes = self.handshakes.saturating_sub(1);
            let (counter, version) = if a.dtls13 {
                (&self.metrics.dtls_handshakes_13, "1.3")
            } else {
                (&self.metrics.dtls_handshakes, "1.2")
            };
            Metrics::inc(counter);
            let who = match &a.who {
                Who::Client(id) => Arc::clone(id),
                _ => Arc::from(""),
            };
            info!(%addr, client = %who, version, "DTLS handshake complete");
            self.events.push_back((addr, who));
        }
        if a.close {
            return self.remove(addr, false);
        }
        let who = a.who.clone();
        for frame in frames {
            self.admit(now, addr, &who, frame);
        }
    }

    /// A decrypted frame: to the endpoint, unless its ClientId is not the
    /// peer's to use.
    fn admit(&mut self, now: Instant, addr: SocketAddr, who: &Who, frame: Bytes) {
        let Ok(f) = Frame::decode(&frame) else {
            // The endpoint counts malformed datagrams.
            self.plaintext.push_back((addr, frame));
            return;
        };
        if f.forwarder.is_some() {
            Metrics::inc(&self.metrics.dtls_refused_identity);
            return;
        }
        let named = match f.packet {
            Packet::Connect(c) => Some((c.client_id, true)),
            Packet::PingReq(Some(id)) => Some((id, false)),
            _ => None,
        };
        if let Some((id, connect)) = named {
            let creds = self.settings.credentials.get();
            let allowed = match who {
                Who::Client(me) => me.as_bytes() == id,
                Who::Anonymous => !creds.has_dtls_credentials(id),
                Who::Unknown => false,
            };
            if !allowed {
                Metrics::inc(&self.metrics.dtls_refused_identity);
                info!(%addr, "DTLS peer refused: the ClientId is not the one it authenticated as");
                if connect {
                    let mut out = [0u8; 8];
                    if let Ok(n) = Packet::ConnAck(ReturnCode::NotSupported).encode(&mut out) {
                        self.send(now, addr, out.get(..n).unwrap_or_default());
                    }
                }
                return;
            }
        }
        self.plaintext.push_back((addr, frame));
    }

    fn remove(&mut self, addr: SocketAddr, failed: bool) {
        let Some(a) = self.table.remove(&addr) else { return };
        if !a.connected {
            self.handshakes = self.handshakes.saturating_sub(1);
        }
        if failed {
            Metrics::inc(&self.metrics.dtls_handshakes_failed);
        }
        Metrics::dec(&self.metrics.dtls_associations);
    }
}

#[cfg(test)]
mod tests;
