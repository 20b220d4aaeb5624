//! A minimal sensor firmware: connect, register, publish at QoS 1, one
//! sleep cycle. The gateway's answers come from `black_box`, so nothing is
//! optimised away; what is left is the client's real footprint.
#![no_std]
#![no_main]
#![forbid(unsafe_code)]

use core::hint::black_box;

use cortex_m_rt::entry;
use mqttsn_client::{Client, Event, QoS, Settings, Topic};
use panic_halt as _;

/// 8 topic names, one request in flight, datagrams up to 128 octets.
type Sensor = Client<8, 1, 128>;

/// The client's size as this firmware builds it (its features), read by
/// the footprint test: four octets of flash.
#[used]
static MQTTSN_CLIENT_SIZE: u32 = core::mem::size_of::<Sensor>() as u32;

/// Answers a gateway would send: CONNACK, REGACK (id 1, MsgId 1), PUBACK
/// (MsgId 2), DISCONNECT, PINGRESP.
static ANSWERS: [&[u8]; 5] =
    [&[3, 0x05, 0], &[7, 0x0b, 0, 1, 0, 1, 0], &[7, 0x0d, 0, 1, 0, 2, 0], &[2, 0x18], &[2, 0x17]];

fn send(c: &mut Sensor, radio: &mut [u8; 128]) {
    while let Some(n) = c.poll_transmit(radio) {
        black_box(&radio[..n]);
    }
}

fn answer(c: &mut Sensor, now: u64, i: usize) -> bool {
    let d = black_box(ANSWERS[i]);
    matches!(c.handle_datagram(now, d), Ok(Some(_)) | Ok(None))
}

#[entry]
fn main() -> ! {
    let mut radio = [0u8; 128];
    let Ok(mut c) = Sensor::new(black_box(b"node-0042"), Settings::default()) else { loop {} };
    let mut now = black_box(0u64);
    let _ = c.connect(now, true, 60, None);
    send(&mut c, &mut radio);
    answer(&mut c, now, 0);
    now += 10;
    let _ = c.register(now, black_box("sensors/0042/temperature"));
    send(&mut c, &mut radio);
    answer(&mut c, now, 1);
    let _ = c.publish(
        now,
        Topic::Name("sensors/0042/temperature"),
        black_box(b"21.5"),
        QoS::AtLeastOnce,
        false,
    );
    send(&mut c, &mut radio);
    answer(&mut c, now, 2);
    let _ = c.sleep(now, 600);
    send(&mut c, &mut radio);
    answer(&mut c, now, 3);
    now += 600_000;
    let _ = c.wake(now);
    send(&mut c, &mut radio);
    if let Ok(Some(Event::PingResp)) = c.handle_datagram(now, black_box(ANSWERS[4])) {
        black_box(1);
    }
    loop {
        if let Some(t) = c.poll_timeout() {
            if c.handle_timeout(black_box(t)).is_some() {
                send(&mut c, &mut radio);
            }
        }
    }
}
