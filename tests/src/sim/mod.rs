//! A deterministic simulation of the whole gateway in one process: the
//! sans-IO [`Endpoint`] with a model broker behind its upstream commands
//! ([`broker`]), sensors running `mqttsn_client::Client` ([`sensor`]), a
//! seeded faulty network between them ([`net`]), and virtual time. One
//! `u64` seed decides everything (the network's faults, the broker's
//! outages and latencies, the sensors' scripts), so a failing seed fails
//! the same way every time, and its trace shows how.
//!
//! It lives in the tests crate, beside the other end-to-end checks, which
//! depends on the gateway library and the client crate already; the
//! gateway's own tests cannot use the client (it would be a dev-dependency
//! cycle through the tests crate's harness, and the endpoint's tests play
//! the sensor with raw packets on purpose).
//!
//! A run: the faults are on for [`ACTIVE_MS`] while the sensors run their
//! scripts; then the network heals, outages stop, the scripts stop
//! publishing, and the run goes on for [`QUIET_MS`] so that every
//! retransmission completes. Time jumps to the earliest deadline of all
//! parts (the endpoint's, the clients', the next datagram, the broker's
//! next answer, a script's next step). The invariants (docs/simulation.md)
//! are checked after every step and at the end.

pub mod broker;
pub mod net;
pub mod rng;
pub mod sensor;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_client::{Millis, QoS, Settings};
use mqttsn_gateway::endpoint::{Directory, Endpoint, WallClock};
use mqttsn_gateway::metrics::Metrics;
use mqttsn_gateway::options::ServerOptions;
use mqttsn_gateway::session::SessionConfig;
use mqttsn_gateway::upstream::QoS as UpQoS;

use broker::Broker;
use net::{Faults, Net, Node};
use rng::Rng;
use sensor::{client_id_of, Sensor};

/// How long the faults are on, in virtual milliseconds.
pub const ACTIVE_MS: u64 = 60_000;
/// The quiet drain after it: no loss, no outage, no new publishes.
pub const QUIET_MS: u64 = 90_000;
/// The most steps one run takes.
const MAX_STEPS: usize = 200_000;
/// Outputs of one step beyond this are a runaway.
const MAX_OUTPUTS_PER_STEP: usize = 10_000;
/// Datagrams in flight beyond this are a runaway.
const MAX_IN_FLIGHT: usize = 10_000;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Steps taken.
    pub steps: usize,
    /// Sensors.
    pub sensors: usize,
    /// Datagrams sent (both ways).
    pub datagrams: u64,
    /// Datagrams the network lost.
    pub lost: u64,
    /// Connections accepted (CONNACK seen by a sensor).
    pub connects: u64,
    /// QoS 1 and 2 publishes the sensors saw acknowledged.
    pub acked: u64,
    /// Messages the broker accepted.
    pub accepted: u64,
    /// Deliveries the endpoint acknowledged to the broker.
    pub delivered: u64,
    /// Broker outages.
    pub outages: u32,
    /// Late copies of completed QoS 2 PUBLISHes the gateway stopped
    /// (`mqttsn_qos2_late_duplicates_total`).
    pub late_copies: u64,
}

impl Outcome {
    /// Adds another run's figures.
    pub fn add(&mut self, o: &Outcome) {
        self.steps += o.steps;
        self.sensors += o.sensors;
        self.datagrams += o.datagrams;
        self.lost += o.lost;
        self.connects += o.connects;
        self.acked += o.acked;
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.outages += o.outages;
        self.late_copies += o.late_copies;
    }
}

/// A broken invariant, with the seed and the trace that lead to it.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub message: String,
    /// What happened, when the run was traced.
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {}\n  reproduce: SIM_SEED={} cargo test -p mqttsn-tests --test simulation -- --nocapture",
            self.seed, self.message, self.seed
        )
    }
}

/// Runs one seed; with `trace`, every step is recorded (and returned in a
/// failure).
pub fn run(seed: u64, trace: bool) -> Result<Outcome, Failure> {
    let mut sim = Sim::new(seed, trace);
    match sim.run() {
        Ok(()) => Ok(sim.outcome()),
        Err(message) => Err(Failure { seed, message, trace: sim.trace.unwrap_or_default() }),
    }
}

