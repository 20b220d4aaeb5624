//! Messages from the broker to the sensor: one FIFO across QoS levels,
//! REGISTER before the PUBLISH that needs it, a bounded number in flight,
//! retransmission after Tretry at most Nretry times, and an upstream
//! acknowledgement for every message once the sensor has it (or once it is
//! dropped for a counted reason).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqttsn_codec::{Ack, Packet, ReturnCode, TopicId};

use super::topics::RegisterError;
use super::{sn_qos, DropReason, Outgoing, Phase, Session, SessionEvent};
use crate::mqtt::QoS as MqttQoS;
use crate::upstream::{Command, DeliveryId};

/// A message from the broker waiting for the sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivery {
    /// `Some` for QoS 1 and 2: acknowledged upstream exactly once.
    pub delivery: Option<DeliveryId>,
    /// The broker's packet identifier (QoS 1 and 2).
    pub packet_id: u16,
    /// Its key in the store once stored (0: not stored).
    pub seq: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: MqttQoS,
    pub retain: bool,
}

/// Where a QoS 1 or 2 PUBLISH toward the sensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// A PUBLISH in flight toward the sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Inflight {
    pub msg_id: u16,
    pub topic: TopicId,
    pub message: Delivery,
    pub stage: Stage,
    pub deadline: Instant,
    pub retries: u32,
}

impl Inflight {
    /// The upstream delivery not yet acknowledged, if any (a QoS 2 message
    /// is acknowledged upstream at the sensor's PUBREC).
    pub fn unacked_delivery(&self) -> Option<DeliveryId> {
        match self.stage {
            Stage::Sent => self.message.delivery,
            Stage::Released => None,
        }
    }
}

/// A gateway REGISTER waiting for REGACK; the queue waits behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PendingRegister {
    pub msg_id: u16,
    pub topic_id: u16,
    pub name: Arc<str>,
    pub deadline: Instant,
    pub retries: u32,
}

/// Octets of a PUBLISH body (after MsgType) besides its data.
const PUBLISH_BODY: usize = 5;

