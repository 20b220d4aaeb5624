//! Byte vectors for every MQTT-SN v1.2 message, worked out by hand from the
//! message formats of spec section 5.4 and the encapsulation of section 5.5.
//!
//! Each vector is checked both ways: the octets decode to the packet, and the
//! packet encodes to exactly the octets (the vectors all use the short
//! Length form where it fits, which is what the encoder picks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{
    Ack, Advertise, Connect, Forwarded, Frame, GwInfo, MsgType, Packet, Publish, QoS, Register,
    ReturnCode, SubAck, Subscribe, TopicFilter, TopicId, Unsubscribe, WillTopic,
};

/// Decodes `bytes`, compares with `packet`, and encodes `packet` back to
/// exactly `bytes`.
fn check(bytes: &[u8], packet: Packet<'_>) {
    let decoded = Packet::decode(bytes).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    assert_eq!(decoded, packet, "decode of {bytes:02x?}");
    assert_eq!(packet.encoded_len().unwrap(), bytes.len());
    let mut buf = [0u8; 400];
    let n = packet.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], bytes, "encode of {packet:?}");
    // A plain frame is the same octets.
    assert_eq!(Frame::decode(bytes).unwrap(), Frame::plain(packet));
}

#[test]
fn advertise() {
    // Length 5, 0x00, GwId 7, Duration 900 s.
    check(
        &[0x05, 0x00, 0x07, 0x03, 0x84],
        Packet::Advertise(Advertise { gw_id: 7, duration: 900 }),
    );
}

#[test]
fn searchgw() {
    check(&[0x03, 0x01, 0x02], Packet::SearchGw { radius: 2 });
}

#[test]
fn gwinfo_from_gateway_and_from_client() {
    // From a gateway: no GwAdd.
    check(&[0x03, 0x02, 0x01], Packet::GwInfo(GwInfo { gw_id: 1, gw_addr: &[] }));
    // From a client answering for a gateway: GwAdd is the gateway's address.
    check(
        &[0x07, 0x02, 0x01, 192, 168, 1, 10],
        Packet::GwInfo(GwInfo { gw_id: 1, gw_addr: &[192, 168, 1, 10] }),
    );
}

#[test]
fn connect() {
    // Flags: Will (0x08) + CleanSession (0x04); ProtocolId 0x01; Duration 60.
    check(
        &[0x0a, 0x04, 0x0c, 0x01, 0x00, 0x3c, b's', b'n', b'0', b'1'],
        Packet::Connect(Connect {
            will: true,
            clean_session: true,
            protocol_id: 0x01,
            duration: 60,
            client_id: b"sn01",
        }),
    );
    check(
        &[0x07, 0x04, 0x00, 0x01, 0x00, 0x00, b'x'],
        Packet::Connect(Connect {
            will: false,
            clean_session: false,
            protocol_id: 0x01,
            duration: 0,
            client_id: b"x",
        }),
    );
}

#[test]
fn connack_every_return_code() {
    check(&[0x03, 0x05, 0x00], Packet::ConnAck(ReturnCode::Accepted));
    check(&[0x03, 0x05, 0x01], Packet::ConnAck(ReturnCode::Congestion));
    check(&[0x03, 0x05, 0x02], Packet::ConnAck(ReturnCode::InvalidTopicId));
    check(&[0x03, 0x05, 0x03], Packet::ConnAck(ReturnCode::NotSupported));
    // Reserved values are kept, not rejected.
    check(&[0x03, 0x05, 0x7f], Packet::ConnAck(ReturnCode::Other(0x7f)));
}

#[test]
fn willtopicreq_and_willmsgreq() {
    check(&[0x02, 0x06], Packet::WillTopicReq);
    check(&[0x02, 0x08], Packet::WillMsgReq);
}

#[test]
fn willtopic() {
    // Flags: QoS 1 (0x20) + Retain (0x10).
    check(
        &[0x07, 0x07, 0x30, b'a', b'/', b'b', b'c'],
        Packet::WillTopic(Some(WillTopic { qos: QoS::AtLeastOnce, retain: true, topic: b"a/bc" })),
    );
    // The empty WILLTOPIC (spec 5.4.7): two octets, no will.
    check(&[0x02, 0x07], Packet::WillTopic(None));
}

#[test]
fn willmsg() {
    check(&[0x06, 0x09, b'g', b'o', b'n', b'e'], Packet::WillMsg(b"gone"));
    check(&[0x02, 0x09], Packet::WillMsg(b""));
}

#[test]
fn register() {
    // From a client: TopicId 0x0000.
    check(
        &[0x0a, 0x0a, 0x00, 0x00, 0x00, 0x01, b't', b'/', b'a', b'b'],
        Packet::Register(Register { topic_id: 0, msg_id: 1, topic_name: b"t/ab" }),
    );
    // From the gateway with the assigned id.
    check(
        &[0x07, 0x0a, 0x01, 0x02, 0xbe, 0xef, b'x'],
        Packet::Register(Register { topic_id: 0x0102, msg_id: 0xbeef, topic_name: b"x" }),
    );
}

