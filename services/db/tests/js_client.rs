//! The JavaScript client (`clients/js`) against a real `micro server`: its own tests in
//! node, and its page in headless chromium, served by the gateway as an app of the
//! namespace (at `<namespace>.<hosting domain>`), talking to the database on the same
//! origin.

use micro_test::process::ServerProcess;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn micro() -> PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// Where `scripts/browser-setup` installs playwright-core.
fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("web-e2e/node_modules")
}

/// Whether what a test needs is there (`what` missing: it skips with a notice, and fails
/// under `MICRO_TEST_REQUIRE_BACKENDS`).
fn ready(missing: Option<String>) -> bool {
    let Some(what) = missing else { return true };
    assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "{what} is needed: run scripts/browser-setup");
    eprintln!("notice: skipping: {what} is missing (run scripts/browser-setup)");
    false
}

fn node_missing() -> Option<String> {
    (!micro_test::js::node_runs()).then(|| "node".to_string())
}

/// A namespace `ns` with an admin `owner` and users `alice` and `bob` (secrets `<id>-pass-1`).
async fn namespace(s: &ServerProcess, ns: &str) {
    s.admin_cli().await.ok(&["namespace", "create", ns]).await;
    let admin = s.admin_token().await;
    for (id, scopes) in [("owner", &["admin"][..]), ("alice", &[]), ("bob", &[])] {
        micro_test::create_account(&s.proxy, &admin, ns, (id, &format!("{id}-pass-1")), "user", scopes).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_clients_own_tests_pass_in_node_against_a_real_server() {
    if !ready(node_missing()) {
        return;
    }
    let s = ServerProcess::start(&micro(), &[]);
    namespace(&s, "jsclient").await;
    let out = tokio::process::Command::new("node")
        // (test/users.test.js is the users product's: services/users/tests/js_client.rs.)
        .args(["--test", "test/unit.test.js", "test/db.test.js", "test/lists.test.js"])
        .current_dir(micro_test::js::client_dir())
        .env("MICRO_API", format!("http://{}", s.api))
        .env("MICRO_NAMESPACE", "jsclient")
        .envs([("MICRO_ADMIN_ID", "owner"), ("MICRO_ADMIN_PASSWORD", "owner-pass-1")])
        .envs([("MICRO_USER_ID", "alice"), ("MICRO_USER_PASSWORD", "alice-pass-1")])
        .envs([("MICRO_OTHER_ID", "bob"), ("MICRO_OTHER_PASSWORD", "bob-pass-1")])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("node's tests end").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0") && !stdout.contains("# pass 0"), "{stdout}");
    let _ = s.stop();
}

/// Serves the files of `dir` over plain HTTP (GET only, nothing above `dir`), as an
/// app of a namespace would be: its address.
async fn static_files(dir: PathBuf) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").split(['?', '#']).next().unwrap_or("/");
                let file = dir.join(path.trim_start_matches('/'));
                let (status, kind, body) = match std::fs::read(&file) {
                    Ok(b) if !path.contains("..") => {
                        let kind = match file.extension().and_then(|e| e.to_str()) {
                            Some("html") => "text/html; charset=utf-8",
                            Some("js" | "mjs") => "text/javascript; charset=utf-8",
                            _ => "application/octet-stream",
                        };
                        ("200 OK", kind, b)
                    }
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_works_in_a_real_browser_from_a_page_the_gateway_serves() {
    let chromium = "/usr/bin/chromium";
    let missing =
        node_missing().or_else(|| (!Path::new(chromium).exists()).then(|| chromium.to_string())).or_else(|| {
            (!node_modules().join("playwright-core/package.json").exists())
                .then(|| format!("playwright-core in {}", node_modules().display()))
        });
    if !ready(missing) {
        return;
    }
    let s = ServerProcess::start(&micro(), &[("MICRO_HOSTING_DOMAIN", "apps.test")]);
    namespace(&s, "webapp").await;
    let owner = micro_test::login(&s.proxy, "webapp", "owner", "owner-pass-1").await;
    let todos = json!({"name": "todos", "rules": {
        "list": "owner = @request.auth.id", "view": "owner = @request.auth.id",
        "create": "owner = @request.auth.id", "update": "owner = @request.auth.id"}});
    let (st, v) =
        micro_test::call_json(&s.api, "POST", "/db/v1/collections", Some(&owner), "webapp", Some(todos)).await;
    assert_eq!(st, 200, "{v}");
    // The app: the client's files, registered as the namespace's HTTP service `app`.
    let files = static_files(micro_test::js::client_dir()).await;
    let node = json!({"service": {"name": "app", "nodes": [{"id": "app-1", "address": files, "metadata": {"protocol": "http"}}]}});
    let (st, v) = micro_test::call_json(&s.api, "POST", "/registry/register", Some(&owner), "webapp", Some(node)).await;
    assert!(st == 200 || st == 204, "{st} {v}");
    let port = s.api.rsplit(':').next().expect("a port");
    let url = format!("http://webapp.apps.test:{port}/app/browser/page.html#ns=webapp&id=alice&password=alice-pass-1");
    let out = tokio::process::Command::new("node")
        .arg(micro_test::js::client_dir().join("browser/run.mjs"))
        .env("NODE_PATH", node_modules())
        .env("PAGE_URL", &url)
        .env("CHROMIUM", chromium)
        .env("RESOLVE", "MAP *.apps.test 127.0.0.1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(120), out).await.expect("the browser run ends").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASSED in the browser"), "{stdout}");
    let _ = s.stop();
}
