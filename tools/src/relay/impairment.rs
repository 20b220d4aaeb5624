//! The impairment of one direction of a relay, sans-IO: given a datagram
//! and `now`, it decides whether the datagram is lost, duplicated, held
//! back to be overtaken (reordered) and how long it is delayed; the driver
//! asks [`Impairment::poll`] what is due and [`Impairment::deadline`] when
//! to ask next. Every decision comes from a generator seeded explicitly,
//! so the same seed and the same datagrams give the same output, and the
//! tests run it under virtual time.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Datagrams held (delayed or held back) at once; past this a datagram is
/// dropped and counted as `overflow`, so memory stays bounded whatever
/// the rate and the delay.
pub const MAX_PENDING: usize = 10_000;

/// A probability, from `0.2` or `20%`.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct Probability(f64);

impl Probability {
    /// Never.
    pub const NEVER: Self = Self(0.0);

    /// `p` from 0 to 1, or `None`.
    pub fn new(p: f64) -> Option<Self> {
        (0.0..=1.0).contains(&p).then_some(Self(p))
    }

    /// As a number from 0 to 1.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Why a probability did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: a probability from 0 to 1, or from 0% to 100%")]
pub struct BadProbability(String);

impl FromStr for Probability {
    type Err = BadProbability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadProbability(s.to_owned());
        let t = s.trim();
        let p = match t.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map_err(|_| bad())? / 100.0,
            None => t.parse::<f64>().map_err(|_| bad())?,
        };
        Self::new(p).ok_or_else(bad)
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rounded to what a person typed: 7%, not 7.000000000000001%.
        write!(f, "{}%", (self.0 * 1e6).round() / 1e4)
    }
}

/// A scheduled outage: from `at` after the start, for `length`, every
/// datagram that arrives is lost. From `AT+FOR` in seconds (`10+2.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// When it begins, after the start.
    pub at: Duration,
    /// How long it lasts.
    pub length: Duration,
}

impl Partition {
    /// Whether `since_start` falls in it.
    pub fn covers(&self, since_start: Duration) -> bool {
        since_start >= self.at && since_start - self.at < self.length
    }
}

/// Why a partition did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: AT+FOR, in seconds after the start (10+2.5)")]
pub struct BadPartition(String);

impl FromStr for Partition {
    type Err = BadPartition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPartition(s.to_owned());
        let secs = |t: &str| {
            t.trim().parse::<f64>().ok().and_then(|v| Duration::try_from_secs_f64(v).ok())
        };
        let (at, length) = s.split_once('+').ok_or_else(bad)?;
        Ok(Self { at: secs(at).ok_or_else(bad)?, length: secs(length).ok_or_else(bad)? })
    }
}

/// What is done to the datagrams of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// The chance that a datagram is lost.
    pub loss: Probability,
    /// The chance that a datagram (not lost) is sent twice.
    pub duplicate: Probability,
    /// The chance that a datagram (not lost) is held back until `window`
    /// later ones have overtaken it (or `hold` has passed).
    pub reorder: Probability,
    /// How many later datagrams overtake a held one (at least 1).
    pub window: u32,
    /// The longest a datagram is held back when not enough others come.
    pub hold: Duration,
    /// The delay of every datagram.
    pub delay: Duration,
    /// The delay varies uniformly by up to this much either way (never
    /// below zero); the order is kept (only `reorder` reorders).
    pub jitter: Duration,
}

