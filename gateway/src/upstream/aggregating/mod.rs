//! The aggregating gateway (spec 4.3): every sensor session of a worker
//! shares a small pool of MQTT connections that carry the gateway's own
//! identity.
//!
//! [`Aggregating`] implements [`Upstreams`] like
//! [`Transparent`](super::transparent::Transparent), so the endpoint, its
//! sessions and the driver are the same in both modes. It keeps an inner
//! `Transparent` whose upstreams are the pool's connections (their
//! reconnects, backoff, half-close and resending come from there), and
//! translates between the sessions' commands and events and the pool's:
//!
//! * a sensor's PUBLISH goes out on the pool connection its ClientId hashes
//!   to (so its publishes keep their order), under a pool request id, and
//!   the broker's PUBACK / PUBREC / PUBCOMP come back to it;
//! * a SUBSCRIBE is counted in the [`Filters`] trie of the pool connection
//!   its filter hashes to, and sent upstream at the highest QoS any sensor
//!   asked for; the broker's granted QoS or refusal is honoured per sensor,
//!   and the last sensor's UNSUBSCRIBE unsubscribes upstream;
//! * a message from the broker is fanned out to every sensor whose filters
//!   match it (once per sensor, at the lower of the message's QoS and the
//!   sensor's), and acknowledged upstream when every one of them has taken
//!   it: the sessions run with
//!   [`ack_on_receipt`](crate::session::SessionConfig::ack_on_receipt), so
//!   that is when each has queued it (and stored it, if persistent), and a
//!   slow or sleeping sensor never holds up the others;
//! * retained messages: every SUBSCRIBE is sent upstream, even for a filter
//!   already held, so the broker sends the matching retained messages again
//!   (MQTT 3.1.1 section 3.8.4); a message with RETAIN set (sent only for a
//!   new subscription, section 3.3.1.3) goes only to the sensors whose
//!   subscription asked for it, within [`RETAINED_WINDOW`] of its SUBACK;
//! * wills are published by the gateway when a session ends without a
//!   clean DISCONNECT ([`Command::Abort`]);
//! * a sensor with CleanSession false keeps its subscriptions after it
//!   disconnects, and messages for it are kept (bounded) until it comes
//!   back.
//!
//! The gateway's own connection ([`ServerOptions::own_client_id`]) is not
//! pooled: it goes to the inner `Transparent` as it is.
//!
//! [`ServerOptions::own_client_id`]: crate::options::ServerOptions::own_client_id

pub mod filters;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::transparent::Transparent;
use super::{
    Command, ConnId, ConnectSpec, DeliveryId, Event, Io, RequestId, RestoredStage, UpstreamKey,
    Upstreams, Will,
};
use crate::metrics::Metrics;
use crate::mqtt::QoS;
pub use filters::Filters;
use filters::Upstream;

/// How long after its SUBACK a subscription still receives the retained
/// messages the broker sends for it.
pub const RETAINED_WINDOW: Duration = Duration::from_secs(30);

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Connections in the pool (of one worker); at least one.
    pub connections: usize,
    /// The pool connections' ClientIds are this, `-`, the worker and `-`
    /// and the connection's index.
    pub client_id: String,
    /// The worker, for the ClientIds.
    pub worker: usize,
    /// The MQTT keepalive of the pool connections, in seconds.
    pub keep_alive: u16,
    /// The gateway's upstream username.
    pub username: Option<String>,
    /// The gateway's upstream password.
    pub password: Option<Bytes>,
    /// The gateway's own connection, passed through unpooled.
    pub own_client_id: String,
    /// Messages kept for one disconnected sensor with CleanSession false;
    /// older ones are dropped beyond it.
    pub max_offline: usize,
}

/// A sensor's stable identity in the pool (its ClientId's), kept across
/// its sessions while it has CleanSession false.
type SensorId = u32;

/// What the pool knows of one ClientId.
#[derive(Debug)]
struct Sensor {
    client_id: Arc<str>,
    /// The session using it now.
    key: Option<UpstreamKey>,
    /// CleanSession of its last connect.
    clean: bool,
    /// Its will, published when it is lost.
    will: Option<Will>,
    /// The pool connection its publishes take.
    pool: usize,
    /// Messages taken for it while it has no session.
    offline: VecDeque<Offline>,
}

#[derive(Debug)]
struct Offline {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
    retain: bool,
}

/// A sensor SUBSCRIBE waiting for the broker's SUBACK.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    key: UpstreamKey,
    id: RequestId,
    sensor: SensorId,
    qos: QoS,
}

