//! The `openssl` command, for tests that make keys and certificates.

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` in `dir`; the test fails if it is missing or fails.
/// Its standard output.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl is required ({e}); scripts/test installs it"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
