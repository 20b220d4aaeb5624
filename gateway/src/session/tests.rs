//! Session core tests with virtual time: no sockets, no clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::{
    Ack, Connect, Packet, Publish, QoS, Register, ReturnCode, SubAck, Subscribe, TopicFilter,
    TopicId, Unsubscribe, WillTopic,
};

use super::topics::Predefined;
use super::*;
use crate::mqtt::QoS as MqttQoS;
use crate::upstream::{Command, DeliveryId, Event};

const MS: Duration = Duration::from_millis(1);

struct H {
    s: Session,
    now: Instant,
}

fn config() -> SessionConfig {
    let mut pre = Predefined::new();
    pre.insert(100, "pre/defined");
    SessionConfig {
        retry_interval: 100 * MS,
        max_retries: 2,
        predefined: Arc::new(pre),
        ..SessionConfig::default()
    }
}

impl H {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(cfg: SessionConfig) -> Self {
        let now = Instant::now();
        Self { s: Session::new(Arc::new(cfg), "sensor-1", now), now }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if let Some(t) = self.s.poll_timeout() {
            if t <= self.now {
                self.s.handle_timeout(self.now);
            }
        }
    }

    fn connect_packet(clean: bool, will: bool, duration: u16) -> Connect<'static> {
        Connect { will, clean_session: clean, protocol_id: 1, duration, client_id: b"sensor-1" }
    }

    fn connect(&mut self, clean: bool, will: bool, duration: u16) {
        self.s.handle_connect(&Self::connect_packet(clean, will, duration), self.now);
    }

    fn sensor(&mut self, p: Packet<'_>) {
        self.s.handle_packet(&p, self.now);
    }

    fn up(&mut self, e: Event) {
        self.s.handle_upstream(e, self.now);
    }

    fn tx(&mut self) -> Vec<Outgoing> {
        std::iter::from_fn(|| self.s.poll_transmit()).collect()
    }

    fn cmds(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.s.poll_upstream()).collect()
    }

    /// The events but the lifecycle ones (sleep, wake, disconnect,
    /// stall), which [`H::lifecycle`] reads.
    fn events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).filter(|e| !lifecycle(e)).collect()
    }

    /// Only the lifecycle events.
    fn lifecycle(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).filter(lifecycle).collect()
    }

    fn expect_tx(&mut self, expected: &[Packet<'_>]) {
        let got = self.tx();
        let got: Vec<Packet<'_>> = got.iter().map(Outgoing::packet).collect();
        assert_eq!(got, expected);
    }

    /// A session through the will handshake (will topic `w`, QoS 0), its
    /// upstream asked for but not up yet.
    fn with_will(clean: bool, duration: u16, msg: &[u8]) -> Self {
        let mut h = Self::new();
        h.connect(clean, true, duration);
        h.tx();
        h.sensor(Packet::WillTopic(Some(WillTopic {
            qos: QoS::AtMostOnce,
            retain: false,
            topic: b"w",
        })));
        h.sensor(Packet::WillMsg(msg));
        h
    }

    /// A connected session without will, upstream up.
    fn connected(clean: bool, duration: u16) -> Self {
        Self::connected_with(config(), clean, duration)
    }

    /// The same with other settings.
    fn connected_with(cfg: SessionConfig, clean: bool, duration: u16) -> Self {
        let mut h = Self::with(cfg);
        h.connect(clean, false, duration);
        let cmds = h.cmds();
        assert!(
            matches!(&cmds[..], [Command::Connect(spec)] if !spec.clean_session && spec.will.is_none())
        );
        h.up(Event::Connected { session_present: false });
        h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
        assert!(h.s.is_active());
        h.events();
        h
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        let msg_id = 77;
        self.sensor(Packet::Subscribe(Subscribe {
            dup: false,
            qos,
            msg_id,
            topic: TopicFilter::Name(filter.as_bytes()),
        }));
        let id = match &self.cmds()[..] {
            [Command::Subscribe { id, .. }] => *id,
            other => panic!("{other:?}"),
        };
        self.up(Event::SubAcked { id, granted: Some(super::mqtt_qos(qos)) });
        self.tx();
    }

    fn message(&mut self, delivery: u64, topic: &str, qos: MqttQoS) {
        self.up(Event::Message {
            delivery: (qos != MqttQoS::AtMostOnce).then_some(DeliveryId(delivery)),
            packet_id: if qos == MqttQoS::AtMostOnce { 0 } else { delivery as u16 },
            topic: topic.into(),
            payload: Bytes::from(format!("m{delivery}")),
            qos,
            retain: false,
            dup: false,
        });
    }
}

fn publish(qos: QoS, topic: TopicId, msg_id: u16, data: &[u8]) -> Packet<'_> {
    Packet::Publish(Publish { dup: false, qos, retain: false, topic, msg_id, data })
}

#[test]
fn connect_without_will_answers_after_the_broker() {
    let mut h = H::new();
    h.connect(false, false, 60);
    assert!(h.tx().is_empty(), "no CONNACK before the broker's CONNACK");
    h.up(Event::Connected { session_present: true });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
    assert_eq!(h.events(), [SessionEvent::Connected]);
}

#[test]
fn will_handshake_becomes_the_upstream_will() {
    let mut h = H::new();
    h.connect(true, true, 30);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.sensor(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: b"will/t",
    })));
    h.expect_tx(&[Packet::WillMsgReq]);
    assert!(h.cmds().is_empty());
    h.sensor(Packet::WillMsg(b"bye"));
    let cmds = h.cmds();
    let [Command::Connect(spec)] = &cmds[..] else { panic!("{cmds:?}") };
    let will = spec.will.as_ref().unwrap();
    assert_eq!((will.topic.as_str(), &will.payload[..]), ("will/t", &b"bye"[..]));
    assert_eq!((will.qos, will.retain), (MqttQoS::AtLeastOnce, true));
    assert!(!spec.clean_session, "the upstream session is always persistent");
    h.up(Event::Connected { session_present: false });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
}

#[test]
fn clean_session_wipes_a_session_the_broker_kept() {
    let mut h = H::with_will(true, 30, b"x");
    h.tx();
    h.cmds();
    h.up(Event::Connected { session_present: true });
    // Wipe with CleanSession and no will, then connect again with the will.
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [Command::Connect(s)] if s.clean_session && s.will.is_none()));
    assert!(h.tx().is_empty());
    h.up(Event::Connected { session_present: false });
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [Command::Connect(s)] if !s.clean_session && s.will.is_some()));
    h.up(Event::Connected { session_present: false });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
}

#[test]
fn empty_willtopic_means_no_will() {
    let mut h = H::new();
    h.connect(false, true, 30);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.sensor(Packet::WillTopic(None));
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [Command::Connect(s)] if s.will.is_none()));
    h.up(Event::Connected { session_present: false });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
}

#[test]
fn publish_register_or_willmsg_in_the_handshake_get_disconnect() {
    for bad in [
        publish(QoS::AtMostOnce, TopicId::Normal(1), 0, b"x"),
        Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"a" }),
        Packet::WillMsg(b"too early"),
    ] {
        let mut h = H::new();
        h.connect(false, true, 30);
        h.expect_tx(&[Packet::WillTopicReq]);
        h.sensor(bad);
        h.expect_tx(&[Packet::Disconnect(None)]);
        assert!(h.s.is_ended(), "{bad:?}");
        assert!(h.cmds().is_empty());
        assert_eq!(h.events(), [SessionEvent::Ended]);
    }
}

#[test]
fn willtopicreq_is_retried_then_the_handshake_ends() {
    let mut h = H::new();
    h.connect(false, true, 30);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.advance(100 * MS);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.advance(100 * MS);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.advance(100 * MS);
    assert!(h.tx().is_empty());
    assert!(h.s.is_ended());
}

#[test]
fn broker_refusal_and_outage_at_connect() {
    let mut h = H::new();
    h.connect(false, false, 30);
    h.cmds();
    h.up(Event::Refused { code: 5 });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::NotSupported)]);
    assert!(h.s.is_ended());

    let mut h = H::new();
    h.connect(false, false, 30);
    h.cmds();
    h.up(Event::Unavailable { reason: "refused".into() });
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Congestion)]);
    assert_eq!(h.cmds(), [Command::Disconnect]);
    h.up(Event::Closed);
    assert!(h.s.is_ended());
}

