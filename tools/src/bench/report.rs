//! Turning what a pass measured into figures: the JSON report (stable key
//! names, documented in docs/tools.md), the ratios of the gateway pass to
//! the direct pass, the human summary and the exit code.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::broker::{PublisherResult, SubscriberResult};
use super::histogram::Histogram;
use super::inbox::InboxTallies;
use super::options::{BenchOptions, Mode, Targets};
use super::outbox::OutStats;
use super::payload::STAMP_LEN;
use super::procstat::ProcSample;
use super::shared::{ClientResult, Latencies, Roles};
use super::tracker::Tally;

/// Exit code: a pass was cut short by `--max-time` (or interrupted).
pub const EXIT_CUT_SHORT: i32 = 3;
/// Exit code: messages lost, QoS 2 delivered twice, or sensors that never
/// connected.
pub const EXIT_LOSS: i32 = 4;

/// One reading of the clocks at a phase boundary.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// This process's CPU time.
    pub tool_cpu: Duration,
    /// The sensor thread's CPU time.
    pub sensor_thread_cpu: Duration,
    /// The gateway's process.
    pub gateway: Option<ProcSample>,
    /// The broker's process.
    pub broker: Option<ProcSample>,
    /// The machine's UDP receive-buffer drops.
    pub rcvbuf: Option<u64>,
}

/// Everything one pass measured, before it is turned into figures.
#[derive(Debug)]
pub struct PassData {
    /// The direct pass.
    pub direct: bool,
    /// Who did what.
    pub roles: Roles,
    /// Before the connect phase, after it, at the start of the publish
    /// phase, after everything arrived.
    pub samples: [Sample; 4],
    /// When the publish phase started.
    pub publish_start: Instant,
    /// Every client's result.
    pub results: Vec<ClientResult>,
    /// Latencies of all clients.
    pub latencies: Latencies,
    /// What the clients received.
    pub tallies: InboxTallies,
    /// What the subscriber on the broker counted.
    pub subscriber: SubscriberResult,
    /// The broker-to-sensor publisher.
    pub down: Option<PublisherResult>,
    /// Sensors subscribed to each down topic.
    pub down_subscribers: Vec<u64>,
    /// The publisher for sleepers.
    pub sleep: Option<PublisherResult>,
    /// The wake phase, start to the last sleeper done.
    pub wake_time: Option<Duration>,
    /// Why the pass was cut short, if it was.
    pub cut_short: Option<&'static str>,
}

/// p50, p90, p99 and max in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 3)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn pct(h: &Histogram) -> Option<Percentiles> {
    Some(Percentiles {
        p50: ms(h.quantile(0.5)?),
        p90: ms(h.quantile(0.9)?),
        p99: ms(h.quantile(0.99)?),
        max: ms(h.quantile(1.0)?),
    })
}

fn per_second(n: u64, d: Option<Duration>) -> Option<f64> {
    let s = d?.as_secs_f64();
    (s > 0.0).then(|| round(n as f64 / s, 1))
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| round(d.as_secs_f64(), 4))
}

/// The connect phase.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    /// Sensors with CONNACK accepted.
    pub connected: u64,
    /// Sensors whose handshake failed (no answer, refused, cut short).
    pub failed: u64,
    /// CONNECT, REGISTER, SUBSCRIBE sent again.
    pub retransmissions: u64,
    /// From the phase's start to the last CONNACK.
    pub connected_seconds: Option<f64>,
    /// To the last REGACK of a sensor's own topic.
    pub registered_seconds: Option<f64>,
    /// To the last sensor through its whole handshake (with SUBSCRIBE).
    pub ready_seconds: Option<f64>,
    /// Connected sensors per second of `connected_seconds`.
    pub connect_per_second: Option<f64>,
    /// Sensors through the handshake per second of `ready_seconds`.
    pub ready_per_second: Option<f64>,
    /// CONNECT to CONNACK.
    pub connack_latency_ms: Option<Percentiles>,
    /// CONNECT to the end of the handshake.
    pub handshake_latency_ms: Option<Percentiles>,
    /// Sessions the gateway ended during the pass (unsolicited DISCONNECT).
    pub sessions_lost: u64,
    /// The first failure, as an example.
    pub first_failure: Option<String>,
}