#[test]
fn regack() {
    check(
        &[0x07, 0x0b, 0x00, 0x2a, 0x00, 0x01, 0x00],
        Packet::RegAck(Ack { topic_id: 42, msg_id: 1, return_code: ReturnCode::Accepted }),
    );
}

#[test]
fn publish_every_topic_id_type_and_qos() {
    // QoS 0 (0x00), normal topic id 1, MsgId 0.
    check(
        &[0x09, 0x0c, 0x00, 0x00, 0x01, 0x00, 0x00, b'h', b'i'],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicId::Normal(1),
            msg_id: 0,
            data: b"hi",
        }),
    );
    // DUP (0x80) + QoS 1 (0x20) + RETAIN (0x10) + predefined (0x01).
    check(
        &[0x08, 0x0c, 0xb1, 0x00, 0x05, 0x12, 0x34, 0xff],
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: TopicId::Predefined(5),
            msg_id: 0x1234,
            data: &[0xff],
        }),
    );
    // QoS 2 (0x40) + short name "ab" (0x02): the two characters in TopicId.
    check(
        &[0x07, 0x0c, 0x42, b'a', b'b', 0x00, 0x07],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: TopicId::Short(*b"ab"),
            msg_id: 7,
            data: b"",
        }),
    );
    // QoS -1 (0x60) to a predefined id, MsgId 0x0000 (spec 6.8).
    check(
        &[0x08, 0x0c, 0x61, 0x00, 0x0a, 0x00, 0x00, b'1'],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::NoSession,
            retain: false,
            topic: TopicId::Predefined(10),
            msg_id: 0,
            data: b"1",
        }),
    );
    // Reserved TopicIdType (0x03) is kept for the receiver to reject.
    check(
        &[0x07, 0x0c, 0x03, 0x00, 0x01, 0x00, 0x00],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicId::Reserved(1),
            msg_id: 0,
            data: b"",
        }),
    );
}

#[test]
fn publish_long_length_form() {
    // 300 octets of data: 7 + 300 = 307 > 255, so Length is 0x01 0x01 0x35
    // (309 = 4 header octets + 5 fixed + 300).
    let data = [0x5a; 300];
    let mut bytes = vec![0x01, 0x01, 0x35, 0x0c, 0x20, 0x00, 0x01, 0x00, 0x02];
    bytes.extend_from_slice(&data);
    assert_eq!(bytes.len(), 309);
    check(
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicId::Normal(1),
            msg_id: 2,
            data: &data,
        }),
    );
}

#[test]
fn short_form_up_to_255_then_long_form() {
    // Body 253 octets: total 255 fits the short form.
    let data = [0u8; 248];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicId::Normal(1),
        msg_id: 0,
        data: &data,
    });
    let mut buf = [0u8; 400];
    assert_eq!(p.encode(&mut buf).unwrap(), 255);
    assert_eq!(buf[0], 0xff);
    // One more octet: 256 does not fit, the long form gives 258.
    let data = [0u8; 249];
    let p = Packet::Publish(Publish { data: &data, ..publish_of(&p) });
    assert_eq!(p.encode(&mut buf).unwrap(), 258);
    assert_eq!(&buf[..4], &[0x01, 0x01, 0x02, 0x0c]);
}

fn publish_of<'a>(p: &Packet<'a>) -> Publish<'a> {
    match p {
        Packet::Publish(p) => *p,
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

#[test]
fn long_form_accepted_for_short_messages() {
    // A PUBACK sent with the long form: 0x01 0x00 0x09, MsgType, 5 octets.
    let bytes = [0x01, 0x00, 0x09, 0x0d, 0x00, 0x01, 0x00, 0x02, 0x00];
    let p = Packet::decode(&bytes).unwrap();
    assert_eq!(
        p,
        Packet::PubAck(Ack { topic_id: 1, msg_id: 2, return_code: ReturnCode::Accepted })
    );
    // Re-encoding picks the short form: round trips compare packets.
    let mut buf = [0u8; 16];
    let n = p.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x07, 0x0d, 0x00, 0x01, 0x00, 0x02, 0x00]);
}

#[test]
fn puback_pubrec_pubrel_pubcomp() {
    check(
        &[0x07, 0x0d, 0x00, 0x01, 0x00, 0x02, 0x02],
        Packet::PubAck(Ack { topic_id: 1, msg_id: 2, return_code: ReturnCode::InvalidTopicId }),
    );
    check(&[0x04, 0x0e, 0x00, 0x03], Packet::PubComp(3));
    check(&[0x04, 0x0f, 0x00, 0x04], Packet::PubRec(4));
    check(&[0x04, 0x10, 0x01, 0x00], Packet::PubRel(256));
}

