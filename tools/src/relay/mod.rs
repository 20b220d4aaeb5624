//! `mqttsn relay`: a UDP relay between sensors and a gateway that impairs
//! the traffic on purpose — loss, duplication, reordering, delay and
//! jitter, each direction on its own — for testing sensors and gateways
//! as if over a poor radio link, reproducibly (`--seed`).
//!
//! | module | what it holds |
//! |---|---|
//! | `peers` | the relay's sockets: the sensors' side and one upstream socket per sensor (shared with `mqttsn dump --relay-to`) |
//! | `impairment` | what happens to the datagrams of one direction, sans-IO, under an explicit `now` |
//!
//! This module is the thin driver: datagrams from [`peers::Peers`] into
//! one [`impairment::Impairment`] per direction, what is due back out,
//! one timer for the earliest deadline.

pub mod impairment;
pub mod peers;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use impairment::{Impairment, Partition, Profile, Stats};
use peers::{Arrival, Forward, PeerLimits, Peers};

/// Options of `mqttsn relay`.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where the sensors send.
    pub listen: SocketAddr,
    /// The gateway.
    pub gateway: SocketAddr,
    /// Sensor to gateway.
    pub up: Profile,
    /// Gateway to sensor.
    pub down: Profile,
    /// The seed of the decisions (the down direction's generator is seeded
    /// from it too).
    pub seed: u64,
    /// Stop receiving after this many datagrams (both directions); what
    /// is still delayed or held then goes out on time before the end.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Scheduled outages, both directions, from the start.
    pub partitions: Vec<Partition>,
    /// How many sensors, for how long.
    pub limits: PeerLimits,
}

/// The down direction's seed: another stream of the same generator.
fn down_seed(seed: u64) -> u64 {
    seed ^ 0xd1b5_4a32_d192_ed03
}

/// What one direction did, with what the relay itself could not send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionSummary {
    /// The impairment's counters.
    pub stats: Stats,
    /// Still delayed or held back at the end (not sent).
    pub pending: u64,
    /// Not sent by the relay: too many sensors, or a socket error.
    pub refused: u64,
}

/// What the relay did, printed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The seed used (give it to `--seed` to repeat the decisions).
    pub seed: u64,
    /// Sensor to gateway.
    pub up: DirectionSummary,
    /// Gateway to sensor.
    pub down: DirectionSummary,
}

impl fmt::Display for Summary {
    /// Three lines of `key=value`, for people and scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed={}", self.seed)?;
        for (name, d) in [("up", &self.up), ("down", &self.down)] {
            let s = &d.stats;
            writeln!(
                f,
                "{name} received={} forwarded={} dropped={} duplicated={} reordered={} partitioned={} overflow={} pending={} refused={}",
                s.received, s.forwarded, s.dropped, s.duplicated, s.reordered, s.partitioned,
                s.overflow, d.pending, d.refused
            )?;
        }
        Ok(())
    }
}

