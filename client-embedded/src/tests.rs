//! State machine tests with virtual time, loss and duplication.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(not(feature = "std"))]
extern crate std;
use std::vec::Vec;

use mqttsn_codec::{Ack, Packet, Publish, QoS, Register, ReturnCode, SubAck, TopicFilter, TopicId};

use crate::{Client, Event, Settings, Topic};

/// The client the tests drive.
pub(crate) type C = Client<4, 2, 128>;

pub(crate) fn settings() -> Settings {
    Settings { retry_ms: 100, max_retries: 2, congestion_wait_ms: 1_000 }
}

pub(crate) fn sent(c: &mut C) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Some(n) = c.poll_transmit(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

pub(crate) fn packet(d: &[u8]) -> Packet<'_> {
    Packet::decode(d).unwrap()
}

pub(crate) fn enc(p: Packet<'_>) -> Vec<u8> {
    let mut b = [0u8; 256];
    let n = p.encode(&mut b).unwrap();
    b[..n].to_vec()
}

fn connected() -> C {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, None).unwrap();
    sent(&mut c);
    let connack = enc(Packet::ConnAck(ReturnCode::Accepted));
    assert_eq!(c.handle_datagram(1, &connack).unwrap(), Some(Event::Connected));
    c
}

#[test]
fn connect_is_retried_with_the_same_octets_then_the_gateway_is_lost() {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, None).unwrap();
    let first = sent(&mut c);
    assert!(
        matches!(packet(&first[0]), Packet::Connect(k) if k.client_id == b"node-1" && k.duration == 30)
    );
    assert_eq!(c.poll_timeout(), Some(100));
    assert_eq!(c.handle_timeout(100), None);
    assert_eq!(sent(&mut c), first);
    assert_eq!(c.handle_timeout(200), None);
    assert_eq!(sent(&mut c), first);
    assert_eq!(c.handle_timeout(300), Some(Event::GatewayLost));
    assert!(!c.is_connected());
}

#[test]
fn will_handshake_answers_the_gateway() {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, Some(("w/t", b"gone", QoS::AtLeastOnce, true))).unwrap();
    let d = sent(&mut c);
    assert!(matches!(packet(&d[0]), Packet::Connect(k) if k.will));
    c.handle_datagram(1, &enc(Packet::WillTopicReq)).unwrap();
    let d = sent(&mut c);
    assert!(matches!(packet(&d[0]), Packet::WillTopic(Some(w)) if w.topic == b"w/t" && w.retain));
    c.handle_datagram(2, &enc(Packet::WillMsgReq)).unwrap();
    let d = sent(&mut c);
    assert_eq!(packet(&d[0]), Packet::WillMsg(b"gone"));
}

#[test]
fn qos1_publish_is_retransmitted_with_dup_until_puback() {
    let mut c = connected();
    let id =
        c.publish(10, Topic::Predefined(5), b"21.5", QoS::AtLeastOnce, false).unwrap().unwrap();
    let d = sent(&mut c);
    assert!(matches!(packet(&d[0]), Packet::Publish(p) if !p.dup && p.msg_id == id));
    c.handle_timeout(110);
    let d = sent(&mut c);
    assert!(matches!(packet(&d[0]), Packet::Publish(p) if p.dup && p.msg_id == id));
    let ack =
        enc(Packet::PubAck(Ack { topic_id: 5, msg_id: id, return_code: ReturnCode::Accepted }));
    assert_eq!(
        c.handle_datagram(120, &ack).unwrap(),
        Some(Event::Published { msg_id: id, result: Ok(()) })
    );
    // A duplicated PUBACK is ignored.
    assert_eq!(c.handle_datagram(121, &ack).unwrap(), None);
    assert_eq!(c.poll_timeout(), Some(110 + 30_000), "only the keepalive is left");
}

#[test]
fn qos2_publish_goes_through_pubrec_pubrel_pubcomp() {
    let mut c = connected();
    let id = c.publish(10, Topic::Short(*b"ab"), b"x", QoS::ExactlyOnce, false).unwrap().unwrap();
    sent(&mut c);
    assert_eq!(c.handle_datagram(11, &enc(Packet::PubRec(id))).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRel(id))]);
    // PUBCOMP lost: PUBREL again after Tretry.
    c.handle_timeout(111);
    assert_eq!(sent(&mut c), [enc(Packet::PubRel(id))]);
    assert_eq!(
        c.handle_datagram(112, &enc(Packet::PubComp(id))).unwrap(),
        Some(Event::Published { msg_id: id, result: Ok(()) })
    );
}

