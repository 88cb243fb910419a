//! Push notifications: another namespace's admin and app user, and an anonymous caller,
//! try to send to a namespace's users, read its subscriptions and reports, hear its
//! realtime stream, or end its subscriptions; a tenant aims the server's push requests at
//! the network it runs in; a deleted user keeps listening.

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::push::PushEndpoint;
use micro_test::sse::Events;
use serde_json::{Value, json};
use std::time::Duration;

use super::*;

/// Makes `shop` (admin ann) lax about unconfirmed sign-ins; signs `email` up and in:
/// their token and id.
async fn app_user(s: &ServerProcess, ns: &str, admin: &str, email: &str) -> (String, String) {
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    assert_eq!(call(&s.api, "POST", "/users/v1/settings", Some(admin), ns, Some(lax)).await.0, 200);
    s.app_user(ns, email).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_outside_a_namespace_sends_to_its_users_or_hears_them() {
    let Some(endpoint) = PushEndpoint::start() else { return };
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log"), ("MICRO_PUSH_PRIVATE", "1")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let mallet = s.account("blog", "mallet", "user", &["admin"]).await;
    let (zoe, zoe_id) = app_user(&s, "shop", &ann, "zoe@example.com").await;
    let (eve, _) = app_user(&s, "blog", &mallet, "eve@example.com").await;
    let mut sub = endpoint.subscription("ok", "zoe");
    sub["topics"] = json!(["news"]);
    let (st, v) = call(&s.api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(sub)).await;
    assert_eq!(st, 201, "{v}");
    let zoe_sub = v["id"].as_str().expect("an id").to_string();
    let (st, report) =
        call(&s.api, "POST", "/push/v1/messages", Some(&ann), "shop", Some(json!({"user": zoe_id, "title": "hi"})))
            .await;
    assert_eq!(st, 201, "{report}");
    let msg = report["id"].as_str().expect("an id").to_string();
    let mut live = Events::open(&s.api, "/push/v1/events", Some(&zoe), "shop").await;
    assert_eq!(live.next().await, json!({}));

    let everyone_else =
        [("blog's admin", Some(mallet.as_str())), ("blog's app user", Some(eve.as_str())), ("anybody", None)];
    for (who, token) in everyone_else {
        // In shop's name: refused whatever the door.
        for (method, path, body) in [
            (
                "POST",
                "/push/v1/messages".to_string(),
                Some(json!({"all": true, "title": "phish", "url": "https://evil.example"})),
            ),
            ("POST", "/push/v1/messages".to_string(), Some(json!({"user": zoe_id, "title": "phish"}))),
            ("GET", "/push/v1/messages".to_string(), None),
            ("GET", format!("/push/v1/messages/{msg}"), None),
            ("GET", "/push/v1/subscriptions".to_string(), None),
            ("DELETE", format!("/push/v1/subscriptions/{zoe_sub}"), None),
            ("POST", format!("/push/v1/messages/{msg}/receipts"), Some(json!({"event": "clicked"}))),
            ("POST", "/push/v1/subscriptions".to_string(), Some(endpoint.subscription("ok", "mallet"))),
            ("POST", "/push/push/send".to_string(), Some(json!({"all": true, "title": "phish"}))),
            ("POST", "/push/push/subscriptions".to_string(), Some(json!({}))),
            ("POST", "/push/push/messages".to_string(), Some(json!({}))),
        ] {
            let (st, v) = call(&s.api, method, &path, token, "shop", body).await;
            assert!(st == 401 || st == 403, "{who}: {method} {path}: {st} {v}");
        }
        let mut heard = Events::open(&s.api, "/push/v1/events", token, "shop").await;
        let first = heard.next().await;
        assert_eq!(first["action"], "error", "{who} opens no stream of shop: {first}");
        // In their own namespace, shop's ids mean nothing.
        if let Some(t) = token {
            for (method, path, body) in [
                ("GET", format!("/push/v1/messages/{msg}"), None),
                ("DELETE", format!("/push/v1/subscriptions/{zoe_sub}"), None),
                ("POST", format!("/push/v1/messages/{msg}/receipts"), Some(json!({"event": "clicked"}))),
            ] {
                let (st, v) = call(&s.api, method, &path, Some(t), "blog", body).await;
                assert!(st == 404 || st == 403, "{who}: {method} {path} in blog: {st} {v}");
            }
        }
    }
    // blog's sends reach blog's users alone (zoe's id means nobody there).
    let (st, v) = call(
        &s.api,
        "POST",
        "/push/v1/messages",
        Some(&mallet),
        "blog",
        Some(json!({"all": true, "title": "blog news"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (_, v) =
        call(&s.api, "POST", "/push/v1/messages", Some(&mallet), "blog", Some(json!({"user": zoe_id, "title": "x"})))
            .await;
    assert_eq!(v["subscriptions"], 0, "{v}");
    assert!(live.quiet(Duration::from_millis(800)).await.is_ok(), "zoe hears nothing of blog's");
    let got = endpoint.to("zoe", 1).await;
    let titles: Vec<&Value> = got.iter().map(|g| &g["message"]["title"]).collect();
    assert_eq!(titles, [&json!("hi")], "zoe's browser got shop's one message alone");
    let (_, mine) = call(&s.api, "GET", "/push/v1/subscriptions", Some(&zoe), "shop", None).await;
    assert_eq!(mine["subscriptions"].as_array().map(Vec::len), Some(1), "zoe's subscription is still there");
    let (_, r) = call(&s.api, "GET", &format!("/push/v1/messages/{msg}"), Some(&ann), "shop", None).await;
    assert_eq!(r["receipts"], json!({}), "nobody else's receipt counted: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pushes_to_no_private_address() {
    let Some(endpoint) = PushEndpoint::start() else { return };
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let (zoe, _) = app_user(&s, "shop", &ann, "zoe@example.com").await;
    let port = endpoint.url("ok", "x").split(':').nth(2).and_then(|p| p.split('/').next()).expect("a port").to_string();
    for url in [
        endpoint.url("ok", "plain-http"),
        format!("https://127.0.0.1:{port}/ok/x"),
        "https://169.254.169.254/latest/meta-data".to_string(),
        "https://10.0.0.1/x".to_string(),
        "https://[::1]/x".to_string(),
        "https://[::ffff:127.0.0.1]/x".to_string(),
        "https://[64:ff9b::a9fe:a9fe]/x".to_string(),
        "https://0x7f000001/x".to_string(),
        "file:///etc/passwd".to_string(),
    ] {
        let mut sub = endpoint.subscription("ok", "x");
        sub["endpoint"] = json!(url);
        let (st, v) = call(&s.api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(sub)).await;
        assert_eq!(st, 400, "{url}: {v}");
    }
    // A name that resolves to the machine itself is refused when connecting.
    let mut sub = endpoint.subscription("ok", "x");
    sub["endpoint"] = json!(format!("https://localhost:{port}/ok/sneaky"));
    let (st, v) = call(&s.api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(sub)).await;
    assert_eq!(st, 201, "{v}");
    let (st, report) =
        call(&s.api, "POST", "/push/v1/messages", Some(&ann), "shop", Some(json!({"all": true, "title": "t"}))).await;
    assert_eq!(st, 201, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    assert!(report["errors"][0].as_str().unwrap_or_default().contains("not public"), "{report}");
    assert!(!report.to_string().contains("sneaky"), "the report shows no endpoint's whole URL: {report}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(endpoint.received().await.is_empty(), "nothing reached the machine's own port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_app_user_hears_nothing_more() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let (zoe, zoe_id) = app_user(&s, "shop", &ann, "zoe@example.com").await;
    let mut live = Events::open(&s.api, "/push/v1/events", Some(&zoe), "shop").await;
    assert_eq!(live.next().await, json!({}));
    let (st, _) =
        call(&s.api, "POST", "/push/v1/messages", Some(&ann), "shop", Some(json!({"user": zoe_id, "title": "one"})))
            .await;
    assert_eq!(st, 201);
    assert_eq!(live.next().await["title"], "one");
    let (st, v) = call(&s.api, "DELETE", &format!("/users/v1/users/{zoe_id}"), Some(&ann), "shop", None).await;
    assert!(st == 200 || st == 204, "{v}");
    // The stream ends within a few seconds of the deletion (its token is revoked).
    let ended = live.next().await;
    assert_eq!(ended["action"], "error", "{ended}");
    let (st, _) =
        call(&s.api, "POST", "/push/v1/messages", Some(&ann), "shop", Some(json!({"user": zoe_id, "title": "two"})))
            .await;
    assert_eq!(st, 201);
    // (The error event's own data comes; then the stream is over.)
    while let Some(v) = live.within(Duration::from_millis(800)).await {
        assert!(v.get("title").is_none(), "nothing after the end: {v}");
    }
    let reopened = Events::open(&s.api, "/push/v1/events", Some(&zoe), "shop").await.next().await;
    assert_eq!(reopened["action"], "error", "{reopened}");
}
