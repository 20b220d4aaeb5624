//! `mqttsn pub` and `mqttsn sub`: mosquitto_pub and mosquitto_sub for
//! MQTT-SN, on the microcontroller client's `std` adapter.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use mqttsn_client::std_udp::{UdpClient, UdpError};
use mqttsn_client::{QoS, ReturnCode, Settings, Topic, TopicFilter};

/// The client the tools use: 32 topics, 4 requests in flight, datagrams up
/// to 4 KiB.
pub type ToolClient = UdpClient<32, 4, 4096>;

/// How a tool failed; each has its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// No answer from the gateway (exit 3).
    Unreachable(String),
    /// The gateway refused (exit 4).
    Refused(String, ReturnCode),
    /// Reading input or writing output failed (exit 5).
    Io(String),
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Refused(..) => 4,
            Self::Io(_) => 5,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Unreachable(m) | Self::Io(m) => f.write_str(m),
            Self::Refused(what, rc) => {
                write!(f, "{what} refused by the gateway: {rc} (0x{:02x})", rc.to_u8())
            }
        }
    }
}

fn failure(what: &str, e: UdpError) -> Failure {
    match e {
        UdpError::Refused(rc) => Failure::Refused(what.to_owned(), rc),
        UdpError::Timeout | UdpError::GatewayGone => {
            Failure::Unreachable(format!("{what}: no answer from the gateway ({e})"))
        }
        UdpError::Io(e) => Failure::Io(format!("{what}: {e}")),
        UdpError::Client(e) => Failure::Usage(format!("{what}: {e}")),
    }
}

/// Options both tools share.
#[derive(Debug, Clone)]
pub struct Common {
    /// Gateway host.
    pub host: String,
    /// Gateway port.
    pub port: u16,
    /// ClientId; a generated one when `None`.
    pub client_id: Option<String>,
    /// Keepalive in seconds.
    pub keepalive: u16,
    /// Print every datagram.
    pub debug: bool,
    /// How long to wait for each answer.
    pub wait: Duration,
}

/// The QoS for `-q`.
pub fn qos(level: i8) -> Result<QoS, Failure> {
    match level {
        -1 => Ok(QoS::NoSession),
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        other => Err(Failure::Usage(format!("-q {other}: QoS must be -1, 0, 1 or 2"))),
    }
}

fn client(c: &Common, prefix: &str) -> Result<ToolClient, Failure> {
    let id = c.client_id.clone().unwrap_or_else(|| format!("{prefix}-{}", std::process::id()));
    let settings = Settings { retry_ms: 1000, max_retries: 3, ..Settings::default() };
    let mut client = ToolClient::new((c.host.as_str(), c.port), &id, settings)
        .map_err(|e| failure("gateway address", e))?;
    client.debug = c.debug;
    Ok(client)
}

/// What `mqttsn pub` sends.
#[derive(Debug, Clone)]
pub enum Messages {
    /// One message.
    One(Vec<u8>),
    /// One message per line of standard input.
    Lines,
}

/// `mqttsn pub`.
#[derive(Debug, Clone)]
pub struct PubOptions {
    /// Shared options.
    pub common: Common,
    /// The topic: a name, or with `predefined` an id.
    pub topic: PubTopic,
    /// What to send.
    pub messages: Messages,
    /// QoS -1..2.
    pub qos: QoS,
    /// RETAIN.
    pub retain: bool,
    /// Will topic, payload, QoS, retain.
    pub will: Option<(String, Vec<u8>, QoS, bool)>,
    /// Sleep (DISCONNECT with Duration) at the end instead of DISCONNECT.
    pub sleep: Option<u16>,
}

/// Where `pub` publishes.
#[derive(Debug, Clone)]
pub enum PubTopic {
    /// `-t NAME` (two characters: a short name).
    Name(String),
    /// `-T ID`.
    Predefined(u16),
}