#[test]
fn qos_minus_one_needs_no_connection_and_no_normal_id() {
    let mut c = C::new(b"node-1", settings()).unwrap();
    assert_eq!(c.publish(0, Topic::Predefined(1), b"x", QoS::NoSession, false), Ok(None));
    assert!(matches!(packet(&sent(&mut c)[0]), Packet::Publish(p) if p.qos == QoS::NoSession));
    assert_eq!(
        c.publish(0, Topic::Id(1), b"x", QoS::NoSession, false),
        Err(crate::Error::BadTopicForQoS)
    );
    assert_eq!(
        c.publish(0, Topic::Id(1), b"x", QoS::AtMostOnce, false),
        Err(crate::Error::NotConnected)
    );
}

#[test]
fn register_then_publish_by_name() {
    let mut c = connected();
    assert_eq!(
        c.publish(5, Topic::Name("a/b"), b"x", QoS::AtMostOnce, false),
        Err(crate::Error::NotRegistered)
    );
    let m = c.register(5, "a/b").unwrap();
    sent(&mut c);
    let ack =
        enc(Packet::RegAck(Ack { topic_id: 7, msg_id: m, return_code: ReturnCode::Accepted }));
    assert_eq!(
        c.handle_datagram(6, &ack).unwrap(),
        Some(Event::Registered { msg_id: m, result: Ok(7) })
    );
    c.publish(7, Topic::Name("a/b"), b"x", QoS::AtMostOnce, false).unwrap();
    assert!(
        matches!(packet(&sent(&mut c)[0]), Packet::Publish(p) if p.topic == TopicId::Normal(7))
    );
}

#[test]
fn gateway_register_and_messages() {
    let mut c = connected();
    // An unknown id gets PUBACK invalid topic id (spec 6.10).
    let p = |id, msg_id, qos| {
        enc(Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicId::Normal(id),
            msg_id,
            data: b"v",
        }))
    };
    assert_eq!(c.handle_datagram(2, &p(9, 1, QoS::AtLeastOnce)).unwrap(), None);
    assert_eq!(
        sent(&mut c),
        [enc(Packet::PubAck(Ack {
            topic_id: 9,
            msg_id: 1,
            return_code: ReturnCode::InvalidTopicId
        }))]
    );
    // The gateway's REGISTER is answered and remembered.
    let reg = enc(Packet::Register(Register { topic_id: 9, msg_id: 2, topic_name: b"room/1" }));
    c.handle_datagram(3, &reg).unwrap();
    assert_eq!(
        sent(&mut c),
        [enc(Packet::RegAck(Ack { topic_id: 9, msg_id: 2, return_code: ReturnCode::Accepted }))]
    );
    assert_eq!(c.topic_name(9), Some(&b"room/1"[..]));
    let d = p(9, 3, QoS::AtLeastOnce);
    assert!(matches!(
        c.handle_datagram(4, &d).unwrap(),
        Some(Event::Message { payload: b"v", .. })
    ));
    assert_eq!(
        sent(&mut c),
        [enc(Packet::PubAck(Ack { topic_id: 9, msg_id: 3, return_code: ReturnCode::Accepted }))]
    );
}

#[test]
fn qos2_messages_are_delivered_once() {
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    let d = enc(Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicId::Normal(4),
        msg_id: 8,
        data: b"once",
    }));
    assert!(c.handle_datagram(1, &d).unwrap().is_some());
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
    // Duplicated by the network (or our PUBREC lost): PUBREC again, no event.
    assert_eq!(c.handle_datagram(2, &d).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
    c.handle_datagram(3, &enc(Packet::PubRel(8))).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::PubComp(8))]);
}

#[test]
fn a_qos2_retransmission_is_not_delivered_again_after_its_topic_id_changed() {
    // Delivered under id 3; then a late SUBACK names the topic 2, so id 3
    // is unknown when the gateway sends the message again (DUP, same
    // MsgId): PUBREC, not "invalid topic id" (which would make the gateway
    // send it once more as a new message). Simulation seed 17912.
    let mut c = connected();
    c.learn_topic("s/4", 3).unwrap();
    let publish = |dup| {
        enc(Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: TopicId::Normal(3),
            msg_id: 5,
            data: b"once",
        }))
    };
    assert!(c.handle_datagram(1, &publish(false)).unwrap().is_some());
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(5))]);
    c.learn_topic("s/4", 2).unwrap();
    assert_eq!(c.topic_name(3), None);
    assert_eq!(c.handle_datagram(2, &publish(true)).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(5))]);
}

/// A QoS 2 PUBLISH from the gateway on topic id 4.
fn qos2(dup: bool, msg_id: u16, data: &[u8]) -> Vec<u8> {
    enc(Packet::Publish(Publish {
        dup,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicId::Normal(4),
        msg_id,
        data,
    }))
}

