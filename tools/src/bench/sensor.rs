//! One simulated MQTT-SN sensor: its own UDP socket, the handshake
//! (CONNECT, REGISTER, SUBSCRIBE) with retransmission, then publishing on
//! its schedule, answering what the gateway sends (PUBLISH, PUBREL,
//! REGISTER), sleeping and waking, and leaving. Built on the codec: a
//! sensor is a few hundred octets of state, so ten thousand fit in one
//! thread.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mqttsn_codec::{
    Ack, Connect, Packet, Publish, QoS, Register, ReturnCode, Subscribe, TopicFilter, TopicId,
    PROTOCOL_ID,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::sleep_until;

use super::gso;
use super::inbox::{Inbox, Reply};
use super::outbox::{Outbox, OutboxPlan, Send};
use super::payload::{self, Kind, Stamp};
use super::schedule::Pacer;
use super::shared::{wait_phase, ClientResult, Ctx, Live, Phase, Role};

/// Sends due at once before a sensor lets the others run.
const BATCH: usize = gso::MAX_SEGMENTS;

/// A PUBLISH to encode.
#[derive(Debug, Clone, Copy)]
struct PendingPublish {
    seq: u32,
    qos: u8,
    msg_id: u16,
    dup: bool,
    first_sent: Instant,
}

/// Why a request got no usable answer.
#[derive(Debug)]
enum Unanswered {
    /// Nothing came back after every retransmission.
    Timeout,
    /// The gateway refused.
    Refused(ReturnCode),
    /// The pass stopped meanwhile.
    Stopped,
}

/// A simulated sensor.
#[derive(Debug)]
pub struct Sensor {
    index: u32,
    role: Role,
    sock: UdpSocket,
    client_id: String,
    ctx: Ctx,
    phase: watch::Receiver<Phase>,
    out: Outbox,
    inbox: Inbox,
    up_topic: u16,
    next_msg_id: u16,
    res: ClientResult,
}

fn codec_qos(q: u8) -> QoS {
    QoS::from_bits(q.min(2))
}

