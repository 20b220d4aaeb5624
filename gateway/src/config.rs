//! The gateway's configuration: a TOML file, every key optional, unknown
//! keys refused; `config/gateway.toml` lists every option with its default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
use crate::session::topics::Predefined;
use crate::session::{SessionConfig, Tolerance};

/// A configuration that cannot be used, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The path.
        path: String,
        /// What the parser said (it names the key).
        message: String,
    },
    /// A value of the right type that is not acceptable.
    #[error("invalid value for `{key}` ({value}): {reason}")]
    Invalid {
        /// The key, with its table (`timers.retry_interval_ms`).
        key: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[gateway]`: where sensors reach the gateway.
    pub gateway: GatewaySection,
    /// `[broker]`: the upstream MQTT broker.
    pub broker: BrokerSection,
    /// `[timers]`: protocol timers.
    pub timers: TimersSection,
    /// `[limits]`: bounds per sensor.
    pub limits: LimitsSection,
    /// `[admission]`: bounds per source address and in all, under a flood.
    pub admission: AdmissionSection,
    /// `[sleep]`: sleeping sensors.
    pub sleep: SleepSection,
    /// `[discovery]`: SEARCHGW, GWINFO and ADVERTISE.
    pub discovery: DiscoverySection,
    /// `[qos_minus_one]`: PUBLISH without a connection.
    pub qos_minus_one: QosMinusOneSection,
    /// `[auth]`: the policy for ClientIds not in `[[clients]]`.
    pub auth: AuthSection,
    /// `[[clients]]`: known sensors, their upstream identity and pins.
    pub clients: Vec<ClientSection>,
    /// `[monitoring]`: the Prometheus endpoint and the broker topics.
    pub monitoring: MonitoringSection,
    /// `[[predefined]]`: predefined topic ids.
    pub predefined: Vec<PredefinedTopic>,
    /// `[acl]`: topic access control; absent: every topic allowed.
    pub acl: Option<AclSection>,
    /// `[dtls]`: the DTLS listener.
    pub dtls: DtlsSection,
    /// `[[serial]]`: serial sensor networks beside UDP.
    pub serial: Vec<SerialSection>,
    /// `[aggregating]`: the shared broker connections of
    /// `gateway.mode = "aggregating"`.
    pub aggregating: AggregatingSection,
}

/// `gateway.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A broker connection per sensor, with the sensor's ClientId (spec
    /// 4.2).
    #[default]
    Transparent,
    /// All sensors share a few broker connections with the gateway's
    /// identity (spec 4.3).
    Aggregating,
}

/// `[aggregating]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatingSection {
    /// Broker connections per worker.
    pub connections: usize,
    /// The pool connections' ClientIds start with this (then `-worker-N`);
    /// empty: the gateway's own ClientId (`broker.client_id`).
    pub client_id: String,
    /// QoS 1 and 2 messages kept for one disconnected sensor with
    /// CleanSession false, until it comes back; the oldest are dropped
    /// beyond it (counted).
    pub max_offline_messages: usize,
}

impl Default for AggregatingSection {
    fn default() -> Self {
        Self { connections: 2, client_id: String::new(), max_offline_messages: 1000 }
    }
}

/// `[dtls]`: MQTT-SN over DTLS 1.2 and 1.3 (see [`crate::dtls`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtlsSection {
    /// The DTLS listener's address; empty: off. It runs only when some
    /// sensor has a PSK or a server certificate is given.
    pub listen: String,
    /// The server certificate (PEM, ECDSA P-256 or P-384).
    pub cert_file: Option<PathBuf>,
    /// Its key (PEM).
    pub key_file: Option<PathBuf>,
    /// The DTLS versions offered: `"1.2"`, `"1.3"` (certificate
    /// handshakes only; PSK needs 1.2).
    pub versions: Vec<String>,
    /// Certificate handshakes must present a client certificate pinned to
    /// a ClientId (`clients[].dtls_cert_sha256`).
    pub require_client_certificate: bool,
    /// Associations held at most, handshakes included.
    pub max_associations: usize,
    /// Handshakes in progress at most.
    pub max_handshakes: usize,
    /// HelloVerifyRequests sent per second at most, over all sources.
    pub hello_verify_per_sec: u32,
    /// An association unused for this long is dropped, in seconds.
    pub idle_timeout_secs: u64,
    /// A handshake not complete after this long is dropped, in seconds.
    pub handshake_timeout_secs: u64,
}

impl Default for DtlsSection {
    fn default() -> Self {
        Self {
            listen: "[::]:8884".into(),
            cert_file: None,
            key_file: None,
            versions: vec!["1.2".into(), "1.3".into()],
            require_client_certificate: false,
            max_associations: 10_000,
            max_handshakes: 256,
            hello_verify_per_sec: 1_000,
            idle_timeout_secs: 86_400,
            handshake_timeout_secs: 30,
        }
    }
}

/// One `[[serial]]` entry: a serial line with a radio module or a sensor
/// on it (see [`crate::serial`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSection {
    /// The device: `/dev/ttyUSB0`, `/dev/serial/by-id/...`.
    pub device: String,
    /// The baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `raw`, `slip`, `xbee-api1` or `xbee-api2`.
    #[serde(default = "default_framing")]
    pub framing: String,
}

fn default_baud() -> u32 {
    9600
}

fn default_framing() -> String {
    "raw".into()
}

/// The baud rates a line may be set to (those Linux has a constant for).
const BAUDS: [u32; 26] = [
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19_200, 38_400, 57_600,
    115_200, 230_400, 460_800, 500_000, 576_000, 921_600, 1_000_000, 1_152_000, 1_500_000,
    2_000_000,
];

/// `[acl]`: the topics sensors may publish to and the filters they may
/// subscribe to (see [`crate::acl`]). Present, it refuses whatever it does
/// not grant.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AclSection {
    /// Publish patterns of every sensor.
    pub publish: Vec<String>,
    /// Subscribe patterns of every sensor.
    pub subscribe: Vec<String>,
    /// `[[acl.rules]]`: more patterns for a ClientId or a username.
    pub rules: Vec<AclRuleSection>,
}

/// One `[[acl.rules]]` entry: for `client_id` or for `username` (one of
/// them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleSection {
    /// The sensor this rule is for.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The upstream username whose sensors this rule is for.
    #[serde(default)]
    pub username: Option<String>,
    /// More publish patterns.
    #[serde(default)]
    pub publish: Vec<String>,
    /// More subscribe patterns.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