/// What the sensors published.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// Messages per publishing sensor (`--count`).
    pub count_per_sensor: u64,
    /// Distinct messages sent.
    pub sent: u64,
    /// Of those at QoS 0, 1, 2.
    pub sent_qos: [u64; 3],
    /// PUBLISH and PUBREL sent again.
    pub retransmissions: u64,
    /// PUBACK accepted or PUBREC.
    pub acked: u64,
    /// QoS 2 completed with PUBCOMP.
    pub completed_qos2: u64,
    /// PUBACK with a refusal.
    pub rejected: u64,
    /// Given up after the last retransmission.
    pub given_up: u64,
    /// Still waiting for an acknowledgement at the end.
    pub unacked: u64,
    /// Datagrams the tool's sockets refused to send.
    pub send_errors: u64,
    /// From the phase's start to the last first send.
    pub seconds: Option<f64>,
    /// `sent` per second of `seconds`.
    pub sent_per_second: Option<f64>,
    /// The target (`--rate`).
    pub target_per_second: Option<f64>,
    /// PUBLISH to PUBACK / PUBREC at the sensor.
    pub ack_latency_ms: Option<Percentiles>,
}

/// What the subscriber on the broker counted.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedReport {
    /// Payloads carry the stamp (else only totals are known).
    pub stamped: bool,
    /// Messages received, copies included.
    pub received: u64,
    /// Distinct messages.
    pub unique: u64,
    /// Sent but never received.
    pub lost: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Extra copies of QoS 2 messages.
    pub duplicates_qos2: u64,
    /// Arrived after a later message of the same sensor.
    pub out_of_order: u64,
    /// Of this pass but not of a known sensor.
    pub foreign: u64,
    /// Sensors with at least one message lost.
    pub sensors_with_loss: Option<u64>,
    /// From the phase's start to the last receipt.
    pub seconds: Option<f64>,
    /// `unique` per second of `seconds`.
    pub per_second: Option<f64>,
    /// Sensor send to subscriber receipt.
    pub latency_ms: Option<Percentiles>,
}

/// Broker to sensors.
#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    /// Topics published to.
    pub topics: u32,
    /// Sensors per topic.
    pub fanout: u32,
    /// Sensors subscribed.
    pub subscribers: u64,
    /// Messages published on the broker.
    pub published: u64,
    /// Published per second.
    pub published_per_second: Option<f64>,
    /// Deliveries due: published × subscribers of the topic.
    pub expected: u64,
    /// Distinct deliveries.
    pub delivered: u64,
    /// Deliveries with copies.
    pub received: u64,
    /// Due but not delivered.
    pub lost: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Extra copies of QoS 2 messages.
    pub duplicates_qos2: u64,
    /// Out of order per sensor.
    pub out_of_order: u64,
    /// REGISTERs the gateway sent to sensors (answered with REGACK).
    pub registers: u64,
    /// From the phase's start to the last delivery.
    pub seconds: Option<f64>,
    /// Deliveries per second.
    pub delivered_per_second: Option<f64>,
    /// Broker publish to sensor receipt.
    pub latency_ms: Option<Percentiles>,
}

/// Sleeping sensors.
#[derive(Debug, Clone, Serialize)]
pub struct SleepReport {
    /// Sleepers.
    pub sleepers: u32,
    /// That went to sleep (DISCONNECT with Duration answered).
    pub asleep: u64,
    /// Published to each while asleep.
    pub messages_per_sleeper: u64,
    /// Published in all.
    pub published: u64,
    /// Delivered after waking, distinct.
    pub delivered: u64,
    /// Published but not delivered.
    pub lost: u64,
    /// Extra copies.
    pub duplicates: u64,
    /// Wake-ups (PINGREQ ... PINGRESP).
    pub wakes: u64,
    /// Of those, ended without a PINGRESP (every PINGREQ unanswered).
    pub wakes_without_pingresp: u64,
    /// From the wake phase's start until the last sleeper had everything
    /// (or gave up).
    pub wake_seconds: Option<f64>,
    /// One wake-up: PINGREQ to PINGRESP (direct mode: CONNECT to the last
    /// queued message).
    pub wake_latency_ms: Option<Percentiles>,
    /// Broker publish to receipt after waking.
    pub latency_ms: Option<Percentiles>,
}

