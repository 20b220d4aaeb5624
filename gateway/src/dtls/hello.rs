//! The stateless half of a DTLS handshake: reading a ClientHello, the
//! gateway's cookies, and the answer to a first ClientHello sent without
//! keeping anything: a HelloVerifyRequest for DTLS 1.2 (RFC 6347 4.2.1),
//! a HelloRetryRequest with a cookie for DTLS 1.3 (RFC 9147 5.1).
//!
//! A ClientHello without a valid cookie gets that answer, built from the
//! datagram alone and never larger than the ClientHello; only a
//! ClientHello that echoes a cookie made for its source address in the
//! last two minutes creates a DTLS engine. Cookies are made with a secret
//! derived from the gateway's random key, the minute and the source
//! address. DTLS 1.2's is trunc_32(HMAC-SHA256(secret, client_random));
//! DTLS 1.3's (made by the DTLS crate) also carries the hash of the first
//! ClientHello and the suite and group the HelloRetryRequest named,
//! authenticated, so that the engine, given the same secret, rebuilds the
//! transcript of the exchange it never saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::hmac;

/// The record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// The handshake header: type, length, message_seq, fragment offset and
/// length.
const HANDSHAKE_HEADER: usize = 12;
/// Content type of handshake records.
const HANDSHAKE: u8 = 22;
/// Handshake type of ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Handshake type of HelloVerifyRequest.
const HELLO_VERIFY_REQUEST: u8 = 3;
/// Handshake type of ServerHello (a HelloRetryRequest is one).
const SERVER_HELLO: u8 = 2;
/// DTLS 1.2's version octets.
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
/// DTLS 1.3's version octets, in a supported_versions extension.
const DTLS_1_3: [u8; 2] = [0xfe, 0xfc];
/// Extension type of supported_versions.
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// Extension type of cookie (DTLS 1.3).
const EXT_COOKIE: u16 = 44;
/// DTLS 1.0's version octets, which a HelloVerifyRequest carries.
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
/// Length of the cookies made here.
pub const COOKIE_LEN: usize = 32;
/// Length of a HelloVerifyRequest with such a cookie.
pub const HELLO_VERIFY_LEN: usize = RECORD_HEADER + HANDSHAKE_HEADER + 3 + COOKIE_LEN;
/// How long one cookie secret lasts; a cookie is good for one or two.
const COOKIE_PERIOD: Duration = Duration::from_secs(60);

/// A checked view of a datagram that starts with an unfragmented
/// ClientHello record.
#[derive(Debug, Clone, Copy)]
pub struct ClientHello<'a> {
    record: &'a [u8],
    record_seq: u64,
    message_seq: u16,
    random: &'a [u8],
    cookie: &'a [u8],
    cookie_at: usize,
    suites: &'a [u8],
    body: &'a [u8],
    dtls13: bool,
    cookie13: bool,
}

