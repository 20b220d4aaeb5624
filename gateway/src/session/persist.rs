//! What a CleanSession-false session keeps in the store, and how it comes
//! back after a restart.
//!
//! A session is stored as one record (everything but its buffer) and one
//! entry per buffered message, so a message added to or taken from a long
//! buffer costs one small write. [`Session::take_persist`] hands out what
//! changed since the last call; the driver writes it, and only then lets
//! the outputs of the same step (acknowledgements, PUBLISHes) out.
//!
//! Stored: the will, keepalive, registrations, subscriptions, whether the
//! sensor is connected or asleep (and its Duration), the sensor's QoS 2
//! PUBLISHes not yet completed (with the upstream packet identifier and,
//! until the broker recorded it, the message), and the messages from the
//! broker that the gateway has taken responsibility for: those buffered
//! for a sleeper and acknowledged upstream, and the QoS 2 ones in flight
//! toward the sensor. QoS 1 messages the broker has not yet been told about
//! are not stored: it sends them again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::TopicId;

use super::released;
use super::to_sensor::{Delivery, Inflight, Stage};
use super::{Phase, Qos2In, Session, SessionEvent, Step, UpRequest};
use crate::mqtt::QoS as MqttQoS;
use crate::upstream::{Command, RestoredPublish, RestoredStage, Will};

/// The record format; a record of another version is refused.
const VERSION: u8 = 1;

/// Request ids a stored record leases ahead: the record is rewritten when
/// they run out, not on every request, and a restored session starts after
/// them (so it never reuses a packet identifier the broker may still know).
const REQUEST_LEASE: u64 = 4096;

/// MsgIds toward the sensor leased ahead the same way.
const MSG_ID_LEASE: u16 = 1024;

/// What changed in a session's stored state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Persist {
    /// The new session record, if it changed.
    pub record: Option<Vec<u8>>,
    /// Buffered messages to store, by key.
    pub put: Vec<(u64, Vec<u8>)>,
    /// Buffered messages to delete, by key.
    pub delete: Vec<u64>,
    /// The session is no longer persistent: delete the record and every
    /// message.
    pub remove: bool,
    /// The outputs of the step that produced this must wait for its
    /// commit. False when the only change is a lease renewed ahead of
    /// need: what the step sent is covered by the lease already stored.
    pub hold: bool,
}

/// What the store holds of one session, as the session remembers it.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Keys of the buffered messages in the store.
    pub seqs: BTreeSet<u64>,
    /// The record last handed out for the store.
    pub record: Option<Vec<u8>>,
    /// Where the next record is encoded, to compare with the last one
    /// without an allocation.
    pub scratch: Vec<u8>,
    /// When the session ended, in seconds since the Unix epoch.
    pub ended_wall: Option<u64>,
}