impl Default for Profile {
    /// Everything passes at once, unchanged.
    fn default() -> Self {
        Self {
            loss: Probability::NEVER,
            duplicate: Probability::NEVER,
            reorder: Probability::NEVER,
            window: 1,
            hold: Duration::from_millis(100),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

impl fmt::Display for Profile {
    /// One line, as `mqttsn relay` prints it at the start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss {} duplicate {} reorder {} (window {}, hold {} ms) delay {} ms jitter {} ms",
            self.loss,
            self.duplicate,
            self.reorder,
            self.window,
            self.hold.as_millis(),
            self.delay.as_millis(),
            self.jitter.as_millis()
        )
    }
}

/// What one direction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams that came in.
    pub received: u64,
    /// Datagrams that went out (duplicates included).
    pub forwarded: u64,
    /// Datagrams lost on purpose.
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back and overtaken by at least one later datagram.
    pub reordered: u64,
    /// Datagrams dropped because [`MAX_PENDING`] were held already.
    pub overflow: u64,
    /// Datagrams lost in a scheduled [`Partition`].
    pub partitioned: u64,
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny generator, good enough
/// for impairment decisions, that is fully determined by its seed. No
/// random-number crate is among the workspace's dependencies, and one
/// whose output for a seed may change between its versions would break
/// the promise that a `--seed` reproduces a run; these few lines cannot
/// change under us.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits: every value is exact.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A datagram held back, waiting to be overtaken.
#[derive(Debug)]
struct Held<T> {
    item: T,
    copies: u8,
    /// When it would have been due had it not been held.
    due: Instant,
    /// Released at the latest then.
    until: Instant,
    /// Datagrams still to overtake it.
    left: u32,
    /// Datagrams that did.
    overtaken: u32,
}

/// The impairment of one direction. `T` is what is relayed (for the
/// driver, the datagram and its sensor).
#[derive(Debug)]
pub struct Impairment<T> {
    profile: Profile,
    rng: SplitMix64,
    /// Due times never decrease: the order is kept.
    queue: VecDeque<(Instant, T)>,
    held: VecDeque<Held<T>>,
    last_due: Option<Instant>,
    /// The start the partitions count from, and the partitions.
    partitions: Option<(Instant, Vec<Partition>)>,
    stats: Stats,
}

impl<T: Clone> Impairment<T> {
    /// One direction with this profile and seed.
    pub fn new(profile: Profile, seed: u64) -> Self {
        Self {
            profile,
            rng: SplitMix64::new(seed),
            queue: VecDeque::new(),
            held: VecDeque::new(),
            last_due: None,
            partitions: None,
            stats: Stats::default(),
        }
    }

    /// With these outages, counted from `start`.
    pub fn with_partitions(mut self, start: Instant, partitions: Vec<Partition>) -> Self {
        self.partitions = (!partitions.is_empty()).then_some((start, partitions));
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Datagrams delayed or held back, not yet out.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.held.iter().map(|h| usize::from(h.copies)).sum::<usize>()
    }