/// A process watched with `--gateway-pid` / `--broker-pid`.
#[derive(Debug, Clone, Serialize)]
pub struct ProcReport {
    /// Resident set before the connect phase (KiB).
    pub rss_before_kib: u64,
    /// After connecting (and registering) every sensor.
    pub rss_connected_kib: u64,
    /// At the end.
    pub rss_after_kib: u64,
    /// (connected − before) / connected sensors, in octets.
    pub rss_per_sensor_bytes: Option<f64>,
    /// CPU of the connect phase per connected sensor.
    pub connect_cpu_us_per_sensor: Option<f64>,
    /// CPU from the publish phase's start until everything arrived.
    pub publish_cpu_seconds: f64,
    /// Per message handled (sent up + delivered down + delivered to sleepers).
    pub cpu_us_per_msg: Option<f64>,
    /// `publish_cpu_seconds` over the phase's active time (to the last send
    /// or receipt): 1.0 is one core.
    pub cpu_cores: Option<f64>,
}

/// The tool itself.
#[derive(Debug, Clone, Serialize)]
pub struct ToolReport {
    /// The whole process per message handled, publish phase.
    pub cpu_us_per_msg: Option<f64>,
    /// The sensor thread alone.
    pub sensor_thread_cpu_us_per_msg: Option<f64>,
    /// The sensor thread's CPU over the phase's active time: near 1.0 the
    /// tool, not the gateway, is the limit.
    pub sensor_thread_cores: Option<f64>,
    /// The connect phase, per connected sensor.
    pub connect_cpu_us_per_sensor: Option<f64>,
}

/// One pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// `gateway` or `direct`.
    pub pass: &'static str,
    /// All sensors (clients in the direct pass).
    pub sensors: u32,
    /// Those that publish.
    pub publishers: u32,
    /// Those that sleep.
    pub sleepers: u32,
    /// Messages handled: sent up + delivered down + delivered to sleepers.
    pub messages: u64,
    /// The connect phase.
    pub connect: ConnectReport,
    /// Sensor to broker, at the sensors.
    pub publish: PublishReport,
    /// Sensor to broker, at the subscriber.
    pub received: ReceivedReport,
    /// Broker to sensors.
    pub down: Option<DownReport>,
    /// Sleepers.
    pub sleep: Option<SleepReport>,
    /// `--gateway-pid` (gateway pass only).
    pub gateway_process: Option<ProcReport>,
    /// `--broker-pid`.
    pub broker_process: Option<ProcReport>,
    /// The tool's own CPU.
    pub tool: ToolReport,
    /// Machine-wide UDP receive-buffer drops during the pass
    /// (`RcvbufErrors`).
    pub udp_rcvbuf_errors: Option<u64>,
    /// Lost in all directions.
    pub lost: u64,
    /// The pass hit `--max-time` (or was interrupted).
    pub cut_short: bool,
}

