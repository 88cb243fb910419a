//! The web dashboard in a real browser: the real `micro server` binary over a temp data
//! dir, the helloworld example registered with it, and `tests/web/e2e.mjs` driving
//! Debian's chromium through playwright-core (both installed by `scripts/browser-setup`).
//! Without them the test skips with a notice, except in CI
//! (`MICRO_TEST_REQUIRE_BACKENDS`), where it fails. A second, short run drives the
//! dashboard of a server with `MICRO_TLS=auto` over HTTPS, the browser trusting the CA
//! the server printed (the script's `tls: …` steps).
//!
//! `E2E_SCREENSHOTS=dir` (see `scripts/screenshots`) makes the script save every page it
//! visits; `E2E_ONLY=regex` runs only some of its steps.
//!
//! The runtime steps run a service from a small git repository made here (a `micro.toml`
//! whose shell loop prints a line a second), passed as `E2E_RUNTIME_SOURCE`; without `git`
//! they skip.

#![allow(clippy::unwrap_used)] // helpers of a test: a failed unwrap is a failed test

use micro_test::process::{ServerProcess, binary};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, at most (it takes about 30 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Where `scripts/browser-setup` installs playwright-core: `$target/web-e2e/node_modules`.
fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("web-e2e/node_modules")
}

/// Whether chromium, node, playwright-core and certutil are there; without them the test skips with
/// a notice, except under `MICRO_TEST_REQUIRE_BACKENDS`, where it fails.
fn browser_ready() -> bool {
    let run =
        |program: &str, arg: &str| Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
    let missing = if !Path::new(CHROMIUM).exists() {
        Some(CHROMIUM.to_string())
    } else if !run("node", "--version").is_ok_and(|s| s.success()) {
        Some("node".to_string())
    } else if !node_modules().join("playwright-core/package.json").exists() {
        Some(format!("playwright-core in {}", node_modules().display()))
    } else if run("certutil", "-H").is_err() {
        // Makes the NSS database through which the TLS run's browser trusts the server's CA
        // (its help exits non-zero: that it starts is enough).
        Some("certutil (libnss3-tools)".to_string())
    } else {
        None
    };
    let Some(what) = missing else { return true };
    assert!(
        std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
        "{what} is needed by the browser test: run scripts/browser-setup"
    );
    eprintln!("notice: skipping the browser test: {what} is missing (run scripts/browser-setup)");
    false
}

/// A local git repository holding one service, `ticker`: a `micro.toml` whose `run` prints
/// `started`, then `tick N` every second (no `[http]`: the runtime counts it ready after a
/// second up). Returns the folder (removed on drop) and its `file://` URL, or `None`
/// without git.
fn ticker_repo() -> Option<(tempfile::TempDir, String)> {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("ticker");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("micro.toml"),
        "name = \"ticker\"\nrun = \"sh -c 'echo started; i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done'\"\n",
    )
    .unwrap();
    for args in [&["init", "-q"][..], &["add", "."], &["commit", "-q", "-m", "ticker"]] {
        let out = Command::new("git")
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&repo)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("git {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                assert!(
                    std::env::var_os("MICRO_TEST_REQUIRE_BACKENDS").is_none(),
                    "git is needed by the browser test's runtime steps: {e}"
                );
                eprintln!("notice: the runtime steps of the browser test skip: git cannot run ({e})");
                return None;
            }
        }
    }
    let url = format!("file://{}", repo.display());
    Some((dir, url))
}

/// Runs `tests/web/e2e.mjs` with `env` (on top of the browser's paths) against `server`;
/// returns what it printed, once it passed (else fails with the server's warnings too).
async fn e2e(env: &[(&str, &str)], server: &ServerProcess) -> String {
    script("tests/web/e2e.mjs", env, server).await
}

