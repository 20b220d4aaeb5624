//! `mqttsn dump` as a real process: datagrams from real sockets on
//! 127.0.0.1, both modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The running `mqttsn dump`; killed when dropped, so a failing test
/// never leaves it behind.
struct Dump {
    child: Child,
    addr: SocketAddr,
    /// Its stderr, line by line (read on a thread to the end, so the
    /// process never writes to a closed pipe).
    stderr: mpsc::Receiver<String>,
}

impl Drop for Dump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Dump {
    let child = Command::new(env!("CARGO_BIN_EXE_mqttsn"))
        .arg("dump")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqttsn dump");
    let (tx, stderr) = mpsc::channel();
    let mut d = Dump { child, addr: ([127, 0, 0, 1], 0).into(), stderr };
    let pipe = d.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // "listening on udp://ADDR" or "relaying udp://ADDR <-> udp://GATEWAY".
    let line = d.stderr.recv_timeout(WAIT).expect("dump prints its address");
    let addr = line.split("udp://").nth(1).and_then(|rest| rest.split_whitespace().next());
    d.addr = addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("address in {line:?}"));
    d
}

/// Waits (bounded) for the process to exit and returns its stdout lines.
fn output(d: &mut Dump) -> Vec<String> {
    let mut stdout = d.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let out = rx.recv_timeout(WAIT).expect("dump exits after --count datagrams");
    out.lines().map(str::to_owned).collect()
}

#[test]
fn listen_mode_prints_each_datagram() {
    let mut d = start(&["--count", "3"]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = s.local_addr().unwrap();
    s.send_to(&[0x0a, 0x04, 0x04, 0x01, 0x00, 0x3c, b's', b'n', b'0', b'1'], d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.send_to(&[0x05, 0x0e, 0x00, 0x01], d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.send_to(&[0x09, 0x0c, 0x00, 0x00, 0x01, 0x00, 0x00, b'h', b'i'], d.addr).unwrap();
    let lines = output(&mut d);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].contains(&me.to_string()) && lines[0].contains("CONNECT"), "{lines:?}");
    assert!(lines[0].contains("sn01"), "{lines:?}");
    assert!(lines[1].contains("MALFORMED") && lines[1].contains("05 0e 00 01"), "{lines:?}");
    assert!(lines[2].contains("PUBLISH"), "{lines:?}");
}

#[test]
fn relay_mode_prints_both_directions() {
    // A stand-in gateway that answers CONNECT with CONNACK.
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    gw.set_read_timeout(Some(WAIT)).unwrap();
    let gw_addr = gw.local_addr().unwrap().to_string();
    let mut d = start(&["--relay-to", &gw_addr, "--count", "2"]);
    let sensor = UdpSocket::bind("127.0.0.1:0").unwrap();
    sensor.set_read_timeout(Some(WAIT)).unwrap();
    sensor.send_to(&[0x08, 0x04, 0x04, 0x01, 0x00, 0x3c, b'a', b'b'], d.addr).unwrap();
    let mut buf = [0u8; 64];
    let (n, relay) = gw.recv_from(&mut buf).expect("relayed CONNECT");
    assert_eq!(buf[1], 0x04);
    assert_eq!(n, 8);
    assert_ne!(relay, sensor.local_addr().unwrap());
    gw.send_to(&[0x03, 0x05, 0x00], relay).unwrap();
    let (n, from) = sensor.recv_from(&mut buf).expect("relayed CONNACK");
    assert_eq!((&buf[..n], from), (&[0x03u8, 0x05, 0x00][..], d.addr));
    let lines = output(&mut d);
    let me = sensor.local_addr().unwrap().to_string();
    assert!(
        lines[0].contains(&format!("sensor {me} -> gw")) && lines[0].contains("CONNECT"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains(&format!("sensor {me} <- gw")) && lines[1].contains("CONNACK"),
        "{lines:?}"
    );
}

#[test]
fn help_works() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqttsn")).args(["dump", "--help"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--relay-to"));
}

#[test]
fn relay_survives_gateway_down() {
    // The gateway's port is closed at first: the relayed datagram draws an
    // ICMP port unreachable, which a connected socket reports on its next
    // receive. The relay must keep reading once the gateway is back.
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gw_addr = gw.local_addr().unwrap();
    drop(gw);
    let mut d = start(&["--relay-to", &gw_addr.to_string(), "--count", "3"]);
    let sensor = UdpSocket::bind("127.0.0.1:0").unwrap();
    sensor.set_read_timeout(Some(WAIT)).unwrap();
    let connect = [0x08, 0x04, 0x04, 0x01, 0x00, 0x3c, b'a', b'b'];
    sensor.send_to(&connect, d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let gw = UdpSocket::bind(gw_addr).unwrap();
    gw.set_read_timeout(Some(WAIT)).unwrap();
    sensor.send_to(&connect, d.addr).unwrap();
    let mut buf = [0u8; 64];
    let (_, relay) = gw.recv_from(&mut buf).expect("relayed CONNECT");
    gw.send_to(&[0x03, 0x05, 0x00], relay).unwrap();
    let (n, _) = sensor.recv_from(&mut buf).expect("relayed CONNACK");
    assert_eq!(&buf[..n], &[0x03u8, 0x05, 0x00][..]);
    let lines = output(&mut d);
    assert!(lines[2].contains("<- gw") && lines[2].contains("CONNACK"), "{lines:?}");
}

#[test]
fn relay_bounds_the_sensors() {
    let gw = UdpSocket::bind("127.0.0.1:0").unwrap();
    gw.set_read_timeout(Some(WAIT)).unwrap();
    let gw_addr = gw.local_addr().unwrap().to_string();
    let mut d = start(&["--relay-to", &gw_addr, "--max-peers", "1", "--count", "3"]);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; 64];
    a.send_to(&[0x02, 0x18], d.addr).unwrap();
    let (_, first) = gw.recv_from(&mut buf).expect("A's DISCONNECT relayed");
    b.send_to(&[0x03, 0x16, 0x00], d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    a.send_to(&[0x02, 0x16], d.addr).unwrap();
    // B's datagram was dropped: the next one the gateway sees is A's.
    let (n, second) = gw.recv_from(&mut buf).expect("A's PINGREQ relayed");
    assert_eq!((&buf[..n], second), (&[0x02u8, 0x16][..], first));
    let lines = output(&mut d);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let b_addr = b.local_addr().unwrap().to_string();
    assert!(lines[1].contains(&format!("sensor {b_addr} -> gw")), "{lines:?}");
    let note = d.stderr.recv_timeout(WAIT).expect("a note on stderr");
    assert!(note.contains("dropping datagram from") && note.contains(&b_addr), "{note}");
}

#[test]
fn options_out_of_range_are_refused() {
    for args in [["--max-peers", "0"], ["--idle-timeout", "0"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_mqttsn")).arg("dump").args(args).output();
        let out = out.unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[0]), "{args:?}");
    }
}
