//! What the clients of one pass share: the phase they are in, who plays
//! which role, the topic names, live counters for the progress line, and
//! the histograms and tallies they all record into (one thread, so plain
//! `Cell`s and `RefCell`s).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::histogram::Histogram;
use super::inbox::{Inbox, InboxTallies, Reply};
use super::outbox::{Acked, OutStats};
use super::payload::Run;
use super::BenchOptions;

/// Where a pass is. Clients wait for the orchestrator to move it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Sockets made, nothing sent.
    Setup,
    /// Connect, register, subscribe.
    Connect,
    /// Sleepers go to sleep.
    Sleep,
    /// Publishers publish; the broker publishes to subscribers.
    Publish,
    /// Sleepers wake and take what was buffered.
    Wake,
    /// Everything stops; clients leave.
    Stop,
}

/// Counters any thread may bump and the progress line reads.
#[derive(Debug, Default)]
pub struct Live {
    /// CONNACKs (or MQTT CONNACKs) accepted.
    pub connected: AtomicU64,
    /// Clients through their whole handshake.
    pub ready: AtomicU64,
    /// Clients whose handshake failed.
    pub failed: AtomicU64,
    /// Sleepers through their handshake.
    pub sleepers_ready: AtomicU64,
    /// Sleepers asleep.
    pub asleep: AtomicU64,
    /// Sleepers whose DISCONNECT(duration) went unanswered.
    pub sleep_failed: AtomicU64,
    /// Messages sent by the publishers.
    pub sent: AtomicU64,
    /// Of those, acknowledged.
    pub acked: AtomicU64,
    /// Publishers that sent and had acknowledged all of theirs (or stopped).
    pub publishers_done: AtomicU64,
    /// Distinct messages the subscriber on the broker counted.
    pub up_received: AtomicU64,
    /// Messages the broker-side publisher published to subscribers.
    pub down_published: AtomicU64,
    /// Distinct broker-to-sensor messages the sensors received.
    pub down_received: AtomicU64,
    /// Distinct messages the sleepers received after waking.
    pub sleep_received: AtomicU64,
    /// Sleepers that are done waking.
    pub sleepers_done: AtomicU64,
}

impl Live {
    /// Adds one.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads one.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What each client index does.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    /// All clients.
    pub clients: u32,
    /// Clients `0..awake` stay awake and publish; the rest sleep.
    pub awake: u32,
    /// Broker to sensor: awake clients subscribe, `fanout` per topic.
    pub down: bool,
    /// Sensors per down topic.
    pub fanout: u32,
}

/// The role of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes; `Some(topic)` also subscribes to that down topic.
    Awake(Option<u32>),
    /// Sleeps; the index among sleepers.
    Sleeper(u32),
}

impl Roles {
    /// Roles for these options.
    pub fn new(o: &BenchOptions) -> Self {
        Self {
            clients: o.sensors,
            awake: o.sensors - o.sleeper_count(),
            down: o.down_count > 0,
            fanout: o.fanout,
        }
    }

    /// The role of client `i`.
    pub fn role(&self, i: u32) -> Role {
        if i >= self.awake {
            Role::Sleeper(i - self.awake)
        } else {
            Role::Awake(self.down.then(|| i / self.fanout))
        }
    }

    /// Sleepers.
    pub fn sleepers(&self) -> u32 {
        self.clients - self.awake
    }

    /// Down topics.
    pub fn down_topics(&self) -> u32 {
        if self.down {
            self.awake.div_ceil(self.fanout)
        } else {
            0
        }
    }
}