    /// A datagram arrives at `now`.
    pub fn handle(&mut self, now: Instant, item: T) {
        self.stats.received += 1;
        // The same four draws for every datagram, so that changing one
        // option does not shift the decisions of the others.
        let lost = self.rng.next_f64() < self.profile.loss.get();
        let twice = self.rng.next_f64() < self.profile.duplicate.get();
        let held = self.rng.next_f64() < self.profile.reorder.get();
        let swing = self.rng.next_f64();
        if let Some((start, partitions)) = &self.partitions {
            let since = now.saturating_duration_since(*start);
            if partitions.iter().any(|p| p.covers(since)) {
                self.stats.partitioned += 1;
                return;
            }
        }
        if self.pending() >= MAX_PENDING {
            self.stats.overflow += 1;
            return;
        }
        if lost {
            self.stats.dropped += 1;
            return;
        }
        let copies = if twice {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let due = now + self.delay(swing);
        if held {
            self.held.push_back(Held {
                item,
                copies,
                due,
                until: now + self.profile.hold,
                left: self.profile.window.max(1),
                overtaken: 0,
            });
            return;
        }
        let due = self.schedule(due, item, copies);
        // It overtook every datagram held back; those whose window is now
        // full go out right after it.
        for h in &mut self.held {
            h.left -= 1;
            h.overtaken += 1;
        }
        while self.held.front().is_some_and(|h| h.left == 0) {
            if let Some(h) = self.held.pop_front() {
                self.stats.reordered += 1;
                self.schedule(due, h.item, h.copies);
            }
        }
    }

    /// The next datagram due at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        // Held back long enough: out, in the order they came.
        while self.held.front().is_some_and(|h| h.until <= now) {
            if let Some(h) = self.held.pop_front() {
                if h.overtaken > 0 {
                    self.stats.reordered += 1;
                }
                self.schedule(h.due, h.item, h.copies);
            }
        }
        if self.queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, item) = self.queue.pop_front()?;
            self.stats.forwarded += 1;
            return Some(item);
        }
        None
    }

    /// When [`Impairment::poll`] has something next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        let queued = self.queue.front().map(|(due, _)| *due);
        let held = self.held.front().map(|h| h.until);
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `delay ± jitter`, from a draw in `[0, 1)`.
    fn delay(&self, swing: f64) -> Duration {
        let jitter = self.profile.jitter.as_secs_f64();
        let d = self.profile.delay.as_secs_f64() + (2.0 * swing - 1.0) * jitter;
        Duration::try_from_secs_f64(d.max(0.0)).unwrap_or(self.profile.delay)
    }

    /// Queues `copies` of `item` due at `due`, or after the last one queued
    /// if that is later; returns when they are due.
    fn schedule(&mut self, due: Instant, item: T, copies: u8) -> Instant {
        let due = self.last_due.map_or(due, |last| last.max(due));
        self.last_due = Some(due);
        if copies > 1 {
            self.queue.push_back((due, item.clone()));
        }
        self.queue.push_back((due, item));
        due
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn p(s: &str) -> Probability {
        s.parse().unwrap()
    }

    /// Feeds `0..n`, one every `every`, and collects (when, item) until
    /// nothing is left; virtual time only.
    fn run(profile: Profile, seed: u64, n: u32, every: Duration) -> (Vec<(Duration, u32)>, Stats) {
        let t0 = Instant::now();
        let mut imp = Impairment::new(profile, seed);
        let mut out = Vec::new();
        let mut now = t0;
        let mut drain = |imp: &mut Impairment<u32>, now: Instant| {
            while let Some(i) = imp.poll(now) {
                out.push((now - t0, i));
            }
        };
        for i in 0..n {
            let at = t0 + every * i;
            // Everything due before this arrival, at its own time.
            while let Some(d) = imp.deadline().filter(|d| *d < at) {
                now = d.max(now);
                drain(&mut imp, now);
            }
            now = at;
            imp.handle(now, i);
            drain(&mut imp, now);
        }
        while let Some(d) = imp.deadline() {
            now = d.max(now);
            drain(&mut imp, now);
        }
        assert_eq!(imp.pending(), 0);
        (out, imp.stats())
    }

    #[test]
    fn probabilities_parse_as_fractions_or_percentages() {
        assert_eq!(p("20%").get(), 0.2);
        assert_eq!(p(" 0.25 ").get(), 0.25);
        assert_eq!(p("100 %").get(), 1.0);
        assert_eq!(p("0").get(), 0.0);
        for bad in ["", "%", "120%", "-1", "1.5", "abc", "NaN", "inf"] {
            assert!(bad.parse::<Probability>().is_err(), "{bad}");
        }
        assert_eq!(p("0.07").to_string(), "7%");
        assert_eq!(
            Profile { loss: p("20%"), delay: ms(30), ..Profile::default() }.to_string(),
            "loss 20% duplicate 0% reorder 0% (window 1, hold 100 ms) delay 30 ms jitter 0 ms"
        );
        assert_eq!(p("12.5%").to_string(), "12.5%");
        let e = "150%".parse::<Probability>().unwrap_err().to_string();
        assert_eq!(e, "\"150%\": a probability from 0 to 1, or from 0% to 100%");
    }

    #[test]
    fn no_impairment_passes_everything_at_once_in_order() {
        let (out, stats) = run(Profile::default(), 1, 100, ms(1));
        let expected: Vec<(Duration, u32)> = (0..100).map(|i| (ms(u64::from(i)), i)).collect();
        assert_eq!(out, expected);
        assert_eq!(stats, Stats { received: 100, forwarded: 100, ..Stats::default() });
    }

    #[test]
    fn loss_over_many_datagrams_is_near_its_rate() {
        let profile = Profile { loss: p("20%"), ..Profile::default() };
        for seed in [1, 2, 42] {
            let (out, stats) = run(profile, seed, 10_000, ms(1));
            assert_eq!(stats.dropped + stats.forwarded, 10_000);
            assert_eq!(out.len() as u64, stats.forwarded);
            assert!((1_800..=2_200).contains(&stats.dropped), "seed {seed}: {stats:?}");
            // What is not lost keeps its order.
            assert!(out.windows(2).all(|w| w[0].1 < w[1].1));
        }
        let all = Profile { loss: p("100%"), ..Profile::default() };
        assert!(run(all, 3, 1_000, ms(1)).0.is_empty());
    }

    #[test]
    fn duplication_sends_twice_back_to_back() {
        let profile = Profile { duplicate: p("30%"), ..Profile::default() };
        let (out, stats) = run(profile, 7, 1_000, ms(1));
        assert!((250..=350).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(stats.forwarded, 1_000 + stats.duplicated);
        let twice = out.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(twice, stats.duplicated);
        let mut items: Vec<u32> = out.iter().map(|(_, i)| *i).collect();
        items.dedup();
        assert_eq!(items, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn reordering_lets_later_datagrams_overtake() {
        let profile = Profile { reorder: p("20%"), ..Profile::default() };
        let (out, stats) = run(profile, 11, 1_000, ms(1));
        let items: Vec<u32> = out.iter().map(|(_, i)| *i).collect();
        // Overtaken: a later datagram went out before it.
        let mut latest = 0;
        let mut overtaken = 0;
        for i in &items {
            if *i < latest {
                overtaken += 1;
            }
            latest = latest.max(*i);
        }
        assert!(stats.reordered > 100, "{stats:?}");
        assert_eq!(overtaken, stats.reordered);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1_000).collect::<Vec<_>>(), "nothing lost or added");
        // A held datagram goes out at the time of the one that overtook it.
        let i = items.windows(2).position(|w| w[0] > w[1]).unwrap();
        assert_eq!(out[i].0, out[i + 1].0);
    }

    #[test]
    fn a_wider_window_lets_more_overtake_and_the_hold_bounds_the_wait() {
        let profile = Profile { reorder: p("100%"), window: 3, hold: ms(50), ..Profile::default() };
        // Every datagram is held and none overtakes: each goes out when
        // its hold ends, in order.
        let (out, stats) = run(profile, 5, 10, ms(10));
        let expected: Vec<(Duration, u32)> =
            (0..10).map(|i| (ms(50 + 10 * u64::from(i)), i)).collect();
        assert_eq!(out, expected);
        assert_eq!(stats.reordered, 0);

        // Feed by hand: 0 held, then 1, 2, 3 pass: 0 goes out after 3.
        let t0 = Instant::now();
        let mut imp = Impairment::new(Profile { reorder: p("100%"), ..profile }, 5);
        imp.handle(t0, 0u32);
        imp.profile.reorder = Probability::NEVER;
        let mut got = Vec::new();
        for i in 1..=3 {
            imp.handle(t0 + ms(i), i as u32);
            while let Some(x) = imp.poll(t0 + ms(i)) {
                got.push(x);
            }
        }
        assert_eq!(got, [1, 2, 3, 0]);
        assert_eq!(imp.stats().reordered, 1);
        // Overtaken by one of a window of three, then the hold ends: still
        // reordered.
        imp.profile.reorder = p("100%");
        imp.handle(t0 + ms(10), 10);
        imp.profile.reorder = Probability::NEVER;
        imp.handle(t0 + ms(11), 11);
        assert_eq!(imp.poll(t0 + ms(11)), Some(11));
        assert_eq!(imp.poll(t0 + ms(11)), None);
        assert_eq!(imp.deadline(), Some(t0 + ms(60)));
        assert_eq!(imp.poll(t0 + ms(60)), Some(10));
        assert_eq!(imp.stats().reordered, 2);
    }

    #[test]
    fn delay_and_jitter_are_respected_and_the_order_kept() {
        let profile = Profile { delay: ms(100), jitter: ms(20), ..Profile::default() };
        for every in [1, 50] {
            let (out, stats) = run(profile, 9, 200, ms(every));
            assert_eq!(stats.forwarded, 200);
            let mut shortest = Duration::MAX;
            let mut longest = Duration::ZERO;
            for (k, (at, i)) in out.iter().enumerate() {
                assert_eq!(*i as usize, k, "in order");
                let d = *at - ms(every * u64::from(*i));
                assert!(d >= ms(80), "{i} after {d:?}");
                shortest = shortest.min(d);
                longest = longest.max(d);
            }
            assert!(longest <= ms(120), "{longest:?}");
            if every == 50 {
                // Far enough apart that none waits for another: the
                // jitter shows both ways.
                assert!(shortest < ms(85), "{shortest:?}");
                assert!(longest > ms(115), "{longest:?}");
            }
        }
        // A plain delay, no jitter: exactly.
        let (out, _) = run(Profile { delay: ms(30), ..Profile::default() }, 9, 10, ms(5));
        assert!(out.iter().all(|(at, i)| *at == ms(30 + 5 * u64::from(*i))));
    }

    #[test]
    fn the_same_seed_gives_the_same_output() {
        let profile = Profile {
            loss: p("20%"),
            duplicate: p("10%"),
            reorder: p("10%"),
            window: 2,
            hold: ms(30),
            delay: ms(10),
            jitter: ms(5),
        };
        let a = run(profile, 1234, 2_000, ms(1));
        let b = run(profile, 1234, 2_000, ms(1));
        assert_eq!(a, b);
        let c = run(profile, 1235, 2_000, ms(1));
        assert_ne!(a.0, c.0, "another seed, other decisions");
        let s = a.1;
        assert_eq!(s.received, 2_000);
        assert_eq!(s.forwarded, s.received - s.dropped + s.duplicated);
        assert!(s.dropped > 0 && s.duplicated > 0 && s.reordered > 0, "{s:?}");
    }

    #[test]
    fn partitions_lose_everything_in_their_window_only() {
        let at = |s: &str| s.parse::<Partition>().unwrap();
        assert_eq!(at("10+2.5"), Partition { at: Duration::from_secs(10), length: ms(2_500) });
        for bad in ["10", "+2", "a+1", "1+-1", "1+2+3"] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
        let t0 = Instant::now();
        let mut imp = Impairment::new(Profile::default(), 1)
            .with_partitions(t0, vec![at("0.1+0.05"), at("0.3+0.1")]);
        let mut out = Vec::new();
        for i in 0..50u32 {
            let now = t0 + ms(10) * i;
            imp.handle(now, i);
            while let Some(x) = imp.poll(now) {
                out.push(x);
            }
        }
        // 100..150 ms and 300..400 ms: datagrams 10 to 14 and 30 to 39.
        let expected: Vec<u32> =
            (0..50).filter(|i| !(10..15).contains(i) && !(30..40).contains(i)).collect();
        assert_eq!(out, expected);
        assert_eq!(imp.stats().partitioned, 15);
        // The same draws as without partitions: what passes afterwards is
        // decided the same way.
        let lossy = Profile { loss: p("50%"), ..Profile::default() };
        let mut a = Impairment::new(lossy, 4);
        let mut b = Impairment::new(lossy, 4).with_partitions(t0, vec![at("0+0.001")]);
        for i in 0..20u32 {
            a.handle(t0 + ms(5), i);
            b.handle(t0 + ms(if i == 0 { 0 } else { 5 }), i);
        }
        let drain = |imp: &mut Impairment<u32>| {
            std::iter::from_fn(|| imp.poll(t0 + ms(5))).filter(|i| *i > 0).collect::<Vec<_>>()
        };
        assert_eq!(drain(&mut a), drain(&mut b));
    }

    #[test]
    fn pending_is_bounded() {
        let profile = Profile { delay: Duration::from_secs(3600), ..Profile::default() };
        let t0 = Instant::now();
        let mut imp = Impairment::new(profile, 1);
        for i in 0..(MAX_PENDING as u32 + 5) {
            imp.handle(t0, i);
        }
        assert_eq!(imp.pending(), MAX_PENDING);
        assert_eq!(imp.stats().overflow, 5);
        assert_eq!(imp.poll(t0), None);
    }

    #[test]
    fn splitmix_matches_its_reference_output() {
        // The first outputs for seed 1234567 (the reference implementation).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        let mut r = SplitMix64::new(0);
        assert!((0..1_000).map(|_| r.next_f64()).all(|x| (0.0..1.0).contains(&x)));
    }
}
