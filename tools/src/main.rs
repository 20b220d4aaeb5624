//! `mqttsn`: command-line tools for MQTT-SN.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mqttsn_client::std_dtls::DtlsVersion;
use mqttsn_tools::bench::{self, BenchError, BenchOptions, Mode, QosMix};
use mqttsn_tools::dump::{self, DumpOptions};
use mqttsn_tools::pubsub::{self, Common, Failure, Messages, PubOptions, PubTopic, SubOptions};
use mqttsn_tools::relay::impairment::{Partition, Probability, Profile};
use mqttsn_tools::relay::peers::PeerLimits;
use mqttsn_tools::relay::{self, RelayOptions};

/// Command-line tools for MQTT-SN v1.2.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Tool,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Print every MQTT-SN datagram, decoded, one line each (listen mode),
    /// or relay between sensors and a gateway and print both directions.
    Dump {
        /// The UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:1884", value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// Relay mode: forward every datagram to this gateway and its
        /// answers back to the sensor.
        #[arg(long, value_name = "ADDR:PORT")]
        relay_to: Option<SocketAddr>,
        /// Exit after printing this many datagrams.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Relay mode: its bounds.
        #[command(flatten)]
        peers: PeerArgs,
        /// Read the MQTT-SN messages of this serial line instead of a UDP
        /// socket (a radio module or a sensor on a serial port).
        #[arg(long, value_name = "DEVICE", conflicts_with = "relay_to")]
        serial: Option<std::path::PathBuf>,
        /// The serial line's baud rate.
        #[arg(long, default_value_t = 9600, value_name = "N", requires = "serial")]
        baud: u32,
        /// The serial line's framing: raw (mqtt-sn-tools' serial bridge),
        /// slip, xbee-api1 or xbee-api2.
        #[arg(long, default_value = "raw", value_parser = parse_framing, requires = "serial")]
        framing: mqttsn_codec::serial::Framing,
    },
    /// Relay between sensors and a gateway with loss, duplication,
    /// reordering, delay and jitter, per direction; a summary at the end.
    Relay(Box<RelayArgs>),
    /// Publish like mosquitto_pub: -h HOST -p PORT -t TOPIC -m MESSAGE.
    #[command(disable_help_flag = true)]
    Pub(PubArgs),
    /// Subscribe like mosquitto_sub: -h HOST -p PORT -t TOPIC -v.
    #[command(disable_help_flag = true)]
    Sub(SubArgs),
    /// Load and measure a gateway: simulated sensors, a counting subscriber
    /// on the broker, the direct-to-broker ceiling; one JSON line out.
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
    /// Write the man pages and shell completions (bash, zsh, fish) into DIR
    /// (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// The folder: DIR/man/*.1, DIR/completions/*.
        dir: std::path::PathBuf,
    },
}

/// `mqttsn relay`; see docs/tools.md. Each impairment has an option for
/// both directions and one per direction (`up`: sensor to gateway, `down`:
/// gateway to sensor) that overrides it.
#[derive(Debug, Args)]
struct RelayArgs {
    /// Where the sensors send.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The gateway to relay to.
    #[arg(long, value_name = "ADDR:PORT")]
    to: SocketAddr,
    /// The chance a datagram is lost: 0.2 or 20%.
    #[arg(long, value_name = "P")]
    loss: Option<Probability>,
    /// --loss, sensor to gateway.
    #[arg(long, value_name = "P")]
    up_loss: Option<Probability>,
    /// --loss, gateway to sensor.
    #[arg(long, value_name = "P")]
    down_loss: Option<Probability>,
    /// The chance a datagram is sent twice.
    #[arg(long, value_name = "P")]
    duplicate: Option<Probability>,
    /// --duplicate, sensor to gateway.
    #[arg(long, value_name = "P")]
    up_duplicate: Option<Probability>,
    /// --duplicate, gateway to sensor.
    #[arg(long, value_name = "P")]
    down_duplicate: Option<Probability>,
    /// The chance a datagram is held back and overtaken by the next ones.
    #[arg(long, value_name = "P")]
    reorder: Option<Probability>,
    /// --reorder, sensor to gateway.
    #[arg(long, value_name = "P")]
    up_reorder: Option<Probability>,
    /// --reorder, gateway to sensor.
    #[arg(long, value_name = "P")]
    down_reorder: Option<Probability>,
    /// How many later datagrams overtake a held one.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    reorder_window: u32,
    /// The longest a datagram is held back, when fewer come after it.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    reorder_hold: u64,
    /// The delay of every datagram, in milliseconds.
    #[arg(long, value_name = "MS")]
    delay: Option<u64>,
    /// --delay, sensor to gateway.
    #[arg(long, value_name = "MS")]
    up_delay: Option<u64>,
    /// --delay, gateway to sensor.
    #[arg(long, value_name = "MS")]
    down_delay: Option<u64>,
    /// The delay varies by up to this much either way (the order is kept).
    #[arg(long, value_name = "MS")]
    jitter: Option<u64>,
    /// --jitter, sensor to gateway.
    #[arg(long, value_name = "MS")]
    up_jitter: Option<u64>,
    /// --jitter, gateway to sensor.
    #[arg(long, value_name = "MS")]
    down_jitter: Option<u64>,
    /// The seed of every decision; the same seed, the same decisions for
    /// the same datagrams (default: from the clock, printed in the summary).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Exit after receiving this many datagrams (both directions), once
    /// those still delayed have gone out.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// An outage, both directions: every datagram arriving from AT seconds
    /// after the start, for FOR seconds, is lost (repeatable).
    #[arg(long, value_name = "AT+FOR")]
    partition: Vec<Partition>,
    /// The bounds of the relay.
    #[command(flatten)]
    peers: PeerArgs,
}

