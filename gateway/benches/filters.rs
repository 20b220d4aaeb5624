//! What the aggregating mode's subscription table costs with 100,000
//! sensors: the memory of their subscriptions (each its own command
//! filter, plus one filter shared by all), one publish matched to one
//! sensor, one matched to all of them, one matched through two filters
//! (a sensor counted once), and a sensor leaving and coming back.
//!
//! `cargo bench -p mqttsn-gateway --bench filters`: the `alloc` column of
//! `build` is the table's memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_gateway::mqtt::QoS;
use mqttsn_gateway::upstream::aggregating::filters::Filters;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

const SENSORS: u64 = 100_000;

fn main() {
    divan::main();
}

fn subscribe(t: &mut Filters<u64>, k: u64) {
    t.subscribe(&format!("site/{k}/cmd"), k, QoS::AtLeastOnce);
    t.subscribe("site/+/all", k, QoS::AtMostOnce);
}

fn table() -> Filters<u64> {
    let mut t = Filters::new();
    for k in 0..SENSORS {
        subscribe(&mut t, k);
    }
    t
}

/// The whole table: 200,000 subscriptions on 100,001 filters.
#[divan::bench(sample_count = 3, sample_size = 1)]
fn build() -> Filters<u64> {
    table()
}

/// A publish to one sensor's command topic.
#[divan::bench]
fn match_one(bencher: divan::Bencher<'_, '_>) {
    let mut t = table();
    bencher.bench_local(|| {
        let mut n = 0u64;
        t.for_each_match("site/4711/cmd", |k, _| n += k);
        n
    });
}

/// A publish every sensor gets.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn match_all(bencher: divan::Bencher<'_, '_>) {
    let mut t = table();
    bencher.bench_local(|| {
        let mut n = 0u64;
        t.for_each_match("site/4711/all", |k, _| n += k);
        n
    });
}

/// A publish to one command topic that 1,000 sensors also watch with
/// `site/#`: the subscribers of both filters, each once.
#[divan::bench]
fn match_overlapping(bencher: divan::Bencher<'_, '_>) {
    let mut t = table();
    for k in (0..SENSORS).step_by(100) {
        t.subscribe("site/#", k, QoS::ExactlyOnce);
    }
    bencher.bench_local(|| {
        let mut n = 0u64;
        t.for_each_match("site/4700/cmd", |k, _| n += k);
        n
    });
}

/// A sensor gone and back: its two subscriptions removed and made again.
#[divan::bench]
fn leave_and_return(bencher: divan::Bencher<'_, '_>) {
    let mut t = table();
    bencher.bench_local(|| {
        t.remove_key(4711, |_, _| {});
        subscribe(&mut t, 4711);
    });
}
