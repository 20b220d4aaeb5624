//! `mqttsn pub` and `mqttsn sub`: mosquitto_pub and mosquitto_sub for
//! MQTT-SN, on the microcontroller client's `std` adapter.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqttsn_client::std_dtls::{DtlsError, DtlsSettings, DtlsVersion};
use mqttsn_client::std_udp::{Message, UdpClient, UdpError, MAX_GATEWAYS};
use mqttsn_client::{QoS, ReturnCode, Settings, Topic, TopicFilter};

/// The client the tools use: 32 topics, 4 requests in flight, datagrams up
/// to 4 KiB.
pub type ToolClient = UdpClient<32, 4, 4096>;

/// How a tool failed; each has its exit code, mosquitto_pub's and
/// mosquitto_sub's where they have one.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments, or a name or payload over the client's buffers
    /// (exit 1, as mosquitto's tools).
    Usage(String),
    /// No answer from the gateway, or it disconnected (exit 7,
    /// libmosquitto's "connection lost").
    Unreachable(String),
    /// The gateway refused: the exit code is the MQTT-SN return code (1
    /// congestion, 2 invalid topic id, 3 not supported), as mosquitto's
    /// tools exit with the CONNACK return code.
    Refused(String, ReturnCode),
    /// Reading input or writing output failed (exit 14, libmosquitto's
    /// "errno").
    Io(String),
    /// `sub -W`: the time ran out (exit 27, libmosquitto's "timeout").
    TimedOut,
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 1,
            Self::Unreachable(_) => 7,
            Self::Refused(_, rc) => i32::from(rc.to_u8()).max(1),
            Self::Io(_) => 14,
            Self::TimedOut => 27,
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
            Self::TimedOut => f.write_str("Timed out"),
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
        UdpError::Dtls(
            e @ (DtlsError::BadPsk(_)
            | DtlsError::BadCaFile { .. }
            | DtlsError::BadCertificate { .. }
            | DtlsError::BadKey { .. }),
        ) => Failure::Usage(e.to_string()),
        UdpError::Dtls(e) => Failure::Unreachable(format!("{what}: {e}")),
    }
}

/// Options both tools share.
#[derive(Debug, Clone)]
pub struct Common {
    /// Gateway hosts (or HOST:PORT), in the order they are tried.
    pub hosts: Vec<String>,
    /// Gateway port, for the hosts without one.
    pub port: u16,
    /// ClientId; a generated one when `None`.
    pub client_id: Option<String>,
    /// Keepalive in seconds.
    pub keepalive: u16,
    /// Print every datagram.
    pub debug: bool,
    /// How long to wait for each answer.
    pub wait: Duration,
    /// Will topic, payload, QoS, retain.
    pub will: Option<(String, Vec<u8>, QoS, bool)>,
    /// DTLS toward the gateway, when any of its options is given.
    pub dtls: Option<DtlsOptions>,
}

/// `--psk-identity`, `--psk`, `--cafile`, `--cert`, `--key`,
/// `--dtls-version`.
#[derive(Debug, Clone, Default)]
pub struct DtlsOptions {
    /// The PSK identity (default: the ClientId).
    pub psk_identity: Option<String>,
    /// The PSK, hex.
    pub psk: Option<String>,
    /// The CA file (PEM) the gateway's certificate is checked against.
    pub cafile: Option<PathBuf>,
    /// The client's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// The client's key (PEM).
    pub key: Option<PathBuf>,
    /// The DTLS version.
    pub version: DtlsVersion,
}

impl DtlsOptions {
    fn settings(&self, client_id: &str) -> Result<DtlsSettings, Failure> {
        let settings = match (&self.psk, &self.cafile) {
            (Some(psk), None) => {
                let identity = self.psk_identity.as_deref().unwrap_or(client_id);
                DtlsSettings::psk(identity.as_bytes(), psk)
            }
            (None, Some(cafile)) => {
                let client = match (&self.cert, &self.key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    (None, None) => None,
                    _ => return Err(Failure::Usage("--cert and --key go together".into())),
                };
                DtlsSettings::certificate(cafile, client)
            }
            _ => return Err(Failure::Usage("DTLS needs either --psk or --cafile".into())),
        };
        let settings = settings.map_err(|e| failure("DTLS", e.into()))?;
        settings.with_version(self.version).map_err(|e| match e {
            DtlsError::PskNeedsDtls12 => {
                Failure::Usage("--dtls-version 1.3 needs --cafile: DTLS 1.3 has no PSK here".into())
            }
            e => failure("DTLS", e.into()),
        })
    }
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
    let gateways = gateway_addresses(c)?;
    let mut client = match &c.dtls {
        None => ToolClient::with_gateways(&gateways, &id, settings)
            .map_err(|e| failure("gateway address", e)),
        Some(_) if gateways.len() > 1 => Err(Failure::Usage(
            "several -h with DTLS: failover over DTLS is not supported yet".into(),
        )),
        Some(dtls) => {
            ToolClient::new_dtls(gateways[0], &id, settings, &dtls.settings(&id)?, c.wait)
                .map_err(|e| failure("connecting", e))
        }
    }?;
    client.debug = c.debug;
    Ok(client)
}

