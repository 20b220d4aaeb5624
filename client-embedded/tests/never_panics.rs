//! Nothing the network sends makes the client panic: arbitrary datagrams
//! and clock steps, in any state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_client::{Client, QoS, Settings, Topic, TopicFilter};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_datagrams_and_time(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..40),
        steps in proptest::collection::vec(0u64..5_000, 1..40),
    ) {
        let mut c: Client<4, 2, 64> = Client::new(b"node", Settings::default()).unwrap();
        let mut now = 0;
        let _ = c.connect(now, false, 10, Some(("w", b"x", QoS::AtLeastOnce, false)));
        let mut out = [0u8; 64];
        for (d, dt) in datagrams.iter().zip(steps.iter().cycle()) {
            now += dt;
            let _ = c.handle_datagram(now, d);
            // With a Length that matches, so decoding gets past the header
            // (the first random octet is the message type).
            if d.len() >= 2 {
                let mut framed = vec![(d.len() + 1) as u8];
                framed.extend_from_slice(d);
                let _ = c.handle_datagram(now, &framed);
            }
            let _ = c.handle_timeout(now);
            while c.poll_transmit(&mut out).is_some() {}
            // Requests at random moments must not panic either.
            let _ = c.publish(now, Topic::Short(*b"ab"), b"v", QoS::AtLeastOnce, false);
            let _ = c.subscribe(now, TopicFilter::Name(b"a/#"), QoS::ExactlyOnce);
            let _ = c.register(now, "a/b");
        }
    }
}
