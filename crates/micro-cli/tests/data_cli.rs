//! The data-plane commands of the `micro` CLI against a real server.

use micro_test::TestServer;
use micro_test::cli::Cli;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_config_events_and_blob_commands() {
    let s = TestServer::start().await;
    let cli = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    // The data services need an admin: log in first; without, a clear 401.
    assert!(cli.error(&["store", "list"]).await.contains("401"));
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    cli.ok(&["login", "--password", password.trim()]).await;

    // Store.
    cli.ok(&["store", "write", "user/1", r#"{"name":"Alice"}"#]).await;
    cli.ok(&["store", "write", "user/2", "bob", "--ttl", "1h", "-m", "kind=person"]).await;
    assert_eq!(cli.ok(&["store", "read", "user/1"]).await.trim(), r#"{"name":"Alice"}"#);
    let listed = cli.ok(&["store", "list", "--prefix", "user/"]).await;
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["user/1", "user/2"]);
    let verbose = cli.ok(&["store", "read", "user/", "--prefix", "-v"]).await;
    assert!(verbose.contains("kind=person") && verbose.contains("EXPIRY"), "{verbose}");
    let json = cli.ok(&["store", "read", "user/", "--prefix", "--desc", "--limit", "1", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["key"], "user/2", "{v}");
    assert_eq!(cli.ok(&["store", "tables"]).await.trim(), "default");
    cli.ok(&["store", "write", "o/1", "x", "--table", "orders"]).await;
    assert!(cli.ok(&["store", "databases"]).await.contains("micro"));
    cli.ok(&["store", "delete", "user/1"]).await;
    assert!(cli.error(&["store", "read", "user/1"]).await.contains("404"));
    cli.error(&["store", "write", "", "x"]).await;

    // Config, with a secret.
    cli.ok(&["config", "set", "app.db", r#"{"host":"db1","port":5432}"#]).await;
    cli.ok(&["config", "set", "app.db", r#"{"port":6432}"#]).await;
    cli.ok(&["config", "set", "app.db.password", r#""hunter2""#, "--secret"]).await;
    cli.ok(&["config", "set", "app.mode", "production"]).await;
    let db: serde_json::Value =
        serde_json::from_str(&cli.ok(&["config", "get", "app.db", "-o", "json"]).await).unwrap();
    assert_eq!(db, serde_json::json!({"host":"db1","port":6432,"password":"[secret]"}));
    assert_eq!(cli.ok(&["config", "get", "app.db.password", "--secret"]).await.trim(), "hunter2");
    assert_eq!(cli.ok(&["config", "get", "app.mode"]).await.trim(), "production");
    cli.ok(&["config", "del", "app.db"]).await;
    cli.error(&["config", "get", "app.db"]).await;
    cli.error(&["config", "set", "app.x", "{bad json"]).await;
    cli.error(&["config", "set", "app..x", "1"]).await;

    // Events.
    assert_eq!(cli.ok(&["publish", "orders", r#"{"id":1}"#]).await.trim(), "published orders #1");
    cli.ok(&["publish", "orders", r#"{"id":2}"#, "--key", "customer-7"]).await;
    let history = cli.ok(&["events", "read", "orders"]).await;
    assert!(history.contains(r#"{"id":1}"#) && history.contains("customer-7"), "{history}");
    let consumed = cli.ok(&["events", "consume", "orders", "--offset", "first", "--count", "2"]).await;
    assert_eq!(consumed.lines().count(), 2, "{consumed}");
    assert_eq!(cli.ok(&["events", "topics"]).await.trim(), "orders");
    // A group's progress; its last ack reaches the server before the CLI exits.
    cli.ok(&["events", "consume", "orders", "--group", "billing", "--offset", "first", "--count", "1"]).await;
    let groups = cli.ok(&["events", "groups", "orders"]).await;
    let rows: Vec<Vec<&str>> = groups.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [["NAME", "DELIVERED", "ACKED", "PENDING", "LAG"], ["billing", "1", "1", "0", "1"]], "{groups}");
    assert!(cli.error(&["events", "groups", "nosuch"]).await.contains("404"));
    assert!(cli.error(&["events", "read", "nosuch"]).await.contains("404"));
    cli.error(&["publish", "orders", "not json"]).await;
    cli.error(&["publish", "bad topic!", "{}"]).await;

    // Blobs.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cat.txt");
    std::fs::write(&src, b"meow".repeat(100_000)).unwrap();
    cli.ok(&["blob", "put", "pets", "cats/tom.txt", src.to_str().unwrap(), "--content-type", "text/plain"]).await;
    let listed = cli.ok(&["blob", "list", "pets"]).await;
    assert!(listed.contains("cats/tom.txt") && listed.contains("400000") && listed.contains("text/plain"), "{listed}");
    let dst = dir.path().join("out.txt");
    cli.ok(&["blob", "get", "pets", "cats/tom.txt", dst.to_str().unwrap()]).await;
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    cli.ok(&["blob", "delete", "pets", "cats/tom.txt"]).await;
    cli.error(&["blob", "get", "pets", "cats/tom.txt"]).await;
    cli.error(&["blob", "list", "Bad Bucket"]).await;
    cli.error(&["blob", "put", "pets", "x", "/no/such/file"]).await;
}

#[test]
fn shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_micro")).args(["completion", shell]).output().expect("micro runs");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in ["store", "login", "services", "publish"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_micro")).args(["completion", "nosh"]).output().expect("micro runs");
    assert!(!out.status.success());
}

/// A raw HTTP/1.1 GET from the local address `source`: (status, head, body).
async fn get_from(source: &str, addr: &str, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("a local socket");
    socket.bind(std::net::SocketAddr::new(source.parse().expect("a local socket"), 0)).expect("a local socket");
    let mut stream = socket.connect(addr.parse().expect("a local socket")).await.expect("a local socket");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("a local socket");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("a local socket");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `micro ratelimit`: a rule limits each client address's requests to a service at the
/// gateway, answering 429 with `Retry-After`, the draft `RateLimit` headers and the JSON
/// error body; other services and other addresses are not counted; malformed rules are
/// refused with the reason; a deleted rule stops limiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_set_with_the_cli_hold_at_the_gateway() {
    let s = TestServer::start().await;
    let cli = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    cli.ok(&["login", "--password", password.trim()]).await;
    for (args, why) in [
        (vec!["--rate", "ten/s"], "whole number"),
        (vec!["--rate", "10/d"], "unknown unit"),
        (vec!["--rate", "10/s", "--per", "planet"], "ip, account or namespace"),
        (vec!["--rate", "10/s", "--route", "shop"], "starting with /"),
    ] {
        let mut all = vec!["ratelimit", "set", "bad"];
        all.extend(args);
        assert!(cli.error(&all).await.contains(why), "{why}");
    }
    assert!(cli.error(&["ratelimit", "set", "no/slash", "--rate", "1/s"]).await.contains("not a rule name"));
    cli.ok(&["ratelimit", "set", "shop-slow", "--rate", "3/m", "--service", "shop"]).await;
    let listed = cli.json(&["ratelimit", "list", "-o", "json"]).await;
    assert_eq!(listed["shop-slow"]["rate"], "3/m", "{listed}");
    // Rules are read again within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let api = s.api();
    for left in ["2", "1", "0"] {
        let (status, head, _) = get_from("127.0.0.1", &api, "/shop/items").await;
        assert_ne!(status, 429, "{head}");
        assert!(head.contains(&format!("ratelimit: \"shop-slow\";r={left}")), "{head}");
        assert!(head.contains("ratelimit-policy: \"shop-slow\";q=3;w=60"), "{head}");
    }
    let (status, head, body) = get_from("127.0.0.1", &api, "/shop/items").await;
    assert_eq!(status, 429, "{head}");
    let retry: u64 = head.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap().trim().parse().unwrap();
    assert!((1..=20).contains(&retry), "one request every 20 s: {retry}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["code"], 429);
    assert!(e["detail"].as_str().unwrap().contains("rate limit shop-slow exceeded"), "{e}");
    // Spelled otherwise, the same path is counted the same (the gateway routes them alike).
    for tricky in ["//shop/items", "/SHOP/items", "/sh-op/items", "/%73hop/items", "/shop//items/"] {
        assert_eq!(get_from("127.0.0.1", &api, tricky).await.0, 429, "{tricky}");
    }
    // Another service, and another client address, are not counted.
    assert_ne!(get_from("127.0.0.1", &api, "/other/items").await.0, 429);
    assert_ne!(get_from("127.0.0.2", &api, "/shop/items").await.0, 429);
    // Deleted: no longer limited (once the rules are read again).
    cli.ok(&["ratelimit", "delete", "shop-slow"]).await;
    assert!(cli.error(&["ratelimit", "delete", "shop-slow"]).await.contains("no rule"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_ne!(get_from("127.0.0.1", &api, "/shop/items").await.0, 429);
}

/// A usage row's service, endpoint, account and status class.
type UsageKey = (String, String, String, String);

/// The rows of `micro usage -o json` as their key → (requests, bytes in, bytes out).
fn usage_rows(v: &serde_json::Value) -> std::collections::BTreeMap<UsageKey, (u64, u64, u64)> {
    let s = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().expect("a count");
            (
                (s(r, "service"), s(r, "endpoint"), s(r, "account"), s(r, "status")),
                (n("requests"), n("bytes_in"), n("bytes_out")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_per_namespace_and_read_with_the_cli() {
    let s = TestServer::start_with(|c| c.usage_flush = Some(std::time::Duration::from_secs(1))).await;
    let admin = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    admin.ok(&["login", "--password", password.trim()]).await;
    s.create_account("shop", "owner", "owner-secret-1", "user", &["admin"]).await;
    s.create_account("shop", "bob", "bob-secret-1", "user", &[]).await;
    let owner_token = micro_test::login(&s.proxy(), "shop", "owner", "owner-secret-1").await;

    // Through the gateway: three API calls of the owner, two anonymous misses.
    let api = s.api();
    let bearer = format!("Bearer {owner_token}");
    for _ in 0..3 {
        let r = micro_test::http(&api, "POST", "/registry/Registry/ListServices", &[("authorization", &bearer)], b"{}")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for _ in 0..2 {
        let r = micro_test::http(&api, "GET", "/nosuch/thing", &[("micro-namespace", "shop")], b"").await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    // Through the proxy: two store writes of the owner (gRPC).
    let data = micro::data::Data::remote_with(
        &s.proxy(),
        "shop",
        Some(std::sync::Arc::new(micro::data::StaticToken(owner_token.clone()))),
    );
    let table = micro_core::store::Table::new("shop", "things");
    for k in ["a", "b"] {
        data.store.write(&table, &micro_core::store::Record::new(k, b"12345".to_vec()), None).await.unwrap();
    }

    // Stored within a flush or two; the server's admin reads the shop's.
    let by = "service,endpoint,account,status";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let rows = loop {
        let v = admin.json(&["--namespace", "shop", "usage", "--by", by, "-o", "json"]).await;
        let rows = usage_rows(&v);
        let writes = rows.get(&("store".into(), "Store.Write".into(), "owner".into(), "2xx".into())).map(|r| r.0);
        if writes == Some(2) {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "the store writes are metered: {rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let key = |s: &str, e: &str, a: &str, c: &str| (s.to_string(), e.to_string(), a.to_string(), c.to_string());
    let listed = rows[&key("registry", "Registry.ListServices", "owner", "2xx")];
    assert_eq!((listed.0, listed.1), (3, 6), "three calls of 2 bytes each: {rows:?}");
    assert!(listed.2 > 0, "bytes out are counted: {rows:?}");
    assert_eq!(rows[&key("", "", "", "4xx")].0, 2, "the misses are counted too: {rows:?}");
    let writes = rows[&key("store", "Store.Write", "owner", "2xx")];
    assert!(writes.1 >= 10, "the writes' bytes in: {rows:?}");
    // The server's admin acting in the shop is told apart from the shop's own accounts.
    assert!(rows.keys().any(|k| k.2 == "micro/admin") && rows.keys().all(|k| k.2 != "admin"), "{rows:?}");

    // The shop's admin reads the same; the table has a total row.
    let owner = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    owner.ok(&["--namespace", "shop", "login", "--id", "owner", "--password", "owner-secret-1"]).await;
    let table_out = owner.ok(&["usage", "--by", "service,status"]).await;
    assert!(table_out.contains("registry") && table_out.contains("TOTAL"), "{table_out}");
    let v = owner.json(&["usage", "--by", by, "-o", "json"]).await;
    assert_eq!(usage_rows(&v)[&key("store", "Store.Write", "owner", "2xx")].0, 2, "{v}");
    let only = owner.json(&["usage", "--service", "store", "--by", "service", "-o", "json"]).await;
    assert!(usage_rows(&only).keys().all(|k| k.0 == "store"), "{only}");
    // But not every namespace's, nor another's.
    assert!(owner.error(&["usage", "--all"]).await.contains("server's admins"));
    assert!(owner.error(&["--namespace", "micro", "usage"]).await.contains("403"));
    // A member without the admin scope, and an anonymous caller, read nothing.
    let bob = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    bob.ok(&["--namespace", "shop", "login", "--id", "bob", "--password", "bob-secret-1"]).await;
    assert!(bob.error(&["usage"]).await.contains("admin scope"));
    let anonymous = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    assert!(anonymous.error(&["--namespace", "shop", "usage"]).await.contains("401"));
    // The server's admin sees every namespace.
    let all = admin.json(&["usage", "--all", "--by", "namespace", "-o", "json"]).await;
    let namespaces: Vec<&str> =
        all["rows"].as_array().unwrap().iter().filter_map(|r| r["namespace"].as_str()).collect();
    assert!(namespaces.contains(&"shop") && namespaces.contains(&"micro"), "{all}");

    // Bad input: one clear line each.
    assert!(admin.error(&["usage", "--by", "color"]).await.contains("cannot group by \"color\""));
    assert!(admin.error(&["usage", "--since", "yesterday"]).await.contains("not a time"));
    assert!(admin.error(&["usage", "--since", "1h", "--until", "2h"]).await.contains("before"));
}

/// A service `name` in `micro` whose `Counter.Next` answers with how many times it was
/// called: the count, and the running service.
async fn counter(s: &TestServer, name: &str) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, micro::Running) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = calls.clone();
    let running = s
        .service("micro", name)
        .await
        .handle("Counter.Next", move |_: micro::Context, _: serde_json::Value| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok(serde_json::json!({ "n": n })) }
        })
        .start()
        .await
        .expect("the counter service starts");
    (calls, running)
}

/// `micro cache`: a rule keeps a service's GET answers at the gateway (one answer per
/// caller, per query and per `vary` header); POSTs, cookies and `Cache-Control: no-cache`
/// go to the service; a purge and a deleted rule take effect within a second; malformed
/// rules are refused with the reason; answers from the cache are metered like others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_cached_by_rule_and_purged_with_the_cli() {
    let s = TestServer::start_with(|c| c.usage_flush = Some(std::time::Duration::from_secs(1))).await;
    let cli = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    cli.ok(&["login", "--password", password.trim()]).await;
    let (calls, counter) = counter(&s, "counter").await;

    for (args, why) in [
        (vec!["--ttl", "soon", "--service", "counter"], "whole number"),
        (vec!["--ttl", "2d", "--service", "counter"], "unknown unit"),
        (vec!["--ttl", "30h", "--service", "counter"], "1s to 24h"),
        (vec!["--ttl", "30s"], "needs a route"),
        (vec!["--ttl", "30s", "--route", "counter"], "starting with /"),
        (vec!["--ttl", "30s", "--route", "/", "--vary", "bad header"], "not a header name"),
    ] {
        let mut all = vec!["cache", "set", "bad"];
        all.extend(args);
        assert!(cli.error(&all).await.contains(why), "{why}");
    }
    cli.ok(&["cache", "set", "next", "--service", "counter", "--ttl", "30s", "--vary", "accept-language"]).await;
    let listed = cli.json(&["cache", "list", "-o", "json"]).await;
    assert_eq!(listed["next"]["ttl"], "30s", "{listed}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let api = s.api();
    let get = |headers: Vec<(&'static str, String)>, path: &'static str| {
        let api = api.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = micro_test::http(&api, "GET", path, &h, b"").await;
            assert_eq!(r.status, 200, "{}", r.body);
            let cache = r.head.lines().find_map(|l| l.strip_prefix("x-cache: ")).map(str::to_string);
            (r.json()["n"].as_u64().unwrap(), cache)
        }
    };
    let next = "/counter/counter/next";
    assert_eq!(get(vec![], next).await, (1, Some("MISS".into())));
    assert_eq!(get(vec![], next).await, (1, Some("HIT".into())));
    // Another query, another language: other answers; each kept.
    assert_eq!(get(vec![], "/counter/counter/next?x=1").await.0, 2);
    assert_eq!(get(vec![("accept-language", "fr".into())], next).await.0, 3);
    assert_eq!(get(vec![("accept-language", "fr".into())], next).await, (3, Some("HIT".into())));
    // A caller that asks for a fresh answer gets one, and it is not kept (nobody replaces
    // what others are answered at will).
    assert_eq!(get(vec![("cache-control", "no-cache".into())], next).await, (4, None));
    assert_eq!(get(vec![], next).await, (1, Some("HIT".into())));
    // Cookies are not answered from the cache; POSTs go to the service.
    assert_eq!(get(vec![("cookie", "theme=dark".into())], next).await, (5, None));
    let posted = micro_test::http(&api, "POST", next, &[], b"{}").await;
    assert_eq!(posted.json()["n"], 6);
    // An account gets its own answers, never the anonymous ones (nor another's).
    let bearer = format!("Bearer {}", s.admin_token().await);
    assert_eq!(get(vec![("authorization", bearer.clone())], next).await, (7, Some("MISS".into())));
    assert_eq!(get(vec![("authorization", bearer.clone())], next).await, (7, Some("HIT".into())));
    assert_eq!(get(vec![], next).await.0, 1);
    // Another host name is another key (a service may build its answer from it).
    assert_eq!(get(vec![("host", "other.example".into())], next).await.0, 8);

    // Purged: the next answer is fresh.
    cli.ok(&["cache", "purge"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(vec![], next).await, (9, Some("MISS".into())));
    // Deleted: nothing is answered from the cache.
    cli.ok(&["cache", "delete", "next"]).await;
    assert!(cli.error(&["cache", "delete", "next"]).await.contains("no rule"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get(vec![], next).await, (10, None));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 10);
    // The core's answers are never kept, even under a rule for everything.
    cli.ok(&["cache", "set", "all", "--route", "/", "--ttl", "1m"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let r = micro_test::http(&api, "GET", "/registry/registry/listservices", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.head.to_lowercase().contains("x-cache"), "{}", r.head);
    }
    cli.ok(&["cache", "delete", "all"]).await;

    // Every request is metered, those the cache answered too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let v = cli.json(&["usage", "--service", "counter", "--by", "service", "-o", "json"]).await;
        if v["total"]["requests"].as_u64() == Some(15) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "15 requests metered: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    counter.stop().await;
}

/// `micro domain`: a namespace claims a domain, proves it with a TXT record (looked up on
/// the name server `MICRO_DNS` names, here the test's), and the gateway then routes the
/// domain's requests to the namespace (or to one service), whatever namespace a request
/// names; another namespace cannot claim, verify or remove it; removed, it is no longer
/// served. Bad names are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_are_verified_by_dns_and_routed_by_host() {
    let dns = micro_test::dns::TxtServer::start().await;
    let s = TestServer::start_with(|c| c.dns = Some(dns.addr.clone())).await;
    s.create_account("shop", "owner", "owner-secret-1", "user", &["admin"]).await;
    s.create_account("blog", "boss", "boss-secret-1", "user", &["admin"]).await;
    let web = s
        .service("shop", "web")
        .await
        .handle("Web.Home", |_: micro::Context, _: serde_json::Value| async move {
            Ok(serde_json::json!({"page": "home of shop"}))
        })
        .start()
        .await
        .unwrap();
    let owner = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    owner.ok(&["--namespace", "shop", "login", "--id", "owner", "--password", "owner-secret-1"]).await;
    let boss = Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy());
    boss.ok(&["--namespace", "blog", "login", "--id", "boss", "--password", "boss-secret-1"]).await;

    for (name, why) in
        [("localhost", "needs a dot"), ("127.0.0.1", "address"), ("sh_op.test", "labels"), ("a..b", "labels")]
    {
        let e = owner.error(&["domain", "add", name]).await;
        assert!(e.contains(why), "{name}: {e}");
    }
    assert!(owner.error(&["domain", "add", "myshop.test", "--service", "bad name"]).await.contains("invalid service"));
    let claim = owner.json(&["domain", "add", "myshop.test", "-o", "json"]).await;
    assert_eq!((claim["domain"].as_str(), claim["verified"].as_bool()), (Some("myshop.test"), Some(false)), "{claim}");
    let txt_name = claim["txt"]["name"].as_str().unwrap().to_string();
    let txt_value = claim["txt"]["value"].as_str().unwrap().to_string();
    assert_eq!(txt_name, "_micro-challenge.myshop.test");
    let text = owner.ok(&["domain", "add", "web.myshop.test", "--service", "web"]).await;
    assert!(text.contains("TXT _micro-challenge.web.myshop.test"), "{text}");

    // Another namespace may claim it too (a claim nobody proves blocks nobody), but its
    // claim is its own: it cannot verify the shop's record, nor touch the shop's claim.
    let rival = boss.json(&["domain", "add", "MyShop.test.", "-o", "json"]).await;
    assert_eq!((rival["namespace"].as_str(), rival["verified"].as_bool()), (Some("blog"), Some(false)), "{rival}");
    assert_ne!(rival["txt"]["value"], claim["txt"]["value"], "each claim has its own token");

    // Not verified: not served (the gateway answers for itself).
    let api = s.api();
    let home = |host: &'static str, path: &'static str| {
        let api = api.clone();
        async move { micro_test::http(&api, "GET", path, &[("host", host), ("micro-namespace", "blog")], b"").await }
    };
    assert_eq!(home("myshop.test", "/").await.json()["name"], "micro");
    let err = owner.error(&["domain", "verify", "myshop.test"]).await;
    assert!(err.contains("no TXT record _micro-challenge.myshop.test"), "{err}");
    // A wrong token does not do either.
    dns.set(&txt_name, "micro-verify=guessed");
    assert!(owner.error(&["domain", "verify", "myshop.test"]).await.contains("no TXT record"));
    dns.set(&txt_name, &txt_value);
    let verified = owner.json(&["domain", "verify", "myshop.test", "-o", "json"]).await;
    assert_eq!(verified["verified"], true, "{verified}");
    // The first to verify holds the domain: the rival's claim goes nowhere.
    assert!(boss.error(&["domain", "verify", "myshop.test"]).await.contains("claimed by another namespace"));
    assert!(boss.error(&["domain", "add", "myshop.test"]).await.contains("claimed by another namespace"));
    boss.ok(&["domain", "remove", "myshop.test"]).await;
    assert!(boss.error(&["domain", "remove", "myshop.test"]).await.contains("no domain myshop.test"));
    assert!(boss.json(&["domain", "list", "-o", "json"]).await.as_array().unwrap().is_empty());
    let web_txt = owner.json(&["domain", "list", "-o", "json"]).await;
    let web_claim = web_txt.as_array().unwrap().iter().find(|d| d["domain"] == "web.myshop.test").unwrap().clone();
    dns.set(web_claim["txt"]["name"].as_str().unwrap(), web_claim["txt"]["value"].as_str().unwrap());
    owner.ok(&["domain", "verify", "web.myshop.test"]).await;

    // Served within a second: the domain's requests go to the shop (the request's own
    // namespace header does not count), and a service's domain to the service.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = home("myshop.test", "/web/web/home").await;
    assert_eq!((r.status, r.json()["page"].as_str()), (200, Some("home of shop")), "{}", r.body);
    let r = home("web.myshop.test:8080", "/web/home").await;
    assert_eq!((r.status, r.json()["page"].as_str()), (200, Some("home of shop")), "{}", r.body);
    assert_ne!(home("myshop.test", "/").await.status, 200, "the domain's root is the namespace's, not the gateway's");
    let listed = owner.ok(&["domain", "list"]).await;
    assert!(listed.contains("myshop.test") && listed.contains("true"), "{listed}");

    // Removed: no longer served.
    owner.ok(&["domain", "remove", "myshop.test"]).await;
    assert!(owner.error(&["domain", "remove", "myshop.test"]).await.contains("no domain"));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(home("myshop.test", "/").await.json()["name"], "micro");
    // Now free for another namespace to claim.
    assert_eq!(boss.json(&["domain", "add", "myshop.test", "-o", "json"]).await["namespace"], "blog");
    web.stop().await;
}

/// Two nodes sharing PostgreSQL (rules in the shared config) and Redis: an answer kept
/// through one node is served by the other, a purge reaches both, and a rate limit holds
/// for the cluster as a whole, whichever node a client's requests reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_and_rate_limits_are_shared_by_nodes_through_redis() {
    let (Some(pg), Some(redis)) =
        (micro_test::backend_url("MICRO_TEST_POSTGRES"), micro_test::backend_url("MICRO_TEST_REDIS"))
    else {
        return;
    };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_edge_{}", std::process::id())).await;
    let start = || {
        let (url, redis) = (schema.url.clone(), redis.clone());
        TestServer::start_with(move |c| {
            c.backends.database = Some(micro_server::Secret(url));
            c.backends.sync = Some(micro_server::Secret(redis));
            c.backends.config_key = Some([9; 32]);
            c.admin_password = Some(micro_server::Secret("edge-admin-password".into()));
        })
    };
    let (a, b) = (start().await, start().await);
    let cli = Cli::new(env!("CARGO_BIN_EXE_micro"), &a.proxy());
    cli.ok(&["login", "--password", "edge-admin-password"]).await;
    let name = format!("counter{}", std::process::id());
    let (calls, counter) = counter(&a, &name).await;
    let path = format!("/{name}/counter/next");
    // Behind a balancer every node sees the same host.
    let get = |node: &TestServer| {
        let (api, path) = (node.api(), path.clone());
        async move {
            let r = micro_test::http(&api, "GET", &path, &[("host", "shop.example")], b"").await;
            let cache = r.head.lines().find_map(|l| l.strip_prefix("x-cache: ")).map(str::to_string);
            let n = r.json()["n"].as_u64();
            (r.status, n, cache, r.head)
        }
    };

    cli.ok(&["cache", "set", "next", "--service", &name, "--ttl", "30s"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, n, cache, head) = get(&a).await;
    assert_eq!((status, n, cache.as_deref()), (200, Some(1), Some("MISS")), "{head}");
    // B has never seen the answer: it comes from Redis (shared a moment after A kept it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, n, cache, head) = get(&b).await;
        assert_eq!((status, n), (200, Some(1)), "B serves A's answer: {head}");
        if cache.as_deref() == Some("HIT") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B serves from the shared cache: {head}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1, "the service answered once");
    // A purge through A reaches B, and what B keeps then, A serves.
    cli.ok(&["cache", "purge"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (_, n, cache, head) = get(&b).await;
    assert_eq!((n, cache.as_deref()), (Some(2), Some("MISS")), "{head}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, n, cache, head) = get(&a).await;
    assert_eq!((n, cache.as_deref()), (Some(2), Some("HIT")), "{head}");
    // Whoever can write to Redis but has not the server key cannot plant an answer: an
    // answer A shared, altered in Redis, is refused by B, which asks the service.
    let before = redis_keys(&redis, "micro:cache:micro:*").await;
    let poison = |node: &TestServer| {
        let (api, path) = (node.api(), path.clone());
        async move { micro_test::http(&api, "GET", &path, &[("host", "poison.example")], b"").await.json()["n"].as_u64() }
    };
    assert_eq!(poison(&a).await, Some(3));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let key = loop {
        if let Some(k) = redis_keys(&redis, "micro:cache:micro:*").await.into_iter().find(|k| !before.contains(k)) {
            break k;
        }
        assert!(std::time::Instant::now() < deadline, "A shares the answer");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut kept = redis_command(&redis, &[b"GET", key.as_bytes()]).await.expect("the shared answer");
    assert!(kept.ends_with(b"{\"n\":3}"), "{}", String::from_utf8_lossy(&kept));
    let len = kept.len();
    kept[len - 2] = b'7';
    redis_command(&redis, &[b"SET", key.as_bytes(), &kept, b"PX", b"30000"]).await;
    assert_eq!(poison(&b).await, Some(4), "the altered answer is not served");
    cli.ok(&["cache", "delete", "next"]).await;

    // Four a minute for each client address, wherever its requests land.
    cli.ok(&["ratelimit", "set", "shared", "--rate", "4/m", "--service", &name]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for (node, left) in [(&a, 3), (&b, 2), (&a, 1), (&b, 0)] {
        let (status, _, _, head) = get(node).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains(&format!("ratelimit: \"shared\";r={left}")), "{head}");
    }
    for node in [&a, &b] {
        let (status, _, _, head) = get(node).await;
        assert_eq!(status, 429, "the cluster's fifth request is refused on either node: {head}");
        let retry: u64 = head.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap().trim().parse().unwrap();
        assert!((1..=15).contains(&retry), "a request every 15 s: {retry}");
    }
    cli.ok(&["ratelimit", "delete", "shared"]).await;
    // The nodes' gauges show their database pools.
    let scraped = micro_test::http(&b.api(), "GET", "/metrics", &[], b"").await;
    assert!(scraped.body.contains("micro_postgres_connections{state=\"open\"}"), "{}", scraped.body);
    counter.stop().await;
    a.server.stop().await;
    b.server.stop().await;
    schema.drop().await;
}

/// Sends one command to the Redis at `url` (`redis://host:port`) in RESP; returns a bulk
/// reply's bytes (`None` for a nil or a status reply).
async fn redis_command(url: &str, args: &[&[u8]]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("redis://").split('/').next().expect("host:port");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("Redis answers");
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    conn.write_all(&req).await.expect("sent");
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).await.expect("a reply");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else { continue };
        match buf[0] {
            b'$' => {
                let len: i64 = std::str::from_utf8(&buf[1..end]).expect("a length").parse().expect("a length");
                if len < 0 {
                    return None;
                }
                let (start, len) = (end + 2, len as usize);
                if buf.len() >= start + len + 2 {
                    return Some(buf[start..start + len].to_vec());
                }
            }
            _ => return None,
        }
        if n == 0 {
            return None;
        }
    }
}

/// The keys of the Redis at `url` matching `pattern` (a small listing, for tests).
async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("redis://").split('/').next().expect("host:port");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("Redis answers");
    let req = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
    conn.write_all(req.as_bytes()).await.expect("sent");
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).await.expect("a reply");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut lines = text.split("\r\n");
        let count: usize = lines.next().and_then(|l| l.strip_prefix('*')).and_then(|c| c.parse().ok()).unwrap_or(0);
        let keys: Vec<String> = lines.skip(1).step_by(2).take(count).map(str::to_string).collect();
        if keys.len() == count && text.ends_with("\r\n") || n == 0 {
            return keys.into_iter().filter(|k| !k.is_empty()).collect();
        }
    }
}
