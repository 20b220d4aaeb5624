//! Two clients with one ClientId on the broker: the gateway's own
//! connection closed by the broker right after it accepted it, again and
//! again, is another client (often a second gateway with the same
//! `gateway_id`) taking the ClientId over. Reported once, naming the
//! setting to change; the broker is not taken for unreachable meanwhile
//! (sensors are still admitted), and the reconnect delay keeps growing
//! (see `upstream::transparent::STABLE`).

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// A close this soon after CONNACK counts as a possible takeover.
pub(super) const QUICK_CLOSE: Duration = Duration::from_secs(5);

/// Quick closes in a row after which the clash is reported.
pub(super) const CLASH_AFTER: u32 = 3;

/// What the gateway's own connection tells about a ClientId clash.
#[derive(Debug, Default)]
pub(super) struct OwnClash {
    /// When the broker last accepted it.
    up_since: Option<Instant>,
    /// Closes right after CONNACK, in a row.
    quick_closes: u32,
    /// The clash was reported (once).
    warned: bool,
    /// When the last quick close happened and why, until the broker
    /// accepts again (a takeover) or [`QUICK_CLOSE`] passes without that
    /// (the broker went away moments after accepting: an outage since
    /// then).
    suspect: Option<(Instant, String)>,
}

impl OwnClash {
    /// The broker accepted the connection.
    pub(super) fn up(&mut self, now: Instant) {
        self.up_since = Some(now);
        self.suspect = None;
    }

    /// A quick close the broker did not follow by accepting again within
    /// [`QUICK_CLOSE`]: an outage since the close, with its reason. Once
    /// the clash is established (reported), quick closes stay takeovers:
    /// the reconnect delay then outgrows that window.
    pub(super) fn suspect_expired(&mut self, now: Instant) -> Option<(Instant, String)> {
        let (at, _) = self.suspect.as_ref()?;
        if now.saturating_duration_since(*at) < QUICK_CLOSE || self.quick_closes >= CLASH_AFTER {
            return None;
        }
        self.suspect.take()
    }

    /// The connection is gone. True when it went right after the broker
    /// accepted it (a takeover, not an outage); the clash is reported at
    /// the [`CLASH_AFTER`]th in a row.
    pub(super) fn closed_quickly(&mut self, now: Instant, client_id: &str, reason: &str) -> bool {
        let quick =
            self.up_since.take().is_some_and(|t| now.saturating_duration_since(t) < QUICK_CLOSE);
        if !quick {
            self.quick_closes = 0;
            return false;
        }
        self.quick_closes += 1;
        self.suspect = Some((now, reason.to_owned()));
        let n = self.quick_closes;
        if n >= CLASH_AFTER && !self.warned {
            self.warned = true;
            warn!(
                "the broker closed the gateway's own connection right after accepting it, {n} \
                 times in a row: another client probably uses the same ClientId \"{client_id}\" \
                 (set broker.client_id, or discovery.gateway_id, to one of this gateway's own); \
                 reconnecting ever more slowly"
            );
        } else if n < CLASH_AFTER {
            info!(
                "the broker closed the gateway's own connection right after accepting it: {reason}"
            );
        }
        true
    }
}
