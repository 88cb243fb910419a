//! Defect 3 (high): the gateway proxied to the server's own listeners (SSRF), forwarded
//! the browser's platform cookies and the caller's token to HTTP services, and relayed
//! their `Set-Cookie` (session fixation). Defect 8 (low): the proxy took the
//! `micro-token` cookie on a cross-site `text/plain` POST.

use super::*;
use micro::Code;
use micro_test::process::ServerProcess;
use micro_test::recorder::Recorder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_nodes_reach_no_server_listener_and_get_no_platform_credentials() {
    let s = ServerProcess::start(&micro(), &[]);
    let trap =
        Recorder::start(&["micro_session=planted; Path=/", "micro-token=planted; Path=/", "theme=dark; Path=/"]).await;
    let mallory = s.account("blog", "mallory", "user", &[]).await;
    let web_port = s.web.rsplit(':').next().unwrap_or_default().to_string();
    // Nodes at the server's own listeners or at link-local/metadata addresses: refused.
    let targets = [
        format!("http://{}", s.web),
        format!("http://{}", s.proxy),
        format!("http://{}", s.api),
        format!("http://localhost:{web_port}"),
        format!("http://0.0.0.0:{web_port}"),
        "http://169.254.169.254:80".to_string(),
        "http://[fe80::1]:80".to_string(),
    ];
    for (i, target) in targets.iter().enumerate() {
        let err = register(&s.proxy, Some(&mallory), "blog", "web", &format!("web-{i}"), target, "http").await;
        assert_eq!(err.map_err(|e| e.code()), Err(Code::PermissionDenied), "a node at {target}");
    }
    // A node at her own listener is fine; a browser visits it with the platform's cookies.
    register(&s.proxy, Some(&mallory), "blog", "site", "site-1", &format!("http://{}", trap.address), "http")
        .await
        .unwrap();
    let admin = s.admin_token().await;
    let cookie = format!("micro_session=the-session; micro-token={admin}; theme=light");
    let bearer = format!("Bearer {admin}");
    let headers = [("micro-namespace", "blog"), ("cookie", cookie.as_str()), ("authorization", bearer.as_str())];
    let r = micro_test::http(&s.api, "GET", "/site/page", &headers, b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The service got the site's own cookie, none of the platform's, and no usable token.
    let cookies = trap.header_values("cookie");
    assert_eq!(cookies, ["theme=light"], "cookies the service got");
    for got in trap.header_values("authorization") {
        let token = got.trim_start_matches("Bearer ");
        assert_ne!(token, admin);
        assert_eq!(core_codes(&s.proxy, "blog", token).await.0, Some(Code::Unauthenticated));
    }
    // And it cannot set the platform's cookies.
    let head = r.head.to_ascii_lowercase();
    assert!(!head.contains("micro_session=planted") && !head.contains("micro-token=planted"), "{}", r.head);
    assert!(head.contains("set-cookie: theme=dark"), "its own cookie passes: {}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_takes_no_token_from_a_cookie() {
    let s = ServerProcess::start(&micro(), &[]);
    let admin = s.admin_token().await;
    // A page of another site posts a "simple" request: text/plain, the cookie attached.
    let cookie = format!("micro-token={admin}");
    let body = br#"{"record":{"key":"csrf","value":"eA=="},"options":{"database":"micro","table":"csrf"}}"#;
    let headers = [("content-type", "text/plain"), ("cookie", cookie.as_str()), ("origin", "http://evil.example")];
    let r = micro_test::http(&s.proxy, "POST", "/store/Store.Write", &headers, body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let table = micro_core::store::Table::new("micro", "csrf");
    let read = data(&s.proxy, "micro", Some(&admin)).store.read(&table, "csrf", &Default::default()).await;
    assert_eq!(read.map(|r| r.len()).map_err(|e| e.code()), Err(Code::NotFound), "nothing was written");
}

/// Rate limits (issue 17): a tenant of another namespace with an account of the same id
/// cannot spend a namespace's per-account budget, and an anonymous caller cannot escape
/// a service's limit by spelling its path otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_neither_drained_across_namespaces_nor_escaped_by_spelling() {
    let s = ServerProcess::start(&micro(), &[]);
    let admin = s.admin_cli().await;
    for rule in [["per-user", "2/m", "account", ""], ["shop-ip", "1/m", "ip", "shop"]] {
        let mut args = vec!["--namespace", "shop", "ratelimit", "set", rule[0], "--rate", rule[1], "--per", rule[2]];
        if !rule[3].is_empty() {
            args.extend(["--service", rule[3]]);
        }
        admin.ok(&args).await;
    }
    let alice = s.account("shop", "alice", "user", &[]).await;
    let mallory = s.account("blog", "alice", "user", &[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let get = |path: &'static str, token: Option<String>| {
        let api = s.api.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("micro-namespace", "shop")];
            if let Some(b) = &bearer {
                headers.push(("authorization", b.as_str()));
            }
            micro_test::http(&api, "GET", path, &headers, b"").await
        }
    };
    // Blog's alice, naming shop, spends only her own budget.
    for _ in 0..4 {
        get("/other/x", Some(mallory.clone())).await;
    }
    for i in 0..2 {
        let r = get("/other/x", Some(alice.clone())).await;
        assert_ne!(r.status, 429, "shop's alice, request {i}: {}", r.body);
    }
    // The service's limit holds however its path is spelled.
    assert_ne!(get("/shop/a", None).await.status, 429);
    let r = get("/SHOP//a", None).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("shop-ip"), "{}", r.body);
}

