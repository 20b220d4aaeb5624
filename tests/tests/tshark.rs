//! An independent decoder checks the codec: a pcap with a datagram of every
//! MQTT-SN message type, encoded by our codec, is decoded by Wireshark's
//! MQTT-SN dissector (`tshark`), and its reading of each frame must match.
//!
//! The dissector has faults of its own. Each known one is listed in
//! `KNOWN_FAULTS`, tied to one frame, and must still show (so the list stays
//! honest); a malformed mark on any other frame fails the test. See
//! docs/tshark.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;

use mqttsn_codec::{
    Ack, Advertise, Connect, Forwarded, Frame, GwInfo, Packet, Publish, QoS, Register, ReturnCode,
    SubAck, Subscribe, TopicFilter, TopicId, Unsubscribe, WillTopic,
};
use mqttsn_tests::pcap::Pcap;

const PORT: u16 = 1884;

/// A known dissector fault: the frame it shows on, and what it is.
struct KnownFault {
    frame: &'static str,
    fault: &'static str,
}

const KNOWN_FAULTS: &[KnownFault] = &[
    KnownFault {
        frame: "WILLTOPIC empty",
        fault: "marks the empty WILLTOPIC (two octets, spec 5.4.7) as malformed",
    },
    KnownFault {
        frame: "WILLTOPICUPD empty",
        fault: "marks the empty WILLTOPICUPD (two octets, spec 5.4.22) as malformed",
    },
    KnownFault {
        frame: "encapsulated PUBLISH, 5-octet node id",
        fault: "reads the Wireless Node Id as a two-octet number (spec 5.5: variable length)",
    },
];

