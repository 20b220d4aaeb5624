//! The transparent gateway's upstream side (spec 4.2): every sensor
//! session gets its own MQTT 3.1.1 connection to the broker.
//!
//! [`Transparent`] holds one sans-IO [`Client`] per [`UpstreamKey`] and the
//! life of its transport: open at once for a first connect or a
//! replacement, after an exponential backoff with jitter after an outage,
//! a bounded time to open, a half-close that waits for the broker after
//! DISCONNECT (so a replacement connection is never mistaken for a
//! takeover that fires the will). It implements [`Upstreams`]: no socket,
//! task or clock inside, so every behaviour is tested with virtual time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::connection::UpstreamOptions;
use super::{Command, ConnId, Event, Io, UpstreamKey, Upstreams};
use crate::mqtt::client::{Client, Want};
use crate::mqtt::codec;

/// Where one upstream's transport is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No transport.
    Down,
    /// Waiting before the next attempt.
    Backoff { until: Instant },
    /// Waiting for one of the opens in progress to finish.
    Queued,
    /// [`Io::Open`] asked for; given up at `deadline`.
    Opening { conn: ConnId, deadline: Instant },
    /// Connected.
    Up { conn: ConnId },
    /// [`Io::Close`] with linger asked for; waiting for the driver.
    Closing { conn: ConnId },
}

#[derive(Debug)]
struct Slot {
    client: Client,
    link: Link,
    /// The next backoff delay.
    delay: Duration,
    /// When the broker last accepted the connection.
    up_since: Option<Instant>,
    /// The deadline the timer heap holds for this slot.
    scheduled: Option<Instant>,
    /// Listed in `dirty`: has octets to write.
    dirty: bool,
    /// How busy it is.
    activity: crate::activity::Activity,
    /// When its octets were last handed out for writing.
    last_write: Option<Instant>,
    /// QoS 0 octets lingering until then.
    flush_at: Option<Instant>,
    /// Counted in `opening`.
    admitted: bool,
}

/// Every sensor's own MQTT connection. See the module documentation.
#[derive(Debug)]
pub struct Transparent {
    opts: UpstreamOptions,
    /// How the broker is named in connect failures.
    broker: String,
    /// Boxed: the map grows by doubling, and a spare bucket then costs a
    /// pointer, not a whole client.
    slots: HashMap<UpstreamKey, Box<Slot>>,
    conns: HashMap<ConnId, UpstreamKey>,
    next_conn: ConnId,
    timers: BinaryHeap<Reverse<(Instant, UpstreamKey)>>,
    events: VecDeque<(UpstreamKey, Event)>,
    io: VecDeque<Io>,
    dirty: VecDeque<UpstreamKey>,
    /// Jitter source (xorshift64*), seeded per gateway.
    rng: u64,
    /// When idle clients next give back their spare memory.
    shrink_at: Option<Instant>,
    /// Transports being opened now.
    opening: usize,
    /// Upstreams waiting for an open, oldest first.
    queued: VecDeque<UpstreamKey>,
}

/// How long a connection must have lasted for the reconnect delay after it
/// to start again from [`Backoff::initial`](super::connection::Backoff).
pub const STABLE: Duration = Duration::from_secs(10);

/// How often idle clients give back spare memory.
const SHRINK_EVERY: Duration = Duration::from_secs(5);

impl Transparent {
    /// An empty set; `broker` names the broker in failure reasons and
    /// `seed` spreads the reconnect jitter.
    pub fn new(opts: UpstreamOptions, broker: String, seed: u64) -> Self {
        Self {
            opts,
            broker,
            slots: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            io: VecDeque::new(),
            dirty: VecDeque::new(),
            rng: seed | 1,
            shrink_at: None,
            opening: 0,
            queued: VecDeque::new(),
        }
    }

    /// 50% to 100% of `d`.
    fn jitter(&mut self, d: Duration) -> Duration {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let spread = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 54; // 0..1024
        d.mul_f64(0.5 + spread as f64 / 2048.0)
    }

