//! Admission under a flood: what one source address, and all of them
//! together, may make the gateway do before it has proven anything.
//!
//! Any host that can send a datagram can claim any source address, so the
//! gateway bounds, per source and in all:
//!
//! - CONNECTs: token buckets (each CONNECT may open a broker connection);
//! - sessions one source holds at once;
//! - replies to sources without a session (GWINFO, a refusing CONNACK,
//!   DISCONNECT): token buckets, and never larger than the datagram that
//!   caused them, so a forged source cannot be flooded through the gateway.
//!
//! A source is an IPv4 address, or the /64 network of an IPv6 address (a
//! host on IPv6 has a whole /64 to send from). Sensors behind one NAT or
//! one forwarder share their source. The state is shared by the workers
//! and touched only by CONNECTs and by replies to unknown senders, never
//! by a connected sensor's traffic. Time is given (`now`), so every bound
//! is tested with virtual time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cidr::Cidr;

/// A rate: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// The most tokens kept.
    pub burst: u32,
}

/// The bounds; `None` is no bound.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    /// Sources on these networks are not bounded at all (by default the
    /// loopback networks, which no remote host can send from).
    pub exempt: Vec<Cidr>,
    /// Sessions one source may hold at once.
    pub sessions_per_source: Option<u32>,
    /// CONNECTs from one source.
    pub connect_per_source: Option<Rate>,
    /// CONNECTs from all sources together.
    pub connect: Option<Rate>,
    /// Replies to one source without a session.
    pub reply_per_source: Option<Rate>,
    /// Replies to all sources without a session together.
    pub reply: Option<Rate>,
    /// Sessions waiting for their broker connection (or for the sensor's
    /// will handshake) at once, all sources together.
    pub connecting: Option<usize>,
    /// A session that moves to a new address (a wake-up PINGREQ with its
    /// ClientId, a CONNECT with CleanSession false) gets nothing the
    /// gateway originates there until that address has proven it receives
    /// (see `endpoint::moved`).
    pub verify_moves: bool,
}

impl Limits {
    /// The bounds of a gateway exposed to any network, which a Raspberry
    /// Pi survives a flood under (the configuration's defaults).
    pub fn exposed() -> Self {
        Self {
            exempt: ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect(),
            sessions_per_source: Some(1000),
            connect_per_source: Some(Rate { per_sec: 50.0, burst: 100 }),
            connect: Some(Rate { per_sec: 1000.0, burst: 2000 }),
            reply_per_source: Some(Rate { per_sec: 10.0, burst: 20 }),
            reply: Some(Rate { per_sec: 1000.0, burst: 2000 }),
            connecting: Some(500),
            verify_moves: true,
        }
    }
}

/// A token bucket. Starts full.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes one token at `now`, if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let burst = f64::from(rate.burst.max(1));
        let tokens = match self.at {
            None => burst,
            Some(at) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                (self.tokens + dt * rate.per_sec.max(0.0)).min(burst)
            }
        };
        self.at = Some(now.max(self.at.unwrap_or(now)));
        if tokens >= 1.0 {
            self.tokens = tokens - 1.0;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

/// A source: an IPv4 address, or an IPv6 address's /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses too).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6([u8; 8]),
}

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Self::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Why a CONNECT is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source sent CONNECTs faster than allowed.
    SourceConnectRate,
    /// All sources together sent CONNECTs faster than allowed.
    ConnectRate,
    /// Its source holds as many sessions as it may.
    SourceSessions,
    /// As many sessions as allowed are waiting for their broker
    /// connection.
    Connecting,
}

impl Refusal {
    /// A short, stable name for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SourceConnectRate => "address_connect_rate",
            Self::ConnectRate => "connect_rate",
            Self::SourceSessions => "address_sessions",
            Self::Connecting => "connects_in_progress",
        }
    }

    /// Every refusal, in the order of [`Refusal::index`].
    pub const ALL: [Refusal; 4] =
        [Self::SourceConnectRate, Self::ConnectRate, Self::SourceSessions, Self::Connecting];

    /// Its place in [`Refusal::ALL`] (for a counter per refusal).
    pub const fn index(self) -> usize {
        match self {
            Self::SourceConnectRate => 0,
            Self::ConnectRate => 1,
            Self::SourceSessions => 2,
            Self::Connecting => 3,
        }
    }
}