/// The bounds of a relay (`dump --relay-to` and `relay`).
#[derive(Debug, clap::Args)]
struct PeerArgs {
    /// The most sensors relayed at once; datagrams from further sensors
    /// are dropped.
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_peers: u32,
    /// Forget a sensor silent for this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
}

impl PeerArgs {
    fn limits(&self) -> anyhow::Result<PeerLimits> {
        Ok(PeerLimits {
            max_peers: usize::try_from(self.max_peers)?,
            idle_timeout: Duration::from_secs(self.idle_timeout),
        })
    }
}

impl RelayArgs {
    /// The profile of one direction: its own options over the shared ones.
    fn profile(&self, up: bool) -> Profile {
        let pick = |both: Option<Probability>, u: Option<Probability>, d: Option<Probability>| {
            if up { u } else { d }.or(both)
        };
        let ms = |both: Option<u64>, u: Option<u64>, d: Option<u64>| {
            Duration::from_millis(if up { u } else { d }.or(both).unwrap_or(0))
        };
        Profile {
            loss: pick(self.loss, self.up_loss, self.down_loss).unwrap_or_default(),
            duplicate: pick(self.duplicate, self.up_duplicate, self.down_duplicate)
                .unwrap_or_default(),
            reorder: pick(self.reorder, self.up_reorder, self.down_reorder).unwrap_or_default(),
            window: self.reorder_window,
            hold: Duration::from_millis(self.reorder_hold),
            delay: ms(self.delay, self.up_delay, self.down_delay),
            jitter: ms(self.jitter, self.up_jitter, self.down_jitter),
        }
    }

    fn options(&self) -> anyhow::Result<RelayOptions> {
        let duration = match self.duration {
            Some(s) => Some(
                Duration::try_from_secs_f64(s)
                    .map_err(|_| anyhow::anyhow!("--duration {s}: a number of seconds"))?,
            ),
            None => None,
        };
        let seed = self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map(|d| d.as_nanos() as u64).unwrap_or_default() ^ u64::from(std::process::id())
        });
        Ok(RelayOptions {
            listen: self.listen,
            gateway: self.to,
            up: self.profile(true),
            down: self.profile(false),
            seed,
            count: self.count,
            duration,
            partitions: self.partition.clone(),
            limits: self.peers.limits()?,
        })
    }
}

/// A future that completes on SIGINT or SIGTERM. The handlers are
/// installed here, before the relay says it is ready, so that a signal
/// sent right after the ready line is never lost (nor kills the process
/// before the summary).
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn run_relay(a: &RelayArgs) -> anyhow::Result<()> {
    let opts = a.options()?;
    let stop = stop_signal()?;
    let (up, down, gateway) = (opts.up, opts.down, opts.gateway);
    let summary = relay::run(
        opts,
        |addr| {
            eprintln!("relaying udp://{addr} <-> udp://{gateway}");
            eprintln!("up: {up}");
            eprintln!("down: {down}");
        },
        stop,
    )
    .await?;
    print!("{summary}");
    Ok(())
}