#[test]
fn register_gives_stable_ids_and_refuses_wildcards() {
    let mut h = H::connected(false, 0);
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"a/b" }));
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 2, topic_name: b"a/b" }));
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 3, topic_name: b"a/+" }));
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 4, topic_name: b"pre/defined" }));
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 5, topic_name: &[0xff, 0xfe] }));
    h.expect_tx(&[
        Packet::RegAck(Ack { topic_id: 1, msg_id: 1, return_code: ReturnCode::Accepted }),
        Packet::RegAck(Ack { topic_id: 1, msg_id: 2, return_code: ReturnCode::Accepted }),
        Packet::RegAck(Ack { topic_id: 0, msg_id: 3, return_code: ReturnCode::NotSupported }),
        Packet::RegAck(Ack { topic_id: 100, msg_id: 4, return_code: ReturnCode::Accepted }),
        Packet::RegAck(Ack { topic_id: 0, msg_id: 5, return_code: ReturnCode::NotSupported }),
    ]);
}

#[test]
fn qos1_publish_is_acked_only_after_the_broker() {
    let mut h = H::connected(false, 0);
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"t/1" }));
    h.tx();
    h.sensor(publish(QoS::AtLeastOnce, TopicId::Normal(1), 9, b"v"));
    let cmds = h.cmds();
    let [Command::Publish { id, topic, qos: MqttQoS::AtLeastOnce, .. }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    assert_eq!(&**topic, "t/1");
    assert!(h.tx().is_empty());
    // A DUP retransmission while the broker has not answered: not sent twice.
    h.sensor(publish(QoS::AtLeastOnce, TopicId::Normal(1), 9, b"v"));
    assert!(h.cmds().is_empty());
    h.up(Event::PublishAcked { id: *id });
    h.expect_tx(&[Packet::PubAck(Ack {
        topic_id: 1,
        msg_id: 9,
        return_code: ReturnCode::Accepted,
    })]);
}

#[test]
fn unknown_topic_id_gets_puback_invalid_topic_id_at_every_qos() {
    let mut h = H::connected(false, 0);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        h.sensor(publish(qos, TopicId::Normal(42), 5, b"v"));
        h.expect_tx(&[Packet::PubAck(Ack {
            topic_id: 42,
            msg_id: 5,
            return_code: ReturnCode::InvalidTopicId,
        })]);
    }
    h.sensor(publish(QoS::AtMostOnce, TopicId::Predefined(7), 0, b"v"));
    h.expect_tx(&[Packet::PubAck(Ack {
        topic_id: 7,
        msg_id: 0,
        return_code: ReturnCode::InvalidTopicId,
    })]);
    assert!(h.cmds().is_empty());
}

/// The topics of the commands out, every one a Publish.
fn published_topics(h: &mut H) -> Vec<String> {
    h.cmds()
        .into_iter()
        .map(|c| match c {
            Command::Publish { topic, .. } => topic.to_string(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn predefined_and_short_topics_publish_without_register() {
    let mut h = H::connected(false, 0);
    h.sensor(publish(QoS::AtMostOnce, TopicId::Predefined(100), 0, b"p"));
    h.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"ab"), 0, b"s"));
    let topics = published_topics(&mut h);
    assert_eq!(topics, ["pre/defined", "ab"]);
}

#[test]
fn qos2_from_the_sensor_is_published_once() {
    let mut h = H::connected(false, 0);
    let p = publish(QoS::ExactlyOnce, TopicId::Short(*b"q2"), 3, b"once");
    h.sensor(p);
    let cmds = h.cmds();
    let [Command::Publish { id, qos: MqttQoS::ExactlyOnce, .. }] = &cmds[..] else {
        panic!("{cmds:?}")
    };
    let id = *id;
    h.sensor(p);
    assert!(h.cmds().is_empty() && h.tx().is_empty());
    h.up(Event::PublishAcked { id });
    h.expect_tx(&[Packet::PubRec(3)]);
    // DUP after PUBREC: PUBREC again, not a second publish.
    h.sensor(p);
    h.expect_tx(&[Packet::PubRec(3)]);
    assert!(h.cmds().is_empty());
    h.sensor(Packet::PubRel(3));
    assert_eq!(h.cmds(), [Command::Release { id }]);
    h.sensor(Packet::PubRel(3));
    assert!(h.cmds().is_empty());
    h.up(Event::PublishCompleted { id });
    h.expect_tx(&[Packet::PubComp(3)]);
    // A PUBREL for a finished exchange (our PUBCOMP was lost).
    h.sensor(Packet::PubRel(3));
    h.expect_tx(&[Packet::PubComp(3)]);
    // The MsgId is free again: a new message with it is a new publish.
    h.sensor(publish(QoS::ExactlyOnce, TopicId::Short(*b"q2"), 3, b"twice"));
    assert_eq!(h.cmds().len(), 1);
}

/// A sensor's QoS 2 PUBLISH on `q2` with DUP set.
fn dup_publish(msg_id: u16, data: &[u8]) -> Packet<'_> {
    Packet::Publish(Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicId::Short(*b"q2"),
        msg_id,
        data,
    })
}

/// A sensor's QoS 2 PUBLISH through PUBREC, PUBREL and PUBCOMP.
fn complete_qos2(h: &mut H, msg_id: u16, data: &[u8]) {
    h.sensor(publish(QoS::ExactlyOnce, TopicId::Short(*b"q2"), msg_id, data));
    let id = match &h.cmds()[..] {
        [Command::Publish { id, qos: MqttQoS::ExactlyOnce, .. }] => *id,
        other => panic!("{other:?}"),
    };
    h.up(Event::PublishAcked { id });
    h.expect_tx(&[Packet::PubRec(msg_id)]);
    h.sensor(Packet::PubRel(msg_id));
    assert_eq!(h.cmds(), [Command::Release { id }]);
    h.up(Event::PublishCompleted { id });
    h.expect_tx(&[Packet::PubComp(msg_id)]);
    h.events();
}

fn late_duplicates(h: &mut H) -> usize {
    h.events().iter().filter(|e| **e == SessionEvent::LateDuplicate).count()
}

#[test]
fn a_late_qos2_copy_after_pubcomp_is_answered_with_pubrec_and_not_published() {
    let mut h = H::connected(false, 0);
    complete_qos2(&mut h, 3, b"once");
    // A copy the network held back arrives after the exchange ended.
    h.advance(50 * MS);
    h.sensor(dup_publish(3, b"once"));
    h.expect_tx(&[Packet::PubRec(3)]);
    assert!(h.cmds().is_empty(), "published again");
    assert_eq!(late_duplicates(&mut h), 1);
    // The sensor, if it still cares, releases it again: PUBCOMP.
    h.sensor(Packet::PubRel(3));
    h.expect_tx(&[Packet::PubComp(3)]);
    // Every copy within the window is stopped, not only the first.
    h.sensor(dup_publish(3, b"once"));
    h.expect_tx(&[Packet::PubRec(3)]);
    assert!(h.cmds().is_empty());
    assert_eq!(late_duplicates(&mut h), 1);
}

#[test]
fn a_qos2_msg_id_used_again_after_pubcomp_is_a_new_message() {
    let mut h = H::connected(false, 0);
    complete_qos2(&mut h, 3, b"first");
    // Without DUP and with another payload: new.
    complete_qos2(&mut h, 3, b"second");
    // A copy of the first, duplicated by the network (DUP not set): the
    // same MsgId and payload, not published again.
    h.sensor(publish(QoS::ExactlyOnce, TopicId::Short(*b"q2"), 3, b"first"));
    h.expect_tx(&[Packet::PubRec(3)]);
    assert!(h.cmds().is_empty(), "published again");
    assert_eq!(late_duplicates(&mut h), 1);
    // After the window, the same payload under the same MsgId is new.
    h.advance(300 * MS);
    complete_qos2(&mut h, 3, b"first");
    // With DUP but another payload: the retransmission of a new message
    // whose first copy was lost.
    h.sensor(dup_publish(3, b"third"));
    assert_eq!(h.cmds().len(), 1, "the new message is published");
    assert_eq!(late_duplicates(&mut h), 0);
}

#[test]
fn a_completed_qos2_msg_id_is_remembered_for_tretry_times_nretry_plus_one() {
    // Tretry 100 ms, Nretry 2: 300 ms.
    let mut h = H::connected(false, 0);
    complete_qos2(&mut h, 3, b"a");
    complete_qos2(&mut h, 4, b"b");
    h.advance(299 * MS);
    h.sensor(dup_publish(3, b"a"));
    h.expect_tx(&[Packet::PubRec(3)]);
    assert!(h.cmds().is_empty());
    h.advance(MS);
    h.sensor(dup_publish(4, b"b"));
    assert_eq!(h.cmds().len(), 1, "after the window a copy is taken as new");
    assert_eq!(late_duplicates(&mut h), 1);
    // The session gives the memory back once the window has passed.
    h.advance(400 * MS);
    h.sensor(Packet::PingReq(None));
    h.s.shrink_idle();
    assert_eq!(h.s.released.len(), 0);
}