impl<'a> ClientHello<'a> {
    /// The ClientHello at the start of `datagram`, if there is a whole
    /// one in its first record. Fragmented ClientHellos are not taken.
    pub fn parse(datagram: &'a [u8]) -> Option<Self> {
        let header = datagram.get(..RECORD_HEADER)?;
        if header[0] != HANDSHAKE || header[3..5] != [0, 0] {
            return None;
        }
        let record_seq = header[5..11].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
        let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
        let record = datagram.get(..RECORD_HEADER + len)?;
        let hs = record.get(RECORD_HEADER..)?;
        let hh = hs.get(..HANDSHAKE_HEADER)?;
        let length = u24(&hh[1..4]);
        if hh[0] != CLIENT_HELLO || u24(&hh[6..9]) != 0 || u24(&hh[9..12]) != length {
            return None;
        }
        let message_seq = u16::from_be_bytes([hh[4], hh[5]]);
        let body_at = RECORD_HEADER + HANDSHAKE_HEADER;
        let body = record.get(body_at..body_at + length)?;
        // version(2) random(32) session_id<0..32> cookie<0..255> suites<2..>
        let random = body.get(2..34)?;
        let sid_len = usize::from(*body.get(34)?);
        let at = 35 + sid_len;
        let cookie_len = usize::from(*body.get(at)?);
        let cookie = body.get(at + 1..at + 1 + cookie_len)?;
        let at = at + 1 + cookie_len;
        let suites_len = usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]));
        let suites = body.get(at + 2..at + 2 + suites_len)?;
        let (dtls13, cookie13) = extensions(body.get(at + 2 + suites_len..)?);
        Some(Self {
            record,
            record_seq,
            message_seq,
            random,
            cookie,
            cookie_at: body_at + 35 + sid_len + 1,
            suites,
            body,
            dtls13,
            cookie13,
        })
    }

    /// Whether it offers DTLS 1.3 (in supported_versions).
    pub fn offers_dtls13(&self) -> bool {
        self.dtls13
    }

    /// Whether it echoes a cookie: DTLS 1.2's field, or DTLS 1.3's
    /// extension.
    pub fn has_cookie(&self) -> bool {
        !self.cookie.is_empty() || self.cookie13
    }

    /// Whether it echoes a DTLS 1.3 cookie (the extension).
    pub fn has_cookie13(&self) -> bool {
        self.cookie13
    }

    /// The record number of its record.
    pub fn record_seq(&self) -> u64 {
        self.record_seq
    }

    /// The cookie it echoes (empty in a first ClientHello).
    pub fn cookie(&self) -> &'a [u8] {
        self.cookie
    }

    /// Whether it offers the cipher suite `suite`.
    pub fn offers(&self, suite: u16) -> bool {
        self.suites.chunks_exact(2).any(|s| u16::from_be_bytes([s[0], s[1]]) == suite)
    }

    /// The first ClientHello this one answers a HelloVerifyRequest to, as
    /// the DTLS engine must see it before this one: message_seq 0, the
    /// record number before this one's and a cookie that is not its own,
    /// so that the engine answers it (the answer is thrown away) and then
    /// takes this one, with message_seq 1, as the handshake's start. None
    /// when there is no such ClientHello (a record number of 0, a
    /// message_seq other than 1, no cookie).
    pub fn first_hello(&self) -> Option<Vec<u8>> {
        if self.message_seq != 1 || self.record_seq == 0 || self.cookie.is_empty() {
            return None;
        }
        let mut out = self.record.to_vec();
        let seq = (self.record_seq - 1).to_be_bytes();
        out.get_mut(5..11)?.copy_from_slice(seq.get(2..8)?);
        out.get_mut(RECORD_HEADER + 4..RECORD_HEADER + 6)?.copy_from_slice(&[0, 0]);
        *out.get_mut(self.cookie_at)? ^= 0xff;
        Some(out)
    }
}

/// Whether the extensions after the cipher suites (compression methods
/// first) offer DTLS 1.3, and whether they hold a cookie. Anything
/// malformed: neither.
fn extensions(rest: &[u8]) -> (bool, bool) {
    let scan = || -> Option<(bool, bool)> {
        let at = 1 + usize::from(*rest.first()?);
        let len = usize::from(u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]));
        let mut exts = rest.get(at + 2..at + 2 + len)?;
        let (mut dtls13, mut cookie) = (false, false);
        while !exts.is_empty() {
            let kind = u16::from_be_bytes([*exts.first()?, *exts.get(1)?]);
            let len = usize::from(u16::from_be_bytes([*exts.get(2)?, *exts.get(3)?]));
            let data = exts.get(4..4 + len)?;
            match kind {
                EXT_SUPPORTED_VERSIONS => {
                    let list = data.get(1..1 + usize::from(*data.first()?))?;
                    dtls13 |= list.chunks_exact(2).any(|v| v == DTLS_1_3);
                }
                EXT_COOKIE => cookie = true,
                _ => {}
            }
            exts = exts.get(4 + len..)?;
        }
        Some((dtls13, cookie))
    };
    scan().unwrap_or((false, false))
}

fn u24(b: &[u8]) -> usize {
    b.iter().fold(0usize, |n, x| n << 8 | usize::from(*x))
}

/// The gateway's cookies: a random key, and secrets derived from it per
/// minute and source address.
pub struct Cookies {
    key: hmac::Key,
    base: Instant,
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies(***)")
    }
}

