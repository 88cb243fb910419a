//! Two `micro server` nodes sharing PostgreSQL and NATS (`MICRO_BACKEND=postgres://…,nats://…`):
//! the store passes its conformance suite through a node, a record written through one
//! node is read through the other, an account made on one logs in on the other, tokens are
//! good on both, a lock is exclusive across both, an event published on one is consumed by
//! a group with a member on each, a broker message crosses over, and a service registered
//! through one is called through the other's proxy and gateway, and config (secrets
//! included) set through one is read through the other, and a rule made through one applies
//! on the other. Then two nodes with the
//! store and locks in Redis. Each run gets a PostgreSQL schema of its own, dropped at the end.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_conformance as conformance;
use micro_core::store::{Query, Record, Table};
use micro_test::TestServer;

/// The database for tests (`MICRO_TEST_POSTGRES`), or a notice and `None`.
fn url() -> Option<String> {
    micro_test::backend_url("MICRO_TEST_POSTGRES")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_records_and_accounts() {
    let Some(base) = url() else { return };
    let schema = micro_test::PgSchema::create(&base, &format!("micro_test_{}", std::process::id())).await;
    let url = schema.url.clone();
    let nats = micro_test::backend_url("MICRO_TEST_NATS");
    let start = || {
        let url = url.clone();
        let nats = nats.clone().map(micro_server::Secret);
        TestServer::start_with(move |c| {
            c.backends.database = Some(micro_server::Secret(url));
            c.backends.events = nats.clone();
            c.backends.broker = nats;
            c.backends.config_key = Some([7; 32]);
            c.admin_password = Some(micro_server::Secret("shared-admin-password".into()));
        })
    };
    let (a, b) = (start().await, start().await);
    let data = |s: &TestServer, token: String| {
        micro::data::Data::remote_with(&s.proxy(), "micro", Some(std::sync::Arc::new(micro::data::StaticToken(token))))
    };
    let (ta, tb) = (
        micro_test::login(&a.proxy(), "micro", "admin", "shared-admin-password").await,
        micro_test::login(&b.proxy(), "micro", "admin", "shared-admin-password").await,
    );
    let (da, db) = (data(&a, ta.clone()), data(&b, tb.clone()));

    // The store and the registry (kept in PostgreSQL) through node A pass their suites.
    conformance::store::store(da.store.clone()).await;
    let token =
        Some(std::sync::Arc::new(micro::data::StaticToken(ta.clone())) as std::sync::Arc<dyn micro::data::TokenSource>);
    let registry = micro::registry::RemoteRegistry::with_token(&a.proxy(), token).unwrap();
    conformance::registry::registry(std::sync::Arc::new(registry)).await;

    // Written through A, read and deleted through B.
    let t = Table::new("micro", "shared");
    da.store.write(&t, &Record::new("greeting", b"hello from a".to_vec()), None).await.unwrap();
    assert_eq!(db.store.read(&t, "greeting", &Query::default()).await.unwrap()[0].value, b"hello from a");
    db.store.delete(&t, "greeting").await.unwrap();
    assert!(da.store.read(&t, "greeting", &Query::default()).await.is_err(), "deleted through B, gone on A");

    // Each node's tokens are good on the other (the nodes share their public keys).
    let a_token_on_b = data(&b, ta.clone());
    a_token_on_b.store.write(&t, &Record::new("by-a-token", b"1".to_vec()), None).await.unwrap();
    let b_token_on_a = data(&a, tb.clone());
    let ok = micro_test::eventually(std::time::Duration::from_secs(10), || {
        let d = b_token_on_a.clone();
        let t = t.clone();
        async move { d.store.read(&t, "by-a-token", &Query::default()).await.is_ok() }
    })
    .await;
    assert!(ok, "B's token is accepted by A");

    // An account made on A logs in on B; the auth data is not reachable as store records.
    a.create_account("alpha", "pat", "pat-secret-1", "user", &[]).await;
    let token = micro_test::login(&b.proxy(), "alpha", "pat", "pat-secret-1").await;
    assert!(!token.is_empty());
    let dbs = da.store.databases().await.unwrap();
    assert!(!dbs.iter().any(|d| d.contains("auth")), "auth data stays out of the store: {dbs:?}");

    // An object put through A is read through B.
    let chunks = futures::StreamExt::boxed(futures::stream::iter([Ok(bytes::Bytes::from_static(b"shared object"))]));
    da.blob.put("micro", "shared", "a.txt", "text/plain", chunks).await.unwrap();
    let (info, mut body) = db.blob.get("micro", "shared", "a.txt").await.unwrap();
    assert_eq!(info.size, 13);
    let first = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
    assert_eq!(&first[..], b"shared object");

    // A lock taken through A is held for B.
    let held = da
        .sync
        .lock("micro", "nodes-lock", std::time::Duration::from_secs(5), std::time::Duration::ZERO)
        .await
        .unwrap();
    let err = db
        .sync
        .lock("micro", "nodes-lock", std::time::Duration::from_secs(5), std::time::Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.code(), micro_core::Code::DeadlineExceeded, "{err}");
    da.sync.unlock("micro", &held).await.unwrap();
    let held = db
        .sync
        .lock("micro", "nodes-lock", std::time::Duration::from_secs(5), std::time::Duration::from_secs(1))
        .await
        .unwrap();
    db.sync.unlock("micro", &held).await.unwrap();

    if nats.is_some() {
        events_cross_nodes(&da, &db).await;
    }

    // Config set through A, secrets included, is read through B.
    let value = serde_json::json!({"url": "https://example.com", "retries": 3});
    da.config.set("micro", "shared.app", &value, false).await.unwrap();
    da.config.set("micro", "shared.app.password", &serde_json::json!("hunter2"), true).await.unwrap();
    let got = db.config.get("micro", "shared.app", true).await.unwrap().unwrap();
    assert_eq!((got["url"].clone(), got["password"].clone()), (value["url"].clone(), serde_json::json!("hunter2")));
    let masked = db.config.get("micro", "shared.app.password", false).await.unwrap().unwrap();
    assert_ne!(masked, serde_json::json!("hunter2"), "secrets stay masked unless asked for");

    // A service registered through A is callable through B's proxy and gateway.
    let svc = a
        .service("micro", "greeter")
        .await
        .handle("Greeter.Hello", |_ctx: micro::Context, req: serde_json::Value| async move {
            Ok::<_, micro::Status>(
                serde_json::json!({ "message": format!("hello {}", req["name"].as_str().unwrap_or("")) }),
            )
        })
        .start()
        .await
        .unwrap();
    let reply = micro::Client::via_proxy(b.proxy())
        .call_json("greeter", "Greeter.Hello", &serde_json::json!({"name": "via b"}))
        .await
        .unwrap();
    assert_eq!(reply["message"], "hello via b");
    let r = micro_test::http(&b.api(), "POST", "/greeter/hello", &[], br#"{"name":"gateway b"}"#).await;
    assert_eq!(r.json()["message"], "hello gateway b", "{}", r.body);

    // A rule made through A applies on B at once (B's cached rules are dropped): A opens
    // registering to anyone, and B lets anyone register; then only accounts may again.
    let mut auth = micro::proto::auth::auth_client::AuthClient::new(micro::data::channel(&a.proxy()).unwrap());
    let rule = |id: &str, scope: &str, resource: &str, access: &str, priority: i32| micro::proto::auth::Rule {
        id: id.into(),
        scope: scope.into(),
        resource: resource.into(),
        access: access.into(),
        priority,
    };
    micro_test::create_rule(&a.proxy(), &ta, "micro", rule("reg-open", "", "service:registry:*", "granted", 5)).await;
    let opened = micro_test::eventually(std::time::Duration::from_secs(5), || async {
        match micro::Service::new("early").server(b.proxy()).start().await {
            Ok(early) => {
                early.stop().await;
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(opened, "B lets anyone register once A opened it");
    for (id, scope, access, priority) in [("reg-lock", "", "denied", 10), ("reg-accounts", "*", "granted", 20)] {
        let rule = rule(id, scope, "service:registry:Registry.Register", access, priority);
        micro_test::create_rule(&a.proxy(), &ta, "micro", rule).await;
    }
    let locked = micro_test::eventually(std::time::Duration::from_secs(5), || async {
        micro::Service::new("late").server(b.proxy()).start().await.is_err()
    })
    .await;
    assert!(locked, "a rule made through A applies on B");
    svc.stop().await;
    let gone = micro_test::eventually(std::time::Duration::from_secs(5), || async {
        micro_test::http(&b.api(), "POST", "/greeter/hello", &[], b"{}").await.status == 404
    })
    .await;
    assert!(gone, "deregistered through A, gone on B");

    // Deleting an account through A voids its tokens on B within about a second.
    a.create_account("alpha", "rev", "rev-secret-1", "user", &["admin"]).await;
    let rev = micro_test::login(&a.proxy(), "alpha", "rev", "rev-secret-1").await;
    let rev_on_b = micro::data::Data::remote_with(
        &b.proxy(),
        "alpha",
        Some(std::sync::Arc::new(micro::data::StaticToken(rev.clone()))),
    );
    let alpha = Table::new("alpha", "shared");
    rev_on_b.store.write(&alpha, &Record::new("k", b"1".to_vec()), None).await.expect("good on B");
    let mut req = tonic::Request::new(micro::proto::auth::DeleteAccountRequest { id: "rev".into() });
    req.metadata_mut().insert("authorization", format!("Bearer {ta}").parse().unwrap());
    req.metadata_mut().insert("micro-namespace", "alpha".parse().unwrap());
    auth.delete_account(req).await.unwrap();
    let revoked = micro_test::eventually(std::time::Duration::from_secs(3), || async {
        rev_on_b
            .store
            .read(&alpha, "k", &Query::default())
            .await
            .is_err_and(|e| e.code() == micro_core::Code::Unauthenticated)
    })
    .await;
    assert!(revoked, "a deleted account's token still works on B");

    a.server.stop().await;
    b.server.stop().await;
    schema.drop().await;
}

/// An event published through A reaches a group with a member on each node (each event
/// once, both members busy); a broker message published on A reaches B's subscriber.
async fn events_cross_nodes(da: &micro::data::Data, db: &micro::data::Data) {
    use futures::StreamExt;
    use micro_core::events::{ConsumeOptions, Message, Offset};
    let topic = format!("orders-{}", std::process::id());
    let options = ConsumeOptions { group: "billing".into(), offset: Offset::First, ..ConsumeOptions::default() };
    let (mut on_a, mut on_b) = (
        da.events.consume("micro", &topic, &options).await.unwrap(),
        db.events.consume("micro", &topic, &options).await.unwrap(),
    );
    for n in 0..20 {
        let m = Message { payload: format!("{{\"n\":{n}}}").into_bytes(), ..Message::default() };
        da.events.publish("micro", &topic, &m).await.unwrap();
    }
    async fn drain(
        s: &mut micro_core::BoxStream<Result<micro_core::events::Delivery, micro_core::Status>>,
    ) -> Vec<u64> {
        let mut got = Vec::new();
        while let Ok(Some(d)) = tokio::time::timeout(std::time::Duration::from_millis(1500), s.next()).await {
            let d = d.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            d.ack().await.unwrap();
            got.push(d.event.seq);
        }
        got
    }
    let (got_a, got_b) = futures::join!(drain(&mut on_a), drain(&mut on_b));
    let mut all: Vec<u64> = got_a.iter().chain(&got_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=20).collect::<Vec<_>>(), "each event once across the nodes: {got_a:?} + {got_b:?}");
    assert!(!got_a.is_empty() && !got_b.is_empty(), "both nodes' members work: {got_a:?} / {got_b:?}");
    let history = db.events.read("micro", &topic, &Default::default()).await.unwrap();
    assert_eq!(history.len(), 20, "B reads the history published through A");

    let mut sub = db.broker.subscribe("micro", &topic, None).await.unwrap();
    // The subscription reaches NATS asynchronously: publish until one arrives.
    let mut published = false;
    for _ in 0..25 {
        let m = micro_core::broker::Message { topic: topic.clone(), payload: b"ping".to_vec(), ..Default::default() };
        da.broker.publish("micro", &m).await.unwrap();
        if let Ok(Some(Ok(got))) = tokio::time::timeout(std::time::Duration::from_millis(200), sub.next()).await {
            assert_eq!(got.payload, b"ping");
            published = true;
            break;
        }
    }
    assert!(published, "a broker message published on A reaches a subscriber on B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_redis_store_and_locks() {
    let Some(redis) = micro_test::backend_url("MICRO_TEST_REDIS") else { return };
    let start = || {
        let redis = micro_server::Secret(redis.clone());
        TestServer::start_with(move |c| {
            c.backends.store = Some(redis.clone());
            c.backends.sync = Some(redis);
        })
    };
    let (a, b) = (start().await, start().await);
    let (da, db) = (a.admin_data("micro").await, b.admin_data("micro").await);
    let t = Table::new("micro", format!("redis-{}", std::process::id()));
    da.store.write(&t, &Record::new("k", b"from a".to_vec()), Some(std::time::Duration::from_secs(60))).await.unwrap();
    let r = db.store.read(&t, "k", &Query::default()).await.unwrap();
    assert_eq!(r[0].value, b"from a", "a record written through A is read through B");
    assert!(r[0].expiry.is_some(), "with its TTL");
    db.store.delete(&t, "k").await.unwrap();
    let id = format!("redis-lock-{}", std::process::id());
    let held = da.sync.lock("micro", &id, std::time::Duration::from_secs(5), std::time::Duration::ZERO).await.unwrap();
    let err = db
        .sync
        .lock("micro", &id, std::time::Duration::from_secs(5), std::time::Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.code(), micro_core::Code::DeadlineExceeded, "{err}");
    da.sync.unlock("micro", &held).await.unwrap();
    a.server.stop().await;
    b.server.stop().await;
}
