//! Every MQTT-SN v1.2 message (spec 5.4) as a borrowed representation with
//! `decode`, `encoded_len` and `encode`.

use crate::wire::{Header, Reader, Writer};
use crate::{DecodeError, EncodeError, Flags, MsgType, QoS, ReturnCode, TopicId, TopicIdType};

/// ADVERTISE (spec 5.4.1): a gateway announces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Advertise {
    /// The gateway id.
    pub gw_id: u8,
    /// Seconds until the next ADVERTISE.
    pub duration: u16,
}

/// GWINFO (spec 5.4.3): the answer to SEARCHGW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GwInfo<'a> {
    /// The gateway id.
    pub gw_id: u8,
    /// The gateway's address; empty when a gateway sends GWINFO itself.
    pub gw_addr: &'a [u8],
}

/// CONNECT (spec 5.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connect<'a> {
    /// The Will flag: the client wants the will handshake.
    pub will: bool,
    /// The CleanSession flag.
    pub clean_session: bool,
    /// The ProtocolId; 0x01 is the only defined value.
    pub protocol_id: u8,
    /// The keepalive period in seconds; 0 means no keepalive.
    pub duration: u16,
    /// The ClientId as sent; see [`crate::validate::client_id`].
    pub client_id: &'a [u8],
}

/// The variable part of WILLTOPIC and WILLTOPICUPD (spec 5.4.7, 5.4.22).
/// The empty message (no Flags, no topic) is `None` in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WillTopic<'a> {
    /// The will's QoS.
    pub qos: QoS,
    /// The will's retain flag.
    pub retain: bool,
    /// The will topic as sent.
    pub topic: &'a [u8],
}

/// REGISTER (spec 5.4.10), in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Register<'a> {
    /// 0x0000 from a client; the assigned id from a gateway.
    pub topic_id: u16,
    /// The message id.
    pub msg_id: u16,
    /// The topic name as sent.
    pub topic_name: &'a [u8],
}

/// REGACK and PUBACK share one shape: TopicId, MsgId, ReturnCode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The topic id (raw TopicId octets).
    pub topic_id: u16,
    /// The message id being acknowledged.
    pub msg_id: u16,
    /// The result.
    pub return_code: ReturnCode,
}

/// PUBLISH (spec 5.4.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Publish<'a> {
    /// DUP: a retransmission.
    pub dup: bool,
    /// QoS 0, 1, 2 or -1.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// The topic: TopicIdType and TopicId.
    pub topic: TopicId,
    /// The message id (0x0000 at QoS 0 and -1).
    pub msg_id: u16,
    /// The payload, borrowed from the datagram.
    pub data: &'a [u8],
}

/// The topic of a SUBSCRIBE or UNSUBSCRIBE (spec 5.4.15, 5.4.17): a name
/// (possibly with wildcards), a predefined id or a short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicFilter<'a> {
    /// TopicIdType normal: a topic name or filter.
    Name(&'a [u8]),
    /// TopicIdType predefined: a two-octet id.
    Predefined(u16),
    /// TopicIdType short: a two-character name.
    Short([u8; 2]),
    /// TopicIdType reserved: the raw field.
    Reserved(&'a [u8]),
}

impl TopicFilter<'_> {
    /// The TopicIdType that goes with this topic.
    pub const fn id_type(&self) -> TopicIdType {
        match self {
            Self::Name(_) => TopicIdType::Normal,
            Self::Predefined(_) => TopicIdType::Predefined,
            Self::Short(_) => TopicIdType::Short,
            Self::Reserved(_) => TopicIdType::Reserved,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Name(n) | Self::Reserved(n) => n.len(),
            Self::Predefined(_) | Self::Short(_) => 2,
        }
    }

    fn emit(&self, w: &mut Writer<'_>) {
        match self {
            Self::Name(n) | Self::Reserved(n) => w.bytes(n),
            Self::Predefined(id) => w.u16(*id),
            Self::Short(s) => w.bytes(s),
        }
    }

    fn parse<'a>(
        kind: TopicIdType,
        r: &mut Reader<'a>,
        msg_type: MsgType,
    ) -> Result<TopicFilter<'a>, DecodeError> {
        Ok(match kind {
            TopicIdType::Normal => TopicFilter::Name(r.rest()),
            TopicIdType::Reserved => TopicFilter::Reserved(r.rest()),
            TopicIdType::Predefined | TopicIdType::Short => {
                let v = r.u16()?;
                if !r.is_empty() {
                    return Err(DecodeError::TooLong { msg_type });
                }
                if kind == TopicIdType::Short {
                    TopicFilter::Short(v.to_be_bytes())
                } else {
                    TopicFilter::Predefined(v)
                }
            }
        })
    }
}