/// The topic names of one pass, all under `PREFIX/TAG`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics under `prefix/tag`.
    pub fn new(prefix: &str, tag: u16) -> Self {
        Self { base: format!("{prefix}/{tag:04x}") }
    }

    /// Sensor `i` publishes here.
    pub fn up(&self, i: u32) -> String {
        format!("{}/u/{i}", self.base)
    }

    /// The counting subscriber's filter.
    pub fn up_filter(&self) -> String {
        format!("{}/u/#", self.base)
    }

    /// The broker publishes down topic `t` here.
    pub fn down(&self, t: u32) -> String {
        format!("{}/d/{t}/m", self.base)
    }

    /// Sensors of down topic `t` subscribe to this (a wildcard, so the
    /// gateway registers the topic with them).
    pub fn down_filter(&self, t: u32) -> String {
        format!("{}/d/{t}/+", self.base)
    }

    /// Sleeper `j`'s topic.
    pub fn sleep(&self, j: u32) -> String {
        format!("{}/s/{j}", self.base)
    }

    fn tag(&self) -> &str {
        self.base.rsplit('/').next().unwrap_or_default()
    }

    /// ClientId of client `i` (sensor or direct client).
    pub fn client_id(&self, direct: bool, i: u32) -> String {
        format!("bench-{}-{}{i}", self.tag(), if direct { "d" } else { "s" })
    }

    /// ClientId of one of the tool's own clients on the broker.
    pub fn own_id(&self, name: &str) -> String {
        format!("bench-{}-{name}", self.tag())
    }
}

/// Latencies every client records into.
#[derive(Debug, Default)]
pub struct Latencies {
    /// CONNECT to CONNACK.
    pub connack: Histogram,
    /// The whole handshake: CONNECT to the last REGACK / SUBACK.
    pub ready: Histogram,
    /// PUBLISH to PUBACK or PUBREC.
    pub ack: Histogram,
    /// Wake-up: PINGREQ to PINGRESP (direct mode: CONNECT to the last
    /// buffered message).
    pub wake: Histogram,
}

/// What one client reports at the end.
#[derive(Debug, Clone, Default)]
pub struct ClientResult {
    /// Connected (CONNACK accepted).
    pub connack_at: Option<Instant>,
    /// Its own topic registered (REGACK).
    pub registered_at: Option<Instant>,
    /// The whole handshake done.
    pub ready_at: Option<Instant>,
    /// Handshake requests sent again.
    pub handshake_retries: u64,
    /// Why it is not connected, if it is not.
    pub failure: Option<String>,
    /// The gateway ended its session (unsolicited DISCONNECT).
    pub session_lost: bool,
    /// What it published.
    pub out: OutStats,
    /// QoS 1/2 messages still unacknowledged when it stopped.
    pub unacked: u64,
    /// Down topic it subscribed to, with the SUBACK.
    pub down_topic: Option<u32>,
    /// Distinct down messages it received.
    pub down_unique: u64,
    /// A sleeper: its index, and whether it went to sleep.
    pub sleeper: Option<(u32, bool)>,
    /// Distinct messages it received after waking.
    pub sleep_unique: u64,
    /// Wake-ups.
    pub wakes: u64,
    /// Of those, ended without a PINGRESP (every PINGREQ unanswered).
    pub wakes_without_pingresp: u64,
    /// REGISTERs the gateway sent it.
    pub registers: u64,
    /// Datagrams the socket refused to send.
    pub send_errors: u64,
}

/// The state one pass's clients share.
#[derive(Debug)]
pub struct PassCtx {
    /// The options.
    pub opts: Arc<BenchOptions>,
    /// The pass's tag and clock.
    pub run: Run,
    /// Topic names.
    pub topics: Topics,
    /// Who does what.
    pub roles: Roles,
    /// Counters for the progress line.
    pub live: Arc<Live>,
    /// The phase.
    pub phase: watch::Receiver<Phase>,
    /// Handshakes in flight at most.
    pub window: Arc<Semaphore>,
    /// When the publish phase started (every schedule starts there).
    pub publish_start: Cell<Option<Instant>>,
    /// Sleepers keep waking until this.
    pub wake_until: Cell<Option<Instant>>,
    /// Messages published to each sleeper (known once published).
    pub sleep_expected: RefCell<Vec<u64>>,
    /// Latencies.
    pub latencies: RefCell<Latencies>,
    /// Down and sleep arrivals.
    pub tallies: RefCell<InboxTallies>,
    /// Sensors subscribed to each down topic (SUBACK accepted).
    pub down_subscribers: RefCell<Vec<u64>>,
    /// Results, filled in by each client when it stops.
    pub results: RefCell<Vec<ClientResult>>,
    /// The padded payload each PUBLISH is stamped into.
    pub payload: RefCell<Vec<u8>>,
    /// Scratch buffers to encode into and receive into.
    pub tx: RefCell<Vec<u8>>,
    /// See `tx`.
    pub rx: RefCell<Vec<u8>>,
    /// Datagrams sent together (segmentation offload).
    pub batch: RefCell<Vec<u8>>,
    /// Segmentation offload works here (cleared at its first refusal).
    pub gso: Cell<bool>,
}

