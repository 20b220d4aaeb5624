//! `mqttsn`: command-line tools for MQTT-SN.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mqttsn_tools::dump::{self, DumpOptions};
use mqttsn_tools::pubsub::{self, Common, Failure, Messages, PubOptions, PubTopic, SubOptions};

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
        /// Relay mode: the most sensors relayed at once; datagrams from
        /// further sensors are dropped.
        #[arg(long, default_value_t = 1024, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..))]
        max_peers: u32,
        /// Relay mode: forget a sensor silent for this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout: u64,
    },
    /// Publish like mosquitto_pub: -h HOST -p PORT -t TOPIC -m MESSAGE.
    #[command(disable_help_flag = true)]
    Pub(PubArgs),
    /// Subscribe like mosquitto_sub: -h HOST -p PORT -t TOPIC -v.
    #[command(disable_help_flag = true)]
    Sub(SubArgs),
    /// Simulated sensors publishing through a gateway: throughput and
    /// acknowledgement latency.
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

/// Options of `pub` and `sub` as in mosquitto's tools (`-h` is the host).
#[derive(Debug, Args)]
struct CommonArgs {
    /// The gateway host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// The gateway UDP port.
    #[arg(short, long, default_value_t = 1884)]
    port: u16,
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
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl CommonArgs {
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
        Ok(Common {
            host: self.host.clone(),
            port: self.port,
            client_id: self.client_id.clone(),
            keepalive: self.keepalive,
            debug: self.debug,
            wait: Duration::from_secs(self.wait),
            will,
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

#[derive(Debug, Args)]
struct BenchArgs {
    /// The gateway host.
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    /// The gateway UDP port.
    #[arg(short, long, default_value_t = 1884)]
    port: u16,
    /// Simulated sensors (1 to 10000).
    #[arg(short = 'c', long, default_value_t = 10)]
    sensors: u32,
    /// Messages per sensor.
    #[arg(short = 'n', long, default_value_t = 100)]
    messages: u32,
    /// QoS: 0, 1 or 2.
    #[arg(short, long, default_value_t = 1)]
    qos: i8,
    /// Payload size in octets.
    #[arg(short, long, default_value_t = 16)]
    size: usize,
    /// Topic prefix: sensor N publishes to PREFIX/N.
    #[arg(short, long, default_value = "mqttsn-bench")]
    topic: String,
    /// Stop after this many seconds, whatever is left.
    #[arg(long, default_value_t = 60)]
    max_time: u64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn run_bench(a: BenchArgs) -> Result<(), Failure> {
    let report = mqttsn_tools::bench::run(&mqttsn_tools::bench::BenchOptions {
        host: a.host,
        port: a.port,
        sensors: a.sensors,
        messages: a.messages,
        qos: a.qos,
        size: a.size,
        prefix: a.topic,
        max_time: Duration::from_secs(a.max_time),
    })?;
    println!("{report}");
    Ok(())
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
        Tool::Bench(a) => exit_on(run_bench(a)),
        Tool::Dump { listen, relay_to, count, max_peers, idle_timeout } => {
            let opts = DumpOptions {
                listen,
                relay_to,
                count,
                max_peers: usize::try_from(max_peers)?,
                idle_timeout: Duration::from_secs(idle_timeout),
            };
            dump::run(opts, |addr| match relay_to {
                Some(gw) => eprintln!("relaying udp://{addr} <-> udp://{gw}"),
                None => eprintln!("listening on udp://{addr}"),
            })
            .await?;
        }
    }
    Ok(())
}
