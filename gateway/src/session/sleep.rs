//! Sleeping sensors (spec 6.14): DISCONNECT with a Duration puts a sensor
//! to sleep; messages for it are buffered; PINGREQ wakes it, the buffer is
//! flushed one message at a time (REGISTER first where needed) and PINGRESP
//! comes last, after which it sleeps again. The sleep timer running out
//! makes it lost: its will is published.

use std::time::{Duration, Instant};

use mqttsn_codec::Packet;

use super::to_sensor::Delivery;
use super::{DropReason, Phase, Session, SessionEvent};
use crate::mqtt::QoS as MqttQoS;
use crate::upstream::Command;

impl Session {
    /// DISCONNECT with a Duration from an active, awake or asleep sensor.
    pub(super) fn fall_asleep(&mut self, duration: Duration, now: Instant) {
        let deadline = now + self.cfg.keepalive_tolerance.deadline(duration);
        self.phase = Phase::Asleep { deadline, duration };
        self.stalled = false;
        self.events.push_back(SessionEvent::Asleep { duration });
        // What waits for the sensor is now in the gateway's buffer: the
        // broker is acknowledged, in the order the messages arrived.
        let mut acks = Vec::new();
        for i in self.inflight.iter_mut() {
            if let Some(id) = i.unacked_delivery() {
                acks.push(id);
                i.message.delivery = None;
            }
        }
        for d in self.queue.iter_mut() {
            if let Some(id) = d.delivery.take() {
                acks.push(id);
            }
        }
        self.commands.extend(acks.into_iter().map(Command::Ack));
        // What is in flight (and a REGISTER waiting for REGACK) is sent
        // again, with the same MsgIds, when the sensor wakes.
    }

    /// A message from the broker while the sensor sleeps: into the buffer,
    /// within its bounds, and acknowledged to the broker.
    pub(super) fn buffer(&mut self, mut d: Delivery) {
        if let Some(id) = d.delivery.take() {
            self.commands.push_back(Command::Ack(id));
        }
        if d.qos == MqttQoS::AtMostOnce && !self.cfg.buffer_qos0 {
            return self.dropped(DropReason::QueueFull);
        }
        let bytes = |q: &std::collections::VecDeque<Delivery>| {
            q.iter().map(|d| d.payload.len() + d.topic.len()).sum::<usize>()
        };
        let size = d.payload.len() + d.topic.len();
        let mut room_freed = 0;
        while self.queue.len() >= self.cfg.sleep_buffer_messages
            || bytes(&self.queue) + size > self.cfg.sleep_buffer_bytes
            || (room_freed == 0 && !self.cfg.buffer_total.fits(size))
        {
            // Make room by dropping the oldest QoS 0 message; without one,
            // the new message is refused.
            let Some(pos) = self.queue.iter().position(|q| q.qos == MqttQoS::AtMostOnce) else {
                return self.dropped(DropReason::QueueFull);
            };
            if let Some(gone) = self.queue.remove(pos) {
                room_freed += gone.payload.len() + gone.topic.len();
            }
            self.dropped(DropReason::QueueFull);
        }
        self.queue.push_back(d);
    }

    pub(super) fn in_asleep(&mut self, packet: &Packet<'_>, now: Instant) {
        let Phase::Asleep { duration, .. } = self.phase else { return };
        match packet {
            // Wake up: flush, PINGRESP last. With the sensor's own
            // ClientId (spec 6.14), or without one, as many field clients
            // send it: the endpoint routed it here by the address this
            // sleeping session is bound to, so it is the sensor's own
            // address (one that moved names itself, see the endpoint).
            Packet::PingReq(id) if id.is_none_or(|id| id == self.client_id.as_bytes()) => {
                self.phase = Phase::Awake { duration };
                self.events.push_back(SessionEvent::Awake);
                self.resend_inflight(now);
            }
            Packet::PingReq(_) => self.dropped(DropReason::Unexpected),
            // A DISCONNECT, with a new Duration or without (handle_packet
            // drops everything else).
            other => self.in_active(other, now),
        }
    }

    pub(super) fn in_awake(&mut self, packet: &Packet<'_>, now: Instant) {
        match packet {
            // A PINGREQ sent again: go on flushing (handle_packet already
            // resent what was in flight if retransmissions had stopped).
            Packet::PingReq(_) => self.pump(now),
            other => self.in_active(other, now),
        }
    }

    /// While awake: once nothing waits for the sensor, PINGRESP, and it
    /// sleeps again.
    pub(super) fn flushed(&mut self, now: Instant) {
        let Phase::Awake { duration } = self.phase else { return };
        if self.queue.is_empty() && self.inflight.is_empty() && self.register.is_none() {
            self.send(Packet::PingResp);
            self.fall_asleep(duration, now);
        }
    }
}
