//! Fail-over with virtual time: a lost gateway (Nretry, missing PINGRESP,
//! DISCONNECT), the move to the next, the restore, the list's rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(not(feature = "std"))]
extern crate std;
use std::vec::Vec;

use mqttsn_codec::{Ack, Packet, QoS, ReturnCode, SubAck, TopicFilter, TopicId};

use crate::discovery::DiscoveryEvent;
use crate::gateways::{Full, Gateways};
use crate::{Event, Topic};

use crate::tests::{enc, packet, sent, settings, C};

fn accepted(topic_id: u16, msg_id: u16) -> Ack {
    Ack { topic_id, msg_id, return_code: ReturnCode::Accepted }
}

/// Connected to gateway A, with `a/t` registered as id 1 and `s/#`
/// subscribed at QoS 1.
fn on_gateway_a() -> C {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, None).unwrap();
    sent(&mut c);
    assert_eq!(
        c.handle_datagram(1, &enc(Packet::ConnAck(ReturnCode::Accepted))).unwrap(),
        Some(Event::Connected)
    );
    let m = c.register(2, "a/t").unwrap();
    sent(&mut c);
    c.handle_datagram(3, &enc(Packet::RegAck(accepted(1, m)))).unwrap();
    let m = c.subscribe(4, TopicFilter::Name(b"s/#"), QoS::AtLeastOnce).unwrap();
    sent(&mut c);
    let suback =
        SubAck { qos: QoS::AtLeastOnce, topic_id: 0, msg_id: m, return_code: ReturnCode::Accepted };
    c.handle_datagram(5, &enc(Packet::SubAck(suback))).unwrap();
    assert_eq!(c.topic_id("a/t"), Some(1));
    c
}

/// Drives the restore at gateway B: CONNECT (CleanSession false), REGISTER
/// `a/t` (id 7 there), SUBSCRIBE `s/#`; returns what went out after the
/// last SUBACK and the event.
fn restore_at_b(c: &mut C, now: u64) -> (Vec<Vec<u8>>, Option<Event<'static>>) {
    sent(c);
    c.fail_over(now).unwrap();
    let d = sent(c);
    assert!(
        matches!(packet(&d[0]), Packet::Connect(k) if !k.clean_session && k.duration == 30),
        "{:?}",
        packet(&d[0])
    );
    assert_eq!(
        c.handle_datagram(now + 1, &enc(Packet::ConnAck(ReturnCode::Accepted))).unwrap(),
        None
    );
    assert!(!c.is_connected(), "not before the restore is done");
    let d = sent(c);
    let Packet::Register(r) = packet(&d[0]) else { panic!("{d:?}") };
    assert_eq!(r.topic_name, b"a/t");
    let reg_id = r.msg_id;
    assert_eq!(
        c.handle_datagram(now + 2, &enc(Packet::RegAck(accepted(7, reg_id)))).unwrap(),
        None
    );
    let d = sent(c);
    let Packet::Subscribe(s) = packet(&d[0]) else { panic!("{d:?}") };
    assert_eq!((s.topic, s.qos), (TopicFilter::Name(b"s/#"), QoS::AtLeastOnce));
    let suback = SubAck {
        qos: QoS::AtLeastOnce,
        topic_id: 0,
        msg_id: s.msg_id,
        return_code: ReturnCode::Accepted,
    };
    let suback = enc(Packet::SubAck(suback));
    let event = match c.handle_datagram(now + 3, &suback).unwrap() {
        Some(Event::GatewayChanged) => Some(Event::GatewayChanged),
        Some(Event::Connected) => Some(Event::Connected),
        other => panic!("{other:?}"),
    };
    (sent(c), event)
}

#[test]
fn lost_by_retries_moves_to_the_next_gateway_and_resends_the_publish() {
    let mut gws: Gateways<&str, 4> = Gateways::new();
    gws.add("A").unwrap();
    gws.add("B").unwrap();
    let mut c = on_gateway_a();
    let id = c.publish(10, Topic::Name("a/t"), b"m1", QoS::AtLeastOnce, false).unwrap().unwrap();
    sent(&mut c);
    assert_eq!(c.handle_timeout(110), None);
    assert_eq!(c.handle_timeout(210), None);
    assert_eq!(c.handle_timeout(310), Some(Event::GatewayLost));
    assert!(!c.is_connected());
    assert_eq!(c.poll_timeout(), None, "nothing is retried while lost");
    assert_eq!(
        c.publish(311, Topic::Name("a/t"), b"x", QoS::AtLeastOnce, false),
        Err(crate::Error::NotConnected)
    );

    assert_eq!(gws.fail_over(), Some("B"));
    let (d, event) = restore_at_b(&mut c, 400);
    assert_eq!(event, Some(Event::GatewayChanged));
    assert!(c.is_connected());
    assert_eq!(c.topic_id("a/t"), Some(7), "ids are the new gateway's");
    let Packet::Publish(p) = packet(&d[0]) else { panic!("{d:?}") };
    assert_eq!((p.topic, p.msg_id, p.dup, p.data), (TopicId::Normal(7), id, true, &b"m1"[..]));
    assert_eq!(
        c.handle_datagram(404, &enc(Packet::PubAck(accepted(7, id)))).unwrap(),
        Some(Event::Published { msg_id: id, result: Ok(()) })
    );
    gws.connected();
    assert_eq!(c.poll_timeout(), Some(403 + 30_000), "only the keepalive is left");
}

