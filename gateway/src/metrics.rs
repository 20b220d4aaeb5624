//! Counters the gateway keeps, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::DropReason;

/// Gateway-wide counters. Cheap to update from the dispatcher; read with
/// [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Datagrams that did not decode (dropped).
    pub malformed: AtomicU64,
    /// Datagrams from addresses without a session, answered with DISCONNECT.
    pub unknown_sender: AtomicU64,
    /// CONNECTs refused before a session was made.
    pub connects_refused: AtomicU64,
    /// Sessions currently connected.
    pub sessions_active: AtomicU64,
    /// Sessions taken over by a CONNECT from another address.
    pub takeovers: AtomicU64,
    /// Sensors lost to keepalive supervision.
    pub sensors_lost: AtomicU64,
    /// QoS -1 PUBLISHes forwarded.
    pub qos_minus_one: AtomicU64,
    /// QoS -1 PUBLISHes dropped (not allowed, unknown topic).
    pub qos_minus_one_refused: AtomicU64,
    /// Messages and requests dropped, by reason.
    pub dropped_not_subscribed: AtomicU64,
    /// See [`DropReason::TopicRefused`].
    pub dropped_topic_refused: AtomicU64,
    /// See [`DropReason::TopicsFull`].
    pub dropped_topics_full: AtomicU64,
    /// See [`DropReason::TooLong`].
    pub dropped_too_long: AtomicU64,
    /// See [`DropReason::QueueFull`].
    pub dropped_queue_full: AtomicU64,
    /// See [`DropReason::RejectedBySensor`].
    pub dropped_rejected_by_sensor: AtomicU64,
    /// See [`DropReason::Unexpected`].
    pub dropped_unexpected: AtomicU64,
    /// See [`DropReason::RateLimited`].
    pub dropped_rate_limited: AtomicU64,
    /// See [`DropReason::ForbiddenChar`].
    pub dropped_forbidden_char: AtomicU64,
    /// See [`DropReason::Asleep`].
    pub dropped_asleep: AtomicU64,
    /// Sensors asleep now.
    pub sessions_asleep: AtomicU64,
    /// Sensor PUBLISHes acknowledged by the broker, by QoS 0, 1, 2, -1.
    pub messages_in: [AtomicU64; 4],
    /// Broker messages delivered to sensors, by QoS 0, 1, 2.
    pub messages_out: [AtomicU64; 3],
    /// REGISTER, PUBLISH and PUBREL sent to sensors again.
    pub retransmissions: AtomicU64,
    /// Late copies (the same MsgId and payload) of sensors' QoS 2
    /// PUBLISHes whose exchange had ended, answered with PUBREC and not
    /// published again.
    pub qos2_late_duplicates: AtomicU64,
    /// Upstream connections established (first connects and reconnects).
    pub upstream_connects: AtomicU64,
    /// Upstream connections lost or not made.
    pub upstream_outages: AtomicU64,
    /// 1 while the gateway's own connection reaches the broker, else 0.
    pub broker_up: AtomicU64,
    /// Broker outages seen by the gateway's own connection (one from the
    /// start counts).
    pub broker_outages: AtomicU64,
    /// Messages waiting for sensors (queued, in flight, buffered).
    pub buffered_messages: AtomicU64,
    /// Octets of those messages (payloads and topic names).
    pub buffered_bytes: AtomicU64,
    /// Sensor PUBLISH to broker acknowledgement, QoS 1 and 2, in
    /// milliseconds: counts per bucket of [`LATENCY_BUCKETS_MS`] (the last
    /// one is everything above).
    pub latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// Sum of those latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Store transactions committed (each a group of writes).
    pub store_commits: AtomicU64,
    /// Session writes in those transactions.
    pub store_writes: AtomicU64,
    /// Time spent committing, in microseconds.
    pub store_commit_us: AtomicU64,
    /// Store commits that failed (retried), and failed attempts to open
    /// the store's file again.
    pub store_errors: AtomicU64,
    /// 1 while the store cannot write, else 0.
    pub store_failing: AtomicU64,
    /// Times the store's file was opened again after an I/O error.
    pub store_reopens: AtomicU64,
    /// Session writes handed to the store and not committed yet.
    pub store_waiting: AtomicU64,
    /// CONNECTs of persistent sessions refused while the store could not
    /// write.
    pub store_refused_connects: AtomicU64,
    /// Datagrams of persistent sessions dropped, and QoS 0 messages for
    /// them, while the store could not write and the session already had
    /// as much waiting as it may.
    pub store_refused_datagrams: AtomicU64,
    /// Datagrams one worker could not hand to another (its queue was
    /// full), dropped.
    pub forwards_dropped: AtomicU64,
    /// CONNECTs refused by an admission bound, by
    /// [`crate::admission::Refusal::index`].
    pub admission_refused: [AtomicU64; crate::admission::Refusal::ALL.len()],
    /// Replies to unverified sources not sent (over their budget, or
    /// longer than the request).
    pub replies_suppressed: AtomicU64,
    /// Sessions that moved to a new address, by the outcome of its
    /// return-routability check ([`crate::admission::Check::index`]).
    pub address_checks: [AtomicU64; crate::admission::Check::ALL.len()],
    /// Datagrams for a session withheld from a new address that never
    /// proved it receives there (discarded when the check failed).
    pub address_withheld: AtomicU64,
    /// Topics refused by the ACL, by [`crate::acl::Action::index`].
    pub acl_refused: [AtomicU64; crate::acl::Action::ALL.len()],
    /// DTLS 1.2 handshakes completed.
    pub dtls_handshakes: AtomicU64,
    /// DTLS 1.3 handshakes completed.
    pub dtls_handshakes_13: AtomicU64,
    /// DTLS handshakes that failed (bad key, timeout, no common suite).
    pub dtls_handshakes_failed: AtomicU64,
    /// HelloVerifyRequests sent (first ClientHellos answered statelessly).
    pub dtls_hello_verify: AtomicU64,
    /// DTLS 1.3 HelloRetryRequests sent (first ClientHellos answered
    /// statelessly).
    pub dtls_hello_retry: AtomicU64,
    /// DTLS associations held (handshakes included).
    pub dtls_associations: AtomicU64,
    /// DTLS ClientHellos refused by a bound (handshakes, associations,
    /// HelloVerifyRequests per second).
    pub dtls_refused_limit: AtomicU64,
    /// CONNECTs and wake-ups over DTLS refused: the ClientId is not the
    /// peer's to use, or forwarder encapsulation.
    pub dtls_refused_identity: AtomicU64,
    /// DTLS peers refused: a client certificate pinned to no ClientId.
    pub dtls_refused_certificate: AtomicU64,
    /// Datagrams on the DTLS socket from an address without an
    /// association that are no ClientHello.
    pub dtls_dropped: AtomicU64,
    /// Datagrams for a DTLS peer without an established association
    /// (restored sessions before their sensor's new handshake), dropped.
    pub dtls_unsendable: AtomicU64,
    /// 1 in aggregating mode (`gateway.mode`), 0 in transparent mode.
    pub mode_aggregating: AtomicU64,
    /// Aggregating mode: pool connections, and those up.
    pub pool_connections: AtomicU64,
    /// See [`Metrics::pool_connections`].
    pub pool_connections_up: AtomicU64,
    /// Aggregating mode: distinct filters subscribed upstream.
    pub pool_filters: AtomicU64,
    /// Aggregating mode: sensor subscriptions (a filter of a sensor).
    pub pool_subscriptions: AtomicU64,
    /// Aggregating mode: messages kept for disconnected sensors.
    pub pool_offline_messages: AtomicU64,
    /// Aggregating mode: messages for disconnected sensors dropped beyond
    /// `aggregating.max_offline_messages`.
    pub pool_offline_dropped: AtomicU64,
    /// Aggregating mode: copies of broker messages handed to sessions.
    pub pool_fanout: AtomicU64,
    /// Aggregating mode: broker messages that matched no sensor.
    pub pool_unrouted: AtomicU64,
    /// Aggregating mode: wills the gateway published for lost sensors.
    pub wills_published: AtomicU64,
}

