//! `mqttsn-gateway`: MQTT-SN v1.2 over UDP to one MQTT session per sensor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mqttsn_gateway::config::{BrokerTarget, Config};
use mqttsn_gateway::control::Controls;
use mqttsn_gateway::metrics::Metrics;
use mqttsn_gateway::monitor::{GatewayInfo, Monitor};
use mqttsn_gateway::mqtt::client::ClientOptions;
use mqttsn_gateway::reload::{Current, Live};
use mqttsn_gateway::server::{self, UpstreamSetup};
use mqttsn_gateway::udp::{Buffers, Listener};
use mqttsn_gateway::upstream::connection::{
    Backoff, Connector, SourceAddresses, TcpConnector, UpstreamOptions,
};
use mqttsn_gateway::upstream::tls::TlsConnector;
use tracing::info;

/// MQTT-SN v1.2 gateway: sensors speak MQTT-SN over UDP, and each gets its
/// own MQTT session on the broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The configuration file (TOML); see config/gateway.toml.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The UDP address to listen on (overrides gateway.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// The upstream broker, mqtt://HOST:PORT or mqtts://HOST:PORT
    /// (overrides broker.url).
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// Where to serve Prometheus metrics; "" turns them off (overrides
    /// monitoring.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// The session store file; "" keeps sessions in memory only
    /// (overrides gateway.store).
    #[arg(long, value_name = "FILE")]
    store: Option<String>,
    /// The discovery group joined for SEARCHGW and sent GWINFO and
    /// ADVERTISE, IP:PORT; "" joins none (overrides
    /// discovery.multicast_group).
    #[arg(long, value_name = "ADDR:PORT")]
    multicast_group: Option<String>,
    /// transparent (a broker connection per sensor) or aggregating (the
    /// sensors share a few broker connections) (overrides gateway.mode).
    #[arg(long, value_name = "MODE", value_parser = ["transparent", "aggregating"])]
    mode: Option<String>,
    /// The log level: error, warn, info, debug or trace (default: info;
    /// RUST_LOG, when set, wins).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: Option<String>,
    /// The log format: text, or json (one object a line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Check the configuration file (-c FILE) and exit: 0 and
    /// "config OK: FILE", or the error naming the key.
    #[arg(long, requires = "config")]
    check_config: bool,
    /// Write the man page and shell completions (bash, zsh, fish) into DIR
    /// and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_docs: Option<PathBuf>,
}

