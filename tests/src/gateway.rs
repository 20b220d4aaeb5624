//! The gateway run in-process for a test: bound to 127.0.0.1:0, on its own
//! tokio runtime thread, stopped gracefully on drop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqttsn_gateway::metrics::{Metrics, Snapshot};
use mqttsn_gateway::mqtt::client::ClientOptions;
use mqttsn_gateway::server::{self, ServerOptions, UpstreamSetup};
use mqttsn_gateway::session::SessionConfig;
use mqttsn_gateway::udp::{Buffers, Listener};
use mqttsn_gateway::upstream::connection::{Backoff, TcpConnector, UpstreamOptions};

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    logs: LogBuffer,
}

/// Log lines of one gateway, kept in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Session settings with test-speed timers.
pub fn fast_config() -> SessionConfig {
    SessionConfig {
        retry_interval: Duration::from_millis(200),
        max_retries: 3,
        ..SessionConfig::default()
    }
}

impl Gateway {
    /// A gateway in front of the broker on `broker_port`.
    pub fn start(broker_port: u16) -> Self {
        Self::start_with(broker_port, fast_config())
    }

    /// A gateway with these session settings.
    pub fn start_with(broker_port: u16, cfg: SessionConfig) -> Self {
        Self::start_full(broker_port, cfg, ServerOptions::default())
    }

    /// A gateway with these session and dispatcher settings.
    pub fn start_full(broker_port: u16, cfg: SessionConfig, opts: ServerOptions) -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().expect("addr"),
            broker_port,
            cfg,
            opts,
            Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(500) },
        )
    }

    /// A gateway listening on `listen`, reconnecting to the broker with
    /// `backoff`.
    pub fn start_on(
        listen: SocketAddr,
        broker_port: u16,
        cfg: SessionConfig,
        opts: ServerOptions,
        backoff: Backoff,
    ) -> Self {
        let mut opts = opts;
        if crate::mode::aggregating() && opts.aggregating.is_none() {
            opts.aggregating =
                Some(crate::mode::pool(&opts.own_client_id, opts.store_path.as_deref()));
        }
        // This gateway's own logs, printed if the test fails; RUST_LOG
        // (default mqttsn_gateway=debug) chooses what is kept.
        let logs = LogBuffer::default();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mqttsn_gateway=debug"));
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(logs.clone())
                .finish(),
        );
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let m = metrics.clone();
        // Two workers unless the test says otherwise: sensors are spread
        // over both, so every test also runs the hand-over between them.
        let workers = if opts.workers == 0 { 2 } else { opts.workers };
        let thread = std::thread::spawn(move || {
            let _guard = tracing::dispatcher::set_default(&dispatch);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = Listener::bind(listen, workers, Buffers::default()).expect("bind");
                addr_tx.send(listener.local_addr()).expect("send addr");
                let upstream = UpstreamSetup {
                    connector: Arc::new(TcpConnector::new(format!("127.0.0.1:{broker_port}"))),
                    opts: UpstreamOptions {
                        client: ClientOptions {
                            keep_alive: Duration::from_secs(30),
                            response_timeout: Duration::from_secs(5),
                        },
                        backoff,
                        connect_timeout: Duration::from_secs(2),
                        ..UpstreamOptions::default()
                    },
                };
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                let controls = Arc::new(mqttsn_gateway::control::Controls::new());
                server::run(listener, upstream, Arc::new(cfg), opts, m, controls, shutdown)
                    .await
                    .expect("gateway run");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("gateway address");
        Self { addr, metrics, stop: Some(stop_tx), thread: Some(thread), logs }
    }

    /// Where sensors send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log lines so far.
    pub fn logs(&self) -> String {
        self.logs.0.lock().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
    }

    /// The gateway's counters now.
    pub fn metrics(&self) -> Snapshot {
        self.metrics.snapshot()
    }

    /// The live counters.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Stops the gateway gracefully and waits for it.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Ok(v) = self.logs.0.lock() {
                eprintln!("---- gateway log ----\n{}", String::from_utf8_lossy(&v));
            }
        }
    }
}

/// The `mqttsn-gateway` binary of this build, brought up to date once per
/// test process (`cargo build` is quick when nothing changed).
pub fn gateway_binary() -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    workspace_binary(&BUILT, "mqttsn-gateway", "mqttsn-gateway")
}

/// The `mqttsn` tools binary of this build.
pub fn tools_binary() -> std::path::PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    workspace_binary(&BUILT, "mqttsn-tools", "mqttsn")
}

fn workspace_binary(built: &std::sync::Once, package: &str, bin: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(bin);
    built.call_once(|| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    });
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// The `mqttsn-gateway` binary running as a process, killed on drop.
pub struct GatewayProcess {
    /// The child.
    pub child: std::process::Child,
    /// Where it listens for sensors.
    pub addr: SocketAddr,
    /// Its log lines (stdout), as they come.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Where it serves metrics.
    pub metrics: Option<SocketAddr>,
    /// Where its DTLS listener is, if it has one.
    pub dtls: Option<SocketAddr>,
}

impl GatewayProcess {
    /// Starts the binary with these arguments and waits (bounded) for its
    /// "listening on" line.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`GatewayProcess::spawn`] with these environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(gateway_binary());
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        // The caller's environment over those defaults.
        cmd.envs(env.iter().copied());
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if crate::mode::aggregating() && !args.iter().any(|a| a == "--mode") {
            cmd.args(["--mode", "aggregating"]);
            crate::mode::own_pool_identity(&mut args);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd.args(&args)
            // Tests run in parallel: never the fixed default metrics port.
            .args(["--metrics-listen", "127.0.0.1:0"]);
        if !args.contains(&"--store") {
            // Nor a shared store file in the working directory.
            cmd.args(["--store", ""]);
        }
        if !args.contains(&"--multicast-group") {
            // Nor the default discovery group, joined on the host's own
            // network interface: tests stay on loopback.
            cmd.args(["--multicast-group", ""]);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mqttsn-gateway");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me =
            Self { child, addr: ([0, 0, 0, 0], 0).into(), lines, metrics: None, dtls: None };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = me.lines.recv_timeout(left).unwrap_or_else(|_| {
                let _ = me.child.kill();
                let mut err = String::new();
                if let Some(mut e) = me.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("the gateway did not start: {err}")
            });
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                me.metrics = rest.split('/').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("DTLS on udp://").nth(1) {
                me.dtls = rest.split([',', ' ']).next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("listening on udp://").nth(1) {
                me.addr =
                    rest.split([',', ' ']).next().and_then(|a| a.parse().ok()).expect("address");
                return me;
            }
        }
    }

    /// Waits (bounded) for a log line containing `text`; the lines before
    /// it are passed over.
    pub fn wait_for_line(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line with {text:?} within the wait"),
            }
        }
    }

    /// Sends a signal (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -TERM failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the gateway did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lowers this process's open files limit to `limit` (soft and hard), so
/// that a gateway binary started after it inherits it; the binary is built
/// first, since cargo needs more.
pub fn lower_open_files(limit: usize) {
    let _ = gateway_binary();
    let pid = std::process::id().to_string();
    let nofile = format!("--nofile={limit}:{limit}");
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &nofile])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit {nofile} failed");
}
