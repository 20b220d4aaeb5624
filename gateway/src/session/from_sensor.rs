//! What a connected sensor sends: REGISTER, PUBLISH, SUBSCRIBE,
//! UNSUBSCRIBE, the acknowledgements of the gateway's messages, PINGREQ,
//! DISCONNECT and will updates.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqttsn_codec::validate::{self, InvalidName};
use mqttsn_codec::{
    Ack, Packet, Publish, QoS, ReturnCode, SubAck, Subscribe, TopicFilter, TopicId, Unsubscribe,
};

use super::topics::RegisterError;
use super::{
    mqtt_qos, released, sn_qos, DropReason, Qos2In, Session, SessionEvent, Step, UpRequest,
    MAX_PENDING_REQUESTS,
};
use crate::acl::Action;
use crate::mqtt::QoS as MqttQoS;
use crate::upstream::{Command, RequestId, Will};

impl Session {
    pub(super) fn in_active(&mut self, packet: &Packet<'_>, now: Instant) {
        match packet {
            Packet::Register(r) => self.register_from_sensor(r.msg_id, r.topic_name),
            Packet::Publish(p) => self.publish_from_sensor(p, now),
            Packet::PubRel(msg_id) => self.pubrel_from_sensor(*msg_id),
            Packet::Subscribe(s) => self.subscribe_from_sensor(s),
            Packet::Unsubscribe(u) => self.unsubscribe_from_sensor(u),
            Packet::RegAck(a) => self.regack_from_sensor(a, now),
            Packet::PubAck(a) => self.puback_from_sensor(a, now),
            Packet::PubRec(msg_id) => self.pubrec_from_sensor(*msg_id, now),
            Packet::PubComp(msg_id) => self.pubcomp_from_sensor(*msg_id, now),
            Packet::PingReq(_) => self.send(Packet::PingResp),
            Packet::Disconnect(Some(duration)) => {
                self.send(Packet::Disconnect(None));
                self.fall_asleep(std::time::Duration::from_secs(u64::from(*duration)), now);
            }
            Packet::Disconnect(None) => {
                self.send(Packet::Disconnect(None));
                self.events.push_back(SessionEvent::Disconnected);
                self.close(false, now);
            }
            Packet::WillTopicUpd(w) => self.will_topic_update(w.as_ref()),
            Packet::WillMsgUpd(m) => self.will_msg_update(m),
            // A gateway never receives these from a connected sensor.
            _ => self.dropped(DropReason::Unexpected),
        }
    }

    fn register_from_sensor(&mut self, msg_id: u16, name: &[u8]) {
        let (topic_id, rc) = match validate::topic_name(name) {
            Err(e) => (0, self.topic_refused(e)),
            // A sensor registers a topic to publish to it (spec 6.5).
            Ok(name) if !self.may_publish(name) => (0, self.acl_refused(Action::Register)),
            Ok(name) => match self.regs.register(name) {
                Ok(id) => (id, ReturnCode::Accepted),
                Err(RegisterError::Full) => (0, ReturnCode::Congestion),
            },
        };
        self.send(Packet::RegAck(Ack { topic_id, msg_id, return_code: rc }));
    }

    /// The return code refusing a topic name or filter: `0x02` (invalid
    /// topic) for forbidden characters, counted, and `0x03` (not
    /// supported) for the other reasons.
    pub(super) fn topic_refused(&mut self, e: InvalidName) -> ReturnCode {
        if e == InvalidName::ForbiddenChar {
            self.dropped(DropReason::ForbiddenChar);
            ReturnCode::InvalidTopicId
        } else {
            ReturnCode::NotSupported
        }
    }

    /// The topic name a PUBLISH from the sensor goes to, or the return code
    /// refusing it.
    fn resolve(&mut self, topic: TopicId) -> Result<Arc<str>, ReturnCode> {
        match topic {
            TopicId::Normal(id) => self.regs.name(id).cloned().ok_or(ReturnCode::InvalidTopicId),
            TopicId::Predefined(id) => {
                self.regs.predefined().name(id).cloned().ok_or(ReturnCode::InvalidTopicId)
            }
            TopicId::Short(s) => match validate::topic_name(&s) {
                Ok(name) => Ok(Arc::from(name)),
                Err(e) => Err(self.topic_refused(e)),
            },
            TopicId::Reserved(_) => Err(ReturnCode::InvalidTopicId),
        }
    }

