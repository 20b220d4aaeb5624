//! The deterministic simulation of the gateway with sensors, a model
//! broker and a faulty network (tests/src/sim, docs/simulation.md), over
//! many seeds.
//!
//! - `SIM_SEEDS=n`: run n seeds (default 300), from `SIM_FROM` (default
//!   0), on every core;
//! - `SIM_SEED=s`: run seed `s` alone and print its trace.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use mqttsn_tests::sim::{self, Outcome};

/// Seeds run when `SIM_SEEDS` is not set.
const CI_SEEDS: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={v}: not a number: {e}"),
    }
}

/// Runs one seed; a panic inside is a failure of that seed.
fn run_seed(seed: u64, trace: bool) -> Result<Outcome, String> {
    match catch_unwind(AssertUnwindSafe(|| sim::run(seed, trace))) {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(f)) => {
            if trace {
                for line in &f.trace {
                    println!("{line}");
                }
            }
            Err(f.to_string())
        }
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(format!(
                "seed {seed}: panicked: {what}\n  reproduce: SIM_SEED={seed} cargo test -p mqttsn-tests --test simulation -- --nocapture"
            ))
        }
    }
}

#[test]
fn every_seed_keeps_every_invariant() {
    if let Some(seed) = env_u64("SIM_SEED") {
        for line in sim::trace_of(seed) {
            println!("{line}");
        }
        match run_seed(seed, false) {
            Ok(o) => println!("seed {seed}: {o:?}"),
            Err(e) => panic!("{e}"),
        }
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS);
    let from = env_u64("SIM_FROM").unwrap_or(0);
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // Each thread takes every `threads`-th seed; the seeds do not depend
    // on one another, so the figures are the same on any machine.
    let parts: Vec<(Outcome, Vec<(u64, String)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut total = Outcome::default();
                    let mut failures = Vec::new();
                    let mut seed = from + t;
                    while seed < from + seeds {
                        match run_seed(seed, false) {
                            Ok(o) => total.add(&o),
                            Err(e) => failures.push((seed, e)),
                        }
                        seed += threads;
                    }
                    (total, failures)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut total = Outcome::default();
    let mut failures = Vec::new();
    for (o, f) in parts {
        total.add(&o);
        failures.extend(f);
    }
    failures.sort();
    let failures: Vec<String> = failures.into_iter().map(|(_, e)| e).collect();
    println!(
        "{seeds} seeds from {from} in {:.1?} on {threads} threads: {total:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runs reach deep: connections, acknowledged publishes,
    // deliveries, lost datagrams and outages all happen.
    assert!(total.connects >= seeds * 3, "{total:?}");
    assert!(total.acked >= seeds * 5 && total.delivered >= seeds, "{total:?}");
    assert!(total.lost > 0 && u64::from(total.outages) > seeds / 4, "{total:?}");
    // Crashes with sessions restored from the store, and broker restarts.
    assert!(u64::from(total.crashes) > seeds / 4 && total.restored > seeds / 4, "{total:?}");
    assert!(u64::from(total.restarts) > seeds / 8 && total.commits > seeds * 10, "{total:?}");
}

/// Seeds that once failed, with what was fixed.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        17_912,
        "the client answered a QoS 2 retransmission whose topic id it no longer knew with \
         \"invalid topic id\" instead of PUBREC, and the message came again as a new one",
    ),
    (
        7_538,
        "a copy of a QoS 2 message, duplicated and held back by the network, reached the \
         client after five more exchanges had completed: it remembered four released MsgIds \
         and delivered the copy again",
    ),
    (
        9_385,
        "a QoS 2 message overtook the SUBACK naming its topic and was refused (\"invalid \
         topic id\"); a copy arriving after the SUBACK was delivered, and so was the message \
         the gateway sent again under a new MsgId",
    ),
    (
        23,
        "after a gateway crash the broker sent two QoS 2 messages again; the restored session \
         held the second, and the gateway's MQTT client sent its PUBREC before the first one's \
         (MQTT-4.6.0-3)",
    ),
    (
        381,
        "a PUBACK lost with its connection: the broker sent the message again, with the one \
         after it that the session had not acknowledged yet; the gateway's MQTT client \
         answered the second before the first (MQTT-4.6.0-2)",
    ),
    (
        2_300,
        "a sleeper woke, and the gateway crashed before the messages it held went out; the \
         restored session waited for the sensor to speak before sending them, and it never \
         did",
    ),
    (
        5_640,
        "the broker restarted without its sessions while the gateway held a QoS 2 message \
         under its packet identifier; after a gateway restart the upstream was told the \
         identifier was held, and a new message under it was taken for a copy and lost",
    ),
    (
        12_872,
        "a QoS 2 message reached a sleeper's session just after it was lost, and stayed \
         queued with the delivery of the aborted upstream; the broker sent it again on the \
         next connection, and the sensor got both",
    ),
];

#[test]
fn seeds_that_once_failed_pass() {
    for (seed, what) in REGRESSIONS {
        if let Err(e) = run_seed(*seed, false) {
            panic!("{e}\n  (once: {what})");
        }
    }
}

#[test]
fn a_seed_runs_the_same_every_time() {
    for seed in [1, 42, 977] {
        let (a, b) = (sim::trace_of(seed), sim::trace_of(seed));
        assert!(a.len() > 100, "seed {seed}: a trace of {} lines", a.len());
        assert_eq!(a, b, "seed {seed}: two runs differ");
    }
}
