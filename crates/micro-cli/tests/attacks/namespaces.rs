//! Defect 4 (high): a service applied its own namespace's rules to a caller of another
//! namespace. Defect 6 (medium): anonymous callers took locks, registered services and
//! subscribed to the broker in any namespace.

use super::*;
use micro::{Code, Context, Status};
use micro_test::process::ServerProcess;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_the_staff_of_another_namespace() {
    let s = ServerProcess::start(&micro(), &[]);
    let blog_admin = s.account("blog", "boss", "user", &["admin"]).await;
    micro_test::create_rule(
        &s.proxy,
        &blog_admin,
        "blog",
        micro::proto::auth::Rule {
            id: "hello-lock".into(),
            scope: "".into(),
            resource: "service:helloworld:*".into(),
            access: "denied".into(),
            priority: 10,
        },
    )
    .await;
    micro_test::create_rule(
        &s.proxy,
        &blog_admin,
        "blog",
        micro::proto::auth::Rule {
            id: "hello-staff".into(),
            scope: "staff".into(),
            resource: "service:helloworld:*".into(),
            access: "granted".into(),
            priority: 20,
        },
    )
    .await;
    let hello = s
        .service("blog", "helloworld")
        .await
        .handle("Greeter.Hello", |_ctx: Context, _req: Value| async move { Ok::<_, Status>(json!({ "msg": "hi" })) })
        .start()
        .await
        .expect("starts");
    let node = hello.address().to_string();
    let blog_staff = s.account("blog", "bea", "user", &["staff"]).await;
    let shop_staff = s.account("shop", "sam", "user", &["staff"]).await;
    let shop_admin = s.account("shop", "boss", "user", &["admin"]).await;

    // Straight at blog's node: blog's staff in; shop's staff out, whatever namespace it asks for.
    let call = |token: String, ns: Option<&'static str>| {
        let node = node.clone();
        async move {
            let bearer = format!("Bearer {token}");
            let mut headers = vec![("authorization", bearer.as_str()), ("content-type", "application/json")];
            if let Some(ns) = ns {
                headers.push(("micro-namespace", ns));
            }
            micro_test::http(&node, "POST", "/helloworld/Greeter.Hello", &headers, b"{}").await.status
        }
    };
    assert_eq!(call(blog_staff.clone(), None).await, 200, "blog's staff");
    assert_eq!(call(shop_staff.clone(), None).await, 403, "shop's staff, no namespace asked");
    assert_eq!(call(shop_staff.clone(), Some("shop")).await, 403, "shop's staff, asking for shop");
    assert_eq!(call(shop_staff.clone(), Some("blog")).await, 403, "shop's staff, asking for blog");

    // Registered in shop at blog's node (shop's admin may name services in shop) and
    // called through the proxy and the gateway as shop's staff: refused by the service.
    // (Blog's record, endpoints included, read as anyone may, so the gateway routes it.)
    let lookup = micro::registry::RemoteRegistry::new(&s.proxy).unwrap();
    let mut record = lookup.get_service("blog", "helloworld").await.unwrap().remove(0);
    record.nodes.truncate(1);
    record.nodes[0].id = "copy-1".into();
    record.nodes[0].metadata = [("protocol".to_string(), "grpc".to_string())].into();
    let as_shop = micro::registry::RemoteRegistry::with_token(&s.proxy, source(Some(&shop_admin))).unwrap();
    as_shop.register("shop", &record, Duration::from_secs(60)).await.expect("registers in shop");
    let err = client(&s.proxy, "shop", Some(&shop_staff))
        .call_json("helloworld", "Greeter.Hello", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let bearer = format!("Bearer {shop_staff}");
    let r = micro_test::http(&s.api, "POST", "/helloworld/greeter/hello", &[("authorization", bearer.as_str())], b"{}")
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Blog's staff through the proxy: in.
    let reply =
        client(&s.proxy, "blog", Some(&blog_staff)).call_json("helloworld", "Greeter.Hello", &json!({})).await.unwrap();
    assert_eq!(reply["msg"], "hi");
    hello.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_get_no_lock_registration_or_broker_anywhere() {
    let s = ServerProcess::start(&micro(), &[]);
    let blog_admin = s.account("blog", "boss", "user", &["admin"]).await;
    for ns in ["blog", "micro"] {
        let anon = data(&s.proxy, ns, None);
        let lock = anon.sync.lock(ns, "door", Duration::from_secs(5), Duration::ZERO).await;
        assert_eq!(lock.err().map(|e| e.code()), Some(Code::Unauthenticated), "anonymous lock in {ns}");
        let reg = register(&s.proxy, None, ns, "sneaky", "sneaky-1", "127.0.0.1:9", "grpc").await;
        assert_eq!(reg.err().map(|e| e.code()), Some(Code::Unauthenticated), "anonymous registration in {ns}");
        let published =
            micro_core::broker::Message { topic: "news".into(), payload: b"{}".to_vec(), ..Default::default() };
        let publish = anon.broker.publish(ns, &published).await;
        assert_eq!(publish.err().map(|e| e.code()), Some(Code::Unauthenticated), "anonymous publish in {ns}");
        let subscribed = match anon.broker.subscribe(ns, "news", None).await {
            Err(e) => Some(e.code()),
            Ok(mut stream) => {
                use futures::StreamExt;
                // The admin publishes; an anonymous subscriber must get an error, not the message.
                let admin = data(&s.proxy, "blog", Some(&blog_admin));
                let m = micro_core::broker::Message {
                    topic: "news".into(),
                    payload: b"secret".to_vec(),
                    ..Default::default()
                };
                let _ = admin.broker.publish("blog", &m).await;
                match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
                    Ok(Some(Err(e))) => Some(e.code()),
                    other => panic!("an anonymous subscriber in {ns} got {other:?}"),
                }
            }
        };
        assert_eq!(subscribed, Some(Code::Unauthenticated), "anonymous subscription in {ns}");
    }
}

