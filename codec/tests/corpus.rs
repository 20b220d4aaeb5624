//! Replays the committed fuzz corpus (`fuzz/corpus/`) on stable Rust: every
//! input that the fuzz targets ever kept is decoded, and whatever decodes is
//! encoded and decoded again, as the `roundtrip` target does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use mqttsn_codec::{Frame, Packet};

fn corpus_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut files = Vec::new();
    for target in ["decode", "roundtrip"] {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the fuzz corpus {} is missing: {e}", dir.display()));
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    let regressions = root.join("../regressions");
    if let Ok(entries) = std::fs::read_dir(regressions) {
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    files.sort();
    files
}

#[test]
fn replay_fuzz_corpus() {
    let files = corpus_files();
    assert!(files.len() >= 50, "the corpus holds only {} inputs", files.len());
    let (mut ok, mut err) = (0usize, 0usize);
    let mut buf = vec![0u8; 70_000];
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let _ = Packet::decode(&data);
        match Frame::decode(&data) {
            Ok(frame) => {
                ok += 1;
                let n = frame.encode(&mut buf).unwrap();
                assert_eq!(n, frame.encoded_len().unwrap(), "{}", path.display());
                assert_eq!(Frame::decode(&buf[..n]), Ok(frame), "{}", path.display());
                let _ = frame.to_string();
            }
            Err(e) => {
                err += 1;
                let _ = e.to_string();
            }
        }
    }
    // The corpus is only useful if it reaches both sides of the decoder.
    assert!(ok > 20 && err > 20, "{ok} decoded, {err} rejected");
}