/// Options of `pub` and `sub` as in mosquitto's tools (`-h` is the host).
#[derive(Debug, Args)]
struct CommonArgs {
    /// The gateway host, or HOST:PORT; repeat for several gateways
    /// (`-h gw1 -h gw2`): the session fails over to the next when one is
    /// lost or sends DISCONNECT (one gateway only with DTLS).
    #[arg(short = 'h', long, default_value = "127.0.0.1", action = clap::ArgAction::Append)]
    host: Vec<String>,
    /// The gateway UDP port [default: 1884, 8884 with DTLS].
    #[arg(short, long)]
    port: Option<u16>,
    /// The ClientId (default: mqttsn-pub-PID / mqttsn-sub-PID).
    #[arg(short = 'i', long = "id")]
    client_id: Option<String>,
    /// Keepalive in seconds.
    #[arg(short, long, default_value_t = 60)]
    keepalive: u16,
    /// Print every datagram, decoded, on standard error.
    #[arg(short, long)]
    debug: bool,
    /// Seconds to wait for each answer from the gateway.
    #[arg(long, default_value_t = 10)]
    wait: u64,
    /// Will topic (set by the will handshake at CONNECT).
    #[arg(long)]
    will_topic: Option<String>,
    /// Will payload.
    #[arg(long, default_value = "", requires = "will_topic")]
    will_payload: String,
    /// Will QoS: 0, 1 or 2.
    #[arg(long, default_value_t = 0, requires = "will_topic")]
    will_qos: i8,
    /// Will retain.
    #[arg(long, requires = "will_topic")]
    will_retain: bool,
    /// DTLS: the PSK identity (default: the ClientId).
    #[arg(long, requires = "psk")]
    psk_identity: Option<String>,
    /// DTLS with a pre-shared key, in hex (the PSK-AES128-CCM8 suite).
    #[arg(long, conflicts_with = "cafile")]
    psk: Option<String>,
    /// DTLS, the gateway's certificate checked against this CA file (PEM):
    /// it must be in it or signed by a certificate in it.
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// DTLS: the client's certificate (PEM, ECDSA), for a gateway that
    /// asks for one.
    #[arg(long, requires_all = ["cafile", "key"])]
    cert: Option<PathBuf>,
    /// DTLS: the client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// DTLS version: 1.2, 1.3 (certificates only, not with --psk) or auto
    /// (both offered, the gateway chooses; with --psk: 1.2).
    #[arg(long, default_value = "auto", value_parser = ["1.2", "1.3", "auto"])]
    dtls_version: String,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl CommonArgs {
    fn dtls(&self) -> Option<pubsub::DtlsOptions> {
        let any = self.psk.is_some() || self.cafile.is_some();
        any.then(|| pubsub::DtlsOptions {
            psk_identity: self.psk_identity.clone(),
            psk: self.psk.clone(),
            cafile: self.cafile.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            version: match self.dtls_version.as_str() {
                "1.2" => DtlsVersion::Dtls12,
                "1.3" => DtlsVersion::Dtls13,
                _ => DtlsVersion::Auto,
            },
        })
    }

    fn common(&self) -> Result<Common, Failure> {
        let will = match &self.will_topic {
            Some(t) => {
                let q = pubsub::qos(self.will_qos)?;
                if q == mqttsn_client::QoS::NoSession {
                    return Err(Failure::Usage("--will-qos must be 0, 1 or 2".into()));
                }
                Some((t.clone(), self.will_payload.clone().into_bytes(), q, self.will_retain))
            }
            None => None,
        };
        let dtls = self.dtls();
        Ok(Common {
            hosts: self.host.clone(),
            port: self.port.unwrap_or(if dtls.is_some() { 8884 } else { 1884 }),
            client_id: self.client_id.clone(),
            keepalive: self.keepalive,
            debug: self.debug,
            wait: Duration::from_secs(self.wait),
            will,
            dtls,
        })
    }
}

#[derive(Debug, Args)]
struct PubArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The topic name (two characters: a short name).
    #[arg(short, long, conflicts_with = "predefined", required_unless_present = "predefined")]
    topic: Option<String>,
    /// A predefined topic id.
    #[arg(short = 'T', long)]
    predefined: Option<u16>,
    /// The message.
    #[arg(short, long, group = "payload")]
    message: Option<String>,
    /// Send each line of standard input as a message (the connection is
    /// kept alive while no line comes).
    #[arg(short = 'l', long, group = "payload")]
    stdin_lines: bool,
    /// Read standard input to its end and send it as one message.
    #[arg(short = 's', long, group = "payload")]
    stdin_file: bool,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long, group = "payload")]
    file: Option<std::path::PathBuf>,
    /// Send an empty message.
    #[arg(short = 'n', long, group = "payload")]
    null_message: bool,
    /// QoS: -1, 0, 1 or 2.
    #[arg(short, long, default_value_t = 0, allow_negative_numbers = true)]
    qos: i8,
    /// Retain.
    #[arg(short, long)]
    retain: bool,
    /// End with DISCONNECT carrying this sleep duration (seconds).
    #[arg(long, value_name = "SECONDS")]
    sleep: Option<u16>,
}