/// The server's own locks in its namespace (the runtime's election, ACME orders, the
/// cluster's CA) cannot be taken through the sync service, not even by its admin: holding
/// one would stall the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_takes_the_servers_own_locks() {
    let s = ServerProcess::start(&micro(), &[]);
    let admin = data(&s.proxy, "micro", Some(&s.admin_token().await));
    for id in ["leader/runtime", "server/cluster-ca", "server/acme/shop.example.com"] {
        let taken = admin.sync.lock("micro", id, Duration::from_secs(60), Duration::ZERO).await;
        let err = taken.err().unwrap_or_else(|| panic!("{id} was taken"));
        assert_eq!(err.code(), Code::PermissionDenied, "{id}: {err}");
        assert!(err.detail().contains("the server's own"), "{err}");
    }
    // Other ids, and the same ids in another namespace, are the callers' to use.
    let lock = admin.sync.lock("micro", "leader/reports", Duration::from_secs(5), Duration::ZERO).await.unwrap();
    admin.sync.unlock("micro", &lock).await.unwrap();
    let blog_admin = s.account("blog", "boss", "user", &["admin"]).await;
    let blog = data(&s.proxy, "blog", Some(&blog_admin));
    let lock = blog.sync.lock("blog", "leader/runtime", Duration::from_secs(5), Duration::ZERO).await.unwrap();
    blog.sync.unlock("blog", &lock).await.unwrap();
}

/// Tokens for an account without its secret are the operators' alone (the platform takes
/// them for a team's members): a namespace's admin, one of its users, a service account
/// of micro with data and an anonymous caller asking for one get nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_take_tokens_for_an_account_without_its_secret() {
    use micro::proto::auth as pb;
    let s = ServerProcess::start(&micro(), &[]);
    let victim = s.account("shop", "victim", "user", &["admin"]).await;
    let shop_admin = s.account("shop", "boss", "user", &["admin"]).await;
    let shop_user = s.account("shop", "sam", "user", &[]).await;
    let micro_data = s.account("micro", "svc", "service", &["data"]).await;
    let ask = |token: Option<String>, ns: &'static str, id: &'static str| {
        let proxy = s.proxy.clone();
        async move {
            let ch = match &token {
                Some(t) => micro_test::as_holder(&proxy, t),
                None => micro::data::channel(&proxy).expect("a channel"),
            };
            let mut auth = pb::auth_client::AuthClient::new(ch);
            let mut req = tonic::Request::new(pb::TokenRequest { id: id.into(), ..Default::default() });
            req.metadata_mut().insert("micro-namespace", ns.parse().expect("a namespace"));
            auth.token(req).await.map(|r| r.into_inner())
        }
    };
    for (who, token) in [
        ("shop's admin", Some(shop_admin)),
        ("a user", Some(shop_user)),
        ("micro data", Some(micro_data)),
        ("anonymous", None),
    ] {
        let err = ask(token, "shop", "victim").await.expect_err(who);
        assert!(matches!(err.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied), "{who}: {err:?}");
    }
    // The victim's own token is no key to its secretless login either.
    assert!(ask(Some(victim), "shop", "victim").await.is_err());
    // An operator gets them; the account's own sessions stay.
    let got = ask(Some(s.admin_token().await), "shop", "victim").await.expect("an operator takes tokens");
    assert_eq!(got.account.map(|a| a.id), Some("victim".to_string()));
    let err = ask(Some(s.admin_token().await), "shop", "nobody").await.expect_err("no such account");
    assert_eq!(err.code(), tonic::Code::NotFound);
}