#[test]
fn completed_qos2_msg_ids_are_bounded_the_oldest_forgotten_first() {
    let mut h = H::connected(false, 0);
    let n = super::released::CAPACITY as u16;
    for msg_id in 1..=n + 1 {
        complete_qos2(&mut h, msg_id, format!("m{msg_id}").as_bytes());
    }
    assert_eq!(h.s.released.len(), super::released::CAPACITY);
    // The oldest is forgotten: its copy is published again.
    h.sensor(dup_publish(1, b"m1"));
    assert_eq!(h.cmds().len(), 1);
    // The others are still stopped.
    for msg_id in 2..=n + 1 {
        h.sensor(dup_publish(msg_id, format!("m{msg_id}").as_bytes()));
        h.expect_tx(&[Packet::PubRec(msg_id)]);
        assert!(h.cmds().is_empty(), "{msg_id} published again");
    }
    assert_eq!(late_duplicates(&mut h), usize::from(n));
}

#[test]
fn a_clean_connect_forgets_the_completed_qos2_msg_ids() {
    let mut h = H::connected(true, 0);
    complete_qos2(&mut h, 3, b"a");
    h.connect(true, false, 0);
    assert_eq!(h.s.released.len(), 0);
}

#[test]
fn subscribe_by_name_predefined_short_and_wildcard() {
    let mut h = H::connected(true, 0);
    let cases: [(TopicFilter<'_>, u16, &str); 4] = [
        (TopicFilter::Name(b"room/1/temp"), 1, "room/1/temp"),
        (TopicFilter::Name(b"room/+/hum"), 0, "room/+/hum"),
        (TopicFilter::Predefined(100), 100, "pre/defined"),
        (TopicFilter::Short(*b"zz"), 0, "zz"),
    ];
    for (i, (topic, topic_id, filter)) in cases.into_iter().enumerate() {
        let msg_id = 10 + i as u16;
        h.sensor(Packet::Subscribe(Subscribe { dup: false, qos: QoS::ExactlyOnce, msg_id, topic }));
        assert!(h.tx().is_empty(), "SUBACK only after the broker's");
        let cmds = h.cmds();
        let [Command::Subscribe { id, filter: f, qos: MqttQoS::ExactlyOnce }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(f, filter);
        h.up(Event::SubAcked { id: *id, granted: Some(MqttQoS::AtLeastOnce) });
        h.expect_tx(&[Packet::SubAck(SubAck {
            qos: QoS::AtLeastOnce,
            topic_id,
            msg_id,
            return_code: ReturnCode::Accepted,
        })]);
    }
    // Refused by the broker.
    h.sensor(Packet::Subscribe(Subscribe {
        dup: false,
        qos: QoS::AtMostOnce,
        msg_id: 20,
        topic: TopicFilter::Name(b"secret/#"),
    }));
    let cmds = h.cmds();
    let [Command::Subscribe { id, .. }] = &cmds[..] else { panic!() };
    h.up(Event::SubAcked { id: *id, granted: None });
    h.expect_tx(&[Packet::SubAck(SubAck {
        qos: QoS::AtMostOnce,
        topic_id: 0,
        msg_id: 20,
        return_code: ReturnCode::InvalidTopicId,
    })]);
    // Unknown predefined id, bad filter: refused without asking the broker.
    h.sensor(Packet::Subscribe(Subscribe {
        dup: false,
        qos: QoS::AtMostOnce,
        msg_id: 21,
        topic: TopicFilter::Predefined(9),
    }));
    h.sensor(Packet::Subscribe(Subscribe {
        dup: false,
        qos: QoS::AtMostOnce,
        msg_id: 22,
        topic: TopicFilter::Name(b"a/#/b"),
    }));
    assert!(h.cmds().is_empty());
    let got: Vec<ReturnCode> = h
        .tx()
        .iter()
        .map(|o| match o.packet() {
            Packet::SubAck(s) => s.return_code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, [ReturnCode::InvalidTopicId, ReturnCode::NotSupported]);
}

#[test]
fn unsubscribe_answers_after_the_broker() {
    let mut h = H::connected(true, 0);
    h.subscribe("a/#", QoS::AtMostOnce);
    h.sensor(Packet::Unsubscribe(Unsubscribe { msg_id: 4, topic: TopicFilter::Name(b"a/#") }));
    assert!(h.tx().is_empty());
    let cmds = h.cmds();
    let [Command::Unsubscribe { id, filter }] = &cmds[..] else { panic!("{cmds:?}") };
    assert_eq!(filter, "a/#");
    // A message that crosses the UNSUBSCRIBE is dropped, and acknowledged.
    h.message(1, "a/b", MqttQoS::AtLeastOnce);
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(1))]);
    assert!(h.tx().is_empty());
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::NotSubscribed)]);
    h.up(Event::UnsubAcked { id: *id });
    h.expect_tx(&[Packet::UnsubAck(4)]);
}

#[test]
fn wildcard_messages_are_registered_first_and_queued_in_order() {
    let mut h = H::connected(true, 0);
    h.subscribe("room/#", QoS::AtLeastOnce);
    h.message(1, "room/kitchen", MqttQoS::AtLeastOnce);
    h.message(2, "room/kitchen", MqttQoS::AtMostOnce);
    h.message(3, "room/hall", MqttQoS::AtLeastOnce);
    // REGISTER first; the messages wait behind it.
    let tx = h.tx();
    assert_eq!(tx.len(), 1);
    let Packet::Register(r) = tx[0].packet() else { panic!("{tx:?}") };
    assert_eq!(r.topic_name, b"room/kitchen");
    let topic_id = r.topic_id;
    assert_ne!(topic_id, 0);
    h.sensor(Packet::RegAck(Ack { topic_id, msg_id: r.msg_id, return_code: ReturnCode::Accepted }));
    let tx = h.tx();
    assert_eq!(tx.len(), 1, "one QoS 1 message in flight");
    let Packet::Publish(p) = tx[0].packet() else { panic!() };
    assert_eq!((p.topic, p.data, p.qos), (TopicId::Normal(topic_id), &b"m1"[..], QoS::AtLeastOnce));
    assert!(h.cmds().is_empty(), "no upstream ack before the sensor's");
    h.sensor(Packet::PubAck(Ack { topic_id, msg_id: p.msg_id, return_code: ReturnCode::Accepted }));
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(1))]);
    // Then the QoS 0 message (same FIFO), then the REGISTER for the hall.
    let tx = h.tx();
    assert_eq!(tx.len(), 2, "{tx:?}");
    assert!(matches!(tx[0].packet(), Packet::Publish(p) if p.data == b"m2" && p.msg_id == 0));
    assert!(matches!(tx[1].packet(), Packet::Register(r) if r.topic_name == b"room/hall"));
}

#[test]
fn refused_regack_stops_the_topic_but_acks_the_broker() {
    let mut h = H::connected(true, 0);
    h.subscribe("x/#", QoS::AtLeastOnce);
    h.message(1, "x/y", MqttQoS::AtLeastOnce);
    let tx = h.tx();
    let Packet::Register(r) = tx[0].packet() else { panic!() };
    h.sensor(Packet::RegAck(Ack {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::NotSupported,
    }));
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(1))]);
    h.message(2, "x/y", MqttQoS::AtLeastOnce);
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(2))]);
    assert!(h.tx().is_empty());
}

#[test]
fn puback_invalid_topic_id_registers_again_and_replays() {
    let mut h = H::connected(true, 0);
    h.subscribe("s/t", QoS::AtLeastOnce);
    h.message(1, "s/t", MqttQoS::AtLeastOnce);
    let tx = h.tx();
    let Packet::Publish(p) = tx[0].packet() else { panic!("{tx:?}") };
    let TopicId::Normal(old) = p.topic else { panic!() };
    h.sensor(Packet::PubAck(Ack {
        topic_id: old,
        msg_id: p.msg_id,
        return_code: ReturnCode::InvalidTopicId,
    }));
    assert!(h.cmds().is_empty());
    let tx = h.tx();
    let Packet::Register(r) = tx[0].packet() else { panic!("{tx:?}") };
    assert_eq!(r.topic_name, b"s/t");
    h.sensor(Packet::RegAck(Ack {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::Accepted,
    }));
    let tx = h.tx();
    assert!(matches!(tx[0].packet(), Packet::Publish(p) if p.data == b"m1"));
}

