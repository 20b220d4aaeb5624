//! Field types shared by several messages: message types, QoS, topic ids,
//! return codes and the Flags octet.

use core::fmt;

/// The MsgType octet (spec 5.2.2, table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum MsgType {
    Advertise = 0x00,
    SearchGw = 0x01,
    GwInfo = 0x02,
    Connect = 0x04,
    ConnAck = 0x05,
    WillTopicReq = 0x06,
    WillTopic = 0x07,
    WillMsgReq = 0x08,
    WillMsg = 0x09,
    Register = 0x0A,
    RegAck = 0x0B,
    Publish = 0x0C,
    PubAck = 0x0D,
    PubComp = 0x0E,
    PubRec = 0x0F,
    PubRel = 0x10,
    Subscribe = 0x12,
    SubAck = 0x13,
    Unsubscribe = 0x14,
    UnsubAck = 0x15,
    PingReq = 0x16,
    PingResp = 0x17,
    Disconnect = 0x18,
    WillTopicUpd = 0x1A,
    WillTopicResp = 0x1B,
    WillMsgUpd = 0x1C,
    WillMsgResp = 0x1D,
    Encapsulated = 0xFE,
}

impl MsgType {
    /// Every message type, in wire order.
    pub const ALL: [MsgType; 28] = [
        Self::Advertise,
        Self::SearchGw,
        Self::GwInfo,
        Self::Connect,
        Self::ConnAck,
        Self::WillTopicReq,
        Self::WillTopic,
        Self::WillMsgReq,
        Self::WillMsg,
        Self::Register,
        Self::RegAck,
        Self::Publish,
        Self::PubAck,
        Self::PubComp,
        Self::PubRec,
        Self::PubRel,
        Self::Subscribe,
        Self::SubAck,
        Self::Unsubscribe,
        Self::UnsubAck,
        Self::PingReq,
        Self::PingResp,
        Self::Disconnect,
        Self::WillTopicUpd,
        Self::WillTopicResp,
        Self::WillMsgUpd,
        Self::WillMsgResp,
        Self::Encapsulated,
    ];

    /// The type for a MsgType octet, or `None` for a reserved value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => Self::Advertise,
            0x01 => Self::SearchGw,
            0x02 => Self::GwInfo,
            0x04 => Self::Connect,
            0x05 => Self::ConnAck,
            0x06 => Self::WillTopicReq,
            0x07 => Self::WillTopic,
            0x08 => Self::WillMsgReq,
            0x09 => Self::WillMsg,
            0x0A => Self::Register,
            0x0B => Self::RegAck,
            0x0C => Self::Publish,
            0x0D => Self::PubAck,
            0x0E => Self::PubComp,
            0x0F => Self::PubRec,
            0x10 => Self::PubRel,
            0x12 => Self::Subscribe,
            0x13 => Self::SubAck,
            0x14 => Self::Unsubscribe,
            0x15 => Self::UnsubAck,
            0x16 => Self::PingReq,
            0x17 => Self::PingResp,
            0x18 => Self::Disconnect,
            0x1A => Self::WillTopicUpd,
            0x1B => Self::WillTopicResp,
            0x1C => Self::WillMsgUpd,
            0x1D => Self::WillMsgResp,
            0xFE => Self::Encapsulated,
            _ => return None,
        })
    }

    /// The spec's name of the message type, upper case as in the spec.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Advertise => "ADVERTISE",
            Self::SearchGw => "SEARCHGW",
            Self::GwInfo => "GWINFO",
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::WillTopicReq => "WILLTOPICREQ",
            Self::WillTopic => "WILLTOPIC",
            Self::WillMsgReq => "WILLMSGREQ",
            Self::WillMsg => "WILLMSG",
            Self::Register => "REGISTER",
            Self::RegAck => "REGACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubComp => "PUBCOMP",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::WillTopicUpd => "WILLTOPICUPD",
            Self::WillTopicResp => "WILLTOPICRESP",
            Self::WillMsgUpd => "WILLMSGUPD",
            Self::WillMsgResp => "WILLMSGRESP",
            Self::Encapsulated => "ENCAPSULATED",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Quality of service of a PUBLISH, SUBSCRIBE, SUBACK or will (spec 5.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// QoS 0: at most once.
    #[default]
    AtMostOnce,
    /// QoS 1: at least once.
    AtLeastOnce,
    /// QoS 2: exactly once.
    ExactlyOnce,
    /// QoS -1 (`0b11`): a PUBLISH without a connection (spec 6.8).
    NoSession,
}

impl QoS {
    /// The two QoS bits (not shifted).
    pub const fn bits(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
            Self::ExactlyOnce => 2,
            Self::NoSession => 3,
        }
    }

    /// The QoS for two bits (only the low two are read).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Self::AtMostOnce,
            1 => Self::AtLeastOnce,
            2 => Self::ExactlyOnce,
            _ => Self::NoSession,
        }
    }

    /// The level as a number: 0, 1, 2 or -1.
    pub const fn level(self) -> i8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
            Self::ExactlyOnce => 2,
            Self::NoSession => -1,
        }
    }
}

impl fmt::Display for QoS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

/// The TopicIdType bits of the Flags octet (spec 5.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TopicIdType {
    /// `0b00`: a normal topic id (PUBLISH) or a topic name (SUBSCRIBE).
    #[default]
    Normal,
    /// `0b01`: a predefined topic id.
    Predefined,
    /// `0b10`: a two-character short topic name.
    Short,
    /// `0b11`: reserved.
    Reserved,
}