#[derive(Debug, Args)]
struct SubArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// A topic filter (repeatable; wildcards allowed; two characters: a short name).
    #[arg(short, long)]
    topic: Vec<String>,
    /// A predefined topic id (repeatable).
    #[arg(short = 'T', long)]
    predefined: Vec<u16>,
    /// A topic filter to unsubscribe from (repeatable), after subscribing;
    /// with -c, it removes a subscription of the kept session.
    #[arg(short = 'U', long, value_name = "TOPIC")]
    unsubscribe: Vec<String>,
    /// QoS: 0, 1 or 2.
    #[arg(short, long, default_value_t = 0)]
    qos: i8,
    /// CleanSession false: the gateway and the broker keep the session
    /// (subscriptions, messages) when the tool exits.
    #[arg(short = 'c', long = "disable-clean-session")]
    persistent: bool,
    /// Print the topic before each payload.
    #[arg(short, long)]
    verbose: bool,
    /// No newline after each message.
    #[arg(short = 'N')]
    no_eol: bool,
    /// Do not print messages with the retain flag (stale ones).
    #[arg(short = 'R')]
    no_retained: bool,
    /// Output format, with mosquitto_sub's codes: %t topic, %p payload, %q
    /// QoS, %r retain, %l length, %x/%X hex, %I %U time, %j %J JSON,
    /// @H-style time fields, \n \t escapes (docs/tools.md).
    #[arg(short = 'F', value_name = "FORMAT")]
    format: Option<String>,
    /// Exit once every subscription (and -U) is acknowledged.
    #[arg(short = 'E')]
    exit_after_subscribe: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long)]
    count: Option<u64>,
    /// Exit after this many seconds (exit code 27, as mosquitto_sub).
    #[arg(short = 'W', long)]
    timeout: Option<u64>,
    /// Sleep cycles: sleep this many seconds, wake, print what arrived, repeat.
    #[arg(long, value_name = "SECONDS")]
    sleep: Option<u16>,
}