impl AclSection {
    /// The compiled ACL, or the first pattern that is not one.
    pub fn acl(&self) -> Result<crate::acl::Acl, ConfigError> {
        use crate::acl::{Acl, Grants, Pattern, Rule, Selector};
        let grants = |key: &str, publish: &[String], subscribe: &[String]| {
            let compile = |list: &[String], what: &str| {
                list.iter()
                    .enumerate()
                    .map(|(i, text)| {
                        Pattern::parse(text).map_err(|e| {
                            invalid(
                                &format!("{key}{what}[{i}]"),
                                format!("{text:?}"),
                                &e.to_string(),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok::<_, ConfigError>(Grants {
                publish: compile(publish, "publish")?,
                subscribe: compile(subscribe, "subscribe")?,
            })
        };
        let default = grants("acl.", &self.publish, &self.subscribe)?;
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("acl.rules[{i}]");
            let who = match (&r.client_id, &r.username) {
                (Some(c), None) if !c.is_empty() => Selector::ClientId(c.clone()),
                (None, Some(u)) if !u.is_empty() => Selector::Username(u.clone()),
                _ => {
                    return Err(invalid(
                        &key,
                        "",
                        "needs a non-empty client_id or username (one of them)",
                    ))
                }
            };
            rules.push(Rule { who, grants: grants(&format!("{key}."), &r.publish, &r.subscribe)? });
        }
        Ok(Acl::new(default, rules))
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// The UDP address sensors send to; `[::]` is dual-stack (IPv4 too),
    /// and falls back to `0.0.0.0` where the system has no IPv6.
    pub listen: String,
    /// The session store file; empty: sessions live in memory only.
    pub store: String,
    /// Worker threads (each with its own socket, sessions and broker
    /// connections); 0: one per core.
    pub workers: usize,
    /// The UDP receive buffer asked of the kernel, in octets; 0: the
    /// system default.
    pub udp_receive_buffer: usize,
    /// The UDP send buffer, in octets; 0: the system default.
    pub udp_send_buffer: usize,
    /// `transparent` (a broker connection per sensor) or `aggregating`
    /// (a shared pool, `[aggregating]`).
    pub mode: Mode,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: "[::]:1884".into(),
            store: "mqttsn-sessions.redb".into(),
            workers: 0,
            udp_receive_buffer: 4 << 20,
            udp_send_buffer: 1 << 20,
            mode: Mode::Transparent,
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// `mqtt://HOST:PORT`; none means the embedded broker.
    pub url: Option<String>,
    /// Where the embedded broker listens when `url` is not set.
    pub embedded_listen: String,
    /// Put before every sensor's ClientId on the broker.
    pub client_id_prefix: String,
    /// The ClientId of the gateway's own connection; empty:
    /// `<client_id_prefix>mqttsn-gateway-<host name>-<gateway_id>`.
    pub client_id: String,
    /// The MQTT keepalive of each upstream connection, in seconds.
    pub keepalive_secs: u16,
    /// How long a TCP connect to the broker may take.
    pub connect_timeout_ms: u64,
    /// How long octets holding only QoS 0 PUBLISHes may wait for more
    /// before they are written to the broker, in microseconds.
    pub qos0_linger_us: u64,
    /// Upstream username for sensors not in `[[clients]]`.
    pub username: Option<String>,
    /// Upstream password for sensors not in `[[clients]]`.
    pub password: Option<Secret>,
    /// `mqtts://`: CA certificates (PEM) that sign the broker's
    /// certificate; default: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: client certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// `mqtts://`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Local IP addresses the broker connections are made from, in turn;
    /// empty: the system chooses (see
    /// [`crate::upstream::connection::SourceAddresses`]).
    pub source_addresses: Vec<String>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            url: None,
            embedded_listen: "127.0.0.1:1883".into(),
            client_id_prefix: String::new(),
            client_id: String::new(),
            keepalive_secs: 60,
            connect_timeout_ms: 5_000,
            qos0_linger_us: 0,
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            source_addresses: Vec::new(),
        }
    }
}

/// `[timers]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersSection {
    /// Tretry: wait before sending REGISTER, PUBLISH or PUBREL again.
    pub retry_interval_ms: u64,
    /// Nretry: how many times to send them again.
    pub max_retries: u32,
    /// Keepalive periods shorter than this get `keepalive_factor_short`.
    pub keepalive_threshold_ms: u64,
    /// Tolerance factor for short keepalive periods (spec 7.2: 1.5).
    pub keepalive_factor_short: f64,
    /// Tolerance factor for long keepalive periods (spec 7.2: 1.1).
    pub keepalive_factor_long: f64,
}

impl Default for TimersSection {
    fn default() -> Self {
        Self {
            retry_interval_ms: 10_000,
            max_retries: 5,
            keepalive_threshold_ms: 60_000,
            keepalive_factor_short: 1.5,
            keepalive_factor_long: 1.1,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// QoS 1/2 messages in flight toward one sensor.
    pub max_inflight: usize,
    /// QoS 0 messages queued for one sensor.
    pub max_queued: usize,
    /// Topic ids one sensor may register.
    pub max_topics: usize,
    /// The longest datagram sent to a sensor.
    pub max_datagram: usize,
    /// The longest ClientId accepted.
    pub max_client_id_len: usize,
    /// The most sessions at once; 0 means no limit.
    pub max_sessions: usize,
    /// PUBLISHes per second one sensor may send on average; 0: no limit.
    pub max_publish_rate: f64,
    /// How many PUBLISHes above the rate a sensor may send in a burst.
    pub publish_burst: u32,
    /// Seconds an ended CleanSession-false session is kept for the
    /// sensor's return; 0: for ever.
    pub session_expiry_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_inflight: 1,
            max_queued: 1000,
            max_topics: 1000,
            max_datagram: 1024,
            max_client_id_len: mqttsn_codec::validate::MAX_CLIENT_ID_LEN,
            max_sessions: 0,
            max_publish_rate: 0.0,
            publish_burst: 10,
            session_expiry_secs: 86_400,
        }
    }
}

/// `[admission]`: what one source address (an IPv4 address, an IPv6 /64)
/// and all of them together may make the gateway do before proving
/// anything (see [`crate::admission`]). Rates are per second; 0 is no
/// bound.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// Networks bounded by none of this (`127.0.0.0/8`, `10.0.0.0/8`).
    pub exempt: Vec<String>,
    /// Sessions one source address may hold at once.
    pub max_sessions_per_address: u32,
    /// CONNECTs per second from one source address, and the burst.
    pub connect_rate_per_address: f64,
    /// See `connect_rate_per_address`.
    pub connect_burst_per_address: u32,
    /// CONNECTs per second from all addresses together, and the burst.
    pub connect_rate: f64,
    /// See `connect_rate`.
    pub connect_burst: u32,
    /// Sessions waiting for their broker connection at once.
    pub max_connecting: usize,
    /// Replies per second to one address without a session, and the burst.
    pub reply_rate_per_address: f64,
    /// See `reply_rate_per_address`.
    pub reply_burst_per_address: u32,
    /// Replies per second to all addresses without a session, and the
    /// burst.
    pub reply_rate: f64,
    /// See `reply_rate`.
    pub reply_burst: u32,
    /// A session moving to a new address gets its messages there only
    /// once that address has echoed a probe (a REGISTER).
    pub verify_new_address: bool,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        let l = crate::admission::Limits::exposed();
        let rate = |r: Option<crate::admission::Rate>| r.map_or((0.0, 0), |r| (r.per_sec, r.burst));
        let (connect_rate_per_address, connect_burst_per_address) = rate(l.connect_per_source);
        let (connect_rate, connect_burst) = rate(l.connect);
        let (reply_rate_per_address, reply_burst_per_address) = rate(l.reply_per_source);
        let (reply_rate, reply_burst) = rate(l.reply);
        Self {
            exempt: l.exempt.iter().map(ToString::to_string).collect(),
            max_sessions_per_address: l.sessions_per_source.unwrap_or(0),
            connect_rate_per_address,
            connect_burst_per_address,
            connect_rate,
            connect_burst,
            max_connecting: l.connecting.unwrap_or(0),
            reply_rate_per_address,
            reply_burst_per_address,
            reply_rate,
            reply_burst,
            verify_new_address: l.verify_moves,
        }
    }
}

impl AdmissionSection {
    /// The bounds, or the first key that cannot be used.
    pub fn limits(&self) -> Result<crate::admission::Limits, ConfigError> {
        let rate = |key: &str, per_sec: f64, burst_key: &str, burst: u32| {
            if !per_sec.is_finite() || per_sec < 0.0 {
                return Err(invalid(&format!("admission.{key}"), per_sec, "must be 0 or more"));
            }
            if per_sec > 0.0 && burst == 0 {
                return Err(invalid(
                    &format!("admission.{burst_key}"),
                    0,
                    &format!("must be at least 1 while admission.{key} is set"),
                ));
            }
            Ok((per_sec > 0.0).then_some(crate::admission::Rate { per_sec, burst }))
        };
        let mut exempt = Vec::new();
        for (i, net) in self.exempt.iter().enumerate() {
            exempt
                .push(net.parse::<crate::cidr::Cidr>().map_err(|e| {
                    invalid(&format!("admission.exempt[{i}]"), net, &e.to_string())
                })?);
        }
        Ok(crate::admission::Limits {
            exempt,
            sessions_per_source: (self.max_sessions_per_address > 0)
                .then_some(self.max_sessions_per_address),
            connect_per_source: rate(
                "connect_rate_per_address",
                self.connect_rate_per_address,
                "connect_burst_per_address",
                self.connect_burst_per_address,
            )?,
            connect: rate("connect_rate", self.connect_rate, "connect_burst", self.connect_burst)?,
            connecting: (self.max_connecting > 0).then_some(self.max_connecting),
            reply_per_source: rate(
                "reply_rate_per_address",
                self.reply_rate_per_address,
                "reply_burst_per_address",
                self.reply_burst_per_address,
            )?,
            reply: rate("reply_rate", self.reply_rate, "reply_burst", self.reply_burst)?,
            verify_moves: self.verify_new_address,
        })
    }
}

/// The default discovery group: the one the Paho MQTT-SN gateway and
/// clients use.
pub const DEFAULT_GROUP: &str = "225.1.1.1:1883";

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySection {
    /// The GwId in ADVERTISE and GWINFO.
    pub gateway_id: u8,
    /// Answer SEARCHGW with GWINFO, unicast to the searcher.
    pub answer_searchgw: bool,
    /// Where to send ADVERTISE (broadcast or multicast `IP:PORT`); empty:
    /// no ADVERTISE.
    pub advertise_to: String,
    /// Seconds between two ADVERTISE messages.
    pub advertise_interval_secs: u16,
    /// The discovery group `IP:PORT` joined for SEARCHGW and sent GWINFO
    /// and ADVERTISE; empty: none.
    pub multicast_group: String,
    /// Where the group is joined: an IPv4 address, an interface name or
    /// index; empty: the system's choice.
    pub multicast_interface: String,
    /// TTL (IPv4) or hop limit (IPv6) of what is sent to the group.
    pub multicast_hops: u32,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        Self {
            gateway_id: 1,
            answer_searchgw: true,
            advertise_to: String::new(),
            advertise_interval_secs: 900,
            multicast_group: DEFAULT_GROUP.into(),
            multicast_interface: String::new(),
            multicast_hops: 1,
        }
    }
}

