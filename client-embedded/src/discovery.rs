//! Gateway discovery (spec 6.1): ADVERTISE tracking, SEARCHGW after a
//! random delay with exponential back-off, cancelled when another client
//! searches, GWINFO, answering other clients' SEARCHGW for a known gateway,
//! and a gateway lost after N_ADV missed advertisements.
//!
//! Sans-IO like the client: datagrams come in with their source address
//! (any `Copy + PartialEq` type the application uses), datagrams go out to
//! the broadcast address or to one peer.

use mqttsn_codec::{GwInfo, Packet};

use crate::buf::Buf;
use crate::client::Millis;

/// Discovery timers (spec 7.2 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// T_SEARCHGW: the longest random delay before a SEARCHGW, ms.
    pub search_delay_ms: u32,
    /// The longest back-off between two SEARCHGW, ms.
    pub max_backoff_ms: u32,
    /// T_GWINFO: the longest random delay before answering another
    /// client's SEARCHGW with GWINFO, ms.
    pub gwinfo_delay_ms: u32,
    /// N_ADV: advertisements missed before the gateway is lost.
    pub n_adv: u8,
    /// The Radius of SEARCHGW.
    pub radius: u8,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            search_delay_ms: 5_000,
            max_backoff_ms: 15 * 60_000,
            gwinfo_delay_ms: 5_000,
            n_adv: 3,
            radius: 1,
        }
    }
}

/// What discovery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryEvent<A> {
    /// A gateway answered (GWINFO) or advertised itself (ADVERTISE).
    GatewayFound {
        /// Its GwId.
        gw_id: u8,
        /// Where it is.
        addr: A,
    },
    /// The known gateway missed N_ADV advertisements.
    GatewayLost {
        /// Its GwId.
        gw_id: u8,
    },
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<A> {
    /// The broadcast (or multicast) address of the network.
    Broadcast,
    /// One peer.
    To(A),
}

#[derive(Debug, Clone, Copy)]
struct Known<A> {
    gw_id: u8,
    addr: A,
    /// ADVERTISE period, when the gateway advertises.
    period_ms: Option<u64>,
    last_heard: Millis,
}

/// The discovery state machine.
pub struct Discovery<A: Copy + PartialEq> {
    settings: DiscoverySettings,
    gateway: Option<Known<A>>,
    search_at: Option<Millis>,
    backoff_ms: u64,
    gwinfo_at: Option<Millis>,
    out: Option<(Target<A>, Buf<8>)>,
    rng: u32,
}

impl<A: Copy + PartialEq> Discovery<A> {
    /// Discovery with these timers; `seed` feeds the random delays (use a
    /// per-device value, e.g. from the MAC address).
    pub fn new(settings: DiscoverySettings, seed: u32) -> Self {
        Self {
            settings,
            gateway: None,
            search_at: None,
            backoff_ms: u64::from(settings.search_delay_ms.max(1)),
            gwinfo_at: None,
            out: None,
            rng: seed | 1,
        }
    }

    /// The gateway known now.
    pub fn gateway(&self) -> Option<(u8, A)> {
        self.gateway.map(|g| (g.gw_id, g.addr))
    }

    fn random(&mut self, below: u64) -> u64 {
        // xorshift32: enough to spread clients apart.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        u64::from(self.rng) % below.max(1)
    }

    /// Starts searching: SEARCHGW after a random delay (unless a gateway
    /// advertises first).
    pub fn search(&mut self, now: Millis) {
        let delay = self.random(u64::from(self.settings.search_delay_ms));
        self.search_at = Some(now + delay);
    }

