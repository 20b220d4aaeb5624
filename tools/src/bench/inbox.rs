//! What one simulated client receives from the broker side: the QoS 2
//! receiver state (a message is delivered once, at its PUBLISH, and
//! answered with PUBREC until PUBREL) and the sequence numbers seen.

use std::time::Instant;

use super::payload::{self, Kind, Run};
use super::tracker::{SeqTracker, Tally};

/// The receiving state of one client.
#[derive(Debug, Default)]
pub struct Inbox {
    awaiting_rel: Vec<u16>,
    /// Broker-to-sensor messages of its topic.
    pub down: SeqTracker,
    /// Messages buffered for it while asleep.
    pub sleep: SeqTracker,
}

/// Where the tallies of all clients are kept.
#[derive(Debug, Default)]
pub struct InboxTallies {
    /// Broker to sensor.
    pub down: Tally,
    /// To sleepers.
    pub sleep: Tally,
}

/// How to answer a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// QoS 0: nothing.
    None,
    /// QoS 1: PUBACK.
    PubAck,
    /// QoS 2: PUBREC.
    PubRec,
}

impl Inbox {
    /// A PUBLISH at `qos` with `msg_id` and `data` arrived at `now`; it is
    /// counted in `tallies` (once, for QoS 2) when its stamp is of `run`.
    pub fn on_publish(
        &mut self,
        qos: u8,
        msg_id: u16,
        data: &[u8],
        run: &Run,
        tallies: &mut InboxTallies,
        now: Instant,
    ) -> Reply {
        let reply = match qos {
            0 => Reply::None,
            1 => Reply::PubAck,
            _ => Reply::PubRec,
        };
        if qos == 2 {
            if self.awaiting_rel.contains(&msg_id) {
                return reply;
            }
            self.awaiting_rel.push(msg_id);
        }
        match payload::read(data) {
            Some(s) if s.tag == run.tag => {
                let latency = run.epoch.since(s.sent_ns, now);
                match s.kind {
                    Kind::Down => tallies.down.stamped(&mut self.down, &s, latency, now),
                    Kind::Sleep => tallies.sleep.stamped(&mut self.sleep, &s, latency, now),
                    Kind::Up => tallies.down.foreign += 1,
                }
            }
            Some(_) => tallies.down.foreign += 1,
            None => tallies.down.unstamped(now),
        }
        reply
    }

    /// PUBREL for `msg_id`: the QoS 2 delivery is over (answer PUBCOMP).
    pub fn on_pubrel(&mut self, msg_id: u16) {
        self.awaiting_rel.retain(|id| *id != msg_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::payload::{Epoch, Stamp};

    #[test]
    fn qos2_is_delivered_once() {
        let run = Run { tag: 9, epoch: Epoch::now() };
        let other = Run { tag: 8, ..run };
        let mut inbox = Inbox::default();
        let mut t = InboxTallies::default();
        let mut data = [0u8; 24];
        let s = Stamp { tag: 9, kind: Kind::Down, qos: 2, source: 0, seq: 0, sent_ns: 0 };
        payload::fill(&mut data, &s);
        let now = Instant::now();
        assert_eq!(inbox.on_publish(2, 5, &data, &run, &mut t, now), Reply::PubRec);
        assert_eq!(inbox.on_publish(2, 5, &data, &run, &mut t, now), Reply::PubRec);
        assert_eq!((t.down.received, t.down.duplicates), (1, 0));
        inbox.on_pubrel(5);
        // The same message under a new id after PUBREL: a real duplicate.
        assert_eq!(inbox.on_publish(2, 6, &data, &run, &mut t, now), Reply::PubRec);
        assert_eq!((t.down.duplicates, t.down.duplicates_qos2), (1, 1));
        assert_eq!(inbox.on_publish(1, 7, &data, &other, &mut t, now), Reply::PubAck);
        assert_eq!(t.down.foreign, 1);
    }
}
