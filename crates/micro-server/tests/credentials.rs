//! A service's own account: it logs in at start and its token goes with its calls, where
//! the callee verifies it locally with the server's public keys.

use micro::auth::token::{PublicKeys, Verifier};
use micro::layer::Authorize;
use micro::proto::auth as pb;
use micro::{Code, Context, Service, Status};
use micro_test::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;

/// Lets in callers with a valid service token, naming them in `micro-account`.
struct ServicesOnly(Verifier);

#[async_trait::async_trait]
impl Authorize for ServicesOnly {
    async fn authorize(&self, req: &mut http::request::Parts) -> Result<(), Status> {
        let token = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::new(Code::Unauthenticated, "ledger", "a token is required"))?;
        let claims = self.0.verify(token)?;
        if claims.typ != "service" {
            return Err(Status::new(Code::PermissionDenied, "ledger", "services only"));
        }
        req.headers.insert("micro-account", claims.sub.parse().map_err(|_| Status::internal("ledger", "id"))?);
        Ok(())
    }
}

async fn auth_client(s: &TestServer) -> pb::auth_client::AuthClient<micro::data::Ch> {
    pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).expect("a channel"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_calls_with_its_own_token_verified_locally() {
    let s = TestServer::start().await;
    // The admin creates the service's account.
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    let mut auth = auth_client(&s).await;
    let admin = auth
        .token(pb::TokenRequest { id: "admin".into(), secret: password.trim().into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut req = tonic::Request::new(pb::GenerateRequest {
        id: "billing-svc".into(),
        r#type: "service".into(),
        secret: "billing-secret-1".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {}", admin.access_token).parse().unwrap());
    auth.generate(req).await.unwrap();

    // The callee verifies tokens locally with the published keys.
    let keys = auth.public_keys(pb::PublicKeysRequest {}).await.unwrap().into_inner().json;
    let verifier = Verifier::new(&serde_json::from_str::<PublicKeys>(&keys).unwrap()).unwrap();
    let ledger = Service::new("ledger")
        .server(s.proxy())
        .auth(Arc::new(ServicesOnly(verifier)))
        .handle("Ledger.Who", |ctx: Context, _req: Value| async move {
            Ok::<_, Status>(json!({ "caller": ctx.metadata("micro-account") }))
        })
        .start()
        .await
        .unwrap();

    // A service with credentials: logged in at start, its client sends the token.
    let billing = Service::new("billing").server(s.proxy()).credentials("billing-svc", "billing-secret-1");
    let billing = billing.start().await.expect("logs in and starts");
    let reply = billing.client().call_json("ledger", "Ledger.Who", &json!({})).await.unwrap();
    assert_eq!(reply["caller"], "billing-svc");

    // Without credentials: refused.
    let anonymous = Service::new("anon").server(s.proxy()).start().await.unwrap();
    let err = anonymous.client().call_json("ledger", "Ledger.Who", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Wrong credentials: the service does not start, with a clear error.
    let err = Service::new("bad").server(s.proxy()).credentials("billing-svc", "not-the-secret").start().await.err();
    let err = err.expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.detail().contains("logging in as billing-svc"), "{err}");

    anonymous.stop().await;
    billing.stop().await;
    ledger.stop().await;
}