    /// A datagram from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        from: A,
        datagram: &[u8],
    ) -> Option<DiscoveryEvent<A>> {
        match Packet::decode(datagram).ok()? {
            Packet::Advertise(a) => {
                let period = u64::from(a.duration) * 1000;
                self.found(now, a.gw_id, from, Some(period))
            }
            Packet::GwInfo(GwInfo { gw_id, gw_addr: [] }) => self.found(now, gw_id, from, None),
            Packet::SearchGw { .. } => {
                // Another client searches: ours would add nothing now.
                if let Some(at) = self.search_at.as_mut() {
                    *at = now + self.backoff_ms;
                }
                if self.gateway.is_some() && self.gwinfo_at.is_none() {
                    let delay = self.random(u64::from(self.settings.gwinfo_delay_ms));
                    self.gwinfo_at = Some(now + delay);
                }
                None
            }
            Packet::GwInfo(_) => {
                // Another client answered for us: no GWINFO needed.
                self.gwinfo_at = None;
                None
            }
            _ => None,
        }
    }

    fn found(
        &mut self,
        now: Millis,
        gw_id: u8,
        addr: A,
        period_ms: Option<u64>,
    ) -> Option<DiscoveryEvent<A>> {
        let new = self.gateway.is_none_or(|g| g.gw_id != gw_id || g.addr != addr);
        let period_ms = period_ms.or(self.gateway.and_then(|g| g.period_ms));
        self.gateway = Some(Known { gw_id, addr, period_ms, last_heard: now });
        self.search_at = None;
        self.backoff_ms = u64::from(self.settings.search_delay_ms.max(1));
        new.then_some(DiscoveryEvent::GatewayFound { gw_id, addr })
    }

    /// Time has reached [`Discovery::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Millis) -> Option<DiscoveryEvent<A>> {
        if self.search_at.is_some_and(|t| now >= t) {
            let search = Packet::SearchGw { radius: self.settings.radius };
            self.out = Buf::encode(&search).map(|b| (Target::Broadcast, b));
            self.backoff_ms = (self.backoff_ms * 2).min(u64::from(self.settings.max_backoff_ms));
            self.search_at = Some(now + self.backoff_ms);
        }
        if self.gwinfo_at.is_some_and(|t| now >= t) {
            self.gwinfo_at = None;
            if let Some(g) = self.gateway {
                let info = Packet::GwInfo(GwInfo { gw_id: g.gw_id, gw_addr: &[] });
                self.out = Buf::encode(&info).map(|b| (Target::Broadcast, b));
            }
        }
        let g = self.gateway?;
        let period = g.period_ms?;
        if now > g.last_heard + period * u64::from(self.settings.n_adv) {
            self.gateway = None;
            self.search(now);
            return Some(DiscoveryEvent::GatewayLost { gw_id: g.gw_id });
        }
        None
    }

    /// The next datagram: where it goes and its length in `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(Target<A>, usize)> {
        let (target, d) = self.out.take()?;
        let bytes = d.as_slice();
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some((target, bytes.len()))
    }

    /// When [`Discovery::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let lost = self.gateway.and_then(|g| {
            g.period_ms.map(|p| g.last_heard + p * u64::from(self.settings.n_adv) + 1)
        });
        [self.search_at, self.gwinfo_at, lost].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enc(p: Packet<'_>) -> ([u8; 16], usize) {
        let mut b = [0u8; 16];
        let n = p.encode(&mut b).unwrap();
        (b, n)
    }

    #[test]
    fn search_backs_off_and_gwinfo_ends_it() {
        let mut d: Discovery<u8> = Discovery::new(DiscoverySettings::default(), 7);
        d.search(0);
        let first = d.poll_timeout().unwrap();
        assert!(first < 5_000);
        d.handle_timeout(first);
        let mut buf = [0u8; 8];
        assert_eq!(d.poll_transmit(&mut buf), Some((Target::Broadcast, 3)));
        assert_eq!(Packet::decode(&buf[..3]).unwrap(), Packet::SearchGw { radius: 1 });
        let second = d.poll_timeout().unwrap();
        assert!(second - first >= 10_000, "exponential back-off");
        let (b, n) = enc(Packet::GwInfo(GwInfo { gw_id: 3, gw_addr: &[] }));
        assert_eq!(
            d.handle_datagram(second - 1, 9, &b[..n]),
            Some(DiscoveryEvent::GatewayFound { gw_id: 3, addr: 9 })
        );
        assert_eq!(d.poll_timeout(), None, "found: no more searching");
    }

    #[test]
    fn another_clients_searchgw_defers_ours_and_we_answer_for_a_known_gateway() {
        let mut d: Discovery<u8> = Discovery::new(DiscoverySettings::default(), 11);
        d.search(0);
        let planned = d.poll_timeout().unwrap();
        let (b, n) = enc(Packet::SearchGw { radius: 1 });
        d.handle_datagram(1, 5, &b[..n]);
        assert!(d.poll_timeout().unwrap() > planned, "deferred");
        // Now a gateway advertises; another client searches; we answer.
        let (a, m) = enc(Packet::Advertise(mqttsn_codec::Advertise { gw_id: 1, duration: 60 }));
        d.handle_datagram(2, 9, &a[..m]);
        d.handle_datagram(3, 5, &b[..n]);
        let at = d.poll_timeout().unwrap();
        d.handle_timeout(at);
        let mut buf = [0u8; 8];
        let (target, len) = d.poll_transmit(&mut buf).unwrap();
        assert_eq!(target, Target::Broadcast);
        assert_eq!(
            Packet::decode(&buf[..len]).unwrap(),
            Packet::GwInfo(GwInfo { gw_id: 1, gw_addr: &[] })
        );
    }

    #[test]
    fn gateway_lost_after_n_adv_missed_advertisements() {
        let mut d: Discovery<u8> = Discovery::new(DiscoverySettings::default(), 3);
        let (a, m) = enc(Packet::Advertise(mqttsn_codec::Advertise { gw_id: 2, duration: 10 }));
        assert!(d.handle_datagram(0, 4, &a[..m]).is_some());
        assert_eq!(d.handle_datagram(10_000, 4, &a[..m]), None, "same gateway again");
        assert_eq!(d.handle_timeout(39_000), None);
        assert_eq!(d.handle_timeout(40_001), Some(DiscoveryEvent::GatewayLost { gw_id: 2 }));
        assert!(d.gateway().is_none());
        assert!(d.poll_timeout().is_some(), "searching again");
    }
}
