//! Property tests: any packet survives encode then decode unchanged, and no
//! sequence of octets makes the decoder panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{
    Ack, Advertise, Connect, Forwarded, Frame, GwInfo, Packet, Publish, QoS, Register, ReturnCode,
    SubAck, Subscribe, TopicFilter, TopicId, TopicIdType, Unsubscribe, WillTopic,
};
use proptest::prelude::*;

/// The owned fields from which any [`Packet`] can be built by borrowing.
#[derive(Debug, Clone)]
struct Model {
    kind: u8,
    a: u8,
    b: u16,
    c: u16,
    flag1: bool,
    flag2: bool,
    flag3: bool,
    qos: QoS,
    id_type: TopicIdType,
    bytes: Vec<u8>,
}

const KINDS: u8 = 27;

fn qos() -> impl Strategy<Value = QoS> {
    (0u8..4).prop_map(QoS::from_bits)
}

fn id_type() -> impl Strategy<Value = TopicIdType> {
    (0u8..4).prop_map(TopicIdType::from_bits)
}

fn model() -> impl Strategy<Value = Model> {
    (
        0..KINDS,
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<(bool, bool, bool)>(),
        qos(),
        id_type(),
        // Mostly short, sometimes long enough for the three-octet Length.
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..40),
            1 => proptest::collection::vec(any::<u8>(), 240..700),
        ],
    )
        .prop_map(|(kind, a, b, c, (flag1, flag2, flag3), qos, id_type, bytes)| Model {
            kind,
            a,
            b,
            c,
            flag1,
            flag2,
            flag3,
            qos,
            id_type,
            bytes,
        })
}

impl Model {
    fn packet(&self) -> Packet<'_> {
        let rc = ReturnCode::from_u8(self.a);
        let bytes = self.bytes.as_slice();
        let will =
            || self.flag1.then_some(WillTopic { qos: self.qos, retain: self.flag2, topic: bytes });
        let filter = || match self.id_type {
            TopicIdType::Normal => TopicFilter::Name(bytes),
            TopicIdType::Predefined => TopicFilter::Predefined(self.b),
            TopicIdType::Short => TopicFilter::Short(self.b.to_be_bytes()),
            TopicIdType::Reserved => TopicFilter::Reserved(bytes),
        };
        let ack = Ack { topic_id: self.b, msg_id: self.c, return_code: rc };
        match self.kind {
            0 => Packet::Advertise(Advertise { gw_id: self.a, duration: self.b }),
            1 => Packet::SearchGw { radius: self.a },
            2 => Packet::GwInfo(GwInfo { gw_id: self.a, gw_addr: bytes }),
            3 => Packet::Connect(Connect {
                will: self.flag1,
                clean_session: self.flag2,
                protocol_id: self.a,
                duration: self.b,
                client_id: bytes,
            }),
            4 => Packet::ConnAck(rc),
            5 => Packet::WillTopicReq,
            6 => Packet::WillTopic(will()),
            7 => Packet::WillMsgReq,
            8 => Packet::WillMsg(bytes),
            9 => Packet::Register(Register { topic_id: self.b, msg_id: self.c, topic_name: bytes }),
            10 => Packet::RegAck(ack),
            11 => Packet::Publish(Publish {
                dup: self.flag1,
                qos: self.qos,
                retain: self.flag2,
                topic: TopicId::from_parts(self.id_type, self.b),
                msg_id: self.c,
                data: bytes,
            }),
            12 => Packet::PubAck(ack),
            13 => Packet::PubComp(self.c),
            14 => Packet::PubRec(self.c),
            15 => Packet::PubRel(self.c),
            16 => Packet::Subscribe(Subscribe {
                dup: self.flag1,
                qos: self.qos,
                msg_id: self.c,
                topic: filter(),
            }),
            17 => Packet::SubAck(SubAck {
                qos: self.qos,
                topic_id: self.b,
                msg_id: self.c,
                return_code: rc,
            }),
            18 => Packet::Unsubscribe(Unsubscribe { msg_id: self.c, topic: filter() }),
            19 => Packet::UnsubAck(self.c),
            // An empty ClientId is the PINGREQ without one.
            20 => Packet::PingReq((!bytes.is_empty()).then_some(bytes)),
            21 => Packet::PingResp,
            22 => Packet::Disconnect(self.flag3.then_some(self.b)),
            23 => Packet::WillTopicUpd(will()),
            24 => Packet::WillTopicResp(rc),
            25 => Packet::WillMsgUpd(bytes),
            _ => Packet::WillMsgResp(rc),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn packet_round_trip(m in model()) {
        let p = m.packet();
        let mut buf = vec![0u8; 1024];
        let n = p.encode(&mut buf).unwrap();
        prop_assert_eq!(n, p.encoded_len().unwrap());
        prop_assert_eq!(Packet::decode(&buf[..n]), Ok(p));
        prop_assert_eq!(Frame::decode(&buf[..n]), Ok(Frame::plain(p)));
        // The short Length form whenever it fits.
        prop_assert_eq!(buf[0] == 0x01, n > 255);
        // A buffer one octet short is an error that names the size needed.
        prop_assert!(p.encode(&mut buf[..n - 1]).is_err());
    }

    #[test]
    fn frame_round_trip(m in model(), radius in 0u8..4, node in proptest::collection::vec(any::<u8>(), 0..=252)) {
        let frame = Frame { forwarder: Some(Forwarded { radius, node_id: &node }), packet: m.packet() };
        let mut buf = vec![0u8; 1400];
        let n = frame.encode(&mut buf).unwrap();
        prop_assert_eq!(n, frame.encoded_len().unwrap());
        prop_assert_eq!(Frame::decode(&buf[..n]), Ok(frame));
    }

    #[test]
    fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Packet::decode(&bytes);
        if let Ok(frame) = Frame::decode(&bytes) {
            // Whatever decodes encodes again and decodes to the same frame.
            let mut buf = vec![0u8; 1400];
            let n = frame.encode(&mut buf).unwrap();
            prop_assert_eq!(Frame::decode(&buf[..n]), Ok(frame));
            let _ = frame.to_string();
        }
    }

    #[test]
    fn decode_plausible_headers_never_panics(
        len in any::<u8>(),
        msg_type in any::<u8>(),
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // Bytes that start like a message reach deeper into the decoder.
        let mut bytes = vec![len, msg_type];
        bytes.extend_from_slice(&rest);
        let _ = Frame::decode(&bytes);
        let n = usize::from(len).clamp(2, bytes.len());
        bytes.truncate(n);
        bytes[0] = n as u8;
        let _ = Frame::decode(&bytes);
    }
}

#[test]
fn oversized_node_id_is_an_encode_error() {
    let node = [0u8; 253];
    let frame = Frame {
        forwarder: Some(Forwarded { radius: 0, node_id: &node }),
        packet: Packet::PingResp,
    };
    let mut buf = [0u8; 300];
    assert!(frame.encode(&mut buf).is_err());
}

#[test]
fn oversized_message_is_an_encode_error() {
    let data = vec![0u8; 65535];
    let p = Packet::WillMsg(&data);
    assert!(p.encoded_len().is_err());
    let mut buf = vec![0u8; 70000];
    assert!(p.encode(&mut buf).is_err());
}
