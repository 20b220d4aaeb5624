//! The settings one session runs with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::topics::Predefined;

/// How long past its keepalive period a sensor may stay silent before the
/// gateway declares it lost (spec 7.2: "e.g. 1.5 times the keepalive for
/// short periods, 1.1 times for long ones").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Periods shorter than this get `short_factor`, others `long_factor`.
    pub threshold: Duration,
    /// The factor for short periods.
    pub short_factor: f64,
    /// The factor for long periods.
    pub long_factor: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self { threshold: Duration::from_secs(60), short_factor: 1.5, long_factor: 1.1 }
    }
}

impl Tolerance {
    /// The silence after which a sensor with keepalive `period` is lost.
    pub fn deadline(&self, period: Duration) -> Duration {
        let factor = if period < self.threshold { self.short_factor } else { self.long_factor };
        period.mul_f64(factor)
    }
}

/// The bound on messages buffered across all sensors, and how much is
/// buffered now (kept up to date by the driver).
#[derive(Debug, Default)]
pub struct BufferTotal {
    /// The most messages; `usize::MAX` for no bound.
    pub max_messages: usize,
    /// The most octets (payloads and topic names).
    pub max_bytes: usize,
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl BufferTotal {
    /// A bound of `max_messages` and `max_bytes`.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self { max_messages, max_bytes, ..Self::default() }
    }

    /// One session's buffered (messages, octets) went from `before` to
    /// `after`.
    pub fn update(&self, before: (usize, usize), after: (usize, usize)) {
        if before == after {
            return;
        }
        let apply = |c: &AtomicUsize, b: usize, a: usize| {
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(b).saturating_add(a))
            });
        };
        apply(&self.messages, before.0, after.0);
        apply(&self.bytes, before.1, after.1);
    }

    /// True when one more message of `size` octets fits.
    pub fn fits(&self, size: usize) -> bool {
        self.messages.load(Ordering::Relaxed) < self.max_messages
            && self.bytes.load(Ordering::Relaxed).saturating_add(size) <= self.max_bytes
    }
}

/// The settings shared by every session of a gateway.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Tretry: the wait before a REGISTER, PUBLISH or PUBREL toward the
    /// sensor is sent again (spec 6.13).
    pub retry_interval: Duration,
    /// Nretry: how many times it is sent again before the transaction ends.
    pub max_retries: u32,
    /// Keepalive supervision.
    pub keepalive_tolerance: Tolerance,
    /// QoS 1 and 2 messages in flight toward one sensor at a time.
    pub max_inflight: usize,
    /// Messages from the broker waiting for one sensor; beyond this, QoS 0
    /// messages are dropped (counted). QoS 1 and 2 are bounded by the
    /// broker's own in-flight window because the gateway acknowledges them
    /// only after the sensor did.
    pub max_queued: usize,
    /// Normal topic ids one sensor may register.
    pub max_topics: usize,
    /// The longest datagram sent to a sensor; a longer message is dropped
    /// (counted) and acknowledged upstream.
    pub max_datagram: usize,
    /// The longest ClientId accepted.
    pub max_client_id_len: usize,
    /// The prefix put before a ClientId on the broker.
    pub client_id_prefix: String,
    /// The predefined topics.
    pub predefined: Arc<Predefined>,
    /// Messages buffered for one sleeping sensor.
    pub sleep_buffer_messages: usize,
    /// Octets (payloads and topic names) buffered for one sleeping sensor.
    pub sleep_buffer_bytes: usize,
    /// Buffer QoS 0 messages for sleeping sensors too.
    pub buffer_qos0: bool,
    /// The bound across all sensors (messages waiting for any sensor).
    pub buffer_total: Arc<BufferTotal>,
    /// PUBLISHes a sensor may send per second on average, with this burst;
    /// beyond it QoS 1/2 get PUBACK congestion and QoS 0 is dropped
    /// (counted). `None`: no limit.
    pub publish_rate: Option<(f64, u32)>,
    /// Predefined topics of particular ClientIds (the global ones
    /// included), instead of `predefined`.
    pub predefined_by_client: HashMap<String, Arc<Predefined>>,
    /// The topic ACL (`[acl]`); `None`: every topic allowed.
    pub acl: Option<Arc<crate::acl::Acl>>,
    /// Take responsibility for a QoS 1 or 2 message from the broker as
    /// soon as it is queued (acknowledge it upstream then, keep it in the
    /// store for a persistent session), instead of after the sensor
    /// acknowledged it. The aggregating gateway needs it: its upstream
    /// connections are shared, and one slow sensor must not hold up the
    /// acknowledgements of the others (docs/aggregating.md). QoS 1 and 2
    /// are then bounded by `max_queued` too.
    pub ack_on_receipt: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(10),
            max_retries: 5,
            keepalive_tolerance: Tolerance::default(),
            max_inflight: 1,
            max_queued: 1000,
            max_topics: 1000,
            max_datagram: 1024,
            max_client_id_len: mqttsn_codec::validate::MAX_CLIENT_ID_LEN,
            client_id_prefix: String::new(),
            predefined: Arc::new(Predefined::new()),
            sleep_buffer_messages: 1000,
            sleep_buffer_bytes: 1 << 20,
            buffer_qos0: true,
            buffer_total: Arc::new(BufferTotal::new(100_000, 64 << 20)),
            publish_rate: None,
            predefined_by_client: HashMap::new(),
            acl: None,
            ack_on_receipt: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_tolerance() {
        let t = Tolerance::default();
        assert_eq!(t.deadline(Duration::from_secs(10)), Duration::from_secs(15));
        assert_eq!(t.deadline(Duration::from_secs(100)), Duration::from_secs(110));
    }
}