impl Session {
    /// A message from the broker.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn message(
        &mut self,
        delivery: Option<DeliveryId>,
        packet_id: u16,
        topic: Arc<str>,
        payload: Bytes,
        qos: MqttQoS,
        retain: bool,
        now: Instant,
    ) {
        let mut delivery = delivery;
        if self.cfg.ack_on_receipt && qos != MqttQoS::AtMostOnce {
            if let Some(id) = delivery.take() {
                // Queued, and (persistent) stored before this goes out.
                self.commands.push_back(Command::Ack(id));
            }
        }
        if matches!(self.phase, Phase::Asleep { .. }) {
            return self.buffer(Delivery {
                delivery,
                packet_id,
                seq: 0,
                topic,
                payload,
                qos,
                retain,
            });
        }
        if self.subs_known
            && !self.subs.iter().any(|(f, _)| mqttsn_codec::validate::topic_matches(f, &topic))
        {
            return self.drop_message(delivery, DropReason::NotSubscribed);
        }
        if delivery.is_none() && self.queue.len() >= self.cfg.max_queued {
            return self.drop_message(delivery, DropReason::QueueFull);
        }
        self.queue.push_back(Delivery { delivery, packet_id, seq: 0, topic, payload, qos, retain });
        self.pump(now);
    }

    /// The broker has no session for us (any more): the packet
    /// identifiers of the messages held came from one it forgot, and a new
    /// message may carry them again; a held message must not be taken for
    /// its copy (after a restart, `Command::Restore`). Queued ones are
    /// stored again without theirs.
    pub(super) fn forget_packet_ids(&mut self) {
        for d in self.queue.iter_mut() {
            if d.packet_id != 0 {
                d.packet_id = 0;
                d.seq = 0;
            }
        }
        for i in self.inflight.iter_mut() {
            i.message.packet_id = 0;
        }
    }

    pub(super) fn drop_message(&mut self, delivery: Option<DeliveryId>, reason: DropReason) {
        if let Some(id) = delivery {
            self.commands.push_back(Command::Ack(id));
        }
        self.dropped(reason);
    }

    /// Sends what the queue and the in-flight window allow.
    pub(super) fn pump(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Active | Phase::Awake { .. }) || self.stalled {
            return;
        }
        self.pump_queue(now);
        self.flushed(now);
    }

    fn pump_queue(&mut self, now: Instant) {
        while self.register.is_none() && self.inflight.len() < self.cfg.max_inflight.max(1) {
            let Some(front) = self.queue.front() else { break };
            let name = front.topic.clone();
            if self.regs.is_refused(&name) {
                let d = self.queue.pop_front();
                self.drop_message(d.and_then(|d| d.delivery), DropReason::TopicRefused);
                continue;
            }
            let fits = mqttsn_codec::Header::total_len(PUBLISH_BODY + front.payload.len())
                .is_ok_and(|n| n <= self.cfg.max_datagram);
            if !fits {
                let d = self.queue.pop_front();
                self.drop_message(d.and_then(|d| d.delivery), DropReason::TooLong);
                continue;
            }
            let topic = if let Some(id) = self.regs.id(&name) {
                TopicId::Normal(id)
            } else if let Some(id) = self.regs.predefined().id(&name) {
                TopicId::Predefined(id)
            } else if name.len() == 2 {
                TopicId::Short([name.as_bytes()[0], name.as_bytes()[1]])
            } else {
                match self.regs.register(&name) {
                    Ok(topic_id) => {
                        let msg_id = self.alloc_msg_id();
                        let deadline = now + self.cfg.retry_interval;
                        self.transmits.push_back(Outgoing::Register {
                            topic_id,
                            msg_id,
                            name: name.clone(),
                        });
                        self.register =
                            Some(PendingRegister { msg_id, topic_id, name, deadline, retries: 0 });
                        break;
                    }
                    Err(RegisterError::Full) => {
                        let d = self.queue.pop_front();
                        self.drop_message(d.and_then(|d| d.delivery), DropReason::TopicsFull);
                        continue;
                    }
                }
            };
            let Some(message) = self.queue.pop_front() else { break };
            if message.qos == MqttQoS::AtMostOnce {
                self.transmits.push_back(Outgoing::Publish {
                    dup: false,
                    qos: mqttsn_codec::QoS::AtMostOnce,
                    retain: message.retain,
                    topic,
                    msg_id: 0,
                    data: message.payload,
                });
                // A QoS 0 message from the broker needs no acknowledgement;
                // one downgraded by the subscription still might.
                if let Some(id) = message.delivery {
                    self.commands.push_back(Command::Ack(id));
                }
                self.events.push_back(SessionEvent::Delivered { qos: MqttQoS::AtMostOnce });
                continue;
            }
            let msg_id = self.alloc_msg_id();
            self.transmits.push_back(publish_out(&message, topic, msg_id, false));
            self.inflight.push_back(Inflight {
                msg_id,
                topic,
                message,
                stage: Stage::Sent,
                deadline: now + self.cfg.retry_interval,
                retries: 0,
            });
        }
    }

    /// The next MsgId toward the sensor: never 0, never one still in use.
    pub(super) fn alloc_msg_id(&mut self) -> u16 {
        loop {
            self.next_msg_id = self.next_msg_id.wrapping_add(1);
            let id = self.next_msg_id;
            if id == 0 {
                continue;
            }
            let in_use = self.inflight.iter().any(|i| i.msg_id == id)
                || self.register.as_ref().is_some_and(|r| r.msg_id == id);
            if !in_use {
                return id;
            }
        }
    }

    pub(super) fn regack_from_sensor(&mut self, a: &Ack, now: Instant) {
        let Some(reg) = self.register.take_if(|r| r.msg_id == a.msg_id) else {
            return self.dropped(DropReason::Unexpected);
        };
        if a.return_code != ReturnCode::Accepted {
            // Spec 6.10: no PUBLISH for this topic until the sensor
            // registers it itself.
            self.regs.refuse(&reg.name);
        }
        self.pump(now);
    }

    pub(super) fn puback_from_sensor(&mut self, a: &Ack, now: Instant) {
        let Some(pos) = self.inflight.iter().position(|i| i.msg_id == a.msg_id) else {
            return self.dropped(DropReason::Unexpected);
        };
        match a.return_code {
            ReturnCode::Accepted => {
                if let Some(done) = self.inflight.remove(pos) {
                    if let Some(id) = done.unacked_delivery() {
                        self.commands.push_back(Command::Ack(id));
                    }
                    self.events.push_back(SessionEvent::Delivered { qos: done.message.qos });
                }
            }
            ReturnCode::InvalidTopicId => {
                // The sensor does not know the id (it restarted, say):
                // register the topic again and replay the message first.
                if let Some(back) = self.inflight.remove(pos) {
                    if let TopicId::Normal(id) = back.topic {
                        self.regs.forget(id);
                    }
                    self.queue.push_front(back.message);
                }
            }
            ReturnCode::Congestion => {
                // Try again after Tretry.
                if let Some(i) = self.inflight.get_mut(pos) {
                    i.deadline = now + self.cfg.retry_interval;
                }
                return;
            }
            _ => {
                if let Some(done) = self.inflight.remove(pos) {
                    self.drop_message(done.unacked_delivery(), DropReason::RejectedBySensor);
                }
            }
        }
        self.pump(now);
    }

    pub(super) fn pubrec_from_sensor(&mut self, msg_id: u16, now: Instant) {
        let Some(i) = self.inflight.iter_mut().find(|i| i.msg_id == msg_id) else {
            return self.dropped(DropReason::Unexpected);
        };
        if i.message.qos != MqttQoS::ExactlyOnce {
            return;
        }
        if i.stage == Stage::Sent {
            // The sensor has the message: acknowledge it upstream now.
            if let Some(id) = i.message.delivery {
                self.commands.push_back(Command::Ack(id));
            }
            i.stage = Stage::Released;
            self.events.push_back(SessionEvent::Delivered { qos: MqttQoS::ExactlyOnce });
        }
        i.deadline = now + self.cfg.retry_interval;
        i.retries = 0;
        self.transmits.push_back(Outgoing::Packet(Packet::PubRel(msg_id)));
    }

    pub(super) fn pubcomp_from_sensor(&mut self, msg_id: u16, now: Instant) {
        let Some(pos) =
            self.inflight.iter().position(|i| i.msg_id == msg_id && i.stage == Stage::Released)
        else {
            return self.dropped(DropReason::Unexpected);
        };
        self.inflight.remove(pos);
        self.pump(now);
    }

    /// The earliest retransmission deadline.
    pub(super) fn retry_deadline(&self) -> Option<Instant> {
        let inflight = self.inflight.iter().map(|i| i.deadline).min();
        let register = self.register.as_ref().map(|r| r.deadline);
        match (inflight, register) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends again what is due; after Nretry the transaction ends and the
    /// message waits until the sensor is heard from again.
    pub(super) fn retransmit(&mut self, now: Instant) {
        if self.stalled {
            return;
        }
        let retry = self.cfg.retry_interval;
        let max = self.cfg.max_retries;
        let mut give_up = false;
        if let Some(r) = self.register.as_mut() {
            if now >= r.deadline {
                if r.retries >= max {
                    give_up = true;
                } else {
                    r.retries += 1;
                    r.deadline = now + retry;
                    self.events.push_back(SessionEvent::Retransmitted);
                    self.transmits.push_back(Outgoing::Register {
                        topic_id: r.topic_id,
                        msg_id: r.msg_id,
                        name: r.name.clone(),
                    });
                }
            }
        }
        for i in self.inflight.iter_mut() {
            if now < i.deadline {
                continue;
            }
            if i.retries >= max {
                give_up = true;
                continue;
            }
            i.retries += 1;
            i.deadline = now + retry;
            self.events.push_back(SessionEvent::Retransmitted);
            self.transmits.push_back(match i.stage {
                Stage::Sent => publish_out(&i.message, i.topic, i.msg_id, true),
                Stage::Released => Outgoing::Packet(Packet::PubRel(i.msg_id)),
            });
        }
        if give_up && !self.stalled {
            self.stalled = true;
            self.events.push_back(SessionEvent::Stalled);
        }
    }

    /// The sensor is back after retransmissions gave up: send everything
    /// in flight again, with fresh retry counts.
    pub(super) fn resend_inflight(&mut self, now: Instant) {
        let retry = self.cfg.retry_interval;
        if let Some(r) = self.register.as_mut() {
            r.retries = 0;
            r.deadline = now + retry;
            self.transmits.push_back(Outgoing::Register {
                topic_id: r.topic_id,
                msg_id: r.msg_id,
                name: r.name.clone(),
            });
        }
        for i in self.inflight.iter_mut() {
            i.retries = 0;
            i.deadline = now + retry;
            self.transmits.push_back(match i.stage {
                Stage::Sent => publish_out(&i.message, i.topic, i.msg_id, true),
                Stage::Released => Outgoing::Packet(Packet::PubRel(i.msg_id)),
            });
        }
        self.pump(now);
    }
}

fn publish_out(m: &Delivery, topic: TopicId, msg_id: u16, dup: bool) -> Outgoing {
    Outgoing::Publish {
        dup,
        qos: sn_qos(m.qos),
        retain: m.retain,
        topic,
        msg_id,
        data: m.payload.clone(),
    }
}
