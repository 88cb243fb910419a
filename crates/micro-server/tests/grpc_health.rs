//! `grpc.health.v1.Health/Check` at the proxy (security issue, item 14a): standard gRPC
//! health checkers (grpc_health_probe, load balancers) ask the proxy about the services
//! behind it, so it answers for every registered service in the caller's namespace, not
//! only for the core ones it serves itself.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_core::registry::{Endpoint, Node, Service};
use micro_test::{TestServer, eventually};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn check(s: &TestServer, namespace: Option<&str>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(micro::data::channel(&s.proxy()).unwrap());
    let mut req = tonic::Request::new(HealthCheckRequest { service: service.into() });
    if let Some(ns) = namespace {
        req.metadata_mut().insert("micro-namespace", ns.parse().unwrap());
    }
    client.check(req).await.map(|r| r.into_inner().status())
}

fn greeter(address: &str) -> Service {
    Service {
        name: "helloworld".into(),
        version: "1".into(),
        endpoints: vec![Endpoint { name: "Greeter.Hello".into(), ..Default::default() }],
        nodes: vec![Node {
            id: "helloworld-1".into(),
            address: address.into(),
            metadata: [("protocol".to_string(), "grpc".to_string())].into(),
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_answers_health_checks_for_registered_services() {
    let s = TestServer::start().await;
    // Unknown before it registers: NOT_FOUND, as the health protocol has it.
    let e = check(&s, None, "helloworld.Greeter").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // A node of helloworld in micro (the check only reads the registry; nothing is called).
    s.server.registry().register("micro", &greeter("127.0.0.1:1"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(check(&s, None, "helloworld.Greeter").await.unwrap(), ServingStatus::Serving);
    assert_eq!(check(&s, Some("micro"), "helloworld.Greeter").await.unwrap(), ServingStatus::Serving);
    // A handler the service does not have, and other namespaces, are unknown.
    assert_eq!(check(&s, None, "helloworld.Nope").await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(check(&s, Some("alpha"), "helloworld.Greeter").await.unwrap_err().code(), tonic::Code::NotFound);

    // The server's own answers are as before: the core services and the whole server.
    assert_eq!(check(&s, None, "registry.Registry").await.unwrap(), ServingStatus::Serving);
    assert_eq!(check(&s, None, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(check(&s, None, "nothing.Here").await.unwrap_err().code(), tonic::Code::NotFound);

    // Unknown again once it deregisters (when the proxy's registry watch has seen it).
    s.server.registry().deregister("micro", &greeter("127.0.0.1:1")).await.unwrap();
    let gone = eventually(Duration::from_secs(5), || async {
        check(&s, None, "helloworld.Greeter").await.is_err_and(|e| e.code() == tonic::Code::NotFound)
    });
    assert!(gone.await, "still answered for after deregistering");
}
