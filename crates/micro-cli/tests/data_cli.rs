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
