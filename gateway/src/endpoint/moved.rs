//! A session moving to a new address: a return-routability check.
//!
//! MQTT-SN 1.2 has no authentication, so a wake-up PINGREQ(ClientId) or a
//! CONNECT(CleanSession false) from a new address may come from anyone who
//! knows a ClientId, and from a forged source address. A genuine sensor
//! that moved (NAT rebinding, a new DHCP lease) receives at its new
//! address; a forged source does not. So, after a move to an address that
//! is not exempt, nothing the gateway originates (PUBLISH, REGISTER, and
//! whatever would follow them, PINGRESP included) goes there until the
//! address has echoed a probe: a REGISTER of one of the sensor's own topic
//! names with an unpredictable MsgId, which every 1.2 client answers with
//! REGACK. Replies to the sensor's own requests (CONNACK, PINGRESP with
//! nothing withheld, PUBACK, SUBACK, ...) are not held: they are no larger
//! than what caused them.
//!
//! - The probe is sent only while the octets sent to the new address stay
//!   within [`AMPLIFICATION`] times those received from it since the move
//!   (as QUIC bounds an unvalidated path), and at most once per datagram
//!   received from it.
//! - A REGACK with the probe's MsgId from the new address verifies it:
//!   what was withheld goes out, in order.
//! - A move back to the last verified address ends the check: what was
//!   withheld goes there. A move elsewhere starts a new check, with a new
//!   probe, and takes what was withheld along. A clean start or the
//!   session's end discards it (QoS 1 and 2 messages stay with the
//!   session, which sends them again).
//! - A session with no topic name to register (predefined and short
//!   topics only) cannot be checked: its datagrams go out unchecked.
//!
//! Each outcome is counted ([`Check`]), and so is every withheld datagram
//! that was discarded.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mqttsn_codec::{Packet, TopicId};
use tracing::info;

use super::{Endpoint, Outgoing};
use crate::admission::Check;
use crate::metrics::Metrics;
use crate::peer::Peer;

/// The most octets sent to an unverified address per octet received from
/// it.
pub const AMPLIFICATION: usize = 3;

/// The most datagrams withheld per session; beyond, the oldest are
/// discarded (and counted).
const MAX_WITHHELD: usize = 64;

/// A session's check of its new address.
///
/// A wake-up from the last verified address while a check is under way
/// moves the session back (see `route::wake_elsewhere`), so a forged
/// wake-up cannot keep the sensor from its messages.
#[derive(Debug)]
pub(super) struct Gate {
    /// The MsgId the probe carries.
    msg_id: u16,
    /// The last verified address: a move back there ends the check.
    back_to: Peer,
    /// Octets received from and sent to the new address since the move.
    received: usize,
    sent: usize,
    /// A datagram arrived since the probe was last sent.
    due: bool,
    /// What waits for the address to prove itself, in order.
    withheld: VecDeque<Outgoing>,
}

/// Something the gateway originates (as opposed to a reply to the
/// sensor's own request).
fn originated(o: &Outgoing) -> bool {
    matches!(o, Outgoing::Publish { .. } | Outgoing::Register { .. })
}

impl Endpoint {
    /// An unpredictable MsgId for a probe (never 0).
    fn probe_msg_id(&mut self) -> u16 {
        self.probe_count += 1;
        let mut h = self.probe_keys.build_hasher();
        h.write_u64(self.probe_count);
        let id = (h.finish() & 0xffff) as u16;
        id.max(1)
    }

    /// The session `idx` moved from `old` to `new` on a datagram of `len`
    /// octets: starts, ends or restarts its check.
    pub(super) fn moved(&mut self, idx: usize, old: Peer, new: &Peer, len: usize) {
        let verify = {
            let adm = self.dir.admission();
            // A DTLS handshake's cookie exchange has proven the address.
            adm.limits().verify_moves
                && !adm.is_exempt(new.addr.ip())
                && new.link != crate::peer::Link::Dtls
        };
        let msg_id = self.probe_msg_id();
        let Some(e) = self.entries.get_mut(idx) else { return };
        let (back_to, withheld) = match e.gate.take() {
            Some(g) => {
                // The address it moved from never proved itself.
                Metrics::inc(&self.metrics.address_checks[Check::Failed.index()]);
                (g.back_to, g.withheld)
            }
            None => (old, VecDeque::new()),
        };
        if !verify || back_to == *new {
            // Back where it was verified (or not checked): what was
            // withheld goes there.
            self.transmits.extend(withheld.into_iter().map(|o| (new.clone(), o)));
            return;
        }
        // The store keeps the verified address: after a restart the
        // session is found where it was proven.
        e.addr_bytes = back_to.to_bytes();
        e.gate =
            Some(Box::new(Gate { msg_id, back_to, received: len, sent: 0, due: true, withheld }));
    }

