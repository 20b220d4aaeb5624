//! The stamp at the front of every payload the load tool sends: which run,
//! which direction, which source, which message, and when it was sent.
//!
//! ```text
//! octets 0-1   run tag (u16, big-endian): tells this pass from any other
//! octet  2     kind: b'U' sensor to broker, b'D' broker to sensors, b'S' to sleepers
//! octet  3     QoS the message was published with (0, 1, 2)
//! octets 4-7   source: sensor index (U), topic index (D, S)
//! octets 8-11  sequence number of that source, from 0
//! octets 12-19 send time, nanoseconds since the run's epoch
//! ```
//!
//! The rest of the payload, up to `--size`, is padding (`.`). A payload
//! shorter than [`STAMP_LEN`] carries no stamp: messages are then only
//! counted, not told apart.

use std::time::{Duration, Instant};

/// Octets of the stamp.
pub const STAMP_LEN: usize = 20;

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Published by a sensor, counted by the subscriber on the broker.
    Up,
    /// Published on the broker, received by subscribing sensors.
    Down,
    /// Published on the broker to a sleeping sensor.
    Sleep,
}

impl Kind {
    const fn octet(self) -> u8 {
        match self {
            Self::Up => b'U',
            Self::Down => b'D',
            Self::Sleep => b'S',
        }
    }

    const fn from_octet(b: u8) -> Option<Self> {
        match b {
            b'U' => Some(Self::Up),
            b'D' => Some(Self::Down),
            b'S' => Some(Self::Sleep),
            _ => None,
        }
    }
}

/// What a stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run tag.
    pub tag: u16,
    /// The direction.
    pub kind: Kind,
    /// The QoS it was published with.
    pub qos: u8,
    /// Sensor index or topic index.
    pub source: u32,
    /// Sequence number of the source.
    pub seq: u32,
    /// Send time in nanoseconds since the epoch of the run.
    pub sent_ns: u64,
}

/// The clock every stamp is read against: one `Instant` for the process,
/// shared by its threads.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Epoch {
    /// An epoch starting now.
    pub fn now() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds from the epoch to `at`.
    pub fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time from a stamp's send time to `at` (zero if the stamp is later).
    pub fn since(&self, sent_ns: u64, at: Instant) -> Duration {
        Duration::from_nanos(self.ns(at).saturating_sub(sent_ns))
    }
}

/// The pass a stamp belongs to: its tag and its clock.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// The tag in every stamp of the pass.
    pub tag: u16,
    /// The clock of the send times.
    pub epoch: Epoch,
}

/// Fills `buf` (the whole payload) with padding and, when it is long
/// enough, the stamp.
pub fn fill(buf: &mut [u8], s: &Stamp) {
    buf.fill(b'.');
    write(buf, s);
}

/// Writes the stamp over the front of an already padded payload; a
/// payload shorter than [`STAMP_LEN`] is left as it is.
pub fn write(buf: &mut [u8], s: &Stamp) {
    let Some(head) = buf.get_mut(..STAMP_LEN) else { return };
    head[0..2].copy_from_slice(&s.tag.to_be_bytes());
    head[2] = s.kind.octet();
    head[3] = s.qos;
    head[4..8].copy_from_slice(&s.source.to_be_bytes());
    head[8..12].copy_from_slice(&s.seq.to_be_bytes());
    head[12..20].copy_from_slice(&s.sent_ns.to_be_bytes());
}

/// Reads the stamp of a payload; `None` when it is too short or not one.
pub fn read(buf: &[u8]) -> Option<Stamp> {
    let h = buf.get(..STAMP_LEN)?;
    let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&h[12..20]);
    Some(Stamp {
        tag: u16::from_be_bytes([h[0], h[1]]),
        kind: Kind::from_octet(h[2])?,
        qos: h[3],
        source: u32_at(4),
        seq: u32_at(8),
        sent_ns: u64::from_be_bytes(ns),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s =
            Stamp { tag: 0xbeef, kind: Kind::Down, qos: 2, source: 7, seq: 1 << 20, sent_ns: 42 };
        let mut buf = [0u8; 24];
        fill(&mut buf, &s);
        assert_eq!(read(&buf), Some(s));
        assert_eq!(&buf[20..], b"....");
        let mut short = [0u8; 19];
        fill(&mut short, &s);
        assert_eq!(short, [b'.'; 19]);
        assert_eq!(read(&short), None);
        buf[2] = b'?';
        assert_eq!(read(&buf), None);
    }
}
