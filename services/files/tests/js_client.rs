//! The JavaScript client's files (`clients/js`, `micro.files`) against a real `micro
//! server`: the client's own `test/files.test.js` in node, as an admin of the namespace
//! and as app users who sign in unconfirmed (the namespace's lax settings, set here).
//! The database's runner (`services/db/tests/js_client.rs`) runs the client's other tests;
//! `test/run-local.sh` and `npm test` run every file of `test/`, where this one skips
//! itself without `MICRO_LAX_APP_USERS`.

use micro_test::process::ServerProcess;
use serde_json::json;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_files_tests_pass_in_node_against_a_real_server() {
    if !micro_test::js::node() {
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

    let api = format!("http://{}", s.api);
    let env = [
        ("MICRO_API", api.as_str()),
        ("MICRO_NAMESPACE", ns),
        ("MICRO_ADMIN_ID", "owner"),
        ("MICRO_ADMIN_PASSWORD", "owner-pass-1"),
        ("MICRO_LAX_APP_USERS", "1"),
    ];
    micro_test::js::run(&["test/files.test.js"], &env).await;
    let _ = s.stop();
}