/// A stored record or message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// It ends too early.
    #[error("truncated")]
    Truncated,
    /// It was written by another format version.
    #[error("unknown format version {0}")]
    Version(u8),
    /// A field holds a value that cannot be.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl Session {
    /// What changed in the stored state since the last call, or `None`.
    /// `wall` is the time in seconds since the Unix epoch (when an ended
    /// session ended is kept as wall-clock time); `addr` is the sensor's
    /// address as the driver encodes it.
    pub fn take_persist(&mut self, wall: u64, addr: &[u8]) -> Option<Persist> {
        if self.clean {
            if let Some(st) = self.stored.take() {
                if st.record.is_some() || !st.seqs.is_empty() {
                    return Some(Persist { remove: true, hold: true, ..Persist::default() });
                }
            }
            return None;
        }
        let mut st = self.stored.take().unwrap_or_default();
        let result = self.persist_into(&mut st, wall, addr);
        self.stored = Some(st);
        result
    }

    fn persist_into(&mut self, st: &mut Stored, wall: u64, addr: &[u8]) -> Option<Persist> {
        if self.phase == Phase::Ended {
            st.ended_wall.get_or_insert(wall);
        } else {
            st.ended_wall = None;
        }
        let mut put = Vec::new();
        let mut kept = 0;
        for d in self.queue.iter_mut() {
            if !owned(d) {
                continue;
            }
            if d.seq == 0 {
                self.next_seq += 1;
                d.seq = self.next_seq;
            }
            if st.seqs.contains(&d.seq) {
                kept += 1;
            } else {
                let mut w = W::default();
                w.delivery(d);
                put.push((d.seq, w.0));
            }
        }
        let mut delete = Vec::new();
        if kept != st.seqs.len() {
            let current: BTreeSet<u64> =
                self.queue.iter().filter(|d| owned(d)).map(|d| d.seq).collect();
            delete = st.seqs.difference(&current).copied().collect();
            for seq in &delete {
                st.seqs.remove(seq);
            }
        }
        for (seq, _) in &put {
            st.seqs.insert(*seq);
        }
        // Counters are stored as leases, renewed when half used: a publish
        // or a delivery changes nothing durable, and a renewal is written
        // before the old lease runs out, so nothing waits for it.
        let mut w = W(std::mem::take(&mut st.scratch));
        w.0.clear();
        self.encode_record(addr, st.ended_wall, &mut w);
        let changed = st.record.as_deref() != Some(&w.0[..]);
        let renew_requests = self.next_request + REQUEST_LEASE / 2 >= self.request_lease;
        let renew_msg_ids = self.next_msg_id.wrapping_sub(self.msg_id_mark) >= MSG_ID_LEASE / 2;
        if renew_requests {
            self.request_lease = self.next_request + REQUEST_LEASE;
        }
        if renew_msg_ids {
            self.msg_id_mark = self.next_msg_id;
        }
        if renew_requests || renew_msg_ids {
            w.0.clear();
            self.encode_record(addr, st.ended_wall, &mut w);
        }
        let record = if changed || renew_requests || renew_msg_ids {
            st.record = Some(w.0.clone());
            st.scratch = w.0;
            st.record.clone()
        } else {
            st.scratch = w.0;
            None
        };
        let hold = changed || !put.is_empty() || !delete.is_empty();
        if record.is_none() && put.is_empty() && delete.is_empty() {
            return None;
        }
        Some(Persist { record, put, delete, remove: false, hold })
    }

    fn encode_record(&self, addr: &[u8], ended_wall: Option<u64>, w: &mut W) {
        w.u8(VERSION);
        w.bytes(addr);
        w.u32(u32::try_from(self.keepalive.as_secs()).unwrap_or(u32::MAX));
        match &self.phase {
            Phase::Active => w.u8(1),
            Phase::Asleep { duration, .. } | Phase::Awake { duration } => {
                w.u8(2);
                w.u32(u32::try_from(duration.as_secs()).unwrap_or(u32::MAX));
            }
            _ => {
                w.u8(0);
                w.u64(ended_wall.unwrap_or(0));
            }
        }
        match &self.will {
            None => w.u8(0),
            Some(will) => {
                w.u8(1);
                w.str(&will.topic);
                w.bytes(&will.payload);
                w.u8(will.qos as u8);
                w.u8(u8::from(will.retain));
            }
        }
        let (regs, refused, next_id) = self.regs.export();
        // A registration the sensor has not acknowledged is not kept: the
        // restored session registers the topic again.
        let pending = self.register.as_ref().map(|r| r.topic_id);
        let regs: Vec<_> = regs.into_iter().filter(|(id, _)| Some(*id) != pending).collect();
        w.len(regs.len());
        for (id, name) in &regs {
            w.u16(*id);
            w.str(name);
        }
        w.len(refused.len());
        for name in &refused {
            w.str(name);
        }
        w.u16(next_id);
        w.len(self.subs.len());
        for (filter, qos) in &self.subs {
            w.str(filter);
            w.u8(*qos as u8);
        }
        w.u8(u8::from(self.subs_known));
        w.u16(self.msg_id_mark.wrapping_add(MSG_ID_LEASE));
        w.u64(self.request_lease);
        w.u64(self.next_seq);
        let mut qos2: Vec<(&u16, &Qos2In)> = self.qos2_in.iter().collect();
        qos2.sort_by_key(|(id, _)| **id);
        w.len(qos2.len());
        for (msg_id, q) in qos2 {
            w.u16(*msg_id);
            w.u64(q.request);
            w.u16(q.topic_id);
            w.u8(u8::from(q.recorded) | u8::from(q.releasing) << 1);
            match &q.message {
                None => w.u8(0),
                Some((topic, payload, retain)) => {
                    w.u8(1);
                    w.str(topic);
                    w.bytes(payload);
                    w.u8(u8::from(*retain));
                }
            }
        }
        let inflight: Vec<&Inflight> = self.inflight.iter().filter(|i| kept_inflight(i)).collect();
        w.len(inflight.len());
        for i in inflight {
            w.u16(i.msg_id);
            let (kind, raw) = match i.topic {
                TopicId::Normal(id) => (0, id),
                TopicId::Predefined(id) => (1, id),
                TopicId::Short(s) => (2, u16::from_be_bytes(s)),
                TopicId::Reserved(id) => (3, id),
            };
            w.u8(kind);
            w.u16(raw);
            w.u8(match i.stage {
                Stage::Sent => 0,
                Stage::Released => 1,
            });
            w.delivery(&i.message);
        }
    }

    /// A session restored from its stored `record` and buffered
    /// `messages` (by key, in order). A sensor that was connected is
    /// active again (its keepalive starts now); a sleeper gets a fresh
    /// full Duration; both get their upstream session back at once.
    /// Returns the session and the sensor's stored address.
    pub fn restore(
        cfg: Arc<super::SessionConfig>,
        client_id: &str,
        record: &[u8],
        messages: impl IntoIterator<Item = (u64, Vec<u8>)>,
        now: Instant,
    ) -> Result<(Self, Vec<u8>), PersistError> {
        let mut s = Session::new(cfg, client_id, now);
        s.clean = false;
        let mut r = R(record);
        let version = r.u8()?;
        if version != VERSION {
            return Err(PersistError::Version(version));
        }
        let addr = r.bytes()?.to_vec();
        s.keepalive = Duration::from_secs(u64::from(r.u32()?));
        let phase = match r.u8()? {
            0 => {
                let ended = r.u64()?;
                s.stored.get_or_insert_with(Default::default).ended_wall =
                    (ended != 0).then_some(ended);
                Phase::Ended
            }
            1 => Phase::Active,
            2 => {
                let duration = Duration::from_secs(u64::from(r.u32()?));
                let deadline = now + s.cfg.keepalive_tolerance.deadline(duration);
                Phase::Asleep { deadline, duration }
            }
            _ => return Err(PersistError::Invalid("phase")),
        };
        s.will = match r.u8()? {
            0 => None,
            _ => Some(Will {
                topic: r.str()?.to_owned(),
                payload: Bytes::copy_from_slice(r.bytes()?),
                qos: r.qos()?,
                retain: r.u8()? != 0,
            }),
        };
        let mut regs = Vec::new();
        for _ in 0..r.len()? {
            let id = r.u16()?;
            regs.push((id, Arc::from(r.str()?)));
        }
        let mut refused = Vec::new();
        for _ in 0..r.len()? {
            refused.push(Arc::from(r.str()?));
        }
        let next_id = r.u16()?;
        s.regs.import(regs, refused, next_id);
        for _ in 0..r.len()? {
            let filter: Arc<str> = Arc::from(r.str()?);
            let qos = r.qos()?;
            s.subs.push((filter, qos));
        }
        s.subs_known = r.u8()? != 0;
        s.next_msg_id = r.u16()?;
        s.msg_id_mark = s.next_msg_id;
        s.next_request = r.u64()?.max(1);
        s.request_lease = s.next_request;
        s.next_seq = r.u64()?;
        for _ in 0..r.len()? {
            let msg_id = r.u16()?;
            let request = r.u64()?;
            let topic_id = r.u16()?;
            let flags = r.u8()?;
            let message = match r.u8()? {
                0 => None,
                _ => {
                    let topic: Arc<str> = Arc::from(r.str()?);
                    Some((topic, Bytes::copy_from_slice(r.bytes()?), r.u8()? != 0))
                }
            };
            let q = Qos2In {
                request,
                topic_id,
                fingerprint: message.as_ref().map(|(_, payload, _)| released::fingerprint(payload)),
                message,
                recorded: flags & 1 != 0,
                releasing: flags & 2 != 0,
            };
            s.qos2_in.insert(msg_id, q);
        }
        let retry_at = if phase == Phase::Active { now } else { now + s.cfg.retry_interval };
        for _ in 0..r.len()? {
            let msg_id = r.u16()?;
            let kind = r.u8()?;
            let raw = r.u16()?;
            let topic = match kind {
                0 => TopicId::Normal(raw),
                1 => TopicId::Predefined(raw),
                2 => TopicId::Short(raw.to_be_bytes()),
                3 => TopicId::Reserved(raw),
                _ => return Err(PersistError::Invalid("topic id type")),
            };
            let stage = match r.u8()? {
                0 => Stage::Sent,
                1 => Stage::Released,
                _ => return Err(PersistError::Invalid("stage")),
            };
            let message = r.delivery(0)?;
            s.inflight.push_back(Inflight {
                msg_id,
                topic,
                message,
                stage,
                deadline: retry_at,
                retries: 0,
            });
        }
        if !r.0.is_empty() {
            return Err(PersistError::Invalid("trailing octets"));
        }
        for (seq, bytes) in messages {
            let d = R(&bytes).delivery(seq)?;
            s.stored.get_or_insert_with(Default::default).seqs.insert(seq);
            s.queue.push_back(d);
        }
        s.stored.get_or_insert_with(Default::default).record = Some(record.to_vec());
        s.phase = phase;
        if s.phase != Phase::Ended {
            s.events.push_back(SessionEvent::Connected);
            s.plan.push_back(Step::Connect { clean: false, with_will: true });
            s.run_plan(now);
        }
        // An active sensor gets what the session holds for it at once: it
        // may have nothing more to say that would wake the queue.
        s.pump(now);
        Ok((s, addr))
    }

    /// Before a new upstream connection (none open): what the session
    /// still has in flight upstream, for [`Command::Restore`]. Also makes
    /// the session expect the answers to its QoS 2 publishes again.
    pub(super) fn restore_upstream(&mut self, now: Instant) {
        let mut publishes = Vec::new();
        let mut qos2: Vec<(&u16, &Qos2In)> = self.qos2_in.iter().collect();
        qos2.sort_by_key(|(_, q)| q.request);
        for (msg_id, q) in qos2 {
            let stage = if q.releasing {
                RestoredStage::Released
            } else if q.recorded {
                RestoredStage::Recorded
            } else {
                RestoredStage::Sent
            };
            let (topic, payload, retain) = match &q.message {
                Some((t, p, r)) => (t.clone(), p.clone(), *r),
                // Recorded: the broker has the message.
                None if stage != RestoredStage::Sent => (Arc::from(""), Bytes::new(), false),
                None => continue,
            };
            publishes.push(RestoredPublish { id: q.request, topic, payload, retain, stage });
            self.requests.entry(q.request).or_insert(UpRequest::Publish {
                msg_id: *msg_id,
                topic_id: q.topic_id,
                qos: mqttsn_codec::QoS::ExactlyOnce,
                sent: now,
            });
        }
        let qos2_received: Vec<u16> = self
            .queue
            .iter()
            .chain(self.inflight.iter().map(|i| &i.message))
            .filter(|d| d.qos == MqttQoS::ExactlyOnce && d.packet_id != 0 && d.delivery.is_none())
            .map(|d| d.packet_id)
            .collect();
        if !publishes.is_empty() || !qos2_received.is_empty() {
            self.commands.push_back(Command::Restore { publishes, qos2_received });
        }
    }
}

