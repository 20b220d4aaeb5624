//! `mqttsn bench`: simulated sensors publishing through a gateway, bounded
//! in count and time; reports throughput and acknowledgement latency.

use std::time::{Duration, Instant};

use mqttsn_client::{QoS, Settings, Topic};

use crate::pubsub::{qos, Failure, ToolClient};

/// Options of `mqttsn bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Gateway host.
    pub host: String,
    /// Gateway port.
    pub port: u16,
    /// Simulated sensors (one thread each).
    pub sensors: u32,
    /// Messages per sensor.
    pub messages: u32,
    /// QoS 0, 1 or 2.
    pub qos: i8,
    /// Payload size in octets.
    pub size: usize,
    /// Topic prefix; sensor N publishes to `<prefix>/N`.
    pub prefix: String,
    /// Stop after this long, whatever is left.
    pub max_time: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Messages published (acknowledged at QoS 1 and 2).
    pub messages: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Acknowledgement latency percentiles (QoS 1 and 2): p50, p99, max.
    pub latency: Option<(Duration, Duration, Duration)>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} messages in {:.2} s: {rate:.0} msg/s",
            self.messages,
            self.elapsed.as_secs_f64()
        )?;
        if let Some((p50, p99, max)) = self.latency {
            write!(f, "; acknowledgement latency p50 {p50:?}, p99 {p99:?}, max {max:?}")?;
        }
        Ok(())
    }
}

/// Runs the benchmark.
pub fn run(o: &BenchOptions) -> Result<BenchReport, Failure> {
    let level = qos(o.qos)?;
    if level == QoS::NoSession {
        return Err(Failure::Usage("bench: QoS must be 0, 1 or 2".into()));
    }
    if o.sensors == 0 || o.sensors > 10_000 {
        return Err(Failure::Usage("bench: --sensors must be 1 to 10000".into()));
    }
    let payload = vec![b'x'; o.size];
    let started = Instant::now();
    let deadline = started + o.max_time;
    let threads: Vec<_> = (0..o.sensors)
        .map(|i| {
            let (o, payload) = (o.clone(), payload.clone());
            std::thread::spawn(move || -> Result<(u64, Vec<Duration>), Failure> {
                let id = format!("mqttsn-bench-{}-{i}", std::process::id());
                let wait = Duration::from_secs(10);
                let settings = Settings { retry_ms: 2000, max_retries: 3, ..Settings::default() };
                let mut c = ToolClient::new((o.host.as_str(), o.port), &id, settings)
                    .map_err(|e| Failure::Unreachable(format!("sensor {i}: {e}")))?;
                let fail = |e| Failure::Unreachable(format!("sensor {i}: {e}"));
                c.connect(true, 600, None, wait).map_err(fail)?;
                let topic = format!("{}/{i}", o.prefix);
                let tid = c.register(&topic, wait).map_err(fail)?;
                let mut latencies = Vec::new();
                let mut sent = 0;
                for _ in 0..o.messages {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    c.publish(Topic::Id(tid), &payload, level, false, wait).map_err(fail)?;
                    if level != QoS::AtMostOnce {
                        latencies.push(t.elapsed());
                    }
                    sent += 1;
                }
                let _ = c.disconnect(wait);
                Ok((sent, latencies))
            })
        })
        .collect();
    let mut messages = 0;
    let mut all = Vec::new();
    for t in threads {
        let (n, l) = t.join().map_err(|_| Failure::Io("a sensor thread failed".into()))??;
        messages += n;
        all.extend(l);
    }
    let elapsed = started.elapsed();
    all.sort();
    let latency = (!all.is_empty()).then(|| {
        let at = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        (at(0.5), at(0.99), all[all.len() - 1])
    });
    Ok(BenchReport { messages, elapsed, latency })
}