fn proc_report(
    s: &[Sample; 4],
    get: impl Fn(&Sample) -> Option<ProcSample>,
    connected: u64,
    messages: u64,
    wall: f64,
) -> Option<ProcReport> {
    let [a, b, c, d] = [get(&s[0])?, get(&s[1])?, get(&s[2])?, get(&s[3])?];
    let cpu = d.cpu.saturating_sub(c.cpu).as_secs_f64();
    Some(ProcReport {
        rss_before_kib: a.rss_kib,
        rss_connected_kib: b.rss_kib,
        rss_after_kib: d.rss_kib,
        rss_per_sensor_bytes: (connected > 0)
            .then(|| round((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / connected as f64, 1)),
        connect_cpu_us_per_sensor: (connected > 0)
            .then(|| round(b.cpu.saturating_sub(a.cpu).as_secs_f64() * 1e6 / connected as f64, 2)),
        publish_cpu_seconds: round(cpu, 3),
        cpu_us_per_msg: (messages > 0).then(|| round(cpu * 1e6 / messages as f64, 3)),
        cpu_cores: (wall > 0.0).then(|| round(cpu / wall, 3)),
    })
}

fn delta(s: &[Sample; 4], f: impl Fn(&Sample) -> Duration, from: usize, to: usize) -> f64 {
    f(&s[to]).saturating_sub(f(&s[from])).as_secs_f64()
}

/// From the publish phase's start to the last thing that happened in it
/// (a send, a receipt at the broker or at a sensor): the wall time the CPU
/// figures are divided by, without the quiet wait at the end.
fn active(d: &PassData, out: &OutStats) -> Duration {
    let last = [
        out.last_send,
        d.subscriber.tally.last,
        d.tallies.down.last,
        d.tallies.sleep.last,
        d.down.as_ref().and_then(|p| p.stats.last_send),
    ]
    .into_iter()
    .flatten()
    .max();
    last.map_or(Duration::ZERO, |l| l.saturating_duration_since(d.publish_start))
}

impl PassReport {
    /// The figures of one pass.
    pub fn build(d: &PassData, o: &BenchOptions) -> Self {
        let start = d.publish_start;
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(start));
        let connect_start = d.samples[0].at;
        let after_connect =
            |t: Option<Instant>| t.map(|t| t.saturating_duration_since(connect_start));
        let rs = &d.results;
        let max_of = |f: fn(&ClientResult) -> Option<Instant>| rs.iter().filter_map(f).max();
        let connected = rs.iter().filter(|r| r.connack_at.is_some()).count() as u64;
        let ready = rs.iter().filter(|r| r.ready_at.is_some()).count() as u64;
        let connected_s = after_connect(max_of(|r| r.connack_at));
        let ready_s = after_connect(max_of(|r| r.ready_at));
        let connect = ConnectReport {
            connected,
            failed: rs.iter().filter(|r| r.failure.is_some()).count() as u64,
            retransmissions: rs.iter().map(|r| r.handshake_retries).sum(),
            connected_seconds: secs(connected_s),
            registered_seconds: secs(after_connect(max_of(|r| r.registered_at))),
            ready_seconds: secs(ready_s),
            connect_per_second: per_second(connected, connected_s),
            ready_per_second: per_second(ready, ready_s),
            connack_latency_ms: pct(&d.latencies.connack),
            handshake_latency_ms: pct(&d.latencies.ready),
            sessions_lost: rs.iter().filter(|r| r.session_lost).count() as u64,
            first_failure: rs.iter().find_map(|r| r.failure.clone()),
        };

        let mut out = OutStats::default();
        for r in rs {
            out.merge(&r.out);
        }
        let publish = PublishReport {
            count_per_sensor: o.count,
            sent: out.sent,
            sent_qos: out.sent_qos,
            retransmissions: out.retransmissions,
            acked: out.acked,
            completed_qos2: out.completed,
            rejected: out.rejected,
            given_up: out.given_up,
            unacked: rs.iter().map(|r| r.unacked).sum(),
            send_errors: rs.iter().map(|r| r.send_errors).sum(),
            seconds: secs(since(out.last_send)),
            sent_per_second: per_second(out.sent, since(out.last_send)),
            target_per_second: o.rate,
            ack_latency_ms: pct(&d.latencies.ack),
        };

        let stamped = o.size >= STAMP_LEN;
        let t = &d.subscriber.tally;
        let (lost_up, with_loss) = if stamped {
            let mut lost = 0;
            let mut sensors = 0;
            for (i, r) in rs.iter().enumerate() {
                let got = d.subscriber.unique.get(i).copied().unwrap_or(0);
                let l = r.out.sent.saturating_sub(got);
                lost += l;
                sensors += u64::from(l > 0);
            }
            (lost, Some(sensors))
        } else {
            (out.sent.saturating_sub(t.unique), None)
        };
        let received = ReceivedReport {
            stamped,
            received: t.received,
            unique: t.unique,
            lost: lost_up,
            duplicates: t.duplicates,
            duplicates_qos2: t.duplicates_qos2,
            out_of_order: t.out_of_order,
            foreign: t.foreign,
            sensors_with_loss: with_loss,
            seconds: secs(since(t.last)),
            per_second: per_second(t.unique, since(t.last)),
            latency_ms: pct(&t.latency),
        };

        let down = d.down.as_ref().map(|p| {
            let published: u64 = p.published.iter().sum();
            let expected: u64 =
                p.published.iter().zip(d.down_subscribers.iter()).map(|(n, s)| n * s).sum();
            let t: &Tally = &d.tallies.down;
            DownReport {
                topics: d.roles.down_topics(),
                fanout: d.roles.fanout,
                subscribers: d.down_subscribers.iter().sum(),
                published,
                published_per_second: per_second(published, since(p.stats.last_send)),
                expected,
                delivered: t.unique,
                received: t.received,
                lost: expected.saturating_sub(t.unique),
                duplicates: t.duplicates,
                duplicates_qos2: t.duplicates_qos2,
                out_of_order: t.out_of_order,
                registers: rs.iter().map(|r| r.registers).sum(),
                seconds: secs(since(t.last)),
                delivered_per_second: per_second(t.unique, since(t.last)),
                latency_ms: pct(&t.latency),
            }
        });

        let sleepers = d.roles.sleepers();
        let sleep = (sleepers > 0).then(|| {
            let published: u64 = d.sleep.as_ref().map_or(0, |p| p.published.iter().sum());
            let t = &d.tallies.sleep;
            // Only messages for sleepers that went to sleep can be lost by
            // the gateway; the others are counted as lost too (they never
            // got them).
            SleepReport {
                sleepers,
                asleep: rs.iter().filter(|r| matches!(r.sleeper, Some((_, true)))).count() as u64,
                messages_per_sleeper: o.sleep_messages,
                published,
                delivered: t.unique,
                lost: published.saturating_sub(t.unique),
                duplicates: t.duplicates,
                wakes: rs.iter().map(|r| r.wakes).sum(),
                wakes_without_pingresp: rs.iter().map(|r| r.wakes_without_pingresp).sum(),
                wake_seconds: secs(d.wake_time),
                wake_latency_ms: pct(&d.latencies.wake),
                latency_ms: pct(&t.latency),
            }
        });

        let messages = out.sent
            + down.as_ref().map_or(0, |x| x.received)
            + sleep.as_ref().map_or(0, |x| x.delivered);
        let s = &d.samples;
        let wall = active(d, &out).as_secs_f64();
        let per_msg = |cpu: f64| (messages > 0).then(|| round(cpu * 1e6 / messages as f64, 3));
        let tool_cpu = delta(s, |x| x.tool_cpu, 2, 3);
        let thread_cpu = delta(s, |x| x.sensor_thread_cpu, 2, 3);
        let tool = ToolReport {
            cpu_us_per_msg: per_msg(tool_cpu),
            sensor_thread_cpu_us_per_msg: per_msg(thread_cpu),
            sensor_thread_cores: (wall > 0.0).then(|| round(thread_cpu / wall, 3)),
            connect_cpu_us_per_sensor: (connected > 0)
                .then(|| round(delta(s, |x| x.tool_cpu, 0, 1) * 1e6 / connected as f64, 2)),
        };
        let lost =
            lost_up + down.as_ref().map_or(0, |x| x.lost) + sleep.as_ref().map_or(0, |x| x.lost);
        let rcvbuf = match (s[0].rcvbuf, s[3].rcvbuf) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Self {
            pass: if d.direct { "direct" } else { "gateway" },
            sensors: d.roles.clients,
            publishers: d.roles.awake,
            sleepers,
            messages,
            connect,
            publish,
            received,
            down,
            sleep,
            gateway_process: if d.direct {
                None
            } else {
                proc_report(s, |x| x.gateway, connected, messages, wall)
            },
            broker_process: proc_report(s, |x| x.broker, connected, messages, wall),
            tool,
            udp_rcvbuf_errors: rcvbuf,
            lost,
            cut_short: d.cut_short.is_some(),
        }
    }

    /// Broken promises: lost messages, QoS 2 copies, sensors not
    /// connected, messages never acknowledged.
    pub fn failed(&self) -> bool {
        self.lost > 0
            || self.received.duplicates_qos2 > 0
            || self.down.as_ref().is_some_and(|d| d.duplicates_qos2 > 0)
            || self.connect.failed > 0
            || self.connect.sessions_lost > 0
            || self.publish.unacked > 0
            || self.publish.given_up > 0
    }
}

