//! The JavaScript client's app users (`clients/js`, `micro.users`) against a real `micro
//! server` whose mail goes to a real SMTP sink (aiosmtpd): the client's own
//! `test/users.test.js` in node, which reads the mailed codes from the sink's directory.
//! The database's runner (`services/db/tests/js_client.rs`) runs the client's other tests;
//! without the sink's directory this file skips itself there.

use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
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
async fn the_clients_app_user_tests_pass_in_node_against_a_real_server_and_smtp() {
    if !node() {
        return;
    }
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::builder(micro())
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Platform <noreply@platform.test>")
        .start();
    let ns = "jsusers";
    s.admin_cli().await.ok(&["namespace", "create", ns]).await;
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, ns, ("owner", "owner-pass-1"), "user", &["admin"]).await;
    let owner = micro_test::login(&s.proxy, ns, "owner", "owner-pass-1").await;

    // App users on (the tests make more attempts and signups from one address than
    // people would).
    let settings = json!({"app_name": "Shop", "attempts_per_minute": 1000, "signups_per_hour": 1000});
    let (st, v) = micro_test::call_json(&s.api, "POST", "/users/v1/settings", Some(&owner), ns, Some(settings)).await;
    assert_eq!(st, 200, "{v}");

    let out = tokio::process::Command::new("node")
        .args(["--test", "test/users.test.js"])
        .current_dir(js_dir())
        .env("MICRO_API", format!("http://{}", s.api))
        .env("MICRO_NAMESPACE", ns)
        .envs([("MICRO_ADMIN_ID", "owner"), ("MICRO_ADMIN_PASSWORD", "owner-pass-1")])
        .env("MICRO_MAIL_DIR", sink.mail_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("node's tests end").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0") && stdout.contains("# skipped 0") && !stdout.contains("# pass 0"), "{stdout}");
    let _ = s.stop();
}