/// What a pool request id stands for.
#[derive(Debug)]
enum Pending {
    /// A sensor's publish.
    Publish { key: UpstreamKey, id: RequestId },
    /// SUBSCRIBE of one filter for these sensors (none: the pool's own).
    Subscribe { filter: Arc<str>, waiters: Vec<Waiter> },
    /// A sensor's UNSUBSCRIBE of a filter nobody else holds.
    Unsubscribe { key: UpstreamKey, id: RequestId },
    /// The pool's own request (a will, an UNSUBSCRIBE, a SUBSCRIBE again).
    Own,
}

/// A subscription that receives the retained messages the broker sends
/// for it.
#[derive(Debug)]
struct Retained {
    filter: Arc<str>,
    sensor: SensorId,
    qos: QoS,
    /// `None` until its SUBACK.
    until: Option<Instant>,
    /// The topics it received a retained message of: the broker sends
    /// one again for every later SUBSCRIBE of the filter, which is for
    /// the later subscriber only.
    got: HashSet<Arc<str>>,
}

/// One pool connection.
#[derive(Debug)]
struct Conn {
    /// Its key in the inner `Transparent`.
    key: UpstreamKey,
    /// Connected to the broker.
    up: bool,
    /// Asked for (its first connect went out).
    started: bool,
    /// Was up once in this run.
    ever_up: bool,
    /// Why it is down, once an attempt failed or it was lost: a session
    /// that connects meanwhile is told at once, as its own connection
    /// would have told it in transparent mode.
    down: Option<String>,
    next_request: RequestId,
    pending: HashMap<RequestId, Pending>,
    /// The filters whose subscriptions this connection holds.
    filters: Filters<SensorId>,
    retained: Vec<Retained>,
    /// Sessions waiting for this connection to come up, with what their
    /// `Connected` says.
    waiting: Vec<(UpstreamKey, bool)>,
    /// Just connected: the broker's messages wait for the next timeout
    /// (see [`Aggregating::settle`]).
    settling: Option<Instant>,
    /// The messages waiting meanwhile.
    held: VecDeque<Event>,
}

/// Counts for metrics and the status page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Pool connections.
    pub connections: usize,
    /// Pool connections up.
    pub connected: usize,
    /// Distinct filters subscribed upstream.
    pub filters: usize,
    /// Sensor subscriptions (filter and sensor).
    pub subscriptions: usize,
    /// ClientIds known (with or without a session).
    pub sensors: usize,
    /// Messages kept for disconnected sensors.
    pub offline_messages: usize,
}

/// The pool. See the module documentation.
#[derive(Debug)]
pub struct Aggregating {
    opts: PoolOptions,
    inner: Transparent,
    conns: Vec<Conn>,
    /// Keys passed through to `inner` unpooled.
    passthrough: HashSet<UpstreamKey>,
    live: HashMap<UpstreamKey, SensorId>,
    by_client: HashMap<Arc<str>, SensorId>,
    sensors: HashMap<SensorId, Sensor>,
    next_sensor: SensorId,
    /// Sensor-side delivery ids: the session, the pool connection and the
    /// pool-side delivery they stand for.
    deliveries: HashMap<u64, (UpstreamKey, usize, DeliveryId)>,
    /// Sensor deliveries each pool delivery still waits for.
    fanout: HashMap<(usize, DeliveryId), u32>,
    next_delivery: u64,
    /// QoS 2 publishes of sessions: their pool connection and request id,
    /// for the PUBREL.
    qos2: HashMap<(UpstreamKey, RequestId), (usize, RequestId)>,
    /// Counters.
    wills: u64,
    offline_dropped: u64,
    offline: usize,
    metrics: Option<Arc<Metrics>>,
    /// What the gauges hold of this pool.
    shown: PoolStats,
    events: VecDeque<(UpstreamKey, Event)>,
    next_inner_key: UpstreamKey,
    /// Restored QoS 2 publishes the broker recorded in an earlier run:
    /// complete when the session releases them.
    complete_on_release: HashSet<(UpstreamKey, RequestId)>,
    /// Packet identifiers of QoS 2 messages from the broker that restored
    /// sessions hold already: the broker's DUP of one is not given to that
    /// session again.
    qos2_held: HashMap<UpstreamKey, HashSet<u16>>,
    /// QoS 2 publishes of restored sessions, until their first connect.
    pending_restore: HashMap<UpstreamKey, Vec<super::RestoredPublish>>,
    /// Scratch for a fan-out.
    targets: Vec<(SensorId, QoS)>,
}