/// Runs the browser script `path` (of the repository) with `env`, as [`e2e`] does.
async fn script(path: &str, env: &[(&str, &str)], server: &ServerProcess) -> String {
    let started = Instant::now();
    let mut node = tokio::process::Command::new("node");
    node.arg(repo_root().join(path))
        .current_dir(repo_root())
        .env("NODE_PATH", node_modules())
        .env("E2E_CHROMIUM", CHROMIUM)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, node.output())
        .await
        .unwrap_or_else(|_| panic!("{path} ran longer than {SCRIPT_TIMEOUT:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // What the server said went wrong, for a failure seen only in CI.
        let log = server.output();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("service=\"email\""))
            .collect();
        let warnings = warnings[warnings.len().saturating_sub(60)..].join("\n");
        panic!(
            "{path} failed ({}):\n{stdout}\n{stderr}\nthe server's last warnings (and mail):\n{warnings}",
            out.status
        );
    }
    eprintln!("{path} ({:.1?}):\n{stdout}", started.elapsed());
    assert!(
        stdout.contains(" passed, 0 failed") || stdout.contains("app: passed"),
        "no summary from {path}:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let network =
        [("MICRO_NETWORK_NAME", "hq"), ("MICRO_NETWORK_ADDRESS", "127.0.0.1:0"), ("MICRO_NETWORK_EXPORT", "micro")];
    let server = ServerProcess::start(&binary(env!("CARGO_BIN_EXE_micro")), &network);
    // Registered and answering (the pages list it and call it).
    let _helloworld = server.helloworld().await;
    // A second cluster joined to it, for the network page.
    let edge = ServerProcess::start(&binary(env!("CARGO_BIN_EXE_micro")), &[("MICRO_NETWORK_NAME", "edge")]);
    let hq = server.admin_cli().await;
    let token = hq.json(&["network", "token", "-o", "json"]).await["token"].as_str().unwrap().to_string();
    edge.admin_cli().await.ok(&["network", "join", &server.network, &token]).await;
    let linked = micro_test::eventually(std::time::Duration::from_secs(10), || async {
        hq.json(&["network", "nodes", "-o", "json"]).await["nodes"][1]["connected"] == true
    })
    .await;
    assert!(linked, "edge did not link to hq");

    let ticker = ticker_repo();
    let (web, api) = (format!("http://{}", server.web), format!("http://{}", server.api));
    let mut env = vec![("E2E_URL", web.as_str()), ("E2E_API_URL", api.as_str())];
    env.push(("E2E_ADMIN_PASSWORD", server.admin_password.as_str()));
    if let Some((_, url)) = &ticker {
        env.push(("E2E_RUNTIME_SOURCE", url.as_str()));
    }
    let stdout = e2e(&env, &server).await;

    // The usage page showed helloworld's Greeter.Hello (2xx) as `micro usage` prints it
    // (nothing calls it after that step).
    let Some(shown) = stdout.lines().find_map(|l| l.strip_prefix("usage row: ")) else {
        assert!(std::env::var_os("E2E_ONLY").is_some(), "the usage step printed no row:\n{stdout}");
        return;
    };
    let shown: serde_json::Value = serde_json::from_str(shown).unwrap();
    let cli = server.admin_cli().await;
    let usage = cli.json(&["usage", "--since", "24h", "--by", "service,endpoint,status", "-o", "json"]).await;
    let row = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "helloworld" && r["endpoint"] == "Greeter.Hello" && r["status"] == "2xx")
        .unwrap_or_else(|| panic!("micro usage has no row of helloworld Greeter.Hello 2xx: {usage}"));
    let printed = serde_json::json!({
        "requests": row["requests"], "bytes_in": row["bytes_in"], "bytes_out": row["bytes_out"]
    });
    assert_eq!(printed, shown, "micro usage and the usage page");
}

/// The platform's acceptance run, in a browser with a real SMTP server: three people join
/// the waitlist and confirm the codes mailed to them, the operator invites the next two
/// from the platform page, the invited sign up from their invite's link and sign in to
/// namespaces of their own; the first makes a team and invites the second as a developer,
/// who accepts from the mail and deploys with `micro run` until the community plan's
/// quota refuses a service; the owner upgrades the team's plan on its plan page and the
/// deploy succeeds; the third still waits (the script's `signup: …` steps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_signup_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let Some(sink) = micro_test::smtp::SmtpSink::start(Default::default()) else { return };
    let server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_PLATFORM_URL", "https://m3o.test")
        .start();
    let (web, api) = (format!("http://{}", server.web), format!("http://{}", server.api));
    let mail = sink.mail_dir();
    // The invited deploy with the CLI: the runtime runs their code in its sandbox.
    let micro = binary(env!("CARGO_BIN_EXE_micro"));
    let env = [
        ("E2E_URL", web.as_str()),
        ("E2E_API_URL", api.as_str()),
        ("E2E_ADMIN_PASSWORD", server.admin_password.as_str()),
        ("E2E_MAIL_DIR", mail.to_str().unwrap()),
        ("E2E_MICRO", micro.to_str().unwrap()),
        ("E2E_PROXY", server.proxy.as_str()),
        ("E2E_ONLY", "^signup: "),
    ];
    let stdout = e2e(&env, &server).await;
    assert!(stdout.contains("e2e: 8 passed, 0 failed, 0 skipped"), "{stdout}");
}