#[test]
fn missing_pingresp_loses_the_gateway() {
    let mut c = on_gateway_a();
    sent(&mut c);
    assert_eq!(c.poll_timeout(), Some(4 + 30_000));
    assert_eq!(c.handle_timeout(30_004), None);
    assert_eq!(sent(&mut c), [enc(Packet::PingReq(None))]);
    assert_eq!(c.handle_timeout(30_104), None);
    assert_eq!(sent(&mut c), [enc(Packet::PingReq(None))]);
    assert_eq!(c.handle_timeout(30_204), None);
    assert_eq!(c.handle_timeout(30_304), Some(Event::GatewayLost));
    let (d, event) = restore_at_b(&mut c, 30_400);
    assert_eq!(event, Some(Event::GatewayChanged));
    assert!(d.is_empty(), "no PINGREQ kept: {d:?}");
}

#[test]
fn qos2_publish_in_flight_completes_at_the_next_gateway() {
    let mut c = on_gateway_a();
    let id = c.publish(10, Topic::Name("a/t"), b"q2", QoS::ExactlyOnce, false).unwrap().unwrap();
    sent(&mut c);
    assert_eq!(
        c.handle_datagram(11, &enc(Packet::Disconnect(None))).unwrap(),
        Some(Event::DisconnectedByGateway)
    );
    let (d, event) = restore_at_b(&mut c, 50);
    assert_eq!(event, Some(Event::GatewayChanged));
    let Packet::Publish(p) = packet(&d[0]) else { panic!("{d:?}") };
    assert_eq!((p.topic, p.msg_id, p.qos), (TopicId::Normal(7), id, QoS::ExactlyOnce));
    c.handle_datagram(60, &enc(Packet::PubRec(id))).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::PubRel(id))]);
    assert_eq!(
        c.handle_datagram(61, &enc(Packet::PubComp(id))).unwrap(),
        Some(Event::Published { msg_id: id, result: Ok(()) })
    );
}

#[test]
fn a_released_qos2_publish_sends_pubrel_again() {
    let mut c = on_gateway_a();
    let id = c.publish(10, Topic::Name("a/t"), b"q2", QoS::ExactlyOnce, false).unwrap().unwrap();
    c.handle_datagram(11, &enc(Packet::PubRec(id))).unwrap();
    sent(&mut c);
    assert_eq!(c.handle_timeout(111), None);
    assert_eq!(c.handle_timeout(211), None);
    assert_eq!(c.handle_timeout(311), Some(Event::GatewayLost));
    let (d, _) = restore_at_b(&mut c, 400);
    assert_eq!(d, [enc(Packet::PubRel(id))]);
    assert_eq!(
        c.handle_datagram(404, &enc(Packet::PubComp(id))).unwrap(),
        Some(Event::Published { msg_id: id, result: Ok(()) })
    );
}

#[test]
fn messages_flow_again_after_the_move() {
    let mut c = on_gateway_a();
    c.handle_datagram(6, &enc(Packet::Disconnect(None))).unwrap();
    restore_at_b(&mut c, 50);
    // Gateway B names the topic before delivering on it.
    let reg = mqttsn_codec::Register { topic_id: 9, msg_id: 1, topic_name: b"s/x" };
    c.handle_datagram(60, &enc(Packet::Register(reg))).unwrap();
    assert_eq!(sent(&mut c), [enc(Packet::RegAck(accepted(9, 1)))]);
    let msg = enc(Packet::Publish(mqttsn_codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicId::Normal(9),
        msg_id: 2,
        data: b"hi",
    }));
    assert!(matches!(
        c.handle_datagram(61, &msg).unwrap(),
        Some(Event::Message { payload: b"hi", .. })
    ));
    assert_eq!(sent(&mut c), [enc(Packet::PubAck(accepted(9, 2)))]);
}