/// `[qos_minus_one]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct QosMinusOneSection {
    /// Accept QoS -1 PUBLISH (to predefined ids and short names) from
    /// addresses without a connection.
    pub enabled: bool,
    /// Source networks allowed to (`192.168.1.0/24`, `10.0.0.7`); empty:
    /// any.
    pub allow: Vec<String>,
}

/// `[monitoring]`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringSection {
    /// Where `GET /metrics` (Prometheus) is served; empty: nowhere.
    pub listen: String,
    /// Seconds between publications of the key figures on the broker; 0:
    /// never.
    pub sys_interval_secs: u64,
    /// The topic prefix of those publications; empty:
    /// `mqttsn/gateway/<gateway_id>`.
    pub sys_prefix: String,
    /// The bearer token the management API's mutating calls need; empty:
    /// the API is read-only.
    pub api_token: String,
}

impl std::fmt::Debug for MonitoringSection {
    // The token is a secret: whether one is set shows, not its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitoringSection")
            .field("listen", &self.listen)
            .field("sys_interval_secs", &self.sys_interval_secs)
            .field("sys_prefix", &self.sys_prefix)
            .field("api_token", &if self.api_token.is_empty() { "" } else { "(set)" })
            .finish()
    }
}

impl Default for MonitoringSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9184".into(),
            sys_interval_secs: 60,
            sys_prefix: String::new(),
            api_token: String::new(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `"allow"` (with the `[broker]` identity) or `"refuse"` (CONNACK not
    /// supported) for ClientIds not in `[[clients]]`.
    pub unknown_clients: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self { unknown_clients: "allow".into() }
    }
}

/// One `[[clients]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    /// The sensor's ClientId.
    pub client_id: String,
    /// Its upstream username.
    #[serde(default)]
    pub username: Option<String>,
    /// Its upstream password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Source networks it may connect from; empty: anywhere.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Its TLS client certificate (`mqtts://`), PEM.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The key of that certificate, PEM.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Its DTLS pre-shared key, hexadecimal (16 to 64 octets; reloaded by
    /// SIGHUP); the PSK
    /// identity is the ClientId. With it, the sensor may connect only
    /// over DTLS.
    #[serde(default)]
    pub psk: Option<Secret>,
    /// The SHA-256 fingerprint of its DTLS client certificate
    /// (hexadecimal, colons allowed). With it, the sensor may connect
    /// only over DTLS.
    #[serde(default)]
    pub dtls_cert_sha256: Option<String>,
}

