//! A real mosquitto 2.x started for one test: its own config file in a
//! temporary folder, a free port on 127.0.0.1, ready when it accepts a
//! connection, killed on drop (also when the test panics).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running mosquitto.
pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
    extra: String,
}

/// The mosquitto binary: on PATH or in /usr/sbin (Debian).
pub fn mosquitto_binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let p = Path::new(dir).join("mosquitto");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "mosquitto is not installed: these tests need a real broker. \
         Run scripts/test (it installs it), or apt-get install mosquitto"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for ClientIds, topics and
/// folders.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Mosquitto {
    /// Starts mosquitto with an anonymous listener.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts mosquitto with extra configuration lines (password file,
    /// ACL, ...).
    pub fn start_with(extra: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("mqttsn-mosquitto"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            match Self::spawn(&dir, port, extra) {
                Ok(child) => return Self { child, port, dir, extra: extra.to_owned() },
                Err(e) => last_err = e,
            }
        }
        panic!("mosquitto did not start: {last_err}");
    }

    fn spawn(dir: &Path, port: u16, extra: &str) -> Result<Child, String> {
        let conf = dir.join("mosquitto.conf");
        let allow_anonymous =
            if extra.contains("allow_anonymous") { "" } else { "allow_anonymous true\n" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{allow_anonymous}persistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nmax_queued_messages 10000\n{extra}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.join("mosquitto.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn mosquitto: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("mosquitto exited: {status}: {said}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("mosquitto did not accept connections within 10 s".into())
    }

    /// Starts mosquitto with an anonymous listener on a given port (for a
    /// private network namespace, where the documented ports are free).
    pub fn start_on(port: u16) -> Self {
        let dir = std::env::temp_dir().join(unique("mqttsn-mosquitto"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        match Self::spawn(&dir, port, "") {
            Ok(child) => Self { child, port, dir, extra: String::new() },
            Err(e) => panic!("mosquitto did not start on port {port}: {e}"),
        }
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The folder for files the test wants next to the config.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the broker with SIGTERM (it saves its persistence file, if
    /// configured) and waits for it.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Kills the broker (an outage).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port after [`Mosquitto::kill`] or
    /// [`Mosquitto::stop`].
    pub fn restart(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::spawn(&self.dir, self.port, &self.extra) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("mosquitto did not restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