    fn publish_from_sensor(&mut self, p: &Publish<'_>, now: Instant) {
        if self.is_late_copy(p, now) {
            // Its exchange is over: the sensor has had our PUBREC and
            // PUBCOMP; answer as before, publish nothing.
            self.events.push_back(SessionEvent::LateDuplicate);
            self.send(Packet::PubRec(p.msg_id));
            return;
        }
        let refuse = |s: &mut Self, rc| {
            s.send(Packet::PubAck(Ack {
                topic_id: p.topic.raw(),
                msg_id: p.msg_id,
                return_code: rc,
            }));
        };
        let topic = match self.resolve(p.topic) {
            Ok(t) => t,
            Err(rc) => return refuse(self, rc),
        };
        if !self.may_publish(&topic) {
            let rc = self.acl_refused(Action::Publish);
            return refuse(self, rc);
        }
        if !self.take_token(now) {
            self.dropped(DropReason::RateLimited);
            if p.qos == QoS::AtLeastOnce || p.qos == QoS::ExactlyOnce {
                refuse(self, ReturnCode::Congestion);
            }
            return;
        }
        match p.qos {
            QoS::AtMostOnce | QoS::NoSession => {
                let id = self.next_request();
                self.commands.push_back(self.publish_command(id, &topic, p, MqttQoS::AtMostOnce));
                self.events.push_back(SessionEvent::Published {
                    qos: p.qos,
                    latency: std::time::Duration::ZERO,
                });
            }
            QoS::AtLeastOnce => {
                if self.pending_msg_ids.contains_key(&p.msg_id) {
                    // A retransmission of a PUBLISH still waiting upstream.
                    return;
                }
                if self.requests.len() >= MAX_PENDING_REQUESTS {
                    return refuse(self, ReturnCode::Congestion);
                }
                let id = self.forward_publish(&topic, p, MqttQoS::AtLeastOnce, now);
                self.pending_msg_ids.insert(p.msg_id, id);
            }
            QoS::ExactlyOnce => {
                if let Some(state) = self.qos2_in.get(&p.msg_id) {
                    // Never published twice: answer again if the broker has it.
                    if state.recorded {
                        self.send(Packet::PubRec(p.msg_id));
                    }
                    return;
                }
                if self.requests.len() >= MAX_PENDING_REQUESTS {
                    return refuse(self, ReturnCode::Congestion);
                }
                let id = self.forward_publish(&topic, p, MqttQoS::ExactlyOnce, now);
                // A new message with the MsgId of a completed one.
                self.released.forget_unknown(p.msg_id);
                // Kept (possibly long, across a broker outage): a copy,
                // not a slice that would hold the whole receive buffer.
                let message = (topic.clone(), Bytes::copy_from_slice(p.data), p.retain);
                self.qos2_in.insert(
                    p.msg_id,
                    Qos2In {
                        request: id,
                        topic_id: p.topic.raw(),
                        fingerprint: Some(released::fingerprint(p.data)),
                        message: Some(message),
                        recorded: false,
                        releasing: false,
                    },
                );
            }
        }
    }

    /// True when `p` is a copy, arrived late, of a QoS 2 PUBLISH whose
    /// exchange ended less than [`Session::qos2_window`] ago: the same
    /// MsgId and payload (see `released`).
    fn is_late_copy(&mut self, p: &Publish<'_>, now: Instant) -> bool {
        if p.qos != QoS::ExactlyOnce || self.qos2_in.contains_key(&p.msg_id) {
            return false;
        }
        let (window, f) = (self.qos2_window(), released::fingerprint(p.data));
        self.released.is_late_copy(p.msg_id, f, p.dup, now, window)
    }

    /// Sends a QoS 1 or 2 PUBLISH upstream and remembers it until the
    /// broker answers.
    fn forward_publish(
        &mut self,
        topic: &Arc<str>,
        p: &Publish<'_>,
        qos: MqttQoS,
        now: Instant,
    ) -> RequestId {
        let id = self.next_request();
        let request =
            UpRequest::Publish { msg_id: p.msg_id, topic_id: p.topic.raw(), qos: p.qos, sent: now };
        self.requests.insert(id, request);
        self.commands.push_back(self.publish_command(id, topic, p, qos));
        id
    }

    /// The token bucket of `publish_rate`: true when this PUBLISH may go.
    fn take_token(&mut self, now: Instant) -> bool {
        let Some((rate, burst)) = self.cfg.publish_rate else { return true };
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(burst));
        self.tokens_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn publish_command(
        &self,
        id: RequestId,
        topic: &Arc<str>,
        p: &Publish<'_>,
        qos: MqttQoS,
    ) -> Command {
        Command::Publish {
            id,
            topic: topic.clone(),
            payload: self.payload(p.data),
            qos,
            retain: p.retain,
        }
    }