/// `[sleep]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SleepSection {
    /// Messages buffered for one sleeping sensor.
    pub buffer_messages: usize,
    /// Octets (payloads and topic names) buffered for one sleeping sensor.
    pub buffer_bytes: usize,
    /// Buffer QoS 0 messages too.
    pub buffer_qos0: bool,
    /// Messages buffered for all sleeping sensors together.
    pub total_buffer_messages: usize,
    /// Octets buffered for all sleeping sensors together.
    pub total_buffer_bytes: usize,
}

impl Default for SleepSection {
    fn default() -> Self {
        Self {
            buffer_messages: 1000,
            buffer_bytes: 1 << 20,
            buffer_qos0: true,
            total_buffer_messages: 100_000,
            total_buffer_bytes: 64 << 20,
        }
    }
}

/// The broker the gateway talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerTarget {
    /// A broker elsewhere, `host:port`.
    Remote(String),
    /// A broker over TLS (`mqtts://`).
    Tls {
        /// The host name or address (the certificate's name).
        host: String,
        /// The port.
        port: u16,
    },
    /// The embedded broker, listening here.
    Embedded(SocketAddr),
}

/// One `[[predefined]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredefinedTopic {
    /// Only for this ClientId; unset: for every sensor.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The topic id, 1 to 65534.
    pub id: u16,
    /// The topic name.
    pub name: String,
}

/// This host's name, as ClientIds may hold it (letters, digits, `-`).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(64)
        .collect();
    if clean.is_empty() {
        "host".into()
    } else {
        clean
    }
}

