//! The tool's clients on the broker, on a thread of their own: the
//! subscriber that counts every message the sensors publish, and the
//! publishers of broker-to-sensor traffic and of messages for sleepers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqttsn_mqtt::codec::MqttPacket;
use tokio::sync::{oneshot, watch};

use super::mqtt::{MqttConn, MqttError};
use super::outbox::{OutStats, Outbox, OutboxPlan, Send};
use super::payload::{self, Kind, Run, Stamp};
use super::schedule::{Pacer, QosMix};
use super::shared::Live;
use super::tracker::{SeqTracker, Tally};

/// How long the broker's clients wait for a CONNACK or SUBACK.
const WAIT: Duration = Duration::from_secs(10);

/// When the subscriber may stop.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// Distinct messages sent: once all are in, stop.
    pub expected: u64,
    /// Or once nothing new came for this long.
    pub quiet: Duration,
    /// And at the latest here.
    pub deadline: Instant,
}

/// The counting subscriber's job.
#[derive(Debug, Clone)]
pub struct SubscriberPlan {
    /// The broker.
    pub broker: SocketAddr,
    /// Its ClientId.
    pub client_id: String,
    /// What it subscribes to.
    pub filter: String,
    /// The pass.
    pub run: Run,
    /// Sensor indexes are `0..sources`.
    pub sources: u32,
    /// Live counters.
    pub live: Arc<Live>,
}

/// What the subscriber counted.
#[derive(Debug, Default)]
pub struct SubscriberResult {
    /// The totals.
    pub tally: Tally,
    /// Distinct messages per sensor.
    pub unique: Vec<u64>,
}