/// The options as the report echoes them.
#[derive(Debug, Clone, Serialize)]
pub struct OptionsEcho {
    /// Gateway address (UDP).
    pub gateway: String,
    /// Broker address (TCP).
    pub broker: String,
    /// `gateway`, `direct` or `compare`.
    pub mode: &'static str,
    /// `--sensors`.
    pub sensors: u32,
    /// `--count`: messages per publishing sensor.
    pub count_per_sensor: u64,
    /// `--rate`.
    pub rate: Option<f64>,
    /// `--qos` / `--qos-mix` as weights.
    pub qos_mix: String,
    /// `--inflight`.
    pub inflight: u16,
    /// `--persistent`.
    pub persistent: bool,
    /// `--size`.
    pub size: usize,
    /// `--max-time` in seconds.
    pub max_time_s: f64,
    /// `--sleepers` (percent).
    pub sleepers_percent: f64,
    /// `--sleep-messages`.
    pub sleep_messages: u64,
    /// `--down-count`.
    pub down_count: u64,
    /// `--down-rate`.
    pub down_rate: Option<f64>,
    /// `--down-qos`.
    pub down_qos: u8,
    /// `--fanout`.
    pub fanout: u32,
    /// The first source address of the sensors.
    pub source: String,
    /// The source addresses the sensors were spread over.
    pub source_addresses: u32,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The report's format; bumped when a key changes meaning.
    pub format: u32,
    /// The options.
    pub options: OptionsEcho,
    /// Things a reader should know (a payload too short for the stamp...).
    pub warnings: Vec<String>,
    /// The gateway pass.
    pub gateway: Option<PassReport>,
    /// The direct pass.
    pub direct: Option<PassReport>,
    /// Every number of the gateway pass divided by the direct pass's.
    pub ratio: Option<Value>,
    /// A pass was cut short.
    pub cut_short: bool,
    /// Why.
    pub cut_short_reason: Option<&'static str>,
    /// Messages lost over all passes.
    pub lost: u64,
    /// The process's exit code.
    pub exit_code: i32,
}