    /// Brings one upstream up to date after an input: events out, the
    /// transport it wants, octets to write, its next deadline.
    fn service(&mut self, key: UpstreamKey, now: Instant) {
        let Some(slot) = self.slots.get_mut(&key) else { return };
        while let Some(ev) = slot.client.poll_event() {
            if matches!(ev, Event::Connected { .. }) {
                slot.up_since = Some(now);
            }
            self.events.push_back((key, ev));
        }
        if let Link::Up { conn } = slot.link {
            if slot.client.poll_close() {
                // What the client wrote last (DISCONNECT) goes out first.
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty.push_back(key);
                }
                slot.link = Link::Closing { conn };
                self.io.push_back(Io::Close { conn, linger: true });
            } else if slot.client.has_transmit() && !slot.dirty {
                let linger = self.opts.qos0_linger;
                let due = linger.is_zero()
                    || slot.client.has_urgent_transmit()
                    || slot.last_write.is_none_or(|t| now >= t + linger);
                if due {
                    slot.dirty = true;
                    slot.last_write = Some(now);
                    slot.flush_at = None;
                    self.dirty.push_back(key);
                } else if slot.flush_at.is_none() {
                    slot.flush_at = slot.last_write.map(|t| t + linger);
                }
            }
        }
        if slot.client.is_finished() {
            match slot.link {
                Link::Down | Link::Backoff { .. } | Link::Queued => {
                    if slot.admitted {
                        self.opening = self.opening.saturating_sub(1);
                    }
                    self.slots.remove(&key);
                    self.admit(now);
                    return;
                }
                Link::Opening { conn, .. } => {
                    if slot.admitted {
                        self.opening = self.opening.saturating_sub(1);
                    }
                    self.slots.remove(&key);
                    self.abandon(conn);
                    self.admit(now);
                    return;
                }
                Link::Up { .. } | Link::Closing { .. } => {}
            }
        }
        if slot.link == Link::Down {
            match slot.client.want() {
                Want::Nothing => {}
                Want::ConnectNow => self.open(key, now),
                Want::ConnectAfterBackoff => {
                    // The delay starts again from the first only after a
                    // connection that lasted: one the broker closes right
                    // after accepting it (another client with the same
                    // ClientId taking it over) backs off further each time.
                    if slot
                        .up_since
                        .take()
                        .is_some_and(|t| now.saturating_duration_since(t) >= STABLE)
                    {
                        slot.delay = self.opts.backoff.initial;
                    }
                    let delay = slot.delay;
                    slot.delay = (delay * 2).min(self.opts.backoff.max);
                    let wait = self.jitter(delay);
                    if let Some(slot) = self.slots.get_mut(&key) {
                        slot.link = Link::Backoff { until: now + wait };
                    }
                }
            }
        }
        let Some(slot) = self.slots.get_mut(&key) else { return };
        // An open counts against `max_connecting` until the broker has
        // answered CONNECT (or the attempt failed): a connection the
        // broker has not accepted yet still sits in its accept queue.
        let in_progress = matches!(slot.link, Link::Opening { .. })
            || (matches!(slot.link, Link::Up { .. }) && !slot.client.is_up());
        if slot.admitted && !in_progress {
            slot.admitted = false;
            self.opening = self.opening.saturating_sub(1);
            self.admit(now);
        }
        let Some(slot) = self.slots.get_mut(&key) else { return };
        // A rarely busy client gives back the capacity its step needed (its
        // octets are shrunk only once written).
        if slot.activity.step(now) && !slot.dirty {
            slot.client.shrink_idle();
        }
        let link_deadline = match slot.link {
            Link::Backoff { until } => Some(until),
            Link::Opening { deadline, .. } => Some(deadline),
            _ => None,
        };
        let next =
            [link_deadline, slot.client.poll_timeout(), slot.flush_at].into_iter().flatten().min();
        if let Some(t) = next {
            if slot.scheduled.is_none_or(|s| t < s) {
                slot.scheduled = Some(t);
                self.timers.push(Reverse((t, key)));
            }
        }
    }

    /// Asks for a transport for `key`, or queues it while
    /// `max_connecting` opens are in progress (a burst of sensors must not
    /// overflow the broker's accept queue, whose dropped SYNs cost seconds).
    fn open(&mut self, key: UpstreamKey, now: Instant) {
        let Some(slot) = self.slots.get_mut(&key) else { return };
        if !slot.admitted && self.opening >= self.opts.max_connecting.max(1) {
            slot.link = Link::Queued;
            self.queued.push_back(key);
            return;
        }
        if !slot.admitted {
            slot.admitted = true;
            self.opening += 1;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let deadline = now + self.opts.connect_timeout;
        slot.link = Link::Opening { conn, deadline };
        self.conns.insert(conn, key);
        let cert = slot.client.client_cert().cloned();
        self.io.push_back(Io::Open { conn, cert });
    }

    /// Lets queued upstreams open while there is room.
    fn admit(&mut self, now: Instant) {
        while self.opening < self.opts.max_connecting.max(1) {
            let Some(key) = self.queued.pop_front() else { break };
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            if slot.link != Link::Queued {
                continue;
            }
            slot.link = Link::Down;
            if slot.client.want() != Want::Nothing {
                self.open(key, now);
            }
            self.service(key, now);
        }
    }

    /// The slot of a live transport, if `conn` is still the slot's.
    fn slot_of(&mut self, conn: ConnId) -> Option<(UpstreamKey, &mut Slot)> {
        let key = *self.conns.get(&conn)?;
        let slot = self.slots.get_mut(&key)?;
        match slot.link {
            Link::Opening { conn: c, .. } | Link::Up { conn: c } | Link::Closing { conn: c }
                if c == conn =>
            {
                Some((key, slot))
            }
            _ => None,
        }
    }

    /// Forgets a transport; the driver is told to drop it (no report).
    fn abandon(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.io.push_back(Io::Close { conn, linger: false });
    }
}

