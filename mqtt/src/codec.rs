//! MQTT 3.1.1 packets toward the broker: incremental decode from a
//! `BytesMut` (payloads are split off without copying) and encode into one.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::QoS;

/// A broker sent something that is not MQTT 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The Remaining Length field is longer than four octets.
    #[error("malformed remaining length")]
    BadRemainingLength,
    /// The packet is larger than the configured maximum.
    #[error("packet of {0} octets exceeds the maximum")]
    TooLarge(usize),
    /// A packet type the broker may not send, or reserved flags.
    #[error("unexpected packet type 0x{0:02x}")]
    BadPacketType(u8),
    /// The packet ends before its fields do.
    #[error("truncated {0} packet")]
    Truncated(&'static str),
    /// A topic name that is not UTF-8.
    #[error("topic name is not UTF-8")]
    BadTopic,
    /// QoS 3.
    #[error("invalid QoS")]
    BadQoS,
}

/// A will for CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain.
    pub retain: bool,
}

/// CONNECT. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    /// ClientId.
    pub client_id: String,
    /// CleanSession.
    pub clean_session: bool,
    /// Keepalive in seconds.
    pub keep_alive: u16,
    /// Will.
    pub will: Option<LastWill>,
    /// Username.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
}

impl core::fmt::Debug for ConnectPacket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConnectPacket")
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    /// DUP.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Topic name, shared: the gateway hands the same name to every
    /// sensor that receives the message and keeps one copy per topic.
    pub topic: Arc<str>,
    /// Packet id (QoS 1 and 2 only; 0 at QoS 0).
    pub pkid: u16,
    /// Payload.
    pub payload: Bytes,
}

/// One MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttPacket {
    /// CONNECT (client to broker).
    Connect(ConnectPacket),
    /// CONNACK: session present, return code.
    ConnAck {
        /// Session present.
        session_present: bool,
        /// Return code; 0 is accepted.
        code: u8,
    },
    /// PUBLISH.
    Publish(PublishPacket),
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBSCRIBE: packet id and (filter, QoS) pairs.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<(String, QoS)>,
    },
    /// SUBACK: packet id and one return code per filter (0x80 = refused).
    SubAck {
        /// Packet id.
        pkid: u16,
        /// Return codes.
        codes: Vec<u8>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// UNSUBACK.
    UnsubAck(u16),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
}

fn qos_from(bits: u8) -> Result<QoS, CodecError> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(CodecError::BadQoS),
    }
}

fn take_u16(b: &mut Bytes, what: &'static str) -> Result<u16, CodecError> {
    if b.remaining() < 2 {
        return Err(CodecError::Truncated(what));
    }
    Ok(b.get_u16())
}

fn take_str(b: &mut Bytes, what: &'static str) -> Result<Bytes, CodecError> {
    let len = usize::from(take_u16(b, what)?);
    if b.remaining() < len {
        return Err(CodecError::Truncated(what));
    }
    Ok(b.split_to(len))
}

fn take_string(b: &mut Bytes, what: &'static str) -> Result<String, CodecError> {
    let s = take_str(b, what)?;
    std::str::from_utf8(&s).map(str::to_owned).map_err(|_| CodecError::BadTopic)
}

fn take_shared(b: &mut Bytes, what: &'static str) -> Result<Arc<str>, CodecError> {
    let s = take_str(b, what)?;
    std::str::from_utf8(&s).map(Arc::from).map_err(|_| CodecError::BadTopic)
}