/// The man page and completions for bash, zsh and fish.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = Args::command().name("mqttsn-gateway").bin_name("mqttsn-gateway");
    cmd.build();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish]
    {
        clap_complete::generate_to(shell, &mut cmd, "mqttsn-gateway", &completions)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // The sessions run on worker threads of their own (one per core by
    // default); this runtime only serves metrics and waits for signals.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

/// The log filter: RUST_LOG when set (and not empty), else `--log-level`,
/// else info; the embedded broker's own logs stay off unless asked for.
fn log_filter(rust_log: Option<&str>, level: Option<&str>) -> tracing_subscriber::EnvFilter {
    if let Some(directives) = rust_log.filter(|d| !d.trim().is_empty()) {
        if let Ok(f) = tracing_subscriber::EnvFilter::try_new(directives) {
            return f;
        }
    }
    tracing_subscriber::EnvFilter::new(format!("{},rumqttd=off", level.unwrap_or("info")))
}

/// Logs on stdout, as text (coloured only on a terminal, and never with
/// NO_COLOR set to something) or JSON lines.
fn init_logs(args: &Args) {
    use std::io::IsTerminal;
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = log_filter(rust_log.as_deref(), args.log_level.as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        let colour = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        builder.with_ansi(colour).init();
    }
}

/// What the command line sets over the file.
fn apply_overrides(cfg: &mut Config, args: &Args) {
    if let Some(listen) = &args.listen {
        cfg.gateway.listen = listen.clone();
    }
    if let Some(broker) = &args.broker {
        cfg.broker.url = Some(broker.clone());
    }
    if let Some(metrics) = &args.metrics_listen {
        cfg.monitoring.listen = metrics.clone();
    }
    if let Some(store) = &args.store {
        cfg.gateway.store = store.clone();
    }
    if let Some(group) = &args.multicast_group {
        cfg.discovery.multicast_group = group.clone();
    }
    match args.mode.as_deref() {
        Some("aggregating") => cfg.gateway.mode = mqttsn_gateway::config::Mode::Aggregating,
        Some("transparent") => cfg.gateway.mode = mqttsn_gateway::config::Mode::Transparent,
        _ => {}
    }
}

/// The configuration file with the command line over it, checked.
fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    apply_overrides(&mut cfg, args);
    cfg.check()?;
    Ok(cfg)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_docs {
        return generate_docs(dir);
    }
    if args.check_config {
        // Parse and check, build the tables (predefined topics,
        // credentials and their certificate files): nothing is bound.
        let path = args.config.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        let cfg = load_config(&args)?;
        cfg.session_config()?;
        println!("config OK: {path}");
        return Ok(());
    }
    init_logs(&args);
    let cfg = load_config(&args)?;
    let listen = cfg.listen_addr()?;
    let sources = Arc::new(SourceAddresses::new(cfg.source_addresses()?));
    if !cfg.broker.source_addresses.is_empty() {
        info!("broker connections from {} in turn", cfg.broker.source_addresses.join(", "));
    }
    let connector: Arc<dyn Connector> = match cfg.broker_target()? {
        BrokerTarget::Remote(addr) => Arc::new(TcpConnector { addr, sources }),
        BrokerTarget::Tls { host, port } => {
            Arc::new(TlsConnector::new(&host, port, &cfg.tls_settings())?.with_sources(sources))
        }
        BrokerTarget::Embedded(addr) => {
            Arc::new(TcpConnector { addr: start_embedded(addr)?, sources })
        }
    };
    let broker = connector.describe();
    let session = Arc::new(cfg.session_config()?);
    let mut opts = cfg.server_options()?;
    let live = Arc::new(Live::new(Current {
        session: session.clone(),
        auth: opts.auth.clone(),
        admission: opts.admission.clone(),
    }));
    opts.live = Some(live.clone());
    // From here SIGHUP reloads instead of ending the process.
    #[cfg(unix)]
    let hangups = hangup_signal();

    let metrics = Arc::new(Metrics::default());
    let controls = Arc::new(Controls::new());
    if let Some(addr) = cfg.monitoring_addr()? {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot serve metrics on http://{addr} (monitoring.listen)")
        })?;
        let at = listener.local_addr()?;
        let api_token = cfg.api_token()?;
        let mode = if api_token.is_some() { "read-write" } else { "read-only" };
        info!("metrics on http://{at}/metrics, status page on http://{at}/, API {mode}");
        let monitor = Monitor {
            metrics: metrics.clone(),
            controls: controls.clone(),
            api_token,
            info: GatewayInfo::from_config(&cfg, broker.clone()),
        };
        tokio::spawn(mqttsn_gateway::monitor::serve(listener, monitor, std::future::pending()));
    }
    let open_files = match mqttsn_gateway::limits::raise_open_files() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("cannot raise the open files limit: {e}");
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX)
        }
    };
    let aggregating = opts.aggregating.clone();
    let sessions = match &aggregating {
        // The sessions share the pool: they hold no descriptor.
        Some(_) => opts.max_sessions,
        None => {
            // One broker connection per session: the sessions never take
            // the descriptors the gateway itself needs.
            let (sessions, lowered) =
                mqttsn_gateway::limits::session_budget(open_files, opts.max_sessions);
            if lowered {
                tracing::warn!(
                    "limits.max_sessions lowered to {sessions}: the open files limit is \
                     {open_files} ({} kept for the gateway itself)",
                    mqttsn_gateway::limits::RESERVED_DESCRIPTORS
                );
            }
            opts.max_sessions = Some(sessions);
            Some(sessions)
        }
    };
    let sessions = sessions.map_or_else(|| "unbounded".to_string(), |n| n.to_string());
    let mode = match &aggregating {
        Some(p) => format!(
            "aggregating mode ({} broker connection{} per worker)",
            p.connections,
            if p.connections == 1 { "" } else { "s" }
        ),
        None => "transparent mode".to_string(),
    };
    let workers = match opts.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let buffers = Buffers { receive: opts.udp_receive_buffer, send: opts.udp_send_buffer };
    let mut listener = Listener::bind(listen, workers, buffers)
        .with_context(|| format!("cannot listen on udp://{listen}"))?;
    let mut dtls_credentials = None;
    match cfg.dtls_settings()? {
        Some((addr, settings)) => {
            dtls_credentials = Some(settings.credentials.clone());
            let versions = match (settings.versions.dtls12, settings.versions.dtls13) {
                (true, true) if settings.certificate.is_some() => "1.2 and 1.3",
                (false, true) => "1.3",
                _ => "1.2",
            };
            let what = match (settings.credentials.get().has_psks(), settings.certificate.is_some())
            {
                (true, true) => "pre-shared keys and a certificate",
                (true, false) => "pre-shared keys",
                _ => "a certificate",
            };
            listener = listener
                .with_dtls(addr, settings)
                .with_context(|| format!("cannot listen on dtls://{addr} (dtls.listen)"))?;
            if let Some(a) = listener.dtls_addr() {
                info!("MQTT-SN over DTLS on udp://{a} ({versions}), with {what}");
            }
        }
        None if !cfg.dtls.listen.is_empty() => {
            tracing::debug!("no DTLS listener: no sensor has a PSK and no dtls.cert_file is set")
        }
        None => {}
    }
    info!(
        "MQTT-SN gateway listening on udp://{}, broker {broker}, {mode}, {workers} worker{}, \
         at most {sessions} sessions (open files limit {open_files})",
        listener.local_addr(),
        if workers == 1 { "" } else { "s" }
    );
    let upstream = UpstreamSetup {
        connector,
        opts: UpstreamOptions {
            client: ClientOptions {
                keep_alive: Duration::from_secs(u64::from(cfg.broker.keepalive_secs)),
                ..ClientOptions::default()
            },
            backoff: Backoff::default(),
            connect_timeout: Duration::from_millis(cfg.broker.connect_timeout_ms),
            qos0_linger: Duration::from_micros(cfg.broker.qos0_linger_us),
            ..UpstreamOptions::default()
        },
    };
    #[cfg(unix)]
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup(hangups, args, cfg, live, dtls_credentials));
    }
    server::run(listener, upstream, session, opts, metrics, controls, shutdown_signal()).await?;
    info!("stopped");
    Ok(())
}