#[test]
fn subscribe_name_predefined_short() {
    // QoS 1, normal: a topic filter with wildcards.
    check(
        &[0x0a, 0x12, 0x20, 0x00, 0x01, b'a', b'/', b'+', b'/', b'#'],
        Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 1,
            topic: TopicFilter::Name(b"a/+/#"),
        }),
    );
    // DUP + QoS 2, predefined id 0x0102.
    check(
        &[0x07, 0x12, 0xc1, 0x00, 0x02, 0x01, 0x02],
        Packet::Subscribe(Subscribe {
            dup: true,
            qos: QoS::ExactlyOnce,
            msg_id: 2,
            topic: TopicFilter::Predefined(0x0102),
        }),
    );
    // QoS 0, short name "tt".
    check(
        &[0x07, 0x12, 0x02, 0x00, 0x03, b't', b't'],
        Packet::Subscribe(Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 3,
            topic: TopicFilter::Short(*b"tt"),
        }),
    );
}

#[test]
fn suback() {
    check(
        &[0x08, 0x13, 0x20, 0x00, 0x05, 0x00, 0x01, 0x00],
        Packet::SubAck(SubAck {
            qos: QoS::AtLeastOnce,
            topic_id: 5,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        }),
    );
}

#[test]
fn unsubscribe_and_unsuback() {
    check(
        &[0x08, 0x14, 0x00, 0x00, 0x09, b'a', b'/', b'#'],
        Packet::Unsubscribe(Unsubscribe { msg_id: 9, topic: TopicFilter::Name(b"a/#") }),
    );
    check(
        &[0x07, 0x14, 0x01, 0x00, 0x09, 0x00, 0x07],
        Packet::Unsubscribe(Unsubscribe { msg_id: 9, topic: TopicFilter::Predefined(7) }),
    );
    check(
        &[0x07, 0x14, 0x02, 0x00, 0x09, b'z', b'z'],
        Packet::Unsubscribe(Unsubscribe { msg_id: 9, topic: TopicFilter::Short(*b"zz") }),
    );
    check(&[0x04, 0x15, 0x00, 0x09], Packet::UnsubAck(9));
}

#[test]
fn pingreq_with_and_without_client_id() {
    check(&[0x02, 0x16], Packet::PingReq(None));
    check(&[0x05, 0x16, b's', b'n', b'1'], Packet::PingReq(Some(b"sn1")));
}

#[test]
fn pingresp() {
    check(&[0x02, 0x17], Packet::PingResp);
}

#[test]
fn disconnect_with_and_without_duration() {
    check(&[0x02, 0x18], Packet::Disconnect(None));
    check(&[0x04, 0x18, 0x0e, 0x10], Packet::Disconnect(Some(3600)));
}

#[test]
fn willtopicupd() {
    check(
        &[0x05, 0x1a, 0x40, b'w', b'1'],
        Packet::WillTopicUpd(Some(WillTopic {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: b"w1",
        })),
    );
    // The empty WILLTOPICUPD deletes the will.
    check(&[0x02, 0x1a], Packet::WillTopicUpd(None));
}

#[test]
fn willtopicresp_willmsgupd_willmsgresp() {
    check(&[0x03, 0x1b, 0x00], Packet::WillTopicResp(ReturnCode::Accepted));
    check(&[0x05, 0x1c, b'b', b'y', b'e'], Packet::WillMsgUpd(b"bye"));
    check(&[0x03, 0x1d, 0x03], Packet::WillMsgResp(ReturnCode::NotSupported));
}

#[test]
fn encapsulated_frames() {
    // Length 5 = Length + MsgType + Ctrl + 2-octet node id; then a PINGREQ.
    let bytes = [0x05, 0xfe, 0x01, 0xab, 0xcd, 0x02, 0x16];
    let frame = Frame::decode(&bytes).unwrap();
    assert_eq!(
        frame,
        Frame {
            forwarder: Some(Forwarded { radius: 1, node_id: &[0xab, 0xcd] }),
            packet: Packet::PingReq(None),
        }
    );
    let mut buf = [0u8; 64];
    let n = frame.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], &bytes);

    // An empty node id: Length 3.
    let bytes = [0x03, 0xfe, 0x00, 0x04, 0x0e, 0x00, 0x03];
    let frame = Frame::decode(&bytes).unwrap();
    assert_eq!(frame.forwarder, Some(Forwarded { radius: 0, node_id: &[] }));
    assert_eq!(frame.packet, Packet::PubComp(3));

    // The largest node id, 252 octets, and an inner message in the long form.
    let node = [0x11; 252];
    let data = [0x22; 260];
    let frame = Frame {
        forwarder: Some(Forwarded { radius: 3, node_id: &node }),
        packet: Packet::WillMsg(&data),
    };
    let mut buf = [0u8; 600];
    let n = frame.encode(&mut buf).unwrap();
    assert_eq!(n, 255 + 4 + 260);
    assert_eq!(&buf[..3], &[0xff, 0xfe, 0x03]);
    assert_eq!(&buf[255..259], &[0x01, 0x01, 0x08, 0x09]);
    assert_eq!(Frame::decode(&buf[..n]).unwrap(), frame);
}

#[test]
fn every_message_type_has_a_vector() {
    // Guard: the list of MsgTypes is complete and each has its code.
    let codes: Vec<u8> = MsgType::ALL.iter().map(|t| *t as u8).collect();
    assert_eq!(
        codes,
        [
            0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
            0x0f, 0x10, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x1a, 0x1b, 0x1c, 0x1d, 0xfe
        ]
    );
}
