//! The JavaScript client's own tests (`clients/js/test/*.js`) in node, against a server a
//! Rust test started: each product's runner names its files and the environment they read.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Whether `node --version` runs.
pub fn node_runs() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether node runs (missing: a notice, and the test skips; a panic under
/// `MICRO_TEST_REQUIRE_BACKENDS`).
pub fn node() -> bool {
    let ok = node_runs();
    if !ok {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "node is needed by this test");
        eprintln!("notice: skipping: node is missing");
    }
    ok
}

/// The client's folder (`clients/js`).
pub fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js").canonicalize().expect("clients/js")
}

/// Runs `node --test` on `files` of the client's folder with `env`; fails unless every
/// test ran (none skipped) and passed.
pub async fn run(files: &[&str], env: &[(&str, &str)]) {
    let out = tokio::process::Command::new("node")
        .arg("--test")
        .args(files)
        .current_dir(client_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("node's tests end").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0") && !stdout.contains("# pass 0"), "{stdout}");
}