fn ratio(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let m: serde_json::Map<String, Value> =
                x.iter().filter_map(|(k, va)| Some((k.clone(), ratio(va, y.get(k)?)?))).collect();
            (!m.is_empty()).then_some(Value::Object(m))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => Some(Value::Array(
            x.iter().zip(y).map(|(a, b)| ratio(a, b).unwrap_or(Value::Null)).collect(),
        )),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64()?, y.as_f64()?);
            Some(if y != 0.0 { serde_json::json!(round(x / y, 4)) } else { Value::Null })
        }
        _ => None,
    }
}

impl BenchReport {
    /// The report of the passes that ran.
    pub fn new(
        o: &BenchOptions,
        t: &Targets,
        warnings: Vec<String>,
        gateway: Option<PassReport>,
        direct: Option<PassReport>,
        cut_short_reason: Option<&'static str>,
    ) -> Self {
        let ratio = match (&gateway, &direct) {
            (Some(g), Some(d)) => {
                let (g, d) = (serde_json::to_value(g).ok(), serde_json::to_value(d).ok());
                g.zip(d).and_then(|(g, d)| ratio(&g, &d))
            }
            _ => None,
        };
        let passes = || gateway.iter().chain(direct.iter());
        let lost = passes().map(|p| p.lost).sum();
        let cut_short = cut_short_reason.is_some() || passes().any(|p| p.cut_short);
        let exit_code = if cut_short {
            EXIT_CUT_SHORT
        } else if passes().any(PassReport::failed) {
            EXIT_LOSS
        } else {
            0
        };
        Self {
            format: 1,
            options: OptionsEcho {
                gateway: t.gateway.to_string(),
                broker: t.broker.to_string(),
                mode: match o.mode {
                    Mode::Gateway => "gateway",
                    Mode::Direct => "direct",
                    Mode::Compare => "compare",
                },
                sensors: o.sensors,
                count_per_sensor: o.count,
                rate: o.rate,
                qos_mix: o.mix.to_string(),
                inflight: o.inflight,
                persistent: o.persistent,
                size: o.size,
                max_time_s: o.max_time.as_secs_f64(),
                sleepers_percent: o.sleepers,
                sleep_messages: o.sleep_messages,
                down_count: o.down_count,
                down_rate: o.down_rate,
                down_qos: o.down_qos,
                fanout: o.fanout,
                source: t.sources.first.to_string(),
                source_addresses: t.sources.count,
            },
            warnings,
            gateway,
            direct,
            ratio,
            cut_short,
            cut_short_reason: cut_short_reason.or(cut_short.then_some("max-time")),
            lost,
            exit_code,
        }
    }

