//! Signing in through a real OpenID Connect provider (the `oidc-provider` package under
//! node) in a real browser (headless chromium): the authorization code flow with PKCE,
//! from the app's `Users.OAuthStart` to the provider's login form and back to the app's
//! page, finished by `Users.OAuthFinish` — a new user, the same user again, a password
//! user linked by the address the provider confirmed, and the flow's bad inputs.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::{Reaped, ServerProcess};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn micro() -> PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// Where `scripts/browser-setup` installs playwright-core and oidc-provider.
fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("web-e2e/node_modules")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc").join(name)
}

/// Whether node, chromium, playwright-core and oidc-provider are there (else a notice,
/// or a failure under `MICRO_TEST_REQUIRE_BACKENDS`).
fn ready() -> bool {
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    let missing = [
        (!node).then_some("node"),
        (!Path::new("/usr/bin/chromium").exists()).then_some("chromium"),
        (!node_modules().join("playwright-core/package.json").exists()).then_some("playwright-core"),
        (!node_modules().join("oidc-provider/package.json").exists()).then_some("oidc-provider"),
    ];
    let Some(what) = missing.into_iter().flatten().next() else { return true };
    assert!(std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(), "{what} is needed: run scripts/browser-setup");
    eprintln!("notice: skipping the OpenID Connect test: {what} is missing (run scripts/browser-setup)");
    false
}

/// The app's page the provider sends the browser back to: any path answers 200.
async fn app_page() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let body = "<!doctype html><title>Shop</title><p>Signing in…";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/callback")
}

/// Starts the provider for `redirect`: the process and its issuer.
async fn provider(redirect: &str) -> (Reaped, String) {
    let port = micro_test::free_port();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(script("provider.mjs"))
        .env("NODE_MODULES", node_modules())
        .env("PORT", port.to_string())
        .env("REDIRECT_URL", redirect)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Reaped::spawn(&mut cmd);
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(tokio::process::ChildStdout::from_std(stdout).unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let line = ready.expect("the provider starts").unwrap().unwrap_or_default();
    let issuer = line.strip_prefix("ready ").unwrap_or_else(|| panic!("the provider says {line:?}")).to_string();
    // What it says later goes to the test's output.
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            eprintln!("provider: {l}");
        }
    });
    (child, issuer)
}

/// Signs `login` in through the provider in chromium from `start`: the page the
/// browser lands on.
async fn browser_signin(start: &str, login: &str, redirect: &str) -> url::Url {
    let out = tokio::process::Command::new("node")
        .arg(script("signin.mjs"))
        .env("NODE_MODULES", node_modules())
        .env("START_URL", start)
        .env("LOGIN", login)
        .env("REDIRECT_URL", redirect)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.expect("the browser run ends").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let landed = stdout.lines().find_map(|l| l.strip_prefix("landed ")).unwrap_or_else(|| panic!("{stdout}"));
    url::Url::parse(landed).unwrap()
}

fn param(u: &url::Url, name: &str) -> String {
    u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string()).unwrap_or_default()
}

async fn post(api: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call(api, "POST", path, token, "shop", Some(body)).await
}