/// Decodes one packet from the front of `buf`, or returns `Ok(None)` when
/// more octets are needed. Packets larger than `max_packet` are errors.
pub fn decode(buf: &mut BytesMut, max_packet: usize) -> Result<Option<MqttPacket>, CodecError> {
    let Some(&header) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if i > 4 {
            return Err(CodecError::BadRemainingLength);
        }
    }
    if len + i > max_packet {
        return Err(CodecError::TooLarge(len + i));
    }
    if buf.len() < i + len {
        buf.reserve(i + len - buf.len());
        return Ok(None);
    }
    buf.advance(i);
    let mut body = buf.split_to(len).freeze();
    let flags = header & 0x0f;
    let packet = match header >> 4 {
        2 => {
            if body.remaining() < 2 {
                return Err(CodecError::Truncated("CONNACK"));
            }
            let sp = body.get_u8();
            MqttPacket::ConnAck { session_present: sp & 1 == 1, code: body.get_u8() }
        }
        3 => {
            let qos = qos_from((flags >> 1) & 3)?;
            let topic = take_shared(&mut body, "PUBLISH")?;
            let pkid = if qos == QoS::AtMostOnce { 0 } else { take_u16(&mut body, "PUBLISH")? };
            MqttPacket::Publish(PublishPacket {
                dup: flags & 0x08 != 0,
                qos,
                retain: flags & 1 == 1,
                topic,
                pkid,
                payload: body,
            })
        }
        4 => MqttPacket::PubAck(take_u16(&mut body, "PUBACK")?),
        5 => MqttPacket::PubRec(take_u16(&mut body, "PUBREC")?),
        6 => MqttPacket::PubRel(take_u16(&mut body, "PUBREL")?),
        7 => MqttPacket::PubComp(take_u16(&mut body, "PUBCOMP")?),
        9 => {
            let pkid = take_u16(&mut body, "SUBACK")?;
            MqttPacket::SubAck { pkid, codes: body.to_vec() }
        }
        11 => MqttPacket::UnsubAck(take_u16(&mut body, "UNSUBACK")?),
        13 => MqttPacket::PingResp,
        // CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT are
        // decoded too, for tests and tools.
        1 => decode_connect(&mut body)?,
        8 => {
            let pkid = take_u16(&mut body, "SUBSCRIBE")?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let f = take_string(&mut body, "SUBSCRIBE")?;
                if !body.has_remaining() {
                    return Err(CodecError::Truncated("SUBSCRIBE"));
                }
                filters.push((f, qos_from(body.get_u8() & 3)?));
            }
            MqttPacket::Subscribe { pkid, filters }
        }
        10 => {
            let pkid = take_u16(&mut body, "UNSUBSCRIBE")?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(take_string(&mut body, "UNSUBSCRIBE")?);
            }
            MqttPacket::Unsubscribe { pkid, filters }
        }
        12 => MqttPacket::PingReq,
        14 => MqttPacket::Disconnect,
        _ => return Err(CodecError::BadPacketType(header)),
    };
    Ok(Some(packet))
}

