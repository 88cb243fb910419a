//! Push notifications through a real `micro server` (the binary; its gateway serves the
//! product) to a real push service (`micro_test::push`: Python that checks the VAPID
//! signature and decrypts each message with `http_ece`): subscriptions per app user and
//! topic, sending to a user, a topic and everyone, expiry of dead subscriptions, the
//! realtime stream, receipts, and bad input. On the embedded defaults and on two nodes
//! sharing PostgreSQL (a notification sent through one node reaches a stream on the other).
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::push::PushEndpoint;
use micro_test::sse::Events;
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

const ENV: [(&str, &str); 2] = [("MICRO_SMTP", "log"), ("MICRO_PUSH_PRIVATE", "1")];

#[tokio::test(flavor = "multi_thread")]
async fn embedded_notifications_reach_browsers_and_streams() {
    let Some(endpoint) = PushEndpoint::start() else { return };
    let s = ServerProcess::start(&micro(), &ENV);
    push_end_to_end(&s, &s, &endpoint).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_notification_sent_on_one_node_reaches_a_stream_on_the_other() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let Some(endpoint) = PushEndpoint::start() else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_push_cluster_{}", std::process::id())).await;
    let mut env = ENV.to_vec();
    env.push(("MICRO_BACKEND", schema.url.as_str()));
    let a = ServerProcess::start(&micro(), &env);
    let b = ServerProcess::start(&micro(), &env);
    push_end_to_end(&a, &b, &endpoint).await;
}

/// Sends as `token` through `api`: the status and the report.
async fn send(api: &str, token: &str, body: Value) -> (u16, Value) {
    call(api, "POST", "/push/v1/messages", Some(token), "shop", Some(body)).await
}

/// The next notification of a stream (its `ready` event skipped).
async fn next_push(events: &mut Events) -> Value {
    loop {
        let v = events.next().await;
        if v.get("id").is_some() {
            return v;
        }
        assert_ne!(v["action"], "error", "the stream failed: {v}");
    }
}