/// One frame: a name, the datagram and the fields tshark must show.
struct Case {
    name: &'static str,
    frame: Frame<'static>,
    fields: Vec<(&'static str, String)>,
}

fn case(name: &'static str, packet: Packet<'static>, fields: &[(&'static str, &str)]) -> Case {
    Case {
        name,
        frame: Frame::plain(packet),
        fields: fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    }
}

fn ty(t: u8) -> (&'static str, String) {
    ("mqttsn.msg.type", format!("0x{t:02x}"))
}

static LONG: [u8; 300] = [0x61; 300];

fn cases() -> Vec<Case> {
    let mut v = vec![
        case(
            "ADVERTISE",
            Packet::Advertise(Advertise { gw_id: 7, duration: 900 }),
            &[("mqttsn.gw.id", "7"), ("mqttsn.adv.interv", "900")],
        ),
        case("SEARCHGW", Packet::SearchGw { radius: 2 }, &[("mqttsn.radius", "2")]),
        case("GWINFO", Packet::GwInfo(GwInfo { gw_id: 3, gw_addr: b"" }), &[("mqttsn.gw.id", "3")]),
        case(
            "CONNECT",
            Packet::Connect(Connect {
                will: true,
                clean_session: true,
                protocol_id: 1,
                duration: 60,
                client_id: b"sensor-0042",
            }),
            &[
                ("mqttsn.will", "1"),
                ("mqttsn.clean.session", "1"),
                ("mqttsn.protocol.id", "0x01"),
                ("mqttsn.keep.alive", "60"),
                ("mqttsn.client.id", "sensor-0042"),
            ],
        ),
        case("CONNACK", Packet::ConnAck(ReturnCode::Congestion), &[("mqttsn.return.code", "0x01")]),
        case("WILLTOPICREQ", Packet::WillTopicReq, &[]),
        case(
            "WILLTOPIC",
            Packet::WillTopic(Some(WillTopic {
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: b"w/t",
            })),
            // The dissector shows only the TopicIdType bits of these Flags.
            &[("mqttsn.topic.id.type", "0x00"), ("mqttsn.will.topic", "w/t")],
        ),
        case("WILLTOPIC empty", Packet::WillTopic(None), &[]),
        case("WILLMSGREQ", Packet::WillMsgReq, &[]),
        case("WILLMSG", Packet::WillMsg(b"bye"), &[("mqttsn.will.msg", "bye")]),
        case(
            "REGISTER",
            Packet::Register(Register { topic_id: 0x0102, msg_id: 7, topic_name: b"a/b" }),
            &[("mqttsn.topic.id", "258"), ("mqttsn.msg.id", "7"), ("mqttsn.topic", "a/b")],
        ),
        case(
            "REGACK",
            Packet::RegAck(Ack { topic_id: 5, msg_id: 8, return_code: ReturnCode::InvalidTopicId }),
            &[("mqttsn.topic.id", "5"), ("mqttsn.msg.id", "8"), ("mqttsn.return.code", "0x02")],
        ),
    ];
    for (name, qos, topic, q) in [
        ("PUBLISH QoS 0 normal", QoS::AtMostOnce, TopicId::Normal(1), "0x00"),
        ("PUBLISH QoS 1 predefined", QoS::AtLeastOnce, TopicId::Predefined(9), "0x01"),
        ("PUBLISH QoS 2 short", QoS::ExactlyOnce, TopicId::Short(*b"ab"), "0x02"),
        ("PUBLISH QoS -1 predefined", QoS::NoSession, TopicId::Predefined(10), "0x03"),
    ] {
        let id_type = format!("0x{:02x}", topic.id_type().bits());
        let mut fields = vec![
            ("mqttsn.qos", q.to_owned()),
            ("mqttsn.topic.id.type", id_type),
            ("mqttsn.msg.id", "3".into()),
        ];
        fields.push(match topic {
            // The dissector shows a short name as the number of its octets.
            TopicId::Short(s) => ("mqttsn.topic.id", u16::from_be_bytes(s).to_string()),
            t => ("mqttsn.topic.id", t.raw().to_string()),
        });
        fields.push(("mqttsn.pub.msg", "21.5".into()));
        v.push(Case {
            name,
            frame: Frame::plain(Packet::Publish(Publish {
                dup: false,
                qos,
                retain: true,
                topic,
                msg_id: 3,
                data: b"21.5",
            })),
            fields,
        });
    }
    v.push(Case {
        name: "PUBLISH long Length form",
        frame: Frame::plain(Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicId::Normal(4),
            msg_id: 11,
            data: &LONG,
        })),
        fields: vec![
            ("mqttsn.msg.len", "309".into()),
            ("mqttsn.dup", "1".into()),
            ("mqttsn.msg.id", "11".into()),
            ("mqttsn.pub.msg", "a".repeat(300)),
        ],
    });
    v.extend([
        case(
            "PUBACK",
            Packet::PubAck(Ack { topic_id: 4, msg_id: 11, return_code: ReturnCode::Accepted }),
            &[("mqttsn.topic.id", "4"), ("mqttsn.msg.id", "11"), ("mqttsn.return.code", "0x00")],
        ),
        case("PUBCOMP", Packet::PubComp(12), &[("mqttsn.msg.id", "12")]),
        case("PUBREC", Packet::PubRec(13), &[("mqttsn.msg.id", "13")]),
        case("PUBREL", Packet::PubRel(14), &[("mqttsn.msg.id", "14")]),
        case(
            "SUBSCRIBE name",
            Packet::Subscribe(Subscribe {
                dup: false,
                qos: QoS::AtLeastOnce,
                msg_id: 15,
                topic: TopicFilter::Name(b"room/+/temp"),
            }),
            &[("mqttsn.msg.id", "15"), ("mqttsn.topic.name.or.id", "room/+/temp")],
        ),
        case(
            "SUBSCRIBE predefined",
            Packet::Subscribe(Subscribe {
                dup: false,
                qos: QoS::AtMostOnce,
                msg_id: 16,
                topic: TopicFilter::Predefined(0x4142),
            }),
            &[("mqttsn.msg.id", "16"), ("mqttsn.topic.id.type", "0x01")],
        ),
        case(
            "SUBSCRIBE short",
            Packet::Subscribe(Subscribe {
                dup: false,
                qos: QoS::ExactlyOnce,
                msg_id: 17,
                topic: TopicFilter::Short(*b"zz"),
            }),
            &[("mqttsn.msg.id", "17"), ("mqttsn.topic.name.or.id", "zz")],
        ),
        case(
            "SUBACK",
            Packet::SubAck(SubAck {
                qos: QoS::AtLeastOnce,
                topic_id: 18,
                msg_id: 19,
                return_code: ReturnCode::Accepted,
            }),
            &[("mqttsn.topic.id", "18"), ("mqttsn.msg.id", "19"), ("mqttsn.return.code", "0x00")],
        ),
        case(
            "UNSUBSCRIBE",
            Packet::Unsubscribe(Unsubscribe { msg_id: 20, topic: TopicFilter::Name(b"room/#") }),
            &[("mqttsn.msg.id", "20"), ("mqttsn.topic.name.or.id", "room/#")],
        ),
        case("UNSUBACK", Packet::UnsubAck(21), &[("mqttsn.msg.id", "21")]),
        case("PINGREQ", Packet::PingReq(None), &[]),
        case(
            "PINGREQ with ClientId",
            Packet::PingReq(Some(b"sleepy")),
            &[("mqttsn.client.id", "sleepy")],
        ),
        case("PINGRESP", Packet::PingResp, &[]),
        case("DISCONNECT", Packet::Disconnect(None), &[]),
        case(
            "DISCONNECT with Duration",
            Packet::Disconnect(Some(3600)),
            &[("mqttsn.sleep.timer", "3600")],
        ),
        case(
            "WILLTOPICUPD",
            Packet::WillTopicUpd(Some(WillTopic {
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: b"w2",
            })),
            &[("mqttsn.will.topic", "w2")],
        ),
        case("WILLTOPICUPD empty", Packet::WillTopicUpd(None), &[]),
        case(
            "WILLTOPICRESP",
            Packet::WillTopicResp(ReturnCode::Accepted),
            &[("mqttsn.return.code", "0x00")],
        ),
        case("WILLMSGUPD", Packet::WillMsgUpd(b"new"), &[("mqttsn.will.msg", "new")]),
        case(
            "WILLMSGRESP",
            Packet::WillMsgResp(ReturnCode::NotSupported),
            &[("mqttsn.return.code", "0x03")],
        ),
    ]);
    v.push(Case {
        name: "encapsulated PINGREQ, 2-octet node id",
        frame: Frame {
            forwarder: Some(Forwarded { radius: 1, node_id: &[0xab, 0xcd] }),
            packet: Packet::PingReq(None),
        },
        fields: vec![
            ("mqttsn.control.info", "0x01".into()),
            ("mqttsn.wireless.node.id", "43981".into()),
            ty(0xfe),
            ty(0x16),
        ],
    });
    v.push(Case {
        name: "encapsulated PUBLISH, 5-octet node id",
        frame: Frame {
            forwarder: Some(Forwarded { radius: 0, node_id: &[1, 2, 3, 4, 5] }),
            packet: Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: TopicId::Normal(1),
                msg_id: 0,
                data: b"x",
            }),
        },
        fields: vec![ty(0xfe)],
    });
    for c in &mut v {
        if c.frame.forwarder.is_none() {
            c.fields.insert(0, ty(c.frame.packet.msg_type() as u8));
            c.fields.insert(1, ("mqttsn.msg.len", c.frame.encoded_len().unwrap().to_string()));
        }
    }
    v
}