impl Sensor {
    /// A sensor with its socket bound to `source` (an ephemeral port) and
    /// connected to the gateway.
    pub fn new(
        index: u32,
        ctx: &Ctx,
        gateway: SocketAddr,
        source: std::net::IpAddr,
    ) -> std::io::Result<Self> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(source, 0))?;
        std_sock.connect(gateway)?;
        std_sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std_sock)?;
        let o = &ctx.opts;
        let role = ctx.roles.role(index);
        let count = if matches!(role, Role::Awake(_)) { o.count } else { 0 };
        let out = Outbox::new(OutboxPlan {
            count,
            pacer: Pacer::new(Instant::now(), None, 1, 0),
            mix: o.mix,
            mix_offset: u64::from(index).wrapping_mul(o.count),
            window: usize::from(o.inflight),
            retry: Some(o.retry),
            max_retries: o.max_retries,
        });
        Ok(Self {
            index,
            role,
            sock,
            client_id: ctx.topics.client_id(false, index),
            ctx: ctx.clone(),
            phase: ctx.phase.clone(),
            out,
            inbox: Inbox::default(),
            up_topic: 0,
            next_msg_id: 0,
            res: ClientResult::default(),
        })
    }

    fn msg_id(&mut self) -> u16 {
        self.next_msg_id = self.next_msg_id.checked_add(1).unwrap_or(1);
        self.next_msg_id
    }

    /// Runs the sensor through every phase; its result goes to the pass.
    pub async fn run(mut self) {
        if wait_phase(&mut self.phase, Phase::Connect).await {
            match self.handshake().await {
                Ok(()) => self.phases().await,
                Err(why) => {
                    self.res.failure = Some(why);
                    Live::bump(&self.ctx.live.failed);
                }
            }
        }
        self.res.unacked = self.out.in_flight() as u64;
        self.res.out = self.out.stats.clone();
        self.res.down_unique = self.inbox.down.unique();
        self.res.sleep_unique = self.inbox.sleep.unique();
        let connected = self.res.connack_at.is_some() && !self.res.session_lost;
        self.ctx.finish(self.index, std::mem::take(&mut self.res));
        let _ = wait_phase(&mut self.phase, Phase::Stop).await;
        if connected {
            self.leave().await;
        }
    }

    async fn handshake(&mut self) -> Result<(), String> {
        let window = self.ctx.window.clone();
        let _permit = window.acquire_owned().await.map_err(|e| e.to_string())?;
        let start = Instant::now();
        let o = self.ctx.opts.clone();
        let clean = !o.persistent;
        let duration = self.ctx.keepalive();
        let id = self.client_id.clone();
        let connect = Packet::Connect(Connect {
            will: false,
            clean_session: clean,
            protocol_id: PROTOCOL_ID,
            duration,
            client_id: id.as_bytes(),
        });
        self.request(&connect, o.retry, o.max_retries, |p| match p {
            Packet::ConnAck(rc) => Some(*rc),
            _ => None,
        })
        .await
        .and_then(|rc| if rc.is_accepted() { Ok(()) } else { Err(Unanswered::Refused(rc)) })
        .map_err(|e| self.why("CONNECT", e))?;
        let now = Instant::now();
        self.res.connack_at = Some(now);
        self.ctx.latencies.borrow_mut().connack.record(now - start);
        Live::bump(&self.ctx.live.connected);

        let topic = self.ctx.topics.up(self.index);
        let msg_id = self.msg_id();
        let register =
            Packet::Register(Register { topic_id: 0, msg_id, topic_name: topic.as_bytes() });
        self.up_topic = self
            .request(&register, o.retry, o.max_retries, |p| match p {
                Packet::RegAck(a) if a.msg_id == msg_id => Some(*a),
                _ => None,
            })
            .await
            .and_then(|a| {
                if a.return_code.is_accepted() {
                    Ok(a.topic_id)
                } else {
                    Err(Unanswered::Refused(a.return_code))
                }
            })
            .map_err(|e| self.why("REGISTER", e))?;
        self.res.registered_at = Some(Instant::now());

        if let Some(filter) = self.ctx.filter(self.role) {
            let msg_id = self.msg_id();
            let subscribe = Packet::Subscribe(Subscribe {
                dup: false,
                qos: QoS::ExactlyOnce,
                msg_id,
                topic: TopicFilter::Name(filter.as_bytes()),
            });
            self.request(&subscribe, o.retry, o.max_retries, |p| match p {
                Packet::SubAck(a) if a.msg_id == msg_id => Some(a.return_code),
                _ => None,
            })
            .await
            .and_then(|rc| if rc.is_accepted() { Ok(()) } else { Err(Unanswered::Refused(rc)) })
            .map_err(|e| self.why("SUBSCRIBE", e))?;
        }
        let ctx = self.ctx.clone();
        ctx.ready(self.role, &mut self.res, start);
        Ok(())
    }

    fn why(&self, what: &str, e: Unanswered) -> String {
        match e {
            Unanswered::Timeout => format!("{what}: no answer from the gateway"),
            Unanswered::Refused(rc) => format!("{what}: refused by the gateway ({rc})"),
            Unanswered::Stopped => format!("{what}: stopped before an answer"),
        }
    }

    async fn phases(&mut self) {
        match self.role {
            Role::Awake(_) => {
                if wait_phase(&mut self.phase, Phase::Publish).await {
                    self.publish().await;
                }
            }
            Role::Sleeper(j) => {
                self.res.sleeper = Some((j, false));
                if !wait_phase(&mut self.phase, Phase::Sleep).await {
                    return;
                }
                let o = self.ctx.opts.clone();
                let asleep = Packet::Disconnect(Some(o.sleep_duration));
                let answered = self
                    .request(&asleep, o.retry, o.max_retries, |p| {
                        matches!(p, Packet::Disconnect(_)).then_some(())
                    })
                    .await;
                if answered.is_err() {
                    Live::bump(&self.ctx.live.sleep_failed);
                    return;
                }
                self.res.sleeper = Some((j, true));
                Live::bump(&self.ctx.live.asleep);
                if wait_phase(&mut self.phase, Phase::Wake).await {
                    self.wake(j).await;
                }
                Live::bump(&self.ctx.live.sleepers_done);
            }
        }
    }

    /// Sends `p`, waits `retry` for the answer `answer` picks out,
    /// sending again up to `tries` times; anything else that arrives is
    /// handled as usual.
    async fn request<T>(
        &mut self,
        p: &Packet<'_>,
        retry: Duration,
        tries: u32,
        mut answer: impl FnMut(&Packet<'_>) -> Option<T>,
    ) -> Result<T, Unanswered> {
        for attempt in 0..=tries {
            if attempt > 0 {
                self.res.handshake_retries += 1;
            }
            self.send_packet(p);
            let deadline = tokio::time::Instant::now() + retry;
            loop {
                tokio::select! {
                    r = self.sock.readable() => {
                        if r.is_err() {
                            continue;
                        }
                        if let Some(t) = self.drain(&mut answer) {
                            return Ok(t);
                        }
                    }
                    _ = sleep_until(deadline) => break,
                    r = self.phase.changed() => {
                        if r.is_err() || self.ctx.stopping(&self.phase) {
                            return Err(Unanswered::Stopped);
                        }
                    }
                }
            }
        }
        Err(Unanswered::Timeout)
    }

    /// Handles every datagram waiting on the socket; returns the first
    /// answer `answer` picks out (the rest stay queued).
    fn drain<T>(&mut self, answer: &mut impl FnMut(&Packet<'_>) -> Option<T>) -> Option<T> {
        let ctx = self.ctx.clone();
        let mut rx = ctx.rx.borrow_mut();
        loop {
            let n = match self.sock.try_recv(&mut rx) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                // ICMP port unreachable from an earlier send, and the like.
                Err(_) => continue,
            };
            let Ok(p) = Packet::decode(&rx[..n]) else { continue };
            if let Some(t) = answer(&p) {
                return Some(t);
            }
            self.on_packet(&p, Instant::now());
        }
    }

    fn on_packet(&mut self, p: &Packet<'_>, now: Instant) {
        let ctx = self.ctx.clone();
        match *p {
            Packet::PubAck(a) => {
                ctx.acked(self.out.on_puback(a.msg_id, a.return_code.is_accepted(), now));
            }
            Packet::PubRec(id) => {
                if let Some(first) = self.out.on_pubrec(id, now) {
                    ctx.acked(first);
                    self.send_packet(&Packet::PubRel(id));
                }
            }
            Packet::PubComp(id) => self.out.on_pubcomp(id, now),
            Packet::Publish(pb) => {
                let reply = ctx.deliver(&mut self.inbox, pb.qos.bits(), pb.msg_id, pb.data, now);
                match reply {
                    Reply::None => {}
                    Reply::PubAck => self.send_packet(&Packet::PubAck(Ack {
                        topic_id: pb.topic.raw(),
                        msg_id: pb.msg_id,
                        return_code: ReturnCode::Accepted,
                    })),
                    Reply::PubRec => self.send_packet(&Packet::PubRec(pb.msg_id)),
                }
            }
            Packet::PubRel(id) => {
                self.inbox.on_pubrel(id);
                self.send_packet(&Packet::PubComp(id));
            }
            Packet::Register(r) => {
                self.res.registers += 1;
                self.send_packet(&Packet::RegAck(Ack {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }));
            }
            Packet::Disconnect(_) => self.res.session_lost = true,
            _ => {}
        }
    }

    fn send_packet(&mut self, p: &Packet<'_>) {
        let ctx = self.ctx.clone();
        let mut tx = ctx.tx.borrow_mut();
        match p.encode(&mut tx) {
            Ok(n) => self.send_raw(&tx[..n]),
            Err(_) => self.res.send_errors += 1,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        // Straight to the non-blocking socket: UDP sends need no readiness
        // (tokio's `try_send` refuses until the reactor has polled once).
        if socket2::SockRef::from(&self.sock).send(bytes).is_err() {
            // A full socket buffer or an ICMP error from an earlier
            // datagram; retransmission covers QoS 1 and 2.
            self.res.send_errors += 1;
        }
    }

    fn encode_publish(&self, s: &PendingPublish, out: &mut [u8]) -> Option<usize> {
        let ctx = &self.ctx;
        let mut data = ctx.payload.borrow_mut();
        let stamp = Stamp {
            tag: ctx.run.tag,
            kind: Kind::Up,
            qos: s.qos,
            source: self.index,
            seq: s.seq,
            sent_ns: ctx.run.epoch.ns(s.first_sent),
        };
        payload::write(&mut data, &stamp);
        Packet::Publish(Publish {
            dup: s.dup,
            qos: codec_qos(s.qos),
            retain: false,
            topic: TopicId::Normal(self.up_topic),
            msg_id: s.msg_id,
            data: &data,
        })
        .encode(out)
        .ok()
    }

    /// Sends a batch of equal-sized datagrams: one system call with
    /// segmentation offload, else one by one.
    fn flush_batch(&mut self, batch: &mut Vec<u8>, segment: usize) {
        if batch.is_empty() {
            return;
        }
        if batch.len() == segment || !self.ctx.gso.get() {
            for d in batch.chunks(segment.max(1)) {
                self.send_raw(d);
            }
        } else if let Err(e) = gso::send(&self.sock, batch, segment) {
            match e.raw_os_error() {
                // No UDP_SEGMENT here (EINVAL, ENOPROTOOPT, EIO from a
                // device without it): one by one from now on.
                Some(5 | 22 | 92 | 95) => {
                    self.ctx.gso.set(false);
                    for d in batch.chunks(segment.max(1)) {
                        self.send_raw(d);
                    }
                }
                _ => self.res.send_errors += batch.len().div_ceil(segment.max(1)) as u64,
            }
        }
        batch.clear();
    }

    /// Sends what is due, at most [`BATCH`]; `true` when more is due at once.
    /// Consecutive first sends of equal size go out as one batch.
    fn send_due(&mut self) -> bool {
        let ctx = self.ctx.clone();
        let mut batch = ctx.batch.borrow_mut();
        let mut tx = ctx.tx.borrow_mut();
        let mut segment = 0;
        for _ in 0..BATCH {
            let now = Instant::now();
            match self.out.poll(now) {
                Some(Send::Publish { seq, qos, msg_id, dup, first_sent }) => {
                    if !dup {
                        Live::bump(&ctx.live.sent);
                    }
                    let p = PendingPublish { seq, qos, msg_id, dup, first_sent };
                    let Some(n) = self.encode_publish(&p, &mut tx) else {
                        self.res.send_errors += 1;
                        continue;
                    };
                    if n != segment
                        || batch.len() + n > gso::MAX_BATCH
                        || batch.len() / n.max(1) >= gso::MAX_SEGMENTS
                    {
                        self.flush_batch(&mut batch, segment);
                        segment = n;
                    }
                    batch.extend_from_slice(&tx[..n]);
                }
                Some(Send::PubRel(id)) => {
                    self.flush_batch(&mut batch, segment);
                    drop(tx);
                    self.send_packet(&Packet::PubRel(id));
                    tx = ctx.tx.borrow_mut();
                }
                None => {
                    self.flush_batch(&mut batch, segment);
                    return false;
                }
            }
        }
        self.flush_batch(&mut batch, segment);
        self.out.ready(Instant::now())
    }

    async fn publish(&mut self) {
        let o = self.ctx.opts.clone();
        let start = self.ctx.publish_start();
        self.out.set_pacer(Pacer::new(start, o.rate, self.ctx.roles.awake, self.index));
        let mut done = false;
        let mut none = |_: &Packet<'_>| None::<()>;
        loop {
            let more = self.send_due();
            if !done && (self.out.done() || self.res.session_lost) {
                done = true;
                Live::bump(&self.ctx.live.publishers_done);
            }
            if self.ctx.stopping(&self.phase) || self.res.session_lost {
                break;
            }
            if more {
                self.drain(&mut none);
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self.out.next_deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                r = self.sock.readable() => {
                    if r.is_ok() {
                        self.drain(&mut none);
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {}
                r = self.phase.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
        if !done {
            Live::bump(&self.ctx.live.publishers_done);
        }
    }

    /// Wake-ups until everything published to this sleeper is in, or the
    /// pass's wake time is over: PINGREQ(ClientId), answer what comes,
    /// PINGRESP ends one.
    async fn wake(&mut self, j: u32) {
        let o = self.ctx.opts.clone();
        let id = self.client_id.clone();
        let ping = Packet::PingReq(Some(id.as_bytes()));
        loop {
            let start = Instant::now();
            let mut pingresp = |p: &Packet<'_>| matches!(p, Packet::PingResp).then_some(());
            // Each message that arrives restarts the wait: the gateway
            // sends the buffer one message at a time.
            let mut tries = 0;
            let mut answered = false;
            'wake: loop {
                self.send_packet(&ping);
                let mut deadline = tokio::time::Instant::now() + o.retry;
                loop {
                    tokio::select! {
                        r = self.sock.readable() => {
                            if r.is_err() {
                                continue;
                            }
                            let before = self.inbox.sleep.unique();
                            if self.drain(&mut pingresp).is_some() {
                                answered = true;
                                break 'wake;
                            }
                            if self.inbox.sleep.unique() > before {
                                deadline = tokio::time::Instant::now() + o.retry;
                            }
                        }
                        _ = sleep_until(deadline) => break,
                        r = self.phase.changed() => {
                            if r.is_err() || self.ctx.stopping(&self.phase) {
                                return;
                            }
                        }
                    }
                }
                tries += 1;
                if tries > o.max_retries {
                    break;
                }
            }
            self.ctx.latencies.borrow_mut().wake.record(start.elapsed());
            self.res.wakes += 1;
            self.res.wakes_without_pingresp += u64::from(!answered);
            let expected = self.ctx.sleep_expected.borrow().get(j as usize).copied().unwrap_or(0);
            let until = self.ctx.wake_until.get();
            if self.inbox.sleep.unique() >= expected || until.is_none_or(|u| Instant::now() >= u) {
                return;
            }
            // Asleep again; the rest may still be on its way to the gateway.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.phase.wait_for(|p| *p >= Phase::Stop) => return,
            }
        }
    }

    /// DISCONNECT (and, for a persistent session, CONNECT with
    /// CleanSession true then DISCONNECT, so nothing is left on the
    /// broker). Best effort: one short try each.
    async fn leave(&mut self) {
        let window = self.ctx.window.clone();
        let Ok(_permit) = window.acquire_owned().await else { return };
        let wait = Duration::from_millis(500);
        let bye = |p: &Packet<'_>| matches!(p, Packet::Disconnect(_)).then_some(());
        // The phase is Stop by now: requests must not stop on it.
        let (_tx, rx) = watch::channel(Phase::Setup);
        self.phase = rx;
        let _ = self.request(&Packet::Disconnect(None), wait, 0, bye).await;
        if self.ctx.opts.persistent {
            let id = self.client_id.clone();
            let connect = Packet::Connect(Connect {
                will: false,
                clean_session: true,
                protocol_id: PROTOCOL_ID,
                duration: 60,
                client_id: id.as_bytes(),
            });
            let connack = |p: &Packet<'_>| matches!(p, Packet::ConnAck(_)).then_some(());
            if self.request(&connect, wait, 0, connack).await.is_ok() {
                let _ = self.request(&Packet::Disconnect(None), wait, 0, bye).await;
            }
        }
    }
}

/// A deadline that never comes (for a disabled `select!` branch).
pub fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