    /// The one-line JSON report.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The summary for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let o = &self.options;
        let rate = o.rate.map_or("as fast as possible".to_owned(), |r| format!("{r} msg/s"));
        let _ = writeln!(
            s,
            "mqttsn bench: {} sensors, QoS {}, {} octets, {} messages per sensor, {rate}",
            o.sensors, o.qos_mix, o.size, o.count_per_sensor
        );
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        let r = self.ratio.as_ref();
        for p in [&self.direct, &self.gateway].into_iter().flatten() {
            let target = if p.pass == "direct" { &o.broker } else { &o.gateway };
            let _ = writeln!(
                s,
                "{} pass ({target}){}",
                p.pass,
                if p.cut_short { ": CUT SHORT" } else { "" }
            );
            human_pass(&mut s, p, if p.pass == "gateway" { r } else { None });
        }
        if self.cut_short {
            let _ = writeln!(
                s,
                "cut short ({}): the figures cover only part of the run",
                self.cut_short_reason.unwrap_or("max-time")
            );
        }
        if self.lost > 0 {
            let _ = writeln!(s, "{} messages lost", self.lost);
        }
        s
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.3}") })
}

fn lat(p: &Option<Percentiles>) -> String {
    p.map_or("-".into(), |p| {
        format!("p50 {:.3} p90 {:.3} p99 {:.3} max {:.3} ms", p.p50, p.p90, p.p99, p.max)
    })
}

fn at<'a>(r: Option<&'a Value>, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(r?, |v, k| v.get(k))
}

/// " (x0.52 of direct)" for the ratio at `path`, when there is one.
fn rat(r: Option<&Value>, path: &[&str]) -> String {
    at(r, path).and_then(Value::as_f64).map_or(String::new(), |x| format!(" (x{x:.2} of direct)"))
}

fn lat_rat(r: Option<&Value>, path: &[&str]) -> String {
    let Some(v) = at(r, path) else { return String::new() };
    let f = |k: &str| v.get(k).and_then(Value::as_f64).map_or("-".into(), |x| format!("{x:.2}"));
    format!(" (x{} p50, x{} p99 of direct)", f("p50"), f("p99"))
}

