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