#[test]
fn qos2_toward_the_sensor() {
    let mut h = H::connected(true, 0);
    h.subscribe("ab", QoS::ExactlyOnce);
    h.message(1, "ab", MqttQoS::ExactlyOnce);
    let tx = h.tx();
    let Packet::Publish(p) = tx[0].packet() else { panic!("{tx:?}") };
    // Subscribed by name: the id from SUBACK, not the short form.
    assert_eq!(p.topic, TopicId::Normal(1));
    h.sensor(Packet::PubRec(p.msg_id));
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(1))]);
    h.expect_tx(&[Packet::PubRel(p.msg_id)]);
    // PUBREL is retransmitted until PUBCOMP.
    h.advance(100 * MS);
    h.expect_tx(&[Packet::PubRel(p.msg_id)]);
    h.sensor(Packet::PubComp(p.msg_id));
    assert!(h.s.pending_deliveries() == 0);
    assert!(h.cmds().is_empty(), "acknowledged exactly once");
}

#[test]
fn retransmission_with_dup_then_wait_for_the_sensor() {
    let mut h = H::connected(true, 0);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    let first = h.tx();
    let Packet::Publish(p) = first[0].packet() else { panic!() };
    assert!(!p.dup);
    for _ in 0..2 {
        h.advance(100 * MS);
        let tx = h.tx();
        assert!(
            matches!(tx[..], [ref o] if matches!(o.packet(), Packet::Publish(q) if q.dup && q.msg_id == p.msg_id))
        );
    }
    // Nretry reached: the transaction ends, nothing more is sent...
    h.advance(100 * MS);
    assert!(h.tx().is_empty());
    h.advance(Duration::from_secs(10));
    assert!(h.tx().is_empty());
    assert!(h.s.is_active(), "only keepalive declares a sensor lost");
    // ...until the sensor is heard from again.
    h.sensor(Packet::PingReq(None));
    let tx = h.tx();
    assert!(tx.iter().any(|o| matches!(o.packet(), Packet::Publish(q) if q.dup)));
    assert!(tx.iter().any(|o| o.packet() == Packet::PingResp));
    assert!(h.cmds().is_empty(), "not acknowledged upstream before the sensor's PUBACK");
}

#[test]
fn msg_ids_skip_zero_and_ids_in_flight() {
    let mut cfg = config();
    cfg.max_inflight = 4;
    let mut h = H::connected_with(cfg, true, 0);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.s.next_msg_id = 0xfffe;
    for i in 1..=3 {
        h.message(i, "ab", MqttQoS::AtLeastOnce);
    }
    let ids: Vec<u16> = h
        .tx()
        .iter()
        .map(|o| match o.packet() {
            Packet::Publish(p) => p.msg_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [0xffff, 1, 2]);
    // Wrap onto ids still in flight: they are skipped.
    h.s.next_msg_id = 0xfffe;
    h.message(4, "ab", MqttQoS::AtLeastOnce);
    let tx = h.tx();
    assert!(matches!(tx[0].packet(), Packet::Publish(p) if p.msg_id == 3));
}

#[test]
fn keepalive_loses_a_silent_sensor_and_fires_the_will() {
    let mut h = H::connected(false, 10);
    // 10 s keepalive, +50%: still fine at 14.9 s.
    h.advance(Duration::from_millis(14_900));
    assert!(h.s.is_active());
    h.sensor(Packet::PingReq(None));
    h.expect_tx(&[Packet::PingResp]);
    h.advance(Duration::from_millis(14_900));
    assert!(h.s.is_active());
    h.advance(Duration::from_millis(200));
    assert!(!h.s.is_active());
    assert_eq!(h.events(), [SessionEvent::Lost(LostReason::KeepaliveTimeout)]);
    assert_eq!(h.cmds(), [Command::Abort], "no DISCONNECT upstream: the will fires");
    h.up(Event::Closed);
    assert!(h.s.is_ended());
    assert!(h.s.persistent());
}

#[test]
fn lost_clean_session_is_wiped_after_the_will() {
    let mut h = H::connected(true, 1);
    h.advance(Duration::from_millis(1600));
    assert_eq!(h.cmds(), [Command::Abort]);
    h.up(Event::Closed);
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [Command::Connect(s)] if s.clean_session && s.will.is_none()));
    h.up(Event::Connected { session_present: false });
    assert_eq!(h.cmds(), [Command::Disconnect]);
    h.up(Event::Closed);
    assert!(h.s.is_ended());
}

#[test]
fn duration_zero_is_not_supervised() {
    let mut h = H::connected(false, 0);
    assert_eq!(h.s.poll_timeout(), None);
    h.advance(Duration::from_secs(100_000));
    assert!(h.s.is_active());
}

#[test]
fn disconnect_is_answered_and_publishes_no_will() {
    let mut h = H::connected(false, 10);
    h.sensor(Packet::Disconnect(None));
    h.expect_tx(&[Packet::Disconnect(None)]);
    assert_eq!(h.cmds(), [Command::Disconnect]);
    h.up(Event::Closed);
    assert!(h.s.is_ended());
    // A clean session is wiped after the DISCONNECT.
    let mut h = H::connected(true, 10);
    h.sensor(Packet::Disconnect(None));
    h.expect_tx(&[Packet::Disconnect(None)]);
    assert_eq!(h.cmds(), [Command::Disconnect]);
    h.up(Event::Closed);
    assert!(matches!(&h.cmds()[..], [Command::Connect(s)] if s.clean_session && s.will.is_none()));
}

#[test]
fn will_updates_replace_the_upstream_connection() {
    let mut h = H::with_will(false, 0, b"one");
    h.cmds();
    h.up(Event::Connected { session_present: false });
    h.tx();
    h.sensor(Packet::WillTopicUpd(Some(WillTopic {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: b"w2",
    })));
    let cmds = h.cmds();
    let [Command::Connect(spec)] = &cmds[..] else { panic!("{cmds:?}") };
    assert!(!spec.clean_session);
    let w = spec.will.as_ref().unwrap();
    assert_eq!((w.topic.as_str(), &w.payload[..], w.retain), ("w2", &b"one"[..], true));
    assert!(h.tx().is_empty(), "answered once the new connection is up");
    h.up(Event::Connected { session_present: true });
    h.expect_tx(&[Packet::WillTopicResp(ReturnCode::Accepted)]);
    h.sensor(Packet::WillMsgUpd(b"two"));
    let cmds = h.cmds();
    assert!(
        matches!(&cmds[..], [Command::Connect(s)] if s.will.as_ref().is_some_and(|w| &w.payload[..] == b"two"))
    );
    h.up(Event::Connected { session_present: true });
    h.expect_tx(&[Packet::WillMsgResp(ReturnCode::Accepted)]);
    // The empty WILLTOPICUPD deletes the will.
    h.sensor(Packet::WillTopicUpd(None));
    let cmds = h.cmds();
    assert!(matches!(&cmds[..], [Command::Connect(s)] if s.will.is_none()));
    h.up(Event::Connected { session_present: true });
    h.expect_tx(&[Packet::WillTopicResp(ReturnCode::Accepted)]);
}

#[test]
fn duplicate_connect_reuses_the_upstream() {
    let mut h = H::connected(false, 0);
    h.connect(false, false, 30);
    assert!(h.cmds().is_empty());
    h.expect_tx(&[Packet::ConnAck(ReturnCode::Accepted)]);
    assert!(h.s.is_active());
}

#[test]
fn clean_reconnect_on_a_live_session_wipes_and_acks_what_was_queued() {
    let mut h = H::connected(false, 0);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.message(2, "ab", MqttQoS::AtLeastOnce);
    h.tx();
    h.connect(true, false, 0);
    let cmds = h.cmds();
    assert_eq!(cmds[..2], [Command::Ack(DeliveryId(1)), Command::Ack(DeliveryId(2))]);
    assert!(matches!(&cmds[2..], [Command::Connect(s)] if s.clean_session));
}

#[test]
fn messages_before_connack_are_ignored_and_counted() {
    let mut h = H::new();
    h.connect(false, false, 0);
    h.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"ab"), 0, b"early"));
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::Unexpected)]);
    assert_eq!(h.cmds().len(), 1);
}

