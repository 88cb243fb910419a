//! Distributed through a real `micro server`: hosted in-process (the default) and run on
//! its own as its binary, serving two namespaces that never see each other's notes.

use micro_test::TestServer;
use serde_json::{Value, json};

/// Calls `endpoint` at the gateway with `token`, asking for namespace `ns` when given.
async fn call(s: &TestServer, token: Option<&str>, ns: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    micro_test::post_json(&s.api(), token, ns, path, &body).await
}

/// Two namespaces, each with two members, and their tokens.
async fn tenants(s: &TestServer) -> [String; 3] {
    let admin = s.admin_token().await;
    let mut tokens = Vec::new();
    for (ns, id) in [("shop", "sam"), ("shop", "sue"), ("blog", "bea")] {
        let secret = format!("{id}-secret-1");
        micro_test::create_account(&s.proxy(), &admin, ns, (id, &secret), "user", &[]).await;
        tokens.push(micro_test::login(&s.proxy(), ns, id, &secret).await);
    }
    tokens.try_into().expect("three tokens")
}

/// What every namespace may and may not do with the notes, through the gateway.
async fn notes_per_namespace(s: &TestServer, [sam, sue, bea]: &[String; 3]) {
    // Anonymous callers get nothing.
    let (status, body) = call(s, None, Some("shop"), "/distributed/notes/list", json!({})).await;
    assert_eq!(status, 401, "{body}");
    // Sam writes a note in shop; his colleague sees it, blog does not.
    let (status, note) = call(
        s,
        Some(sam),
        None,
        "/distributed/notes/create",
        json!({"title": "stock", "body": "*count*", "tags": ["ops"]}),
    )
    .await;
    assert_eq!(status, 200, "{note}");
    assert_eq!((note["author"].as_str(), note["title"].as_str()), (Some("sam"), Some("stock")));
    let id = note["id"].as_str().expect("an id").to_string();
    let (_, listed) = call(s, Some(sue), None, "/distributed/notes/list", json!({})).await;
    assert_eq!(listed["notes"].as_array().map(Vec::len), Some(1), "{listed}");
    let (_, listed) = call(s, Some(bea), None, "/distributed/notes/list", json!({})).await;
    assert_eq!(listed["notes"].as_array().map(Vec::len), Some(0), "blog sees none of shop's notes: {listed}");
    let (status, _) = call(s, Some(bea), None, "/distributed/notes/get", json!({"id": id})).await;
    assert_eq!(status, 404, "blog cannot read shop's note by id");
    // Asking for another namespace is refused.
    let (status, body) = call(s, Some(bea), Some("shop"), "/distributed/notes/list", json!({})).await;
    assert_eq!(status, 403, "{body}");
    // A colleague edits; only the author (or an admin) deletes.
    let (status, edited) = call(s, Some(sue), None, "/distributed/notes/update", json!({"id": id, "body": "42"})).await;
    assert_eq!((status, edited["body"].as_str()), (200, Some("42")), "{edited}");
    let (status, _) = call(s, Some(sue), None, "/distributed/notes/delete", json!({"id": id})).await;
    assert_eq!(status, 403);
    // Bad input: a clear 400, and the note is still there.
    for bad in [
        json!({"title": ""}),
        json!({"title": "x".repeat(201)}),
        json!({"title": "x", "colour": "red"}),
        json!({"title": "x", "tags": [""]}),
        json!({"title": 5}),
    ] {
        let (status, body) = call(s, Some(sam), None, "/distributed/notes/create", bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = call(s, Some(sam), None, "/distributed/notes/get", json!({"id": "../blog/x"})).await;
    assert_eq!(status, 400);
    let (_, listed) = call(s, Some(sam), None, "/distributed/notes/list", json!({"tag": "ops"})).await;
    assert_eq!(listed["notes"][0]["body"], "42", "{listed}");
    // Deleting as the author.
    let (status, _) = call(s, Some(sam), None, "/distributed/notes/delete", json!({"id": id})).await;
    assert_eq!(status, 204, "an empty reply");
    let (_, listed) = call(s, Some(sue), None, "/distributed/notes/list", json!({})).await;
    assert_eq!(listed["notes"].as_array().map(Vec::len), Some(0), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_in_process_by_default() {
    let s = TestServer::start().await;
    let tokens = tenants(&s).await;
    notes_per_namespace(&s, &tokens).await;
    // Through the proxy with the framework's client, as another service would call it.
    let source = std::sync::Arc::new(micro::data::StaticToken(tokens[2].clone()));
    let client =
        micro::Client::via_proxy(s.proxy()).namespace("blog").auth(std::sync::Arc::new(micro::auth::Bearer(source)));
    let note = client.call_json("distributed", "Notes.Create", &json!({"title": "draft"})).await.expect("created");
    assert_eq!(note["author"], "bea");
    let listed = client.call_json("distributed", "Notes.List", &json!({})).await.expect("listed");
    assert_eq!(listed["notes"].as_array().map(Vec::len), Some(1), "{listed}");
    let anonymous = micro::Client::via_proxy(s.proxy()).namespace("blog");
    let err = anonymous.call_json("distributed", "Notes.List", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), micro_core::Code::Unauthenticated, "{err}");
}

/// Calls the auth service as `token`.
async fn auth(s: &TestServer, token: &str) -> (micro::proto::auth::auth_client::AuthClient<micro::data::Ch>, String) {
    (
        micro::proto::auth::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).expect("channel")),
        format!("Bearer {token}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespaces_notes_go_with_it() {
    use micro::proto::auth as pb;
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (mut client, bearer) = auth(&s, &admin).await;
    let namespace = |name: &str| {
        let mut req = tonic::Request::new(pb::CreateNamespaceRequest { name: name.into() });
        req.metadata_mut().insert("authorization", bearer.parse().unwrap());
        req
    };
    client.create_namespace(namespace("team")).await.expect("created");
    micro_test::create_account(&s.proxy(), &admin, "team", ("tia", "tia-secret-1"), "user", &[]).await;
    let tia = micro_test::login(&s.proxy(), "team", "tia", "tia-secret-1").await;
    let (status, _) = call(&s, Some(&tia), None, "/distributed/notes/create", json!({"title": "plans"})).await;
    assert_eq!(status, 200);
    let mut req = tonic::Request::new(pb::DeleteNamespaceRequest { name: "team".into() });
    req.metadata_mut().insert("authorization", bearer.parse().unwrap());
    client.delete_namespace(req).await.expect("deleted");
    // Whoever gets the name next starts with no notes.
    client.create_namespace(namespace("team")).await.expect("created again: nothing of the old one remains");
    micro_test::create_account(&s.proxy(), &admin, "team", ("ted", "ted-secret-1"), "user", &[]).await;
    let ted = micro_test::login(&s.proxy(), "team", "ted", "ted-secret-1").await;
    let (status, listed) = call(&s, Some(&ted), None, "/distributed/notes/list", json!({})).await;
    assert_eq!((status, listed["notes"].as_array().map(Vec::len)), (200, Some(0)), "{listed}");
    // The old account's token is void, here as everywhere.
    let (status, _) = call(&s, Some(&tia), None, "/distributed/notes/list", json!({})).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_binary_against_a_server_without_products() {
    let s = TestServer::start_with(|c| c.services = Vec::new()).await;
    // Not hosted: nothing answers.
    let (status, _) = call(&s, None, Some("shop"), "/distributed/notes/list", json!({})).await;
    assert_eq!(status, 404);
    // The product's name is reserved: no other account registers it, in micro or elsewhere.
    let admin = s.admin_token().await;
    for ns in ["micro", "shop"] {
        let err = s
            .service(ns, micro_distributed::NAME)
            .await
            .handle("Notes.List", |_ctx: micro::Context, _req: Value| async move {
                Ok::<_, micro::Status>(json!({"notes": ["stolen"]}))
            })
            .start()
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), micro_core::Code::PermissionDenied, "{ns}: {err}");
    }
    let tokens = tenants(&s).await;
    let sam = &tokens[0];
    // The product's own account, as an operator would make it for a deployment.
    let secret = "product-distributed-secret-1";
    micro_test::create_account(
        &s.proxy(),
        &admin,
        "micro",
        ("product-distributed", secret),
        "service",
        &["data", "platform"],
    )
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_micro-distributed"))
        .env("MICRO_SERVER", s.proxy())
        .env("MICRO_AUTH_ID", "product-distributed")
        .env("MICRO_AUTH_SECRET", secret)
        .env_remove("MICRO_NAMESPACE")
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let up = micro_test::eventually(std::time::Duration::from_secs(20), || async {
        call(&s, Some(sam), None, "/distributed/notes/list", json!({})).await.0 == 200
    })
    .await;
    assert!(up, "the standalone product answers");
    notes_per_namespace(&s, &tokens).await;
    child.start_kill().expect("stop");
    let _ = child.wait().await;
}