/// Upper bounds of the latency histogram buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Malformed datagrams dropped.
    pub malformed: u64,
    /// Datagrams from unknown senders.
    pub unknown_sender: u64,
    /// CONNECTs refused.
    pub connects_refused: u64,
    /// Sessions connected now.
    pub sessions_active: u64,
    /// Takeovers.
    pub takeovers: u64,
    /// Sensors lost.
    pub sensors_lost: u64,
    /// QoS -1 PUBLISHes forwarded.
    pub qos_minus_one: u64,
    /// QoS -1 PUBLISHes dropped.
    pub qos_minus_one_refused: u64,
    /// Everything dropped, all reasons together.
    pub dropped: u64,
    /// Sensors asleep.
    pub sessions_asleep: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Messages waiting for sensors.
    pub buffered_messages: u64,
    /// CONNECTs refused by admission bounds, all reasons together.
    pub admission_refused: u64,
    /// Replies to unverified sources not sent.
    pub replies_suppressed: u64,
    /// Topics refused by the ACL, all actions together.
    pub acl_refused: u64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves a gauge that sums several parts: one part went from `before`
    /// to `after`.
    pub fn adjust(c: &AtomicU64, before: u64, after: u64) {
        if after > before {
            c.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            let d = before - after;
            let _ =
                c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(d)));
        }
    }

    /// Subtracts one from a gauge, never below zero.
    pub fn dec(c: &AtomicU64) {
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Records the broker's acknowledgement of a sensor's PUBLISH.
    pub fn published(&self, qos: mqttsn_codec::QoS, latency: std::time::Duration) {
        let i = match qos {
            mqttsn_codec::QoS::AtMostOnce => 0,
            mqttsn_codec::QoS::AtLeastOnce => 1,
            mqttsn_codec::QoS::ExactlyOnce => 2,
            mqttsn_codec::QoS::NoSession => 3,
        };
        Self::inc(&self.messages_in[i]);
        if i == 1 || i == 2 {
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            let bucket = LATENCY_BUCKETS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(LATENCY_BUCKETS_MS.len());
            Self::inc(&self.latency[bucket]);
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// Records a delivery to a sensor.
    pub fn delivered(&self, qos: crate::mqtt::QoS) {
        Self::inc(&self.messages_out[qos as usize]);
    }

    /// Sets a gauge.
    pub fn set(c: &AtomicU64, v: u64) {
        c.store(v, Ordering::Relaxed);
    }

    /// The counters in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP mqttsn_{name} {help}\n# TYPE mqttsn_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "mqttsn_{name}{labels} {v}");
            }
        };
        metric(
            "sensors",
            "gauge",
            "Sensors by state.",
            &[
                (
                    "{state=\"connected\"}",
                    get(&self.sessions_active).saturating_sub(get(&self.sessions_asleep)),
                ),
                ("{state=\"asleep\"}", get(&self.sessions_asleep)),
            ],
        );
        metric(
            "datagrams_total",
            "counter",
            "Datagrams by direction.",
            &[
                ("{direction=\"in\"}", get(&self.datagrams_in)),
                ("{direction=\"out\"}", get(&self.datagrams_out)),
            ],
        );
        metric(
            "malformed_datagrams_total",
            "counter",
            "Datagrams that did not decode.",
            &[("", get(&self.malformed))],
        );
        metric(
            "unknown_sender_total",
            "counter",
            "Datagrams from addresses without a session.",
            &[("", get(&self.unknown_sender))],
        );
        metric(
            "connects_refused_total",
            "counter",
            "CONNECTs refused.",
            &[("", get(&self.connects_refused))],
        );
        let refused: Vec<(String, u64)> = crate::admission::Refusal::ALL
            .iter()
            .map(|r| {
                (format!("{{reason=\"{}\"}}", r.as_str()), get(&self.admission_refused[r.index()]))
            })
            .collect();
        let refused: Vec<(&str, u64)> = refused.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "admission_refused_total",
            "counter",
            "CONNECTs refused by an admission bound, by bound.",
            &refused,
        );
        let acl: Vec<(String, u64)> = crate::acl::Action::ALL
            .iter()
            .map(|a| (format!("{{action=\"{}\"}}", a.as_str()), get(&self.acl_refused[a.index()])))
            .collect();
        let acl: Vec<(&str, u64)> = acl.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "acl_refused_total",
            "counter",
            "Topics refused by the ACL, by what the sensor tried.",
            &acl,
        );
        metric(
            "dtls_handshakes_total",
            "counter",
            "DTLS handshakes, by result (and version, when completed).",
            &[
                ("{result=\"completed\",version=\"1.2\"}", get(&self.dtls_handshakes)),
                ("{result=\"completed\",version=\"1.3\"}", get(&self.dtls_handshakes_13)),
                ("{result=\"failed\"}", get(&self.dtls_handshakes_failed)),
            ],
        );
        metric(
            "dtls_hello_verify_total",
            "counter",
            "First DTLS ClientHellos answered statelessly with a HelloVerifyRequest.",
            &[("", get(&self.dtls_hello_verify))],
        );
        metric(
            "dtls_hello_retry_total",
            "counter",
            "First DTLS 1.3 ClientHellos answered statelessly with a HelloRetryRequest.",
            &[("", get(&self.dtls_hello_retry))],
        );
        metric(
            "dtls_associations",
            "gauge",
            "DTLS associations held, handshakes included.",
            &[("", get(&self.dtls_associations))],
        );
        metric(
            "dtls_refused_total",
            "counter",
            "DTLS peers refused, by reason.",
            &[
                ("{reason=\"limit\"}", get(&self.dtls_refused_limit)),
                ("{reason=\"identity\"}", get(&self.dtls_refused_identity)),
                ("{reason=\"certificate\"}", get(&self.dtls_refused_certificate)),
            ],
        );
        metric(
            "dtls_dropped_total",
            "counter",
            "Datagrams on the DTLS socket that are neither a ClientHello nor for an association.",
            &[("", get(&self.dtls_dropped))],
        );
        metric(
            "dtls_unsendable_total",
            "counter",
            "Datagrams for a DTLS peer without an established association, dropped.",
            &[("", get(&self.dtls_unsendable))],
        );
        let mode = get(&self.mode_aggregating);
        metric(
            "gateway_mode",
            "gauge",
            "The gateway's mode (gateway.mode): 1 for the one that runs.",
            &[("{mode=\"transparent\"}", 1 - mode.min(1)), ("{mode=\"aggregating\"}", mode.min(1))],
        );
        metric(
            "pool_connections",
            "gauge",
            "Aggregating mode: the shared broker connections, by state.",
            &[
                ("{state=\"up\"}", get(&self.pool_connections_up)),
                (
                    "{state=\"down\"}",
                    get(&self.pool_connections).saturating_sub(get(&self.pool_connections_up)),
                ),
            ],
        );
        metric(
            "pool_filters",
            "gauge",
            "Aggregating mode: distinct topic filters subscribed on the broker.",
            &[("", get(&self.pool_filters))],
        );
        metric(
            "pool_subscriptions",
            "gauge",
            "Aggregating mode: sensor subscriptions behind them (a filter of a sensor).",
            &[("", get(&self.pool_subscriptions))],
        );
        metric(
            "pool_offline_messages",
            "gauge",
            "Aggregating mode: messages kept for disconnected CleanSession-false sensors.",
            &[("", get(&self.pool_offline_messages))],
        );
        metric(
            "pool_offline_dropped_total",
            "counter",
            "Aggregating mode: messages for disconnected sensors dropped beyond aggregating.max_offline_messages.",
            &[("", get(&self.pool_offline_dropped))],
        );
        metric(
            "pool_fanout_total",
            "counter",
            "Aggregating mode: copies of broker messages handed to sensor sessions.",
            &[("", get(&self.pool_fanout))],
        );
        metric(
            "pool_unrouted_total",
            "counter",
            "Aggregating mode: broker messages that matched no sensor (acknowledged and dropped).",
            &[("", get(&self.pool_unrouted))],
        );
        metric(
            "wills_published_total",
            "counter",
            "Aggregating mode: wills the gateway published for sensors it lost.",
            &[("", get(&self.wills_published))],
        );
        metric(
            "replies_suppressed_total",
            "counter",
            "Replies to unverified sources not sent (over the reply budget or longer than the request).",
            &[("", get(&self.replies_suppressed))],
        );
        let checks: Vec<(String, u64)> = crate::admission::Check::ALL
            .iter()
            .map(|c| {
                (format!("{{result=\"{}\"}}", c.as_str()), get(&self.address_checks[c.index()]))
            })
            .collect();
        let checks: Vec<(&str, u64)> = checks.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "address_checks_total",
            "counter",
            "Sessions moved to a new address, by the outcome of its return-routability check.",
            &checks,
        );
        metric(
            "address_withheld_total",
            "counter",
            "Datagrams withheld from a new address that never proved it receives there.",
            &[("", get(&self.address_withheld))],
        );
        metric(
            "sensors_lost_total",
            "counter",
            "Sensors lost to keepalive or sleep supervision.",
            &[("", get(&self.sensors_lost))],
        );
        metric(
            "takeovers_total",
            "counter",
            "Sessions moved to a new address.",
            &[("", get(&self.takeovers))],
        );
        metric(
            "dropped_total",
            "counter",
            "Messages and requests dropped, by reason.",
            &[
                ("{reason=\"not_subscribed\"}", get(&self.dropped_not_subscribed)),
                ("{reason=\"topic_refused\"}", get(&self.dropped_topic_refused)),
                ("{reason=\"topics_full\"}", get(&self.dropped_topics_full)),
                ("{reason=\"too_long\"}", get(&self.dropped_too_long)),
                ("{reason=\"queue_full\"}", get(&self.dropped_queue_full)),
                ("{reason=\"rejected_by_sensor\"}", get(&self.dropped_rejected_by_sensor)),
                ("{reason=\"unexpected\"}", get(&self.dropped_unexpected)),
                ("{reason=\"rate_limited\"}", get(&self.dropped_rate_limited)),
                ("{reason=\"forbidden_char\"}", get(&self.dropped_forbidden_char)),
                ("{reason=\"asleep\"}", get(&self.dropped_asleep)),
                ("{reason=\"qos_minus_one_refused\"}", get(&self.qos_minus_one_refused)),
            ],
        );
        metric(
            "messages_total",
            "counter",
            "Messages by direction and QoS.",
            &[
                ("{direction=\"sensor_to_broker\",qos=\"0\"}", get(&self.messages_in[0])),
                ("{direction=\"sensor_to_broker\",qos=\"1\"}", get(&self.messages_in[1])),
                ("{direction=\"sensor_to_broker\",qos=\"2\"}", get(&self.messages_in[2])),
                (
                    "{direction=\"sensor_to_broker\",qos=\"-1\"}",
                    get(&self.messages_in[3]) + get(&self.qos_minus_one),
                ),
                ("{direction=\"broker_to_sensor\",qos=\"0\"}", get(&self.messages_out[0])),
                ("{direction=\"broker_to_sensor\",qos=\"1\"}", get(&self.messages_out[1])),
                ("{direction=\"broker_to_sensor\",qos=\"2\"}", get(&self.messages_out[2])),
            ],
        );
        metric(
            "retransmissions_total",
            "counter",
            "REGISTER, PUBLISH and PUBREL sent to sensors again.",
            &[("", get(&self.retransmissions))],
        );
        metric(
            "qos2_late_duplicates_total",
            "counter",
            "Late copies of sensors' completed QoS 2 PUBLISHes, not published again.",
            &[("", get(&self.qos2_late_duplicates))],
        );
        metric(
            "upstream_connects_total",
            "counter",
            "Upstream MQTT connections established.",
            &[("", get(&self.upstream_connects))],
        );
        metric(
            "upstream_outages_total",
            "counter",
            "Upstream MQTT connections lost or not made.",
            &[("", get(&self.upstream_outages))],
        );
        metric(
            "broker_up",
            "gauge",
            "1 while the gateway's own connection reaches the broker, else 0.",
            &[("", get(&self.broker_up))],
        );
        metric(
            "broker_outages_total",
            "counter",
            "Broker outages (unreachable from the start counts as one).",
            &[("", get(&self.broker_outages))],
        );
        metric(
            "store_commits_total",
            "counter",
            "Session store transactions committed, each a group of writes.",
            &[("", get(&self.store_commits))],
        );
        metric(
            "store_writes_total",
            "counter",
            "Session writes committed to the store.",
            &[("", get(&self.store_writes))],
        );
        metric(
            "store_errors_total",
            "counter",
            "Store commits that failed and were retried.",
            &[("", get(&self.store_errors))],
        );
        metric(
            "store_failing",
            "gauge",
            "1 while the session store cannot write, else 0.",
            &[("", get(&self.store_failing))],
        );
        metric(
            "store_reopens_total",
            "counter",
            "Times the session store's file was opened again after an I/O error.",
            &[("", get(&self.store_reopens))],
        );
        metric(
            "store_writes_waiting",
            "gauge",
            "Session writes handed to the store and not committed yet.",
            &[("", get(&self.store_waiting))],
        );
        metric(
            "store_refused_total",
            "counter",
            "Refused while the session store could not write: CONNECTs of persistent sessions, and datagrams (and QoS 0 messages) of persistent sessions over their bound.",
            &[
                ("{what=\"connect\"}", get(&self.store_refused_connects)),
                ("{what=\"datagram\"}", get(&self.store_refused_datagrams)),
            ],
        );
        metric(
            "forwards_dropped_total",
            "counter",
            "Datagrams a worker could not hand to the worker holding their session (queue full).",
            &[("", get(&self.forwards_dropped))],
        );
        metric(
            "buffered_messages",
            "gauge",
            "Messages waiting for sensors.",
            &[("", get(&self.buffered_messages))],
        );
        metric(
            "buffered_bytes",
            "gauge",
            "Octets of messages waiting for sensors.",
            &[("", get(&self.buffered_bytes))],
        );
        let _ = writeln!(
            out,
            "# HELP mqttsn_store_commit_seconds_total Time spent committing to the store.\n\
             # TYPE mqttsn_store_commit_seconds_total counter\n\
             mqttsn_store_commit_seconds_total {}",
            get(&self.store_commit_us) as f64 / 1e6
        );
        let _ = writeln!(out, "# HELP mqttsn_publish_latency_seconds Sensor PUBLISH (QoS 1, 2) to broker acknowledgement.\n# TYPE mqttsn_publish_latency_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += get(&self.latency[i]);
            let _ = writeln!(
                out,
                "mqttsn_publish_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1000.0
            );
        }
        cumulative += get(&self.latency[LATENCY_BUCKETS_MS.len()]);
        let _ = writeln!(out, "mqttsn_publish_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "mqttsn_publish_latency_seconds_sum {}",
            get(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "mqttsn_publish_latency_seconds_count {cumulative}");
        let _ = writeln!(
            out,
            "# HELP mqttsn_build_info The gateway's version.\n# TYPE mqttsn_build_info gauge\n\
             mqttsn_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(p) = crate::process::figures() {
            let mut process = |name: &str, kind: &str, help: &str, v: f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            };
            process(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                p.start_time_seconds,
            );
            process(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                p.cpu_seconds,
            );
            process(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes.",
                p.resident_memory_bytes as f64,
            );
            process("process_open_fds", "gauge", "Open file descriptors.", p.open_fds as f64);
        }
        out
    }

    /// Counts a drop.
    pub fn dropped(&self, reason: DropReason) {
        Self::inc(match reason {
            DropReason::NotSubscribed => &self.dropped_not_subscribed,
            DropReason::TopicRefused => &self.dropped_topic_refused,
            DropReason::TopicsFull => &self.dropped_topics_full,
            DropReason::TooLong => &self.dropped_too_long,
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::RejectedBySensor => &self.dropped_rejected_by_sensor,
            DropReason::Unexpected => &self.dropped_unexpected,
            DropReason::RateLimited => &self.dropped_rate_limited,
            DropReason::ForbiddenChar => &self.dropped_forbidden_char,
            DropReason::Asleep => &self.dropped_asleep,
        });
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            malformed: get(&self.malformed),
            unknown_sender: get(&self.unknown_sender),
            connects_refused: get(&self.connects_refused),
            sessions_active: get(&self.sessions_active),
            takeovers: get(&self.takeovers),
            sensors_lost: get(&self.sensors_lost),
            qos_minus_one: get(&self.qos_minus_one),
            qos_minus_one_refused: get(&self.qos_minus_one_refused),
            sessions_asleep: get(&self.sessions_asleep),
            retransmissions: get(&self.retransmissions),
            buffered_messages: get(&self.buffered_messages),
            admission_refused: self.admission_refused.iter().map(get).sum(),
            replies_suppressed: get(&self.replies_suppressed),
            acl_refused: self.acl_refused.iter().map(get).sum(),
            dropped: get(&self.dropped_not_subscribed)
                + get(&self.dropped_topic_refused)
                + get(&self.dropped_topics_full)
                + get(&self.dropped_too_long)
                + get(&self.dropped_queue_full)
                + get(&self.dropped_rejected_by_sensor)
                + get(&self.dropped_unexpected)
                + get(&self.dropped_rate_limited)
                + get(&self.dropped_forbidden_char)
                + get(&self.dropped_asleep),
        }
    }
}