/// Starts a sign-in through `corp` and finishes it in the browser as `login`.
async fn sign_in(api: &str, redirect: &str, login: &str) -> (u16, Value, String) {
    let (st, start) =
        post(api, "/users/v1/oauth/start", None, json!({"provider": "corp", "redirect_url": redirect})).await;
    assert_eq!(st, 200, "{start}");
    let url = start["url"].as_str().unwrap();
    assert!(url.contains("code_challenge_method=S256") && url.contains("nonce="), "{url}");
    let landed = browser_signin(url, login, redirect).await;
    assert_eq!(param(&landed, "state"), start["state"].as_str().unwrap(), "{landed}");
    let body = json!({"state": param(&landed, "state"), "code": param(&landed, "code")});
    let (st, v) = post(api, "/users/v1/oauth/finish", None, body.clone()).await;
    (st, v, body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_signs_in_through_a_real_openid_connect_provider_in_a_browser() {
    if !ready() {
        return;
    }
    let redirect = app_page().await;
    let (_provider, issuer) = provider(&redirect).await;
    // The provider is on 127.0.0.1: the server is told it may reach private addresses.
    let s = ServerProcess::start(&micro(), &[("MICRO_USERS_OIDC_PRIVATE", "1"), ("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let api = s.api.clone();
    let corp = json!({"name": "corp", "issuer": issuer, "client_id": "shop", "client_secret": "shop-secret",
                      "redirect_urls": [redirect]});
    let (st, v) = post(&api, "/users/v1/settings", Some(&ann), json!({"app_name": "Shop", "providers": [corp]})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["providers"][0]["client_secret"], "********", "the secret is not shown again: {v}");
    let (_, shown) = call(&api, "GET", "/users/v1/settings", Some(&ann), "shop", None).await;
    assert!(!shown.to_string().contains("shop-secret"), "{shown}");

    // Bad input: an unknown provider, a redirect URL that is not exactly a listed one
    // (an open redirect), a state never issued.
    let (st, _) =
        post(&api, "/users/v1/oauth/start", None, json!({"provider": "nope", "redirect_url": redirect})).await;
    assert_eq!(st, 404);
    for evil in [
        "https://evil.example/callback".to_string(),
        format!("{redirect}/../evil"),
        format!("{redirect}?next=https://evil.example"),
        redirect.replace("/callback", "/callbackx"),
    ] {
        let (st, v) =
            post(&api, "/users/v1/oauth/start", None, json!({"provider": "corp", "redirect_url": evil})).await;
        assert_eq!(st, 400, "{evil}: {v}");
    }
    let (st, _) = post(&api, "/users/v1/oauth/finish", None, json!({"state": "made-up", "code": "x"})).await;
    assert_eq!(st, 400);

    // A newcomer: signed up, confirmed by the provider's word.
    let (st, zed, finish) = sign_in(&api, &redirect, "zed").await;
    assert_eq!(st, 200, "{zed}");
    assert_eq!(zed["user"]["email"], "zed@idp.test");
    assert_eq!(zed["user"]["verified"], true);
    let (st, me) = call(&api, "GET", "/users/v1/me", zed["token"].as_str(), "shop", None).await;
    assert_eq!((st, &me["name"]), (200, &json!("User zed")), "{me}");
    // The state and the code work once.
    let (st, v) = post(&api, "/users/v1/oauth/finish", None, serde_json::from_str(&finish).unwrap()).await;
    assert_eq!(st, 400, "{v}");

    // The same person again: the same user.
    let (st, again, _) = sign_in(&api, &redirect, "zed").await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["user"]["id"], zed["user"]["id"]);

    // A user who signed up with the address the provider confirms, unconfirmed: linked,
    // not duplicated; the password chosen at that signup (by whoever it was) stops working.
    let kim = json!({"email": "kim@idp.test", "password": "kim's own password"});
    let (st, v) = post(&api, "/users/v1/signup", None, kim.clone()).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(&api, "/users/v1/login", None, kim.clone()).await;
    assert_eq!(st, 400, "unconfirmed: {v}");
    let (_, listed) = call(&api, "GET", "/users/v1/users", Some(&ann), "shop", None).await;
    let kim_id =
        listed["users"].as_array().unwrap().iter().find(|u| u["email"] == "kim@idp.test").unwrap()["id"].clone();
    let (st, linked, _) = sign_in(&api, &redirect, "kim").await;
    assert_eq!(st, 200, "{linked}");
    assert_eq!(linked["user"]["id"], kim_id);
    assert_eq!(linked["user"]["verified"], true);
    let (st, v) = post(&api, "/users/v1/login", None, kim).await;
    assert_eq!(st, 401, "the unproven password is gone: {v}");
    let (st, v) = call(&api, "GET", "/users/v1/users", Some(&ann), "shop", None).await;
    assert_eq!((st, v["users"].as_array().map(Vec::len)), (200, Some(2)), "{v}");

    // Erased, the link goes too: the next sign-in makes a new user.
    let (st, _) = call(
        &api,
        "DELETE",
        &format!("/users/v1/users/{}", zed["user"]["id"].as_str().unwrap()),
        Some(&ann),
        "shop",
        None,
    )
    .await;
    assert_eq!(st, 204);
    let (st, fresh, _) = sign_in(&api, &redirect, "zed").await;
    assert_eq!(st, 200, "{fresh}");
    assert_ne!(fresh["user"]["id"], zed["user"]["id"]);
    let _ = s.stop();
}