    fn pubrel_from_sensor(&mut self, msg_id: u16) {
        match self.qos2_in.get_mut(&msg_id) {
            Some(state) if state.recorded && !state.releasing => {
                state.releasing = true;
                let id = state.request;
                self.commands.push_back(Command::Release { id });
            }
            // Already releasing: PUBCOMP follows when the broker answers.
            Some(state) if state.releasing => {}
            // PUBREL before the broker recorded the message cannot come
            // from a sensor that saw our PUBREC; ignore it.
            Some(_) => self.dropped(DropReason::Unexpected),
            // Unknown: completed already (our PUBCOMP was lost).
            None => self.send(Packet::PubComp(msg_id)),
        }
    }

    fn subscribe_from_sensor(&mut self, s: &Subscribe<'_>) {
        if self.pending_msg_ids.contains_key(&s.msg_id) {
            return;
        }
        let answer = |s2: &mut Self, topic_id, rc| {
            s2.send(Packet::SubAck(SubAck {
                qos: s.qos,
                topic_id,
                msg_id: s.msg_id,
                return_code: rc,
            }));
        };
        if s.qos == QoS::NoSession {
            return answer(self, 0, ReturnCode::NotSupported);
        }
        let (filter, topic_id): (Arc<str>, u16) = match s.topic {
            TopicFilter::Name(name) => match validate::topic_filter(name) {
                Err(e) => {
                    let rc = self.topic_refused(e);
                    return answer(self, 0, rc);
                }
                // Checked before a topic id is given out for the name.
                Ok(f) if !self.may_subscribe(f) => {
                    let rc = self.acl_refused(Action::Subscribe);
                    return answer(self, 0, rc);
                }
                Ok(f) if validate::has_wildcard(f) => (Arc::from(f), 0),
                Ok(f) => match self.regs.register(f) {
                    Ok(id) => (Arc::from(f), id),
                    Err(RegisterError::Full) => return answer(self, 0, ReturnCode::Congestion),
                },
            },
            TopicFilter::Predefined(id) => match self.regs.predefined().name(id) {
                Some(name) => (name.clone(), id),
                None => return answer(self, id, ReturnCode::InvalidTopicId),
            },
            TopicFilter::Short(chars) => match validate::topic_filter(&chars) {
                Ok(f) => (Arc::from(f), 0),
                Err(e) => {
                    let rc = self.topic_refused(e);
                    return answer(self, 0, rc);
                }
            },
            TopicFilter::Reserved(_) => return answer(self, 0, ReturnCode::InvalidTopicId),
        };
        // Names were checked above, before a topic id was given out.
        let by_name = matches!(s.topic, TopicFilter::Name(_));
        if !by_name && !self.may_subscribe(&filter) {
            let rc = self.acl_refused(Action::Subscribe);
            return answer(self, topic_id, rc);
        }
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return answer(self, 0, ReturnCode::Congestion);
        }
        let qos = mqtt_qos(s.qos);
        let id = self.next_request();
        self.pending_msg_ids.insert(s.msg_id, id);
        self.requests.insert(
            id,
            UpRequest::Subscribe { msg_id: s.msg_id, topic_id, filter: filter.clone(), qos },
        );
        self.commands.push_back(Command::Subscribe { id, filter: filter.to_string(), qos });
    }

    fn unsubscribe_from_sensor(&mut self, u: &Unsubscribe<'_>) {
        if self.pending_msg_ids.contains_key(&u.msg_id) {
            return;
        }
        let checked = |s: &mut Self, f: Result<&str, InvalidName>| match f {
            Ok(f) => Some(Arc::from(f)),
            Err(e) => {
                s.topic_refused(e);
                None
            }
        };
        let filter: Option<Arc<str>> = match u.topic {
            TopicFilter::Name(name) => checked(self, validate::topic_filter(name)),
            TopicFilter::Predefined(id) => self.regs.predefined().name(id).cloned(),
            TopicFilter::Short(chars) => checked(self, validate::topic_filter(&chars)),
            TopicFilter::Reserved(_) => None,
        };
        let Some(filter) = filter else {
            // Nothing to unsubscribe from; UNSUBACK has no return code.
            self.send(Packet::UnsubAck(u.msg_id));
            return;
        };
        // Messages on this filter that arrive from now on are not wanted.
        self.subs.retain(|(f, _)| **f != *filter);
        let id = self.next_request();
        self.pending_msg_ids.insert(u.msg_id, id);
        self.requests.insert(id, UpRequest::Unsubscribe { msg_id: u.msg_id });
        self.commands.push_back(Command::Unsubscribe { id, filter: filter.to_string() });
    }

    fn will_topic_update(&mut self, w: Option<&mqttsn_codec::WillTopic<'_>>) {
        let new = match w {
            None => None,
            Some(w) => match super::will_draft(w) {
                Ok(d) if !self.may_publish(&d.topic) => {
                    // Refused: the will in force stays.
                    let rc = self.acl_refused(Action::Will);
                    self.send(Packet::WillTopicResp(rc));
                    return;
                }
                Ok(d) => Some(Will {
                    topic: d.topic,
                    payload: self.will.as_ref().map(|w| w.payload.clone()).unwrap_or_default(),
                    qos: d.qos,
                    retain: d.retain,
                }),
                Err(e) => {
                    let rc = self.topic_refused(e);
                    self.send(Packet::WillTopicResp(rc));
                    return;
                }
            },
        };
        self.update_will(new, Packet::WillTopicResp(ReturnCode::Accepted));
    }

    fn will_msg_update(&mut self, msg: &[u8]) {
        let Some(mut will) = self.will.clone() else {
            // No will topic to go with the message.
            self.send(Packet::WillMsgResp(ReturnCode::NotSupported));
            return;
        };
        will.payload = Bytes::copy_from_slice(msg);
        self.update_will(Some(will), Packet::WillMsgResp(ReturnCode::Accepted));
    }

    /// MQTT 3.1.1 sets the will only at CONNECT: replace the upstream
    /// connection (the old one is closed with DISCONNECT, so no will fires;
    /// the broker session is kept), then answer.
    fn update_will(&mut self, will: Option<Will>, reply: Packet<'static>) {
        if will == self.will {
            self.send(reply);
            return;
        }
        self.will = will;
        self.plan.push_back(Step::Connect { clean: false, with_will: true });
        self.plan.push_back(Step::Reply(reply));
        let now = self.last_heard;
        self.run_plan(now);
    }

    // ----- upstream completions of the sensor's requests -----

    pub(super) fn publish_acked(&mut self, id: RequestId, now: Instant) {
        let Some(UpRequest::Publish { msg_id, topic_id, qos, sent }) =
            self.requests.get(&id).cloned()
        else {
            return;
        };
        if qos != QoS::AtMostOnce && qos != QoS::NoSession {
            let latency = now.saturating_duration_since(sent);
            self.events.push_back(SessionEvent::Published { qos, latency });
        }
        match qos {
            QoS::AtLeastOnce => {
                self.requests.remove(&id);
                self.pending_msg_ids.remove(&msg_id);
                self.send(Packet::PubAck(Ack {
                    topic_id,
                    msg_id,
                    return_code: ReturnCode::Accepted,
                }));
            }
            QoS::ExactlyOnce => {
                if let Some(state) = self.qos2_in.get_mut(&msg_id) {
                    state.recorded = true;
                    state.message = None;
                }
                self.send(Packet::PubRec(msg_id));
            }
            QoS::AtMostOnce | QoS::NoSession => {
                self.requests.remove(&id);
            }
        }
    }

    pub(super) fn publish_completed(&mut self, id: RequestId, now: Instant) {
        if let Some(UpRequest::Publish { msg_id, .. }) = self.requests.remove(&id) {
            if let Some(done) = self.qos2_in.remove(&msg_id) {
                self.released.insert(msg_id, done.fingerprint, now);
            }
            self.send(Packet::PubComp(msg_id));
        }
    }

    pub(super) fn sub_acked(&mut self, id: RequestId, granted: Option<MqttQoS>) {
        let Some(UpRequest::Subscribe { msg_id, topic_id, filter, qos: _ }) =
            self.requests.remove(&id)
        else {
            // A restored subscription: nothing to tell the sensor.
            return;
        };
        self.pending_msg_ids.remove(&msg_id);
        let packet = match granted {
            Some(q) => {
                self.subs.retain(|(f, _)| *f != filter);
                self.subs.push((filter, q));
                SubAck { qos: sn_qos(q), topic_id, msg_id, return_code: ReturnCode::Accepted }
            }
            None => SubAck {
                qos: QoS::AtMostOnce,
                topic_id: 0,
                msg_id,
                return_code: ReturnCode::InvalidTopicId,
            },
        };
        self.send(Packet::SubAck(packet));
    }

    pub(super) fn unsub_acked(&mut self, id: RequestId) {
        if let Some(UpRequest::Unsubscribe { msg_id }) = self.requests.remove(&id) {
            self.pending_msg_ids.remove(&msg_id);
            self.send(Packet::UnsubAck(msg_id));
        }
    }
}
