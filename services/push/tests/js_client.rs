//! The JavaScript client's push notifications (`clients/js`, `micro.push`) against a real
//! `micro server` and a real push service (`micro_test::push`): the client's own
//! `test/push.test.js` in node, as an admin of the namespace and as an app user.

use micro_test::process::ServerProcess;
use micro_test::push::PushEndpoint;
use serde_json::json;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_push_tests_pass_in_node_against_a_real_server() {
    if !micro_test::js::node() {
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
    let api = format!("http://{}", s.api);
    let browser = endpoint.subscription("ok", "js").to_string();
    let env = [
        ("MICRO_API", api.as_str()),
        ("MICRO_NAMESPACE", ns),
        ("MICRO_ADMIN_ID", "ann"),
        ("MICRO_ADMIN_PASSWORD", "ann-pass-1"),
        ("MICRO_LAX_APP_USERS", "1"),
        ("MICRO_PUSH_SUBSCRIPTION", browser.as_str()),
        ("MICRO_PUSH_RECEIVED", received.as_str()),
    ];
    micro_test::js::run(&["test/push.test.js"], &env).await;
    let _ = s.stop();
}
