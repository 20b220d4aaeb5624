//! The direct mode's client: an MQTT 3.1.1 connection straight to the
//! broker in a sensor's place, with the same schedule, QoS, payload,
//! subscriptions and phases, so that the same run without the gateway
//! gives the ceiling. A sleeper is a persistent session that disconnects
//! and connects again (the broker queues for it meanwhile).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mqttsn_mqtt::codec::MqttPacket;
use tokio::sync::watch;
use tokio::time::sleep_until;

use super::inbox::{Inbox, Reply};
use super::mqtt::{MqttConn, MqttError};
use super::outbox::{Outbox, OutboxPlan, Send};
use super::payload::{self, Kind, Stamp};
use super::schedule::Pacer;
use super::sensor::far;
use super::shared::{wait_phase, ClientResult, Ctx, Live, Phase, Role};

const BATCH: usize = 32;

/// A client of the direct pass.
#[derive(Debug)]
pub struct DirectClient {
    index: u32,
    role: Role,
    broker: SocketAddr,
    client_id: String,
    topic: String,
    ctx: Ctx,
    phase: watch::Receiver<Phase>,
    out: Outbox,
    inbox: Inbox,
    res: ClientResult,
    /// Counted in `publishers_done`.
    done: bool,
}

impl DirectClient {
    /// A client that has not connected yet.
    pub fn new(index: u32, ctx: &Ctx, broker: SocketAddr) -> Self {
        let o = &ctx.opts;
        let role = ctx.roles.role(index);
        let count = if matches!(role, Role::Awake(_)) { o.count } else { 0 };
        let out = Outbox::new(OutboxPlan {
            count,
            pacer: Pacer::new(Instant::now(), None, 1, 0),
            mix: o.mix,
            mix_offset: u64::from(index).wrapping_mul(o.count),
            window: usize::from(o.inflight),
            retry: None,
            max_retries: 0,
        });
        Self {
            index,
            role,
            broker,
            client_id: ctx.topics.client_id(true, index),
            topic: ctx.topics.up(index),
            ctx: ctx.clone(),
            phase: ctx.phase.clone(),
            out,
            inbox: Inbox::default(),
            res: ClientResult::default(),
            done: false,
        }
    }

    fn clean(&self) -> bool {
        !self.ctx.opts.persistent && !matches!(self.role, Role::Sleeper(_))
    }

    /// Runs the client through every phase; its result goes to the pass.
    pub async fn run(mut self) {
        let mut conn = None;
        if wait_phase(&mut self.phase, Phase::Connect).await {
            match self.handshake().await {
                Ok(c) => conn = self.phases(c).await,
                Err(e) => {
                    self.res.failure = Some(e.to_string());
                    Live::bump(&self.ctx.live.failed);
                }
            }
        }
        self.res.unacked = self.out.in_flight() as u64;
        self.res.out = self.out.stats.clone();
        self.res.down_unique = self.inbox.down.unique();
        self.res.sleep_unique = self.inbox.sleep.unique();
        let connected = self.res.connack_at.is_some();
        self.ctx.finish(self.index, std::mem::take(&mut self.res));
        let _ = wait_phase(&mut self.phase, Phase::Stop).await;
        if let Some(c) = conn {
            c.disconnect().await;
        }
        if connected && !self.clean() {
            // Wipe the persistent session on the broker.
            let wait = Duration::from_secs(1);
            let window = self.ctx.window.clone();
            if let Ok(_p) = window.acquire_owned().await {
                if let Ok((c, _)) =
                    MqttConn::connect(self.broker, &self.client_id, true, 60, wait).await
                {
                    c.disconnect().await;
                }
            }
        }
    }

    async fn handshake(&mut self) -> Result<MqttConn, MqttError> {
        let window = self.ctx.window.clone();
        let _permit = window.acquire_owned().await.map_err(|_| MqttError::Closed)?;
        let start = Instant::now();
        let wait = self.ctx.tcp_wait();
        let keepalive = self.ctx.keepalive();
        let (mut c, _) =
            MqttConn::connect(self.broker, &self.client_id, self.clean(), keepalive, wait).await?;
        let now = Instant::now();
        self.res.connack_at = Some(now);
        // No REGISTER in MQTT: the topic name goes in every PUBLISH.
        self.res.registered_at = Some(now);
        self.ctx.latencies.borrow_mut().connack.record(now - start);
        Live::bump(&self.ctx.live.connected);
        if let Some(f) = self.ctx.filter(self.role) {
            c.subscribe(&f, 2, wait).await?;
        }
        self.ctx.ready(self.role, &mut self.res, start);
        Ok(c)
    }

    async fn phases(&mut self, c: MqttConn) -> Option<MqttConn> {
        match self.role {
            Role::Awake(_) => {
                if !wait_phase(&mut self.phase, Phase::Publish).await {
                    return Some(c);
                }
                let start = self.ctx.publish_start();
                let rate = self.ctx.opts.rate;
                self.out.set_pacer(Pacer::new(start, rate, self.ctx.roles.awake, self.index));
                let mut c = c;
                let ok = self.publish(&mut c).await;
                if !ok {
                    self.res.session_lost = true;
                }
                if !self.done {
                    self.done = true;
                    Live::bump(&self.ctx.live.publishers_done);
                }
                ok.then_some(c)
            }
            Role::Sleeper(j) => {
                self.res.sleeper = Some((j, false));
                if !wait_phase(&mut self.phase, Phase::Sleep).await {
                    return Some(c);
                }
                c.disconnect().await;
                self.res.sleeper = Some((j, true));
                Live::bump(&self.ctx.live.asleep);
                let mut back = None;
                if wait_phase(&mut self.phase, Phase::Wake).await {
                    back = self.wake(j).await;
                }
                Live::bump(&self.ctx.live.sleepers_done);
                back
            }
        }
    }