impl PassCtx {
    /// A client's pacing starts with the publish phase.
    pub fn publish_start(&self) -> Instant {
        self.publish_start.get().unwrap_or_else(Instant::now)
    }

    /// True once the pass is stopping.
    pub fn stopping(&self, phase: &watch::Receiver<Phase>) -> bool {
        *phase.borrow() >= Phase::Stop
    }

    /// The keepalive clients announce: well above the pass's bound, so
    /// no PINGREQ is needed while it runs.
    pub fn keepalive(&self) -> u16 {
        u16::try_from(self.opts.max_time.as_secs().saturating_mul(2).saturating_add(60))
            .unwrap_or(u16::MAX)
    }

    /// How long a broker handshake (TCP) may take.
    pub fn tcp_wait(&self) -> Duration {
        (self.opts.retry * (self.opts.max_retries + 1)).max(Duration::from_secs(5))
    }

    /// What a client of `role` subscribes to, if anything.
    pub fn filter(&self, role: Role) -> Option<String> {
        match role {
            Role::Awake(Some(t)) => Some(self.topics.down_filter(t)),
            Role::Awake(None) => None,
            Role::Sleeper(j) => Some(self.topics.sleep(j)),
        }
    }

    /// A client of `role` is through its handshake (begun at `start`),
    /// with its subscription in place.
    pub fn ready(&self, role: Role, res: &mut ClientResult, start: Instant) {
        match role {
            Role::Awake(Some(t)) => {
                res.down_topic = Some(t);
                if let Some(n) = self.down_subscribers.borrow_mut().get_mut(t as usize) {
                    *n += 1;
                }
            }
            Role::Sleeper(_) => Live::bump(&self.live.sleepers_ready),
            Role::Awake(None) => {}
        }
        let now = Instant::now();
        res.ready_at = Some(now);
        self.latencies.borrow_mut().ready.record(now - start);
        Live::bump(&self.live.ready);
    }

    /// Notes an acknowledgement that matched a message in flight.
    pub fn acked(&self, a: Option<Acked>) {
        if let Some(a) = a {
            self.latencies.borrow_mut().ack.record(a.latency);
            if !a.rejected {
                Live::bump(&self.live.acked);
            }
        }
    }

    /// Hands a PUBLISH from the broker side to a client's inbox, counts it
    /// (in the tallies and the live counters) and says how to answer.
    pub fn deliver(
        &self,
        inbox: &mut Inbox,
        qos: u8,
        msg_id: u16,
        data: &[u8],
        now: Instant,
    ) -> Reply {
        let (down, sleep) = (inbox.down.unique(), inbox.sleep.unique());
        let reply =
            inbox.on_publish(qos, msg_id, data, &self.run, &mut self.tallies.borrow_mut(), now);
        if inbox.down.unique() > down {
            Live::bump(&self.live.down_received);
        }
        if inbox.sleep.unique() > sleep {
            Live::bump(&self.live.sleep_received);
        }
        reply
    }

    /// Stores a client's result.
    pub fn finish(&self, index: u32, r: ClientResult) {
        if let Some(slot) = self.results.borrow_mut().get_mut(index as usize) {
            *slot = r;
        }
    }
}

/// Waits until the phase reaches `target`; `false` when the pass stops
/// first (or the orchestrator is gone).
pub async fn wait_phase(phase: &mut watch::Receiver<Phase>, target: Phase) -> bool {
    match phase.wait_for(|p| *p >= target).await {
        Ok(p) => *p == target || (*p < Phase::Stop),
        Err(_) => false,
    }
}

/// A shared handle.
pub type Ctx = Rc<PassCtx>;
