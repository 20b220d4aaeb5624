//! `mqttsn`: command-line tools for MQTT-SN.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mqttsn_tools::dump::{self, DumpOptions};

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
        /// Relay mode: the most sensors relayed at once.
        #[arg(long, default_value_t = 1024, value_name = "N")]
        max_peers: usize,
        /// Relay mode: forget a sensor silent for this many seconds.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        idle_timeout: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Tool::Dump { listen, relay_to, count, max_peers, idle_timeout } => {
            let opts = DumpOptions {
                listen,
                relay_to,
                count,
                max_peers,
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