/// Starts the embedded broker; returns its `host:port`.
#[cfg(feature = "embedded-broker")]
fn start_embedded(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    mqttsn_gateway::embedded::start(addr, 1 << 20)?;
    info!(
        "no broker configured: embedded MQTT broker on mqtt://{addr} \
         (watch with: mosquitto_sub -h {} -p {} -t '#' -v)",
        addr.ip(),
        addr.port()
    );
    Ok(addr.to_string())
}

/// Without the embedded broker, a broker must be configured.
#[cfg(not(feature = "embedded-broker"))]
fn start_embedded(_: std::net::SocketAddr) -> anyhow::Result<String> {
    anyhow::bail!("no broker configured: set broker.url or --broker mqtt://HOST:PORT")
}

/// SIGHUP, registered (from here it no longer ends the process).
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot catch SIGHUP (no reloads): {e}");
            None
        }
    }
}

/// Reloads on each SIGHUP.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    args: Args,
    mut cfg: Config,
    live: Arc<Live>,
    dtls: Option<Arc<mqttsn_gateway::dtls::LiveCredentials>>,
) {
    while hangups.recv().await.is_some() {
        reload(&args, &mut cfg, &live, dtls.as_deref());
    }
}

/// Re-reads the configuration file; a valid one gives new connections its
/// reloadable settings (credentials, policy, predefined topics, the topic
/// ACL, per-sensor timers and limits) and the others are named as needing
/// a restart; an invalid one changes nothing. A new ACL applies to the
/// sensors already connected too; new DTLS keys to the next handshakes.
fn reload(
    args: &Args,
    cfg: &mut Config,
    live: &Live,
    dtls: Option<&mqttsn_gateway::dtls::LiveCredentials>,
) {
    let Some(path) = &args.config else {
        tracing::warn!("SIGHUP: no configuration file (-c) to reload");
        return;
    };
    let not_reloaded = |e: &dyn std::fmt::Display| {
        tracing::error!(
            "SIGHUP: {} not reloaded, the settings stay as they were: {e}",
            path.display()
        );
    };
    let next = match load_config(args) {
        Ok(next) => next,
        Err(e) => return not_reloaded(&format!("{e:#}")),
    };
    let reload = mqttsn_gateway::reload::merge(cfg, &next);
    let Some((_, before)) = live.get() else { return };
    let keys = match reload.config.dtls_settings() {
        Ok(s) => s.map(|(_, s)| s.credentials.get()),
        Err(e) => return not_reloaded(&e),
    };
    match mqttsn_gateway::reload::settings(&reload.config, &before) {
        Ok(current) => live.replace(current),
        Err(e) => return not_reloaded(&e),
    }
    match (dtls, keys) {
        (Some(dtls), Some(keys)) => dtls.replace(keys),
        (Some(dtls), None) => dtls.replace(Default::default()),
        (None, Some(_)) => tracing::warn!(
            "SIGHUP: DTLS credentials given, but the DTLS listener starts only with a restart"
        ),
        (None, None) => {}
    }
    if reload.applied.is_empty() {
        info!("SIGHUP: {} reloaded, nothing reloadable changed", path.display());
    } else {
        let acl = if reload.applied.contains(&"acl") { "; acl: connected sensors too" } else { "" };
        info!(
            "SIGHUP: {} reloaded: {} (for new connections{acl})",
            path.display(),
            reload.applied.join(", ")
        );
    }
    if !reload.restart_needed.is_empty() {
        tracing::warn!(
            "SIGHUP: changed but only applied by a restart: {}",
            reload.restart_needed.join(", ")
        );
    }
    *cfg = reload.config;
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("SIGINT: closing sessions"),
        () = term => info!("SIGTERM: closing sessions"),
    }
}
