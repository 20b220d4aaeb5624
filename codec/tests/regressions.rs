//! Length-header faults other MQTT-SN stacks shipped, each as a test: every
//! one must be a typed error, never a panic or a read past the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{DecodeError, Frame, MsgType, Packet};

fn both(bytes: &[u8]) -> (Result<Packet<'_>, DecodeError>, Result<Frame<'_>, DecodeError>) {
    (Packet::decode(bytes), Frame::decode(bytes))
}

#[test]
fn empty_and_one_octet_datagrams() {
    assert_eq!(Packet::decode(&[]), Err(DecodeError::Truncated));
    assert_eq!(Frame::decode(&[]), Err(DecodeError::Truncated));
    for b in 0..=255u8 {
        assert_eq!(Packet::decode(&[b]), Err(DecodeError::Truncated), "[{b:#04x}]");
        assert_eq!(Frame::decode(&[b]), Err(DecodeError::Truncated), "[{b:#04x}]");
    }
}

#[test]
fn long_form_truncated_after_one_or_two_octets() {
    // 0x01 announces the three-octet Length; the datagram stops inside it.
    assert_eq!(Packet::decode(&[0x01]), Err(DecodeError::Truncated));
    assert_eq!(Packet::decode(&[0x01, 0x00]), Err(DecodeError::Truncated));
    assert_eq!(Packet::decode(&[0x01, 0x00, 0x05]), Err(DecodeError::Truncated));
    assert_eq!(Frame::decode(&[0x01, 0x00, 0x05]), Err(DecodeError::Truncated));
}

#[test]
fn lengths_zero_one_and_two() {
    // Length 0 cannot be a message.
    let (p, f) = both(&[0x00, 0x16]);
    assert_eq!(p, Err(DecodeError::InvalidLength { declared: 0 }));
    assert_eq!(f, Err(DecodeError::InvalidLength { declared: 0 }));
    // Length 1 is the long-form marker: with a long Length of 0, 1, 2 or 3
    // (less than its own four header octets) it is invalid.
    for declared in 0..4u16 {
        let [hi, lo] = declared.to_be_bytes();
        assert_eq!(
            Packet::decode(&[0x01, hi, lo, 0x16]),
            Err(DecodeError::InvalidLength { declared })
        );
    }
    // Length 2: valid for messages without a body, too short for others.
    assert_eq!(Packet::decode(&[0x02, 0x16]), Ok(Packet::PingReq(None)));
    assert_eq!(
        Packet::decode(&[0x02, 0x0c]),
        Err(DecodeError::TooShort { msg_type: MsgType::Publish })
    );
}

#[test]
fn total_length_equal_to_buffer_length_is_required() {
    // Exactly the datagram: fine.
    assert!(Packet::decode(&[0x04, 0x0e, 0x00, 0x01]).is_ok());
    // One octet more in the datagram than declared.
    assert_eq!(
        Packet::decode(&[0x04, 0x0e, 0x00, 0x01, 0x00]),
        Err(DecodeError::LengthMismatch { declared: 4, actual: 5 })
    );
    // Declared longer than the datagram: never read past the end.
    assert_eq!(
        Packet::decode(&[0x05, 0x0e, 0x00, 0x01]),
        Err(DecodeError::LengthMismatch { declared: 5, actual: 4 })
    );
    // The same in the long form.
    assert_eq!(
        Packet::decode(&[0x01, 0x00, 0x07, 0x0e, 0x00, 0x01]),
        Err(DecodeError::LengthMismatch { declared: 7, actual: 6 })
    );
    assert_eq!(
        Packet::decode(&[0x01, 0xff, 0xff, 0x0e, 0x00, 0x01]),
        Err(DecodeError::LengthMismatch { declared: 0xffff, actual: 6 })
    );
}

