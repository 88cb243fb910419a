//! The JavaScript client's push notifications (`clients/js`, `micro.push`) against a real
//! `micro server` and a real push service (`micro_test::push`): the client's own
//! `test/push.test.js` in node, as an admin of the namespace and as an app user.

use micro_test::process::ServerProcess;
use micro_test::push::PushEndpoint;
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
async fn the_clients_push_tests_pass_in_node_against_a_real_server() {
    if !node() {
        return;
    }
    let Some(endpoint) = PushEndpoint::start() else { return };
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log"), ("MICRO_PUSH_PRIVATE", "1")]);
    let ns = "shop";
    let owner = s.account(ns, "owner", "user", &["admin"]).await;
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    let (st, v) = micro_test::call_json(&s.api, "POST", "/users/v1/settings", Some(&owner), ns, Some(lax)).await;
    assert_eq!(st, 200, "{v}");
    // The admin signs in with a password of its own.
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, ns, ("ann", "ann-pass-1"), "user", &["admin"]).await;

    let received = endpoint.url("ok", "x").replace("/ok/x", "/received");
    let out = tokio::process::Command::new("node")
        .args(["--test", "test/push.test.js"])
        .current_dir(js_dir())
        .env("MICRO_API", format!("http://{}", s.api))
        .env("MICRO_NAMESPACE", ns)
        .envs([("MICRO_ADMIN_ID", "ann"), ("MICRO_ADMIN_PASSWORD", "ann-pass-1"), ("MICRO_LAX_APP_USERS", "1")])
        .env("MICRO_PUSH_SUBSCRIPTION", endpoint.subscription("ok", "js").to_string())
        .env("MICRO_PUSH_RECEIVED", received)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("node's tests end").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0") && !stdout.contains("# pass 0"), "{stdout}");
    let _ = s.stop();
}