/// The outcome of a moved session's return-routability check (see
/// `endpoint::moved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The new address echoed the probe: what was withheld went there.
    Verified,
    /// The session moved on, or back, or ended before the new address
    /// echoed the probe: what was withheld was discarded.
    Failed,
    /// The session has no topic name a probe could carry (only predefined
    /// and short topics): its datagrams went to the new address unchecked.
    Unverifiable,
}

impl Check {
    /// A short, stable name for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Failed => "failed",
            Self::Unverifiable => "unverifiable",
        }
    }

    /// Every outcome, in the order of [`Check::index`].
    pub const ALL: [Check; 3] = [Self::Verified, Self::Failed, Self::Unverifiable];

    /// Its place in [`Check::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::Verified => 0,
            Self::Failed => 1,
            Self::Unverifiable => 2,
        }
    }
}

#[derive(Debug, Default)]
struct PerSource {
    connects: Bucket,
    replies: Bucket,
    sessions: u32,
    seen: Option<Instant>,
}

/// The most sources without a session that are remembered; beyond, the
/// least recent are forgotten, and meanwhile new ones share one entry.
const MAX_SOURCES: usize = 65_536;

/// A source unheard this long and without a session is forgotten first.
const FORGET_AFTER: Duration = Duration::from_secs(10);

/// The table of sources is swept for forgettable ones at most this often
/// (a sweep walks the whole table).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The admission state of one gateway. See the module documentation.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    sources: HashMap<Source, PerSource>,
    /// Sources that found the table full share this.
    overflow: PerSource,
    connects: Bucket,
    replies: Bucket,
    swept: Option<Instant>,
}