/// A stable 64-bit FNV-1a hash: which worker and pool connection a
/// ClientId or a filter belongs to must not change between runs (nor
/// between builds, as the standard library's hasher may).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl Aggregating {
    /// A pool over `inner`'s transports. A connection is opened with the
    /// first session that needs it: after a restart, the sessions restored
    /// on this worker all connect in the same step, so they are all
    /// waiting when the broker hands over what it kept for the pool.
    pub fn new(opts: PoolOptions, inner: Transparent) -> Self {
        let n = opts.connections.max(1);
        let conns = (0..n)
            .map(|i| Conn {
                key: u64::MAX - i as u64,
                up: false,
                started: false,
                ever_up: false,
                down: None,
                next_request: 1,
                pending: HashMap::new(),
                filters: Filters::new(),
                retained: Vec::new(),
                waiting: Vec::new(),
                settling: None,
                held: VecDeque::new(),
            })
            .collect();
        Self {
            opts,
            inner,
            conns,
            passthrough: HashSet::new(),
            live: HashMap::new(),
            by_client: HashMap::new(),
            sensors: HashMap::new(),
            next_sensor: 0,
            deliveries: HashMap::new(),
            fanout: HashMap::new(),
            next_delivery: 1,
            qos2: HashMap::new(),
            wills: 0,
            offline_dropped: 0,
            offline: 0,
            metrics: None,
            shown: PoolStats::default(),
            events: VecDeque::new(),
            next_inner_key: u64::MAX - n as u64,
            complete_on_release: HashSet::new(),
            qos2_held: HashMap::new(),
            pending_restore: HashMap::new(),
            targets: Vec::new(),
        }
    }

    /// Keeps the `mqttsn_pool_*` metrics and `mqttsn_wills_published_total`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        Metrics::add(&metrics.pool_connections, self.conns.len() as u64);
        self.shown.connections = self.conns.len();
        self.metrics = Some(metrics);
        self
    }

    /// Moves the gauges to what the pool holds now.
    fn show(&mut self) {
        let Some(m) = &self.metrics else { return };
        let now = self.stats();
        let was = self.shown;
        Metrics::adjust(&m.pool_connections_up, was.connected as u64, now.connected as u64);
        Metrics::adjust(&m.pool_filters, was.filters as u64, now.filters as u64);
        Metrics::adjust(&m.pool_subscriptions, was.subscriptions as u64, now.subscriptions as u64);
        Metrics::adjust(
            &m.pool_offline_messages,
            was.offline_messages as u64,
            now.offline_messages as u64,
        );
        self.shown = now;
    }

    /// Counts for metrics.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            connections: self.conns.len(),
            connected: self.conns.iter().filter(|c| c.up).count(),
            filters: self.conns.iter().map(|c| c.filters.filter_count()).sum(),
            subscriptions: self.conns.iter().map(|c| c.filters.subscription_count()).sum(),
            sensors: self.sensors.len(),
            offline_messages: self.offline,
        }
    }

    /// Wills the gateway published for lost sensors.
    pub fn wills_published(&self) -> u64 {
        self.wills
    }

    /// Messages for disconnected sensors dropped beyond `max_offline`.
    pub fn offline_dropped(&self) -> u64 {
        self.offline_dropped
    }

    fn conn_of(&self, s: &str) -> usize {
        (stable_hash(s) % self.conns.len() as u64) as usize
    }

    /// Sends `cmd` on pool connection `c`, connecting it first if needed.
    fn send(&mut self, c: usize, cmd: Command, now: Instant) {
        self.start(c, now);
        let key = self.conns[c].key;
        self.inner.handle_command(key, cmd, now);
    }

    fn start(&mut self, c: usize, now: Instant) {
        if self.conns[c].started {
            return;
        }
        self.conns[c].started = true;
        let spec = ConnectSpec {
            client_id: format!("{}-{}-{}", self.opts.client_id, self.opts.worker, c),
            // The broker keeps the pool's subscriptions and messages while
            // the gateway restarts (docs/aggregating.md).
            clean_session: false,
            keep_alive: self.opts.keep_alive,
            will: None,
            username: self.opts.username.clone(),
            password: self.opts.password.clone(),
            client_cert: None,
        };
        let key = self.conns[c].key;
        self.inner.handle_command(key, Command::Connect(Box::new(spec)), now);
        // The packet identifiers of the previous run's QoS 2 exchanges are
        // not stored: release them all, so a new PUBLISH is never taken for
        // one of them.
        self.inner.handle_command(key, Command::ReleaseStale, now);
    }

    fn request(&mut self, c: usize, pending: Pending) -> RequestId {
        let conn = &mut self.conns[c];
        let id = conn.next_request;
        conn.next_request += 1;
        conn.pending.insert(id, pending);
        id
    }

    // ----- commands of the sessions -----

    fn connect(&mut self, key: UpstreamKey, spec: Box<ConnectSpec>, now: Instant) {
        let client_id: Arc<str> = Arc::from(spec.client_id.as_str());
        let sid = match self.live.get(&key) {
            Some(&sid) => sid,
            None => match self.by_client.get(&client_id) {
                Some(&sid) => sid,
                None => {
                    let sid = self.next_sensor;
                    self.next_sensor = self.next_sensor.wrapping_add(1);
                    let pool = self.conn_of(&client_id);
                    self.sensors.insert(
                        sid,
                        Sensor {
                            client_id: client_id.clone(),
                            key: None,
                            clean: true,
                            will: None,
                            pool,
                            offline: VecDeque::new(),
                        },
                    );
                    self.by_client.insert(client_id, sid);
                    sid
                }
            },
        };
        let Some(sensor) = self.sensors.get_mut(&sid) else { return };
        if let Some(old) = sensor.key.filter(|&k| k != key) {
            // Taken over by a new session: the old one loses its upstream.
            self.live.remove(&old);
            self.events.push_back((old, Event::Unavailable { reason: "taken over".into() }));
        }
        sensor.key = Some(key);
        self.live.insert(key, sid);
        let present = !spec.clean_session && !sensor.clean;
        sensor.clean = spec.clean_session;
        sensor.will = spec.will.clone();
        let pool = sensor.pool;
        if spec.clean_session {
            self.offline = self.offline.saturating_sub(sensor.offline.len());
            sensor.offline.clear();
            self.forget_subscriptions(sid, now);
        }
        self.start(pool, now);
        if self.conns[pool].up {
            self.connected(key, sid, present);
        } else if let Some(reason) = self.conns[pool].down.clone() {
            self.events.push_back((key, Event::Unavailable { reason }));
        } else {
            self.conns[pool].waiting.push((key, present));
        }
    }

    /// Tells `key` it is connected, and hands it what was kept for it.
    fn connected(&mut self, key: UpstreamKey, sid: SensorId, present: bool) {
        self.events.push_back((key, Event::Connected { session_present: present }));
        let Some(sensor) = self.sensors.get_mut(&sid) else { return };
        self.offline = self.offline.saturating_sub(sensor.offline.len());
        for m in sensor.offline.drain(..) {
            // Acknowledged upstream already: the session owns it now.
            self.events.push_back((
                key,
                Event::Message {
                    delivery: None,
                    packet_id: 0,
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos,
                    retain: m.retain,
                    dup: false,
                },
            ));
        }
    }

    /// Drops every subscription of `sid`, unsubscribing upstream what
    /// nobody else holds.
    fn forget_subscriptions(&mut self, sid: SensorId, now: Instant) {
        for c in 0..self.conns.len() {
            let mut gone = Vec::new();
            self.conns[c].filters.remove_key(sid, |filter, up| {
                if matches!(up, Upstream::Unsubscribe) {
                    gone.push(filter.to_string());
                }
            });
            self.conns[c].retained.retain(|r| r.sensor != sid);
            for filter in gone {
                let id = self.request(c, Pending::Own);
                self.send(c, Command::Unsubscribe { id, filter }, now);
            }
        }
    }

    fn publish(&mut self, key: UpstreamKey, cmd: Command, now: Instant) {
        let Command::Publish { id, topic, payload, qos, retain } = cmd else { return };
        let Some(pool) = self.live.get(&key).and_then(|s| self.sensors.get(s)).map(|s| s.pool)
        else {
            return;
        };
        let pid = if qos == QoS::AtMostOnce {
            let pid = self.conns[pool].next_request;
            self.conns[pool].next_request += 1;
            pid
        } else {
            self.request(pool, Pending::Publish { key, id })
        };
        if qos == QoS::ExactlyOnce {
            self.qos2.insert((key, id), (pool, pid));
        }
        self.send(pool, Command::Publish { id: pid, topic, payload, qos, retain }, now);
    }

    fn release(&mut self, key: UpstreamKey, id: RequestId, now: Instant) {
        if self.complete_on_release.remove(&(key, id)) {
            // Restored as recorded: released by the connection's start.
            self.events.push_back((key, Event::PublishCompleted { id }));
            return;
        }
        let Some(&(pool, pid)) = self.qos2.get(&(key, id)) else { return };
        self.send(pool, Command::Release { id: pid }, now);
    }

    fn subscribe(
        &mut self,
        key: UpstreamKey,
        id: RequestId,
        filter: String,
        qos: QoS,
        now: Instant,
    ) {
        let Some(&sid) = self.live.get(&key) else { return };
        let c = self.conn_of(&filter);
        let filter: Arc<str> = Arc::from(filter);
        self.conns[c].filters.subscribe(&filter, sid, qos);
        let upstream_qos = self.conns[c].filters.subscribed(&filter).unwrap_or(qos);
        self.conns[c].retained.retain(|r| !(r.sensor == sid && r.filter == filter));
        self.conns[c].retained.push(Retained {
            filter: filter.clone(),
            sensor: sid,
            qos,
            until: None,
            got: HashSet::new(),
        });
        let waiter = Waiter { key, id, sensor: sid, qos };
        let pid =
            self.request(c, Pending::Subscribe { filter: filter.clone(), waiters: vec![waiter] });
        self.send(
            c,
            Command::Subscribe { id: pid, filter: filter.to_string(), qos: upstream_qos },
            now,
        );
    }

    fn unsubscribe(&mut self, key: UpstreamKey, id: RequestId, filter: String, now: Instant) {
        let Some(&sid) = self.live.get(&key) else { return };
        let c = self.conn_of(&filter);
        self.conns[c].retained.retain(|r| !(r.sensor == sid && *r.filter == *filter));
        match self.conns[c].filters.unsubscribe(&filter, sid) {
            Upstream::Unsubscribe => {
                let pid = self.request(c, Pending::Unsubscribe { key, id });
                self.send(c, Command::Unsubscribe { id: pid, filter }, now);
            }
            _ => self.events.push_back((key, Event::UnsubAcked { id })),
        }
    }

    fn ack(&mut self, delivery: DeliveryId, now: Instant) {
        let Some((_, c, pool_delivery)) = self.deliveries.remove(&delivery.0) else { return };
        self.taken(c, pool_delivery, now);
    }

    /// One sensor took its copy of a pool delivery.
    fn taken(&mut self, c: usize, pool_delivery: DeliveryId, now: Instant) {
        let Some(left) = self.fanout.get_mut(&(c, pool_delivery)) else { return };
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.fanout.remove(&(c, pool_delivery));
            self.send(c, Command::Ack(pool_delivery), now);
        }
    }

    fn restore(&mut self, key: UpstreamKey, publishes: Vec<super::RestoredPublish>, now: Instant) {
        // The broker knew these under packet identifiers of a pool
        // connection of the gateway's previous run, which are not stored.
        // That connection's first connect releases every QoS 2 message the
        // broker still holds from then (`Command::ReleaseStale`), so one
        // the broker recorded is delivered once: complete it when the
        // session releases it (or at once, released already). One it may
        // not have (no PUBREC seen) is published again as new: delivered
        // twice if the broker had it after all (docs/aggregating.md).
        let Some(pool) = self.live.get(&key).and_then(|s| self.sensors.get(s)).map(|s| s.pool)
        else {
            // Restore comes before the first connect: remember it by key.
            self.pending_restore.entry(key).or_default().extend(publishes);
            return;
        };
        for p in publishes {
            match p.stage {
                RestoredStage::Released => {
                    self.events.push_back((key, Event::PublishCompleted { id: p.id }));
                }
                RestoredStage::Recorded => {
                    self.complete_on_release.insert((key, p.id));
                }
                RestoredStage::Sent => {
                    let pending = Pending::Publish { key, id: p.id };
                    let pid = self.request(pool, pending);
                    self.qos2.insert((key, p.id), (pool, pid));
                    let cmd = Command::Publish {
                        id: pid,
                        topic: p.topic,
                        payload: p.payload,
                        qos: QoS::ExactlyOnce,
                        retain: p.retain,
                    };
                    self.send(pool, cmd, now);
                }
            }
        }
    }

    /// A session ends: with `lost`, its will is published.
    fn close(&mut self, key: UpstreamKey, lost: bool, now: Instant) {
        let Some(sid) = self.live.remove(&key) else {
            self.events.push_back((key, Event::Closed));
            return;
        };
        self.pending_restore.remove(&key);
        self.complete_on_release.retain(|(k, _)| *k != key);
        self.qos2_held.remove(&key);
        // Whatever it still held is acknowledged: nothing waits for it.
        let held: Vec<u64> =
            self.deliveries.iter().filter(|(_, v)| v.0 == key).map(|(d, _)| *d).collect();
        for d in held {
            self.ack(DeliveryId(d), now);
        }
        for c in &mut self.conns {
            c.waiting.retain(|(k, _)| *k != key);
        }
        let (will, clean, pool) = match self.sensors.get_mut(&sid) {
            Some(s) => {
                s.key = None;
                (s.will.take().filter(|_| lost), s.clean, s.pool)
            }
            None => (None, true, 0),
        };
        if let Some(w) = will {
            self.wills += 1;
            if let Some(m) = &self.metrics {
                Metrics::inc(&m.wills_published);
            }
            let id = self.request(pool, Pending::Own);
            self.send(
                pool,
                Command::Publish {
                    id,
                    topic: Arc::from(w.topic),
                    payload: w.payload,
                    qos: w.qos,
                    retain: w.retain,
                },
                now,
            );
            if w.qos == QoS::AtMostOnce {
                self.conns[pool].pending.remove(&id);
            }
        }
        if clean {
            self.forget_subscriptions(sid, now);
            if let Some(s) = self.sensors.remove(&sid) {
                self.offline = self.offline.saturating_sub(s.offline.len());
                self.by_client.remove(&s.client_id);
            }
        }
        self.events.push_back((key, Event::Closed));
    }

    /// Fans out what a connection held since its CONNACK. A driver calls
    /// `handle_timeout` only once every output of the step has moved, so
    /// the sessions told `Connected` in that step have subscribed by now.
    fn settle(&mut self, now: Instant) {
        for c in 0..self.conns.len() {
            if self.conns[c].settling.is_none_or(|t| t > now) {
                continue;
            }
            self.conns[c].settling = None;
            while let Some(ev) = self.conns[c].held.pop_front() {
                self.fan_out(c, ev, now);
            }
        }
    }

    // ----- events of the pool -----

    /// Moves the inner side's events into the sessions' events.
    fn pump(&mut self, now: Instant) {
        self.drain(now);
        self.show();
    }

    fn drain(&mut self, now: Instant) {
        while let Some((key, ev)) = self.inner.poll_event() {
            if self.passthrough.contains(&key) {
                if matches!(ev, Event::Closed | Event::Refused { .. }) {
                    self.passthrough.remove(&key);
                }
                self.events.push_back((key, ev));
                continue;
            }
            let Some(c) = self.conns.iter().position(|c| c.key == key) else { continue };
            self.pool_event(c, ev, now);
        }
    }

    fn pool_event(&mut self, c: usize, ev: Event, now: Instant) {
        match ev {
            Event::Connected { session_present } => {
                tracing::debug!(
                    worker = self.opts.worker,
                    conn = c,
                    session_present,
                    "pool connection up"
                );
                let again = self.conns[c].ever_up && !session_present;
                self.conns[c].up = true;
                self.conns[c].ever_up = true;
                self.conns[c].down = None;
                if again {
                    self.subscribe_again(c, now);
                }
                let waiting = std::mem::take(&mut self.conns[c].waiting);
                if !waiting.is_empty() {
                    // The sessions told now subscribe again in answer
                    // (after a restart, their sessions are new here): what
                    // the broker sends right after its CONNACK (what it
                    // kept for the pool) waits until they have.
                    self.conns[c].settling = Some(now);
                }
                for (key, present) in waiting {
                    if let Some(&sid) = self.live.get(&key) {
                        self.connected(key, sid, present);
                    }
                }
            }
            Event::Unavailable { reason } => {
                tracing::debug!(worker = self.opts.worker, conn = c, %reason, "pool connection down");
                self.conns[c].up = false;
                self.conns[c].down = Some(reason.clone());
                for (key, _) in std::mem::take(&mut self.conns[c].waiting) {
                    self.events.push_back((key, Event::Unavailable { reason: reason.clone() }));
                }
            }
            Event::Refused { code } => {
                // The broker refused the gateway's identity: every session
                // on this connection ends, and the next connect tries again.
                let conn = &mut self.conns[c];
                conn.up = false;
                conn.started = false;
                conn.key = self.next_inner_key;
                self.next_inner_key -= 1;
                conn.pending.clear();
                conn.waiting.clear();
                let keys: Vec<UpstreamKey> = self
                    .live
                    .iter()
                    .filter(|(_, s)| self.sensors.get(s).is_some_and(|s| s.pool == c))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.live.remove(&key);
                    self.events.push_back((key, Event::Refused { code }));
                }
            }
            Event::Closed => {
                let conn = &mut self.conns[c];
                conn.up = false;
                conn.started = false;
                conn.key = self.next_inner_key;
                self.next_inner_key -= 1;
            }
            Event::PublishAcked { id } => match self.conns[c].pending.get(&id) {
                Some(&Pending::Publish { key, id: sid }) => {
                    self.events.push_back((key, Event::PublishAcked { id: sid }));
                    if !self.qos2.contains_key(&(key, sid)) {
                        self.conns[c].pending.remove(&id);
                    }
                }
                Some(Pending::Own) => {
                    // A will at QoS 2 is released at once.
                    self.conns[c].pending.remove(&id);
                    self.send(c, Command::Release { id }, now);
                }
                _ => {}
            },
            Event::PublishCompleted { id } => {
                if let Some(Pending::Publish { key, id: sid, .. }) =
                    self.conns[c].pending.remove(&id)
                {
                    self.qos2.remove(&(key, sid));
                    self.events.push_back((key, Event::PublishCompleted { id: sid }));
                }
            }
            Event::SubAcked { id, granted } => {
                if let Some(Pending::Subscribe { filter, waiters }) =
                    self.conns[c].pending.remove(&id)
                {
                    self.sub_acked(c, &filter, waiters, granted, now);
                }
            }
            Event::UnsubAcked { id } => {
                if let Some(Pending::Unsubscribe { key, id }) = self.conns[c].pending.remove(&id) {
                    self.events.push_back((key, Event::UnsubAcked { id }));
                }
            }
            ev @ Event::Message { .. } if self.conns[c].settling.is_some() => {
                self.conns[c].held.push_back(ev);
            }
            ev @ Event::Message { .. } => self.fan_out(c, ev, now),
        }
    }

    fn sub_acked(
        &mut self,
        c: usize,
        filter: &Arc<str>,
        waiters: Vec<Waiter>,
        granted: Option<QoS>,
        now: Instant,
    ) {
        for w in waiters {
            let answer = granted.map(|g| g.min(w.qos));
            if answer.is_none() {
                // Refused for this sensor: it holds no subscription.
                self.conns[c].retained.retain(|r| !(r.sensor == w.sensor && r.filter == *filter));
                if matches!(
                    self.conns[c].filters.unsubscribe(filter, w.sensor),
                    Upstream::Unsubscribe
                ) {
                    let id = self.request(c, Pending::Own);
                    self.send(c, Command::Unsubscribe { id, filter: filter.to_string() }, now);
                }
            } else if let Some(r) = self.conns[c]
                .retained
                .iter_mut()
                .find(|r| r.sensor == w.sensor && r.filter == *filter && r.until.is_none())
            {
                r.until = Some(now + RETAINED_WINDOW);
            }
            self.events.push_back((w.key, Event::SubAcked { id: w.id, granted: answer }));
        }
    }

    /// The broker lost the pool connection's session: subscribe again to
    /// everything it held.
    fn subscribe_again(&mut self, c: usize, now: Instant) {
        let mut all = Vec::new();
        self.conns[c].filters.for_each_filter(|f, q| all.push((f.to_string(), q)));
        for (filter, qos) in all {
            let id = self.request(c, Pending::Own);
            let key = self.conns[c].key;
            self.inner.handle_command(key, Command::Subscribe { id, filter, qos }, now);
        }
    }

    /// A message from the broker (an [`Event::Message`]) to the sessions
    /// whose filters match it.
    fn fan_out(&mut self, c: usize, m: Event, now: Instant) {
        let Event::Message { delivery, packet_id, topic, payload, qos, retain, dup } = m else {
            return;
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        if retain {
            // Sent for a new subscription: only to the sensors that asked.
            self.conns[c].retained.retain(|r| r.until.is_none_or(|t| now < t));
            for r in &mut self.conns[c].retained {
                if mqttsn_codec::validate::topic_matches(&r.filter, &topic)
                    && !r.got.contains(&topic)
                    && !targets.iter().any(|(s, _)| *s == r.sensor)
                {
                    r.got.insert(topic.clone());
                    targets.push((r.sensor, r.qos));
                }
            }
        } else {
            self.conns[c].filters.for_each_match(&topic, |s, q| targets.push((s, q)));
        }
        let mut waiting = 0u32;
        for &(sid, sub_qos) in &targets {
            let q = qos.min(sub_qos);
            let Some(sensor) = self.sensors.get_mut(&sid) else { continue };
            match sensor.key {
                Some(key) => {
                    if q == QoS::ExactlyOnce
                        && dup
                        && self.qos2_held.get_mut(&key).is_some_and(|h| h.remove(&packet_id))
                    {
                        // Stored before the restart, and its PUBREC lost
                        // with the gateway: this session has it.
                        continue;
                    }
                    let d = match (q, delivery) {
                        (QoS::AtMostOnce, _) | (_, None) => None,
                        (_, Some(pool_delivery)) => {
                            let d = self.next_delivery;
                            self.next_delivery += 1;
                            self.deliveries.insert(d, (key, c, pool_delivery));
                            waiting += 1;
                            Some(DeliveryId(d))
                        }
                    };
                    self.events.push_back((
                        key,
                        Event::Message {
                            delivery: d,
                            // Kept with a QoS 2 message, and given back in
                            // `Restore` after a restart.
                            packet_id: if q == QoS::ExactlyOnce { packet_id } else { 0 },
                            topic: topic.clone(),
                            payload: payload.clone(),
                            qos: q,
                            retain,
                            dup: false,
                        },
                    ));
                }
                None if q != QoS::AtMostOnce => {
                    if sensor.offline.len() >= self.opts.max_offline.max(1) {
                        sensor.offline.pop_front();
                        self.offline_dropped += 1;
                        self.offline = self.offline.saturating_sub(1);
                        if let Some(m) = &self.metrics {
                            Metrics::inc(&m.pool_offline_dropped);
                        }
                    }
                    self.offline += 1;
                    sensor.offline.push_back(Offline {
                        topic: topic.clone(),
                        payload: payload.clone(),
                        qos: q,
                        retain,
                    });
                }
                None => {}
            }
        }
        tracing::trace!(worker = self.opts.worker, conn = c, %topic, ?qos, retain, sensors = targets.len(), "pool message");
        if let Some(m) = &self.metrics {
            Metrics::add(&m.pool_fanout, targets.len() as u64);
            if targets.is_empty() {
                Metrics::inc(&m.pool_unrouted);
            }
        }
        self.targets = targets;
        if let Some(pool_delivery) = delivery {
            if waiting == 0 {
                self.send(c, Command::Ack(pool_delivery), now);
            } else {
                self.fanout.insert((c, pool_delivery), waiting);
            }
        }
    }
}

