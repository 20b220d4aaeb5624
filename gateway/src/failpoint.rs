//! Named points where a test can make the gateway kill itself with
//! SIGKILL, to prove that what the store promises holds at that moment.
//!
//! `MQTTSN_FAILPOINT=<name>:<n>` in the environment kills the process the
//! `n`th time it reaches the point `<name>` (`n` defaults to 1). Without
//! the variable every point costs one relaxed atomic load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The points, in the order a message passes them.
pub const POINTS: [&str; 4] = [
    // A write is committed; its outputs are not out yet.
    "store-committed",
    // A message for a sleeper is stored; the broker is not yet told.
    "stored-before-ack",
    // The sensor acknowledged a buffered message; the deletion is not
    // written yet.
    "acked-before-delete",
    // A sleeper is awake and part of its buffer delivered.
    "mid-flush",
];

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("MQTTSN_FAILPOINT").ok()?;
            let (name, at) = match v.split_once(':') {
                Some((n, at)) => (n.to_owned(), at.parse().unwrap_or(1)),
                None => (v, 1),
            };
            if !POINTS.contains(&name.as_str()) {
                tracing::warn!("MQTTSN_FAILPOINT names no failpoint: {name} (known: {POINTS:?})");
            }
            Some(Armed { name, at, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Reaches the point `name`.
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at {
        tracing::error!("failpoint {name} reached: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
