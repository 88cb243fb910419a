//! The data-plane commands of the `micro` CLI against a real server.

use micro_test::TestServer;
use std::process::Command;

fn micro(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_micro"))
        .arg("--server")
        .arg(server)
        .args(args)
        // A HOME of this test binary's own: `micro login` writes credentials there.
        .env("HOME", std::env::temp_dir().join(format!("micro-data-cli-{}", std::process::id())))
        .output()
        .expect("micro runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `micro` off the async runtime: (exit code, stdout, stderr).
async fn run(server: &str, args: &[&str]) -> (i32, String, String) {
    let (server, args) = (server.to_string(), args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        micro(&server, &args)
    })
    .await
    .expect("the command ran")
}

/// Runs `micro`, asserting success; returns stdout.
async fn ok(server: &str, args: &[&str]) -> String {
    let (code, out, err) = run(server, args).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    out
}

/// Runs `micro`, expecting one clear error line and exit code 1; returns it.
async fn fails(server: &str, args: &[&str]) -> String {
    let (code, out, err) = run(server, args).await;
    assert_eq!(code, 1, "expected failure; stdout: {out}\nstderr: {err}");
    assert!(err.starts_with("error: ") && err.trim().lines().count() == 1, "one clear line: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_config_events_and_blob_commands() {
    let s = TestServer::start().await;
    let p = s.proxy();
    // The data services need an admin: log in first; without, a clear 401.
    assert!(fails(&p, &["store", "list"]).await.contains("401"));
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    ok(&p, &["login", "--password", password.trim()]).await;

    // Store.
    ok(&p, &["store", "write", "user/1", r#"{"name":"Alice"}"#]).await;
    ok(&p, &["store", "write", "user/2", "bob", "--ttl", "1h", "-m", "kind=person"]).await;
    assert_eq!(ok(&p, &["store", "read", "user/1"]).await.trim(), r#"{"name":"Alice"}"#);
    let listed = ok(&p, &["store", "list", "--prefix", "user/"]).await;
    assert_eq!(listed.lines().collect::<Vec<_>>(), ["user/1", "user/2"]);
    let verbose = ok(&p, &["store", "read", "user/", "--prefix", "-v"]).await;
    assert!(verbose.contains("kind=person") && verbose.contains("EXPIRY"), "{verbose}");
    let json = ok(&p, &["store", "read", "user/", "--prefix", "--desc", "--limit", "1", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["key"], "user/2", "{v}");
    assert_eq!(ok(&p, &["store", "tables"]).await.trim(), "default");
    ok(&p, &["store", "write", "o/1", "x", "--table", "orders"]).await;
    assert!(ok(&p, &["store", "databases"]).await.contains("micro"));
    ok(&p, &["store", "delete", "user/1"]).await;
    assert!(fails(&p, &["store", "read", "user/1"]).await.contains("404"));
    fails(&p, &["store", "write", "", "x"]).await;

    // Config, with a secret.
    ok(&p, &["config", "set", "app.db", r#"{"host":"db1","port":5432}"#]).await;
    ok(&p, &["config", "set", "app.db", r#"{"port":6432}"#]).await;
    ok(&p, &["config", "set", "app.db.password", r#""hunter2""#, "--secret"]).await;
    ok(&p, &["config", "set", "app.mode", "production"]).await;
    let db: serde_json::Value =
        serde_json::from_str(&ok(&p, &["config", "get", "app.db", "-o", "json"]).await).unwrap();
    assert_eq!(db, serde_json::json!({"host":"db1","port":6432,"password":"[secret]"}));
    assert_eq!(ok(&p, &["config", "get", "app.db.password", "--secret"]).await.trim(), "hunter2");
    assert_eq!(ok(&p, &["config", "get", "app.mode"]).await.trim(), "production");
    ok(&p, &["config", "del", "app.db"]).await;
    fails(&p, &["config", "get", "app.db"]).await;
    fails(&p, &["config", "set", "app.x", "{bad json"]).await;
    fails(&p, &["config", "set", "app..x", "1"]).await;

    // Events.
    assert_eq!(ok(&p, &["publish", "orders", r#"{"id":1}"#]).await.trim(), "published orders #1");
    ok(&p, &["publish", "orders", r#"{"id":2}"#, "--key", "customer-7"]).await;
    let history = ok(&p, &["events", "read", "orders"]).await;
    assert!(history.contains(r#"{"id":1}"#) && history.contains("customer-7"), "{history}");
    let consumed = ok(&p, &["events", "consume", "orders", "--offset", "first", "--count", "2"]).await;
    assert_eq!(consumed.lines().count(), 2, "{consumed}");
    assert_eq!(ok(&p, &["events", "topics"]).await.trim(), "orders");
    // A group's progress; its last ack reaches the server before the CLI exits.
    ok(&p, &["events", "consume", "orders", "--group", "billing", "--offset", "first", "--count", "1"]).await;
    let groups = ok(&p, &["events", "groups", "orders"]).await;
    let rows: Vec<Vec<&str>> = groups.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [["NAME", "DELIVERED", "ACKED", "PENDING", "LAG"], ["billing", "1", "1", "0", "1"]], "{groups}");
    assert!(fails(&p, &["events", "groups", "nosuch"]).await.contains("404"));
    assert!(fails(&p, &["events", "read", "nosuch"]).await.contains("404"));
    fails(&p, &["publish", "orders", "not json"]).await;
    fails(&p, &["publish", "bad topic!", "{}"]).await;

    // Blobs.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cat.txt");
    std::fs::write(&src, b"meow".repeat(100_000)).unwrap();
    ok(&p, &["blob", "put", "pets", "cats/tom.txt", src.to_str().unwrap(), "--content-type", "text/plain"]).await;
    let listed = ok(&p, &["blob", "list", "pets"]).await;
    assert!(listed.contains("cats/tom.txt") && listed.contains("400000") && listed.contains("text/plain"), "{listed}");
    let dst = dir.path().join("out.txt");
    ok(&p, &["blob", "get", "pets", "cats/tom.txt", dst.to_str().unwrap()]).await;
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    ok(&p, &["blob", "delete", "pets", "cats/tom.txt"]).await;
    fails(&p, &["blob", "get", "pets", "cats/tom.txt"]).await;
    fails(&p, &["blob", "list", "Bad Bucket"]).await;
    fails(&p, &["blob", "put", "pets", "x", "/no/such/file"]).await;
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