/// The address of every `-h`: HOST:PORT as given, HOST with `-p`'s port.
/// The first address's family decides the socket's; a host of the other
/// family is left out.
fn gateway_addresses(c: &Common) -> Result<Vec<SocketAddr>, Failure> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for host in &c.hosts {
        let resolved = match host.parse::<SocketAddr>() {
            Ok(a) => Ok(vec![a]),
            Err(_) => (host.as_str(), c.port).to_socket_addrs().map(Iterator::collect),
        };
        let addrs: Vec<SocketAddr> =
            resolved.map_err(|e| Failure::Usage(format!("-h {host}: {e}")))?;
        let first = out.first().map(SocketAddr::is_ipv4);
        let addr =
            addrs.into_iter().find(|a| first.is_none_or(|v4| a.is_ipv4() == v4)).ok_or_else(
                || Failure::Usage(format!("-h {host}: no address of the first gateway's family")),
            )?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.len() > MAX_GATEWAYS {
        return Err(Failure::Usage(format!("-h: at most {MAX_GATEWAYS} gateways")));
    }
    Ok(out)
}

/// What `mqttsn pub` sends.
#[derive(Debug, Clone)]
pub enum Messages {
    /// One message.
    One(Vec<u8>),
    /// One message per line of standard input.
    Lines,
    /// Standard input, read to its end, as one message.
    Stdin,
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
    if o.qos == QoS::NoSession {
        eprintln!(
            "mqttsn: warning: QoS -1 is never acknowledged: success means sent, not received. \
             The gateway takes QoS -1 only with [qos_minus_one] enabled = true (and the \
             topic id predefined there)."
        );
    } else {
        let will = o.common.will.as_ref().map(|(t, p, q, r)| (t.as_str(), p.as_slice(), *q, *r));
        c.connect(true, o.common.keepalive, will, wait).map_err(|e| failure("CONNECT", e))?;
    }
    let send = |c: &mut ToolClient, payload: &[u8]| {
        c.publish(topic, payload, o.qos, o.retain, wait).map_err(|e| failure("PUBLISH", e))
    };
    match &o.messages {
        Messages::One(m) => send(&mut c, m)?,
        Messages::Stdin => {
            let mut m = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut m)
                .map_err(|e| Failure::Io(format!("standard input: {e}")))?;
            send(&mut c, &m)?;
        }
        Messages::Lines => {
            // Standard input is read on its own thread, so that the
            // connection is kept alive (PINGREQ at the keepalive, answers to
            // the gateway) while no line comes: `tail -f log | mqttsn pub -l`.
            let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<String>>(64);
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let idle = Duration::from_millis(200);
            loop {
                match rx.recv_timeout(idle) {
                    Ok(line) => {
                        let line = line.map_err(|e| Failure::Io(format!("standard input: {e}")))?;
                        send(&mut c, line.as_bytes())?;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if o.qos != QoS::NoSession {
                            c.poll(Duration::from_millis(10))
                                .map_err(|e| failure("keepalive", e))?;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
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
    /// `-U` filters to unsubscribe from.
    pub unsubscribe: Vec<String>,
    /// QoS 0..2.
    pub qos: QoS,
    /// `-c`: CleanSession false (the session outlives the connection).
    pub persistent: bool,
    /// Print the topic before the payload.
    pub verbose: bool,
    /// `-N`: no newline after each message.
    pub no_eol: bool,
    /// `-R`: do not print messages with the retain flag (stale ones).
    pub no_retained: bool,
    /// `-F`: the output format (mosquitto_sub's codes, see [`crate::format`]).
    pub format: Option<String>,
    /// `-E`: exit once every SUBSCRIBE and UNSUBSCRIBE is acknowledged.
    pub exit_after_subscribe: bool,
    /// Stop after this many messages.
    pub count: Option<u64>,
    /// Stop after this many seconds (exit 27).
    pub timeout: Option<u64>,
    /// Sleep cycles: sleep this long, wake, print, repeat.
    pub sleep: Option<u16>,
}

fn filter(t: &str) -> TopicFilter<'_> {
    if t.len() == 2 && !t.contains(['+', '#']) {
        TopicFilter::Short([t.as_bytes()[0], t.as_bytes()[1]])
    } else {
        TopicFilter::Name(t.as_bytes())
    }
}

/// One message as mosquitto_sub prints it with these options; `None` when
/// nothing is printed (an empty payload without `-v` or `-F`).
pub fn render(o: &SubOptions, m: &Message) -> Option<Vec<u8>> {
    let eol = !o.no_eol;
    if let Some(f) = &o.format {
        return Some(crate::format::render(f, m, &crate::format::Stamp::now(), eol));
    }
    let mut out = Vec::with_capacity(m.topic.len() + m.payload.len() + 2);
    match (o.verbose, m.payload.is_empty()) {
        (true, false) => {
            out.extend_from_slice(m.topic.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&m.payload);
        }
        // mosquitto_sub -v shows an empty payload as (null), and with -N
        // not at all.
        (true, true) if eol => {
            out.extend_from_slice(m.topic.as_bytes());
            out.extend_from_slice(b" (null)");
        }
        (false, false) => out.extend_from_slice(&m.payload),
        _ => return None,
    }
    if eol {
        out.push(b'\n');
    }
    Some(out)
}

/// Runs `mqttsn sub`, printing to `out`.
pub fn subscribe(o: &SubOptions, out: &mut impl Write) -> Result<(), Failure> {
    if o.topics.is_empty() && o.predefined.is_empty() && o.unsubscribe.is_empty() {
        return Err(Failure::Usage("give at least one -t TOPIC, -T ID or -U TOPIC".into()));
    }
    let deadline = o.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut c = client(&o.common, "mqttsn-sub")?;
    let wait = o.common.wait;
    let will = o.common.will.as_ref().map(|(t, p, q, r)| (t.as_str(), p.as_slice(), *q, *r));
    let clean = !(o.persistent || o.sleep.is_some());
    c.connect(clean, o.common.keepalive, will, wait).map_err(|e| failure("CONNECT", e))?;
    for t in &o.topics {
        c.subscribe(filter(t), o.qos, wait).map_err(|e| failure(&format!("SUBSCRIBE {t}"), e))?;
    }
    for id in &o.predefined {
        c.subscribe(TopicFilter::Predefined(*id), o.qos, wait)
            .map_err(|e| failure(&format!("SUBSCRIBE -T {id}"), e))?;
    }
    for t in &o.unsubscribe {
        c.unsubscribe(filter(t), wait).map_err(|e| failure(&format!("UNSUBSCRIBE {t}"), e))?;
    }
    if o.exit_after_subscribe {
        return c.disconnect(wait).map_err(|e| failure("DISCONNECT", e));
    }
    let mut printed = 0u64;
    // Prints one message; true when the count is reached.
    let mut print = |m: &Message| -> Result<bool, Failure> {
        if o.no_retained && m.retain {
            return Ok(false);
        }
        let io = |e: std::io::Error| Failure::Io(format!("standard output: {e}"));
        if let Some(bytes) = render(o, m) {
            out.write_all(&bytes).map_err(io)?;
            out.flush().map_err(io)?;
        }
        printed += 1;
        Ok(o.count.is_some_and(|n| printed >= n))
    };
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            // As mosquitto_sub: a clean DISCONNECT, then exit 27.
            if o.sleep.is_none() {
                let _ = c.settle(wait);
                let _ = c.disconnect(wait);
            }
            return Err(Failure::TimedOut);
        }
        match o.sleep {
            None => {
                let step = left.unwrap_or(Duration::from_secs(3600)).min(Duration::from_secs(1));
                if let Some(m) = c.next_message(step).map_err(|e| failure("waiting", e))? {
                    if print(&m)? {
                        // A QoS 2 exchange ends with PUBREL and PUBCOMP
                        // before the DISCONNECT.
                        c.settle(wait).map_err(|e| failure("PUBREL", e))?;
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