#[test]
fn too_long_messages_are_dropped_and_acked() {
    let mut cfg = config();
    cfg.max_datagram = 64;
    let mut h = H::connected_with(cfg, true, 0);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.events();
    h.up(Event::Message {
        delivery: Some(DeliveryId(1)),
        packet_id: 1,
        topic: "ab".into(),
        payload: Bytes::from(vec![0u8; 58]),
        qos: MqttQoS::AtLeastOnce,
        retain: false,
        dup: false,
    });
    assert_eq!(h.cmds(), [Command::Ack(DeliveryId(1))]);
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::TooLong)]);
    // 57 octets fit exactly (7 + 57 = 64).
    h.up(Event::Message {
        delivery: Some(DeliveryId(2)),
        packet_id: 2,
        topic: "ab".into(),
        payload: Bytes::from(vec![0u8; 57]),
        qos: MqttQoS::AtLeastOnce,
        retain: false,
        dup: false,
    });
    assert_eq!(h.tx().len(), 1);
}

#[test]
fn subscriptions_are_restored_when_the_broker_lost_the_session() {
    let mut h = H::connected(false, 0);
    h.subscribe("a/#", QoS::AtLeastOnce);
    h.subscribe("b", QoS::ExactlyOnce);
    // The broker restarted without persistence.
    h.up(Event::Unavailable { reason: "reset".into() });
    h.up(Event::Connected { session_present: false });
    let cmds = h.cmds();
    let filters: Vec<(&str, MqttQoS)> = cmds
        .iter()
        .map(|c| match c {
            Command::Subscribe { filter, qos, .. } => (filter.as_str(), *qos),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(filters, [("a/#", MqttQoS::AtLeastOnce), ("b", MqttQoS::ExactlyOnce)]);
    let Command::Subscribe { id, .. } = &cmds[0] else { panic!() };
    h.up(Event::SubAcked { id: *id, granted: Some(MqttQoS::AtLeastOnce) });
    assert!(h.tx().is_empty(), "no SUBACK for a restored subscription");
    // With the session kept, nothing is sent again.
    h.up(Event::Connected { session_present: true });
    assert!(h.cmds().is_empty());
}

#[test]
fn publish_rate_limit_answers_congestion_then_recovers() {
    let mut cfg = config();
    cfg.publish_rate = Some((2.0, 2));
    let mut h = H::connected_with(cfg, true, 0);
    h.events();
    let p = |id| publish(QoS::AtLeastOnce, TopicId::Short(*b"rl"), id, b"x");
    h.sensor(p(1));
    h.sensor(p(2));
    assert_eq!(h.cmds().len(), 2, "the burst goes through");
    h.sensor(p(3));
    h.expect_tx(&[Packet::PubAck(Ack {
        topic_id: u16::from_be_bytes(*b"rl"),
        msg_id: 3,
        return_code: ReturnCode::Congestion,
    })]);
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::RateLimited)]);
    // Half a second later one token is back.
    h.now += Duration::from_millis(500);
    h.sensor(p(4));
    assert_eq!(h.cmds().len(), 1);
}

#[test]
fn per_client_predefined_topics() {
    let mut cfg = config();
    let mut own = Predefined::new();
    own.insert(100, "pre/defined");
    own.insert(200, "only/for/sensor-1");
    cfg.predefined_by_client.insert("sensor-1".into(), Arc::new(own));
    let mut h = H::connected_with(cfg, true, 0);
    h.sensor(publish(QoS::AtMostOnce, TopicId::Predefined(200), 0, b"x"));
    assert!(
        matches!(&h.cmds()[..], [Command::Publish { topic, .. }] if &**topic == "only/for/sensor-1")
    );
}

// ----- sleeping sensors (spec 6.14) -----

fn ping_with_id() -> Packet<'static> {
    Packet::PingReq(Some(b"sensor-1"))
}

