//! `mqttsn bench`: a measurement tool for MQTT-SN gateways.
//!
//! N simulated sensors, each with its own UDP socket, connect and
//! register through the gateway (many handshakes in flight), publish at a
//! target rate with a QoS mix, sleep and wake, and receive what a
//! publisher on the broker sends them; a subscriber on the broker counts
//! every message (loss, duplicates, order, latency from a stamp in the
//! payload). The direct mode runs the same load with MQTT clients straight
//! to the broker, the ceiling of the run; `--compare-direct` runs both and
//! gives every figure as a ratio.
//!
//! The sensors run as tasks on the calling thread (a current-thread tokio
//! runtime with a `LocalSet`); the tool's clients on the broker run on a
//! second thread, so counting never competes with sending for one core.
//!
//! | module | what it holds |
//! |---|---|
//! | `options` | the options, their checks, the loopback rule |
//! | `shared` | phases, roles, topic names, live counters, what the clients of a pass share |
//! | `sensor` | one MQTT-SN sensor over UDP (on the codec) |
//! | `direct` | one MQTT client in a sensor's place (direct mode) |
//! | `outbox`, `inbox` | publishing (schedule, window, acknowledgements) and receiving, shared by both |
//! | `schedule` | pacing and the QoS mix |
//! | `gso` | batched UDP sends (segmentation offload) |
//! | `payload` | the stamp in every payload |
//! | `tracker`, `histogram` | counting arrivals; latency percentiles |
//! | `mqtt` | an MQTT connection on tokio over the `mqttsn-mqtt` codec |
//! | `broker` | the counting subscriber and the publishers on the broker |
//! | `procstat` | CPU, memory, UDP drop counters, the open-file limit |
//! | `report`, `progress` | the JSON report, the summary, the progress line |

mod broker;
mod direct;
mod gso;
mod histogram;
mod inbox;
mod mqtt;
mod options;
mod outbox;
mod payload;
mod procstat;
mod progress;
mod report;
mod schedule;
mod sensor;
mod shared;
mod tracker;

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

pub use options::{BenchOptions, Mode, Targets};
pub use payload::STAMP_LEN;
pub use report::{BenchReport, PassReport, EXIT_CUT_SHORT, EXIT_LOSS};
pub use schedule::QosMix;

use broker::{Finish, PublisherPlan, PublisherResult, SubscriberPlan};
use mqtt::MqttError;
use payload::{Epoch, Kind, Run};
use report::{PassData, Sample};
use shared::{Live, PassCtx, Phase, Roles, Topics};

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad options (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A target off this machine without `--allow-remote` (exit 2).
    #[error("{0}")]
    Remote(String),
    /// Too few file descriptors for the sensors (exit 2).
    #[error("{0}")]
    Limit(String),
    /// The broker could not be reached or refused (exit 1).
    #[error("broker: {0}")]
    Broker(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Io(String),
}

impl BenchError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::Remote(_) | Self::Limit(_) => 2,
            Self::Broker(_) | Self::Io(_) => 1,
        }
    }
}

/// Runs the passes the options ask for and reports. Must be called inside
/// a current-thread tokio runtime; the sensors run on the calling thread.
pub async fn run(o: BenchOptions) -> Result<BenchReport, BenchError> {
    tokio::task::LocalSet::new().run_until(run_local(o)).await
}

