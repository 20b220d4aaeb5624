//! Property test of the session core: any sequence of datagrams from the
//! sensor (arbitrary octets, decoded or not), upstream events and clock
//! steps never panics, everything the session hands out encodes, and what
//! it hands to the store reads back as a session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::{Connect, Packet};
use mqttsn_gateway::mqtt::QoS;
use mqttsn_gateway::session::{check_connect, Session, SessionConfig};
use mqttsn_gateway::upstream::{DeliveryId, Event};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Datagram(Vec<u8>),
    Connect { clean: bool, will: bool, duration: u16 },
    Upstream(u8, u64, bool),
    Advance(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::Datagram),
        // Well-formed datagrams reach deeper: build them from the codec.
        4 => (0u8..27, any::<u16>(), any::<u16>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(t, a, b, f, data)| Step::Datagram(valid(t, a, b, f, &data))),
        1 => (any::<bool>(), any::<bool>(), 0u16..5).prop_map(|(clean, will, duration)| Step::Connect { clean, will, duration }),
        3 => (0u8..10, 0u64..6, any::<bool>()).prop_map(|(k, id, f)| Step::Upstream(k, id, f)),
        2 => (0u32..20_000).prop_map(Step::Advance),
    ]
}

/// A valid datagram of message type index `t` with fields from the inputs.
fn valid(t: u8, a: u16, b: u16, f: u8, data: &[u8]) -> Vec<u8> {
    use mqttsn_codec::*;
    let qos = QoS::from_bits(f >> 5);
    let topic = TopicId::from_parts(TopicIdType::from_bits(f), a % 4);
    let filter = match f & 3 {
        0 => TopicFilter::Name(if data.is_empty() { b"a/#" } else { data }),
        1 => TopicFilter::Predefined(a % 4),
        2 => TopicFilter::Short(*b"ab"),
        _ => TopicFilter::Reserved(data),
    };
    let ack = Ack { topic_id: a % 4, msg_id: b % 8, return_code: ReturnCode::from_u8(f % 4) };
    let will = WillTopic { qos, retain: f & 1 == 1, topic: b"w/t" };
    let p = match t {
        0 => Packet::Register(Register { topic_id: 0, msg_id: b % 8, topic_name: b"t/x" }),
        1 => Packet::Publish(Publish {
            dup: f & 0x80 != 0,
            qos,
            retain: false,
            topic,
            msg_id: b % 8,
            data,
        }),
        2 => Packet::PubAck(ack),
        3 => Packet::PubRec(b % 8),
        4 => Packet::PubRel(b % 8),
        5 => Packet::PubComp(b % 8),
        6 => Packet::Subscribe(Subscribe { dup: false, qos, msg_id: b % 8, topic: filter }),
        7 => Packet::Unsubscribe(Unsubscribe { msg_id: b % 8, topic: filter }),
        8 => Packet::RegAck(ack),
        9 => Packet::PingReq(None),
        10 => Packet::PingReq(Some(b"sensor")),
        11 => Packet::Disconnect(None),
        12 => Packet::Disconnect(Some(a % 5)),
        13 => Packet::WillTopic(Some(will)),
        14 => Packet::WillTopic(None),
        15 => Packet::WillMsg(data),
        16 => Packet::WillTopicUpd(Some(will)),
        17 => Packet::WillTopicUpd(None),
        18 => Packet::WillMsgUpd(data),
        _ => Packet::PingResp,
    };
    let mut buf = vec![0u8; 256];
    let n = p.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn event(kind: u8, id: u64, flag: bool) -> Event {
    match kind {
        0 => Event::Connected { session_present: flag },
        1 => Event::Unavailable { reason: "x".into() },
        2 => Event::Closed,
        3 => Event::PublishAcked { id },
        4 => Event::PublishCompleted { id },
        5 => Event::SubAcked { id, granted: flag.then_some(QoS::AtLeastOnce) },
        6 => Event::UnsubAcked { id },
        7 => Event::Refused { code: 5 },
        _ => Event::Message {
            delivery: flag.then_some(DeliveryId(id)),
            packet_id: id as u16,
            topic: if id.is_multiple_of(2) { "a/b".into() } else { "ab".into() },
            payload: Bytes::from_static(b"m"),
            qos: if flag { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain: false,
            dup: false,
        },
    }
}

proptest! {
    // PROPTEST_CASES=100000 for a longer search; 512 in the test suite.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_is_handled(steps in proptest::collection::vec(step(), 1..60)) {
        let cfg = Arc::new(SessionConfig {
            retry_interval: Duration::from_millis(100),
            max_retries: 2,
            ..SessionConfig::default()
        });
        let mut now = Instant::now();
        let mut s = Session::new(cfg.clone(), "sensor", now);
        let connect = Connect { will: false, clean_session: true, protocol_id: 1, duration: 2, client_id: b"sensor" };
        prop_assert!(check_connect(&connect, &cfg).is_ok());
        s.handle_connect(&connect, now);
        let mut buf = vec![0u8; 70_000];
        // What the store would hold.
        let mut record: Option<Vec<u8>> = None;
        let mut messages = std::collections::BTreeMap::new();
        for step in steps {
            match step {
                Step::Datagram(d) => {
                    if let Ok(Packet::Connect(c)) = Packet::decode(&d) {
                        if check_connect(&c, &cfg).is_ok() {
                            s.handle_connect(&c, now);
                        }
                    } else if let Ok(p) = Packet::decode(&d) {
                        s.handle_packet(&p, now);
                    }
                }
                Step::Connect { clean, will, duration } => {
                    let c = Connect { will, clean_session: clean, protocol_id: 1, duration, client_id: b"sensor" };
                    s.handle_connect(&c, now);
                }
                Step::Upstream(k, id, f) => s.handle_upstream(event(k, id, f), now),
                Step::Advance(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
            while let Some(out) = s.poll_transmit() {
                prop_assert!(out.encode(&mut buf).is_ok(), "{:?}", out);
            }
            while s.poll_upstream().is_some() {}
            while s.poll_event().is_some() {}
            if let Some(p) = s.take_persist(1_700_000_000, b"addr") {
                if p.remove {
                    record = None;
                    messages.clear();
                }
                if let Some(r) = p.record {
                    record = Some(r);
                }
                for seq in p.delete {
                    prop_assert!(messages.remove(&seq).is_some(), "deleted twice: {seq}");
                }
                for (seq, m) in p.put {
                    messages.insert(seq, m);
                }
                let Some(rec) = record.as_ref() else {
                    prop_assert!(messages.is_empty());
                    continue;
                };
                let restored = Session::restore(cfg.clone(), "sensor", rec, messages.clone(), now);
                prop_assert!(restored.is_ok(), "{:?}", restored.err());
                if let Ok((mut r, addr)) = restored {
                    prop_assert_eq!(&addr[..], b"addr");
                    prop_assert_eq!(r.pending_deliveries() >= messages.len(), true);
                    while r.poll_transmit().is_some() {}
                    while r.poll_upstream().is_some() {}
                }
            }
            // A deadline is never in the past once timeouts were handled.
            if let Some(t) = s.poll_timeout() {
                if t <= now {
                    s.handle_timeout(now);
                }
            }
        }
    }
}