impl Admission {
    /// Admission within `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
            overflow: PerSource::default(),
            connects: Bucket::default(),
            replies: Bucket::default(),
            swept: None,
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Is `ip` on an exempt network (bounded by nothing here)?
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        crate::serial::is_line_ip(ip) || self.limits.exempt.iter().any(|net| net.contains(ip))
    }

    /// Replaces the bounds (a reload); what is counted stays.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sources remembered now (bounded by [`MAX_SOURCES`] plus those
    /// holding sessions).
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    fn source(&mut self, src: Source, now: Instant) -> &mut PerSource {
        if !self.sources.contains_key(&src) && self.sources.len() >= MAX_SOURCES {
            let due = self.swept.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if due {
                self.swept = Some(now);
                self.sources.retain(|_, s| {
                    s.sessions > 0
                        || s.seen.is_some_and(|t| now.saturating_duration_since(t) < FORGET_AFTER)
                });
            }
            if self.sources.len() >= MAX_SOURCES {
                return &mut self.overflow;
            }
        }
        let s = self.sources.entry(src).or_default();
        s.seen = Some(now);
        s
    }

    /// A CONNECT from `src`: takes a token from its bucket and from the
    /// overall one.
    pub fn connect(&mut self, src: Source, now: Instant) -> Result<(), Refusal> {
        let limits = &self.limits;
        let (per_source, all) = (limits.connect_per_source, limits.connect);
        if let Some(rate) = per_source {
            if !self.source(src, now).connects.take(rate, now) {
                return Err(Refusal::SourceConnectRate);
            }
        }
        if let Some(rate) = all {
            if !self.connects.take(rate, now) {
                return Err(Refusal::ConnectRate);
            }
        }
        Ok(())
    }

    /// A new session for a sensor at `src`, if its source may hold one
    /// more. Pair with [`Admission::session_ended`]. A source that holds
    /// sessions is always in the table (never the shared overflow entry),
    /// so its count comes back down exactly.
    pub fn session_started(&mut self, src: Source, now: Instant) -> Result<(), Refusal> {
        let max = self.limits.sessions_per_source;
        if let Some(s) = self.sources.get(&src) {
            if max.is_some_and(|max| s.sessions >= max) {
                return Err(Refusal::SourceSessions);
            }
        } else if max == Some(0) {
            return Err(Refusal::SourceSessions);
        }
        let s = self.sources.entry(src).or_default();
        s.seen = Some(now);
        s.sessions += 1;
        Ok(())
    }

    /// A session started at `src` is gone.
    pub fn session_ended(&mut self, src: Source) {
        if let Some(s) = self.sources.get_mut(&src) {
            s.sessions = s.sessions.saturating_sub(1);
        }
    }

    /// Sessions `src` holds now.
    pub fn sessions_of(&self, src: Source) -> u32 {
        self.sources.get(&src).map_or(0, |s| s.sessions)
    }

    /// May a reply go to `src`, which has no session? Takes a token from
    /// its bucket and from the overall one.
    pub fn reply(&mut self, src: Source, now: Instant) -> bool {
        let (per_source, all) = (self.limits.reply_per_source, self.limits.reply);
        if let Some(rate) = per_source {
            if !self.source(src, now).replies.take(rate, now) {
                return false;
            }
        }
        match all {
            Some(rate) => self.replies.take(rate, now),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> Source {
        Source::of(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let rate = Rate { per_sec: 10.0, burst: 5 };
        let mut b = Bucket::default();
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| b.take(rate, t0)).count(), 5);
        // 10 a second: one every 100 ms.
        assert!(!b.take(rate, t0 + Duration::from_millis(50)));
        assert!(b.take(rate, t0 + Duration::from_millis(160)));
        assert!(!b.take(rate, t0 + Duration::from_millis(170)));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..8).filter(|_| b.take(rate, later)).count(), 5);
        // A clock step back takes nothing and breaks nothing.
        assert!(!b.take(rate, t0));
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ones_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(Source::of(mapped), src(7));
    }

    #[test]
    fn connects_are_bounded_per_source_and_in_all() {
        let mut a = Admission::new(Limits {
            connect_per_source: Some(Rate { per_sec: 1.0, burst: 3 }),
            connect: Some(Rate { per_sec: 1.0, burst: 5 }),
            ..Limits::default()
        });
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(a.connect(src(1), t), Ok(()));
        }
        assert_eq!(a.connect(src(1), t), Err(Refusal::SourceConnectRate));
        assert_eq!(a.connect(src(2), t), Ok(()));
        assert_eq!(a.connect(src(3), t), Ok(()));
        assert_eq!(a.connect(src(4), t), Err(Refusal::ConnectRate));
        // A second later each bucket has one more.
        let t = t + Duration::from_secs(1);
        assert_eq!(a.connect(src(1), t), Ok(()));
    }

    #[test]
    fn sessions_per_source_are_counted_back_down() {
        let mut a = Admission::new(Limits { sessions_per_source: Some(2), ..Limits::default() });
        let t = Instant::now();
        assert_eq!(a.session_started(src(1), t), Ok(()));
        assert_eq!(a.session_started(src(1), t), Ok(()));
        assert_eq!(a.session_started(src(1), t), Err(Refusal::SourceSessions));
        assert_eq!(a.session_started(src(2), t), Ok(()));
        a.session_ended(src(1));
        assert_eq!(a.sessions_of(src(1)), 1);
        assert_eq!(a.session_started(src(1), t), Ok(()));
        // Ending more than started never wraps.
        for _ in 0..5 {
            a.session_ended(src(2));
        }
        assert_eq!(a.sessions_of(src(2)), 0);
    }

    #[test]
    fn replies_to_unknown_sources_are_bounded_per_source_and_in_all() {
        let mut a = Admission::new(Limits {
            reply_per_source: Some(Rate { per_sec: 2.0, burst: 2 }),
            reply: Some(Rate { per_sec: 100.0, burst: 3 }),
            ..Limits::default()
        });
        let t = Instant::now();
        assert!(a.reply(src(1), t) && a.reply(src(1), t));
        assert!(!a.reply(src(1), t));
        assert!(a.reply(src(2), t));
        assert!(!a.reply(src(3), t), "the overall bucket is empty");
        assert!(a.reply(src(3), t + Duration::from_millis(10)));
    }

    #[test]
    fn a_flood_of_sources_is_remembered_within_a_bound() {
        let mut a = Admission::new(Limits::exposed());
        let t = Instant::now();
        // A real sensor holds a session.
        let real = Source::of(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(a.session_started(real, t), Ok(()));
        for i in 0..(MAX_SOURCES as u32 + 5000) {
            let s = Source::of(IpAddr::from((0x0a01_0000u32 + i).to_be_bytes()));
            let _ = a.connect(s, t);
        }
        assert!(a.sources() <= MAX_SOURCES, "{}", a.sources());
        // Later, the idle sources are forgotten; the real one is not.
        let later = t + FORGET_AFTER + Duration::from_secs(1);
        let _ = a.connect(Source::of(IpAddr::from([10, 200, 0, 1])), later);
        assert_eq!(a.sessions_of(real), 1);
        assert!(a.sources() < 10, "{}", a.sources());
    }
}