/// The billing page in a browser (the script's `billing: …` steps): a server licensed for
/// billing, whose billing clock (`MICRO_CLOCK_FILE`) the test moves, with books prepared
/// through the API as the operator: namespace acme on the personal plan with 19% tax in
/// DE, service api running from 2027-01-01 and worker from the 11th to the 21st of January
/// (runs recorded with `Billing.Record`, no runtime), January closed (its invoice
/// INV-000001, $26.45), and the clock at 2027-02-15 00:00. The script signs in as acme's
/// admin and a member who is not, as a tenant of another namespace, and as the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    /// 2027-01-01 00:00:00 UTC (January has 744 hours, February 672).
    const JAN: u64 = 1_798_761_600;
    const DAY: u64 = 86_400;
    const SECRET: &str = "billing steps' long secret";
    let clock = tempfile::NamedTempFile::new().unwrap();
    let set_clock = |t: u64| std::fs::write(clock.path(), t.to_string()).unwrap();
    set_clock(JAN);
    let server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
        .licensed(&["billing"])
        .env("MICRO_CLOCK_FILE", clock.path())
        .env("MICRO_BILLING_INTERVAL", "1")
        .start();
    let op = server.admin_token().await;
    for (ns, id, scopes) in [("acme", "ann", &["admin"][..]), ("acme", "dev", &[]), ("evil", "eve", &["admin"])] {
        micro_test::create_account(&server.proxy, &op, ns, (id, SECRET), "user", scopes).await;
    }
    let call = |path: &'static str, body: serde_json::Value| {
        let (api, op) = (server.api.clone(), op.clone());
        async move {
            let (status, reply) = micro_test::call_json(&api, "POST", path, Some(&op), "micro", Some(body)).await;
            assert_eq!(status, 200, "{path}: {reply}");
            reply
        }
    };
    use serde_json::json;
    call("/platform/plan/set", json!({"namespace": "acme", "plan": "personal"})).await;
    let mut prices = call("/billing/billing/prices", json!({})).await;
    prices["tax"] = json!({"DE": 1900});
    call("/billing/billing/prices", json!({"prices": prices})).await;
    call("/billing/billing/record", json!({"namespace": "acme", "service": "api", "from": JAN})).await;
    let worker = json!({"namespace": "acme", "service": "worker", "from": JAN + 10 * DAY, "to": JAN + 20 * DAY});
    call("/billing/billing/record", worker).await;
    // January ends; its invoices are issued (here, or by billing's own tick meanwhile).
    set_clock(JAN + 31 * DAY + 600);
    call("/billing/billing/close", json!({"period": "2027-01"})).await;
    let invoices = call("/billing/billing/invoices", json!({"all": true})).await;
    assert_eq!(invoices["invoices"][0]["number"], "INV-000001", "{invoices}");
    assert_eq!(invoices["invoices"][0]["total"], 2645, "{invoices}");
    set_clock(JAN + 45 * DAY);

    let (web, api) = (format!("http://{}", server.web), format!("http://{}", server.api));
    let env = [
        ("E2E_URL", web.as_str()),
        ("E2E_API_URL", api.as_str()),
        ("E2E_ADMIN_PASSWORD", server.admin_password.as_str()),
        ("E2E_BILLING_SECRET", SECRET),
        ("E2E_ONLY", "^billing: "),
    ];
    let stdout = e2e(&env, &server).await;
    assert!(stdout.contains("e2e: 7 passed, 0 failed, 0 skipped"), "{stdout}");
}

/// `MICRO_TLS=auto`: the dashboard over HTTPS in a browser that trusts the local CA the
/// server printed, as its user would make theirs: the CA added to an NSS database (the
/// store chromium reads on Linux: `$HOME/.pki/nssdb`) of a HOME made for the browser.
/// Nothing is waived: no `--ignore-certificate-errors`, no pinned key; the script checks
/// that a browser without the database refuses the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_over_tls_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro"))).env("MICRO_TLS", "auto").start();
    let ca = server.data_dir().join("tls").join("ca.pem");
    let ca = ca.to_str().unwrap();
    assert!(server.output().contains(&format!("TLS by the local CA {ca}")), "{}", server.output());

    let home = tempfile::tempdir().unwrap();
    let db = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let steps: [&[&str]; 2] =
        [&["-N", "-d", &db, "--empty-password"], &["-A", "-d", &db, "-n", "micro local CA", "-t", "C,,", "-i", ca]];
    for args in steps {
        let out = Command::new("certutil").args(args).output().unwrap();
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let (web, api) = (format!("https://{}", server.web), format!("https://{}", server.api));
    let env = [
        ("E2E_URL", web.as_str()),
        ("E2E_API_URL", api.as_str()),
        ("E2E_ADMIN_PASSWORD", server.admin_password.as_str()),
        ("E2E_BROWSER_HOME", home.path().to_str().unwrap()),
        ("E2E_ONLY", "^tls: "),
    ];
    let stdout = e2e(&env, &server).await;
    assert!(stdout.contains("e2e: 2 passed, 0 failed, 0 skipped"), "{stdout}");
}

