//! A service's own account: it logs in at start and its token goes with its calls, where
//! the callee verifies it locally with the server's public keys.

use micro::auth::token::{PublicKeys, Verifier};
use micro::layer::Authorize;
use micro::proto::auth as pb;
use micro::{Code, Context, Service, Status};
use micro_test::TestServer;
use serde_json::{Value, json};
use std::sync::Arc;

/// Lets in callers with a valid service token (their own, or one delegated to
/// `micro/ledger`), naming them in `micro-account`.
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
        let claims = self.0.verify_for(token, "micro/ledger")?;
        if claims.typ != "service" {
            return Err(Status::new(Code::PermissionDenied, "ledger", "services only"));
        }
        req.headers.insert("micro-account", claims.sub.parse().map_err(|_| Status::internal("ledger", "id"))?);
        Ok(())
    }
}

async fn verifier_of(s: &TestServer) -> Verifier {
    let keys = auth_client(s).await.public_keys(pb::PublicKeysRequest {}).await.expect("keys").into_inner().json;
    Verifier::new(&serde_json::from_str::<PublicKeys>(&keys).expect("keys json")).expect("a verifier")
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
    let ledger = s
        .service("micro", "ledger")
        .await
        .auth(Arc::new(ServicesOnly(verifier)))
        .handle("Ledger.Who", |ctx: Context, _req: Value| async move {
            Ok::<_, Status>(json!({ "caller": ctx.metadata("micro-account") }))
        })
        .handle("Ledger.Token", |ctx: Context, _req: Value| async move {
            let token = ctx.metadata("authorization").unwrap_or_default();
            Ok::<_, Status>(json!({ "token": token.trim_start_matches("Bearer ") }))
        })
        .start()
        .await
        .unwrap();

    // A service with credentials: logged in at start, its client sends the token.
    let billing = Service::new("invoicer").server(s.proxy()).credentials("billing-svc", "billing-secret-1");
    let billing = billing.start().await.expect("logs in and starts");
    let reply = billing.client().call_json("ledger", "Ledger.Who", &json!({})).await.unwrap();
    assert_eq!(reply["caller"], "billing-svc");

    // The ledger's node got a token delegated to the ledger alone, not billing's own:
    // the core refuses it.
    let delegated = billing.client().call_json("ledger", "Ledger.Token", &json!({})).await.unwrap();
    let delegated = delegated["token"].as_str().expect("the token the ledger got").to_string();
    let claims = verifier_of(&s).await.verify_for(&delegated, "micro/ledger").expect("for the ledger");
    assert_eq!((claims.sub.as_str(), claims.aud.as_deref()), ("billing-svc", Some("micro/ledger")));
    let mut req = tonic::Request::new(pb::ListAccountsRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {delegated}").parse().unwrap());
    let err = auth.list_accounts(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // Without credentials: refused.
    let anonymous = s.service("micro", "anon").await.start().await.unwrap();
    let err = micro::Client::new(Arc::new(micro::registry::RemoteRegistry::new(&s.proxy()).unwrap()))
        .call_json("ledger", "Ledger.Who", &json!({}))
        .await
        .unwrap_err();
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
