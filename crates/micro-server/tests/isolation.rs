//! The isolation matrix at the server's core services: two namespaces, each with an
//! admin, a plain user and a service, plus anonymous callers, against every data
//! service in both namespaces. Own namespace per the rules, foreign → 403, anonymous
//! where credentials are needed → 401, and no cross-namespace read or write.

use futures::StreamExt;
use micro::data::{Data, StaticToken};
use micro_core::Code;
use micro_core::store::{Query, Record, Table};
use micro_test::TestServer;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    Admin(&'static str),
    User(&'static str),
    Service(&'static str),
}

impl Who {
    fn namespace(self) -> Option<&'static str> {
        match self {
            Who::Anonymous => None,
            Who::Admin(ns) | Who::User(ns) | Who::Service(ns) => Some(ns),
        }
    }
}

/// What a call by `who` into `ns` must give: for admin-only services and for services
/// under the default (public) rules.
fn expected(who: Who, ns: &str, admin_only: bool) -> Option<Code> {
    match who {
        Who::Anonymous if admin_only => Some(Code::Unauthenticated),
        Who::Anonymous => None,
        w if w.namespace() != Some(ns) => Some(Code::PermissionDenied),
        Who::Admin(_) => None,
        _ if admin_only => Some(Code::PermissionDenied),
        _ => None,
    }
}

/// What a call by `who` into `ns` must give for the services open to any account of
/// the namespace by default (registering, sync, broker): never to the public.
fn members_only(who: Who, ns: &str) -> Option<Code> {
    match who {
        Who::Anonymous => Some(Code::Unauthenticated),
        w if w.namespace() != Some(ns) => Some(Code::PermissionDenied),
        _ => None,
    }
}

fn code<T>(r: Result<T, micro_core::Status>) -> Option<Code> {
    r.err().map(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_against_every_data_service_in_both_namespaces() {
    let s = TestServer::start().await;
    let namespaces = ["alpha", "beta"];
    let mut identities = vec![Who::Anonymous];
    let mut tokens = std::collections::HashMap::new();
    for ns in namespaces {
        s.create_account(ns, "boss", "boss-secret-1", "user", &["admin"]).await;
        s.create_account(ns, "pat", "pat-secret-1", "user", &[]).await;
        s.create_account(ns, "worker", "worker-secret-1", "service", &[]).await;
        for (who, id, secret) in [
            (Who::Admin(ns), "boss", "boss-secret-1"),
            (Who::User(ns), "pat", "pat-secret-1"),
            (Who::Service(ns), "worker", "worker-secret-1"),
        ] {
            tokens.insert(format!("{who:?}"), micro_test::login(&s.proxy(), ns, id, secret).await);
            identities.push(who);
        }
    }
    let data = |who: Who, ns: &str| {
        let source = tokens
            .get(&format!("{who:?}"))
            .map(|t| Arc::new(StaticToken(t.clone())) as Arc<dyn micro::data::TokenSource>);
        Data::remote_with(&s.proxy(), ns, source)
    };

    let mut checked = 0;
    for who in identities.iter().copied() {
        for ns in namespaces {
            let d = data(who, ns);
            let table = Table::new(ns, "matrix");
            let tag = format!("{who:?}").replace(['(', ')', '"'], "-");
            let want = expected(who, ns, true);
            let write = d.store.write(&table, &Record::new(format!("by/{tag}"), b"x".to_vec()), None).await;
            assert_eq!(code(write), want, "{who:?} store write in {ns}");
            assert_eq!(code(d.store.list(&table, "", &Query::default()).await), want, "{who:?} store list in {ns}");
            let set =
                d.config.set(ns, &format!("matrix.{}", tag.replace('-', "_")), &serde_json::json!(1), false).await;
            assert_eq!(code(set), want, "{who:?} config set in {ns}");
            assert_eq!(code(d.config.get(ns, "", false).await), want, "{who:?} config get in {ns}");
            let m = micro_core::events::Message { payload: b"{}".to_vec(), ..Default::default() };
            assert_eq!(code(d.events.publish(ns, "matrix", &m).await), want, "{who:?} events publish in {ns}");
            let chunks = futures::stream::iter([Ok(bytes::Bytes::from_static(b"x"))]).boxed();
            let put = d.blob.put(ns, "matrix", &tag, "text/plain", chunks).await;
            assert_eq!(code(put), want, "{who:?} blob put in {ns}");
            // Sync and broker: any account of the namespace, never the public by default.
            let want = members_only(who, ns);
            let lock = d.sync.lock(ns, &format!("matrix-{tag}"), Duration::from_secs(5), Duration::ZERO).await;
            assert_eq!(code(lock), want, "{who:?} sync lock in {ns}");
            let bm =
                micro_core::broker::Message { topic: "matrix".into(), payload: b"{}".to_vec(), ..Default::default() };
            assert_eq!(code(d.broker.publish(ns, &bm).await), want, "{who:?} broker publish in {ns}");
            checked += 8;
        }
    }
    assert_eq!(checked, 7 * 2 * 8);

    // Zero cross-namespace data: each namespace holds only its own admin's writes.
    for ns in namespaces {
        let admin = data(Who::Admin(if ns == "alpha" { "alpha" } else { "beta" }), ns);
        let keys = admin.store.list(&Table::new(ns, "matrix"), "", &Query::default()).await.unwrap();
        assert_eq!(keys, [format!("by/Admin--{ns}--")], "{ns} holds only its own admin's write");
        let config = admin.config.get(ns, "matrix", false).await.unwrap().unwrap();
        assert_eq!(config.as_object().map(|o| o.len()), Some(1), "{ns}: {config}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_service_name_in_two_namespaces_resolves_per_namespace() {
    let s = TestServer::start().await;
    let mut running = Vec::new();
    for ns in ["alpha", "beta"] {
        let svc = s.service(ns, "greeter").await.handle(
            "Greeter.Where",
            move |_ctx: micro::Context, _req: serde_json::Value| async move {
                Ok::<_, micro::Status>(serde_json::json!({ "namespace": ns }))
            },
        );
        running.push(svc.start().await.unwrap());
    }
    for ns in ["alpha", "beta"] {
        // Through the proxy.
        let client = micro::Client::via_proxy(s.proxy()).namespace(ns);
        let reply = client.call_json("greeter", "Greeter.Where", &serde_json::json!({})).await.unwrap();
        assert_eq!(reply["namespace"], ns, "proxy");
        // Through the gateway, by header.
        let r = micro_test::http(&s.api(), "POST", "/greeter/where", &[("micro-namespace", ns)], b"{}").await;
        assert_eq!(r.json()["namespace"], ns, "gateway: {}", r.body);
    }
    // Through the gateway, by the caller's account when no header is sent.
    s.create_account("beta", "pat", "pat-secret-1", "user", &[]).await;
    let token = micro_test::login(&s.proxy(), "beta", "pat", "pat-secret-1").await;
    let bearer = format!("Bearer {token}");
    let r = micro_test::http(&s.api(), "POST", "/greeter/where", &[("authorization", &bearer)], b"{}").await;
    assert_eq!(r.json()["namespace"], "beta", "{}", r.body);
    // The default namespace has no greeter.
    let r = micro_test::http(&s.api(), "POST", "/greeter/where", &[], b"{}").await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A bad token is refused at the gateway.
    let r = micro_test::http(&s.api(), "POST", "/greeter/where", &[("authorization", "Bearer nope")], b"{}").await;
    assert_eq!(r.status, 401, "{}", r.body);
    for r in running {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_can_require_accounts_to_register_and_lookups_stay_public() {
    use micro::proto::auth as pb;
    let s = TestServer::start().await;
    // Default: registering needs an account of the namespace.
    let err = micro::Service::new("early").server(s.proxy()).start().await.err().expect("refused");
    assert!(err.detail().contains("log in"), "{err}");
    // The admin opens registering to the public, then closes it again with a rule that
    // requires accounts.
    let token = s.admin_token().await;
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).unwrap());
    let open = pb::Rule {
        id: "reg-open".into(),
        scope: "".into(),
        resource: "service:registry:*".into(),
        access: "granted".into(),
        priority: 5,
    };
    let mut req = tonic::Request::new(pb::CreateRuleRequest { rule: Some(open) });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    auth.create_rule(req).await.unwrap();
    let open = micro::Service::new("early").server(s.proxy()).start().await.expect("registers without an account");
    open.stop().await;
    for (id, scope, access, priority) in [("reg-lock", "", "denied", 10), ("reg-accounts", "*", "granted", 20)] {
        let rule = pb::Rule {
            id: id.into(),
            scope: scope.into(),
            resource: "service:registry:Registry.Register".into(),
            access: access.into(),
            priority,
        };
        let mut req = tonic::Request::new(pb::CreateRuleRequest { rule: Some(rule) });
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        auth.create_rule(req).await.unwrap();
    }
    let err = micro::Service::new("late").server(s.proxy()).start().await.err().expect("refused");
    assert!(err.detail().contains("log in"), "{err}");
    s.create_account("micro", "late-svc", "late-secret-1", "service", &[]).await;
    let late = micro::Service::new("late").server(s.proxy()).credentials("late-svc", "late-secret-1");
    let late = late.start().await.expect("registers with its account");
    // Lookups stay public.
    let registry = micro::registry::RemoteRegistry::new(&s.proxy()).unwrap();
    use micro_core::registry::Registry;
    assert_eq!(registry.get_service("micro", "late").await.unwrap()[0].name, "late");
    late.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_enforce_their_namespaces_rules() {
    use micro::proto::auth as pb;
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    s.create_account("micro", "sam", "sam-secret-1", "user", &["staff"]).await;
    s.create_account("micro", "pat", "pat-secret-1", "user", &[]).await;
    s.create_account("micro", "vault-svc", "vault-secret-1", "service", &[]).await;
    s.create_account("beta", "bo", "bo-secret-1", "user", &["staff"]).await;
    // Lock the vault down to the staff scope (the default public rule stays for the rest).
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).unwrap());
    for (id, scope, access, priority) in [("vault-lock", "", "denied", 10), ("vault-staff", "staff", "granted", 20)] {
        let rule = pb::Rule {
            id: id.into(),
            scope: scope.into(),
            resource: "service:vault:*".into(),
            access: access.into(),
            priority,
        };
        let mut req = tonic::Request::new(pb::CreateRuleRequest { rule: Some(rule) });
        req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
        auth.create_rule(req).await.unwrap();
    }
    let vault = micro::Service::new("vault")
        .server(s.proxy())
        .credentials("vault-svc", "vault-secret-1")
        .handle("Vault.Open", |ctx: micro::Context, _req: serde_json::Value| async move {
            Ok::<_, micro::Status>(serde_json::json!({ "by": ctx.caller().and_then(|c| c.id()) }))
        })
        .start()
        .await
        .unwrap();
    let call = |token: Option<String>| {
        let proxy = s.proxy();
        async move {
            let mut client = micro::Client::via_proxy(proxy);
            if let Some(t) = token {
                client = client.auth(Arc::new(micro::auth::Bearer(Arc::new(StaticToken(t)))));
            }
            client.call_json("vault", "Vault.Open", &serde_json::json!({})).await
        }
    };
    assert_eq!(code(call(None).await), Some(Code::Unauthenticated), "anonymous");
    let pat = micro_test::login(&s.proxy(), "micro", "pat", "pat-secret-1").await;
    assert_eq!(code(call(Some(pat)).await), Some(Code::PermissionDenied), "no staff scope");
    let sam = micro_test::login(&s.proxy(), "micro", "sam", "sam-secret-1").await;
    assert_eq!(call(Some(sam)).await.unwrap()["by"], "sam", "staff gets in, named");
    let bo = micro_test::login(&s.proxy(), "beta", "bo", "bo-secret-1").await;
    assert_eq!(code(call(Some(bo)).await), Some(Code::PermissionDenied), "staff of another namespace");
    assert_eq!(code(call(Some("not-a-token".into())).await), Some(Code::Unauthenticated), "a bad token");
    // Health and Debug stay open.
    let health = micro::Client::via_proxy(s.proxy()).call_json("vault", "Debug.Health", &serde_json::json!({})).await;
    assert!(health.is_ok(), "{health:?}");
    vault.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_follow_rule_changes_without_polling() {
    use micro::proto::auth as pb;
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let bell = s
        .service("micro", "bell")
        .await
        .handle("Bell.Ring", |_ctx: micro::Context, _req: serde_json::Value| async move {
            Ok::<_, micro::Status>(serde_json::json!({ "rung": true }))
        })
        .start()
        .await
        .unwrap();
    let ring =
        || async { micro::Client::via_proxy(s.proxy()).call_json("bell", "Bell.Ring", &serde_json::json!({})).await };
    // Answered once, so the service holds the rules it read at start.
    assert_eq!(ring().await.unwrap()["rung"], true);
    // A rule locking the bell reaches the service within a second (it used to re-read
    // the rules every 5 s); deleting it opens the bell again as quickly.
    let lock = pb::Rule {
        id: "bell-lock".into(),
        resource: "service:bell:*".into(),
        access: "denied".into(),
        priority: 10,
        ..Default::default()
    };
    let changed = std::time::Instant::now();
    micro_test::create_rule(&s.proxy(), &admin, "micro", lock).await;
    while ring().await.is_ok() {
        assert!(changed.elapsed() < Duration::from_secs(1), "the lock took over a second to reach the service");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(code(ring().await), Some(Code::Unauthenticated));
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).unwrap());
    let mut req = tonic::Request::new(pb::DeleteRuleRequest { id: "bell-lock".into() });
    req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let changed = std::time::Instant::now();
    auth.delete_rule(req).await.unwrap();
    while ring().await.is_err() {
        assert!(changed.elapsed() < Duration::from_secs(1), "the unlock took over a second to reach the service");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bell.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_enforces_rules_for_http_services() {
    use micro::proto::auth as pb;
    use micro_core::registry::{Node, Service as Record};
    let s = TestServer::start().await;
    // Any HTTP app: answers with its path.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(micro::server::serve(
        listener,
        |req: http::Request<hyper::body::Incoming>| async move {
            let body = format!("legacy {}", req.uri().path());
            http::Response::new(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        },
        std::future::pending::<()>(),
    ));
    let record = Record {
        name: "legacy".into(),
        nodes: vec![Node {
            id: "legacy-1".into(),
            address: addr.to_string(),
            metadata: [("protocol".to_string(), "http".to_string())].into(),
        }],
        ..Default::default()
    };
    s.server.registry().register("micro", &record, Duration::from_secs(60)).await.unwrap();
    let r = micro_test::http(&s.api(), "GET", "/legacy/admin/users", &[], b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "legacy /admin/users"), "public by default");

    // Lock /admin down to the staff scope.
    let admin = s.admin_token().await;
    let mut auth = pb::auth_client::AuthClient::new(micro::data::channel(&s.proxy()).unwrap());
    for (id, scope, access, priority) in [("admin-lock", "", "denied", 10), ("admin-staff", "staff", "granted", 20)] {
        let rule = pb::Rule {
            id: id.into(),
            scope: scope.into(),
            resource: "http:legacy:/admin*".into(),
            access: access.into(),
            priority,
        };
        let mut req = tonic::Request::new(pb::CreateRuleRequest { rule: Some(rule) });
        req.metadata_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
        auth.create_rule(req).await.unwrap();
    }
    s.create_account("micro", "sam", "sam-secret-1", "user", &["staff"]).await;
    s.create_account("micro", "pat", "pat-secret-1", "user", &[]).await;
    let sam = format!("Bearer {}", micro_test::login(&s.proxy(), "micro", "sam", "sam-secret-1").await);
    let pat = format!("Bearer {}", micro_test::login(&s.proxy(), "micro", "pat", "pat-secret-1").await);
    let get = |path: &'static str, auth: Option<String>| {
        let api = s.api();
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("authorization", a.as_str())],
                None => vec![],
            };
            micro_test::http(&api, "GET", path, &headers, b"").await
        }
    };
    assert_eq!(get("/legacy/admin/users", None).await.status, 401);
    assert_eq!(get("/legacy/admin/users", Some(pat.clone())).await.status, 403);
    assert_eq!(get("/legacy/admin/users", Some(sam.clone())).await.status, 200);
    assert_eq!(get("/legacy/public", None).await.status, 200, "the rest stays public");
    // A cookie works like the header (browsers).
    let cookie = format!("micro-token={}", sam.trim_start_matches("Bearer "));
    let r = micro_test::http(&s.api(), "GET", "/legacy/admin/users", &[("cookie", cookie.as_str())], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_lists_every_database() {
    let s = TestServer::start().await;
    let admin = s.admin_data("micro").await;
    admin.store.write(&Table::new("micro", "t"), &Record::new("k", b"v".to_vec()), None).await.unwrap();
    let beta = s.admin_data("beta").await;
    beta.store.write(&Table::new("beta", "t"), &Record::new("k", b"secret".to_vec()), None).await.unwrap();
    let mut all = admin.store.databases().await.unwrap();
    all.sort();
    assert_eq!(all, ["beta", "micro"], "the default namespace's admin sees every database");
    // A data-scope account of the default namespace sees only its own.
    s.create_account("micro", "worker", "worker-secret-1", "user", &["data"]).await;
    let token = micro_test::login(&s.proxy(), "micro", "worker", "worker-secret-1").await;
    let worker = Data::remote_with(&s.proxy(), "micro", Some(Arc::new(StaticToken(token))));
    assert_eq!(worker.store.databases().await.unwrap(), ["micro"]);
}

/// A bodiless GET that reaches no node (one stopping in a rolling update, say) goes to
/// another node of the service; a request with a body is not replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sends_a_get_that_reached_no_node_to_another() {
    use micro_core::registry::{Node, Service as Record};
    let s = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    tokio::spawn(micro::server::serve(
        listener,
        |req: http::Request<hyper::body::Incoming>| async move {
            let body = format!("{} {}", req.method(), req.uri().path());
            http::Response::new(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        },
        std::future::pending::<()>(),
    ));
    // A port nothing listens on any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let node = |id: &str, address: std::net::SocketAddr| Node {
        id: id.into(),
        address: address.to_string(),
        metadata: [("protocol".to_string(), "http".to_string())].into(),
    };
    let record =
        Record { name: "twin".into(), nodes: vec![node("twin-1", dead), node("twin-2", live)], ..Default::default() };
    s.server.registry().register("micro", &record, Duration::from_secs(60)).await.unwrap();
    for i in 0..6 {
        let r = micro_test::http(&s.api(), "GET", "/twin/page", &[], b"").await;
        assert_eq!((r.status, r.body.as_str()), (200, "GET /page"), "GET {i}");
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(micro_test::http(&s.api(), "POST", "/twin/form", &[], b"x=1").await.status);
    }
    assert!(statuses.contains(&502) && statuses.contains(&200), "POSTs are not replayed: {statuses:?}");
}

/// `GET /openapi.json` describes the caller's namespace as the gateway serves it: every
/// endpoint with its schemas, declared routes, one service alone, nothing of another
/// namespace; a stock validator accepts it when the test venv has one. The gateway
/// compresses it for clients that ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_publishes_openapi_per_namespace_and_service() {
    use serde_json::{Value, json};
    let s = TestServer::start().await;
    let shop = s
        .service("micro", "shop")
        .await
        .handle("Cart.Add", |_ctx: micro::Context, req: Value| async move { Ok::<_, micro::Status>(req) })
        .handle("Cart.Get", |_ctx: micro::Context, req: Value| async move { Ok::<_, micro::Status>(req) })
        .route("GET /carts/{id}", "Cart.Get")
        .start()
        .await
        .unwrap();
    let doc = micro_test::http(&s.api(), "GET", "/openapi.json", &[], b"").await;
    assert_eq!(doc.status, 200, "{}", doc.body);
    let v = doc.json();
    assert_eq!(v["openapi"], "3.1.0");
    let paths = v["paths"].as_object().unwrap();
    assert!(paths["/shop/cart/add"]["post"]["requestBody"].is_object(), "{v}");
    let get = &paths["/carts/{id}"]["get"];
    assert_eq!(get["parameters"][0]["name"], "id", "{get}");
    // The core's endpoints with the schemas from their protos.
    let read = &paths["/store/store/read"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert!(read["properties"]["key"].is_object(), "{read}");
    // Every reference resolves inside the document.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => o.iter().for_each(|(k, x)| match (k.as_str(), x) {
                ("$ref", Value::String(r)) => out.push(r.clone()),
                _ => refs(x, out),
            }),
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&v, &mut all);
    for r in &all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("outside ref {r}"));
        assert!(v["components"]["schemas"][name].is_object(), "{r} resolves");
    }
    // The calls it describes work as described.
    let r =
        micro_test::http(&s.api(), "POST", "/shop/cart/add", &[("content-type", "application/json")], br#"{"n":1}"#)
            .await;
    assert_eq!((r.status, r.json()), (200, json!({"n": 1})));

    // One service alone; unknown and bad names are 404s.
    let one = micro_test::http(&s.api(), "GET", "/openapi/shop.json", &[], b"").await.json();
    let names: Vec<&String> = one["paths"].as_object().unwrap().keys().collect();
    assert!(names.iter().all(|p| p.starts_with("/shop/") || p.starts_with("/carts/")), "{names:?}");
    for bad in ["/openapi/nosuch.json", "/openapi/bad%20name.json", "/openapi/shop"] {
        let r = micro_test::http(&s.api(), "GET", bad, &[], b"").await;
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
        assert!(r.json()["detail"].is_string(), "{bad}: the JSON error body");
    }
    // Another namespace sees nothing of this one.
    let other = micro_test::http(&s.api(), "GET", "/openapi.json", &[("micro-namespace", "acme")], b"").await;
    assert!(!other.body.contains("/shop/"), "{}", other.body);

    // Compressed by Accept-Encoding (gzip, brotli, zstd), decoded by curl to the same
    // document; a small reply is sent as it is.
    let url = format!("http://{}/openapi.json", s.api());
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for enc in ["gzip", "br", "zstd"] {
        let head = curl(&["-D", "-", "-o", "/dev/null", "-H", &format!("accept-encoding: {enc}"), &url]);
        assert!(head.to_lowercase().contains(&format!("content-encoding: {enc}")), "{enc}: {head}");
    }
    let decoded: Value = serde_json::from_str(&curl(&["--compressed", &url])).unwrap();
    assert_eq!(decoded, v, "the same document");
    let small = curl(&["-D", "-", "-o", "/dev/null", "-H", "accept-encoding: gzip", &format!("http://{}/", s.api())]);
    assert!(!small.to_lowercase().contains("content-encoding"), "{small}");

    // A stock validator, when the test venv has it (scripts/test installs it).
    if let Ok(python) = std::env::var("MICRO_TEST_PYTHON") {
        let file = s.dir.path().join("openapi.json");
        std::fs::write(&file, &doc.body).unwrap();
        let script = "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')";
        let out = std::process::Command::new(python).args(["-c", script, file.to_str().unwrap()]).output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    shop.stop().await;
}