fn acks(h: &mut H) -> Vec<u64> {
    h.cmds()
        .into_iter()
        .map(|c| match c {
            Command::Ack(DeliveryId(d)) => d,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Answers every PUBLISH and REGISTER the gateway sends until PINGRESP;
/// returns the payloads in order. Checks that a message needing an answer
/// is the last one sent before that answer (one at a time).
fn flush(h: &mut H) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..50 {
        let tx = h.tx();
        assert!(!tx.is_empty(), "nothing sent before PINGRESP");
        for (i, o) in tx.iter().enumerate() {
            let last = i + 1 == tx.len();
            match o.packet() {
                Packet::PingResp => {
                    assert!(last, "PINGRESP is last: {tx:?}");
                    return got;
                }
                Packet::Register(r) => {
                    assert!(last, "one at a time: {tx:?}");
                    h.sensor(Packet::RegAck(Ack {
                        topic_id: r.topic_id,
                        msg_id: r.msg_id,
                        return_code: ReturnCode::Accepted,
                    }));
                }
                Packet::Publish(p) => {
                    got.push(p.data.to_vec());
                    match p.qos {
                        QoS::AtLeastOnce => {
                            assert!(last, "one at a time: {tx:?}");
                            h.sensor(Packet::PubAck(Ack {
                                topic_id: p.topic.raw(),
                                msg_id: p.msg_id,
                                return_code: ReturnCode::Accepted,
                            }));
                        }
                        QoS::ExactlyOnce => {
                            assert!(last, "one at a time: {tx:?}");
                            h.sensor(Packet::PubRec(p.msg_id));
                            let rel = h.tx();
                            assert!(
                                matches!(rel[0].packet(), Packet::PubRel(id) if id == p.msg_id)
                            );
                            h.sensor(Packet::PubComp(p.msg_id));
                        }
                        _ => {}
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    panic!("no PINGRESP")
}

#[test]
fn sleeping_sensor_gets_its_buffer_then_pingresp_last() {
    let mut h = H::connected(false, 10);
    h.subscribe("room/#", QoS::ExactlyOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.expect_tx(&[Packet::Disconnect(None)]);
    assert!(h.s.is_sleeping());
    h.message(1, "room/a", MqttQoS::AtLeastOnce);
    h.message(2, "room/a", MqttQoS::AtMostOnce);
    h.message(3, "room/b", MqttQoS::ExactlyOnce);
    assert!(h.tx().is_empty(), "nothing is sent to a sleeping sensor");
    // Buffered means acknowledged to the broker, in order.
    assert_eq!(acks(&mut h), [1, 3]);
    // The keepalive no longer applies: 100 s of sleep are fine (60 s +10%
    // tolerance would not be, so wake before).
    h.advance(Duration::from_secs(50));
    assert!(h.s.is_sleeping());
    h.sensor(ping_with_id());
    let got = flush(&mut h);
    assert_eq!(got, [b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    assert!(h.cmds().is_empty(), "each message acknowledged upstream exactly once");
    // Asleep again: a second wake delivers nothing again.
    h.sensor(ping_with_id());
    h.expect_tx(&[Packet::PingResp]);
}

#[test]
fn a_restored_active_session_sends_what_it_holds_without_waiting_for_the_sensor() {
    // A sleeper's buffer, acknowledged upstream, then the sensor wakes
    // with CONNECT and the gateway stops before the buffer went out (seed
    // 2300 of the simulation: the REGISTER for its topic was lost).
    let mut h = H::connected(false, 10);
    h.subscribe("room/#", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "room/a", MqttQoS::AtLeastOnce);
    assert_eq!(acks(&mut h), [1]);
    h.connect(false, false, 10);
    h.tx();
    let p = h.s.take_persist(1, b"").expect("the state changed");
    let record = p.record.expect("a record");
    let messages: Vec<(u64, Vec<u8>)> = p.put;
    let cfg = h.s.cfg.clone();
    let (mut s, _) = Session::restore(cfg, "sensor-1", &record, messages, h.now).unwrap();
    let out: Vec<Outgoing> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert!(
        out.iter().any(|o| matches!(o, Outgoing::Publish { .. } | Outgoing::Register { .. })),
        "the held message goes out (or its topic's REGISTER first): {out:?}"
    );
}

#[test]
fn held_messages_forget_the_packet_ids_of_a_broker_session_that_is_gone() {
    // A QoS 2 message buffered for a sleeper (packet id 4); the broker
    // restarts without its sessions; then the gateway restarts. The
    // restored session must not tell its new upstream that it holds 4: a
    // new message under 4 would be taken for a copy and lost (seed 5640
    // of the simulation).
    let mut h = H::connected(false, 10);
    h.subscribe("room/#", QoS::ExactlyOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(4, "room/a", MqttQoS::ExactlyOnce);
    assert_eq!(acks(&mut h), [4]);
    h.up(Event::Unavailable { reason: "broker restart".into() });
    h.up(Event::Connected { session_present: false });
    h.cmds();
    let mut record = None;
    let mut messages = std::collections::BTreeMap::new();
    while let Some(p) = h.s.take_persist(1, b"") {
        record = p.record.or(record);
        for seq in p.delete {
            messages.remove(&seq);
        }
        messages.extend(p.put);
    }
    let record = record.expect("a record");
    let cfg = h.s.cfg.clone();
    let (mut s, _) = Session::restore(cfg, "sensor-1", &record, messages, h.now).unwrap();
    let cmds: Vec<Command> = std::iter::from_fn(|| s.poll_upstream()).collect();
    assert!(
        !cmds.iter().any(
            |c| matches!(c, Command::Restore { qos2_received, .. } if !qos2_received.is_empty())
        ),
        "{cmds:?}"
    );
    // The message itself is still held for the sensor.
    assert_eq!(s.buffered().0, 1);
}

#[test]
fn sleep_timer_running_out_makes_the_sensor_lost() {
    let mut h = H::connected(false, 10);
    h.sensor(Packet::Disconnect(Some(20)));
    h.tx();
    // A new Duration replaces the old one.
    h.sensor(Packet::Disconnect(Some(100)));
    h.expect_tx(&[Packet::Disconnect(None)]);
    h.advance(Duration::from_secs(105));
    assert!(h.s.is_sleeping());
    h.advance(Duration::from_secs(10));
    assert!(!h.s.is_active());
    assert_eq!(h.events(), [SessionEvent::Lost(LostReason::SleepTimeout)]);
    assert_eq!(h.cmds(), [Command::Abort], "the will fires");
}

#[test]
fn a_message_that_reaches_a_lost_session_is_not_kept_beside_the_brokers_copy() {
    // The sleeper is lost, its upstream aborted; a message the broker had
    // already sent arrives before the upstream is closed. The broker sends
    // it again on the next connection: the sensor gets it once (seed
    // 12872 of the simulation).
    let mut h = H::connected(false, 10);
    h.subscribe("room/#", QoS::ExactlyOnce);
    h.sensor(Packet::Disconnect(Some(20)));
    h.tx();
    h.advance(Duration::from_secs(30));
    assert_eq!(h.cmds(), [Command::Abort]);
    h.message(9, "room/a", MqttQoS::ExactlyOnce);
    assert!(h.cmds().is_empty(), "not acknowledged: the broker keeps it");
    h.up(Event::Closed);
    h.events();
    h.connect(false, false, 10);
    let cmds = h.cmds();
    assert!(cmds.iter().any(|c| matches!(c, Command::Connect(_))), "{cmds:?}");
    h.up(Event::Connected { session_present: true });
    h.up(Event::Message {
        delivery: Some(DeliveryId(1)),
        packet_id: 9,
        topic: "room/a".into(),
        payload: Bytes::from_static(b"m9"),
        qos: MqttQoS::ExactlyOnce,
        retain: false,
        dup: true,
    });
    let mut publishes = 0;
    for _ in 0..5 {
        for o in h.tx() {
            match o.packet() {
                Packet::Publish(p) => {
                    publishes += usize::from(p.data == b"m9");
                    h.sensor(Packet::PubRec(p.msg_id));
                }
                Packet::PubRel(id) => h.sensor(Packet::PubComp(id)),
                Packet::Register(r) => {
                    let ack = Ack {
                        topic_id: r.topic_id,
                        msg_id: r.msg_id,
                        return_code: ReturnCode::Accepted,
                    };
                    h.sensor(Packet::RegAck(ack));
                }
                _ => {}
            }
        }
    }
    assert_eq!(publishes, 1);
}

#[test]
fn wake_needs_the_sensors_own_client_id_when_one_is_named() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.sensor(Packet::PingReq(Some(b"someone-else")));
    assert!(h.tx().is_empty());
    assert!(h.s.is_sleeping());
    h.sensor(ping_with_id());
    assert_eq!(flush(&mut h), [b"m1".to_vec()]);
}

#[test]
fn a_pingreq_without_client_id_wakes_the_sleeper_too() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.message(2, "ab", MqttQoS::AtLeastOnce);
    h.sensor(Packet::PingReq(None));
    // Buffered messages first, PINGRESP last, then asleep again.
    assert_eq!(flush(&mut h), [b"m1".to_vec(), b"m2".to_vec()]);
    assert!(h.s.is_sleeping());
}

#[test]
fn connect_from_asleep_keeps_or_discards_the_buffer() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.cmds();
    assert_eq!(h.s.pending_deliveries(), 1);

    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.cmds();
    // CleanSession true: subscriptions, will and buffer are discarded.
    h.connect(true, false, 10);
    assert!(h.s.pending_deliveries() == 0);
}

#[test]
fn connect_false_from_asleep_delivers_the_buffer() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.cmds();
    h.connect(false, false, 10);
    let tx = h.tx();
    assert_eq!(tx[0].packet(), Packet::ConnAck(ReturnCode::Accepted));
    assert!(matches!(tx[1].packet(), Packet::Publish(p) if p.data == b"m1"), "{tx:?}");
    assert!(h.s.is_active() && !h.s.is_sleeping());
}

#[test]
fn an_asleep_sensor_sends_only_pingreq_connect_or_disconnect() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    let tid = TopicId::Short(*b"ab");
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.events();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.cmds();
    // 50 s in: from the sleeper's address, everything but PINGREQ and
    // DISCONNECT is dropped, counted, and changes nothing.
    h.advance(Duration::from_secs(50));
    let data = b"forged";
    let others = [
        publish(QoS::AtLeastOnce, tid, 7, data),
        publish(QoS::AtMostOnce, tid, 0, data),
        Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 8,
            topic: TopicFilter::Name(b"secret/#"),
        }),
        Packet::Register(Register { topic_id: 0, msg_id: 9, topic_name: b"x/y" }),
        Packet::PubAck(Ack { topic_id: 0, msg_id: 1, return_code: ReturnCode::Accepted }),
        Packet::WillTopicUpd(None),
    ];
    for p in others {
        h.sensor(p);
        assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::Asleep)], "{p:?}");
        assert!(h.tx().is_empty() && h.cmds().is_empty(), "{p:?}");
        assert!(h.s.is_sleeping());
    }
    // Not a sign of life: the sleep timer still runs from the DISCONNECT
    // (60 s + 10 % would end at 66 s; 20 s more is past it).
    let mut h2 = H::connected(false, 10);
    h2.sensor(Packet::Disconnect(Some(60)));
    h2.tx();
    h2.advance(Duration::from_secs(50));
    h2.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"ab"), 0, data));
    h2.advance(Duration::from_secs(20));
    assert!(!h2.s.is_active(), "the forged datagram did not keep the sleeper alive");
    // The real sensor wakes and gets its message.
    h.sensor(ping_with_id());
    assert_eq!(flush(&mut h), [b"m1".to_vec()]);
}

#[test]
fn disconnect_without_duration_from_asleep_ends_the_session() {
    let mut h = H::connected(false, 10);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.sensor(Packet::Disconnect(None));
    h.expect_tx(&[Packet::Disconnect(None)]);
    assert_eq!(h.cmds(), [Command::Disconnect]);
    assert!(!h.s.is_active());
}

#[test]
fn a_silent_awake_sensor_sleeps_again_and_keeps_its_messages() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    h.sensor(ping_with_id());
    let first = h.tx();
    let Packet::Publish(p) = first[0].packet() else { panic!() };
    let msg_id = p.msg_id;
    // No PUBACK: retransmitted Nretry (2) times, then asleep again.
    for _ in 0..3 {
        h.advance(100 * MS);
    }
    assert!(h.s.is_sleeping());
    h.tx();
    // The next wake sends it again, with the same MsgId and DUP.
    h.sensor(ping_with_id());
    let tx = h.tx();
    assert!(matches!(tx[0].packet(), Packet::Publish(p) if p.dup && p.msg_id == msg_id));
}

