//! Defect 5 (medium): a deleted account's access token worked until it expired (and
//! created a new admin); a deleted namespace's admin token still read data and created
//! accounts.

use super::*;
use micro::Code;
use micro::proto::auth as pb;
use micro_test::process::ServerProcess;

/// `msg` with `token` and `ns` as metadata.
fn request<T>(msg: T, token: &str, ns: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    req
}

async fn make_admin(proxy: &str, token: &str, ns: &str, id: &str) -> Option<Code> {
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"));
    let msg = pb::GenerateRequest {
        id: id.into(),
        r#type: "user".into(),
        secret: "a-long-enough-secret".into(),
        scopes: vec!["admin".into()],
        ..Default::default()
    };
    auth.generate(request(msg, token, ns)).await.err().map(|e| micro::status::from_tonic(&e).code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_account_or_a_namespace_ends_its_tokens_at_once() {
    let s = ServerProcess::start(&micro(), &[]);
    let root = s.admin_token().await;
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy).expect("channel"));

    // An admin of blog, deleted while holding a token.
    let mallory = s.account("blog", "mallory", "user", &["admin"]).await;
    assert_eq!(core_codes(&s.proxy, "blog", &mallory).await, (None, None), "good before");
    auth.delete_account(request(pb::DeleteAccountRequest { id: "mallory".into() }, &root, "blog")).await.unwrap();
    assert_eq!(
        core_codes(&s.proxy, "blog", &mallory).await,
        (Some(Code::Unauthenticated), Some(Code::Unauthenticated)),
        "a deleted account's token"
    );
    assert_eq!(make_admin(&s.proxy, &mallory, "blog", "backdoor").await, Some(Code::Unauthenticated));
    let err = client(&s.proxy, "blog", Some(&mallory)).call_json("anything", "X.Y", &serde_json::json!({})).await;
    assert_eq!(err.map_err(|e| e.code()).err(), Some(Code::Unauthenticated), "nor through the proxy");
    let bearer = format!("Bearer {mallory}");
    let r = micro_test::http(&s.api, "POST", "/store/store/list", &[("authorization", &bearer)], b"{}").await;
    assert_eq!(r.status, 401, "nor through the gateway: {}", r.body);

    // A namespace deleted while its admin holds a token.
    auth.create_namespace(request(pb::CreateNamespaceRequest { name: "shop".into() }, &root, "micro")).await.unwrap();
    let keeper = s.account("shop", "keeper", "user", &["admin"]).await;
    assert_eq!(make_admin(&s.proxy, &keeper, "shop", "helper").await, None, "good before");
    auth.delete_namespace(request(pb::DeleteNamespaceRequest { name: "shop".into() }, &root, "micro")).await.unwrap();
    assert_eq!(
        core_codes(&s.proxy, "shop", &keeper).await,
        (Some(Code::Unauthenticated), Some(Code::Unauthenticated)),
        "a deleted namespace's admin"
    );
    assert_eq!(make_admin(&s.proxy, &keeper, "shop", "backdoor").await, Some(Code::Unauthenticated));

    // A new account of the re-created name works at once (its tokens are issued after the
    // revocation, even within the same second).
    let fresh = s.account("shop", "newcomer", "user", &["admin"]).await;
    assert_eq!(make_admin(&s.proxy, &fresh, "shop", "helper2").await, None, "a new account works");
}