async fn run_local(o: BenchOptions) -> Result<BenchReport, BenchError> {
    let targets = o.check()?;
    let mut warnings = Vec::new();
    if o.size < STAMP_LEN {
        warnings.push(format!(
            "--size {}: a payload shorter than {STAMP_LEN} octets has no room for the stamp \
             (sensor, sequence number, send time): messages are only counted; loss per \
             sensor, duplicates, order and latency are not measured",
            o.size
        ));
    }
    let needed = u64::from(o.sensors) + 64;
    let limit = procstat::raise_open_files(needed);
    if limit.soft < needed {
        return Err(BenchError::Limit(format!(
            "{} sensors need about {needed} open files (one socket each), but this process \
             may open only {} (hard limit {}, which only a privileged process may raise): \
             lower --sensors, raise the hard limit (ulimit -Hn, LimitNOFILE), or run \
             several processes, each with its own --source",
            o.sensors,
            limit.soft,
            limit.hard.map_or("unlimited".into(), |h| h.to_string()),
        )));
    }
    for (flag, pid) in [("--gateway-pid", o.gateway_pid), ("--broker-pid", o.broker_pid)] {
        if let Some(pid) = pid {
            if procstat::sample(pid).is_none() {
                return Err(BenchError::Usage(format!(
                    "{flag} {pid}: no such process, or /proc/{pid} is not readable"
                )));
            }
        }
    }
    let broker_thread = BrokerThread::start()?;
    let o = Arc::new(o);
    let (intr_tx, intr) = watch::channel(false);
    let ctrl_c = tokio::task::spawn_local(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = intr_tx.send(true);
        }
    });
    let mut reason = None;
    let mut direct = None;
    let mut gateway = None;
    let result = async {
        if matches!(o.mode, Mode::Direct | Mode::Compare) {
            let d = run_pass(true, &o, &targets, &broker_thread.handle, &intr).await?;
            reason = reason.or(d.cut_short);
            direct = Some(PassReport::build(&d, &o));
        }
        if matches!(o.mode, Mode::Gateway | Mode::Compare) && !*intr.borrow() {
            let d = run_pass(false, &o, &targets, &broker_thread.handle, &intr).await?;
            reason = reason.or(d.cut_short);
            gateway = Some(PassReport::build(&d, &o));
        }
        Ok::<(), BenchError>(())
    }
    .await;
    ctrl_c.abort();
    broker_thread.stop();
    result?;
    Ok(BenchReport::new(&o, &targets, warnings, gateway, direct, reason))
}

