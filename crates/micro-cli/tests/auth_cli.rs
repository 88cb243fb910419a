//! Auth through the `micro` CLI against a real server: the bootstrapped admin, login,
//! whoami, accounts, rules, refresh, and the limit on failed logins.

use micro_test::TestServer;
use micro_test::cli::Cli;

/// The `micro` CLI against `s`, with a home of its own.
fn new_cli(s: &TestServer) -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_micro"), &s.proxy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_login_accounts_rules_and_refresh() {
    let s = TestServer::start().await;
    let cli = new_cli(&s);

    // The first start made the admin, with a random password in a 0600 file.
    let file = s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE);
    let password = std::fs::read_to_string(&file).expect("the admin password file exists");
    assert!(password.trim().len() >= 32, "a long random password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // A data dir the server creates is private to its owner.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = s.dir.path().join("fresh");
        let server = micro_server::start(micro_server::Config::ephemeral(&dir)).await.unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        server.stop().await;
    }
    // No default password works; a wrong one is one clear line.
    for guess in ["admin", "password", "micro", ""] {
        let err = cli.error(&["login", "--password", guess]).await;
        assert!(err.contains("wrong account id or secret") || err.contains("8 to 1024"), "{err}");
    }
    assert!(cli.error(&["whoami"]).await.contains("not logged in"));

    cli.ok(&["login", "--password", password.trim()]).await;
    let me = cli.ok(&["whoami"]).await;
    assert!(me.contains("admin (user) in namespace micro") && me.contains("admin"), "{me}");
    let config = std::fs::read_to_string(cli.home().join(".micro/config")).unwrap();
    assert!(config.contains("refresh_token"), "credentials are kept per environment");
    let env_json = cli.ok(&["env", "-o", "json"]).await;
    assert!(!env_json.contains("refresh_token") && !env_json.contains("access_token"), "{env_json}");

    // Calls from the CLI carry the logged-in account's token.
    let signer_keys = {
        let ch = micro::data::channel(&s.proxy()).unwrap();
        let mut auth = micro::proto::auth::auth_client::AuthClient::new(ch);
        auth.public_keys(micro::proto::auth::PublicKeysRequest {}).await.unwrap().into_inner().json
    };
    let verifier = micro::auth::token::Verifier::new(&serde_json::from_str(&signer_keys).unwrap()).unwrap();
    let echo = s
        .service("micro", "echo")
        .await
        .handle("Echo.Who", move |ctx: micro::Context, _req: serde_json::Value| {
            let who = ctx
                .metadata("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .and_then(|t| verifier.verify_for(t, "micro/echo").ok())
                .map(|c| c.sub);
            async move { Ok::<_, micro::Status>(serde_json::json!({ "who": who })) }
        })
        .start()
        .await
        .unwrap();
    let who = cli.ok(&["call", "echo", "Echo.Who"]).await;
    assert!(who.contains(r#""who": "admin""#), "{who}");
    let who = cli.ok(&["echo", "who"]).await;
    assert!(who.contains(r#""who": "admin""#), "the dynamic command too: {who}");
    echo.stop().await;

    // Accounts.
    let out = cli.ok(&["auth", "create", "account", "alice", "--scopes", "staff"]).await;
    let secret = out.rsplit(' ').next().unwrap().trim().to_string();
    assert!(out.contains("shown once") && secret.len() >= 32, "{out}");
    cli.ok(&["auth", "create", "account", "bob", "--secret", "bobs-secret-1"]).await;
    // Secrets may start with a dash.
    cli.ok(&["auth", "create", "account", "dash", "--secret", "-dash-secret-1"]).await;
    let dash = new_cli(&s);
    dash.ok(&["login", "--id", "dash", "--password", "-dash-secret-1"]).await;
    assert!(
        cli.error(&["auth", "create", "account", "bob", "--secret", "another-one"]).await.contains("already exists")
    );
    let accounts = cli.ok(&["auth", "list", "accounts"]).await;
    assert!(accounts.contains("alice") && accounts.contains("staff") && accounts.contains("bob"), "{accounts}");
    assert!(!accounts.contains(&secret), "secrets are never listed");

    // Rules: the default public rule, then a lock-down.
    let rules = cli.ok(&["auth", "list", "rules"]).await;
    assert!(rules.contains("default") && rules.contains("(public)"), "{rules}");
    cli.ok(&[
        "auth",
        "create",
        "rule",
        "lock",
        "--resource",
        "service:helloworld:*",
        "--scope",
        "staff",
        "--priority",
        "10",
    ])
    .await;
    let rules = cli.ok(&["auth", "list", "rules", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(v[0]["id"], "lock", "highest priority first: {v}");
    assert!(cli.error(&["auth", "create", "rule", "bad", "--resource", "service:a*b"]).await.contains("resource"));
    assert!(
        cli.error(&["auth", "create", "rule", "bad", "--resource", "x:y", "--access", "maybe"])
            .await
            .contains("access")
    );
    cli.ok(&["auth", "delete", "rule", "default"]).await;
    cli.ok(&["auth", "delete", "rule", "lock"]).await;
    let rules = cli.ok(&["auth", "list", "rules", "-o", "json"]).await;
    assert_eq!(rules.trim(), "[]", "every rule can go; the admin still manages the namespace");

    // Namespaces, managed by the admin of micro.
    cli.ok(&["namespace", "create", "shop"]).await;
    assert!(cli.error(&["namespace", "create", "shop"]).await.contains("already exists"));
    assert!(cli.error(&["namespace", "create", "Bad Name"]).await.contains("namespace"));
    assert_eq!(cli.ok(&["namespace", "list"]).await.lines().collect::<Vec<_>>(), ["micro", "shop"]);
    cli.ok(&[
        "--namespace",
        "shop",
        "auth",
        "create",
        "account",
        "shopkeeper",
        "--secret",
        "keeper-secret",
        "--scopes",
        "admin",
    ])
    .await;
    let shop_rules = cli.ok(&["--namespace", "shop", "auth", "list", "rules"]).await;
    assert!(shop_rules.contains("default"), "a new namespace starts with the default rule: {shop_rules}");
    let keeper = new_cli(&s);
    keeper.ok(&["--namespace", "shop", "login", "--id", "shopkeeper", "--password", "keeper-secret"]).await;
    assert!(keeper.ok(&["--namespace", "shop", "auth", "list", "accounts"]).await.contains("shopkeeper"));
    // Logged in to shop, commands act in shop; the admin of shop is not an admin of micro.
    assert!(keeper.ok(&["auth", "list", "accounts"]).await.contains("shopkeeper"));
    let err = keeper.error(&["--namespace", "micro", "auth", "list", "accounts"]).await;
    assert!(err.contains("cannot act in namespace micro") && err.contains("403"), "{err}");
    assert!(keeper.error(&["namespace", "list"]).await.contains("cannot act in namespace micro"));
    let err = keeper.error(&["--namespace", "micro", "store", "list"]).await;
    assert!(err.contains("cannot act in namespace micro") && err.contains("403"), "{err}");
    // The same account id in another namespace is another account.
    let err =
        keeper.error(&["--namespace", "micro", "login", "--id", "shopkeeper", "--password", "keeper-secret"]).await;
    assert!(err.contains("wrong"), "{err}");
    cli.ok(&["namespace", "delete", "shop"]).await;
    assert!(
        keeper
            .error(&["--namespace", "shop", "login", "--id", "shopkeeper", "--password", "keeper-secret"])
            .await
            .contains("wrong")
    );
    assert!(cli.error(&["namespace", "delete", "micro"]).await.contains("cannot be deleted"));

    // A plain user is not an admin.
    let user = new_cli(&s);
    user.ok(&["login", "--id", "bob", "--password", "bobs-secret-1"]).await;
    assert!(user.ok(&["whoami"]).await.contains("bob (user)"));
    assert!(user.error(&["auth", "list", "accounts"]).await.contains("admin scope"));

    // Refresh: an expired access token is refreshed on its own.
    let path = user.home().join(".micro/config");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let old_refresh = cfg["envs"]["local"]["credentials"]["refresh_token"].clone();
    cfg["envs"]["local"]["credentials"]["expiry"] = serde_json::json!(1);
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    assert!(user.ok(&["whoami"]).await.contains("bob"), "refreshed transparently");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_ne!(cfg["envs"]["local"]["credentials"]["refresh_token"], old_refresh, "the refresh token rotated");
    assert!(cfg["envs"]["local"]["credentials"]["expiry"].as_u64().unwrap() > 1);

    // A used refresh token cannot be used again.
    let mut reuse = cfg.clone();
    reuse["envs"]["local"]["credentials"]["refresh_token"] = old_refresh;
    reuse["envs"]["local"]["credentials"]["expiry"] = serde_json::json!(1);
    std::fs::write(&path, serde_json::to_vec(&reuse).unwrap()).unwrap();
    assert!(user.error(&["whoami"]).await.contains("log in again"), "a rotated refresh token is used up");

    // A deleted account's refresh token fails.
    cli.ok(&["auth", "delete", "account", "bob"]).await;
    let mut cfg = cfg;
    cfg["envs"]["local"]["credentials"]["expiry"] = serde_json::json!(1);
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    assert!(user.error(&["whoami"]).await.contains("log in again"));

    // Brute force: the 11th attempt at an account from one address within a minute is
    // refused with 429, even with the right password.
    let attacker = new_cli(&s);
    for _ in 0..10 {
        attacker.error(&["login", "--id", "alice", "--password", "wrong-guess"]).await;
    }
    let err = attacker.error(&["login", "--id", "alice", "--password", &secret]).await;
    assert!(err.contains("429") && err.contains("too many attempts, try again in"), "{err}");
    // Through the gateway too, with Retry-After (the gateway's calls reach the auth
    // service from this host, the CLI's address here).
    let r =
        micro_test::http(&s.api(), "POST", "/auth/auth/token", &[], br#"{"id":"alice","secret":"nope-nope"}"#).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.head.to_ascii_lowercase().contains("retry-after:"), "{}", r.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reads_a_piped_password() {
    use std::io::Write;
    let s = TestServer::start().await;
    let password = std::fs::read_to_string(s.dir.path().join(micro_server::ADMIN_PASSWORD_FILE)).unwrap();
    let cli = new_cli(&s);
    let mut command = cli.command(&["login"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(format!("{}\n", password.trim()).as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as admin"));
}
