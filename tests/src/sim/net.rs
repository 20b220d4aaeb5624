//! The faulty network between the sensors and the gateway: every datagram
//! may be lost, duplicated, delayed or overtaken, and a sensor may be cut
//! off for a while (a partition). Once the faults are switched off (the
//! quiet drain at the end of a run) every datagram arrives, in order,
//! after a fixed delay.

use std::collections::BTreeMap;

use super::rng::Rng;

/// One end of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    /// The gateway's endpoint.
    Gateway,
    /// Sensor number `n`.
    Sensor(usize),
}

/// How bad the network is, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub dup: f64,
    /// Probability that a datagram is held back (and overtaken); zero
    /// when the network keeps order.
    pub reorder: f64,
    /// Each direction of each sensor's link keeps the order of its
    /// datagrams (a duplicate follows its original at once).
    pub ordered: bool,
    /// The usual delay, in milliseconds: `min..=max`.
    pub delay: (u64, u64),
    /// Sensors cut off from `from` to `to` (milliseconds).
    pub partitions: Vec<(usize, u64, u64)>,
}

impl Faults {
    /// Faults drawn for a run with `sensors` sensors lasting `span` ms.
    pub fn draw(rng: &mut Rng, sensors: usize, span: u64) -> Self {
        let level = rng.range(0, 3);
        let ordered = rng.chance(0.5);
        let partitions = (0..rng.range(0, 2))
            .map(|_| {
                let from = rng.range(0, span);
                (rng.range(0, sensors as u64 - 1) as usize, from, from + rng.range(1_000, 15_000))
            })
            .collect();
        Self {
            loss: [0.0, 0.02, 0.08, 0.2][level as usize],
            dup: [0.0, 0.02, 0.05, 0.1][level as usize],
            reorder: if ordered { 0.0 } else { [0.0, 0.05, 0.1, 0.2][level as usize] },
            ordered,
            delay: (1, rng.range(2, 40)),
            partitions,
        }
    }
}

/// A datagram on its way.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// The sensor it comes from or goes to.
    pub sensor: usize,
    /// Where it goes.
    pub to: Node,
    /// Its octets.
    pub data: Vec<u8>,
    /// The gateway process that sent it (crashes before), for one from the
    /// gateway.
    pub epoch: u32,
}

/// The datagrams in flight, by arrival time.
#[derive(Debug)]
pub struct Net {
    rng: Rng,
    faults: Faults,
    faulty: bool,
    in_flight: BTreeMap<(u64, u64), Datagram>,
    seq: u64,
    /// The last arrival on each link (sensor, direction), for order.
    last: BTreeMap<(usize, Node), u64>,
    /// Datagrams lost so far.
    pub lost: u64,
}

/// The delay of every datagram once the faults are off.
const QUIET_DELAY: u64 = 5;

impl Net {
    /// A network with these faults, switched on.
    pub fn new(rng: Rng, faults: Faults) -> Self {
        Self {
            rng,
            faults,
            faulty: true,
            in_flight: BTreeMap::new(),
            seq: 0,
            last: BTreeMap::new(),
            lost: 0,
        }
    }

    /// The faults drawn.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Switches the faults off: what is sent from now on arrives.
    pub fn heal(&mut self) {
        self.faulty = false;
    }

    /// Sends `data` at `now`; `sensor` is the sender or the receiver,
    /// `epoch` the gateway process (for a datagram from the gateway).
    pub fn send(&mut self, now: u64, sensor: usize, to: Node, data: Vec<u8>, epoch: u32) {
        if !self.faulty {
            let at = self.in_order(sensor, to, now + QUIET_DELAY);
            self.put(at, Datagram { sensor, to, data, epoch });
            return;
        }
        let cut =
            self.faults.partitions.iter().any(|&(s, a, b)| s == sensor && (a..b).contains(&now));
        if cut || self.rng.chance(self.faults.loss) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let (lo, hi) = self.faults.delay;
            let mut delay = self.rng.range(lo, hi);
            if self.rng.chance(self.faults.reorder) {
                delay += self.rng.range(20, 400);
            }
            let at = if self.faults.ordered {
                self.in_order(sensor, to, now + delay)
            } else {
                now + delay
            };
            self.put(at, Datagram { sensor, to, data: data.clone(), epoch });
        }
    }

    /// `at`, or later: not before the last datagram on the link.
    fn in_order(&mut self, sensor: usize, to: Node, at: u64) -> u64 {
        let last = self.last.entry((sensor, to)).or_insert(0);
        *last = (*last).max(at);
        *last
    }

    fn put(&mut self, at: u64, d: Datagram) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), d);
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<u64> {
        self.in_flight.keys().next().map(|(at, _)| *at)
    }

    /// The next datagram that has arrived by `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Datagram> {
        let (&key, _) = self.in_flight.iter().next().filter(|((at, _), _)| *at <= now)?;
        self.in_flight.remove(&key)
    }

    /// Datagrams in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}