impl Cookies {
    /// Cookies under a fresh random key; `now` starts the first period.
    pub fn new(now: Instant) -> Result<Self, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)?;
        Ok(Self { key, base: now })
    }

    fn period(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_secs() / COOKIE_PERIOD.as_secs()
    }

    /// The secret of period `period` for `addr`.
    fn secret(&self, period: u64, addr: SocketAddr) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&period.to_be_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&addr.port().to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The cookie for `random` under `secret`, as the DTLS engine makes it.
    fn cookie(secret: &[u8; 32], random: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), random)
    }

    /// The secret `hello`'s cookie was made with for `from`, if it is one
    /// of the last two periods'.
    pub fn verify(
        &self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
    ) -> Option<[u8; 32]> {
        if hello.cookie.len() != COOKIE_LEN {
            return None;
        }
        let period = self.period(now);
        [Some(period), period.checked_sub(1)].into_iter().flatten().find_map(|p| {
            let secret = self.secret(p, from);
            let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
            hmac::verify(&key, hello.random, hello.cookie).ok().map(|()| secret)
        })
    }

    /// The secret `hello`'s DTLS 1.3 cookie was made with for `from` by
    /// [`Cookies::hello_retry_request`] with `config`, if it is one of the
    /// last two periods'.
    pub fn verify13(
        &self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        config: &dimpl::Config,
    ) -> Option<[u8; 32]> {
        if !hello.cookie13 {
            return None;
        }
        let period = self.period(now);
        [Some(period), period.checked_sub(1)].into_iter().flatten().find_map(|p| {
            let secret = self.secret(p, from);
            dimpl::dtls13_retry_cookie_valid(config, &secret, hello.body).then_some(secret)
        })
    }

    /// Writes the DTLS 1.3 HelloRetryRequest for `hello` from `from` into
    /// `out` (a record with the ClientHello's record number and
    /// message_seq, RFC 9147 5.1), as a DTLS 1.3 server with `config`
    /// would answer it; false when the server would not, or the answer
    /// would be larger than the ClientHello.
    pub fn hello_retry_request(
        &self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        config: &dimpl::Config,
        out: &mut Vec<u8>,
    ) -> bool {
        let secret = self.secret(self.period(now), from);
        let mut body = Vec::new();
        if dimpl::dtls13_stateless_hello_retry_request(config, &secret, hello.body, &mut body)
            .is_none()
        {
            return false;
        }
        let len = RECORD_HEADER + HANDSHAKE_HEADER + body.len();
        let (Some(seq), Ok(n)) = (hello.record.get(5..11), u32::try_from(body.len())) else {
            return false;
        };
        if len > hello.record.len() {
            return false;
        }
        let n = n.to_be_bytes();
        out.clear();
        out.push(HANDSHAKE);
        out.extend_from_slice(&DTLS_1_2);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(seq);
        out.extend_from_slice(&((HANDSHAKE_HEADER + body.len()) as u16).to_be_bytes());
        out.push(SERVER_HELLO);
        out.extend_from_slice(&n[1..]);
        out.extend_from_slice(&hello.message_seq.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&n[1..]);
        out.extend_from_slice(&body);
        true
    }

    /// Writes the HelloVerifyRequest for `hello` from `from` into `out`;
    /// its length, or None when `out` is too short or the answer would be
    /// larger than the ClientHello.
    pub fn hello_verify_request(
        &self,
        now: Instant,
        from: SocketAddr,
        hello: &ClientHello<'_>,
        out: &mut [u8],
    ) -> Option<usize> {
        if hello.record.len() < HELLO_VERIFY_LEN {
            return None;
        }
        let out = out.get_mut(..HELLO_VERIFY_LEN)?;
        let secret = self.secret(self.period(now), from);
        let tag = Self::cookie(&secret, hello.random);
        let cookie = tag.as_ref().get(..COOKIE_LEN)?;
        let body_len = 3 + COOKIE_LEN;
        out[0] = HANDSHAKE;
        out[1..3].copy_from_slice(&DTLS_1_0);
        out[3..5].copy_from_slice(&[0, 0]);
        // RFC 6347 4.2.1: the ClientHello's record number.
        out[5..11].copy_from_slice(hello.record.get(5..11)?);
        out[11..13].copy_from_slice(&((HANDSHAKE_HEADER + body_len) as u16).to_be_bytes());
        let hs = &mut out[RECORD_HEADER..];
        hs[0] = HELLO_VERIFY_REQUEST;
        hs[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        hs[4..6].copy_from_slice(&hello.message_seq.to_be_bytes());
        hs[6..9].copy_from_slice(&[0, 0, 0]);
        hs[9..12].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        hs[12..14].copy_from_slice(&DTLS_1_0);
        hs[14] = COOKIE_LEN as u8;
        hs[15..15 + COOKIE_LEN].copy_from_slice(cookie);
        Some(HELLO_VERIFY_LEN)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A ClientHello record: record number `rseq`, message_seq `mseq`.
    pub(crate) fn hello(rseq: u8, mseq: u8, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend((0..32).map(|i| i as u8));
        body.push(0);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        let mut hs = vec![CLIENT_HELLO, 0, 0, body.len() as u8, 0, mseq, 0, 0, 0, 0, 0];
        hs.push(body.len() as u8);
        hs.extend(body);
        let mut rec = vec![HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, rseq, 0, hs.len() as u8];
        rec.extend(hs);
        rec
    }

    #[test]
    fn a_cookie_is_good_for_its_address_and_two_minutes() {
        let t0 = Instant::now();
        let c = Cookies::new(t0).unwrap();
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let ch0 = hello(0, 0, &[]);
        let h = ClientHello::parse(&ch0).unwrap();
        assert!(h.offers(0xc0a8) && !h.offers(0xc02b));
        let mut out = [0u8; 128];
        let n = c.hello_verify_request(t0, a, &h, &mut out).unwrap();
        assert_eq!(n, HELLO_VERIFY_LEN);
        assert!(n <= ch0.len(), "no amplification");
        let cookie = out[n - COOKIE_LEN..n].to_vec();
        let ch2 = hello(1, 1, &cookie);
        let h2 = ClientHello::parse(&ch2).unwrap();
        assert!(c.verify(t0, a, &h2).is_some());
        assert!(c.verify(t0 + Duration::from_secs(119), a, &h2).is_some());
        assert!(c.verify(t0 + Duration::from_secs(121), a, &h2).is_none());
        assert!(c.verify(t0, b, &h2).is_none(), "bound to the source address");
        let mut forged = cookie.clone();
        forged[0] ^= 1;
        let ch2 = hello(1, 1, &forged);
        assert!(c.verify(t0, a, &ClientHello::parse(&ch2).unwrap()).is_none());
    }

    #[test]
    fn the_first_hello_is_rebuilt_before_the_second() {
        let ch2 = hello(1, 1, &[7; 32]);
        let h = ClientHello::parse(&ch2).unwrap();
        let ch0 = h.first_hello().unwrap();
        let h0 = ClientHello::parse(&ch0).unwrap();
        assert_eq!(h0.message_seq, 0);
        assert_eq!(h0.record_seq, 0);
        assert_ne!(h0.cookie(), h.cookie());
        assert!(ClientHello::parse(&hello(0, 1, &[7; 32])).unwrap().first_hello().is_none());
        assert!(ClientHello::parse(&hello(1, 1, &[])).unwrap().first_hello().is_none());
    }

    /// `hello(0, 0, &[])` with these extensions.
    fn hello_with(exts: &[u8]) -> Vec<u8> {
        let mut rec = hello(0, 0, &[]);
        let mut tail = (exts.len() as u16).to_be_bytes().to_vec();
        tail.extend_from_slice(exts);
        rec.extend_from_slice(&tail);
        let grow = |b: &mut [u8], at: usize, n: usize| {
            let v = u16::from_be_bytes([b[at], b[at + 1]]) as usize + n;
            b[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
        };
        grow(&mut rec, 11, tail.len());
        grow(&mut rec, RECORD_HEADER + 2, tail.len());
        grow(&mut rec, RECORD_HEADER + 10, tail.len());
        rec
    }

    #[test]
    fn dtls13_offers_and_cookies_are_read_from_the_extensions() {
        let versions = [0, 43, 0, 5, 4, 0xfe, 0xfc, 0xfe, 0xfd];
        let cookie = [0, 44, 0, 4, 0, 2, 7, 7];
        let h = hello_with(&versions);
        let h = ClientHello::parse(&h).unwrap();
        assert!(h.offers_dtls13() && !h.has_cookie13() && !h.has_cookie());
        let both = [&versions[..], &cookie[..]].concat();
        let h = hello_with(&both);
        let h = ClientHello::parse(&h).unwrap();
        assert!(h.offers_dtls13() && h.has_cookie13() && h.has_cookie());
        let only12 = [0, 43, 0, 3, 2, 0xfe, 0xfd];
        assert!(!ClientHello::parse(&hello_with(&only12)).unwrap().offers_dtls13());
        // A malformed extension list: neither.
        let cut = [0, 43, 0, 9, 4, 0xfe, 0xfc];
        let h = hello_with(&cut);
        let h = ClientHello::parse(&h).unwrap();
        assert!(!h.offers_dtls13() && !h.has_cookie13());
        assert!(!ClientHello::parse(&hello(0, 0, &[])).unwrap().offers_dtls13());
    }

    #[test]
    fn anything_else_is_not_a_client_hello() {
        let ch = hello(0, 0, &[]);
        for n in 0..ch.len() {
            assert!(ClientHello::parse(&ch[..n]).is_none(), "cut at {n}");
        }
        let mut other = ch.clone();
        other[0] = 23;
        assert!(ClientHello::parse(&other).is_none());
        let mut epoch1 = ch.clone();
        epoch1[4] = 1;
        assert!(ClientHello::parse(&epoch1).is_none());
        let mut fragment = ch.clone();
        fragment[RECORD_HEADER + 11] -= 1;
        assert!(ClientHello::parse(&fragment).is_none());
    }
}
