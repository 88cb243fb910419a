//! The data-plane core services through a real server: every conformance suite run
//! against the server-backed clients, and a service outside the server using its handles.

use micro::data::Data;
use micro_test::{TestServer, conformance};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suites_through_the_server() {
    let s = TestServer::start().await;
    let data = Data::remote(&s.proxy(), "micro");
    conformance::store::store(data.store.clone()).await;
    conformance::config::config(data.config.clone()).await;
    conformance::sync::sync(data.sync.clone()).await;
    conformance::broker::broker(data.broker.clone()).await;
    conformance::blob::blob(data.blob.clone()).await;
    conformance::events::events(data.events.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_uses_its_handles_and_sees_only_its_namespace() {
    use futures::StreamExt;
    let s = TestServer::start().await;
    let svc = micro::Service::new("inventory").server(s.proxy()).namespace("shop");
    let (store, events, config) = (svc.store(), svc.events(), svc.config());
    let running = svc.start().await.expect("the service starts");

    store.put("sku/1", b"42".to_vec()).await.unwrap();
    assert_eq!(store.get("sku/1").await.unwrap().value, b"42");
    assert_eq!(store.scope().table, "inventory", "the table is named after the service");
    config.set("inventory.threshold", &serde_json::json!(5)).await.unwrap();
    assert_eq!(config.get_or("inventory.threshold", 0u32).await.unwrap(), 5);
    // Local layers (file, env) win over the server's values and merge with them.
    config.set("inventory.region", &serde_json::json!("eu")).await.unwrap();
    let layered = micro::data::ConfigHandle::new(Data::remote(&s.proxy(), "shop").config, "shop")
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
    let other = micro::Service::new("inventory").server(s.proxy()).namespace("rival");
    assert_eq!(other.store().get("sku/1").await.unwrap_err().code(), micro::Code::NotFound);
    assert_eq!(other.config().get("inventory").await.unwrap(), None);
    let err = other.events().read("stock", &Default::default()).await.unwrap_err();
    assert_eq!(err.code(), micro::Code::NotFound);
    // Asking for another namespace's database explicitly is refused.
    let data = Data::remote(&s.proxy(), "rival");
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
    let err = raw.read(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    drop(data);
    running.stop().await;
}
