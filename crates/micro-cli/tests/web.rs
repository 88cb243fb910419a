//! The web dashboard in a real browser: the real `micro server` binary over a temp data
//! dir, the helloworld example registered with it, and `tests/web/e2e.mjs` driving
//! Debian's chromium through playwright-core (both installed by `scripts/browser-setup`).
//! Without them the test skips with a notice, except in CI
//! (`MICRO_TEST_REQUIRE_BACKENDS`), where it fails.
//!
//! `E2E_SCREENSHOTS=dir` (see `scripts/screenshots`) makes the script save every page it
//! visits; `E2E_ONLY=regex` runs only some of its steps.
//!
//! The runtime steps run a service from a small git repository made here (a `micro.toml`
//! whose shell loop prints a line a second), passed as `E2E_RUNTIME_SOURCE`; without `git`
//! they skip.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_test::process::{ServerProcess, binary};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, at most (it takes about 30 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Where `scripts/browser-setup` installs playwright-core: `$target/web-e2e/node_modules`.
fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("web-e2e/node_modules")
}

/// Whether chromium, node and playwright-core are there; without them the test skips with
/// a notice, except under `MICRO_TEST_REQUIRE_BACKENDS`, where it fails.
fn browser_ready() -> bool {
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let missing = if !Path::new(CHROMIUM).exists() {
        Some(CHROMIUM.to_string())
    } else if !node.is_ok_and(|s| s.success()) {
        Some("node".to_string())
    } else if !node_modules().join("playwright-core/package.json").exists() {
        Some(format!("playwright-core in {}", node_modules().display()))
    } else {
        None
    };
    let Some(what) = missing else { return true };
    assert!(
        std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
        "{what} is needed by the browser test: run scripts/browser-setup"
    );
    eprintln!("notice: skipping the browser test: {what} is missing (run scripts/browser-setup)");
    false
}

/// A local git repository holding one service, `ticker`: a `micro.toml` whose `run` prints
/// `started`, then `tick N` every second (no `[http]`: the runtime counts it ready after a
/// second up). Returns the folder (removed on drop) and its `file://` URL, or `None`
/// without git.
fn ticker_repo() -> Option<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("ticker");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("micro.toml"),
        "name = \"ticker\"\nrun = \"sh -c 'echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done'\"\n",
    )
    .unwrap();
    for args in [&["init", "-q"][..], &["add", "."], &["commit", "-q", "-m", "ticker"]] {
        let out = Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&repo)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("git {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                assert!(
                    std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
                    "git is needed by the browser test's runtime steps: {e}"
                );
                eprintln!("notice: the runtime steps of the browser test skip: git cannot run ({e})");
                return None;
            }
        }
    }
    let url = format!("file://{}", repo.display());
    Some((dir, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let server = ServerProcess::start(&binary(env!("CARGO_BIN_EXE_micro")), &[]);
    // Registered and answering (the pages list it and call it).
    let _helloworld = server.helloworld().await;

    let ticker = ticker_repo();

    let started = Instant::now();
    let mut node = tokio::process::Command::new("node");
    node.arg(repo_root().join("tests/web/e2e.mjs"))
        .current_dir(repo_root())
        .env("NODE_PATH", node_modules())
        .env("E2E_URL", format!("http://{}", server.web))
        .env("E2E_ADMIN_PASSWORD", &server.admin_password)
        .env("E2E_CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((_, url)) = &ticker {
        node.env("E2E_RUNTIME_SOURCE", url);
    }
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, node.output())
        .await
        .unwrap_or_else(|_| panic!("tests/web/e2e.mjs ran longer than {SCRIPT_TIMEOUT:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tests/web/e2e.mjs failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("tests/web/e2e.mjs ({:.1?}):\n{stdout}", started.elapsed());
    assert!(stdout.contains(" passed, 0 failed"), "no summary from tests/web/e2e.mjs:\n{stdout}\n{stderr}");
}