/// The backend's acceptance run: the static app of `examples/backend-app`, deployed twice
/// with `micro app deploy` and served on its own host (`shop.acme.localhost`, which the
/// browser resolves to this machine), used in a real browser as a person would: sign up,
/// the code read from the SMTP server's mail, a picture uploaded and its thumbnail shown,
/// a note its owner alone reads, a notification from the team heard at once, the
/// newsletter's embedded form and its double opt-in confirmed from the mail; then the app
/// is rolled back with `micro app rollback` and the browser gets the first deploy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_app_in_a_real_browser() {
    if !browser_ready() {
        return;
    }
    let Some(sink) = micro_test::smtp::SmtpSink::start(Default::default()) else { return };
    let server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_HOSTING_DOMAIN", "localhost")
        .start();
    let api = format!("http://{}", server.api);
    let ann = server.account("acme", "ann", "user", &["admin"]).await;
    let setup = [
        ("/users/v1/settings", serde_json::json!({"app_name": "Notes"})),
        ("/files/v1/settings", serde_json::json!({"app_uploads": true})),
        (
            "/db/v1/collections",
            serde_json::json!({
                "name": "notes",
                "schema": [{"name": "text", "type": "text", "required": true}, {"name": "owner", "type": "text", "required": true}],
                "rules": {
                    "list": "owner = @request.auth.id",
                    "view": "owner = @request.auth.id",
                    "create": "@request.auth.verified = true && owner = @request.auth.id",
                    "update": "owner = @request.auth.id",
                    "delete": "owner = @request.auth.id"
                }
            }),
        ),
        ("/subscribe/lists/save", serde_json::json!({"name": "news", "title": "Notes News"})),
    ];
    for (path, body) in setup {
        let (st, v) = micro_test::call_json(&server.api, "POST", path, Some(&ann), "acme", Some(body)).await;
        assert!(st == 200 || st == 201, "{path}: {st} {v}");
    }

    // The app as its developer builds it: the page, its script, the client beside them and
    // where its backend is.
    let dir = tempfile::tempdir().unwrap();
    let dist = |version: &str| {
        let d = dir.path().join(version);
        std::fs::create_dir_all(d.join("micro")).unwrap();
        for f in ["index.html", "app.js"] {
            std::fs::copy(repo_root().join("examples/backend-app").join(f), d.join(f)).unwrap();
        }
        for f in ["index.js", "sse.js"] {
            std::fs::copy(repo_root().join("clients/js/src").join(f), d.join("micro").join(f)).unwrap();
        }
        let config = format!(
            "export const API = {api:?};\nexport const NAMESPACE = 'acme';\nexport const VERSION = '{version}';\n"
        );
        std::fs::write(d.join("config.js"), config).unwrap();
        d
    };
    let cli = micro_test::cli::Cli::new(binary(env!("CARGO_BIN_EXE_micro")), &server.proxy);
    cli.ok(&["login", "--id", "admin", "--password", &server.admin_password]).await;
    for version in ["v1", "v2"] {
        let d = dist(version);
        cli.ok(&["--namespace", "acme", "app", "deploy", d.to_str().unwrap(), "--name", "shop"]).await;
    }

    let port = server.api.rsplit(':').next().unwrap();
    let app = format!("http://shop.acme.localhost:{port}/");
    let mail = sink.mail_dir();
    let mut env = vec![
        ("APP_URL", app.as_str()),
        ("APP_API", api.as_str()),
        ("APP_NAMESPACE", "acme"),
        ("APP_ADMIN", ann.as_str()),
        ("E2E_MAIL_DIR", mail.to_str().unwrap()),
        ("APP_PART", "use"),
    ];
    script("tests/web/app.mjs", &env, &server).await;
    cli.ok(&["--namespace", "acme", "app", "rollback", "shop"]).await;
    env.retain(|(k, _)| *k != "APP_PART");
    env.push(("APP_PART", "rolled-back"));
    script("tests/web/app.mjs", &env, &server).await;
}
