//! The data-plane core services through a real server: every conformance suite run
//! against the server-backed clients, and a service outside the server using its handles.

use micro::data::Data;
use micro_conformance as conformance;
use micro_test::TestServer;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suites_through_the_server() {
    let s = TestServer::start().await;
    // The data services need the admin of the namespace; the admin of micro acts in all.
    let data = s.admin_data("micro").await;
    conformance::store::store(data.store.clone()).await;
    conformance::config::config(data.config.clone()).await;
    conformance::sync::sync(data.sync.clone()).await;
    conformance::broker::broker(data.broker.clone()).await;
    conformance::blob::blob(data.blob.clone()).await;
    conformance::events::events(data.events.clone()).await;
    let token = micro::data::StaticToken(s.admin_token().await);
    let registry = micro::registry::RemoteRegistry::with_token(&s.proxy(), Some(std::sync::Arc::new(token))).unwrap();
    conformance::registry::registry(std::sync::Arc::new(registry)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_uses_its_handles_and_sees_only_its_namespace() {
    use futures::StreamExt;
    let s = TestServer::start().await;
    // Each namespace's service has its own account, admin of its namespace.
    s.create_account("shop", "inventory", "inventory-secret", "service", &["admin"]).await;
    s.create_account("rival", "inventory", "rival-secret-1", "service", &["admin"]).await;
    let svc = micro::Service::new("inventory")
        .server(s.proxy())
        .namespace("shop")
        .credentials("inventory", "inventory-secret");
    let (store, events, config) = (svc.store(), svc.events(), svc.config());
    let running = svc.start().await.expect("the service starts");

    store.put("sku/1", b"42".to_vec()).await.unwrap();
    assert_eq!(store.get("sku/1").await.unwrap().value, b"42");
    assert_eq!(store.scope().table, "inventory", "the table is named after the service");
    config.set("inventory.threshold", &serde_json::json!(5)).await.unwrap();
    assert_eq!(config.get_or("inventory.threshold", 0u32).await.unwrap(), 5);
    // Local layers (file, env) win over the server's values and merge with them.
    config.set("inventory.region", &serde_json::json!("eu")).await.unwrap();
    let layered = micro::data::ConfigHandle::new(s.admin_data("shop").await.config, "shop")
        .with_overlay(serde_json::json!({"inventory": {"threshold": 9}}));
    assert_eq!(layered.get_or("inventory.threshold", 0u32).await.unwrap(), 9);
    assert_eq!(layered.get("inventory").await.unwrap(), Some(serde_json::json!({"threshold": 9, "region": "eu"})));
    let mut deliveries = events
        .consume("stock", &micro_core::events::ConsumeOptions { auto_ack: true, ..Default::default() })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    events.publish("stock", &serde_json::json!({"sku": 1})).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(d.event.payload, br#"{"sku":1}"#);

    // Another namespace sees none of it.
    let other = micro::Service::new("inventory")
        .server(s.proxy())
        .namespace("rival")
        .credentials("inventory", "rival-secret-1");
    let other_running = other.start().await.expect("logs in to rival");
    let rival_token = micro_test::login(&s.proxy(), "rival", "inventory", "rival-secret-1").await;
    let rival = Data::remote_with(
        &s.proxy(),
        "rival",
        Some(std::sync::Arc::new(micro::data::StaticToken(rival_token.clone()))),
    );
    let rival_table = micro_core::store::Table::new("rival", "inventory");
    let q = micro_core::store::Query::default();
    assert_eq!(rival.store.read(&rival_table, "sku/1", &q).await.unwrap_err().code(), micro::Code::NotFound);
    assert_eq!(rival.config.get("rival", "inventory", false).await.unwrap(), None);
    let err = rival.events.read("rival", "stock", &Default::default()).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::NotFound);
    // Reaching into shop with rival's token is refused outright.
    let shop_table = micro_core::store::Table::new("shop", "inventory");
    let err = rival.store.read(&shop_table, "sku/1", &q).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::PermissionDenied, "{err}");
    let err = rival.config.get("shop", "inventory", false).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::PermissionDenied, "{err}");
    // Without a token the data services refuse.
    let anonymous = Data::remote(&s.proxy(), "shop");
    let err = anonymous.store.read(&shop_table, "sku/1", &q).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::Unauthenticated, "{err}");
    other_running.stop().await;
    // Asking, in its own namespace, for another namespace's database is refused too.
    let shop = micro_core::store::Table::new("shop", "inventory");
    let mut req_as_rival = micro::proto::store::ReadRequest {
        key: "sku/1".into(),
        options: Some(micro::proto::options_of(&Default::default(), &shop)),
    };
    req_as_rival.options.as_mut().unwrap().database = "shop".into();
    let channel = micro::data::channel(&s.proxy()).unwrap();
    let mut raw = micro::proto::store::store_client::StoreClient::new(channel);
    let mut req = tonic::Request::new(req_as_rival);
    req.metadata_mut().insert("micro-namespace", "rival".parse().unwrap());
    req.metadata_mut().insert("authorization", format!("Bearer {rival_token}").parse().unwrap());
    let err = raw.read(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    running.stop().await;
}