/// `mqttsn bench`; see docs/tools.md for the report's keys.
#[derive(Debug, Args)]
struct BenchArgs {
    /// The gateway host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// The gateway UDP port.
    #[arg(short, long, default_value_t = 1884)]
    port: u16,
    /// The broker the gateway uses: mqtt://HOST:PORT, HOST:PORT or HOST. The
    /// counting subscriber connects there, and the direct mode's clients.
    #[arg(short, long, default_value = "mqtt://127.0.0.1:1883", value_name = "URL")]
    broker: String,
    /// Simulated sensors, each with its own UDP socket.
    #[arg(short = 'c', long, default_value_t = 10, value_name = "N")]
    sensors: u32,
    /// Messages each publishing sensor sends (per sensor, not in total).
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    count: u64,
    /// Target rate of all sensors together, messages per second; without
    /// it each sensor sends as fast as its window allows.
    #[arg(short, long, value_name = "MSG/S")]
    rate: Option<f64>,
    /// QoS of every message: 0, 1 or 2.
    #[arg(short, long, default_value_t = 1, conflicts_with = "qos_mix",
          value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// A QoS mix instead of --qos, e.g. 0:70,1:20,2:10 (weights).
    #[arg(long, value_name = "QOS:WEIGHT,...")]
    qos_mix: Option<String>,
    /// QoS 1/2 messages in flight per sensor.
    #[arg(long, default_value_t = 1, value_name = "N")]
    inflight: u16,
    /// CleanSession false (the sessions are wiped at the end).
    #[arg(long)]
    persistent: bool,
    /// Payload size in octets (the stamp takes 20).
    #[arg(short, long, default_value_t = 24, value_name = "OCTETS")]
    size: usize,
    /// Topic prefix: sensor I publishes to PREFIX/TAG/u/I.
    #[arg(short, long, default_value = "bench", value_name = "PREFIX")]
    topic: String,
    /// Bound of each pass, in seconds; reaching it cuts the pass short
    /// (exit 3).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    max_time: f64,
    /// Handshakes (CONNECT to the last REGACK/SUBACK) in flight at once.
    #[arg(long, default_value_t = 128, value_name = "N")]
    connect_window: u32,
    /// Retransmission interval toward the gateway, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    retry_ms: u64,
    /// Retransmissions before a request or a message is given up.
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_retries: u32,
    /// After the last message: how long nothing may arrive before what is
    /// missing counts as lost, in seconds.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    drain: f64,
    /// Share of the sensors that sleep, in percent.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT")]
    sleepers: f64,
    /// The Duration of the sleepers' DISCONNECT, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    sleep_duration: u16,
    /// Messages published on the broker to each sleeper while it sleeps.
    #[arg(long, default_value_t = 10, value_name = "N")]
    sleep_messages: u64,
    /// Their QoS.
    #[arg(long, default_value_t = 1, value_name = "QOS",
          value_parser = clap::value_parser!(u8).range(0..=2))]
    sleep_qos: u8,
    /// Broker to sensor: messages published on the broker per topic (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    down_count: u64,
    /// Their rate, all topics together, before fan-out (messages per second).
    #[arg(long, value_name = "MSG/S")]
    down_rate: Option<f64>,
    /// Their QoS.
    #[arg(long, default_value_t = 1, value_name = "QOS",
          value_parser = clap::value_parser!(u8).range(0..=2))]
    down_qos: u8,
    /// Sensors subscribed to each broker topic.
    #[arg(long, default_value_t = 1, value_name = "N")]
    fanout: u32,
    /// Only the direct pass: MQTT clients straight to the broker.
    #[arg(long, conflicts_with = "compare_direct")]
    direct: bool,
    /// The direct pass, then the gateway pass; figures also as ratios.
    #[arg(long)]
    compare_direct: bool,
    /// The gateway's process: CPU per message and memory per sensor.
    #[arg(long, value_name = "PID")]
    gateway_pid: Option<u32>,
    /// The broker's process: the same figures.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
    /// Spread the sensors' sockets over this many source addresses,
    /// 127.0.0.1, 127.0.0.2, ... (gateway on IPv4 loopback only); default:
    /// one per 20,000 sensors, as each address has about 28,000 ephemeral
    /// ports.
    #[arg(long, value_name = "N")]
    source_addresses: Option<u32>,
    /// The first source address (default 127.0.0.1); several processes of
    /// the tool at once, each under the descriptor limit, each take their
    /// own, e.g. 127.0.1.1, 127.0.2.1, ...
    #[arg(long, value_name = "ADDR")]
    source: Option<std::net::Ipv4Addr>,
    /// Allow a gateway or broker that is not on a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// A progress line every second on stderr (the default when stderr is
    /// a terminal).
    #[arg(long)]
    progress: bool,
    /// The summary on stdout instead of the JSON line.
    #[arg(long)]
    human: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn secs(flag: &str, v: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| BenchError::Usage(format!("{flag} {v}: a number of seconds")))
}

fn bench_options(a: &BenchArgs) -> Result<BenchOptions, BenchError> {
    let mix = match &a.qos_mix {
        Some(m) => QosMix::parse(m).map_err(|e| BenchError::Usage(format!("--qos-mix {e}")))?,
        None => QosMix::single(a.qos).unwrap_or_default(),
    };
    Ok(BenchOptions {
        host: a.host.clone(),
        port: a.port,
        broker: a.broker.clone(),
        mode: match (a.direct, a.compare_direct) {
            (true, _) => Mode::Direct,
            (_, true) => Mode::Compare,
            _ => Mode::Gateway,
        },
        sensors: a.sensors,
        count: a.count,
        rate: a.rate,
        mix,
        inflight: a.inflight,
        persistent: a.persistent,
        size: a.size,
        prefix: a.topic.clone(),
        max_time: secs("--max-time", a.max_time)?,
        connect_window: a.connect_window,
        retry: Duration::from_millis(a.retry_ms.max(1)),
        max_retries: a.max_retries,
        drain: secs("--drain", a.drain)?,
        sleepers: a.sleepers,
        sleep_duration: a.sleep_duration,
        sleep_messages: a.sleep_messages,
        sleep_qos: a.sleep_qos,
        down_count: a.down_count,
        down_rate: a.down_rate,
        down_qos: a.down_qos,
        fanout: a.fanout,
        gateway_pid: a.gateway_pid,
        broker_pid: a.broker_pid,
        source_addresses: a.source_addresses,
        source: a.source,
        allow_remote: a.allow_remote,
        progress: a.progress || std::io::stderr().is_terminal(),
    })
}