/// The whole life of a namespace's notifications, through node `a` and node `b`.
async fn push_end_to_end(a: &ServerProcess, b: &ServerProcess, endpoint: &PushEndpoint) {
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let (api, bpi) = (a.api.clone(), b.api.clone());
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    let (st, v) = call(&api, "POST", "/users/v1/settings", Some(&ann), "shop", Some(lax)).await;
    assert_eq!(st, 200, "{v}");
    let (zoe, zoe_id) = a.app_user("shop", "zoe@example.com").await;
    let (yan, _) = a.app_user("shop", "yan@example.com").await;

    // The namespace's VAPID key, for its accounts, the same on both nodes.
    let (st, key) = call(&api, "GET", "/push/v1/key", Some(&zoe), "shop", None).await;
    assert_eq!(st, 200, "{key}");
    let public = key["public_key"].as_str().unwrap().to_string();
    assert_eq!(public.len(), 87, "65 bytes, base64url: {public}");
    let (_, key_b) = call(&bpi, "GET", "/push/v1/key", Some(&ann), "shop", None).await;
    assert_eq!(key_b["public_key"], public.as_str());
    let (st, _) = call(&api, "GET", "/push/v1/key", None, "shop", None).await;
    assert_eq!(st, 401, "nobody makes keys for names that are no namespace's");
    let olga = a.account("other", "olga", "user", &["admin"]).await;
    let (_, other) = call(&api, "GET", "/push/v1/key", Some(&olga), "other", None).await;
    assert_eq!(other["public_key"].as_str().map(str::len), Some(87), "{other}");
    assert_ne!(other["public_key"], public.as_str(), "each namespace has its own key");

    // Subscriptions: zoe's browser follows "news"; yan has three (one expired at its
    // push service, one failing).
    let mut sub = endpoint.subscription("ok", "zoe");
    sub["topics"] = json!(["news"]);
    let (st, v) = call(&api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(sub)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["endpoint"], endpoint.url("ok", "zoe").rsplit_once("/ok/").unwrap().0, "the origin alone is shown");
    assert!(v.get("p256dh").is_none() && v.get("auth").is_none(), "keys are not shown: {v}");
    for how in ["ok", "gone", "fail"] {
        let (st, v) =
            call(&bpi, "POST", "/push/v1/subscriptions", Some(&yan), "shop", Some(endpoint.subscription(how, "yan")))
                .await;
        assert_eq!(st, 201, "{v}");
    }
    let (_, mine) = call(&api, "GET", "/push/v1/subscriptions", Some(&yan), "shop", None).await;
    assert_eq!(mine["subscriptions"].as_array().unwrap().len(), 3, "{mine}");
    let (_, all) = call(&api, "GET", "/push/v1/subscriptions", Some(&ann), "shop", None).await;
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 4, "the team sees everyone's: {all}");

    // Realtime streams on node b: zoe's, and yan's following "sports".
    let mut zoe_live = Events::open(&bpi, "/push/v1/events", Some(&zoe), "shop").await;
    let mut yan_live = Events::open(&bpi, "/push/v1/events?topics=sports", Some(&yan), "shop").await;
    assert_eq!(zoe_live.next().await, json!({}), "the ready event");
    assert_eq!(yan_live.next().await, json!({}), "the ready event");

    // To zoe, through node a: her browser gets it encrypted and signed, her stream at once.
    let (st, report) = send(
        &api,
        &ann,
        json!({"user": zoe_id, "title": "Hello Zoe", "body": "Your order shipped", "url": "/orders/7",
               "data": {"order": 7}, "ttl": 60, "urgency": "high", "replace": "orders"}),
    )
    .await;
    assert_eq!(st, 201, "{report}");
    assert_eq!((report["subscriptions"].as_u64(), report["accepted"].as_u64()), (Some(1), Some(1)), "{report}");
    let id = report["id"].as_str().unwrap().to_string();
    let got = endpoint.to("zoe", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let g = &got[0];
    assert!(g.get("error").is_none(), "the push service could not check or decrypt it: {g}");
    let mut message = g["message"].clone();
    let browser_receipt = message.as_object_mut().unwrap().remove("receipt").unwrap();
    assert_eq!(
        message,
        json!({"id": id, "title": "Hello Zoe", "body": "Your order shipped", "url": "/orders/7", "data": {"order": 7}})
    );
    assert_eq!(
        (g["ttl"].as_str(), g["urgency"].as_str(), g["topic"].as_str()),
        (Some("60"), Some("high"), Some("orders"))
    );
    assert_eq!(g["encoding"], "aes128gcm");
    assert_eq!(g["vapid_key"], public.as_str(), "signed with the namespace's key");
    let live = next_push(&mut zoe_live).await;
    assert_eq!(live["id"], id.as_str());
    assert_eq!(live["title"], "Hello Zoe");
    assert_eq!(live["receipt"], browser_receipt, "zoe's token, on the stream as in the browser");
    assert!(yan_live.quiet(Duration::from_millis(500)).await.is_ok(), "yan hears nothing of zoe's");

    // To the topic: zoe's subscription follows it; yan's stream follows another.
    let (st, report) = send(&bpi, &ann, json!({"topic": "news", "title": "Issue 1"})).await;
    assert_eq!(st, 201, "{report}");
    assert_eq!((report["subscriptions"].as_u64(), report["accepted"].as_u64()), (Some(1), Some(1)), "{report}");
    assert_eq!(next_push(&mut zoe_live).await["title"], "Issue 1");
    assert!(yan_live.quiet(Duration::from_millis(500)).await.is_ok());
    let (_, report) = send(&api, &ann, json!({"topic": "sports", "title": "Goal"})).await;
    assert_eq!(report["subscriptions"], 0, "{report}");
    assert_eq!(next_push(&mut yan_live).await["title"], "Goal", "a stream follows the topics it names");

    // To everyone: the expired subscription goes, the failing one is counted.
    let (st, report) = send(&api, &ann, json!({"all": true, "title": "Maintenance tonight"})).await;
    assert_eq!(st, 201, "{report}");
    let counts: Vec<Option<u64>> =
        ["subscriptions", "accepted", "expired", "failed"].iter().map(|k| report[k].as_u64()).collect();
    assert_eq!(counts, [Some(4), Some(2), Some(1), Some(1)], "{report}");
    assert!(report["errors"][0].as_str().unwrap().contains("500"), "{report}");
    assert_eq!(next_push(&mut zoe_live).await["title"], "Maintenance tonight");
    assert_eq!(next_push(&mut yan_live).await["title"], "Maintenance tonight");
    let (_, mine) = call(&bpi, "GET", "/push/v1/subscriptions", Some(&yan), "shop", None).await;
    assert_eq!(mine["subscriptions"].as_array().unwrap().len(), 2, "the expired subscription is gone: {mine}");
    for g in endpoint.to("yan", 3).await {
        assert!(g.get("error").is_none(), "{g}");
    }

    // Receipts: each user counts once per event, with the token their copy came with; a
    // message to zoe takes hers alone.
    for _ in 0..2 {
        for event in ["delivered", "clicked"] {
            let path = format!("/push/v1/messages/{id}/receipts");
            let body = json!({"event": event, "receipt": browser_receipt});
            let (st, v) = call(&bpi, "POST", &path, Some(&zoe), "shop", Some(body)).await;
            assert_eq!(st, 204, "{v}");
        }
    }
    let path = format!("/push/v1/messages/{id}/receipts");
    for token in [json!("forged"), browser_receipt.clone(), json!(null)] {
        let body = json!({"event": "delivered", "receipt": token});
        let (st, _) = call(&api, "POST", &path, Some(&yan), "shop", Some(body)).await;
        assert_eq!(st, 404, "yan has no receipt to give for zoe's message, even with hers");
    }
    let body = json!({"event": "opened", "receipt": browser_receipt});
    let (st, v) = call(&api, "POST", &path, Some(&zoe), "shop", Some(body)).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = call(&api, "GET", &format!("/push/v1/messages/{id}"), Some(&ann), "shop", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["receipts"], json!({"delivered": 1, "clicked": 1}), "{v}");
    let (_, v) = call(&bpi, "GET", "/push/v1/messages", Some(&ann), "shop", None).await;
    let titles: Vec<&str> = v["messages"].as_array().unwrap().iter().map(|m| m["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Maintenance tonight", "Goal", "Issue 1", "Hello Zoe"], "newest first");

    // Who may: app users do not send, nor read the reports; anonymous callers subscribe
    // nothing.
    let (st, v) = send(&api, &zoe, json!({"all": true, "title": "spam"})).await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = call(&api, "GET", "/push/v1/messages", Some(&zoe), "shop", None).await;
    assert_eq!(st, 403);
    let (st, _) =
        call(&api, "POST", "/push/v1/subscriptions", None, "shop", Some(endpoint.subscription("ok", "x"))).await;
    assert_eq!(st, 401);
    let (st, _) = call(&api, "GET", "/push/v1/subscriptions?user=someone", Some(&yan), "shop", None).await;
    assert_eq!(st, 403);

    // Bad input, each refused in words.
    let ok = endpoint.subscription("ok", "bad");
    let mut bad_subs = Vec::new();
    for (field, value) in [
        ("endpoint", json!("ftp://127.0.0.1/x")),
        ("endpoint", json!("http://user:pw@127.0.0.1/x")),
        ("endpoint", json!(format!("http://127.0.0.1/{}", "x".repeat(2100)))),
        ("keys", json!({"p256dh": "AAAA", "auth": endpoint.auth})),
        ("keys", json!({"p256dh": endpoint.p256dh, "auth": "AAAA"})),
        ("topics", json!(["Not A Topic"])),
        ("topics", json!((0..21).map(|i| format!("t{i}")).collect::<Vec<_>>())),
    ] {
        let mut s = ok.clone();
        s[field] = value;
        bad_subs.push(s);
    }
    bad_subs.push(json!({"endpoint": endpoint.url("ok", "bad")}));
    for s in bad_subs {
        let (st, v) = call(&api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(s.clone())).await;
        assert_eq!(st, 400, "{s} → {v}");
        assert!(!v["detail"].as_str().unwrap_or_default().is_empty(), "{v}");
    }
    for body in [
        json!({"title": "to nobody"}),
        json!({"user": zoe_id, "topic": "news", "title": "both"}),
        json!({"all": true, "title": ""}),
        json!({"all": true, "title": "x\ny"}),
        json!({"all": true, "title": "t", "url": "javascript:alert(1)"}),
        json!({"all": true, "title": "t", "url": "//evil.example"}),
        json!({"all": true, "title": "t", "ttl": 99_999_999}),
        json!({"all": true, "title": "t", "urgency": "now"}),
        json!({"all": true, "title": "t", "replace": "has space"}),
        json!({"all": true, "title": "t", "surprise": 1}),
        json!({"all": true, "title": "t", "body": "b".repeat(1900), "data": "d".repeat(2100)}),
    ] {
        let (st, v) = send(&api, &ann, body.clone()).await;
        assert_eq!(st, 400, "{body} → {v}");
    }
    let (st, v) =
        send(&api, &ann, json!({"all": true, "title": "t", "body": "b".repeat(1990), "data": "d".repeat(1950)})).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("fit a push message"), "{v}");
    let (st, _) = call(&api, "GET", "/push/v1/events?topics=Bad!", Some(&zoe), "shop", None).await;
    assert_eq!(st, 400);

    // Unsubscribing: one's own; somebody else's is not found.
    let (_, mine) = call(&api, "GET", "/push/v1/subscriptions", Some(&zoe), "shop", None).await;
    let zoe_sub = mine["subscriptions"][0]["id"].as_str().unwrap().to_string();
    let (st, _) = call(&api, "DELETE", &format!("/push/v1/subscriptions/{zoe_sub}"), Some(&yan), "shop", None).await;
    assert_eq!(st, 404);
    let (st, _) = call(&bpi, "DELETE", &format!("/push/v1/subscriptions/{zoe_sub}"), Some(&zoe), "shop", None).await;
    assert_eq!(st, 204);
    let (_, mine) = call(&api, "GET", "/push/v1/subscriptions", Some(&zoe), "shop", None).await;
    assert_eq!(mine["subscriptions"], json!([]));

    // A browser that signs in as another user is theirs now.
    let (st, _) =
        call(&api, "POST", "/push/v1/subscriptions", Some(&zoe), "shop", Some(endpoint.subscription("ok", "yan")))
            .await;
    assert_eq!(st, 201);
    let (_, mine) = call(&api, "GET", "/push/v1/subscriptions", Some(&yan), "shop", None).await;
    assert_eq!(mine["subscriptions"].as_array().unwrap().len(), 1, "yan keeps the failing one alone: {mine}");
}
