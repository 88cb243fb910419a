//! Tokens and secrets never reach the logs: the real `micro server` runs with every log
//! level on (text and JSON), its stdout and stderr captured, while the CLI logs in (with a
//! right and a wrong password), creates accounts, sets a secret config value, and tokens
//! are issued, used (bearer header and `micro-token` cookie, through the gateway and the
//! proxy), refreshed, reused and tampered with, and a secret is changed. Then none of the
//! passwords, secrets or tokens may appear in what the server printed — and the CLI prints
//! no password either. A generated admin password is not logged; its file is.

use micro_test::cli::Cli;
use micro_test::process::{ServerProcess, binary};
use serde_json::{Value, json};

/// A wrong admin password, the secret alice is created with, and the one she changes to.
const WRONG_PASSWORD: &str = "not-the-admin-password-0";
const ALICE_SECRET: &str = "alice-secret-Quokka-7431";
const ALICE_NEW_SECRET: &str = "alice-new-Platypus-2209";

/// Starts `micro server` on free ports, logging everything, its output kept; `json`
/// selects the JSON log format; `password` sets `MICRO_ADMIN_PASSWORD` (else the server
/// generates one).
fn start(json: bool, password: Option<&str>) -> ServerProcess {
    let mut server = ServerProcess::builder(binary(env!("CARGO_BIN_EXE_micro")))
        // Everything, every crate (hyper, h2, tonic included), at the finest level.
        .env("MICRO_LOG", "trace")
        .env("RUST_LOG", "trace")
        .env_remove("MICRO_LOG_FORMAT")
        .capture_stderr();
    if json {
        server = server.env("MICRO_LOG_FORMAT", "json");
    }
    match password {
        Some(p) => server.admin_password(p),
        None => server.generated_admin_password(),
    }
    .start()
}

/// The credentials a CLI keeps (access and refresh token).
fn credentials(cli: &Cli) -> (String, String) {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(cli.home().join(".micro/config")).expect("CLI config"))
            .expect("JSON");
    let creds = &cfg["envs"]["local"]["credentials"];
    let token = |k: &str| creds[k].as_str().unwrap_or_else(|| panic!("{k} in {cfg}")).to_string();
    (token("access_token"), token("refresh_token"))
}

/// Makes the access token a CLI keeps look expired, so its next command refreshes it.
fn expire(cli: &Cli) {
    let path = cli.home().join(".micro/config");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("CLI config")).expect("JSON");
    cfg["envs"]["local"]["credentials"]["expiry"] = json!(1);
    std::fs::write(&path, cfg.to_string()).expect("CLI config written");
}

/// `POST path` at the gateway with a JSON body; (status, JSON body or null).
async fn post(api: &str, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = micro_test::http(api, "POST", path, &h, body.to_string().as_bytes()).await;
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

/// Tokens issued at the gateway: (access, refresh).
fn tokens(v: &Value) -> (String, String) {
    let t = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_string();
    (t("access_token"), t("refresh_token"))
}

/// Everything that must never be logged, by name.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 8, "{what} is too short to look for: {value:?}");
        self.0.push((what.to_string(), value.to_string()));
        // A token's signature alone (JWT) or a refresh token's random part gives it away too.
        if let Some((_, tail)) = value.rsplit_once('.')
            && tail.len() >= 16
        {
            self.0.push((format!("{what} (its last part)"), tail.to_string()));
        }
    }

    fn token(&mut self, what: &str, pair: &(String, String)) {
        self.add(&format!("{what} access token"), &pair.0);
        self.add(&format!("{what} refresh token"), &pair.1);
    }

    /// The names of the secrets found in `text`.
    fn found_in(&self, text: &str) -> Vec<String> {
        self.0.iter().filter(|(_, v)| text.contains(v.as_str())).map(|(w, _)| w.clone()).collect()
    }
}