/// `Usage.Query` in `ns` as the holder of `token`: the 2xx store writes it counts, or
/// the refusal's code.
async fn metered_writes(proxy: &str, ns: &str, token: &str, all: bool) -> Result<u64, Code> {
    use micro::proto::usage as pb;
    let channel = micro::data::channel_with(proxy, source(Some(token))).expect("channel");
    let mut req = tonic::Request::new(pb::QueryRequest {
        since: 1,
        group_by: vec!["service".into(), "endpoint".into(), "status".into()],
        all_namespaces: all,
        ..Default::default()
    });
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    let res = pb::usage_client::UsageClient::new(channel)
        .query(req)
        .await
        .map_err(|e| micro::status::from_tonic(&e).code())?
        .into_inner();
    Ok(res
        .rows
        .iter()
        .filter(|r| r.service == "store" && r.endpoint == "Store.Write" && r.status == "2xx")
        .map(|r| r.requests)
        .sum())
}

/// The meter, attacked: another namespace's admin cannot read a namespace's usage (nor
/// every namespace's); records written to a `usage` table of the store are not the
/// meter's; and a caller that forges the edge key (which spares the gateway's own calls
/// a second count) is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_neither_read_across_namespaces_nor_forged_nor_escaped() {
    use micro_core::store::{Record, Table};
    let s = ServerProcess::start(&micro(), &[("MICRO_USAGE_FLUSH", "1")]);
    let owner = s.account("shop", "owner", "user", &["admin"]).await;
    let mallory = s.account("blog", "mallory", "user", &["admin"]).await;
    let things = Table::new("shop", "things");
    data(&s.proxy, "shop", Some(&owner)).store.write(&things, &Record::new("a", b"1".to_vec()), None).await.unwrap();
    let counted = || async { metered_writes(&s.proxy, "shop", &owner, false).await.expect("the owner reads") };
    assert!(micro_test::eventually(Duration::from_secs(10), || async { counted().await == 1 }).await);

    // Blog's admin reads neither the shop's usage nor everyone's.
    assert_eq!(metered_writes(&s.proxy, "shop", &mallory, false).await, Err(Code::PermissionDenied));
    assert_eq!(metered_writes(&s.proxy, "blog", &mallory, true).await, Err(Code::PermissionDenied));
    assert_eq!(metered_writes(&s.proxy, "shop", &owner, true).await, Err(Code::PermissionDenied));

    // Records shaped like the meter's, in the store's `usage` tables, count for nothing.
    let forged = br#"{"rows":[["store","Store.Write","owner","2xx",1000000,0,0]]}"#.to_vec();
    let key = format!("shop/{:013}/forged/00000000/0", micro_core::store::now_ms());
    let in_blog = data(&s.proxy, "blog", Some(&mallory)).store;
    in_blog.write(&Table::new("blog", "usage"), &Record::new(&key, forged.clone()), None).await.unwrap();
    let into_micro = in_blog.write(&Table::new("micro", "usage"), &Record::new(&key, forged.clone()), None).await;
    assert_eq!(into_micro.map_err(|e| e.code()), Err(Code::PermissionDenied));
    let own = data(&s.proxy, "shop", Some(&owner)).store;
    own.write(&Table::new("shop", "usage"), &Record::new(&key, forged), None).await.unwrap();

    // Writes claiming to come from the server's own gateway (a guessed edge key) are
    // counted like any other.
    let mut store = micro::proto::store::store_client::StoreClient::new(
        micro::data::channel_with(&s.proxy, source(Some(&owner))).expect("channel"),
    );
    for i in 0..3 {
        let mut req = tonic::Request::new(micro::proto::store::WriteRequest {
            record: Some(micro::proto::store::Record {
                key: format!("k{i}"),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            options: Some(micro::proto::store::Options {
                database: "shop".into(),
                table: "things".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        req.metadata_mut().insert("micro-namespace", "shop".parse().unwrap());
        req.metadata_mut().insert(
            micro::edge::EDGE_KEY,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".parse().unwrap(),
        );
        req.metadata_mut().insert("micro-client-address", "10.9.8.7".parse().unwrap());
        store.write(req).await.expect("a write with a forged edge key is served");
    }
    // The first write, the one to the shop's `usage` table and the three: a million
    // forged requests are nowhere.
    let all_counted = micro_test::eventually(Duration::from_secs(10), || async { counted().await == 5 }).await;
    assert!(all_counted, "every write is counted once, forged ones included: {}", counted().await);
}

/// Custom domains, attacked: another namespace cannot take a claimed domain (however it
/// spells it), verify or remove it, nor reach its own namespace through it (the domain
/// decides the namespace, not the request's header or token); an unverified claim routes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_are_neither_hijacked_nor_a_way_into_another_namespace() {
    use micro::proto::domains as pb;
    let dns = micro_test::dns::TxtServer::start().await;
    let s = ServerProcess::start(&micro(), &[("MICRO_DNS", &dns.addr)]);
    let owner = s.account("shop", "owner", "user", &["admin"]).await;
    let mallory = s.account("blog", "mallory", "user", &["admin"]).await;
    let domains = |token: &str, ns: &'static str| {
        let channel = micro::data::channel_with(&s.proxy, source(Some(token))).expect("channel");
        (pb::domains_client::DomainsClient::new(channel), ns)
    };
    fn req<T>(msg: T, ns: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
        r
    }
    let (mut shop, shop_ns) = domains(&owner, "shop");
    let claim = shop
        .add(req(pb::AddRequest { domain: "shop.test".into(), ..Default::default() }, shop_ns))
        .await
        .expect("the shop claims its domain")
        .into_inner();
    dns.set(&claim.txt_name, &claim.txt_value);
    shop.verify(req(pb::VerifyRequest { domain: "shop.test".into() }, shop_ns)).await.expect("verified");

    let (mut blog, blog_ns) = domains(&mallory, "blog");
    for spelling in ["shop.test", "SHOP.test.", " shop.test"] {
        let taken = blog.add(req(pb::AddRequest { domain: spelling.into(), ..Default::default() }, blog_ns)).await;
        assert_eq!(taken.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::AlreadyExists), "{spelling:?}");
    }
    let verify = blog.verify(req(pb::VerifyRequest { domain: "shop.test".into() }, blog_ns)).await;
    assert_eq!(verify.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::NotFound));
    let remove = blog.remove(req(pb::RemoveRequest { domain: "shop.test".into() }, blog_ns)).await;
    assert_eq!(remove.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::NotFound));
    // Acting in the shop's namespace with a blog token: refused before anything.
    let foreign = blog.list(req(pb::ListRequest {}, "shop")).await;
    assert_eq!(foreign.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::PermissionDenied));

    // Through the domain, the blog's own data and services are out of reach: the shop's
    // namespace answers, and a blog token is a foreign one there.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bearer = format!("Bearer {mallory}");
    for headers in [
        vec![("host", "shop.test"), ("micro-namespace", "blog")],
        vec![("host", "shop.test"), ("authorization", &bearer)],
    ] {
        let r = micro_test::http(&s.api, "POST", "/store/store/list", &headers, br#"{"options":{"database":"blog"}}"#)
            .await;
        assert!(matches!(r.status, 401 | 403), "{headers:?}: {} {}", r.status, r.body);
    }
    // Claiming a domain first squats nothing: the shop proves and holds one the blog
    // claimed before it.
    blog.add(req(pb::AddRequest { domain: "shop2.test".into(), ..Default::default() }, blog_ns)).await.unwrap();
    let second = shop
        .add(req(pb::AddRequest { domain: "shop2.test".into(), ..Default::default() }, shop_ns))
        .await
        .expect("claimed after the blog")
        .into_inner();
    dns.set(&second.txt_name, &second.txt_value);
    let held = shop.verify(req(pb::VerifyRequest { domain: "shop2.test".into() }, shop_ns)).await.expect("verified");
    assert_eq!(held.into_inner().namespace, "shop");
    let lost = blog.verify(req(pb::VerifyRequest { domain: "shop2.test".into() }, blog_ns)).await;
    assert_eq!(lost.map(|_| ()).map_err(|e| e.code()), Err(tonic::Code::AlreadyExists));
    // An unverified claim routes nothing.
    blog.add(req(pb::AddRequest { domain: "pending.test".into(), ..Default::default() }, blog_ns)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = micro_test::http(&s.api, "GET", "/", &[("host", "pending.test")], b"").await;
    assert_eq!(r.json()["name"], "micro", "{}", r.body);
}

/// The edge's accounting and traces, attacked: junk tokens naming a namespace are held to
/// its rate limits like anonymous calls; a namespace header shaped like a usage key
/// (`shop/<time>`) bills nobody's window; another namespace's admin reads none of the
/// server's spans (`Debug.Trace` is for the server's admins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_tokens_forged_usage_keys_and_server_spans_get_nowhere() {
    use micro::proto::usage as pb;
    let s = ServerProcess::start(&micro(), &[("MICRO_USAGE_FLUSH", "1")]);
    let admin = s.admin_cli().await;
    admin.ok(&["--namespace", "shop", "ratelimit", "set", "tight", "--rate", "2/m", "--per", "ip"]).await;
    let owner = s.account("shop", "owner", "user", &["admin"]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let junk = [("micro-namespace", "shop"), ("authorization", "Bearer not-a-token")];
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(micro_test::http(&s.api, "GET", "/anything", &junk, b"").await.status);
        }
        v
    };
    assert_eq!(statuses, [401, 401, 429], "junk tokens are rate limited");

    // Anonymous requests naming `shop/<time>` count in no namespace's window of the shop.
    for _ in 0..3 {
        micro_test::http(&s.api, "GET", "/x", &[("micro-namespace", "shop/1000000000000")], b"").await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let channel = micro::data::channel_with(&s.proxy, source(Some(&owner))).expect("channel");
    let mut usage = pb::usage_client::UsageClient::new(channel);
    let mut req =
        tonic::Request::new(pb::QueryRequest { since: 1, group_by: vec!["account".into()], ..Default::default() });
    req.metadata_mut().insert("micro-namespace", "shop".parse().expect("namespace"));
    let rows = usage.query(req).await.expect("the owner reads").into_inner().rows;
    // The shop's anonymous requests: the owner's login and the three junk-token ones; the
    // forged-key ones are nobody's in the shop.
    let anonymous: u64 = rows.iter().filter(|r| r.account.is_empty()).map(|r| r.requests).sum();
    assert_eq!(anonymous, 4, "{rows:?}");

    // The shop's admin reads none of the server's spans.
    let client = micro::Client::via_proxy(&s.proxy)
        .namespace("shop")
        .auth(Arc::new(micro::auth::Bearer(source(Some(&owner)).expect("a token"))));
    let err = client
        .call::<_, serde_json::Value>(
            "registry",
            "Debug.Trace",
            &serde_json::json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}),
        )
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}