/// A client that took QoS 2 message `msg_id` at `now` and had it released.
fn released(c: &mut C, now: u64, msg_id: u16, data: &[u8]) {
    assert!(c.handle_datagram(now, &qos2(false, msg_id, data)).unwrap().is_some());
    assert_eq!(sent(c), [enc(Packet::PubRec(msg_id))]);
    c.handle_datagram(now, &enc(Packet::PubRel(msg_id))).unwrap();
    assert_eq!(sent(c), [enc(Packet::PubComp(msg_id))]);
}

#[test]
fn a_late_qos2_copy_after_pubrel_is_answered_with_pubrec_and_not_delivered() {
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    released(&mut c, 1, 8, b"once");
    // A retransmission the network held back arrives after PUBREL.
    assert_eq!(c.handle_datagram(50, &qos2(true, 8, b"once")).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
    // The gateway may release it again: PUBCOMP.
    c.handle_datagram(51, &enc(Packet::PubRel(8))).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::PubComp(8))]);
    assert_eq!(c.handle_datagram(52, &qos2(true, 8, b"once")).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
}

#[test]
fn a_qos2_msg_id_used_again_after_pubrel_is_a_new_message() {
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    released(&mut c, 1, 8, b"one");
    // Without DUP and with another payload: new.
    released(&mut c, 2, 8, b"two");
    // A copy of the first one, duplicated by the network, DUP not set:
    // not delivered again (the same MsgId and payload).
    assert_eq!(c.handle_datagram(3, &qos2(false, 8, b"one")).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
    // With DUP and another payload: the retransmission of a new message
    // whose first copy was lost.
    let d = qos2(true, 8, b"three");
    let e = c.handle_datagram(3, &d).unwrap();
    assert!(matches!(e, Some(Event::Message { payload: b"three", .. })), "{e:?}");
}

#[test]
fn a_released_qos2_msg_id_is_remembered_for_tretry_times_nretry_plus_one() {
    // Tretry 100 ms, Nretry 2: 300 ms.
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    released(&mut c, 1000, 8, b"a");
    released(&mut c, 1000, 9, b"b");
    assert_eq!(c.handle_datagram(1299, &qos2(true, 8, b"a")).unwrap(), None);
    assert_eq!(sent(&mut c), [enc(Packet::PubRec(8))]);
    assert!(c.handle_datagram(1300, &qos2(true, 9, b"b")).unwrap().is_some(), "expired");
    assert_eq!(c.released_count(1300), 0);
}

#[test]
fn released_qos2_msg_ids_are_bounded_the_oldest_forgotten_first() {
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    let n = super::client::RELEASED as u16;
    for msg_id in 1..=n + 1 {
        released(&mut c, u64::from(msg_id), msg_id, &[msg_id as u8]);
    }
    assert_eq!(c.released_count(u64::from(n) + 1), usize::from(n));
    assert!(c.handle_datagram(20, &qos2(true, 1, &[1])).unwrap().is_some(), "forgotten");
    sent(&mut c);
    for msg_id in 2..=n + 1 {
        assert_eq!(c.handle_datagram(20, &qos2(true, msg_id, &[msg_id as u8])).unwrap(), None);
    }
}

#[test]
fn a_copy_of_a_qos2_message_refused_for_its_topic_id_is_refused_again() {
    // The message overtakes the SUBACK that names its topic: refused, and
    // the gateway sends it again under a new MsgId once it named the
    // topic. A copy of the refused one arriving after the SUBACK is
    // refused too, not delivered (simulation seed 9385).
    let mut c = connected();
    let refused = enc(Packet::PubAck(Ack {
        topic_id: 4,
        msg_id: 8,
        return_code: ReturnCode::InvalidTopicId,
    }));
    assert_eq!(c.handle_datagram(1, &qos2(false, 8, b"once")).unwrap(), None);
    assert_eq!(sent(&mut c), std::slice::from_ref(&refused));
    c.learn_topic("t", 4).unwrap();
    assert_eq!(c.handle_datagram(2, &qos2(false, 8, b"once")).unwrap(), None);
    assert_eq!(sent(&mut c), std::slice::from_ref(&refused));
    assert_eq!(c.handle_datagram(3, &qos2(true, 8, b"once")).unwrap(), None);
    assert_eq!(sent(&mut c), [refused]);
    // The message sent again under its new MsgId is delivered.
    assert!(c.handle_datagram(4, &qos2(false, 9, b"once")).unwrap().is_some());
}

#[test]
fn subscribe_retransmission_sets_dup_and_suback_reports() {
    let mut c = connected();
    let m = c.subscribe(1, TopicFilter::Name(b"a/#"), QoS::AtLeastOnce).unwrap();
    let first = sent(&mut c);
    assert!(matches!(packet(&first[0]), Packet::Subscribe(s) if !s.dup));
    c.handle_timeout(101);
    assert!(matches!(packet(&sent(&mut c)[0]), Packet::Subscribe(s) if s.dup && s.msg_id == m));
    let ack = enc(Packet::SubAck(SubAck {
        qos: QoS::AtLeastOnce,
        topic_id: 0,
        msg_id: m,
        return_code: ReturnCode::Accepted,
    }));
    assert_eq!(
        c.handle_datagram(102, &ack).unwrap(),
        Some(Event::Subscribed { msg_id: m, result: Ok((0, QoS::AtLeastOnce)) })
    );
}

#[test]
fn keepalive_pings_and_the_gateways_pingreq_is_answered() {
    let mut c = connected();
    assert_eq!(c.poll_timeout(), Some(30_000));
    c.handle_timeout(30_000);
    assert_eq!(sent(&mut c), [enc(Packet::PingReq(None))]);
    assert_eq!(c.handle_datagram(30_001, &enc(Packet::PingResp)).unwrap(), Some(Event::PingResp));
    c.handle_datagram(30_002, &enc(Packet::PingReq(None))).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::PingResp)]);
}

