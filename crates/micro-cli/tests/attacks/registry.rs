//! Defect 1 (critical): anyone added a node to another namespace's service and received
//! its callers' requests with their bearer tokens, the micro admin's included.

use super::*;
use micro::{Code, Context, Status};
use micro_test::process::ServerProcess;
use micro_test::recorder::Recorder;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_adds_a_node_to_anothers_service_and_nodes_capture_no_usable_token() {
    let s = ServerProcess::start(&micro(), &[]);
    let trap = Recorder::start(&[]).await;
    // The victim: blog's vault, registered by its own service account.
    let vault = s
        .service("blog", "vault")
        .await
        .handle("Vault.Get", |_ctx: Context, _req: Value| async move { Ok::<_, Status>(json!({ "secret": "v" })) })
        .start()
        .await
        .expect("vault starts");
    let mallory = s.account("blog", "mallory", "user", &[]).await;
    let shop_admin = s.account("shop", "boss", "user", &["admin"]).await;

    // Anonymous, another namespace's admin, and a member of blog who does not own the
    // name: none adds a node to vault, for gRPC or for the gateway's HTTP routing.
    let attackers = [
        ("anonymous", None, Code::Unauthenticated),
        ("shop's admin", Some(shop_admin.as_str()), Code::PermissionDenied),
        ("a member of blog", Some(mallory.as_str()), Code::PermissionDenied),
    ];
    for (who, token, want) in attackers {
        for protocol in ["grpc", "http"] {
            let node = format!("evil-{protocol}");
            let err = register(&s.proxy, token, "blog", "vault", &node, &trap.address, protocol).await.unwrap_err();
            assert_eq!(err.code(), want, "{who} adds a {protocol} node to vault: {err}");
        }
    }
    let listed = micro::registry::RemoteRegistry::new(&s.proxy).unwrap().get_service("blog", "vault").await.unwrap();
    assert_eq!(listed.iter().map(|s| s.nodes.len()).sum::<usize>(), 1, "only vault's own node: {listed:?}");

    // The admin of micro calls vault through the proxy and the gateway: the real node
    // answers every time and the trap hears nothing.
    let admin = s.admin_token().await;
    let bearer = format!("Bearer {admin}");
    for _ in 0..10 {
        let reply = client(&s.proxy, "blog", Some(&admin)).call_json("vault", "Vault.Get", &json!({})).await.unwrap();
        assert_eq!(reply["secret"], "v");
        let headers = [("micro-namespace", "blog"), ("authorization", bearer.as_str())];
        let r = micro_test::http(&s.api, "POST", "/vault/get", &headers, b"{}").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(trap.requests().is_empty(), "the trap captured {:?}", trap.requests());

    // Mallory registers a service of her own (she may) and lures the admin into calling
    // it: her node gets a token for that one service, useless anywhere else.
    register(&s.proxy, Some(&mallory), "blog", "lure", "lure-1", &trap.address, "grpc").await.unwrap();
    register(&s.proxy, Some(&mallory), "blog", "lure-web", "lure-web-1", &format!("http://{}", trap.address), "http")
        .await
        .unwrap();
    let err = client(&s.proxy, "blog", Some(&admin)).call_json("lure", "Lure.Get", &json!({})).await;
    assert!(err.is_err(), "the trap's answer is no reply");
    let headers = [("micro-namespace", "blog"), ("authorization", bearer.as_str())];
    let r = micro_test::http(&s.api, "GET", "/lure-web/page", &headers, b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let captured = trap.header_values("authorization");
    assert_eq!(captured.len(), 2, "one delegated token per call: {captured:?}");
    for got in captured {
        let token = got.trim_start_matches("Bearer ");
        assert_ne!(token, admin, "the admin's own token reached a node");
        let (store, accounts) = core_codes(&s.proxy, "blog", token).await;
        assert_eq!(store, Some(Code::Unauthenticated), "a captured token read blog's store");
        assert_eq!(accounts, Some(Code::Unauthenticated), "a captured token listed blog's accounts");
        let err = client(&s.proxy, "blog", Some(token)).call_json("vault", "Vault.Get", &json!({})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "a captured token called vault: {err}");
        let (store, _) = core_codes(&s.proxy, "micro", token).await;
        assert_eq!(store, Some(Code::Unauthenticated), "a captured token read micro's store");
    }
    vault.stop().await;
}

/// Registration flooding and oversized registrations: refused with a clear error, and the
/// server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_registrations_are_refused() {
    let s = ServerProcess::start(&micro(), &[]);
    let mallory = s.account("blog", "mallory", "user", &[]).await;
    for (what, address) in [
        ("no port", "127.0.0.1".to_string()),
        ("a huge address", format!("{}:1", "a".repeat(100_000))),
        ("the metadata endpoint", "169.254.169.254:80".to_string()),
        ("the proxy itself", s.proxy.clone()),
    ] {
        let r = register(&s.proxy, Some(&mallory), "blog", "junk", "junk-1", &address, "grpc").await;
        assert!(r.is_err(), "{what} was registered");
    }
    let huge = "x".repeat(5 * 1024 * 1024);
    let r = register(&s.proxy, Some(&mallory), "blog", &huge, "junk-2", "127.0.0.1:9", "grpc").await;
    assert!(r.is_err(), "a 5 MiB name was registered");
    // Still serving.
    register(&s.proxy, Some(&mallory), "blog", "fine", "fine-1", "127.0.0.1:9", "grpc").await.expect("serves");
}
