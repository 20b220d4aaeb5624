//! The simulation's only source of randomness: splitmix64 (the relay's
//! generator, `mqttsn_tools::relay::impairment::SplitMix64`), seeded
//! explicitly, so a seed is a complete description of a run.

use mqttsn_tools::relay::impairment::SplitMix64;

/// A splitmix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p` (0 to 1).
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.next_f64() < p
    }

    /// A generator of its own for a part of the run (a sensor, the
    /// network), so that one part's draws do not shift another's.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}