fn invalid(key: &str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: value.to_string(), reason: reason.into() }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The local addresses of the broker connections
    /// (`broker.source_addresses`).
    pub fn source_addresses(&self) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        self.broker
            .source_addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|_| {
                    invalid(&format!("broker.source_addresses[{i}]"), a, "not an IP address")
                })
            })
            .collect()
    }

    /// Checks values that parse but cannot be used.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.broker_target()?;
        self.source_addresses()?;
        self.pool_options()?;
        let g = &self.gateway;
        if g.workers > 1024 {
            return Err(invalid("gateway.workers", g.workers, "must be 0 (one per core) to 1024"));
        }
        for (key, v) in [
            ("gateway.udp_receive_buffer", g.udp_receive_buffer),
            ("gateway.udp_send_buffer", g.udp_send_buffer),
        ] {
            if v != 0 && !(4096..=1 << 30).contains(&v) {
                return Err(invalid(
                    key,
                    v,
                    "must be 0 (the system default) or 4096 to 1073741824",
                ));
            }
        }
        let t = &self.timers;
        if t.retry_interval_ms == 0 {
            return Err(invalid("timers.retry_interval_ms", 0, "must be at least 1"));
        }
        for (key, f) in [
            ("timers.keepalive_factor_short", t.keepalive_factor_short),
            ("timers.keepalive_factor_long", t.keepalive_factor_long),
        ] {
            if !(1.0..=10.0).contains(&f) {
                return Err(invalid(key, f, "must be between 1.0 and 10.0"));
            }
        }
        let l = &self.limits;
        if l.max_inflight == 0 {
            return Err(invalid("limits.max_inflight", 0, "must be at least 1"));
        }
        if l.max_topics == 0 || l.max_topics > 0xfffd {
            return Err(invalid("limits.max_topics", l.max_topics, "must be 1 to 65533"));
        }
        if !(16..=65_535).contains(&l.max_datagram) {
            return Err(invalid("limits.max_datagram", l.max_datagram, "must be 16 to 65535"));
        }
        if !(1..=65_535).contains(&l.max_client_id_len) {
            return Err(invalid(
                "limits.max_client_id_len",
                l.max_client_id_len,
                "must be 1 to 65535",
            ));
        }
        if self.sleep.buffer_messages == 0 {
            return Err(invalid("sleep.buffer_messages", 0, "must be at least 1"));
        }
        if !l.max_publish_rate.is_finite() || l.max_publish_rate < 0.0 {
            return Err(invalid(
                "limits.max_publish_rate",
                l.max_publish_rate,
                "must be 0 or more",
            ));
        }
        self.predefined_table()?;
        self.predefined_by_client()?;
        self.dtls_settings()?;
        if let Some(acl) = &self.acl {
            acl.acl()?;
        }
        self.server_options()?;
        self.monitoring_addr()?;
        self.api_token()?;
        Ok(())
    }

    /// The management API's token, if one is set: at least 16 visible
    /// ASCII characters (no spaces).
    pub fn api_token(&self) -> Result<Option<String>, ConfigError> {
        let t = &self.monitoring.api_token;
        if t.is_empty() {
            return Ok(None);
        }
        // The value itself is never shown: it is a secret.
        if t.len() < 16 {
            return Err(invalid(
                "monitoring.api_token",
                "(hidden)",
                "must be 16 characters or more",
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "monitoring.api_token",
                "(hidden)",
                "must be visible ASCII characters, without spaces",
            ));
        }
        Ok(Some(t.clone()))
    }

    /// The UDP listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.gateway
            .listen
            .parse()
            .map_err(|_| invalid("gateway.listen", &self.gateway.listen, "not an IP:PORT address"))
    }

    /// Which broker to use.
    pub fn broker_target(&self) -> Result<BrokerTarget, ConfigError> {
        match &self.broker.url {
            Some(url) if url.starts_with("mqtts://") => {
                let plain = format!("mqtt://{}", &url["mqtts://".len()..]);
                let hp = Self::host_port(&plain, 8883)
                    .map_err(|_| invalid("broker.url", url, "not mqtts://HOST[:PORT]"))?;
                let (host, port) = hp.rsplit_once(':').unwrap_or((hp.as_str(), "8883"));
                let port = port.parse().map_err(|_| invalid("broker.url", url, "bad port"))?;
                Ok(BrokerTarget::Tls { host: host.to_owned(), port })
            }
            Some(url) => Ok(BrokerTarget::Remote(Self::host_port(url, 1883)?)),
            None => self.broker.embedded_listen.parse().map(BrokerTarget::Embedded).map_err(|_| {
                invalid(
                    "broker.embedded_listen",
                    &self.broker.embedded_listen,
                    "not an IP:PORT address",
                )
            }),
        }
    }

    /// The `host:port` of an `mqtt://` URL.
    fn host_port(url: &str, default_port: u16) -> Result<String, ConfigError> {
        let Some(rest) = url.strip_prefix("mqtt://") else {
            return Err(invalid("broker.url", url, "must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let hostport = if rest.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            rest.to_owned()
        } else if rest.contains(':') && !rest.starts_with('[') {
            return Err(invalid("broker.url", url, "the port is not a number"));
        } else {
            format!("{rest}:{default_port}")
        };
        if hostport.starts_with(':') {
            return Err(invalid("broker.url", url, "no host"));
        }
        Ok(hostport)
    }

    /// The predefined topic table shared by every sensor.
    pub fn predefined_table(&self) -> Result<Predefined, ConfigError> {
        self.predefined_for(None)
    }

    /// The predefined topics of each ClientId that has its own (the shared
    /// ones included).
    pub fn predefined_by_client(&self) -> Result<HashMap<String, Arc<Predefined>>, ConfigError> {
        let mut out = HashMap::new();
        for p in &self.predefined {
            if let Some(id) = &p.client_id {
                if !out.contains_key(id) {
                    out.insert(id.clone(), Arc::new(self.predefined_for(Some(id))?));
                }
            }
        }
        Ok(out)
    }

    fn predefined_for(&self, client: Option<&str>) -> Result<Predefined, ConfigError> {
        let mut table = Predefined::new();
        for (i, p) in self.predefined.iter().enumerate() {
            if p.client_id.as_deref().is_some_and(|c| Some(c) != client) {
                continue;
            }
            let key = format!("predefined[{i}]");
            if p.id == 0 || p.id == 0xffff {
                return Err(invalid(&format!("{key}.id"), p.id, "0 and 65535 are reserved"));
            }
            if let Err(e) = mqttsn_codec::validate::topic_name(p.name.as_bytes()) {
                return Err(invalid(&format!("{key}.name"), &p.name, &e.to_string()));
            }
            if !table.insert(p.id, &p.name) {
                return Err(invalid(
                    &key,
                    format!("{} = {}", p.id, p.name),
                    "id or name used twice",
                ));
            }
        }
        Ok(table)
    }

    /// The dispatcher's settings.
    pub fn server_options(&self) -> Result<crate::server::ServerOptions, ConfigError> {
        let d = &self.discovery;
        let every = Duration::from_secs(u64::from(d.advertise_interval_secs));
        if d.advertise_interval_secs == 0
            && (!d.advertise_to.is_empty() || !d.multicast_group.is_empty())
        {
            return Err(invalid("discovery.advertise_interval_secs", 0, "must be at least 1"));
        }
        let advertise = if d.advertise_to.is_empty() {
            None
        } else {
            let to = d.advertise_to.parse().map_err(|_| {
                invalid("discovery.advertise_to", &d.advertise_to, "not an IP:PORT address")
            })?;
            Some((to, every))
        };
        let multicast = self
            .multicast_group()?
            .map(|group| crate::options::MulticastDiscovery { group, advertise_every: every });
        let q = &self.qos_minus_one;
        let qos_minus_one = if q.enabled {
            let mut list = Vec::new();
            for (i, net) in q.allow.iter().enumerate() {
                list.push(net.parse::<crate::cidr::Cidr>().map_err(|e| {
                    invalid(&format!("qos_minus_one.allow[{i}]"), net, &e.to_string())
                })?);
            }
            Some(list)
        } else {
            None
        };
        let auth = std::sync::Arc::new(self.auth_table()?);
        let mon = &self.monitoring;
        let sys_topics = (mon.sys_interval_secs > 0).then(|| {
            let prefix = if mon.sys_prefix.is_empty() {
                format!("mqttsn/gateway/{}", d.gateway_id)
            } else {
                mon.sys_prefix.trim_end_matches('/').to_owned()
            };
            (prefix, Duration::from_secs(mon.sys_interval_secs))
        });
        Ok(crate::server::ServerOptions {
            auth,
            sys_topics,
            store_path: (!self.gateway.store.is_empty())
                .then(|| std::path::PathBuf::from(&self.gateway.store)),
            workers: self.gateway.workers,
            udp_receive_buffer: self.gateway.udp_receive_buffer,
            udp_send_buffer: self.gateway.udp_send_buffer,
            session_expiry: (self.limits.session_expiry_secs > 0)
                .then(|| Duration::from_secs(self.limits.session_expiry_secs)),
            max_sessions: (self.limits.max_sessions > 0).then_some(self.limits.max_sessions),
            admission: self.admission.limits()?,
            gateway_id: d.gateway_id,
            answer_searchgw: d.answer_searchgw,
            advertise,
            multicast,
            qos_minus_one,
            own_client_id: self.own_client_id()?,
            serial: self.serial_lines()?,
            aggregating: self.pool_options()?,
            ..crate::server::ServerOptions::default()
        })
    }

    /// `broker.password`, as it goes upstream.
    fn broker_password(&self) -> Option<bytes::Bytes> {
        self.broker.password.as_ref().map(|p| bytes::Bytes::copy_from_slice(p.expose().as_bytes()))
    }

    /// The pool of `gateway.mode = "aggregating"`, checked; `None` in
    /// transparent mode.
    pub fn pool_options(
        &self,
    ) -> Result<Option<crate::upstream::aggregating::PoolOptions>, ConfigError> {
        if self.gateway.mode != Mode::Aggregating {
            return Ok(None);
        }
        let a = &self.aggregating;
        if a.connections == 0 || a.connections > 64 {
            return Err(invalid("aggregating.connections", a.connections, "must be 1 to 64"));
        }
        if a.max_offline_messages == 0 {
            return Err(invalid("aggregating.max_offline_messages", 0, "must be at least 1"));
        }
        if a.client_id.len() > 60_000 {
            return Err(invalid("aggregating.client_id", &a.client_id, "longer than 60000"));
        }
        let own = self.own_client_id()?;
        Ok(Some(crate::upstream::aggregating::PoolOptions {
            connections: a.connections,
            client_id: if a.client_id.is_empty() { own.clone() } else { a.client_id.clone() },
            worker: 0,
            keep_alive: self.broker.keepalive_secs,
            username: self.broker.username.clone(),
            password: self.broker_password(),
            own_client_id: own,
            max_offline: a.max_offline_messages,
        }))
    }

    /// The serial lines, checked.
    pub fn serial_lines(&self) -> Result<Vec<crate::serial::SerialLine>, ConfigError> {
        let mut lines: Vec<crate::serial::SerialLine> = Vec::new();
        for (i, s) in self.serial.iter().enumerate() {
            let key = |k: &str| format!("serial[{i}].{k}");
            if s.device.is_empty() {
                return Err(invalid(&key("device"), "\"\"", "must name the device"));
            }
            if lines.iter().any(|l| l.device.as_os_str() == s.device.as_str()) {
                return Err(invalid(&key("device"), &s.device, "is already an earlier line"));
            }
            if !BAUDS.contains(&s.baud) {
                return Err(invalid(
                    &key("baud"),
                    s.baud,
                    "not a standard baud rate (9600, 19200, 38400, 57600, 115200, ...)",
                ));
            }
            let framing = crate::serial::Framing::from_name(&s.framing).ok_or_else(|| {
                invalid(
                    &key("framing"),
                    format!("{:?}", s.framing),
                    &format!("must be one of {}", crate::serial::Framing::NAMES),
                )
            })?;
            lines.push(crate::serial::SerialLine {
                device: PathBuf::from(&s.device),
                baud: s.baud,
                framing,
            });
        }
        if lines.len() > usize::from(u16::MAX) {
            return Err(invalid("serial", lines.len(), "at most 65535 lines"));
        }
        Ok(lines)
    }

    /// The discovery group, if any.
    pub fn multicast_group(&self) -> Result<Option<crate::multicast::Group>, ConfigError> {
        use crate::multicast::{interface_index, Group, Interface};
        let d = &self.discovery;
        if d.multicast_group.is_empty() {
            return Ok(None);
        }
        let key = "discovery.multicast_group";
        let addr: SocketAddr = d
            .multicast_group
            .parse()
            .map_err(|_| invalid(key, &d.multicast_group, "not an IP:PORT address"))?;
        if !addr.ip().is_multicast() {
            return Err(invalid(
                key,
                &d.multicast_group,
                "not a multicast group (224.0.0.0/4, ff00::/8)",
            ));
        }
        if addr.port() == 0 {
            return Err(invalid(key, &d.multicast_group, "the port must not be 0"));
        }
        let key = "discovery.multicast_interface";
        let name = d.multicast_interface.as_str();
        let interface = if name.is_empty() {
            Interface::Default
        } else if let Ok(index) = name.parse::<u32>() {
            Interface::Index(index)
        } else if let Ok(a) = name.parse::<std::net::Ipv4Addr>() {
            if addr.is_ipv6() {
                return Err(invalid(key, name, "an IPv6 group needs an interface name or index"));
            }
            Interface::Addr(a)
        } else {
            match interface_index(name) {
                Some(index) => Interface::Index(index),
                None => {
                    return Err(invalid(
                        key,
                        name,
                        "neither an IPv4 address, an interface index nor the name of an \
                         interface of this system",
                    ))
                }
            }
        };
        if !(1..=255).contains(&d.multicast_hops) {
            return Err(invalid("discovery.multicast_hops", d.multicast_hops, "must be 1 to 255"));
        }
        let mut addr = addr;
        if let (SocketAddr::V6(a), Interface::Index(i)) = (&mut addr, interface) {
            // A link-local group exists once per link: name the link.
            a.set_scope_id(i);
        }
        Ok(Some(Group { addr, interface, hops: d.multicast_hops }))
    }

    /// The ClientId of the gateway's own broker connection:
    /// `broker.client_id`, or one made unique per host.
    pub fn own_client_id(&self) -> Result<String, ConfigError> {
        let b = &self.broker;
        if !b.client_id.is_empty() {
            if b.client_id.len() > 65_535 {
                return Err(invalid("broker.client_id", &b.client_id, "longer than 65535"));
            }
            return Ok(b.client_id.clone());
        }
        Ok(format!(
            "{}mqttsn-gateway-{}-{}",
            b.client_id_prefix,
            host_name(),
            self.discovery.gateway_id
        ))
    }

    /// Where the Prometheus endpoint listens, if anywhere.
    pub fn monitoring_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let l = &self.monitoring.listen;
        if l.is_empty() {
            return Ok(None);
        }
        l.parse().map(Some).map_err(|_| invalid("monitoring.listen", l, "not an IP:PORT address"))
    }

    /// The TLS settings for `mqtts://`.
    pub fn tls_settings(&self) -> crate::upstream::tls::TlsSettings {
        crate::upstream::tls::TlsSettings {
            ca_file: self.broker.ca_file.clone(),
            cert_file: self.broker.cert_file.clone(),
            key_file: self.broker.key_file.clone(),
        }
    }

    /// The credentials table.
    pub fn auth_table(&self) -> Result<crate::auth::AuthTable, ConfigError> {
        use crate::auth::{AuthTable, ClientEntry, Identity};
        let allow_unknown = match self.auth.unknown_clients.as_str() {
            "allow" => true,
            "refuse" => false,
            other => {
                return Err(invalid(
                    "auth.unknown_clients",
                    other,
                    "must be \"allow\" or \"refuse\"",
                ))
            }
        };
        let mut table = AuthTable::default();
        table.allow_unknown = allow_unknown;
        table.default_identity = Identity {
            username: self.broker.username.clone(),
            password: self.broker_password(),
            client_cert: None,
        };
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if !seen.insert(c.client_id.as_str()) {
                return Err(invalid(
                    &format!("clients[{i}].client_id"),
                    &c.client_id,
                    "listed twice",
                ));
            }
            let mut allow_from = Vec::new();
            for (j, net) in c.allow_from.iter().enumerate() {
                allow_from.push(net.parse::<crate::cidr::Cidr>().map_err(|e| {
                    invalid(&format!("clients[{i}].allow_from[{j}]"), net, &e.to_string())
                })?);
            }
            table.insert(
                &c.client_id,
                ClientEntry {
                    identity: Identity {
                        username: c.username.clone(),
                        password: c
                            .password
                            .as_ref()
                            .map(|p| bytes::Bytes::copy_from_slice(p.expose().as_bytes())),
                        client_cert: match (&c.cert_file, &c.key_file) {
                            (Some(cert), Some(key)) => Some(
                                crate::upstream::tls::ClientCert::load(cert, key).map_err(|e| {
                                    invalid(
                                        &format!("clients[{i}].cert_file"),
                                        cert.display(),
                                        &e.to_string(),
                                    )
                                })?,
                            ),
                            (None, None) => None,
                            _ => {
                                return Err(invalid(
                                    &format!("clients[{i}]"),
                                    &c.client_id,
                                    "cert_file and key_file go together",
                                ))
                            }
                        },
                    },
                    allow_from,
                    dtls: c.psk.is_some() || c.dtls_cert_sha256.is_some(),
                },
            );
        }
        Ok(table)
    }

    /// The DTLS listener's address and settings; None when it is off
    /// (no address, or nothing to authenticate with).
    pub fn dtls_settings(
        &self,
    ) -> Result<Option<(SocketAddr, crate::dtls::DtlsSettings)>, ConfigError> {
        use crate::dtls::{credentials, Credentials, DtlsSettings};
        let d = &self.dtls;
        let bad = |key: &str, value: &dyn std::fmt::Display, e: &credentials::CredentialsError| {
            invalid(key, value, &e.reason())
        };
        let mut creds = Credentials::default();
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(psk) = &c.psk {
                let key = format!("clients[{i}].psk");
                creds
                    .add_psk(&key, &c.client_id, psk.expose())
                    .map_err(|e| bad(&key, &"***", &e))?;
            }
            if let Some(fp) = &c.dtls_cert_sha256 {
                let key = format!("clients[{i}].dtls_cert_sha256");
                creds.add_certificate(&key, &c.client_id, fp).map_err(|e| bad(&key, fp, &e))?;
            }
        }
        let certificate = match (&d.cert_file, &d.key_file) {
            (Some(cert), Some(key)) => {
                Some(credentials::load_certificate(cert, key).map_err(|e| match &e {
                    credentials::CredentialsError::File { key, path, .. } => bad(key, path, &e),
                    _ => bad("dtls.cert_file", &cert.display(), &e),
                })?)
            }
            (None, None) => None,
            _ => return Err(invalid("dtls.cert_file", "", "cert_file and key_file go together")),
        };
        let mut versions = crate::dtls::Versions { dtls12: false, dtls13: false };
        for v in &d.versions {
            match v.as_str() {
                "1.2" => versions.dtls12 = true,
                "1.3" => versions.dtls13 = true,
                _ => return Err(invalid("dtls.versions", v, "must be \"1.2\" or \"1.3\"")),
            }
        }
        if !versions.dtls12 && !versions.dtls13 {
            return Err(invalid("dtls.versions", "[]", "must name at least one version"));
        }
        if !versions.dtls12 && creds.has_psks() {
            return Err(invalid(
                "dtls.versions",
                "[\"1.3\"]",
                "a [[clients]] psk needs \"1.2\" (DTLS 1.3 here has no PSK handshake)",
            ));
        }
        if !versions.dtls12 && certificate.is_none() {
            return Err(invalid(
                "dtls.versions",
                "[\"1.3\"]",
                "DTLS 1.3 needs cert_file and key_file",
            ));
        }
        for (key, v) in [
            ("dtls.max_associations", d.max_associations as u64),
            ("dtls.max_handshakes", d.max_handshakes as u64),
            ("dtls.hello_verify_per_sec", u64::from(d.hello_verify_per_sec)),
            ("dtls.idle_timeout_secs", d.idle_timeout_secs),
        ] {
            if v == 0 {
                return Err(invalid(key, 0, "must be at least 1"));
            }
        }
        if !(1..=600).contains(&d.handshake_timeout_secs) {
            return Err(invalid(
                "dtls.handshake_timeout_secs",
                d.handshake_timeout_secs,
                "must be 1 to 600",
            ));
        }
        if d.listen.is_empty() {
            return Ok(None);
        }
        let addr: SocketAddr = d
            .listen
            .parse()
            .map_err(|_| invalid("dtls.listen", &d.listen, "not an IP:PORT address"))?;
        if !creds.has_psks() && certificate.is_none() {
            return Ok(None);
        }
        let mut s = DtlsSettings::new(creds);
        s.versions = versions;
        s.certificate = certificate;
        s.require_client_certificate = d.require_client_certificate;
        s.max_associations = d.max_associations;
        s.max_handshakes = d.max_handshakes;
        s.hello_verify_per_sec = d.hello_verify_per_sec;
        s.idle_timeout = Duration::from_secs(d.idle_timeout_secs);
        s.handshake_timeout = Duration::from_secs(d.handshake_timeout_secs);
        Ok(Some((addr, s)))
    }

    /// The settings every session runs with.
    pub fn session_config(&self) -> Result<SessionConfig, ConfigError> {
        let t = &self.timers;
        let l = &self.limits;
        Ok(SessionConfig {
            retry_interval: Duration::from_millis(t.retry_interval_ms),
            max_retries: t.max_retries,
            keepalive_tolerance: Tolerance {
                threshold: Duration::from_millis(t.keepalive_threshold_ms),
                short_factor: t.keepalive_factor_short,
                long_factor: t.keepalive_factor_long,
            },
            max_inflight: l.max_inflight,
            max_queued: l.max_queued,
            max_topics: l.max_topics,
            max_datagram: l.max_datagram,
            max_client_id_len: l.max_client_id_len,
            client_id_prefix: self.broker.client_id_prefix.clone(),
            predefined: Arc::new(self.predefined_table()?),
            predefined_by_client: self.predefined_by_client()?,
            acl: match &self.acl {
                Some(acl) => Some(Arc::new(acl.acl()?)),
                None => None,
            },
            publish_rate: (l.max_publish_rate > 0.0)
                .then_some((l.max_publish_rate, l.publish_burst.max(1))),
            sleep_buffer_messages: self.sleep.buffer_messages,
            sleep_buffer_bytes: self.sleep.buffer_bytes,
            buffer_qos0: self.sleep.buffer_qos0,
            buffer_total: std::sync::Arc::new(crate::session::BufferTotal::new(
                self.sleep.total_buffer_messages,
                self.sleep.total_buffer_bytes,
            )),
            ack_on_receipt: self.gateway.mode == Mode::Aggregating,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen_addr().unwrap().port(), 1884);
        assert_eq!(
            c.broker_target().unwrap(),
            BrokerTarget::Embedded("127.0.0.1:1883".parse().unwrap())
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("[timers]\nretry_interval_ms = 0\n", "x").unwrap_err();
        assert!(e.to_string().contains("timers.retry_interval_ms"), "{e}");
        let e = Config::parse("[limits]\nmax_inflight = 0\n", "x").unwrap_err();
        assert!(e.to_string().contains("limits.max_inflight"), "{e}");
        let e = Config::parse("[gateway]\nudp_receive_buffer = 10\n", "x").unwrap_err();
        assert!(e.to_string().contains("gateway.udp_receive_buffer"), "{e}");
        let e = Config::parse("[gateway]\nworkers = 5000\n", "x").unwrap_err();
        assert!(e.to_string().contains("gateway.workers"), "{e}");
        let e = Config::parse("[timers]\nretry = 1\n", "x").unwrap_err();
        assert!(e.to_string().contains("retry"), "{e}");
        let e = Config::parse("[broker]\nurl = \"http://x\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("broker.url"), "{e}");
        let e = Config::parse("[[predefined]]\nid = 0\nname = \"a\"\n", "x").unwrap_err();
        assert!(e.to_string().contains("predefined[0].id"), "{e}");
        let e = Config::parse(
            "[[predefined]]\nid = 1\nname = \"a\"\n[[predefined]]\nid = 1\nname = \"b\"\n",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("predefined[1]"), "{e}");
    }

    #[test]
    fn dtls_versions() {
        let psk = "[[clients]]\nclient_id = \"a\"\npsk = \"00112233445566778899aabbccddeeff\"\n";
        let (_, s) = Config::parse(psk, "x").unwrap().dtls_settings().unwrap().unwrap();
        assert_eq!(s.versions, crate::dtls::Versions { dtls12: true, dtls13: true });
        let v12 = format!("{psk}[dtls]\nversions = [\"1.2\"]\n");
        let (_, s) = Config::parse(&v12, "x").unwrap().dtls_settings().unwrap().unwrap();
        assert_eq!(s.versions, crate::dtls::Versions { dtls12: true, dtls13: false });
        for (text, why) in [
            ("[dtls]\nversions = [\"1.0\"]\n", "must be"),
            ("[dtls]\nversions = []\n", "at least one"),
            ("[dtls]\nversions = [\"1.3\"]\n", "needs cert_file"),
            ("[dtls]\nversions = [\"1.3\"]\n[[clients]]\nclient_id = \"a\"\npsk = \"00112233445566778899aabbccddeeff\"\n", "psk needs"),
        ] {
            let e = Config::parse(text, "x").unwrap_err();
            assert!(e.to_string().contains("dtls.versions") && e.to_string().contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn serial_lines() {
        let c = Config::parse(
            "[[serial]]\ndevice = \"/dev/ttyUSB0\"\n\
             [[serial]]\ndevice = \"/dev/ttyAMA0\"\nbaud = 115200\nframing = \"xbee-api2\"\n",
            "x",
        )
        .unwrap();
        let lines = c.server_options().unwrap().serial;
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].baud, lines[0].framing), (9600, crate::serial::Framing::Raw));
        assert_eq!((lines[1].baud, lines[1].framing), (115_200, crate::serial::Framing::XbeeApi2));
        for (text, key) in [
            ("device = \"\"", "serial[0].device"),
            ("device = \"/dev/x\"\nbaud = 1234", "serial[0].baud"),
            ("device = \"/dev/x\"\nframing = \"xbee\"", "serial[0].framing"),
            ("device = \"/dev/x\"\n[[serial]]\ndevice = \"/dev/x\"", "serial[1].device"),
            ("device = \"/dev/x\"\nspeed = 9600", "speed"),
        ] {
            let e = Config::parse(&format!("[[serial]]\n{text}\n"), "x").unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_discovery_group_and_its_interface() {
        use crate::multicast::{Group, Interface};
        let g = |text: &str| Config::parse(text, "x").map(|c| c.multicast_group().unwrap());
        let d = g("").unwrap().unwrap();
        assert_eq!(
            d,
            Group { addr: DEFAULT_GROUP.parse().unwrap(), interface: Interface::Default, hops: 1 }
        );
        assert_eq!(g("[discovery]\nmulticast_group = \"\"\n").unwrap(), None);
        let d = g("[discovery]\nmulticast_interface = \"127.0.0.1\"\nmulticast_hops = 4\n")
            .unwrap()
            .unwrap();
        assert_eq!((d.interface, d.hops), (Interface::Addr(std::net::Ipv4Addr::LOCALHOST), 4));
        let v6 = "[discovery]\nmulticast_group = \"[ff02::1:1883]:1883\"\nmulticast_interface = \"lo\"\n";
        let d = g(v6).unwrap().unwrap();
        assert!(matches!(d.interface, Interface::Index(i) if i > 0));
        for (text, key) in [
            ("multicast_group = \"10.0.0.1:1883\"", "discovery.multicast_group"),
            ("multicast_group = \"225.1.1.1\"", "discovery.multicast_group"),
            ("multicast_interface = \"no-such-if0\"", "discovery.multicast_interface"),
            ("multicast_hops = 0", "discovery.multicast_hops"),
            (
                "multicast_group = \"[ff02::1]:1883\"\nmulticast_interface = \"127.0.0.1\"",
                "discovery.multicast_interface",
            ),
        ] {
            let e = Config::parse(&format!("[discovery]\n{text}\n"), "x").unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_own_client_id_is_unique_per_host_or_configured() {
        let c = Config::parse("[discovery]\ngateway_id = 7\n", "x").unwrap();
        let id = c.own_client_id().unwrap();
        assert!(id.starts_with("mqttsn-gateway-") && id.ends_with("-7"), "{id}");
        assert!(id.len() > "mqttsn-gateway--7".len(), "the host name is in it: {id}");
        let c = Config::parse("[broker]\nclient_id = \"gw-east\"\n", "x").unwrap();
        assert_eq!(c.own_client_id().unwrap(), "gw-east");
        assert_eq!(c.server_options().unwrap().own_client_id, "gw-east");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = Config::parse(
            "[broker]\nusername = \"gw\"\npassword = \"broker-secret\"\n\
             [[clients]]\nclient_id = \"s1\"\nusername = \"u1\"\npassword = \"client-secret\"\n",
            "x",
        )
        .unwrap();
        let auth = c.auth_table().unwrap();
        let identity =
            auth.check("s1", &crate::peer::Peer::direct(([127, 0, 0, 1], 1).into())).unwrap();
        let spec = crate::upstream::ConnectSpec {
            client_id: "s1".into(),
            clean_session: true,
            keep_alive: 0,
            will: None,
            username: identity.username.clone(),
            password: identity.password.clone(),
            client_cert: None,
        };
        let shown = format!(
            "{c:?} {auth:?} {identity:?} {spec:?} {:?} {:?}",
            c.server_options().unwrap(),
            crate::upstream::Command::Connect(Box::new(spec.clone()))
        );
        for secret in ["broker-secret", "client-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("u1") && shown.contains("***"), "{shown}");
        assert_eq!(identity.password.as_deref(), Some(&b"client-secret"[..]), "still used");
    }

    #[test]
    fn broker_urls() {
        let mut c = Config::default();
        let target = |c: &mut Config, url: &str| {
            c.broker.url = Some(url.into());
            c.broker_target()
        };
        assert_eq!(
            target(&mut c, "mqtt://broker.local").unwrap(),
            BrokerTarget::Remote("broker.local:1883".into())
        );
        assert_eq!(
            target(&mut c, "mqtt://10.0.0.1:2883/").unwrap(),
            BrokerTarget::Remote("10.0.0.1:2883".into())
        );
        assert!(target(&mut c, "mqtt://h:x").is_err());
    }

    #[test]
    fn the_mode_and_the_pool_are_checked() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.gateway.mode, Mode::Transparent);
        assert!(c.pool_options().unwrap().is_none());
        let c = Config::parse(
            "[gateway]\nmode = \"aggregating\"\n[broker]\nclient_id = \"gw\"\nusername = \"u\"\n",
            "x",
        )
        .unwrap();
        let p = c.pool_options().unwrap().unwrap();
        assert_eq!(
            (p.connections, p.client_id.as_str(), p.username.as_deref()),
            (2, "gw", Some("u"))
        );
        assert!(c.session_config().unwrap().ack_on_receipt);
        let e = Config::parse(
            "[gateway]\nmode = \"aggregating\"\n[aggregating]\nconnections = 0\n",
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("aggregating.connections") && e.contains("1 to 64"), "{e}");
        let e = Config::parse("[gateway]\nmode = \"bridging\"\n", "x").unwrap_err().to_string();
        assert!(e.contains("mode"), "{e}");
    }
}