impl Upstreams for Transparent {
    fn handle_command(&mut self, key: UpstreamKey, cmd: Command, now: Instant) {
        let slot = match self.slots.get_mut(&key) {
            Some(s) => s,
            None => {
                if !matches!(cmd, Command::Connect(_) | Command::Restore { .. }) {
                    // Nothing to close or acknowledge without a connection.
                    return;
                }
                self.shrink_at.get_or_insert(now + SHRINK_EVERY);
                self.slots.entry(key).or_insert_with(|| {
                    Box::new(Slot {
                        client: Client::new(self.opts.client, now),
                        link: Link::Down,
                        delay: self.opts.backoff.initial,
                        up_since: None,
                        scheduled: None,
                        dirty: false,
                        activity: crate::activity::Activity::default(),
                        last_write: None,
                        flush_at: None,
                        admitted: false,
                    })
                })
            }
        };
        let replacing = matches!(cmd, Command::Connect(_));
        slot.client.handle_command(cmd, now);
        if replacing {
            if let Link::Backoff { .. } = slot.link {
                // A new spec connects at once, even during an outage.
                slot.link = Link::Down;
            }
        }
        self.service(key, now);
    }

    fn handle_opened(&mut self, conn: ConnId, now: Instant) {
        let Some((key, slot)) = self.slot_of(conn) else {
            self.abandon(conn);
            return;
        };
        if !matches!(slot.link, Link::Opening { .. }) {
            return;
        }
        slot.link = Link::Up { conn };
        slot.client.handle_transport_up(now);
        self.service(key, now);
    }