impl Upstreams for Aggregating {
    fn handle_command(&mut self, key: UpstreamKey, cmd: Command, now: Instant) {
        if self.passthrough.contains(&key) {
            self.inner.handle_command(key, cmd, now);
            self.pump(now);
            return;
        }
        match cmd {
            Command::Connect(spec) => {
                if !self.live.contains_key(&key) && spec.client_id == self.opts.own_client_id {
                    self.passthrough.insert(key);
                    self.inner.handle_command(key, Command::Connect(spec), now);
                } else {
                    self.connect(key, spec, now);
                    if let Some(publishes) = self.pending_restore.remove(&key) {
                        self.restore(key, publishes, now);
                    }
                }
            }
            Command::Restore { publishes, qos2_received } => {
                if !qos2_received.is_empty() {
                    self.qos2_held.entry(key).or_default().extend(qos2_received);
                }
                self.restore(key, publishes, now);
            }
            cmd @ Command::Publish { .. } => self.publish(key, cmd, now),
            Command::Release { id } => self.release(key, id, now),
            Command::Subscribe { id, filter, qos } => self.subscribe(key, id, filter, qos, now),
            Command::Unsubscribe { id, filter } => self.unsubscribe(key, id, filter, now),
            Command::Ack(d) => self.ack(d, now),
            // The pool's own; sessions never send it.
            Command::ReleaseStale => {}
            Command::Disconnect => self.close(key, false, now),
            Command::Abort => self.close(key, true, now),
        }
        self.pump(now);
    }

    fn handle_opened(&mut self, conn: ConnId, now: Instant) {
        self.inner.handle_opened(conn, now);
        self.pump(now);
    }

    fn handle_open_failed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        self.inner.handle_open_failed(conn, reason, now);
        self.pump(now);
    }

    fn handle_received(&mut self, conn: ConnId, data: &mut BytesMut, now: Instant) {
        self.inner.handle_received(conn, data, now);
        self.pump(now);
    }

    fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        self.inner.handle_closed(conn, reason, now);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.settle(now);
        self.inner.handle_timeout(now);
        self.pump(now);
    }

    fn poll_event(&mut self) -> Option<(UpstreamKey, Event)> {
        self.events.pop_front()
    }

    fn poll_transmit(&mut self) -> Option<(ConnId, BytesMut)> {
        self.inner.poll_transmit()
    }

    fn poll_io(&mut self) -> Option<Io> {
        self.inner.poll_io()
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let settle = self.conns.iter().filter_map(|c| c.settling).min();
        match (settle, self.inner.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn open_count(&self) -> usize {
        // The pool itself stays: it holds the subscriptions of sensors
        // with CleanSession false.
        self.live.len() + self.passthrough.len()
    }
}

#[cfg(test)]
mod tests;
