//! When each message is due and with which QoS: the pacing of a target
//! rate across clients, and the QoS mix.

use std::time::{Duration, Instant};

/// Weights of QoS 0, 1 and 2 (`--qos-mix 0:70,1:20,2:10`; `--qos 1` is
/// `1:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosMix([u32; 3]);

impl Default for QosMix {
    /// Every message at QoS 1.
    fn default() -> Self {
        Self([0, 1, 0])
    }
}

impl QosMix {
    /// Every message at one QoS (0, 1 or 2).
    pub fn single(qos: u8) -> Option<Self> {
        let mut w = [0; 3];
        *w.get_mut(usize::from(qos))? = 1;
        Some(Self(w))
    }

    /// Parses `QOS:WEIGHT,...`, e.g. `0:70,1:20,2:10`; weights need not add
    /// up to 100.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut w = [0u32; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (q, weight) =
                part.split_once(':').ok_or_else(|| format!("{part:?}: expected QOS:WEIGHT"))?;
            let q: usize =
                q.trim().parse().map_err(|_| format!("{part:?}: QoS must be 0, 1 or 2"))?;
            let weight: u32 =
                weight.trim().parse().map_err(|_| format!("{part:?}: weight must be a number"))?;
            *w.get_mut(q).ok_or_else(|| format!("{part:?}: QoS must be 0, 1 or 2"))? += weight;
        }
        if w.iter().sum::<u32>() == 0 {
            return Err(format!("{s:?}: give at least one QoS with a weight above 0"));
        }
        if w.iter().sum::<u32>() > 1_000_000 {
            return Err(format!("{s:?}: weights add up to more than 1000000"));
        }
        Ok(Self(w))
    }

    /// The weights of QoS 0, 1 and 2.
    pub fn weights(&self) -> [u32; 3] {
        self.0
    }

    /// True when some messages are QoS 1 or 2.
    pub fn acknowledged(&self) -> bool {
        self.0[1] + self.0[2] > 0
    }

    /// The QoS sequence of one client; `offset` (its index) staggers the
    /// sequences so that any prefix of all clients together has the mix.
    pub fn picker(&self, offset: u64) -> QosPicker {
        let weights = self.0.map(i64::from);
        let total = weights.iter().sum();
        let mut p = QosPicker { weights, current: [0; 3], total };
        for _ in 0..offset % total.max(1) as u64 {
            p.next_qos();
        }
        p
    }
}

impl std::fmt::Display for QosMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (q, w) in self.0.iter().enumerate().filter(|(_, w)| **w > 0) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{q}:{w}")?;
        }
        Ok(())
    }
}

/// Smooth weighted round robin over QoS 0, 1, 2: exact proportions over
/// every run of `total` messages, evenly interleaved.
#[derive(Debug, Clone)]
pub struct QosPicker {
    weights: [i64; 3],
    current: [i64; 3],
    total: i64,
}

impl QosPicker {
    /// The QoS of the next message.
    pub fn next_qos(&mut self) -> u8 {
        let mut best = 0;
        for q in 0..3 {
            self.current[q] += self.weights[q];
            if self.current[q] > self.current[best] {
                best = q;
            }
        }
        self.current[best] -= self.total;
        best as u8
    }
}

/// The start offset between two unpaced clients.
pub const RAMP: Duration = Duration::from_micros(5);

/// When the messages of one client are due: `rate` messages per second
/// over `clients` clients, client `index` shifted by its share of one
/// interval, so that the clients do not all send at the same instant. No
/// rate: everything is due at once (as fast as the client can), client
/// `index` starting [`RAMP`] × `index` late, so that thousands of sensors
/// do not all send their first message in the same microsecond.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    first: f64,
    interval: f64,
}

impl Pacer {
    /// The pacing of client `index` of `clients`.
    pub fn new(start: Instant, rate: Option<f64>, clients: u32, index: u32) -> Self {
        match rate {
            Some(r) if r > 0.0 => {
                let interval = f64::from(clients.max(1)) / r;
                let first = interval * f64::from(index) / f64::from(clients.max(1));
                Self { start, first, interval }
            }
            _ => Self { start, first: RAMP.as_secs_f64() * f64::from(index), interval: 0.0 },
        }
    }

    /// When message `k` (from 0) is due.
    pub fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.first + self.interval * k as f64)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mix_parses_and_keeps_proportions() {
        let mix = QosMix::parse("0:70, 1:20,2:10").unwrap();
        assert_eq!(mix.weights(), [70, 20, 10]);
        assert_eq!(mix.to_string(), "0:70,1:20,2:10");
        assert!(QosMix::parse("3:1").is_err() && QosMix::parse("0:0").is_err());
        assert!(QosMix::parse("1").is_err() && QosMix::parse("x:1").is_err());
        let mut counts = [0; 3];
        // Ten clients, ten messages each: 70/20/10 exactly.
        for c in 0..10 {
            let mut p = mix.picker(c * 10);
            for _ in 0..10 {
                counts[usize::from(p.next_qos())] += 1;
            }
        }
        assert_eq!(counts, [70, 20, 10]);
        assert_eq!(QosMix::single(2).map(|m| m.picker(3).next_qos()), Some(2));
        assert_eq!(QosMix::single(3), None);
    }

    #[test]
    fn pacing_spreads_clients() {
        let t = Instant::now();
        let p = Pacer::new(t, Some(1000.0), 10, 5);
        assert_eq!(p.due(0) - t, Duration::from_micros(5000));
        assert_eq!(p.due(2) - t, Duration::from_micros(25_000));
        let unpaced = Pacer::new(t, None, 10, 5);
        assert!((unpaced.due(9) - t).as_nanos().abs_diff((RAMP * 5).as_nanos()) <= 1);
    }
}
