//! The products (`services/`): a tenant, a member of micro or a stranger tries to take a
//! product's calls, to reach another namespace's data through it, or to make it follow
//! the rules of made-up namespaces.

use super::*;
use micro::Code;
use micro_test::process::ServerProcess;
use micro_test::recorder::Recorder;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_takes_a_products_name_or_reaches_another_namespace_through_it() {
    let s = ServerProcess::start(&micro(), &[]);
    let trap = Recorder::start(&[]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let shop_admin = s.account("shop", "boss", "user", &["admin"]).await;
    let micro_member = s.account("micro", "mia", "service", &["data"]).await;
    let bea = s.account("blog", "bea", "user", &[]).await;

    // The product answers shop's member, with shop's notes.
    let note = client(&s.proxy, "shop", Some(&sam))
        .call_json("distributed", "Notes.Create", &json!({"title": "shop's plan"}))
        .await
        .expect("the hosted product answers");
    assert_eq!(note["author"], "sam");

    // Its name is reserved: a member or the admin of shop, and a service account of
    // micro, cannot register a node under it (so nobody gets its callers' tokens).
    let takers = [
        ("shop", &sam, "a member of shop"),
        ("shop", &shop_admin, "shop's admin"),
        ("micro", &micro_member, "a member of micro"),
    ];
    // Every product's: the email service would hand a taker every tenant's mail.
    for product in micro_server::PRODUCTS {
        for (ns, token, who) in takers {
            let err = register(&s.proxy, Some(token), ns, product, "evil-1", &trap.address, "grpc").await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{who}, {product}: {err}");
        }
        // Lookups from any namespace still name the product's own node only.
        for ns in ["shop", "blog", "micro"] {
            let found = micro::registry::RemoteRegistry::new(&s.proxy).unwrap().get_service(ns, product).await.unwrap();
            let nodes: Vec<_> = found.iter().flat_map(|s| &s.nodes).collect();
            assert!(nodes.iter().all(|n| n.address != trap.address) && !nodes.is_empty(), "{ns}/{product}: {nodes:?}");
        }
    }
    assert!(trap.requests().is_empty(), "the trap got a call");

    // Blog's member asks for shop's notes: refused; its own list is empty.
    let err =
        client(&s.proxy, "shop", Some(&bea)).call_json("distributed", "Notes.List", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let listed = client(&s.proxy, "blog", Some(&bea)).call_json("distributed", "Notes.List", &json!({})).await.unwrap();
    assert_eq!(listed["notes"].as_array().map(Vec::len), Some(0), "{listed}");

    // A token delegated to the product in micro does not act in shop, nor in micro for
    // a shop account, straight at the product's node.
    let node =
        micro::registry::RemoteRegistry::new(&s.proxy).unwrap().get_service("micro", "distributed").await.unwrap()[0]
            .nodes[0]
            .address
            .clone();
    let mut auth = micro::proto::auth::auth_client::AuthClient::new(micro::data::channel(&s.proxy).unwrap());
    let mut req = tonic::Request::new(micro::proto::auth::TokenRequest {
        audience: "micro/distributed".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {sam}").parse().unwrap());
    req.metadata_mut().insert("micro-namespace", "shop".parse().unwrap());
    let delegated = auth.token(req).await.expect("a delegated token").into_inner().access_token;
    let bearer = format!("Bearer {delegated}");
    for (ns, want) in [(None, 401), (Some("shop"), 401), (Some("micro"), 403)] {
        let mut headers = vec![("authorization", bearer.as_str()), ("content-type", "application/json")];
        if let Some(ns) = ns {
            headers.push(("micro-namespace", ns));
        }
        let r = micro_test::http(&node, "POST", "/distributed/Notes.List", &headers, b"{}").await;
        assert_eq!(r.status, want, "{ns:?}: {}", r.body);
    }

    // Strangers naming made-up namespaces are refused before any rule is read.
    for i in 0..50 {
        let ns = format!("made-up-{i}");
        let err = client(&s.proxy, &ns, None).call_json("distributed", "Notes.List", &json!({})).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{ns}: {err}");
    }
}