#[test]
fn unsubscribed_filters_are_not_renewed() {
    let mut c = on_gateway_a();
    let m = c.unsubscribe(6, TopicFilter::Name(b"s/#")).unwrap();
    sent(&mut c);
    c.handle_datagram(7, &enc(Packet::UnsubAck(m))).unwrap();
    c.handle_datagram(8, &enc(Packet::Disconnect(None))).unwrap();
    c.fail_over(10).unwrap();
    sent(&mut c);
    c.handle_datagram(11, &enc(Packet::ConnAck(ReturnCode::Accepted))).unwrap();
    let d = sent(&mut c);
    let Packet::Register(r) = packet(&d[0]) else { panic!() };
    let r = r.msg_id;
    assert_eq!(
        c.handle_datagram(12, &enc(Packet::RegAck(accepted(3, r)))).unwrap(),
        Some(Event::GatewayChanged)
    );
    assert!(sent(&mut c).is_empty());
}

#[test]
fn a_refused_or_silent_next_gateway_is_lost_too() {
    let mut c = on_gateway_a();
    c.handle_datagram(6, &enc(Packet::Disconnect(None))).unwrap();
    c.fail_over(10).unwrap();
    sent(&mut c);
    assert_eq!(
        c.handle_datagram(11, &enc(Packet::ConnAck(ReturnCode::Congestion))).unwrap(),
        Some(Event::GatewayLost)
    );
    c.fail_over(20).unwrap();
    let first = sent(&mut c);
    assert_eq!(c.handle_timeout(120), None);
    assert_eq!(sent(&mut c), first, "the CONNECT is retried");
    assert_eq!(c.handle_timeout(220), None);
    assert_eq!(c.handle_timeout(320), Some(Event::GatewayLost));
    // A third gateway answers: the session moves there.
    let (_, event) = restore_at_b(&mut c, 400);
    assert_eq!(event, Some(Event::GatewayChanged));
}

#[test]
fn a_first_connect_that_fails_over_keeps_its_clean_session() {
    let mut c = C::new(b"node-1", settings()).unwrap();
    c.connect(0, true, 30, None).unwrap();
    sent(&mut c);
    c.handle_timeout(100);
    c.handle_timeout(200);
    assert_eq!(c.handle_timeout(300), Some(Event::GatewayLost));
    c.fail_over(300).unwrap();
    assert!(matches!(packet(&sent(&mut c)[0]), Packet::Connect(k) if k.clean_session));
    assert_eq!(
        c.handle_datagram(301, &enc(Packet::ConnAck(ReturnCode::Accepted))).unwrap(),
        Some(Event::Connected)
    );
    assert!(c.is_connected());
}

#[test]
fn the_list_rotates_wraps_around_and_ends_when_all_failed() {
    let mut g: Gateways<u8, 4> = Gateways::new();
    assert_eq!(g.current(), None);
    assert_eq!(g.fail_over(), None);
    g.add(1).unwrap();
    g.add(2).unwrap();
    g.add(3).unwrap();
    g.add(2).unwrap();
    assert_eq!(g.len(), 3);
    assert_eq!(g.current(), Some(1));
    assert_eq!(g.fail_over(), Some(2));
    g.connected();
    assert_eq!(g.fail_over(), Some(3));
    g.connected();
    assert_eq!(g.fail_over(), Some(1), "wraps around");
    g.connected();
    // 1 fails at once: 2 next, then 3, then nothing (all failed).
    assert_eq!(g.fail_over(), Some(2));
    assert_eq!(g.fail_over(), Some(3));
    assert_eq!(g.fail_over(), None);
    g.reset();
    assert_eq!(g.fail_over(), Some(1));
}

#[test]
fn one_gateway_has_no_next() {
    let mut g: Gateways<u8, 2> = Gateways::new();
    g.add(1).unwrap();
    assert_eq!(g.fail_over(), None);
}

#[test]
fn learnt_gateways_join_the_list_within_its_bound() {
    let mut g: Gateways<u8, 3> = Gateways::new();
    g.add(1).unwrap();
    g.handle_discovery(DiscoveryEvent::GatewayFound { gw_id: 20, addr: 2 }).unwrap();
    g.learn(30, 3).unwrap();
    g.learn(30, 3).unwrap();
    assert_eq!(g.iter().collect::<Vec<_>>(), [1, 2, 3]);
    // Full: the oldest learnt one makes room; configured ones stay.
    g.learn(40, 4).unwrap();
    assert_eq!(g.iter().collect::<Vec<_>>(), [1, 3, 4]);
    let mut only: Gateways<u8, 1> = Gateways::new();
    only.add(1).unwrap();
    assert_eq!(only.learn(2, 2), Err(Full));
    assert_eq!(only.add(2), Err(Full));
    // A gateway discovery lost is tried last.
    g.handle_discovery(DiscoveryEvent::GatewayLost { gw_id: 30 }).unwrap();
    assert_eq!(g.fail_over(), Some(4));
    assert_eq!(g.fail_over(), None);
}