/// Runs the relay until `--count`, `--duration` or `stop` completes.
/// `bound` receives the address actually listened on.
pub async fn run(
    opts: RelayOptions,
    bound: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()>,
) -> std::io::Result<Summary> {
    let mut peers = Peers::bind(opts.listen, opts.gateway, opts.limits).await?;
    bound(peers.local_addr()?);
    let start = Instant::now();
    let end = opts.duration.map(|d| start + d);
    let mut up: Impairment<(SocketAddr, Vec<u8>)> =
        Impairment::new(opts.up, opts.seed).with_partitions(start, opts.partitions.clone());
    let mut down: Impairment<(SocketAddr, Vec<u8>)> =
        Impairment::new(opts.down, down_seed(opts.seed))
            .with_partitions(start, opts.partitions.clone());
    let (mut up_refused, mut down_refused) = (0u64, 0u64);
    let mut received = 0u64;
    let mut receiving = opts.count != Some(0);
    tokio::pin!(stop);
    loop {
        let next = [up.deadline(), down.deadline(), end].into_iter().flatten().min();
        // Counted out and nothing left to send: done.
        if !receiving && up.pending() + down.pending() == 0 {
            break;
        }
        let timer = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            arrival = peers.recv(), if receiving => {
                let now = Instant::now();
                match arrival? {
                    Arrival::FromSensor(sensor, d) => up.handle(now, (sensor, d)),
                    Arrival::FromGateway(sensor, d) => down.handle(now, (sensor, d)),
                }
                received += 1;
                if opts.count.is_some_and(|c| received >= c) {
                    receiving = false;
                }
            }
            () = timer => {}
            () = &mut stop => break,
        }
        let now = Instant::now();
        while let Some((sensor, d)) = up.poll(now) {
            if peers.to_gateway(sensor, &d).await == Forward::Refused {
                up_refused += 1;
            }
        }
        while let Some((sensor, d)) = down.poll(now) {
            if !peers.to_sensor(sensor, &d).await {
                down_refused += 1;
            }
        }
        if end.is_some_and(|e| now >= e) {
            break;
        }
    }
    let side = |i: &Impairment<(SocketAddr, Vec<u8>)>, refused| DirectionSummary {
        stats: i.stats(),
        pending: i.pending() as u64,
        refused,
    };
    Ok(Summary { seed: opts.seed, up: side(&up, up_refused), down: side(&down, down_refused) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    fn opts(gateway: SocketAddr) -> RelayOptions {
        RelayOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            gateway,
            up: Profile::default(),
            down: Profile::default(),
            seed: 1,
            count: None,
            duration: None,
            partitions: Vec::new(),
            limits: PeerLimits { max_peers: 16, idle_timeout: Duration::from_secs(60) },
        }
    }

    #[test]
    fn the_summary_is_key_value_lines() {
        let mut s = Summary { seed: 7, up: DirectionSummary::default(), down: Default::default() };
        s.up.stats.received = 3;
        s.down.refused = 1;
        assert_eq!(
            s.to_string(),
            "seed=7\n\
             up received=3 forwarded=0 dropped=0 duplicated=0 reordered=0 partitioned=0 overflow=0 pending=0 refused=0\n\
             down received=0 forwarded=0 dropped=0 duplicated=0 reordered=0 partitioned=0 overflow=0 pending=0 refused=1\n"
        );
        assert_ne!(down_seed(7), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn count_ends_the_run_after_the_delayed_datagrams_went_out() {
        let gateway = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut o = opts(gateway.local_addr().unwrap());
        o.count = Some(3);
        o.up.delay = Duration::from_millis(30);
        o.up.duplicate = "100%".parse().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let relay = tokio::spawn(run(
            o,
            move |a| {
                let _ = tx.send(a);
            },
            std::future::pending(),
        ));
        let addr = rx.await.unwrap();
        let sensor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for m in [&b"a"[..], b"b", b"c"] {
            sensor.send_to(m, addr).await.unwrap();
        }
        let summary = tokio::time::timeout(Duration::from_secs(5), relay).await.unwrap();
        let summary = summary.unwrap().unwrap();
        assert_eq!(summary.up.stats.received, 3);
        assert_eq!(summary.up.stats.forwarded, 6);
        assert_eq!(summary.up.pending, 0);
        let mut b = [0u8; 8];
        let mut got = Vec::new();
        for _ in 0..6 {
            let (n, _) = gateway.recv_from(&mut b).await.unwrap();
            got.push(b[..n].to_vec());
        }
        assert_eq!(got, [b"a", b"a", b"b", b"b", b"c", b"c"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn duration_and_stop_end_the_run() {
        let gateway = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut o = opts(gateway.local_addr().unwrap());
        o.duration = Some(Duration::from_millis(50));
        let t = Instant::now();
        let s = run(o.clone(), |_| {}, std::future::pending()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(s.up, DirectionSummary::default());
        o.duration = None;
        let s = tokio::time::timeout(Duration::from_secs(5), run(o, |_| {}, async {}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.seed, 1);
    }
}
