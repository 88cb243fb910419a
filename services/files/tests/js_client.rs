//! The JavaScript client's files (`clients/js`, `micro.files`) against a real `micro
//! server`: the client's own `test/files.test.js` in node, as an admin of the namespace
//! and as app users who sign in unconfirmed (the namespace's lax settings, set here).
//! The database's runner (`services/db/tests/js_client.rs`) runs the client's other tests;
//! `test/run-local.sh` and `npm test` run every file of `test/`, where this one skips
//! itself without `MICRO_LAX_APP_USERS`.

use micro_test::process::ServerProcess;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn micro() -> PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/js").canonicalize().expect("clients/js")
}

/// Whether node runs (missing: the test skips with a notice, and fails under
/// `MICRO_TEST_REQUIRE_BACKENDS`).
fn node() -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "node is needed by this test");
        eprintln!("notice: skipping: node is missing");
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_files_tests_pass_in_node_against_a_real_server() {
    if !node() {
        return;
    }
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ns = "shop";
    s.admin_cli().await.ok(&["namespace", "create", ns]).await;
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, ns, ("owner", "owner-pass-1"), "user", &["admin"]).await;
    let owner = micro_test::login(&s.proxy, ns, "owner", "owner-pass-1").await;

    // App users on, signing in before they confirm their address (no mail is read here),
    // with more attempts and signups from one address than people would make. The files
    // settings are the test's own to change.
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    let (st, v) = micro_test::call_json(&s.api, "POST", "/users/v1/settings", Some(&owner), ns, Some(lax)).await;
    assert_eq!(st, 200, "{v}");

    let out = tokio::process::Command::new("node")
        .args(["--test", "test/files.test.js"])
        .current_dir(js_dir())
        .env("MICRO_API", format!("http://{}", s.api))
        .env("MICRO_NAMESPACE", ns)
        .envs([("MICRO_ADMIN_ID", "owner"), ("MICRO_ADMIN_PASSWORD", "owner-pass-1")])
        .env("MICRO_LAX_APP_USERS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("node's tests end").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0") && !stdout.contains("# pass 0"), "{stdout}");
    let _ = s.stop();
}