    /// Publishes on the schedule and answers what arrives, until the pass
    /// stops; `false` when the connection broke.
    async fn publish(&mut self, c: &mut MqttConn) -> bool {
        loop {
            let more = self.queue_due(c);
            if c.try_flush().is_err() || self.read(c).is_err() {
                return false;
            }
            if !self.done && self.out.done() {
                self.done = true;
                Live::bump(&self.ctx.live.publishers_done);
            }
            if self.ctx.stopping(&self.phase) {
                return true;
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self.out.next_deadline().map(tokio::time::Instant::from_std);
            let pending = c.pending_write();
            tokio::select! {
                r = c.readable() => {
                    if r.is_err() {
                        return false;
                    }
                }
                r = c.writable(), if pending => {
                    if r.is_err() {
                        return false;
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {}
                r = self.phase.changed() => {
                    if r.is_err() {
                        return true;
                    }
                }
            }
        }
    }

    fn queue_due(&mut self, c: &mut MqttConn) -> bool {
        for _ in 0..BATCH {
            let now = Instant::now();
            match self.out.poll(now) {
                Some(Send::Publish { seq, qos, msg_id, dup, first_sent }) => {
                    if !dup {
                        Live::bump(&self.ctx.live.sent);
                    }
                    let ctx = self.ctx.clone();
                    let mut data = ctx.payload.borrow_mut();
                    let stamp = Stamp {
                        tag: ctx.run.tag,
                        kind: Kind::Up,
                        qos,
                        source: self.index,
                        seq,
                        sent_ns: ctx.run.epoch.ns(first_sent),
                    };
                    payload::write(&mut data, &stamp);
                    c.queue_publish(&self.topic, qos, msg_id, dup, &data);
                }
                Some(Send::PubRel(id)) => c.queue(&MqttPacket::PubRel(id)),
                None => return false,
            }
        }
        self.out.ready(Instant::now())
    }

    /// Reads and handles whatever the socket has.
    fn read(&mut self, c: &mut MqttConn) -> Result<(), MqttError> {
        loop {
            while let Some(p) = c.try_next()? {
                self.on_packet(c, p, Instant::now());
            }
            if !c.try_fill()? {
                return Ok(());
            }
        }
    }

    fn on_packet(&mut self, c: &mut MqttConn, p: MqttPacket, now: Instant) {
        let ctx = self.ctx.clone();
        match p {
            MqttPacket::PubAck(id) => ctx.acked(self.out.on_puback(id, true, now)),
            MqttPacket::PubRec(id) => {
                if let Some(first) = self.out.on_pubrec(id, now) {
                    ctx.acked(first);
                    c.queue(&MqttPacket::PubRel(id));
                }
            }
            MqttPacket::PubComp(id) => self.out.on_pubcomp(id, now),
            MqttPacket::Publish(pb) => {
                let reply = ctx.deliver(&mut self.inbox, pb.qos as u8, pb.pkid, &pb.payload, now);
                match reply {
                    Reply::None => {}
                    Reply::PubAck => c.queue(&MqttPacket::PubAck(pb.pkid)),
                    Reply::PubRec => c.queue(&MqttPacket::PubRec(pb.pkid)),
                }
            }
            MqttPacket::PubRel(id) => {
                self.inbox.on_pubrel(id);
                c.queue(&MqttPacket::PubComp(id));
            }
            _ => {}
        }
    }

    /// Connects again (CleanSession false) and takes what the broker
    /// queued, until all of it is in or the wake time is over.
    async fn wake(&mut self, j: u32) -> Option<MqttConn> {
        let start = Instant::now();
        let wait = self.ctx.tcp_wait();
        let keepalive = self.ctx.keepalive();
        let (mut c, _) =
            MqttConn::connect(self.broker, &self.client_id, false, keepalive, wait).await.ok()?;
        let until = self.ctx.wake_until.get().map(tokio::time::Instant::from_std);
        loop {
            if self.read(&mut c).is_err() || c.try_flush().is_err() {
                return None;
            }
            let expected = self.ctx.sleep_expected.borrow().get(j as usize).copied().unwrap_or(0);
            if self.inbox.sleep.unique() >= expected {
                break;
            }
            let pending = c.pending_write();
            tokio::select! {
                r = c.readable() => if r.is_err() { return None },
                r = c.writable(), if pending => if r.is_err() { return None },
                _ = sleep_until(until.unwrap_or_else(tokio::time::Instant::now)) => break,
                _ = self.phase.wait_for(|p| *p >= Phase::Stop) => break,
            }
        }
        self.ctx.latencies.borrow_mut().wake.record(start.elapsed());
        self.res.wakes += 1;
        Some(c)
    }
}