#[test]
fn length_shorter_than_the_fixed_part() {
    // A CONNECT needs Flags, ProtocolId and Duration (4 octets after MsgType):
    // the crash of a widely used C gateway.
    assert_eq!(
        Packet::decode(&[0x04, 0x04, 0x04, 0x01]),
        Err(DecodeError::TooShort { msg_type: MsgType::Connect })
    );
    assert_eq!(
        Packet::decode(&[0x02, 0x04]),
        Err(DecodeError::TooShort { msg_type: MsgType::Connect })
    );
    // Every type with a fixed part, cut one octet short.
    let cases: &[(MsgType, &[u8])] = &[
        (MsgType::Advertise, &[0x04, 0x00, 0x01, 0x00]),
        (MsgType::SearchGw, &[0x02, 0x01]),
        (MsgType::GwInfo, &[0x02, 0x02]),
        (MsgType::ConnAck, &[0x02, 0x05]),
        (MsgType::Register, &[0x05, 0x0a, 0x00, 0x00, 0x00]),
        (MsgType::RegAck, &[0x06, 0x0b, 0x00, 0x01, 0x00, 0x01]),
        (MsgType::Publish, &[0x06, 0x0c, 0x00, 0x00, 0x01, 0x00]),
        (MsgType::PubAck, &[0x06, 0x0d, 0x00, 0x01, 0x00, 0x01]),
        (MsgType::PubComp, &[0x03, 0x0e, 0x00]),
        (MsgType::PubRec, &[0x03, 0x0f, 0x00]),
        (MsgType::PubRel, &[0x03, 0x10, 0x00]),
        (MsgType::Subscribe, &[0x04, 0x12, 0x00, 0x00]),
        (MsgType::SubAck, &[0x07, 0x13, 0x00, 0x00, 0x01, 0x00, 0x01]),
        (MsgType::Unsubscribe, &[0x04, 0x14, 0x00, 0x00]),
        (MsgType::UnsubAck, &[0x03, 0x15, 0x00]),
        (MsgType::WillTopicResp, &[0x02, 0x1b]),
        (MsgType::WillMsgResp, &[0x02, 0x1d]),
        (MsgType::Disconnect, &[0x03, 0x18, 0x00]),
    ];
    for (msg_type, bytes) in cases {
        assert_eq!(
            Packet::decode(bytes),
            Err(DecodeError::TooShort { msg_type: *msg_type }),
            "{msg_type}"
        );
    }
    // A predefined or short topic in SUBSCRIBE needs two octets.
    assert_eq!(
        Packet::decode(&[0x06, 0x12, 0x01, 0x00, 0x01, 0x00]),
        Err(DecodeError::TooShort { msg_type: MsgType::Subscribe })
    );
}

#[test]
fn fixed_size_messages_with_trailing_octets() {
    assert_eq!(
        Packet::decode(&[0x05, 0x0e, 0x00, 0x01, 0x00]),
        Err(DecodeError::TooLong { msg_type: MsgType::PubComp })
    );
    assert_eq!(
        Packet::decode(&[0x03, 0x17, 0x00]),
        Err(DecodeError::TooLong { msg_type: MsgType::PingResp })
    );
    // DISCONNECT is 2 or 4 octets; 3 is short, 5 is long.
    assert_eq!(
        Packet::decode(&[0x05, 0x18, 0x00, 0x01, 0x00]),
        Err(DecodeError::TooLong { msg_type: MsgType::Disconnect })
    );
    assert_eq!(
        Packet::decode(&[0x08, 0x12, 0x01, 0x00, 0x01, 0x00, 0x02, 0x03]),
        Err(DecodeError::TooLong { msg_type: MsgType::Subscribe })
    );
}

#[test]
fn unknown_message_types() {
    for t in [0x03u8, 0x11, 0x19, 0x1e, 0x30, 0xfd, 0xff] {
        assert_eq!(Packet::decode(&[0x02, t]), Err(DecodeError::UnknownMsgType(t)));
    }
}

#[test]
fn encapsulated_outer_length_past_the_datagram() {
    // Outer Length 8 claims a 5-octet node id, but only 3 octets follow.
    assert_eq!(
        Frame::decode(&[0x08, 0xfe, 0x00, 0x01, 0x02, 0x03]),
        Err(DecodeError::InvalidEncapsulation)
    );
    // Outer Length covers everything: no inner message at all.
    assert_eq!(Frame::decode(&[0x04, 0xfe, 0x00, 0x01]), Err(DecodeError::Truncated));
    // Outer Length shorter than Length, MsgType and Ctrl.
    assert_eq!(Frame::decode(&[0x02, 0xfe, 0x02, 0x16]), Err(DecodeError::InvalidEncapsulation));
    // The long form is not allowed for the encapsulation header.
    assert_eq!(
        Frame::decode(&[0x01, 0x00, 0x05, 0xfe, 0x00, 0x02, 0x16]),
        Err(DecodeError::InvalidEncapsulation)
    );
    // The inner Length must equal what remains.
    assert_eq!(
        Frame::decode(&[0x04, 0xfe, 0x00, 0x07, 0x03, 0x16]),
        Err(DecodeError::LengthMismatch { declared: 3, actual: 2 })
    );
    assert_eq!(
        Frame::decode(&[0x04, 0xfe, 0x00, 0x07, 0x02, 0x16, 0x00]),
        Err(DecodeError::LengthMismatch { declared: 2, actual: 3 })
    );
    // No nesting.
    assert_eq!(
        Frame::decode(&[0x03, 0xfe, 0x00, 0x05, 0xfe, 0x00, 0x02, 0x16]),
        Err(DecodeError::UnexpectedEncapsulation)
    );
    // Packet::decode never accepts an Encapsulated message.
    assert_eq!(
        Packet::decode(&[0x05, 0xfe, 0x00, 0x02, 0x16]),
        Err(DecodeError::UnexpectedEncapsulation)
    );
}

#[test]
fn errors_display_a_reason() {
    let e = DecodeError::LengthMismatch { declared: 9, actual: 4 };
    let text = e.to_string();
    assert!(text.contains('9') && text.contains('4'), "{text}");
    let e: &dyn core::error::Error = &e;
    assert!(e.source().is_none());
}
