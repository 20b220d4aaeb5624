//! One-line human-readable renderings of packets, for logs and `mqttsn dump`.

use core::fmt;

use crate::{Frame, Packet, TopicFilter};

/// Writes `bytes` as text, escaping anything that is not printable ASCII.
pub(crate) fn escaped(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for &b in bytes {
        match b {
            b'"' => f.write_str("\\\"")?,
            b'\\' => f.write_str("\\\\")?,
            0x20..=0x7e => fmt::Write::write_char(f, char::from(b))?,
            _ => write!(f, "\\x{b:02x}")?,
        }
    }
    Ok(())
}

struct Q<'a>(&'a [u8]);

impl fmt::Display for Q<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        escaped(f, self.0)?;
        f.write_str("\"")
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "name {}", Q(n)),
            Self::Predefined(id) => write!(f, "predefined {id}"),
            Self::Short(s) => write!(f, "short {}", Q(s)),
            Self::Reserved(r) => write!(f, "reserved-type {}", Q(r)),
        }
    }
}

impl fmt::Display for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.msg_type();
        match self {
            Self::Advertise(a) => write!(f, "{t} gw_id={} duration={}", a.gw_id, a.duration),
            Self::SearchGw { radius } => write!(f, "{t} radius={radius}"),
            Self::GwInfo(g) => write!(f, "{t} gw_id={} gw_addr={}", g.gw_id, Q(g.gw_addr)),
            Self::Connect(c) => write!(
                f,
                "{t} client_id={} will={} clean_session={} protocol_id=0x{:02x} duration={}",
                Q(c.client_id),
                c.will,
                c.clean_session,
                c.protocol_id,
                c.duration
            ),
            Self::ConnAck(rc) | Self::WillTopicResp(rc) | Self::WillMsgResp(rc) => {
                write!(f, "{t} return_code={rc}")
            }
            Self::WillTopicReq | Self::WillMsgReq | Self::PingResp => write!(f, "{t}"),
            Self::WillTopic(None) | Self::WillTopicUpd(None) => write!(f, "{t} (empty)"),
            Self::WillTopic(Some(w)) | Self::WillTopicUpd(Some(w)) => {
                write!(f, "{t} qos={} retain={} topic={}", w.qos, w.retain, Q(w.topic))
            }
            Self::WillMsg(m) | Self::WillMsgUpd(m) => write!(f, "{t} msg={}", Q(m)),
            Self::Register(r) => write!(
                f,
                "{t} topic_id={} msg_id={} topic={}",
                r.topic_id,
                r.msg_id,
                Q(r.topic_name)
            ),
            Self::RegAck(a) | Self::PubAck(a) => write!(
                f,
                "{t} topic_id={} msg_id={} return_code={}",
                a.topic_id, a.msg_id, a.return_code
            ),
            Self::Publish(p) => write!(
                f,
                "{t} dup={} qos={} retain={} topic={} msg_id={} len={} data={}",
                p.dup,
                p.qos,
                p.retain,
                p.topic,
                p.msg_id,
                p.data.len(),
                Q(p.data)
            ),
            Self::PubComp(id) | Self::PubRec(id) | Self::PubRel(id) | Self::UnsubAck(id) => {
                write!(f, "{t} msg_id={id}")
            }
            Self::Subscribe(s) => {
                write!(f, "{t} dup={} qos={} msg_id={} topic={}", s.dup, s.qos, s.msg_id, s.topic)
            }
            Self::SubAck(s) => write!(
                f,
                "{t} qos={} topic_id={} msg_id={} return_code={}",
                s.qos, s.topic_id, s.msg_id, s.return_code
            ),
            Self::Unsubscribe(u) => write!(f, "{t} msg_id={} topic={}", u.msg_id, u.topic),
            Self::PingReq(None) => write!(f, "{t}"),
            Self::PingReq(Some(id)) => write!(f, "{t} client_id={}", Q(id)),
            Self::Disconnect(None) => write!(f, "{t}"),
            Self::Disconnect(Some(d)) => write!(f, "{t} duration={d}"),
        }
    }
}

impl fmt::Display for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fw) = &self.forwarder {
            write!(f, "ENCAPSULATED radius={} node_id=", fw.radius)?;
            for b in fw.node_id {
                write!(f, "{b:02x}")?;
            }
            f.write_str(" | ")?;
        }
        self.packet.fmt(f)
    }
}