/// Subscribes (QoS 0: the broker delivers every message to a connected
/// subscriber without a window or a queue bound, so the count is of what
/// reached the broker), reports `ready`, then counts until `finish` says
/// it may stop.
pub async fn subscriber(
    plan: SubscriberPlan,
    ready: oneshot::Sender<Result<(), String>>,
    mut finish: watch::Receiver<Option<Finish>>,
) -> Result<SubscriberResult, MqttError> {
    let mut c = match start(&plan.broker, &plan.client_id, &plan.filter).await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let mut trackers = vec![SeqTracker::default(); plan.sources as usize];
    let mut tally = Tally::default();
    let mut finish_since: Option<Instant> = None;
    loop {
        while let Some(p) = c.try_next()? {
            let now = Instant::now();
            match p {
                MqttPacket::Publish(pb) => {
                    let before = tally.unique;
                    count(&plan, &mut trackers, &mut tally, &pb.payload, now);
                    if tally.unique > before {
                        Live::bump(&plan.live.up_received);
                    }
                    match pb.qos as u8 {
                        1 => c.queue(&MqttPacket::PubAck(pb.pkid)),
                        2 => c.queue(&MqttPacket::PubRec(pb.pkid)),
                        _ => {}
                    }
                }
                MqttPacket::PubRel(id) => c.queue(&MqttPacket::PubComp(id)),
                _ => {}
            }
        }
        c.try_flush()?;
        let now = Instant::now();
        let wait = match *finish.borrow() {
            Some(f) => {
                let since = *finish_since.get_or_insert(now);
                let quiet_from = tally.last.map_or(since, |l| l.max(since));
                if tally.unique >= f.expected || now >= f.deadline || now >= quiet_from + f.quiet {
                    break;
                }
                (quiet_from + f.quiet).min(f.deadline) - now
            }
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            r = c.readable() => {
                r?;
                c.try_fill()?;
            }
            _ = tokio::time::sleep(wait) => {}
            r = finish.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    c.disconnect().await;
    let unique = trackers.iter().map(SeqTracker::unique).collect();
    Ok(SubscriberResult { tally, unique })
}

fn count(
    plan: &SubscriberPlan,
    trackers: &mut [SeqTracker],
    tally: &mut Tally,
    data: &[u8],
    now: Instant,
) {
    match payload::read(data) {
        Some(s) if s.tag == plan.run.tag && s.kind == Kind::Up => {
            match trackers.get_mut(s.source as usize) {
                Some(t) => tally.stamped(t, &s, plan.run.epoch.since(s.sent_ns, now), now),
                None => tally.foreign += 1,
            }
        }
        Some(_) => tally.foreign += 1,
        None => tally.unstamped(now),
    }
}

async fn start(broker: &SocketAddr, client_id: &str, filter: &str) -> Result<MqttConn, MqttError> {
    let (mut c, _) = MqttConn::connect(*broker, client_id, true, 600, WAIT).await?;
    c.set_quickack();
    c.subscribe(filter, 0, WAIT).await?;
    Ok(c)
}

/// A publisher's job: `per_topic` messages to each topic, round robin.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    /// The broker.
    pub broker: SocketAddr,
    /// Its ClientId.
    pub client_id: String,
    /// The topics, in order.
    pub topics: Vec<String>,
    /// Messages per topic.
    pub per_topic: u64,
    /// All topics together, messages per second (`None`: as fast as the
    /// window allows).
    pub rate: Option<f64>,
    /// QoS.
    pub qos: u8,
    /// What the stamps say.
    pub kind: Kind,
    /// Payload size.
    pub size: usize,
    /// The pass.
    pub run: Run,
    /// Live counters.
    pub live: Arc<Live>,
}

/// What a publisher did.
#[derive(Debug, Default)]
pub struct PublisherResult {
    /// Messages published to each topic.
    pub published: Vec<u64>,
    /// Counts and times.
    pub stats: OutStats,
}

/// QoS 1/2 messages a publisher has in flight toward the broker: below
/// mosquitto's `max_inflight_messages` (20), which also bounds the QoS 2
/// messages it takes in from one client (more are dropped).
const PUBLISH_WINDOW: usize = 16;

/// Connects, reports `ready`, waits for the start time, publishes, and
/// returns once all is published and acknowledged or `stop` is set.
pub async fn publisher(
    plan: PublisherPlan,
    ready: oneshot::Sender<Result<(), String>>,
    go: oneshot::Receiver<Instant>,
    mut stop: watch::Receiver<bool>,
) -> Result<PublisherResult, MqttError> {
    let mut c = match MqttConn::connect(plan.broker, &plan.client_id, true, 600, WAIT).await {
        Ok((c, _)) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let topics = plan.topics.len() as u64;
    let Ok(start) = go.await else {
        c.disconnect().await;
        return Ok(PublisherResult { published: vec![0; plan.topics.len()], ..Default::default() });
    };
    let mut out = Outbox::new(OutboxPlan {
        count: topics * plan.per_topic,
        pacer: Pacer::new(start, plan.rate, 1, 0),
        mix: QosMix::single(plan.qos).unwrap_or_default(),
        mix_offset: 0,
        window: PUBLISH_WINDOW,
        retry: None,
        max_retries: 0,
    });
    let mut data = vec![0u8; plan.size];
    payload::fill(
        &mut data,
        &Stamp { tag: 0, kind: plan.kind, qos: 0, source: 0, seq: 0, sent_ns: 0 },
    );
    while !out.done() && !*stop.borrow() {
        for _ in 0..256 {
            let now = Instant::now();
            let Some(send) = out.poll(now) else { break };
            match send {
                Send::Publish { seq, qos, msg_id, dup, first_sent } => {
                    let k = u64::from(seq);
                    let (t, s) = ((k % topics) as usize, (k / topics) as u32);
                    let stamp = Stamp {
                        tag: plan.run.tag,
                        kind: plan.kind,
                        qos,
                        source: t as u32,
                        seq: s,
                        sent_ns: plan.run.epoch.ns(first_sent),
                    };
                    payload::write(&mut data, &stamp);
                    c.queue_publish(&plan.topics[t], qos, msg_id, dup, &data);
                    if !dup {
                        Live::bump(&plan.live.down_published);
                    }
                }
                Send::PubRel(id) => c.queue(&MqttPacket::PubRel(id)),
            }
        }
        c.try_flush()?;
        loop {
            while let Some(p) = c.try_next()? {
                let now = Instant::now();
                match p {
                    MqttPacket::PubAck(id) => {
                        out.on_puback(id, true, now);
                    }
                    MqttPacket::PubRec(id) if out.on_pubrec(id, now).is_some() => {
                        c.queue(&MqttPacket::PubRel(id));
                    }
                    MqttPacket::PubComp(id) => out.on_pubcomp(id, now),
                    _ => {}
                }
            }
            if !c.try_fill()? {
                break;
            }
        }
        c.try_flush()?;
        if out.done() {
            break;
        }
        if out.ready(Instant::now()) {
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = out.next_deadline().map(tokio::time::Instant::from_std);
        let pending = c.pending_write();
        tokio::select! {
            r = c.readable() => r?,
            r = c.writable(), if pending => r?,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(super::sensor::far)), if deadline.is_some() => {}
            r = stop.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    let sent = out.stats.sent;
    let published = (0..topics).map(|t| sent / topics + u64::from(t < sent % topics)).collect();
    c.disconnect().await;
    Ok(PublisherResult { published, stats: out.stats })
}
