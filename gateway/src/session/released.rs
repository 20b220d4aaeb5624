//! The sensor's QoS 2 MsgIds completed lately (PUBCOMP sent), to tell a
//! late retransmission of a finished message from a new one.
//!
//! A network that reorders can deliver a copy of a sensor's PUBLISH (a
//! retransmission with DUP set, or a datagram the network duplicated)
//! after its exchange ended. MQTT 3.1.1 (4.3.3) takes every PUBLISH after
//! PUBREL as new; the gateway instead answers a PUBLISH with the MsgId and
//! the payload of a message it completed less than the window ago with
//! PUBREC and forwards nothing (docs/conformance.md). Another payload
//! under the same MsgId is a new message: a sensor may use an id again as
//! soon as the exchange is over.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hasher};
use std::time::{Duration, Instant};

/// MsgIds remembered per session; the oldest goes first.
pub(super) const CAPACITY: usize = 16;

/// One completed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    msg_id: u16,
    /// [`fingerprint`] of its payload; `None` when it is not known (a
    /// message the broker recorded before the session was restored).
    fingerprint: Option<u64>,
    at: Instant,
}

/// What a session holds: at most [`CAPACITY`] entries, each for `window`.
#[derive(Debug, Default)]
pub(super) struct Released {
    entries: VecDeque<Entry>,
}

/// The payload's fingerprint: copies of one message have the same.
pub(super) fn fingerprint(payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(payload);
    h.finish()
}

impl Released {
    /// `msg_id` completed at `now`.
    pub(super) fn insert(&mut self, msg_id: u16, fingerprint: Option<u64>, now: Instant) {
        self.entries.retain(|e| (e.msg_id, e.fingerprint) != (msg_id, fingerprint));
        if self.entries.len() >= CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry { msg_id, fingerprint, at: now });
    }

    /// True when a PUBLISH with `msg_id` and a payload of `fingerprint`
    /// is a late copy of a message completed less than `window` before
    /// `now`. A message whose payload is not known matches a PUBLISH with
    /// DUP set (`dup`) only.
    pub(super) fn is_late_copy(
        &mut self,
        msg_id: u16,
        fingerprint: u64,
        dup: bool,
        now: Instant,
        window: Duration,
    ) -> bool {
        self.expire(now, window);
        self.entries
            .iter()
            .any(|e| e.msg_id == msg_id && e.fingerprint.map_or(dup, |f| f == fingerprint))
    }

    /// A new message uses `msg_id`: a completion under it whose payload
    /// is not known can no longer be told from it, and is forgotten.
    pub(super) fn forget_unknown(&mut self, msg_id: u16) {
        self.entries.retain(|e| e.msg_id != msg_id || e.fingerprint.is_some());
    }

    /// Drops what completed `window` or longer before `now`.
    pub(super) fn expire(&mut self, now: Instant, window: Duration) {
        while self.entries.front().is_some_and(|e| now.saturating_duration_since(e.at) >= window) {
            self.entries.pop_front();
        }
    }

    /// Forgets everything (a clean session).
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Gives back the memory when nothing is remembered.
    pub(super) fn shrink_idle(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
    }

    /// How many MsgIds are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}