#[test]
fn in_flight_at_sleep_is_acknowledged_upstream_and_resent_on_wake() {
    let mut h = H::connected(false, 10);
    h.subscribe("ab", QoS::ExactlyOnce);
    h.message(1, "ab", MqttQoS::ExactlyOnce);
    let tx = h.tx();
    let Packet::Publish(p) = tx[0].packet() else { panic!() };
    let msg_id = p.msg_id;
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    assert_eq!(acks(&mut h), [1]);
    h.sensor(ping_with_id());
    let tx = h.tx();
    assert!(matches!(tx[0].packet(), Packet::Publish(p) if p.msg_id == msg_id && p.dup));
    h.sensor(Packet::PubRec(msg_id));
    assert!(h.cmds().is_empty(), "acknowledged upstream once, at sleep");
    h.expect_tx(&[Packet::PubRel(msg_id)]);
    h.sensor(Packet::PubComp(msg_id));
    h.expect_tx(&[Packet::PingResp]);
}

#[test]
fn sleep_buffer_bounds_drop_qos0_first_then_refuse() {
    let mut cfg = config();
    cfg.sleep_buffer_messages = 2;
    let mut h = H::connected_with(cfg, false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.events();
    h.message(1, "ab", MqttQoS::AtMostOnce);
    h.message(2, "ab", MqttQoS::AtLeastOnce);
    h.message(3, "ab", MqttQoS::AtLeastOnce);
    h.message(4, "ab", MqttQoS::AtLeastOnce);
    assert_eq!(acks(&mut h), [2, 3, 4]);
    assert_eq!(
        h.events(),
        [
            SessionEvent::Dropped(DropReason::QueueFull),
            SessionEvent::Dropped(DropReason::QueueFull)
        ]
    );
    h.sensor(ping_with_id());
    assert_eq!(flush(&mut h), [b"m2".to_vec(), b"m3".to_vec()]);
}

#[test]
fn the_total_bound_across_sensors_applies_with_the_same_policy() {
    let mut cfg = config();
    let total = Arc::new(super::BufferTotal::new(2, 1 << 20));
    cfg.buffer_total = total.clone();
    let mut h = H::connected_with(cfg, false, 10);
    h.subscribe("ab", QoS::AtLeastOnce);
    h.sensor(Packet::Disconnect(Some(60)));
    h.tx();
    h.events();
    // Other sensors already hold the whole total.
    total.update((0, 0), (2, 10));
    h.message(1, "ab", MqttQoS::AtLeastOnce);
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::QueueFull)]);
    // Room again: buffered; a QoS 0 message of its own makes room next.
    total.update((2, 10), (1, 5));
    h.message(2, "ab", MqttQoS::AtMostOnce);
    total.update((1, 5), (2, 9));
    h.message(3, "ab", MqttQoS::AtLeastOnce);
    assert_eq!(h.events(), [SessionEvent::Dropped(DropReason::QueueFull)]);
    h.sensor(ping_with_id());
    assert_eq!(flush(&mut h), [b"m3".to_vec()]);
}

/// Events an operator reads in the log, not counted.
fn lifecycle(e: &SessionEvent) -> bool {
    matches!(
        e,
        SessionEvent::Asleep { .. }
            | SessionEvent::Awake
            | SessionEvent::Disconnected
            | SessionEvent::Stalled
    )
}

#[test]
fn sleep_wake_and_disconnect_are_reported() {
    let mut h = H::connected(false, 10);
    h.lifecycle();
    h.sensor(Packet::Disconnect(Some(30)));
    assert_eq!(h.lifecycle(), [SessionEvent::Asleep { duration: Duration::from_secs(30) }]);
    h.sensor(Packet::PingReq(Some(b"sensor-1")));
    // Nothing buffered: awake, PINGRESP, and asleep again.
    assert_eq!(
        h.lifecycle(),
        [SessionEvent::Awake, SessionEvent::Asleep { duration: Duration::from_secs(30) }]
    );
    h.sensor(Packet::Disconnect(None));
    assert_eq!(h.lifecycle(), [SessionEvent::Disconnected]);
}

/// Topics with characters the broker drops the connection for.
const FORBIDDEN: [&str; 5] = ["a\u{1}b", "a\u{7f}", "\u{85}x", "a/\u{ffff}", "a\u{0}b"];

/// The return codes of the packets sent, and the forbidden-character drops.
fn codes_and_drops(h: &mut H) -> (Vec<ReturnCode>, usize) {
    let codes = h
        .tx()
        .iter()
        .map(|o| match o.packet() {
            Packet::RegAck(a) | Packet::PubAck(a) => a.return_code,
            Packet::SubAck(s) => s.return_code,
            Packet::WillTopicResp(rc) | Packet::ConnAck(rc) => rc,
            other => panic!("{other:?}"),
        })
        .collect();
    let drops = h
        .events()
        .iter()
        .filter(|e| **e == SessionEvent::Dropped(DropReason::ForbiddenChar))
        .count();
    (codes, drops)
}

#[test]
fn register_refuses_forbidden_characters_with_invalid_topic_id() {
    let mut h = H::connected(false, 0);
    for (i, bad) in FORBIDDEN.iter().enumerate() {
        let msg_id = i as u16 + 1;
        h.sensor(Packet::Register(Register { topic_id: 0, msg_id, topic_name: bad.as_bytes() }));
    }
    let (codes, drops) = codes_and_drops(&mut h);
    // U+0000 keeps its own code (not supported), as before.
    assert_eq!(
        codes,
        [[ReturnCode::InvalidTopicId; 4].as_slice(), &[ReturnCode::NotSupported]].concat()
    );
    assert_eq!(drops, 4);
    // Good names, also beyond ASCII, still register.
    h.sensor(Packet::Register(Register {
        topic_id: 0,
        msg_id: 9,
        topic_name: "Zürich/温度".as_bytes(),
    }));
    h.expect_tx(&[Packet::RegAck(Ack {
        topic_id: 1,
        msg_id: 9,
        return_code: ReturnCode::Accepted,
    })]);
    assert!(h.cmds().is_empty());
}

#[test]
fn subscribe_and_unsubscribe_refuse_forbidden_characters() {
    let mut h = H::connected(true, 0);
    for (i, bad) in FORBIDDEN[..4].iter().enumerate() {
        h.sensor(Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: i as u16 + 1,
            topic: TopicFilter::Name(bad.as_bytes()),
        }));
    }
    h.sensor(Packet::Subscribe(Subscribe {
        dup: false,
        qos: QoS::AtLeastOnce,
        msg_id: 5,
        topic: TopicFilter::Short(*b"a\x7f"),
    }));
    assert!(h.cmds().is_empty(), "nothing goes to the broker");
    assert_eq!(codes_and_drops(&mut h), (vec![ReturnCode::InvalidTopicId; 5], 5));
    // UNSUBSCRIBE: answered, not forwarded, counted.
    h.sensor(Packet::Unsubscribe(Unsubscribe { msg_id: 6, topic: TopicFilter::Name(b"a\x01/#") }));
    h.sensor(Packet::Unsubscribe(Unsubscribe { msg_id: 7, topic: TopicFilter::Short(*b"\x01b") }));
    assert!(h.cmds().is_empty());
    h.expect_tx(&[Packet::UnsubAck(6), Packet::UnsubAck(7)]);
    let drop = SessionEvent::Dropped(DropReason::ForbiddenChar);
    assert_eq!(h.events(), [drop.clone(), drop]);
    // A good filter beyond ASCII still goes to the broker.
    h.subscribe("Zürich/+/温度", QoS::AtMostOnce);
    assert!(h.events().is_empty());
}

#[test]
fn short_topic_publish_with_a_forbidden_character_is_refused() {
    let mut h = H::connected(false, 0);
    for (i, short) in [*b"a\x01", *b"\x7fb", *b"\x00a"].into_iter().enumerate() {
        h.sensor(publish(QoS::AtLeastOnce, TopicId::Short(short), i as u16 + 1, b"x"));
    }
    h.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"\x1fz"), 4, b"x"));
    assert!(h.cmds().is_empty(), "nothing goes to the broker");
    let (codes, drops) = codes_and_drops(&mut h);
    assert_eq!(
        codes,
        [
            ReturnCode::InvalidTopicId,
            ReturnCode::InvalidTopicId,
            ReturnCode::NotSupported,
            ReturnCode::InvalidTopicId
        ]
    );
    assert_eq!(drops, 3);
    h.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"ok"), 5, b"x"));
    assert!(matches!(&h.cmds()[..], [Command::Publish { topic, .. }] if &**topic == "ok"));
}