/// Runs `mqttsn pub`.
pub fn publish(o: &PubOptions) -> Result<(), Failure> {
    let mut c = client(&o.common, "mqttsn-pub")?;
    let wait = o.common.wait;
    let topic = match &o.topic {
        PubTopic::Predefined(id) => Topic::Predefined(*id),
        PubTopic::Name(n) if n.len() == 2 => Topic::Short([n.as_bytes()[0], n.as_bytes()[1]]),
        PubTopic::Name(n) => Topic::Name(n),
    };
    if o.qos == QoS::NoSession && matches!(topic, Topic::Name(_)) {
        return Err(Failure::Usage(
            "-q -1 needs a predefined id (-T) or a two-character short name".into(),
        ));
    }
    if o.qos != QoS::NoSession {
        let will = o.will.as_ref().map(|(t, p, q, r)| (t.as_str(), p.as_slice(), *q, *r));
        c.connect(true, o.common.keepalive, will, wait).map_err(|e| failure("CONNECT", e))?;
    }
    let mut send = |payload: &[u8]| {
        c.publish(topic, payload, o.qos, o.retain, wait).map_err(|e| failure("PUBLISH", e))
    };
    match &o.messages {
        Messages::One(m) => send(m)?,
        Messages::Lines => {
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| Failure::Io(format!("standard input: {e}")))?;
                send(line.as_bytes())?;
            }
        }
    }
    if o.qos == QoS::NoSession {
        return Ok(());
    }
    match o.sleep {
        Some(s) => c.sleep(s, wait).map_err(|e| failure("DISCONNECT (sleep)", e)),
        None => c.disconnect(wait).map_err(|e| failure("DISCONNECT", e)),
    }
}

/// `mqttsn sub`.
#[derive(Debug, Clone)]
pub struct SubOptions {
    /// Shared options.
    pub common: Common,
    /// `-t` filters.
    pub topics: Vec<String>,
    /// `-T` predefined ids.
    pub predefined: Vec<u16>,
    /// QoS 0..2.
    pub qos: QoS,
    /// Print the topic before the payload.
    pub verbose: bool,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this many seconds.
    pub timeout: Option<u64>,
    /// Sleep cycles: sleep this long, wake, print, repeat.
    pub sleep: Option<u16>,
}

/// Runs `mqttsn sub`, printing to `out`.
pub fn subscribe(o: &SubOptions, out: &mut impl Write) -> Result<(), Failure> {
    if o.topics.is_empty() && o.predefined.is_empty() {
        return Err(Failure::Usage("give at least one -t TOPIC or -T ID".into()));
    }
    let mut c = client(&o.common, "mqttsn-sub")?;
    let wait = o.common.wait;
    c.connect(o.sleep.is_none(), o.common.keepalive, None, wait)
        .map_err(|e| failure("CONNECT", e))?;
    for t in &o.topics {
        let filter = if t.len() == 2 && !t.contains(['+', '#']) {
            TopicFilter::Short([t.as_bytes()[0], t.as_bytes()[1]])
        } else {
            TopicFilter::Name(t.as_bytes())
        };
        c.subscribe(filter, o.qos, wait).map_err(|e| failure(&format!("SUBSCRIBE {t}"), e))?;
    }
    for id in &o.predefined {
        c.subscribe(TopicFilter::Predefined(*id), o.qos, wait)
            .map_err(|e| failure(&format!("SUBSCRIBE -T {id}"), e))?;
    }
    let deadline = o.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut printed = 0u64;
    let mut print = |m: &mqttsn_client::std_udp::Message| -> Result<bool, Failure> {
        let io = |e: std::io::Error| Failure::Io(format!("standard output: {e}"));
        if o.verbose {
            write!(out, "{} ", m.topic).map_err(io)?;
        }
        out.write_all(&m.payload).map_err(io)?;
        writeln!(out).map_err(io)?;
        out.flush().map_err(io)?;
        printed += 1;
        Ok(o.count.is_some_and(|n| printed >= n))
    };
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Ok(());
        }
        match o.sleep {
            None => {
                let step = left.unwrap_or(Duration::from_secs(3600)).min(Duration::from_secs(1));
                if let Some(m) = c.next_message(step).map_err(|e| failure("waiting", e))? {
                    if print(&m)? {
                        return c.disconnect(wait).map_err(|e| failure("DISCONNECT", e));
                    }
                }
            }
            Some(secs) => {
                c.sleep(secs, wait).map_err(|e| failure("DISCONNECT (sleep)", e))?;
                let nap = Duration::from_secs(u64::from(secs));
                std::thread::sleep(left.map_or(nap, |l| l.min(nap)));
                for m in c.wake(wait).map_err(|e| failure("PINGREQ (wake)", e))? {
                    if print(&m)? {
                        return Ok(());
                    }
                }
            }
        }
    }
}