#[test]
fn sleep_wake_and_buffered_messages() {
    let mut c = connected();
    c.learn_topic("t", 4).unwrap();
    c.sleep(10, 600).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::Disconnect(Some(600)))]);
    assert_eq!(
        c.handle_datagram(11, &enc(Packet::Disconnect(None))).unwrap(),
        Some(Event::Disconnected)
    );
    assert!(c.is_asleep());
    assert_eq!(c.poll_timeout(), None, "no keepalive while asleep");
    c.wake(1000).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::PingReq(Some(b"node-1")))]);
    let msg = enc(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicId::Normal(4),
        msg_id: 0,
        data: b"buffered",
    }));
    assert!(c.handle_datagram(1001, &msg).unwrap().is_some());
    assert_eq!(c.handle_datagram(1002, &enc(Packet::PingResp)).unwrap(), Some(Event::PingResp));
    assert!(c.is_asleep());
}

#[test]
fn unsolicited_disconnect_and_garbage() {
    let mut c = connected();
    assert!(c.handle_datagram(1, &[0x05, 0x0e, 0x00]).is_err());
    assert!(c.handle_datagram(1, &[]).is_err());
    assert_eq!(
        c.handle_datagram(2, &enc(Packet::Disconnect(None))).unwrap(),
        Some(Event::DisconnectedByGateway)
    );
    assert!(!c.is_connected());
}

#[test]
fn reordered_and_duplicated_acks_match_by_msg_id() {
    let mut c = connected();
    let a = c.publish(1, Topic::Predefined(1), b"a", QoS::AtLeastOnce, false).unwrap().unwrap();
    let b = c.publish(1, Topic::Predefined(1), b"b", QoS::AtLeastOnce, false).unwrap().unwrap();
    assert_eq!(
        c.publish(1, Topic::Predefined(1), b"c", QoS::AtLeastOnce, false),
        Err(crate::Error::Busy)
    );
    sent(&mut c);
    let ack =
        |m| enc(Packet::PubAck(Ack { topic_id: 1, msg_id: m, return_code: ReturnCode::Accepted }));
    assert_eq!(
        c.handle_datagram(2, &ack(b)).unwrap(),
        Some(Event::Published { msg_id: b, result: Ok(()) })
    );
    assert_eq!(c.handle_datagram(3, &ack(b)).unwrap(), None);
    assert_eq!(
        c.handle_datagram(4, &ack(a)).unwrap(),
        Some(Event::Published { msg_id: a, result: Ok(()) })
    );
}

#[test]
fn congestion_makes_requests_wait_t_wait() {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, None).unwrap();
    sent(&mut c);
    let refused = enc(Packet::ConnAck(ReturnCode::Congestion));
    assert_eq!(
        c.handle_datagram(10, &refused).unwrap(),
        Some(Event::ConnectRefused(ReturnCode::Congestion))
    );
    assert_eq!(c.connect(500, true, 30, None), Err(crate::Error::Congested));
    assert_eq!(c.connect(1_010, true, 30, None), Ok(()));
}

#[test]
fn will_updates_are_sent_and_answered() {
    let mut c = connected();
    c.update_will_topic(5, Some(("w/new", QoS::AtLeastOnce, false))).unwrap();
    assert!(
        matches!(packet(&sent(&mut c)[0]), Packet::WillTopicUpd(Some(w)) if w.topic == b"w/new")
    );
    let resp = enc(Packet::WillTopicResp(ReturnCode::Accepted));
    assert_eq!(
        c.handle_datagram(6, &resp).unwrap(),
        Some(Event::WillUpdated(ReturnCode::Accepted))
    );
    c.update_will_message(7, b"bye").unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::WillMsgUpd(b"bye"))]);
    c.update_will_topic(8, None).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::WillTopicUpd(None))]);
}