fn decode_connect(body: &mut Bytes) -> Result<MqttPacket, CodecError> {
    let _protocol = take_string(body, "CONNECT")?;
    if body.remaining() < 4 {
        return Err(CodecError::Truncated("CONNECT"));
    }
    let _level = body.get_u8();
    let flags = body.get_u8();
    let keep_alive = body.get_u16();
    let client_id = take_string(body, "CONNECT")?;
    let will = if flags & 0x04 != 0 {
        let topic = take_string(body, "CONNECT")?;
        let len = usize::from(take_u16(body, "CONNECT")?);
        if body.remaining() < len {
            return Err(CodecError::Truncated("CONNECT"));
        }
        Some(LastWill {
            topic,
            payload: body.split_to(len),
            qos: qos_from((flags >> 3) & 3)?,
            retain: flags & 0x20 != 0,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 { Some(take_string(body, "CONNECT")?) } else { None };
    let password = if flags & 0x40 != 0 {
        let len = usize::from(take_u16(body, "CONNECT")?);
        if body.remaining() < len {
            return Err(CodecError::Truncated("CONNECT"));
        }
        Some(body.split_to(len))
    } else {
        None
    };
    Ok(MqttPacket::Connect(ConnectPacket {
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        will,
        username,
        password,
    }))
}

fn put_len(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len().min(0xffff) as u16);
    out.put_slice(&s[..s.len().min(0xffff)]);
}

fn str_len(s: &[u8]) -> usize {
    2 + s.len().min(0xffff)
}

impl MqttPacket {
    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Self::Connect(c) => {
                let mut len = str_len(b"MQTT") + 4 + str_len(c.client_id.as_bytes());
                let mut flags = 0u8;
                if c.clean_session {
                    flags |= 0x02;
                }
                if let Some(w) = &c.will {
                    flags |= 0x04 | ((w.qos as u8) << 3);
                    if w.retain {
                        flags |= 0x20;
                    }
                    len += str_len(w.topic.as_bytes()) + str_len(&w.payload);
                }
                if let Some(u) = &c.username {
                    flags |= 0x80;
                    len += str_len(u.as_bytes());
                }
                if let Some(p) = &c.password {
                    flags |= 0x40;
                    len += str_len(p);
                }
                out.put_u8(0x10);
                put_len(out, len);
                put_str(out, b"MQTT");
                out.put_u8(4);
                out.put_u8(flags);
                out.put_u16(c.keep_alive);
                put_str(out, c.client_id.as_bytes());
                if let Some(w) = &c.will {
                    put_str(out, w.topic.as_bytes());
                    put_str(out, &w.payload);
                }
                if let Some(u) = &c.username {
                    put_str(out, u.as_bytes());
                }
                if let Some(p) = &c.password {
                    put_str(out, p);
                }
            }
            Self::ConnAck { session_present, code } => {
                out.put_slice(&[0x20, 2, u8::from(*session_present), *code]);
            }
            Self::Publish(p) => {
                let mut header = 0x30 | ((p.qos as u8) << 1);
                if p.dup {
                    header |= 0x08;
                }
                if p.retain {
                    header |= 0x01;
                }
                let id_len = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
                out.put_u8(header);
                put_len(out, str_len(p.topic.as_bytes()) + id_len + p.payload.len());
                put_str(out, p.topic.as_bytes());
                if id_len > 0 {
                    out.put_u16(p.pkid);
                }
                out.put_slice(&p.payload);
            }
            Self::PubAck(id) => out.put_slice(&[0x40, 2, (id >> 8) as u8, *id as u8]),
            Self::PubRec(id) => out.put_slice(&[0x50, 2, (id >> 8) as u8, *id as u8]),
            Self::PubRel(id) => out.put_slice(&[0x62, 2, (id >> 8) as u8, *id as u8]),
            Self::PubComp(id) => out.put_slice(&[0x70, 2, (id >> 8) as u8, *id as u8]),
            Self::Subscribe { pkid, filters } => {
                let len = 2 + filters.iter().map(|(f, _)| str_len(f.as_bytes()) + 1).sum::<usize>();
                out.put_u8(0x82);
                put_len(out, len);
                out.put_u16(*pkid);
                for (f, q) in filters {
                    put_str(out, f.as_bytes());
                    out.put_u8(*q as u8);
                }
            }
            Self::SubAck { pkid, codes } => {
                out.put_u8(0x90);
                put_len(out, 2 + codes.len());
                out.put_u16(*pkid);
                out.put_slice(codes);
            }
            Self::Unsubscribe { pkid, filters } => {
                let len = 2 + filters.iter().map(|f| str_len(f.as_bytes())).sum::<usize>();
                out.put_u8(0xa2);
                put_len(out, len);
                out.put_u16(*pkid);
                for f in filters {
                    put_str(out, f.as_bytes());
                }
            }
            Self::UnsubAck(id) => out.put_slice(&[0xb0, 2, (id >> 8) as u8, *id as u8]),
            Self::PingReq => out.put_slice(&[0xc0, 0]),
            Self::PingResp => out.put_slice(&[0xd0, 0]),
            Self::Disconnect => out.put_slice(&[0xe0, 0]),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round_trip(p: MqttPacket) {
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        let whole = buf.clone();
        // Every prefix is "need more".
        for n in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..n]);
            assert_eq!(decode(&mut part, 1 << 20), Ok(None), "prefix {n} of {p:?}");
        }
        assert_eq!(decode(&mut buf, 1 << 20), Ok(Some(p)));
        assert!(buf.is_empty());
    }

    #[test]
    fn round_trips() {
        round_trip(MqttPacket::Connect(ConnectPacket {
            client_id: "c".into(),
            clean_session: true,
            keep_alive: 30,
            will: Some(LastWill {
                topic: "w".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
        }));
        round_trip(MqttPacket::ConnAck { session_present: true, code: 0 });
        round_trip(MqttPacket::Publish(PublishPacket {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            pkid: 7,
            payload: Bytes::from(vec![1u8; 300]),
        }));
        round_trip(MqttPacket::Publish(PublishPacket {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            pkid: 0,
            payload: Bytes::new(),
        }));
        for p in [
            MqttPacket::PubAck(1),
            MqttPacket::PubRec(2),
            MqttPacket::PubRel(3),
            MqttPacket::PubComp(4),
            MqttPacket::UnsubAck(5),
            MqttPacket::PingReq,
            MqttPacket::PingResp,
            MqttPacket::Disconnect,
        ] {
            round_trip(p);
        }
        round_trip(MqttPacket::Subscribe {
            pkid: 9,
            filters: vec![("a/#".into(), QoS::AtLeastOnce), ("b".into(), QoS::ExactlyOnce)],
        });
        round_trip(MqttPacket::SubAck { pkid: 9, codes: vec![1, 0x80] });
        round_trip(MqttPacket::Unsubscribe { pkid: 10, filters: vec!["a/#".into()] });
    }

    #[test]
    fn vectors() {
        let mut b = BytesMut::new();
        MqttPacket::PubRel(0x0102).encode(&mut b);
        assert_eq!(&b[..], &[0x62, 0x02, 0x01, 0x02]);
        let mut b = BytesMut::from(&[0x20u8, 0x02, 0x01, 0x00][..]);
        assert_eq!(
            decode(&mut b, 100),
            Ok(Some(MqttPacket::ConnAck { session_present: true, code: 0 }))
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        let mut b = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert_eq!(decode(&mut b, 1 << 30), Err(CodecError::BadRemainingLength));
        let mut b = BytesMut::from(&[0x36u8, 0x02, 0x00, 0x00][..]);
        assert_eq!(decode(&mut b, 100), Err(CodecError::BadQoS));
        let mut b = BytesMut::from(&[0x30u8, 0x03, 0x00, 0x05, b'a'][..]);
        assert_eq!(decode(&mut b, 100), Err(CodecError::Truncated("PUBLISH")));
        let mut b = BytesMut::from(&[0x30u8, 0x7f][..]);
        assert_eq!(decode(&mut b, 64), Err(CodecError::TooLarge(129)));
        let mut b = BytesMut::from(&[0xf0u8, 0x00][..]);
        assert!(decode(&mut b, 64).is_err());
    }
}