#[test]
fn will_topics_with_forbidden_characters_are_refused() {
    // At CONNECT: CONNACK refusing the topic, nothing asked of the broker.
    let mut h = H::new();
    h.connect(false, true, 0);
    h.tx();
    h.sensor(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "w\u{85}".as_bytes(),
    })));
    assert!(h.cmds().is_empty());
    assert_eq!(codes_and_drops(&mut h), (vec![ReturnCode::InvalidTopicId], 1));
    // WILLTOPICUPD: refused, the will and the upstream connection kept.
    let mut h = H::with_will(false, 0, b"one");
    h.cmds();
    h.up(Event::Connected { session_present: false });
    h.tx();
    h.events();
    h.sensor(Packet::WillTopicUpd(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "w/\u{ffff}".as_bytes(),
    })));
    assert!(h.cmds().is_empty(), "no new connection");
    assert_eq!(codes_and_drops(&mut h), (vec![ReturnCode::InvalidTopicId], 1));
    assert_eq!(h.s.will.as_ref().map(|w| w.topic.as_str()), Some("w"));
}

// ----- the topic ACL -----

/// Sensors may publish under `sensors/<ClientId>/` and to the short topic
/// `ok`, and subscribe under `cmd/<ClientId>/`; `alice`'s sensors may
/// also publish under `u/alice/`.
fn acl() -> Arc<crate::acl::Acl> {
    use crate::acl::{Acl, Grants, Pattern, Rule, Selector};
    let p = |t: &str| Pattern::parse(t).unwrap();
    Arc::new(Acl::new(
        Grants { publish: vec![p("sensors/%c/#"), p("ok")], subscribe: vec![p("cmd/%c/#")] },
        vec![Rule {
            who: Selector::Username("alice".into()),
            grants: Grants { publish: vec![p("u/%u/#")], subscribe: vec![] },
        }],
    ))
}

fn acl_config() -> SessionConfig {
    SessionConfig { acl: Some(acl()), ..config() }
}

fn refusals(h: &mut H) -> Vec<crate::acl::Action> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            SessionEvent::AclRefused(a) => Some(a),
            _ => None,
        })
        .collect()
}

#[test]
fn acl_refuses_register_of_a_topic_the_sensor_may_not_publish_to() {
    use crate::acl::Action;
    let mut h = H::connected_with(acl_config(), true, 0);
    h.sensor(Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"other/t" }));
    h.expect_tx(&[Packet::RegAck(Ack {
        topic_id: 0,
        msg_id: 1,
        return_code: ReturnCode::InvalidTopicId,
    })]);
    assert!(h.s.regs.is_empty(), "nothing registered");
    h.sensor(Packet::Register(Register {
        topic_id: 0,
        msg_id: 2,
        topic_name: b"sensors/sensor-1/t",
    }));
    h.expect_tx(&[Packet::RegAck(Ack {
        topic_id: 1,
        msg_id: 2,
        return_code: ReturnCode::Accepted,
    })]);
    assert_eq!(refusals(&mut h), [Action::Register]);
}

#[test]
fn acl_refused_publish_gets_puback_invalid_topic_id_at_every_qos() {
    use crate::acl::Action;
    let mut h = H::connected_with(acl_config(), true, 0);
    // "pre/defined" (100) and the short "ab" are not allowed.
    for qos in [QoS::NoSession, QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for topic in [TopicId::Predefined(100), TopicId::Short(*b"ab")] {
            h.sensor(publish(qos, topic, 5, b"v"));
            h.expect_tx(&[Packet::PubAck(Ack {
                topic_id: topic.raw(),
                msg_id: 5,
                return_code: ReturnCode::InvalidTopicId,
            })]);
        }
    }
    assert!(h.cmds().is_empty(), "nothing reaches the broker");
    assert_eq!(refusals(&mut h), [Action::Publish; 8]);
    assert!(h.s.qos2_in.is_empty() && h.s.requests.is_empty());
    // Allowed ones go on: a registered id at QoS 1, the short `ok` at QoS 0.
    h.sensor(Packet::Register(Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: b"sensors/sensor-1/t",
    }));
    h.tx();
    h.sensor(publish(QoS::AtLeastOnce, TopicId::Normal(1), 6, b"v"));
    h.sensor(publish(QoS::AtMostOnce, TopicId::Short(*b"ok"), 0, b"v"));
    let topics = published_topics(&mut h);
    assert_eq!(topics, ["sensors/sensor-1/t", "ok"]);
    assert!(refusals(&mut h).is_empty());
}

#[test]
fn acl_refused_subscribe_gets_suback_invalid_topic_id() {
    use crate::acl::Action;
    let mut h = H::connected_with(acl_config(), true, 0);
    let cases: [(TopicFilter<'_>, u16); 5] = [
        (TopicFilter::Name(b"cmd/+/#"), 0),
        (TopicFilter::Name(b"#"), 0),
        (TopicFilter::Name(b"cmd/sensor-2/x"), 0),
        (TopicFilter::Predefined(100), 100),
        (TopicFilter::Short(*b"zz"), 0),
    ];
    for (i, (topic, topic_id)) in cases.into_iter().enumerate() {
        let msg_id = 10 + i as u16;
        h.sensor(Packet::Subscribe(Subscribe { dup: false, qos: QoS::AtLeastOnce, msg_id, topic }));
        h.expect_tx(&[Packet::SubAck(SubAck {
            qos: QoS::AtLeastOnce,
            topic_id,
            msg_id,
            return_code: ReturnCode::InvalidTopicId,
        })]);
    }
    assert!(h.cmds().is_empty(), "nothing reaches the broker");
    assert!(h.s.regs.is_empty(), "no topic id given out for a refused name");
    assert_eq!(refusals(&mut h), [Action::Subscribe; 5]);
    // Covered filters go on.
    h.subscribe("cmd/sensor-1/#", QoS::AtLeastOnce);
    h.sensor(Packet::Subscribe(Subscribe {
        dup: false,
        qos: QoS::AtMostOnce,
        msg_id: 30,
        topic: TopicFilter::Name(b"cmd/sensor-1/led"),
    }));
    assert!(
        matches!(&h.cmds()[..], [Command::Subscribe { filter, .. }] if filter == "cmd/sensor-1/led")
    );
}

#[test]
fn acl_refused_will_topic_refuses_the_connect() {
    use crate::acl::Action;
    let mut h = H::with(acl_config());
    h.connect(true, true, 0);
    h.expect_tx(&[Packet::WillTopicReq]);
    h.sensor(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b"w",
    })));
    h.expect_tx(&[Packet::ConnAck(ReturnCode::InvalidTopicId)]);
    assert!(h.cmds().is_empty(), "no upstream connection");
    assert!(h.s.is_ended());
    assert_eq!(refusals(&mut h), [Action::Will]);
}

#[test]
fn acl_refused_will_topic_update_keeps_the_will() {
    use crate::acl::Action;
    let mut h = H::with(acl_config());
    h.connect(true, true, 0);
    h.tx();
    let will = b"sensors/sensor-1/will";
    h.sensor(Packet::WillTopic(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: will,
    })));
    h.sensor(Packet::WillMsg(b"gone"));
    assert!(matches!(&h.cmds()[..], [Command::Connect(s)] if s.will.is_some()));
    h.up(Event::Connected { session_present: false });
    h.expect_tx(&[Packet::WillMsgReq, Packet::ConnAck(ReturnCode::Accepted)]);
    h.sensor(Packet::WillTopicUpd(Some(WillTopic {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b"elsewhere",
    })));
    h.expect_tx(&[Packet::WillTopicResp(ReturnCode::InvalidTopicId)]);
    assert!(h.cmds().is_empty(), "the connection is not replaced");
    assert_eq!(h.s.will.as_ref().map(|w| w.topic.as_str()), Some("sensors/sensor-1/will"));
    assert_eq!(refusals(&mut h), [Action::Will]);
}

#[test]
fn acl_follows_the_username_and_a_new_acl() {
    let mut h = H::with(acl_config());
    assert!(!h.s.may_publish("u/alice/x"));
    h.s.set_identity(crate::auth::Identity {
        username: Some("alice".into()),
        ..crate::auth::Identity::default()
    });
    assert!(h.s.may_publish("u/alice/x"), "the rule for alice, %u = alice");
    assert!(!h.s.may_publish("u/bob/x"));
    // A reload without [acl]: everything allowed; with one: checked again.
    h.s.set_acl(None);
    assert!(h.s.may_publish("anything") && h.s.may_subscribe("#"));
    h.s.set_acl(Some(&acl()));
    assert!(!h.s.may_publish("anything"));
    assert!(h.s.may_publish("u/alice/x"), "the username is kept");
}