/// The thread the tool's broker-side clients run on.
struct BrokerThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokerThread {
    fn start() -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::Io(format!("runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-broker".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| BenchError::Io(format!("thread: {e}")))?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the orchestrator looks at the live counters (phase times
/// come from each client's own timestamps, not from this).
const POLL: Duration = Duration::from_millis(5);

/// The pass's time bound and Ctrl-C.
struct Clock {
    deadline: Instant,
    intr: watch::Receiver<bool>,
    cut: Option<&'static str>,
}

impl Clock {
    /// Waits until `done` holds; `false` when the pass is (or was already)
    /// cut short.
    async fn wait(&mut self, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            if self.cut.is_some() {
                return false;
            }
            if *self.intr.borrow() {
                self.cut = Some("interrupted");
            } else if Instant::now() >= self.deadline {
                self.cut = Some("max-time");
            } else {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// The deadline, or now once cut short.
    fn until(&self) -> Instant {
        if self.cut.is_some() {
            Instant::now()
        } else {
            self.deadline
        }
    }
}

fn fresh_tag() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() & 0xffff) as u16
}

fn sample(o: &BenchOptions) -> Sample {
    Sample {
        at: Instant::now(),
        tool_cpu: procstat::process_cpu(),
        sensor_thread_cpu: procstat::thread_cpu(),
        gateway: o.gateway_pid.and_then(procstat::sample),
        broker: o.broker_pid.and_then(procstat::sample),
        rcvbuf: procstat::udp_rcvbuf_errors(),
    }
}

/// A publisher on the broker thread, connected and waiting for its start.
struct Publisher {
    task: JoinHandle<Result<PublisherResult, MqttError>>,
    go: Option<oneshot::Sender<Instant>>,
}

impl Publisher {
    async fn start(
        rt: &tokio::runtime::Handle,
        plan: PublisherPlan,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, BenchError> {
        let (ready_tx, ready) = oneshot::channel();
        let (go, go_rx) = oneshot::channel();
        let task = rt.spawn(broker::publisher(plan, ready_tx, go_rx, stop));
        match ready.await {
            Ok(Ok(())) => Ok(Self { task, go: Some(go) }),
            Ok(Err(e)) => Err(BenchError::Broker(e)),
            Err(_) => Err(BenchError::Broker("the publisher ended".into())),
        }
    }

    fn go(&mut self, at: Instant) {
        if let Some(g) = self.go.take() {
            let _ = g.send(at);
        }
    }

    fn finished(&self) -> bool {
        self.task.is_finished()
    }

    async fn result(self, topics: usize) -> PublisherResult {
        drop(self.go);
        match tokio::time::timeout(Duration::from_secs(3), self.task).await {
            Ok(Ok(Ok(r))) => r,
            _ => PublisherResult { published: vec![0; topics], ..PublisherResult::default() },
        }
    }
}

async fn run_pass(
    direct: bool,
    o: &Arc<BenchOptions>,
    t: &Targets,
    rt: &tokio::runtime::Handle,
    intr: &watch::Receiver<bool>,
) -> Result<PassData, BenchError> {
    let run = Run { tag: fresh_tag(), epoch: Epoch::now() };
    let topics = Topics::new(&o.prefix, run.tag);
    let roles = Roles::new(o);
    let live = Arc::new(Live::default());
    let (phase_tx, phase) = watch::channel(Phase::Setup);
    let mut clock = Clock { deadline: Instant::now() + o.max_time, intr: intr.clone(), cut: None };
    let ctx = Rc::new(PassCtx {
        opts: o.clone(),
        run,
        topics: topics.clone(),
        roles,
        live: live.clone(),
        phase,
        window: Arc::new(Semaphore::new(o.connect_window as usize)),
        publish_start: Cell::new(None),
        wake_until: Cell::new(None),
        sleep_expected: RefCell::new(vec![0; roles.sleepers() as usize]),
        latencies: RefCell::default(),
        tallies: RefCell::default(),
        down_subscribers: RefCell::new(vec![0; roles.down_topics() as usize]),
        results: RefCell::new(vec![Default::default(); roles.clients as usize]),
        payload: RefCell::new({
            let mut p = vec![0u8; o.size];
            p.fill(b'.');
            p
        }),
        tx: RefCell::new(vec![0u8; o.size + 64]),
        rx: RefCell::new(vec![0u8; 65_536]),
        batch: RefCell::new(Vec::with_capacity(gso::MAX_BATCH)),
        gso: Cell::new(true),
    });

    // The broker side first: nothing may be published before the
    // subscriber is in place.
    let (ready_tx, ready) = oneshot::channel();
    let (finish, finish_rx) = watch::channel(None);
    let sub_plan = SubscriberPlan {
        broker: t.broker,
        client_id: topics.own_id("sub"),
        filter: topics.up_filter(),
        run,
        sources: roles.clients,
        live: live.clone(),
    };
    let subscriber = rt.spawn(broker::subscriber(sub_plan, ready_tx, finish_rx));
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(BenchError::Broker(format!("{}: {e}", t.broker))),
        Err(_) => return Err(BenchError::Broker("the subscriber ended".into())),
    }
    let (stop_pubs, stop_rx) = watch::channel(false);
    let publisher_plan = |name: &str,
                          topics: Vec<String>,
                          per_topic: u64,
                          rate: Option<f64>,
                          qos: u8,
                          kind: Kind| {
        PublisherPlan {
            broker: t.broker,
            client_id: ctx.topics.own_id(name),
            topics,
            per_topic,
            rate,
            qos,
            kind,
            size: o.size,
            run,
            live: live.clone(),
        }
    };
    let mut down = None;
    if roles.down_topics() > 0 {
        let names = (0..roles.down_topics()).map(|i| topics.down(i)).collect();
        let plan = publisher_plan("down", names, o.down_count, o.down_rate, o.down_qos, Kind::Down);
        down = Some(Publisher::start(rt, plan, stop_rx.clone()).await?);
    }
    let mut feeder = None;
    if roles.sleepers() > 0 && o.sleep_messages > 0 {
        let names = (0..roles.sleepers()).map(|j| topics.sleep(j)).collect();
        let plan = publisher_plan("sleep", names, o.sleep_messages, None, o.sleep_qos, Kind::Sleep);
        feeder = Some(Publisher::start(rt, plan, stop_rx.clone()).await?);
    }

    // The clients: sockets opened before the clock starts.
    let mut tasks = Vec::with_capacity(roles.clients as usize);
    for i in 0..roles.clients {
        if direct {
            let c = direct::DirectClient::new(i, &ctx, t.broker);
            tasks.push(tokio::task::spawn_local(c.run()));
        } else {
            let source = t.sources.of(i);
            let s = sensor::Sensor::new(i, &ctx, t.gateway, source).map_err(|e| {
                BenchError::Io(format!(
                    "sensor {i}: cannot open its UDP socket on {source}: {e}{}",
                    if e.kind() == std::io::ErrorKind::AddrInUse {
                        " (no ephemeral port left there: more --source-addresses)"
                    } else {
                        ""
                    }
                ))
            })?;
            tasks.push(tokio::task::spawn_local(s.run()));
        }
    }
    let progress = o.progress.then(|| {
        let name = if direct { "direct" } else { "gateway" };
        tokio::task::spawn_local(progress::every_second(name, live.clone(), Instant::now()))
    });

    // Connect.
    let s0 = sample(o);
    let _ = phase_tx.send(Phase::Connect);
    let n = u64::from(roles.clients);
    clock.wait(|| Live::get(&live.ready) + Live::get(&live.failed) >= n).await;
    let s1 = sample(o);

    // Sleep.
    if roles.sleepers() > 0 && clock.cut.is_none() {
        let _ = phase_tx.send(Phase::Sleep);
        clock
            .wait(|| {
                Live::get(&live.asleep) + Live::get(&live.sleep_failed)
                    >= Live::get(&live.sleepers_ready)
            })
            .await;
    }

    // Publish (and the broker publishes to subscribers and sleepers).
    let s2 = sample(o);
    let start = Instant::now();
    ctx.publish_start.set(Some(start));
    if clock.cut.is_none() {
        let _ = phase_tx.send(Phase::Publish);
        if let Some(p) = &mut down {
            p.go(start);
        }
        if let Some(p) = &mut feeder {
            p.go(start);
        }
        let awake_ready = || Live::get(&live.ready) - Live::get(&live.sleepers_ready);
        clock
            .wait(|| {
                Live::get(&live.publishers_done) >= awake_ready()
                    && down.as_ref().is_none_or(Publisher::finished)
                    && feeder.as_ref().is_none_or(Publisher::finished)
            })
            .await;
    }
    let _ = stop_pubs.send(true);
    let _ = finish.send(Some(Finish {
        expected: Live::get(&live.sent),
        quiet: o.drain,
        deadline: clock.until(),
    }));
    let down = match down {
        Some(p) => Some(p.result(roles.down_topics() as usize).await),
        None => None,
    };
    let feeder = match feeder {
        Some(p) => Some(p.result(roles.sleepers() as usize).await),
        None => None,
    };

    // Broker to sensor: wait for what is due, or quiet.
    if let Some(d) = &down {
        let expected: u64 =
            d.published.iter().zip(ctx.down_subscribers.borrow().iter()).map(|(p, s)| p * s).sum();
        let mut last = (Live::get(&live.down_received), Instant::now());
        clock
            .wait(|| {
                let got = Live::get(&live.down_received);
                if got != last.0 {
                    last = (got, Instant::now());
                }
                got >= expected || last.1.elapsed() >= o.drain
            })
            .await;
    }

    // Wake the sleepers.
    if let Some(f) = &feeder {
        ctx.sleep_expected.borrow_mut().clone_from(&f.published);
    }
    let mut wake_time = None;
    if roles.sleepers() > 0 && clock.cut.is_none() {
        let wake_start = Instant::now();
        let until = (Instant::now() + o.drain.max(Duration::from_secs(1)) * 3).min(clock.deadline);
        ctx.wake_until.set(Some(until));
        let _ = phase_tx.send(Phase::Wake);
        clock.wait(|| Live::get(&live.sleepers_done) >= Live::get(&live.asleep)).await;
        wake_time = Some(wake_start.elapsed());
    }

    let subscriber = match subscriber.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(BenchError::Broker(format!("the counting subscriber: {e}"))),
        Err(e) => return Err(BenchError::Io(format!("the counting subscriber: {e}"))),
    };
    let s3 = sample(o);

    // Stop: clients leave (bounded), results are in.
    let _ = phase_tx.send(Phase::Stop);
    if let Some(p) = progress {
        p.abort();
    }
    let grace = if clock.cut == Some("interrupted") { 1 } else { 3 };
    let cleanup = tokio::time::Instant::now() + Duration::from_secs(grace);
    for mut task in tasks {
        if tokio::time::timeout_at(cleanup, &mut task).await.is_err() {
            // Still leaving: its result is already stored.
            task.abort();
        }
    }
    let results = ctx.results.take();
    let latencies = ctx.latencies.take();
    let tallies = ctx.tallies.take();
    let down_subscribers = ctx.down_subscribers.take();
    Ok(PassData {
        direct,
        roles,
        samples: [s0, s1, s2, s3],
        publish_start: start,
        results,
        latencies,
        tallies,
        subscriber,
        down,
        down_subscribers,
        sleep: feeder,
        wake_time,
        cut_short: clock.cut,
    })
}
