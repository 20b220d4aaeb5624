//! The embedded MQTT broker (rumqttd), used when no broker is configured so
//! that `mqttsn-gateway` with no arguments works on a fresh machine.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

/// Why the embedded broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The port is taken, typically by a mosquitto already installed.
    #[error(
        "cannot start the embedded MQTT broker on {addr}: {source}. \
         If a broker (mosquitto, say) already runs there, use it instead: \
         mqttsn-gateway --broker mqtt://{addr}"
    )]
    PortInUse {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The broker thread could not be started.
    #[error("cannot start the embedded MQTT broker thread: {0}")]
    Thread(std::io::Error),
    /// The broker did not accept connections in time.
    #[error("the embedded MQTT broker on {0} did not start listening")]
    NotReady(SocketAddr),
}

/// Starts rumqttd on `addr` (MQTT 3.1.1) on its own thread. It runs until
/// the process exits.
pub fn start(addr: SocketAddr, max_payload: usize) -> Result<(), EmbeddedError> {
    // rumqttd reports a taken port only in its own thread; check first.
    drop(TcpListener::bind(addr).map_err(|source| EmbeddedError::PortInUse { addr, source })?);
    let server = rumqttd::ServerSettings {
        name: "v4-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1_000_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..rumqttd::RouterConfig::default()
        },
        v4: Some(HashMap::from([("embedded".to_owned(), server)])),
        ..rumqttd::Config::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded MQTT broker stopped: {e}");
            }
        })
        .map_err(EmbeddedError::Thread)?;
    // Ready when it accepts connections (bounded: it binds at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(EmbeddedError::NotReady(addr));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}