impl TopicIdType {
    /// The two bits.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Predefined => 1,
            Self::Short => 2,
            Self::Reserved => 3,
        }
    }

    /// The type for two bits (only the low two are read).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Self::Normal,
            1 => Self::Predefined,
            2 => Self::Short,
            _ => Self::Reserved,
        }
    }
}

/// The Flags octet (spec 5.3.4), a checked view with typed accessors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    const DUP: u8 = 0x80;
    const RETAIN: u8 = 0x10;
    const WILL: u8 = 0x08;
    const CLEAN: u8 = 0x04;

    /// DUP, bit 7.
    pub const fn dup(self) -> bool {
        self.0 & Self::DUP != 0
    }
    /// QoS, bits 6 and 5.
    pub const fn qos(self) -> QoS {
        QoS::from_bits(self.0 >> 5)
    }
    /// Retain, bit 4.
    pub const fn retain(self) -> bool {
        self.0 & Self::RETAIN != 0
    }
    /// Will, bit 3.
    pub const fn will(self) -> bool {
        self.0 & Self::WILL != 0
    }
    /// CleanSession, bit 2.
    pub const fn clean_session(self) -> bool {
        self.0 & Self::CLEAN != 0
    }
    /// TopicIdType, bits 1 and 0.
    pub const fn topic_id_type(self) -> TopicIdType {
        TopicIdType::from_bits(self.0)
    }

    /// Builds a Flags octet from its fields.
    pub const fn new(
        dup: bool,
        qos: QoS,
        retain: bool,
        will: bool,
        clean_session: bool,
        topic_id_type: TopicIdType,
    ) -> Self {
        let mut v = (qos.bits() << 5) | topic_id_type.bits();
        if dup {
            v |= Self::DUP;
        }
        if retain {
            v |= Self::RETAIN;
        }
        if will {
            v |= Self::WILL;
        }
        if clean_session {
            v |= Self::CLEAN;
        }
        Flags(v)
    }
}

/// A ReturnCode octet (spec 5.3.10); values the spec reserves are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// `0x00` accepted.
    Accepted,
    /// `0x01` rejected: congestion.
    Congestion,
    /// `0x02` rejected: invalid topic ID.
    InvalidTopicId,
    /// `0x03` rejected: not supported.
    NotSupported,
    /// Any other (reserved) value.
    Other(u8),
}

impl ReturnCode {
    /// The octet.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Congestion => 1,
            Self::InvalidTopicId => 2,
            Self::NotSupported => 3,
            Self::Other(v) => v,
        }
    }

    /// The code for an octet; 0 to 3 always map to the named variants.
    pub const fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Accepted,
            1 => Self::Congestion,
            2 => Self::InvalidTopicId,
            3 => Self::NotSupported,
            v => Self::Other(v),
        }
    }

    /// True for [`ReturnCode::Accepted`].
    pub const fn is_accepted(self) -> bool {
        matches!(self, Self::Accepted)
    }
}

impl From<u8> for ReturnCode {
    fn from(v: u8) -> Self {
        Self::from_u8(v)
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted => f.write_str("accepted"),
            Self::Congestion => f.write_str("rejected: congestion"),
            Self::InvalidTopicId => f.write_str("rejected: invalid topic id"),
            Self::NotSupported => f.write_str("rejected: not supported"),
            Self::Other(v) => write!(f, "reserved 0x{v:02x}"),
        }
    }
}

/// The topic of a PUBLISH: the TopicIdType and the two TopicId octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicId {
    /// A topic id registered with REGISTER.
    Normal(u16),
    /// A predefined topic id.
    Predefined(u16),
    /// A two-character short topic name, carried in the TopicId field.
    Short([u8; 2]),
    /// TopicIdType `0b11` (reserved), with the raw TopicId.
    Reserved(u16),
}

impl TopicId {
    /// The TopicIdType of this topic.
    pub const fn id_type(self) -> TopicIdType {
        match self {
            Self::Normal(_) => TopicIdType::Normal,
            Self::Predefined(_) => TopicIdType::Predefined,
            Self::Short(_) => TopicIdType::Short,
            Self::Reserved(_) => TopicIdType::Reserved,
        }
    }

    /// The two TopicId octets as a big-endian number.
    pub const fn raw(self) -> u16 {
        match self {
            Self::Normal(v) | Self::Predefined(v) | Self::Reserved(v) => v,
            Self::Short(s) => u16::from_be_bytes(s),
        }
    }

    /// The topic for a TopicIdType and the TopicId octets.
    pub const fn from_parts(kind: TopicIdType, raw: u16) -> Self {
        match kind {
            TopicIdType::Normal => Self::Normal(raw),
            TopicIdType::Predefined => Self::Predefined(raw),
            TopicIdType::Short => Self::Short(raw.to_be_bytes()),
            TopicIdType::Reserved => Self::Reserved(raw),
        }
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Normal(v) => write!(f, "id {v}"),
            Self::Predefined(v) => write!(f, "predefined {v}"),
            Self::Short(s) => {
                f.write_str("short \"")?;
                crate::display::escaped(f, s)?;
                f.write_str("\"")
            }
            Self::Reserved(v) => write!(f, "reserved-type {v}"),
        }
    }
}