fn human_pass(s: &mut String, p: &PassReport, r: Option<&Value>) {
    let c = &p.connect;
    let _ = writeln!(
        s,
        "  connect   {} of {} connected in {} s ({}/s){}, registered {} s, ready {} s{}; {} failed, {} retransmissions",
        c.connected,
        p.sensors,
        num(c.connected_seconds),
        num(c.connect_per_second),
        rat(r, &["connect", "connect_per_second"]),
        num(c.registered_seconds),
        num(c.ready_seconds),
        rat(r, &["connect", "ready_seconds"]),
        c.failed,
        c.retransmissions,
    );
    let _ = writeln!(s, "            CONNACK {}", lat(&c.connack_latency_ms));
    if let Some(f) = &c.first_failure {
        let _ = writeln!(s, "            first failure: {f}");
    }
    let pb = &p.publish;
    if pb.count_per_sensor > 0 || pb.sent > 0 {
        let _ = writeln!(
            s,
            "  publish   {} sent ({}/{}/{} at QoS 0/1/2) in {} s: {} msg/s{}; {} acked, {} unacked, {} retransmissions",
            pb.sent,
            pb.sent_qos[0],
            pb.sent_qos[1],
            pb.sent_qos[2],
            num(pb.seconds),
            num(pb.sent_per_second),
            rat(r, &["publish", "sent_per_second"]),
            pb.acked,
            pb.unacked,
            pb.retransmissions,
        );
        if pb.ack_latency_ms.is_some() {
            let _ = writeln!(
                s,
                "            ack {}{}",
                lat(&pb.ack_latency_ms),
                lat_rat(r, &["publish", "ack_latency_ms"])
            );
        }
        let rv = &p.received;
        let _ = writeln!(
            s,
            "  received  {} of {} at the broker: {} msg/s{}; lost {} ({} sensors), duplicates {}, out of order {}",
            rv.unique,
            pb.sent,
            num(rv.per_second),
            rat(r, &["received", "per_second"]),
            rv.lost,
            rv.sensors_with_loss.map_or("-".into(), |n| n.to_string()),
            rv.duplicates,
            rv.out_of_order,
        );
        if rv.latency_ms.is_some() {
            let _ = writeln!(
                s,
                "            end to end {}{}",
                lat(&rv.latency_ms),
                lat_rat(r, &["received", "latency_ms"])
            );
        }
    }
    if let Some(d) = &p.down {
        let _ = writeln!(
            s,
            "  down      {} published to {} topics x {} sensors: {} of {} delivered, {}/s{}; lost {}, duplicates {}",
            d.published,
            d.topics,
            d.fanout,
            d.delivered,
            d.expected,
            num(d.delivered_per_second),
            rat(r, &["down", "delivered_per_second"]),
            d.lost,
            d.duplicates,
        );
        let _ = writeln!(
            s,
            "            latency {}{}",
            lat(&d.latency_ms),
            lat_rat(r, &["down", "latency_ms"])
        );
    }
    if let Some(sl) = &p.sleep {
        let _ = writeln!(
            s,
            "  sleep     {} of {} asleep, {} published, {} delivered, {} lost, {} wakes \
             ({} without PINGRESP) in {:.2} s",
            sl.asleep,
            sl.sleepers,
            sl.published,
            sl.delivered,
            sl.lost,
            sl.wakes,
            sl.wakes_without_pingresp,
            sl.wake_seconds.unwrap_or(0.0)
        );
        let _ = writeln!(s, "            wake {}", lat(&sl.wake_latency_ms));
    }
    for (name, pr) in [("gateway", &p.gateway_process), ("broker", &p.broker_process)] {
        if let Some(g) = pr {
            let _ = writeln!(
                s,
                "  {name:<9} CPU {} us/msg ({} cores){}, {} us per connect; memory {} octets per sensor ({} -> {} KiB)",
                num(g.cpu_us_per_msg),
                num(g.cpu_cores),
                rat(r, &[&format!("{name}_process"), "cpu_us_per_msg"]),
                num(g.connect_cpu_us_per_sensor),
                num(g.rss_per_sensor_bytes),
                g.rss_before_kib,
                g.rss_connected_kib,
            );
        }
    }
    let t = &p.tool;
    let _ = writeln!(
        s,
        "  tool      CPU {} us/msg, sensor thread {} us/msg ({} of a core), {} us per connect",
        num(t.cpu_us_per_msg),
        num(t.sensor_thread_cpu_us_per_msg),
        num(t.sensor_thread_cores),
        num(t.connect_cpu_us_per_sensor),
    );
    let _ = writeln!(
        s,
        "  kernel    UDP receive-buffer drops: {}",
        p.udp_rcvbuf_errors.map_or("unknown".into(), |n| n.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_shape() {
        let a = serde_json::json!({"x": 10, "y": {"z": 3.0, "s": "a"}, "n": null, "q": [2, 4]});
        let b = serde_json::json!({"x": 5, "y": {"z": 0}, "n": 1, "q": [1, 2]});
        let r = ratio(&a, &b);
        assert_eq!(r, Some(serde_json::json!({"x": 2.0, "y": {"z": null}, "q": [2.0, 2.0]})));
    }
}
