//! The descriptor budget: with a small open files limit, the gateway
//! binary admits only as many sessions (each holding a broker connection)
//! as leave its own descriptors free, refuses the next CONNECT with
//! congestion, and keeps serving the sessions it has.
//!
//! One test in its own binary: it lowers this process's open files limit,
//! which the gateway inherits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_codec::{Connect, Packet, ReturnCode};
use mqttsn_tests::broker::{unique, Mosquitto};
use mqttsn_tests::gateway::GatewayProcess;
use mqttsn_tests::sn::Sensor;

const LIMIT: usize = 100;
/// `mqttsn_gateway::limits::RESERVED_DESCRIPTORS`.
const RESERVED: usize = 64;

#[test]
fn sessions_never_take_the_descriptors_the_gateway_needs() {
    let broker = Mosquitto::start();
    mqttsn_tests::gateway::lower_open_files(LIMIT);
    let gw = GatewayProcess::spawn(&["--listen", "127.0.0.1:0", "--broker", &broker.url()]);
    let budget = LIMIT - RESERVED;
    let mut sensors = Vec::new();
    for i in 0..budget {
        let mut s = Sensor::new(gw.addr);
        s.connect(&unique(&format!("fd{i}")), true, 60);
        sensors.push(s);
    }
    // One more: congestion, and the gateway goes on.
    let mut extra = Sensor::new(gw.addr);
    let id = unique("one-too-many");
    extra.send(Packet::Connect(Connect {
        will: false,
        clean_session: true,
        protocol_id: 1,
        duration: 60,
        client_id: id.as_bytes(),
    }));
    extra.expect(Packet::ConnAck(ReturnCode::Congestion));
    for s in sensors.iter_mut().take(5) {
        s.send(Packet::PingReq(None));
        s.expect(Packet::PingResp);
    }
    // A session that ends gives its place back.
    let mut first = sensors.remove(0);
    first.send(Packet::Disconnect(None));
    first.expect(Packet::Disconnect(None));
    let mut again = Sensor::new(gw.addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        again.send(Packet::Connect(Connect {
            will: false,
            clean_session: true,
            protocol_id: 1,
            duration: 60,
            client_id: id.as_bytes(),
        }));
        let d = again.recv();
        match Packet::decode(&d).unwrap() {
            Packet::ConnAck(ReturnCode::Accepted) => break,
            Packet::ConnAck(ReturnCode::Congestion) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => panic!("{other:?}"),
        }
    }
}
