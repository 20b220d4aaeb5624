//! Replays the committed corpus of the endpoint fuzz target
//! (`fuzz/corpus/endpoint/`, and `fuzz/regressions/endpoint/` if any) on
//! stable Rust: each input drives the endpoints as the fuzz target does,
//! and every invariant is checked after every step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use mqttsn_gateway::endpoint::script;

#[test]
fn replay_endpoint_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in [root.join("corpus/endpoint"), root.join("regressions/endpoint")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    assert!(files.len() >= 40, "the endpoint corpus holds only {} inputs", files.len());
    let mut connected = 0;
    let mut out = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let o = script::run(&data);
        connected += o.connected;
        out += o.datagrams_out;
    }
    // The corpus reaches past the CONNECT: sessions get to the broker and
    // datagrams come back.
    assert!(connected >= 20 && out >= 40, "connected {connected}, datagrams out {out}");
}
