//! The progress line: once a second on standard error, what the live
//! counters say.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::Live;

/// Prints a line every second until dropped (the task is aborted).
pub async fn every_second(pass: &'static str, live: Arc<Live>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let g = |c: &std::sync::atomic::AtomicU64| Live::get(c);
        let (sent, up, down) = (g(&live.sent), g(&live.up_received), g(&live.down_received));
        let line = format!(
            "[{pass} {:5.1}s] connected {} ready {} failed {} | sent {} ({}/s) acked {} | at broker {} ({}/s) | down {} ({}/s) | asleep {} woken {}",
            start.elapsed().as_secs_f64(),
            g(&live.connected),
            g(&live.ready),
            g(&live.failed),
            sent,
            sent - last.0,
            g(&live.acked),
            up,
            up - last.1,
            down,
            down - last.2,
            g(&live.asleep),
            g(&live.sleepers_done),
        );
        last = (sent, up, down);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }
}
