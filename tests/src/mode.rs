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