/// SUBSCRIBE (spec 5.4.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subscribe<'a> {
    /// DUP: a retransmission.
    pub dup: bool,
    /// The requested QoS.
    pub qos: QoS,
    /// The message id.
    pub msg_id: u16,
    /// What to subscribe to.
    pub topic: TopicFilter<'a>,
}

/// SUBACK (spec 5.4.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubAck {
    /// The granted QoS.
    pub qos: QoS,
    /// The assigned topic id; 0x0000 for wildcards and short names.
    pub topic_id: u16,
    /// The message id of the SUBSCRIBE.
    pub msg_id: u16,
    /// The result.
    pub return_code: ReturnCode,
}

/// UNSUBSCRIBE (spec 5.4.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Unsubscribe<'a> {
    /// The message id.
    pub msg_id: u16,
    /// What to unsubscribe from.
    pub topic: TopicFilter<'a>,
}

/// One MQTT-SN message, borrowing its variable-length fields from the
/// datagram it was decoded from.
///
/// The forwarder Encapsulated message is not a `Packet`: it wraps one, see
/// [`crate::Frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Packet<'a> {
    /// ADVERTISE.
    Advertise(Advertise),
    /// SEARCHGW with its Radius.
    SearchGw {
        /// The broadcast radius.
        radius: u8,
    },
    /// GWINFO.
    GwInfo(GwInfo<'a>),
    /// CONNECT.
    Connect(Connect<'a>),
    /// CONNACK.
    ConnAck(ReturnCode),
    /// WILLTOPICREQ.
    WillTopicReq,
    /// WILLTOPIC; `None` is the empty WILLTOPIC (two octets) that means no will.
    WillTopic(Option<WillTopic<'a>>),
    /// WILLMSGREQ.
    WillMsgReq,
    /// WILLMSG with the will message.
    WillMsg(&'a [u8]),
    /// REGISTER.
    Register(Register<'a>),
    /// REGACK.
    RegAck(Ack),
    /// PUBLISH.
    Publish(Publish<'a>),
    /// PUBACK.
    PubAck(Ack),
    /// PUBCOMP with its MsgId.
    PubComp(u16),
    /// PUBREC with its MsgId.
    PubRec(u16),
    /// PUBREL with its MsgId.
    PubRel(u16),
    /// SUBSCRIBE.
    Subscribe(Subscribe<'a>),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe<'a>),
    /// UNSUBACK with its MsgId.
    UnsubAck(u16),
    /// PINGREQ; `Some(client_id)` from a sleeping client waking up.
    PingReq(Option<&'a [u8]>),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT; `Some(duration)` asks to sleep for that many seconds.
    Disconnect(Option<u16>),
    /// WILLTOPICUPD; `None` (the empty message) deletes the will.
    WillTopicUpd(Option<WillTopic<'a>>),
    /// WILLTOPICRESP.
    WillTopicResp(ReturnCode),
    /// WILLMSGUPD with the new will message.
    WillMsgUpd(&'a [u8]),
    /// WILLMSGRESP.
    WillMsgResp(ReturnCode),
}

impl<'a> Packet<'a> {
    /// The message type.
    pub const fn msg_type(&self) -> MsgType {
        match self {
            Self::Advertise(_) => MsgType::Advertise,
            Self::SearchGw { .. } => MsgType::SearchGw,
            Self::GwInfo(_) => MsgType::GwInfo,
            Self::Connect(_) => MsgType::Connect,
            Self::ConnAck(_) => MsgType::ConnAck,
            Self::WillTopicReq => MsgType::WillTopicReq,
            Self::WillTopic(_) => MsgType::WillTopic,
            Self::WillMsgReq => MsgType::WillMsgReq,
            Self::WillMsg(_) => MsgType::WillMsg,
            Self::Register(_) => MsgType::Register,
            Self::RegAck(_) => MsgType::RegAck,
            Self::Publish(_) => MsgType::Publish,
            Self::PubAck(_) => MsgType::PubAck,
            Self::PubComp(_) => MsgType::PubComp,
            Self::PubRec(_) => MsgType::PubRec,
            Self::PubRel(_) => MsgType::PubRel,
            Self::Subscribe(_) => MsgType::Subscribe,
            Self::SubAck(_) => MsgType::SubAck,
            Self::Unsubscribe(_) => MsgType::Unsubscribe,
            Self::UnsubAck(_) => MsgType::UnsubAck,
            Self::PingReq(_) => MsgType::PingReq,
            Self::PingResp => MsgType::PingResp,
            Self::Disconnect(_) => MsgType::Disconnect,
            Self::WillTopicUpd(_) => MsgType::WillTopicUpd,
            Self::WillTopicResp(_) => MsgType::WillTopicResp,
            Self::WillMsgUpd(_) => MsgType::WillMsgUpd,
            Self::WillMsgResp(_) => MsgType::WillMsgResp,
        }
    }

    /// Decodes one whole message; `buf` must be exactly the message (its
    /// Length field must equal `buf.len()`).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let (header, body) = Header::split(buf)?;
        let msg_type = MsgType::from_u8(header.msg_type)
            .ok_or(DecodeError::UnknownMsgType(header.msg_type))?;
        Self::decode_body(msg_type, body)
    }

    /// Decodes the part of a message after its MsgType octet.
    pub fn decode_body(msg_type: MsgType, body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, msg_type);
        let packet = match msg_type {
            MsgType::Advertise => Self::Advertise(Advertise { gw_id: r.u8()?, duration: r.u16()? }),
            MsgType::SearchGw => Self::SearchGw { radius: r.u8()? },
            MsgType::GwInfo => Self::GwInfo(GwInfo { gw_id: r.u8()?, gw_addr: r.rest() }),
            MsgType::Connect => {
                let flags = Flags(r.u8()?);
                Self::Connect(Connect {
                    will: flags.will(),
                    clean_session: flags.clean_session(),
                    protocol_id: r.u8()?,
                    duration: r.u16()?,
                    client_id: r.rest(),
                })
            }
            MsgType::ConnAck => Self::ConnAck(ReturnCode::from_u8(r.u8()?)),
            MsgType::WillTopicReq => Self::WillTopicReq,
            MsgType::WillTopic => Self::WillTopic(Self::will_topic(&mut r)?),
            MsgType::WillMsgReq => Self::WillMsgReq,
            MsgType::WillMsg => Self::WillMsg(r.rest()),
            MsgType::Register => Self::Register(Register {
                topic_id: r.u16()?,
                msg_id: r.u16()?,
                topic_name: r.rest(),
            }),
            MsgType::RegAck => Self::RegAck(Self::ack(&mut r)?),
            MsgType::Publish => {
                let flags = Flags(r.u8()?);
                Self::Publish(Publish {
                    dup: flags.dup(),
                    qos: flags.qos(),
                    retain: flags.retain(),
                    topic: TopicId::from_parts(flags.topic_id_type(), r.u16()?),
                    msg_id: r.u16()?,
                    data: r.rest(),
                })
            }
            MsgType::PubAck => Self::PubAck(Self::ack(&mut r)?),
            MsgType::PubComp => Self::PubComp(r.u16()?),
            MsgType::PubRec => Self::PubRec(r.u16()?),
            MsgType::PubRel => Self::PubRel(r.u16()?),
            MsgType::Subscribe => {
                let flags = Flags(r.u8()?);
                let msg_id = r.u16()?;
                Self::Subscribe(Subscribe {
                    dup: flags.dup(),
                    qos: flags.qos(),
                    msg_id,
                    topic: TopicFilter::parse(flags.topic_id_type(), &mut r, msg_type)?,
                })
            }
            MsgType::SubAck => {
                let flags = Flags(r.u8()?);
                Self::SubAck(SubAck {
                    qos: flags.qos(),
                    topic_id: r.u16()?,
                    msg_id: r.u16()?,
                    return_code: ReturnCode::from_u8(r.u8()?),
                })
            }
            MsgType::Unsubscribe => {
                let flags = Flags(r.u8()?);
                let msg_id = r.u16()?;
                Self::Unsubscribe(Unsubscribe {
                    msg_id,
                    topic: TopicFilter::parse(flags.topic_id_type(), &mut r, msg_type)?,
                })
            }
            MsgType::UnsubAck => Self::UnsubAck(r.u16()?),
            MsgType::PingReq => {
                let id = r.rest();
                Self::PingReq(if id.is_empty() { None } else { Some(id) })
            }
            MsgType::PingResp => Self::PingResp,
            MsgType::Disconnect => {
                Self::Disconnect(if r.is_empty() { None } else { Some(r.u16()?) })
            }
            MsgType::WillTopicUpd => Self::WillTopicUpd(Self::will_topic(&mut r)?),
            MsgType::WillTopicResp => Self::WillTopicResp(ReturnCode::from_u8(r.u8()?)),
            MsgType::WillMsgUpd => Self::WillMsgUpd(r.rest()),
            MsgType::WillMsgResp => Self::WillMsgResp(ReturnCode::from_u8(r.u8()?)),
            MsgType::Encapsulated => return Err(DecodeError::UnexpectedEncapsulation),
        };
        r.end()?;
        Ok(packet)
    }

    fn will_topic(r: &mut Reader<'a>) -> Result<Option<WillTopic<'a>>, DecodeError> {
        if r.is_empty() {
            return Ok(None);
        }
        let flags = Flags(r.u8()?);
        Ok(Some(WillTopic { qos: flags.qos(), retain: flags.retain(), topic: r.rest() }))
    }

    fn ack(r: &mut Reader<'a>) -> Result<Ack, DecodeError> {
        Ok(Ack { topic_id: r.u16()?, msg_id: r.u16()?, return_code: ReturnCode::from_u8(r.u8()?) })
    }

    /// The octets after the MsgType octet.
    pub fn body_len(&self) -> usize {
        match self {
            Self::Advertise(_) => 3,
            Self::SearchGw { .. } => 1,
            Self::GwInfo(g) => 1 + g.gw_addr.len(),
            Self::Connect(c) => 4 + c.client_id.len(),
            Self::ConnAck(_) | Self::WillTopicResp(_) | Self::WillMsgResp(_) => 1,
            Self::WillTopicReq | Self::WillMsgReq | Self::PingResp => 0,
            Self::WillTopic(w) | Self::WillTopicUpd(w) => w.map_or(0, |w| 1 + w.topic.len()),
            Self::WillMsg(m) | Self::WillMsgUpd(m) => m.len(),
            Self::Register(r) => 4 + r.topic_name.len(),
            Self::RegAck(_) | Self::PubAck(_) => 5,
            Self::Publish(p) => 5 + p.data.len(),
            Self::PubComp(_) | Self::PubRec(_) | Self::PubRel(_) | Self::UnsubAck(_) => 2,
            Self::Subscribe(s) => 3 + s.topic.len(),
            Self::SubAck(_) => 6,
            Self::Unsubscribe(u) => 3 + u.topic.len(),
            Self::PingReq(id) => id.map_or(0, <[u8]>::len),
            Self::Disconnect(d) => d.map_or(0, |_| 2),
        }
    }

    /// The total encoded length, header included (short Length form when
    /// it fits).
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Header::total_len(self.body_len())
    }

    /// Encodes the message into `buf` and returns the octets written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let total = self.encoded_len()?;
        let mut w = Writer::new(buf, total)?;
        Header::emit(&mut w, total, self.msg_type());
        self.emit_body(&mut w);
        debug_assert_eq!(w.pos(), total);
        Ok(total)
    }

    fn emit_body(&self, w: &mut Writer<'_>) {
        let none = TopicIdType::Normal;
        match self {
            Self::Advertise(a) => {
                w.u8(a.gw_id);
                w.u16(a.duration);
            }
            Self::SearchGw { radius } => w.u8(*radius),
            Self::GwInfo(g) => {
                w.u8(g.gw_id);
                w.bytes(g.gw_addr);
            }
            Self::Connect(c) => {
                w.u8(Flags::new(false, QoS::AtMostOnce, false, c.will, c.clean_session, none).0);
                w.u8(c.protocol_id);
                w.u16(c.duration);
                w.bytes(c.client_id);
            }
            Self::ConnAck(rc) | Self::WillTopicResp(rc) | Self::WillMsgResp(rc) => w.u8(rc.to_u8()),
            Self::WillTopicReq | Self::WillMsgReq | Self::PingResp => {}
            Self::WillTopic(will) | Self::WillTopicUpd(will) => {
                if let Some(will) = will {
                    w.u8(Flags::new(false, will.qos, will.retain, false, false, none).0);
                    w.bytes(will.topic);
                }
            }
            Self::WillMsg(m) | Self::WillMsgUpd(m) => w.bytes(m),
            Self::Register(r) => {
                w.u16(r.topic_id);
                w.u16(r.msg_id);
                w.bytes(r.topic_name);
            }
            Self::RegAck(a) | Self::PubAck(a) => {
                w.u16(a.topic_id);
                w.u16(a.msg_id);
                w.u8(a.return_code.to_u8());
            }
            Self::Publish(p) => {
                w.u8(Flags::new(p.dup, p.qos, p.retain, false, false, p.topic.id_type()).0);
                w.u16(p.topic.raw());
                w.u16(p.msg_id);
                w.bytes(p.data);
            }
            Self::PubComp(id) | Self::PubRec(id) | Self::PubRel(id) | Self::UnsubAck(id) => {
                w.u16(*id);
            }
            Self::Subscribe(s) => {
                w.u8(Flags::new(s.dup, s.qos, false, false, false, s.topic.id_type()).0);
                w.u16(s.msg_id);
                s.topic.emit(w);
            }
            Self::SubAck(s) => {
                w.u8(Flags::new(false, s.qos, false, false, false, none).0);
                w.u16(s.topic_id);
                w.u16(s.msg_id);
                w.u8(s.return_code.to_u8());
            }
            Self::Unsubscribe(u) => {
                w.u8(Flags::new(false, QoS::AtMostOnce, false, false, false, u.topic.id_type()).0);
                w.u16(u.msg_id);
                u.topic.emit(w);
            }
            Self::PingReq(id) => w.bytes(id.unwrap_or_default()),
            Self::Disconnect(d) => {
                if let Some(d) = d {
                    w.u16(*d);
                }
            }
        }
    }
}