/// The whole story against one server; returns what must not have been logged.
async fn story(server: &ServerProcess) -> (Secrets, Vec<(String, String)>) {
    let admin_password = server.admin_password.as_str();
    let mut secrets = Secrets::default();
    secrets.add("the admin password", admin_password);
    let cli = server.cli();
    let api = server.api.as_str();

    // Logging in with the CLI: a wrong password, then the right one.
    secrets.add("a wrong admin password", WRONG_PASSWORD);
    let err = cli.fails(&["login", "--password", WRONG_PASSWORD]).await;
    assert!(err.contains("wrong account id or secret"), "{err}");
    cli.ok(&["login", "--password", admin_password]).await;
    let admin = credentials(&cli);
    secrets.token("the admin's", &admin);

    // Accounts: one with a given secret, one with a generated one (printed once, by the CLI).
    let alice_secret = ALICE_SECRET;
    secrets.add("alice's secret", alice_secret);
    cli.ok(&["auth", "create", "account", "alice", "--secret", alice_secret]).await;
    let out = cli.ok(&["auth", "create", "account", "bob"]).await;
    let generated = out.rsplit(' ').next().unwrap_or_default().trim().to_string();
    assert!(out.contains("shown once") && generated.len() >= 32, "{out}");
    secrets.add("bob's generated secret", &generated);

    // Tokens at the gateway: a wrong secret, then access and refresh tokens.
    let (status, _) = post(api, "/auth/auth/token", &[], json!({"id": "alice", "secret": "alice-wrong-Wombat"})).await;
    secrets.add("a wrong secret of alice", "alice-wrong-Wombat");
    assert_eq!(status, 401);
    let (status, v) = post(api, "/auth/auth/token", &[], json!({"id": "alice", "secret": alice_secret})).await;
    assert_eq!(status, 200, "{v}");
    let alice = tokens(&v);
    secrets.token("alice's", &alice);

    // Authenticated calls: bearer header and cookie, through the gateway and the proxy.
    let bearer = format!("Bearer {}", admin.0);
    let cookie = format!("theme=dark; micro-token={}", admin.0);
    let (status, v) = post(api, "/auth/auth/list-accounts", &[("authorization", &bearer)], json!({})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(api, "/auth/auth/inspect", &[("authorization", &bearer)], json!({"token": alice.0})).await;
    assert_eq!((status, &v["account"]["id"]), (200, &json!("alice")), "{v}");
    let write = json!({"record": {"key": "k", "value": "eA=="}, "options": {"table": "secrets"}});
    let (status, v) = post(api, "/store/store/write", &[("authorization", &bearer)], write.clone()).await;
    assert_eq!(status, 204, "{v}");
    // Whatever the gateway answers to a cookie, it must not log it.
    post(api, "/store/store/write", &[("cookie", &cookie)], write.clone()).await;
    let alice_bearer = format!("Bearer {}", alice.0);
    let (status, v) = post(api, "/store/store/read", &[("authorization", &alice_bearer)], json!({"key": "k"})).await;
    assert_eq!(status, 403, "alice is no admin: {v}");
    // A tampered token is refused; it must not be logged either.
    let tampered = format!("{}A", alice.0);
    secrets.add("a tampered token", &tampered);
    let (status, _) =
        post(api, "/auth/auth/list-accounts", &[("authorization", &format!("Bearer {tampered}"))], json!({})).await;
    assert_eq!(status, 401);
    // The proxy: the same, over gRPC, with the header; the cookie counts for nothing there
    // (a cross-site request carries it), and must not be logged either.
    for (header, value, ok) in [("authorization", bearer.as_str(), true), ("cookie", cookie.as_str(), false)] {
        let ch = micro::data::channel(&server.proxy).expect("channel");
        let mut auth = micro::proto::auth::auth_client::AuthClient::new(ch);
        let mut req = tonic::Request::new(micro::proto::auth::ListAccountsRequest {});
        req.metadata_mut().insert(header, value.parse().expect("metadata"));
        match auth.list_accounts(req).await {
            Ok(accounts) if ok => assert!(accounts.into_inner().accounts.iter().any(|a| a.id == "alice")),
            Err(e) if !ok => assert_eq!(e.code(), tonic::Code::Unauthenticated, "{header} at the proxy: {e}"),
            other => panic!("{header} at the proxy: {other:?}"),
        }
    }
    let mut auth =
        micro::proto::auth::auth_client::AuthClient::new(micro::data::channel(&server.proxy).expect("channel"));
    let mut req = tonic::Request::new(micro::proto::auth::ListAccountsRequest {});
    req.metadata_mut().insert("authorization", format!("Bearer {tampered}").parse().expect("metadata"));
    assert!(auth.list_accounts(req).await.is_err(), "a tampered token at the proxy");

    // Refreshing: at the gateway, the used refresh token again (refused), and by the CLI.
    let (status, v) = post(api, "/auth/auth/token", &[], json!({"refresh_token": alice.1})).await;
    assert_eq!(status, 200, "{v}");
    let refreshed = tokens(&v);
    secrets.token("alice's refreshed", &refreshed);
    let (status, _) = post(api, "/auth/auth/token", &[], json!({"refresh_token": alice.1})).await;
    assert_eq!(status, 401, "a used refresh token");
    expire(&cli);
    assert!(cli.ok(&["whoami"]).await.contains("admin"));
    let admin_refreshed = credentials(&cli);
    assert_ne!(admin_refreshed, admin, "the CLI refreshed");
    secrets.token("the admin's refreshed", &admin_refreshed);

    // Changing a secret at the gateway: a wrong old one, then the right one; then using it.
    let new_secret = ALICE_NEW_SECRET;
    secrets.add("alice's new secret", new_secret);
    let change = |old: &str| json!({"id": "alice", "old_secret": old, "new_secret": new_secret});
    let (status, _) = post(api, "/auth/auth/change-secret", &[], change("alice-guess-Dingo")).await;
    secrets.add("a wrong old secret of alice", "alice-guess-Dingo");
    assert_eq!(status, 403);
    let (status, v) = post(api, "/auth/auth/change-secret", &[], change(alice_secret)).await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = post(api, "/auth/auth/token", &[], json!({"id": "alice", "secret": new_secret})).await;
    assert_eq!(status, 200, "{v}");
    secrets.token("alice's latest", &tokens(&v));

    // A secret config value: set with the CLI, read masked, and in plain text (on purpose).
    let config_secret = "hunter2-Capybara-5150";
    secrets.add("the config secret", config_secret);
    cli.ok(&["config", "set", "app.db.password", &format!("\"{config_secret}\""), "--secret"]).await;
    let masked = cli.ok(&["config", "get", "app.db"]).await;
    assert!(masked.contains("[secret]") && !masked.contains(config_secret), "{masked}");
    let (status, v) =
        post(api, "/config/config/get", &[("authorization", &bearer)], json!({"path": "app", "secret": true})).await;
    assert_eq!((status, &v["value"]["db"]["password"]), (200, &json!(config_secret)), "{v}");
    let plain = cli.ok(&["config", "get", "app.db.password", "--secret"]).await;
    assert!(plain.contains(config_secret), "{plain}");
    cli.ok(&["logout"]).await;

    let printed = cli.printed().into_iter().map(|o| (o.stdout, o.stderr)).collect();
    (secrets, printed)
}

/// What the CLI printed (stdout or stderr) that contains one of `needles`.
fn cli_leaks(printed: &[(String, String)], needles: &[&str]) -> Vec<String> {
    printed
        .iter()
        .filter(|(out, err)| needles.iter().any(|n| out.contains(n) || err.contains(n)))
        .map(|(out, err)| format!("stdout: {out} stderr: {err}"))
        .collect()
}

/// Checks the server's output for every secret, and that it logged in earnest.
fn assert_clean(log: &str, secrets: &Secrets, json: bool) {
    let found = secrets.found_in(log);
    assert!(found.is_empty(), "the server logged {found:?}");
    assert!(log.contains("micro server started"), "the server's log was captured");
    assert!(log.contains("micro::access") && log.contains("/auth/auth/token"), "verbose logs were on");
    assert!(log.lines().count() > 100, "verbose logs were on: {} lines", log.lines().count());
    if json {
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
        assert!(lines.len() > 100 && lines.iter().all(|l| serde_json::from_str::<Value>(l).is_ok()), "JSON lines");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_secret_or_token_in_the_text_logs() {
    let password = "admin-Password-Narwhal-8812";
    let server = start(false, Some(password));
    let (secrets, printed) = story(&server).await;
    let log = server.stop();
    assert_clean(&log, &secrets, false);
    assert!(log.contains("MICRO_ADMIN_PASSWORD"), "the log says where the password came from");
    // The CLI never prints a password or a given secret (only a generated one, once).
    let leaks = cli_leaks(&printed, &[password, WRONG_PASSWORD, ALICE_SECRET, ALICE_NEW_SECRET]);
    assert!(leaks.is_empty(), "the CLI printed a password: {leaks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_password_is_not_logged_but_its_file_is_and_json_logs_hold_no_secret() {
    let server = start(true, None);
    let file = server.data_dir().join(micro_server::ADMIN_PASSWORD_FILE);
    let password = std::fs::read_to_string(&file).expect("the generated password").trim().to_string();
    assert_eq!(password, server.admin_password);
    let (secrets, printed) = story(&server).await;
    let log = server.stop();
    assert_clean(&log, &secrets, true);
    // The file's path is logged (JSON escapes nothing in it here), its content is not.
    assert!(log.contains(&file.display().to_string()), "the password file is named in the log");
    let leaks = cli_leaks(&printed, &[&password, WRONG_PASSWORD, ALICE_SECRET, ALICE_NEW_SECRET]);
    assert!(leaks.is_empty(), "the CLI printed a password: {leaks:?}");
}