/// The trace of a run (empty lines for nothing): two runs of one seed
/// give the same.
pub fn trace_of(seed: u64) -> Vec<String> {
    let mut sim = Sim::new(seed, true);
    let end = sim.run().err().unwrap_or_default();
    let mut t = sim.trace.unwrap_or_default();
    t.push(end);
    t
}

struct Sim {
    base: Instant,
    now: Millis,
    healed: bool,
    ep: Endpoint,
    metrics: Arc<Metrics>,
    broker: Broker,
    net: Net,
    sensors: Vec<Sensor>,
    trace: Option<Vec<String>>,
    steps: usize,
    datagrams: u64,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Self {
        let mut rng = Rng::new(seed);
        let count = rng.range(3, 8) as usize;
        let faults = Faults::draw(&mut rng, count, ACTIVE_MS);
        let outages = (0..rng.range(0, 2))
            .map(|_| {
                let from = rng.range(1_000, ACTIVE_MS - 5_000);
                (from, from + rng.range(500, 8_000))
            })
            .collect();
        let settings = Settings { retry_ms: 2_000, max_retries: 4, congestion_wait_ms: 3_000 };
        let sensors =
            (0..count).filter_map(|n| Sensor::new(n, count, rng.fork(), settings)).collect();
        let cfg = Arc::new(SessionConfig {
            retry_interval: Duration::from_secs(2),
            max_retries: 4,
            ..SessionConfig::default()
        });
        let base = Instant::now();
        let metrics = Arc::new(Metrics::default());
        let ep = Endpoint::new(
            cfg,
            Arc::new(ServerOptions::default()),
            metrics.clone(),
            Arc::new(Directory::new(1)),
            0,
            false,
            base,
            WallClock::new(base, 1_000_000),
        );
        let mut sim = Self {
            base,
            now: 0,
            healed: false,
            ep,
            metrics,
            broker: Broker::new(rng.fork(), outages),
            net: Net::new(rng.fork(), faults),
            sensors,
            trace: trace.then(Vec::new),
            steps: 0,
            datagrams: 0,
        };
        if let Some(t) = sim.trace.as_mut() {
            t.push(format!("seed {seed}: {count} sensors, {:?}", sim.net.faults()));
        }
        sim
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("{:>7} {}", self.now, line()));
        }
    }

    fn at(&self, ms: Millis) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// An endpoint instant as virtual milliseconds, rounded up.
    fn ms_of(&self, t: Instant) -> Millis {
        let us = t.saturating_duration_since(self.base).as_micros();
        u64::try_from(us.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            steps: self.steps,
            sensors: self.sensors.len(),
            datagrams: self.datagrams,
            lost: self.net.lost,
            connects: self.sensors.iter().map(|s| u64::from(s.connects)).sum(),
            acked: self.sensors.iter().map(|s| s.acked.len() as u64).sum(),
            accepted: self.broker.accepted.values().map(|(_, n)| u64::from(*n)).sum(),
            delivered: self.broker.acked.values().map(|(_, n)| u64::from(*n)).sum(),
            outages: self.broker.outage_count,
            late_copies: self.metrics.qos2_late_duplicates.load(Ordering::Relaxed),
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let end = ACTIVE_MS + QUIET_MS;
        self.drain()?;
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                let clients: Vec<_> = self
                    .sensors
                    .iter()
                    .map(|s| (s.client.poll_timeout(), s.next_action()))
                    .collect();
                return Err(format!(
                    "more than {MAX_STEPS} steps, at {} ms: endpoint {:?}, network {:?}, broker {:?}, clients and scripts {clients:?}",
                    self.now,
                    self.ep.poll_timeout().map(|t| self.ms_of(t)),
                    self.net.next_arrival(),
                    self.broker.next_due(),
                ));
            }
            let ep_next = self.ep.poll_timeout().map(|t| self.ms_of(t));
            let mut next = [ep_next, self.net.next_arrival(), self.broker.next_due()]
                .into_iter()
                .flatten()
                .chain(self.sensors.iter().filter_map(|s| s.client.poll_timeout()))
                .chain(self.sensors.iter().filter_map(Sensor::next_action))
                .min()
                .unwrap_or(end);
            if !self.healed {
                next = next.min(ACTIVE_MS);
            }
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if now >= ACTIVE_MS && !self.healed {
                self.healed = true;
                self.net.heal();
                self.broker.heal();
                for s in &mut self.sensors {
                    s.finish();
                }
                self.note(|| "quiet: faults off".into());
            }
            self.broker.advance(now);
            self.drain()?;
            while let Some(d) = self.net.pop_due(now) {
                self.arrive(d)?;
                self.drain()?;
            }
            if ep_next.is_some_and(|t| t <= now) {
                self.ep.handle_timeout(self.at(now));
            }
            for i in 0..self.sensors.len() {
                if self.sensors[i].client.poll_timeout().is_some_and(|t| t <= now) {
                    if let Some(e) = self.sensors[i].client.handle_timeout(now) {
                        let (_, line) = self.sensors[i].event(now, e);
                        self.note(|| line);
                    }
                }
                if let Some(line) = self.sensors[i].act(now) {
                    self.note(|| line);
                }
            }
            self.drain()?;
            self.check()?;
        }
        self.check_end()
    }

    /// A datagram arrives.
    fn arrive(&mut self, d: net::Datagram) -> Result<(), String> {
        let now = self.now;
        match d.to {
            Node::Gateway => {
                let Some(s) = self.sensors.get(d.sensor) else { return Ok(()) };
                let from = s.addr;
                let data = Bytes::from(d.data);
                self.note(|| format!("s{} -> gw {}", d.sensor, show(&data)));
                self.ep.handle_datagram(self.at(now), from, &data);
            }
            Node::Sensor(n) => {
                self.note(|| format!("gw -> s{n} {}", show(&d.data)));
                let Some(s) = self.sensors.get_mut(n) else { return Ok(()) };
                let event = match s.client.handle_datagram(now, &d.data) {
                    Ok(Some(e)) => s.event(now, e),
                    Ok(None) => return Ok(()),
                    Err(e @ mqttsn_client::Error::Malformed(_)) => {
                        return Err(format!("s{n} cannot decode a datagram from the gateway: {e}"))
                    }
                    Err(e) => {
                        // A stray answer (a duplicate, a late one): the
                        // client says so and carries on.
                        self.note(|| format!("s{n} ignores it: {e}"));
                        return Ok(());
                    }
                };
                let (acked, line) = event;
                self.note(|| line);
                if let Some((payload, qos)) = acked {
                    self.check_acked(n, &payload, qos)?;
                }
            }
        }
        Ok(())
    }

    /// Moves every output to where it goes until nothing moves.
    fn drain(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 2048];
        let mut outputs = 0usize;
        loop {
            let mut any = false;
            let now = self.now;
            while let Some(t) = self.ep.poll_transmit(&mut buf) {
                any = true;
                outputs += 1;
                let data = buf.get(..t.len).ok_or("a transmit longer than its buffer")?.to_vec();
                let Some(n) = self.sensors.iter().position(|s| s.addr == t.to) else {
                    return Err(format!("a datagram to {}, who is no sensor", t.to));
                };
                self.datagrams += 1;
                self.net.send(now, n, Node::Sensor(n), data);
            }
            while let Some((key, cmd)) = self.ep.poll_upstream() {
                any = true;
                outputs += 1;
                self.note(|| format!("gw => broker [{key}] {cmd:?}"));
                self.broker.command(now, key, cmd);
            }
            if self.ep.poll_store().is_some() || self.ep.poll_forward().is_some() {
                return Err("a store write or a forward from a lone worker without a store".into());
            }
            while let Some((key, ev)) = self.broker.poll_event() {
                any = true;
                outputs += 1;
                self.note(|| format!("broker => gw [{key}] {ev:?}"));
                self.ep.handle_upstream(self.at(now), key, ev);
            }
            for n in 0..self.sensors.len() {
                while let Some(len) = self.sensors[n].client.poll_transmit(&mut buf) {
                    any = true;
                    outputs += 1;
                    let data = buf.get(..len).ok_or("a client datagram longer than its buffer")?;
                    self.datagrams += 1;
                    self.net.send(now, n, Node::Gateway, data.to_vec());
                }
            }
            if outputs > MAX_OUTPUTS_PER_STEP {
                return Err(format!("a step produced {outputs} outputs"));
            }
            if !any {
                return Ok(());
            }
        }
    }

    /// A publish the client saw acknowledged reached the broker: at least
    /// once at QoS 1, exactly once at QoS 2.
    fn check_acked(&self, n: usize, payload: &[u8], qos: QoS) -> Result<(), String> {
        let times = self.broker.accepted.get(payload).map_or(0, |(_, t)| *t);
        let name = String::from_utf8_lossy(payload);
        match qos {
            QoS::AtLeastOnce if times == 0 => {
                Err(format!("s{n}: QoS 1 {name} acknowledged, never accepted by the broker"))
            }
            QoS::ExactlyOnce if times != 1 => Err(format!(
                "s{n}: QoS 2 {name} acknowledged, accepted by the broker {times} times"
            )),
            _ => Ok(()),
        }
    }

    /// What must hold after every step.
    fn check(&mut self) -> Result<(), String> {
        self.ep.flush_metrics();
        let active = self.metrics.sessions_active.load(Ordering::Relaxed);
        let sessions = self.ep.session_count() as u64;
        if active > sessions {
            return Err(format!("sessions_active {active} with {sessions} sessions"));
        }
        for (name, g) in [
            ("buffered_messages", &self.metrics.buffered_messages),
            ("buffered_bytes", &self.metrics.buffered_bytes),
            ("sessions_asleep", &self.metrics.sessions_asleep),
        ] {
            let v = g.load(Ordering::Relaxed);
            if v >= 1 << 40 {
                return Err(format!("{name} {v}: a gauge below zero"));
            }
        }
        if self.net.len() > MAX_IN_FLIGHT {
            return Err(format!("{} datagrams in flight", self.net.len()));
        }
        if let Some(p) = self.broker.qos2_twice.first() {
            return Err(format!(
                "QoS 2 {} accepted twice by the broker",
                String::from_utf8_lossy(p)
            ));
        }
        for s in self.sensors.iter().filter(|s| s.steady) {
            if let Some((p, _)) = s.received.iter().find(|(_, r)| r[2] > 1) {
                return Err(format!(
                    "s{}: QoS 2 {} received twice",
                    s.n,
                    String::from_utf8_lossy(p)
                ));
            }
        }
        Ok(())
    }

    /// What must hold after the quiet drain.
    fn check_end(&mut self) -> Result<(), String> {
        self.check()?;
        for s in &self.sensors {
            if !s.steady || !s.client.is_connected() {
                continue;
            }
            let cid = client_id_of(s.n);
            for ((c, payload), (qos, _)) in self.broker.acked.range((cid.clone(), Bytes::new())..) {
                if *c != cid {
                    break;
                }
                let r = s.received.get(&payload[..]).copied().unwrap_or_default();
                let name = String::from_utf8_lossy(payload);
                match qos {
                    UpQoS::AtLeastOnce if r[1] + r[2] == 0 => {
                        return Err(format!(
                            "s{}: QoS 1 {name} acknowledged by the gateway, never received",
                            s.n
                        ));
                    }
                    UpQoS::ExactlyOnce if r[2] != 1 => {
                        return Err(format!(
                            "s{}: QoS 2 {name} acknowledged by the gateway, received {} times",
                            s.n, r[2]
                        ));
                    }
                    _ => {}
                }
            }
            let waiting = self.broker.unacked_for(&cid);
            if waiting > 0 {
                return Err(format!(
                    "s{}: {waiting} deliveries never acknowledged after the quiet drain",
                    s.n
                ));
            }
        }
        Ok(())
    }
}

/// A datagram for the trace: its packet (a payload as text), or its
/// octets.
fn show(d: &[u8]) -> String {
    match mqttsn_codec::Packet::decode(d) {
        Ok(mqttsn_codec::Packet::Publish(p)) => format!(
            "Publish {{ dup: {}, qos: {:?}, topic: {:?}, msg_id: {}, data: {:?} }}",
            p.dup,
            p.qos,
            p.topic,
            p.msg_id,
            String::from_utf8_lossy(p.data)
        ),
        Ok(p) => format!("{p:?}"),
        Err(e) => format!("undecodable ({e}): {d:02x?}"),
    }
}
