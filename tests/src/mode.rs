//! Which gateway mode the end-to-end tests run against.
//!
//! The flows of the transparent gateway are tested in aggregating mode too
//! by the `aggregating` test binary (`tests/tests/aggregating.rs`), which
//! compiles the same test files again: a gateway the harness starts in
//! that binary (in process, or the binary through [`GatewayProcess`])
//! runs in aggregating mode unless the test chose a mode itself.
//! `MQTTSN_TEST_MODE=aggregating` (or `transparent`) overrides it for any
//! test binary.
//!
//! [`GatewayProcess`]: crate::gateway::GatewayProcess

use std::sync::atomic::{AtomicU64, Ordering};

use mqttsn_gateway::upstream::aggregating::PoolOptions;

/// True when gateways started by the harness run in aggregating mode.
pub fn aggregating() -> bool {
    match std::env::var("MQTTSN_TEST_MODE").as_deref() {
        Ok("aggregating") => return true,
        Ok("transparent") => return false,
        _ => {}
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()))
        .is_some_and(|name| name.to_string_lossy().starts_with("aggregating"))
}

/// The pool of a gateway the harness starts in aggregating mode: two
/// connections per worker, under a ClientId of its own (several gateways
/// of a test may share one broker). A gateway with a session store keeps
/// its pool's ClientIds across restarts (they follow from the store's
/// path), as a configured gateway does.
pub fn pool(own_client_id: &str, store: Option<&std::path::Path>) -> PoolOptions {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let tag = match store {
        Some(path) => {
            let h = mqttsn_gateway::upstream::aggregating::stable_hash(&path.to_string_lossy());
            format!("store-{h:x}")
        }
        None => format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
    };
    PoolOptions {
        connections: 2,
        client_id: format!("{own_client_id}-pool-{tag}"),
        worker: 0,
        keep_alive: 30,
        username: None,
        password: None,
        own_client_id: own_client_id.to_string(),
        max_offline: 1000,
    }
}

/// The mode's name, for messages.
pub fn name() -> &'static str {
    if aggregating() {
        "aggregating"
    } else {
        "transparent"
    }
}

/// A gateway binary the harness starts in aggregating mode gets a pool
/// ClientId of its own, unless its configuration names one: two gateways
/// of a test on one host and broker (failover) would otherwise share the
/// default, and take each other's pool connections over; with a store, it
/// follows from the store's path, so a restarted gateway has the same one.
/// `[aggregating] client_id` is added to the test's configuration file,
/// or `args` gains a file with only that.
pub fn own_pool_identity(args: &mut Vec<String>) {
    let at = args.iter().position(|a| a == "-c" || a == "--config");
    let mut text = match at.and_then(|i| args.get(i + 1)) {
        Some(path) => std::fs::read_to_string(path).expect("the test's configuration file"),
        None => String::new(),
    };
    if text.contains("[aggregating]") {
        return;
    }
    // With a store, the same ClientId in every run, as a configured
    // gateway has: its pool's broker sessions are what a restart finds.
    let store = args.iter().position(|a| a == "--store").and_then(|i| args.get(i + 1));
    let id = match store.filter(|p| !p.is_empty()) {
        Some(path) => {
            format!("pool-store-{:x}", mqttsn_gateway::upstream::aggregating::stable_hash(path))
        }
        None => crate::broker::unique("pool"),
    };
    text.push_str(&format!("\n[aggregating]\nclient_id = \"{id}\"\n"));
    match at.and_then(|i| args.get(i + 1)) {
        // In place: a test may rewrite its file and reload it (SIGHUP).
        Some(path) => std::fs::write(path, text).expect("write the configuration"),
        None => {
            let path = std::env::temp_dir().join(format!("{id}.toml"));
            std::fs::write(&path, text).expect("write the configuration");
            args.extend(["--config".to_string(), path.to_string_lossy().into_owned()]);
        }
    }
}