/// Every (key, value) leaf of a JSON tree.
fn flatten(v: &serde_json::Value, out: &mut BTreeMap<String, Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) => {
                        out.entry(k.clone()).or_default().push(s.clone());
                    }
                    other => {
                        out.entry(k.clone()).or_default();
                        flatten(other, out);
                    }
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| flatten(v, out)),
        _ => {}
    }
}

fn malformed(fields: &BTreeMap<String, Vec<String>>) -> bool {
    fields.contains_key("_ws.malformed")
        || fields
            .get("_ws.expert.severity")
            .is_some_and(|s| s.iter().any(|s| s.parse::<u32>().unwrap_or(0) >= 8_388_608))
}

#[test]
fn tshark_reads_every_message_type_as_we_encode_it() {
    let version = Command::new("tshark").arg("--version").output().unwrap_or_else(|e| {
        panic!("tshark is required for this test ({e}); scripts/test installs it (Debian package tshark)")
    });
    assert!(version.status.success(), "tshark --version failed");

    let cases = cases();
    let mut pcap = Pcap::new();
    for (i, c) in cases.iter().enumerate() {
        let mut buf = vec![0u8; 1024];
        let n = c.frame.encode(&mut buf).unwrap();
        // Our own decoder agrees with itself first.
        assert_eq!(Frame::decode(&buf[..n]).unwrap(), c.frame, "{}", c.name);
        pcap.udp(40_000 + i as u16, PORT, &buf[..n]);
    }
    let dir = std::env::temp_dir().join(mqttsn_tests::broker::unique("mqttsn-tshark"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("all-messages.pcap");
    pcap.write_to(std::fs::File::create(&file).unwrap()).unwrap();
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-d", &format!("udp.port=={PORT},mqttsn"), "-T", "json"])
        .output()
        .expect("run tshark");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tshark JSON");
    let frames = json.as_array().expect("an array of frames");
    assert_eq!(frames.len(), cases.len());

    let mut failures = Vec::new();
    for (c, f) in cases.iter().zip(frames) {
        let mut fields = BTreeMap::new();
        flatten(&f["_source"]["layers"], &mut fields);
        if !fields.contains_key("mqttsn") {
            failures.push(format!("{}: not dissected as MQTT-SN", c.name));
            continue;
        }
        let known = KNOWN_FAULTS.iter().find(|k| k.frame == c.name);
        let bad = malformed(&fields)
            || (c.name == "encapsulated PUBLISH, 5-octet node id"
                && !fields.get("mqttsn.msg.type").is_some_and(|t| t.iter().any(|t| t == "0x0c")));
        match (known, bad) {
            (None, true) => {
                failures.push(format!("{}: the dissector marks it malformed: {fields:?}", c.name));
            }
            (Some(k), false) => failures.push(format!(
                "{}: the known fault ({}) no longer shows: remove it from KNOWN_FAULTS",
                c.name, k.fault
            )),
            _ => {}
        }
        for (key, want) in &c.fields {
            let got = fields.get(*key);
            if !got.is_some_and(|g| g.iter().any(|g| g == want)) {
                failures.push(format!("{}: {key} = {got:?}, expected {want:?}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
}