/// A queued message the gateway is responsible for: acknowledged upstream
/// (buffered for a sleeper), QoS 1 or 2.
fn owned(d: &Delivery) -> bool {
    d.delivery.is_none() && d.qos != MqttQoS::AtMostOnce
}

/// An in-flight message kept in the record: acknowledged upstream, or QoS
/// 2 (the sensor may hold its MsgId; a restored session takes it over).
fn kept_inflight(i: &Inflight) -> bool {
    i.message.qos != MqttQoS::AtMostOnce
        && (i.unacked_delivery().is_none() || i.message.qos == MqttQoS::ExactlyOnce)
}

/// The record writer.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn delivery(&mut self, d: &Delivery) {
        self.u16(d.packet_id);
        self.str(&d.topic);
        self.bytes(&d.payload);
        self.u8(d.qos as u8);
        self.u8(u8::from(d.retain));
    }
}

/// The record reader: every read checks the length first.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PersistError> {
        if self.0.len() < n {
            return Err(PersistError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PersistError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, PersistError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, PersistError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, PersistError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, PersistError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn len(&mut self) -> Result<usize, PersistError> {
        let n = self.u32()? as usize;
        // Every element takes at least one octet: a count beyond what is
        // left is corrupt, and must not reserve memory.
        if n > self.0.len() {
            return Err(PersistError::Truncated);
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], PersistError> {
        let n = self.len()?;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, PersistError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| PersistError::Invalid("UTF-8"))
    }
    fn qos(&mut self) -> Result<MqttQoS, PersistError> {
        match self.u8()? {
            0 => Ok(MqttQoS::AtMostOnce),
            1 => Ok(MqttQoS::AtLeastOnce),
            2 => Ok(MqttQoS::ExactlyOnce),
            _ => Err(PersistError::Invalid("QoS")),
        }
    }
    fn delivery(&mut self, seq: u64) -> Result<Delivery, PersistError> {
        Ok(Delivery {
            delivery: None,
            packet_id: self.u16()?,
            topic: Arc::from(self.str()?),
            payload: Bytes::copy_from_slice(self.bytes()?),
            qos: self.qos()?,
            retain: self.u8()? != 0,
            seq,
        })
    }
}