    fn handle_open_failed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        let Some((key, slot)) = self.slot_of(conn) else {
            self.conns.remove(&conn);
            return;
        };
        slot.link = Link::Down;
        slot.client.handle_connect_failed(reason);
        self.conns.remove(&conn);
        self.service(key, now);
    }

    fn handle_received(&mut self, conn: ConnId, data: &mut BytesMut, now: Instant) {
        let max = self.opts.max_packet;
        let Some((key, slot)) = self.slot_of(conn) else {
            data.clear();
            return;
        };
        if !matches!(slot.link, Link::Up { .. } | Link::Closing { .. }) {
            data.clear();
            return;
        }
        loop {
            match codec::decode(data, max) {
                Ok(Some(p)) => slot.client.handle_packet(p, now),
                Ok(None) => break,
                Err(e) => {
                    data.clear();
                    slot.link = Link::Down;
                    slot.client.handle_transport_down(&format!("bad packet from the broker: {e}"));
                    self.abandon(conn);
                    break;
                }
            }
        }
        self.service(key, now);
    }

    fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        let Some((key, slot)) = self.slot_of(conn) else {
            self.conns.remove(&conn);
            return;
        };
        let reason = match slot.link {
            Link::Closing { .. } => "closed by the gateway",
            Link::Opening { .. } => {
                slot.client.handle_connect_failed(reason);
                slot.link = Link::Down;
                self.conns.remove(&conn);
                self.service(key, now);
                return;
            }
            _ => reason,
        };
        slot.link = Link::Down;
        slot.client.handle_transport_down(reason);
        self.conns.remove(&conn);
        self.service(key, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.shrink_at {
            Some(t) if now >= t => {
                for slot in self.slots.values_mut() {
                    if !slot.dirty {
                        slot.client.shrink_idle();
                    }
                }
                self.shrink_at = Some(now + SHRINK_EVERY);
            }
            None => self.shrink_at = Some(now + SHRINK_EVERY),
            _ => {}
        }
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            if slot.scheduled != Some(t) {
                continue;
            }
            slot.scheduled = None;
            if slot.flush_at.is_some_and(|t| now >= t) {
                slot.flush_at = None;
            }
            match slot.link {
                Link::Backoff { until } if now >= until => {
                    slot.link = Link::Down;
                    if slot.client.want() != Want::Nothing {
                        self.open(key, now);
                    }
                }
                Link::Opening { conn, deadline } if now >= deadline => {
                    slot.link = Link::Down;
                    let reason = format!("connect to {} timed out", self.broker);
                    slot.client.handle_connect_failed(&reason);
                    self.abandon(conn);
                }
                _ => {}
            }
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.client.handle_timeout(now);
            }
            self.service(key, now);
        }
    }

    fn poll_event(&mut self) -> Option<(UpstreamKey, Event)> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<(ConnId, BytesMut)> {
        while let Some(key) = self.dirty.pop_front() {
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            slot.dirty = false;
            let conn = match slot.link {
                Link::Up { conn } | Link::Closing { conn } => conn,
                _ => continue,
            };
            if let Some(bytes) = slot.client.poll_transmit() {
                return Some((conn, bytes));
            }
        }
        None
    }

    fn poll_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        // Entries of slots that were removed or rescheduled are dropped
        // lazily, here and in `handle_timeout`.
        let shrink = self.shrink_at.filter(|_| !self.slots.is_empty());
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            match self.slots.get(&key) {
                Some(s) if s.scheduled == Some(t) => {
                    return Some(shrink.map_or(t, |s| s.min(t)));
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        shrink
    }

    fn open_count(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::mqtt::codec::MqttPacket;
    use crate::mqtt::QoS;
    use crate::upstream::connection::Backoff;
    use crate::upstream::ConnectSpec;

    const MS: Duration = Duration::from_millis(1);

    fn spec() -> ConnectSpec {
        ConnectSpec {
            client_id: "s1".into(),
            clean_session: false,
            keep_alive: 0,
            will: None,
            username: None,
            password: None,
            client_cert: None,
        }
    }

    struct T {
        u: Transparent,
        now: Instant,
    }

    impl T {
        fn new() -> Self {
            let opts = UpstreamOptions {
                backoff: Backoff { initial: 100 * MS, max: 400 * MS },
                connect_timeout: 1000 * MS,
                ..UpstreamOptions::default()
            };
            Self { u: Transparent::new(opts, "mqtt://broker".into(), 7), now: Instant::now() }
        }
        fn io(&mut self) -> Vec<Io> {
            std::iter::from_fn(|| self.u.poll_io()).collect()
        }
        fn events(&mut self) -> Vec<(UpstreamKey, Event)> {
            std::iter::from_fn(|| self.u.poll_event()).collect()
        }
        fn written(&mut self) -> Vec<(ConnId, MqttPacket)> {
            let mut out = Vec::new();
            while let Some((conn, mut b)) = self.u.poll_transmit() {
                while let Some(p) = codec::decode(&mut b, 1 << 20).unwrap() {
                    out.push((conn, p));
                }
            }
            out
        }
        fn feed(&mut self, conn: ConnId, p: MqttPacket) {
            let mut b = BytesMut::new();
            p.encode(&mut b);
            self.u.handle_received(conn, &mut b, self.now);
        }
        fn advance(&mut self, d: Duration) {
            self.now += d;
            if self.u.poll_timeout().is_some_and(|t| t <= self.now) {
                self.u.handle_timeout(self.now);
            }
        }
        /// Connects key 1 up to CONNACK; returns its transport.
        fn up(&mut self) -> ConnId {
            self.u.handle_command(1, Command::Connect(Box::new(spec())), self.now);
            let [Io::Open { conn, .. }] = self.io()[..] else { panic!("no open") };
            self.u.handle_opened(conn, self.now);
            assert!(matches!(&self.written()[..], [(c, MqttPacket::Connect(_))] if *c == conn));
            self.feed(conn, MqttPacket::ConnAck { session_present: false, code: 0 });
            assert_eq!(self.events(), [(1, Event::Connected { session_present: false })]);
            conn
        }
    }

    #[test]
    fn a_command_before_a_connect_starts_nothing() {
        let mut t = T::new();
        t.u.handle_command(5, Command::Ack(crate::upstream::DeliveryId(1)), t.now);
        assert!(t.io().is_empty());
        assert_eq!(t.u.open_count(), 0);
    }

    #[test]
    fn qos0_is_written_at_once_and_sends_no_event() {
        let mut t = T::new();
        let conn = t.up();
        for id in 1..=3 {
            t.u.handle_command(
                1,
                Command::Publish {
                    id,
                    topic: "a/b".into(),
                    payload: bytes::Bytes::from_static(b"x"),
                    qos: QoS::AtMostOnce,
                    retain: false,
                },
                t.now,
            );
        }
        let w = t.written();
        assert_eq!(w.len(), 3, "coalesced into one write, three packets");
        assert!(w.iter().all(|(c, p)| *c == conn && matches!(p, MqttPacket::Publish(_))));
        assert!(t.events().is_empty());
    }

    #[test]
    fn a_failed_open_backs_off_with_jitter_and_doubling() {
        let mut t = T::new();
        t.u.handle_command(1, Command::Connect(Box::new(spec())), t.now);
        let [Io::Open { conn, .. }] = t.io()[..] else { panic!() };
        t.u.handle_open_failed(conn, "refused", t.now);
        assert!(
            matches!(&t.events()[..], [(1, Event::Unavailable { reason })] if reason == "refused")
        );
        assert!(t.io().is_empty(), "no retry before the backoff");
        let mut waited = Vec::new();
        for _ in 0..4 {
            let start = t.now;
            loop {
                t.advance(5 * MS);
                if let [Io::Open { conn, .. }] = t.io()[..] {
                    waited.push(t.now - start);
                    t.u.handle_open_failed(conn, "refused", t.now);
                    break;
                }
                assert!(t.now - start < Duration::from_secs(2));
            }
        }
        assert!(t.events().is_empty(), "one Unavailable per outage");
        // 50-100% of 100, 200, 400, 400 ms.
        for (w, full) in waited.iter().zip([100, 200, 400, 400]) {
            assert!(*w >= full / 2 * MS && *w <= (full + 5) * MS, "{waited:?}");
        }
    }

    #[test]
    fn an_open_that_takes_too_long_is_abandoned_and_retried() {
        let mut t = T::new();
        t.u.handle_command(1, Command::Connect(Box::new(spec())), t.now);
        let [Io::Open { conn, .. }] = t.io()[..] else { panic!() };
        t.advance(1001 * MS);
        assert_eq!(t.io(), [Io::Close { conn, linger: false }]);
        assert!(
            matches!(&t.events()[..], [(1, Event::Unavailable { reason })] if reason.contains("timed out"))
        );
        // The late transport is dropped.
        t.u.handle_opened(conn, t.now);
        assert_eq!(t.io(), [Io::Close { conn, linger: false }]);
    }

    #[test]
    fn disconnect_half_closes_and_waits_for_the_broker() {
        let mut t = T::new();
        let conn = t.up();
        t.u.handle_command(1, Command::Disconnect, t.now);
        assert!(matches!(&t.written()[..], [(_, MqttPacket::Disconnect)]));
        assert_eq!(t.io(), [Io::Close { conn, linger: true }]);
        assert!(t.events().is_empty(), "Closed only once the broker closed");
        t.u.handle_closed(conn, "eof", t.now);
        assert_eq!(t.events(), [(1, Event::Closed)]);
        assert_eq!(t.u.open_count(), 0);
    }

    #[test]
    fn a_replacement_connects_again_after_the_close() {
        let mut t = T::new();
        let conn = t.up();
        t.u.handle_command(1, Command::Connect(Box::new(spec())), t.now);
        assert!(matches!(&t.written()[..], [(_, MqttPacket::Disconnect)]));
        assert_eq!(t.io(), [Io::Close { conn, linger: true }]);
        t.u.handle_closed(conn, "eof", t.now);
        let [Io::Open { conn: second, .. }] = t.io()[..] else { panic!() };
        assert_ne!(second, conn);
        assert!(t.events().is_empty(), "a replacement is not an outage");
    }

    #[test]
    fn a_broken_packet_drops_the_transport_and_reconnects_after_backoff() {
        let mut t = T::new();
        let conn = t.up();
        let mut junk = BytesMut::from(&[0xf0u8, 0][..]);
        t.u.handle_received(conn, &mut junk, t.now);
        assert_eq!(t.io(), [Io::Close { conn, linger: false }]);
        assert!(matches!(&t.events()[..], [(1, Event::Unavailable { .. })]));
        t.advance(200 * MS);
        assert!(matches!(t.io()[..], [Io::Open { .. }]));
    }

    #[test]
    fn a_connection_closed_right_after_connack_backs_off_further_each_time() {
        let mut t = T::new();
        let mut conn = t.up();
        let mut waited = Vec::new();
        for _ in 0..4 {
            // Taken over: the broker closes it at once after CONNACK.
            t.u.handle_closed(conn, "eof", t.now);
            assert!(matches!(&t.events()[..], [(1, Event::Unavailable { .. })]));
            let start = t.now;
            conn = loop {
                t.advance(5 * MS);
                if let [Io::Open { conn, .. }] = t.io()[..] {
                    waited.push(t.now - start);
                    break conn;
                }
                assert!(t.now - start < Duration::from_secs(2));
            };
            t.u.handle_opened(conn, t.now);
            t.written();
            t.feed(conn, MqttPacket::ConnAck { session_present: false, code: 0 });
            assert!(matches!(&t.events()[..], [(1, Event::Connected { .. })]));
        }
        // 50-100% of 100, 200, 400, 400 ms: never back to the first delay.
        for (w, full) in waited.iter().zip([100, 200, 400, 400]) {
            assert!(*w >= full / 2 * MS && *w <= (full + 5) * MS, "{waited:?}");
        }
        // A connection that lasted: the next outage starts from the first
        // delay again.
        t.now += STABLE;
        t.u.handle_closed(conn, "eof", t.now);
        t.events();
        let start = t.now;
        loop {
            t.advance(5 * MS);
            if let [Io::Open { .. }] = t.io()[..] {
                break;
            }
            assert!(t.now - start < Duration::from_secs(2));
        }
        assert!(t.now - start <= 105 * MS, "{:?}", t.now - start);
    }

    #[test]
    fn a_burst_of_connects_opens_a_bounded_number_at_once() {
        let mut t = T::new();
        t.u.opts.max_connecting = 2;
        for key in 1..=5 {
            t.u.handle_command(key, Command::Connect(Box::new(spec())), t.now);
        }
        let opens: Vec<ConnId> = t
            .io()
            .into_iter()
            .map(|io| match io {
                Io::Open { conn, .. } => conn,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(opens.len(), 2, "the rest wait");
        t.u.handle_opened(opens[0], t.now);
        assert!(t.io().is_empty(), "an open counts until the broker answered CONNECT");
        t.written();
        t.feed(opens[0], MqttPacket::ConnAck { session_present: false, code: 0 });
        assert!(matches!(t.io()[..], [Io::Open { .. }]), "one more when one is done");
        t.u.handle_open_failed(opens[1], "refused", t.now);
        assert!(matches!(t.io()[..], [Io::Open { .. }]));
        // A queued upstream that is closed before its turn opens nothing.
        t.events();
        t.u.handle_command(5, Command::Disconnect, t.now);
        assert_eq!(t.events(), [(5, Event::Closed)]);
        assert!(t.io().is_empty());
        assert_eq!(t.u.open_count(), 4);
    }

    #[test]
    fn a_lost_connection_is_an_outage() {
        let mut t = T::new();
        let conn = t.up();
        t.u.handle_closed(conn, "connection closed by the broker", t.now);
        assert!(matches!(
            &t.events()[..],
            [(1, Event::Unavailable { reason })] if reason == "connection closed by the broker"
        ));
        t.advance(101 * MS);
        assert!(matches!(t.io()[..], [Io::Open { .. }]));
    }
}