    /// Ends a session's check without a verdict (a clean start, the
    /// session's end): what was withheld is discarded.
    pub(super) fn end_check(&mut self, idx: usize) {
        let Some(e) = self.entries.get_mut(idx) else { return };
        if let Some(g) = e.gate.take() {
            Metrics::inc(&self.metrics.address_checks[Check::Failed.index()]);
            let n = g.withheld.len() as u64;
            self.metrics.address_withheld.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Is the session `idx` under a check (so a wake-up may move it)?
    pub(super) fn is_checking(&self, idx: usize) -> bool {
        self.entries.get(idx).is_some_and(|e| e.gate.is_some())
    }

    /// A datagram of `len` octets from a session's unverified address,
    /// before the session sees it. True when it was the probe's echo
    /// (verified; the session does not see it).
    pub(super) fn check_heard(&mut self, idx: usize, packet: &Packet<'_>, len: usize) -> bool {
        let Some(e) = self.entries.get_mut(idx) else { return false };
        let Some(g) = e.gate.as_mut() else { return false };
        g.received = g.received.saturating_add(len);
        g.due = true;
        let Packet::RegAck(ack) = packet else { return false };
        if ack.msg_id != g.msg_id {
            return false;
        }
        let Some(g) = e.gate.take() else { return false };
        Metrics::inc(&self.metrics.address_checks[Check::Verified.index()]);
        info!(client_id = %e.cid, addr = %super::DisplayAddr(&e.addr), "new address verified");
        if let Some(peer) = &e.addr {
            e.addr_bytes = peer.to_bytes();
            self.transmits.extend(g.withheld.into_iter().map(|o| (peer.clone(), o)));
        }
        true
    }

    /// Datagrams for a session under a check: replies go out while nothing
    /// is withheld; what the gateway originates, and all after it, waits.
    /// Then the probe, if it is due and within the budget.
    pub(super) fn deliver_checked(&mut self, idx: usize, transmits: &mut Vec<Outgoing>) {
        let Some(e) = self.entries.get_mut(idx) else { return transmits.clear() };
        let (Some(g), Some(peer)) = (e.gate.as_mut(), e.addr.as_ref()) else {
            return transmits.clear();
        };
        for o in transmits.drain(..) {
            if g.withheld.is_empty() && !originated(&o) {
                g.sent += o.packet().encoded_len().unwrap_or(0);
                self.transmits.push_back((peer.clone(), o));
                continue;
            }
            // A retransmission replaces the copy still withheld.
            if let Outgoing::Publish { dup: true, msg_id, .. } = &o {
                let same =
                    |w: &Outgoing| matches!(w, Outgoing::Publish { msg_id: m, .. } if m == msg_id);
                if let Some(pos) = g.withheld.iter().position(same) {
                    g.withheld[pos] = o;
                    continue;
                }
            }
            if g.withheld.len() >= MAX_WITHHELD {
                g.withheld.pop_front();
                Metrics::inc(&self.metrics.address_withheld);
            }
            g.withheld.push_back(o);
        }
        self.probe(idx);
    }

    /// Sends the probe of a session's check if it is due, something is
    /// withheld and the budget allows; a session without a topic name to
    /// probe with gets what was withheld unchecked.
    pub(super) fn probe(&mut self, idx: usize) {
        let Some(e) = self.entries.get_mut(idx) else { return };
        let Some(g) = e.gate.as_mut() else { return };
        if !g.due || g.withheld.is_empty() {
            return;
        }
        let Some(peer) = e.addr.clone() else { return };
        // A topic name of the sensor's own: the one the first withheld
        // datagram needs, else any.
        let topic: Option<(u16, Arc<str>)> = match g.withheld.iter().find(|o| originated(o)) {
            Some(Outgoing::Register { topic_id, name, .. }) => Some((*topic_id, name.clone())),
            Some(Outgoing::Publish { topic: TopicId::Normal(id), .. }) => {
                e.session.registration(*id).map(|n| (*id, n.clone()))
            }
            _ => None,
        }
        .or_else(|| e.session.registrations().next().map(|(id, n)| (id, n.clone())));
        let Some((topic_id, name)) = topic else {
            let Some(g) = e.gate.take() else { return };
            Metrics::inc(&self.metrics.address_checks[Check::Unverifiable.index()]);
            self.transmits.extend(g.withheld.into_iter().map(|o| (peer.clone(), o)));
            return;
        };
        let probe = Outgoing::Register { topic_id, msg_id: g.msg_id, name };
        let Ok(len) = probe.packet().encoded_len() else { return };
        if g.sent + len > g.received.saturating_mul(AMPLIFICATION) {
            return;
        }
        g.sent += len;
        g.due = false;
        self.transmits.push_back((peer, probe));
    }
}