async fn run_bench(a: BenchArgs) -> i32 {
    let report = match bench_options(&a) {
        Ok(o) => bench::run(o).await,
        Err(e) => Err(e),
    };
    match report {
        Ok(r) => {
            if a.human {
                print!("{}", r.human());
            } else {
                eprint!("{}", r.human());
                println!("{}", r.json());
            }
            r.exit_code
        }
        Err(e) => {
            eprintln!("mqttsn bench: {e}");
            e.exit_code()
        }
    }
}

fn run_pub(a: PubArgs) -> Result<(), Failure> {
    let messages = if a.stdin_lines {
        Messages::Lines
    } else if a.stdin_file {
        Messages::Stdin
    } else if let Some(f) = &a.file {
        Messages::One(std::fs::read(f).map_err(|e| Failure::Io(format!("{}: {e}", f.display())))?)
    } else if a.null_message {
        Messages::One(Vec::new())
    } else if let Some(m) = &a.message {
        Messages::One(m.clone().into_bytes())
    } else {
        return Err(Failure::Usage("give a message: -m, -l, -s, -f or -n".into()));
    };
    let topic = match (a.topic, a.predefined) {
        (_, Some(id)) => PubTopic::Predefined(id),
        (Some(t), None) => PubTopic::Name(t),
        (None, None) => return Err(Failure::Usage("give -t TOPIC or -T ID".into())),
    };
    pubsub::publish(&PubOptions {
        common: a.common.common()?,
        topic,
        messages,
        qos: pubsub::qos(a.qos)?,
        retain: a.retain,
        sleep: a.sleep,
    })
}

fn run_sub(a: SubArgs) -> Result<(), Failure> {
    let qos = pubsub::qos(a.qos)?;
    if qos == mqttsn_client::QoS::NoSession {
        return Err(Failure::Usage("sub: QoS must be 0, 1 or 2".into()));
    }
    let o = SubOptions {
        common: a.common.common()?,
        topics: a.topic,
        predefined: a.predefined,
        unsubscribe: a.unsubscribe,
        qos,
        persistent: a.persistent,
        verbose: a.verbose,
        no_eol: a.no_eol,
        no_retained: a.no_retained,
        format: a.format,
        exit_after_subscribe: a.exit_after_subscribe,
        count: a.count,
        timeout: a.timeout,
        sleep: a.sleep,
    };
    pubsub::subscribe(&o, &mut std::io::stdout().lock())
}

fn exit_on(result: Result<(), Failure>) {
    if let Err(e) = result {
        eprintln!("mqttsn: {e}");
        std::process::exit(e.exit_code());
    }
}

/// Man pages (one per subcommand) and completions for bash, zsh and fish.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Cli::command().name("mqttsn").bin_name("mqttsn");
    cmd.build();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    // `mqttsn help SUBCOMMAND` needs no pages of its own.
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("mqttsn-help")) {
            std::fs::remove_file(path)?;
        }
    }
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
    {
        clap_complete::generate_to(shell, &mut cmd, "mqttsn", &completions)?;
    }
    Ok(())
}

/// Parses the command line; a usage error exits 1, as mosquitto's tools.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(1)
        }
        Err(e) => e.exit(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match parse().command {
        Tool::GenerateDocs { dir } => generate_docs(&dir)?,
        Tool::Pub(a) => exit_on(run_pub(a)),
        Tool::Sub(a) => exit_on(run_sub(a)),
        Tool::Bench(a) => {
            let code = run_bench(a).await;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Tool::Relay(a) => run_relay(&a).await?,
        Tool::Dump { listen, relay_to, count, peers, serial, baud, framing } => {
            let serial = serial.map(|device| dump::serial::SerialSource { device, baud, framing });
            let opts = DumpOptions { listen, relay_to, count, limits: peers.limits()?, serial };
            dump::run(opts, |addr| match relay_to {
                Some(gw) => eprintln!("relaying udp://{addr} <-> udp://{gw}"),
                None => eprintln!("listening on udp://{addr}"),
            })
            .await?;
        }
    }
    Ok(())
}

/// A serial framing by name.
fn parse_framing(name: &str) -> Result<mqttsn_codec::serial::Framing, String> {
    mqttsn_codec::serial::Framing::from_name(name).ok_or_else(|| {
        format!("not a framing: {name} (one of {})", mqttsn_codec::serial::Framing::NAMES)
    })
}
