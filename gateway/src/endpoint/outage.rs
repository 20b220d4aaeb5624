//! Broker outages as the gateway's own connection sees them, and when the
//! log says so: once when one starts, once a minute while it lasts, once
//! when it ends. One connection per gateway (worker 0's) feeds it, so an
//! outage is reported once, however many sensors are connected.

use std::time::{Duration, Instant};

/// How often an outage in progress is reported again.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The broker became unreachable (the first time or again).
    Started,
    /// Still unreachable, this long so far.
    Ongoing(Duration),
    /// Reachable again after an outage of this long.
    Ended(Duration),
    /// Reachable, for the first time since the start.
    FirstUp,
}

/// The broker's state and the last report. Sans-IO: every input takes
/// `now`.
#[derive(Debug, Clone, Default)]
pub struct Outage {
    /// Since when the broker is unreachable, and when that was last
    /// reported.
    down: Option<(Instant, Instant)>,
    /// The broker was reachable at least once.
    was_up: bool,
    /// Outages counted (one from the start counts too).
    count: u64,
}

impl Outage {
    /// The own connection could not reach the broker (or lost it).
    pub fn down(&mut self, now: Instant) -> Option<Report> {
        if self.down.is_some() {
            return None;
        }
        self.down = Some((now, now));
        self.count += 1;
        Some(Report::Started)
    }

    /// The own connection is up.
    pub fn up(&mut self, now: Instant) -> Option<Report> {
        let first = !self.was_up;
        self.was_up = true;
        match self.down.take() {
            Some((since, _)) => Some(Report::Ended(now.saturating_duration_since(since))),
            None if first => Some(Report::FirstUp),
            None => None,
        }
    }

    /// Called now and then (each housekeeping step): a report every
    /// [`REPORT_EVERY`] while the outage lasts.
    pub fn tick(&mut self, now: Instant) -> Option<Report> {
        let (since, last) = self.down.as_mut()?;
        if now.saturating_duration_since(*last) < REPORT_EVERY {
            return None;
        }
        *last = now;
        Some(Report::Ongoing(now.saturating_duration_since(*since)))
    }

    /// The broker is unreachable now.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// Outages so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A duration for logs: `75s`, `12m05s`, `3h02m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{}.{}s", s, d.subsec_millis() / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_outage_is_reported_at_start_each_minute_and_at_the_end() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.up(t0), Some(Report::FirstUp));
        assert_eq!(o.up(t0 + S), None, "up again without an outage: nothing");
        assert_eq!(o.down(t0 + 10 * S), Some(Report::Started));
        assert_eq!(o.down(t0 + 11 * S), None, "a second failed connect is the same outage");
        let mut reports = Vec::new();
        for i in 11..=200 {
            if let Some(r) = o.tick(t0 + i * S) {
                reports.push(r);
            }
        }
        assert_eq!(
            reports,
            [Report::Ongoing(60 * S), Report::Ongoing(120 * S), Report::Ongoing(180 * S)]
        );
        assert_eq!(o.up(t0 + 205 * S), Some(Report::Ended(195 * S)));
        assert_eq!(o.tick(t0 + 400 * S), None);
        assert_eq!(o.count(), 1);
    }

    #[test]
    fn down_from_the_start_counts_as_an_outage() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.down(t0), Some(Report::Started));
        assert!(o.is_down());
        assert_eq!(o.count(), 1);
        assert_eq!(o.up(t0 + 5 * S), Some(Report::Ended(5 * S)));
        assert_eq!(o.down(t0 + 6 * S), Some(Report::Started));
        assert_eq!(o.count(), 2);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(2500)), "2.5s");
        assert_eq!(human(75 * S), "1m15s");
        assert_eq!(human(3 * 3600 * S + 120 * S), "3h02m");
    }
}
