//! The JavaScript client's app users (`clients/js`, `micro.users`) against a real `micro
//! server` whose mail goes to a real SMTP sink (aiosmtpd): the client's own
//! `test/users.test.js` in node, which reads the mailed codes from the sink's directory.
//! The database's runner (`services/db/tests/js_client.rs`) runs the client's other tests;
//! without the sink's directory this file skips itself there.

use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::json;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_app_user_tests_pass_in_node_against_a_real_server_and_smtp() {
    if !micro_test::js::node() {
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

    let api = format!("http://{}", s.api);
    let mail = sink.mail_dir();
    let env = [
        ("MICRO_API", api.as_str()),
        ("MICRO_NAMESPACE", ns),
        ("MICRO_ADMIN_ID", "owner"),
        ("MICRO_ADMIN_PASSWORD", "owner-pass-1"),
        ("MICRO_MAIL_DIR", mail.to_str().expect("a UTF-8 path")),
    ];
    micro_test::js::run(&["test/users.test.js"], &env).await;
    let _ = s.stop();
}
