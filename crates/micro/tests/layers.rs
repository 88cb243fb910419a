//! The shared layers on a real service and a real client: an auth hook on each side,
//! trace context and request ids reaching the handler, and deadlines.

use micro::layer::Authorize;
use micro::registry::MemoryRegistry;
use micro::{CallOptions, Code, Context, Service, Status};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Server side: only `Bearer good` gets in.
struct Check;

#[async_trait::async_trait]
impl Authorize for Check {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        match req.headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer good") => Ok(()),
            _ => Err(Status::new(Code::Unauthenticated, "guarded", "missing or bad token")),
        }
    }
}

/// Client side: attaches a token.
struct Token(&'static str);

#[async_trait::async_trait]
impl Authorize for Token {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        req.headers.insert("authorization", http::HeaderValue::from_static(self.0));
        Ok(())
    }
}

#[tokio::test]
async fn auth_trace_and_deadline_layers_on_a_real_service() {
    let registry = Arc::new(MemoryRegistry::new());
    let running = Service::new("guarded")
        .registry(registry.clone())
        .auth(Arc::new(Check))
        .handle("Guarded.Echo", |ctx: Context, _req: Value| async move {
            Ok::<_, Status>(json!({
                "trace": ctx.metadata("traceparent"),
                "id": ctx.metadata("micro-id"),
            }))
        })
        .handle("Guarded.Slow", |_ctx: Context, _req: Value| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Status>(json!({}))
        })
        .start()
        .await
        .unwrap();

    let plain = micro::Client::new(registry.clone());
    let err = plain.call_json("guarded", "Guarded.Echo", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let wrong = micro::Client::new(registry.clone()).auth(Arc::new(Token("Bearer bad")));
    assert_eq!(wrong.call_json("guarded", "Guarded.Echo", &json!({})).await.unwrap_err().code(), Code::Unauthenticated);

    let good = micro::Client::new(registry.clone()).auth(Arc::new(Token("Bearer good")));
    let reply = good.call_json("guarded", "Guarded.Echo", &json!({})).await.unwrap();
    let trace = reply["trace"].as_str().expect("the handler sees a traceparent");
    assert!(micro::layer::trace_id(trace).is_some(), "{trace}");
    assert!(reply["id"].as_str().is_some_and(|id| !id.is_empty()), "{reply}");

    // A caller's trace context is kept, not replaced.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let opts = CallOptions { metadata: vec![("traceparent".into(), given.into())], ..Default::default() };
    let body = bytes::Bytes::from_static(b"{}");
    let out = good.call_raw("guarded", "Guarded.Echo", "application/grpc+json", body, &opts).await.unwrap();
    let reply: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(reply["trace"], given);

    // The deadline travels with the call and is enforced.
    let short = good.clone().timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = short.call_json("guarded", "Guarded.Slow", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    running.stop().await;
}

#[tokio::test]
async fn bad_routes_are_refused_at_start() {
    for (route, endpoint) in [
        ("GET notes", "Guarded.Echo"),
        ("FETCH /notes", "Guarded.Echo"),
        ("GET /notes/{}", "Guarded.Echo"),
        ("GET /notes/{a b}", "Guarded.Echo"),
        ("GET /notes", "Guarded.Nope"),
    ] {
        let err = Service::new("routes")
            .registry(Arc::new(MemoryRegistry::new()))
            .handle("Guarded.Echo", |_ctx: Context, _req: Value| async move { Ok::<_, Status>(json!({})) })
            .route(route, endpoint)
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("{route} → {endpoint} was accepted"));
        assert_eq!(err.code(), Code::InvalidArgument, "{route}: {err}");
    }
}

/// Generated (tonic) clients ride the same stack: `micro::Channel` attaches the token of
/// its source, trace context and the deadline, over the network or, for an address the
/// transport serves in-process, with no connection at all.
#[tokio::test]
async fn generated_clients_share_the_client_stack_and_may_stay_in_process() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    // A real service over the network: health answers through the channel.
    let registry = Arc::new(MemoryRegistry::new());
    let running = Service::new("checked").registry(registry).start().await.unwrap();
    let address = running.address().to_string();
    let mut health = HealthClient::new(micro::Channel::new(&address, None).unwrap());
    let reply = health.check(HealthCheckRequest::default()).await.unwrap().into_inner();
    assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // An address served in-process (nothing listens on port 1): the service sees what the
    // layers added, and answers with it.
    let echo = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        let h = req.headers();
        let seen = ["authorization", "traceparent", "micro-id", "grpc-timeout"]
            .map(|k| format!("{k}={}", h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-")))
            .join(" ");
        let st = Status::new(Code::FailedPrecondition, "echo", seen);
        Ok::<_, std::convert::Infallible>(micro::frame::error_response(&st, "application/grpc"))
    });
    let transport = micro::Transport::new().local("127.0.0.1:1", micro::LocalService::new(echo));
    let token: Arc<dyn micro::data::TokenSource> = Arc::new(micro::data::StaticToken("t0k3n".into()));
    let mut local = HealthClient::new(micro::Channel::on(&transport, "127.0.0.1:1", Some(token)).unwrap());
    let mut req = tonic::Request::new(HealthCheckRequest::default());
    req.set_timeout(Duration::from_secs(3));
    let e = local.check(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let seen = e.message();
    assert!(seen.contains("authorization=Bearer t0k3n"), "{seen}");
    assert!(!seen.contains("traceparent=-") && !seen.contains("micro-id=-"), "{seen}");
    assert!(seen.contains("grpc-timeout=3"), "{seen}");

    // A channel's refusal and an unreachable address are statuses, as from a server.
    let closed = HealthClient::new(micro::Channel::new("127.0.0.1:1", None).unwrap())
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(closed.code(), tonic::Code::Unavailable, "{closed:?}");
    assert!(micro::Channel::new("not an address", None).is_err());
    running.stop().await;
}
