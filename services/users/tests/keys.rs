//! Server-to-server keys for an app's backend: a service account of the namespace with
//! the `data` scope (`micro auth create account backend --type service --scopes data`,
//! its secret printed once), exchanged for short-lived tokens at `/auth/token`, manages the
//! app's users and reads past the database's per-user rules; it cannot administer the
//! namespace or act in another; deleting it ends its tokens at once.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::cli::Cli;
use micro_test::process::ServerProcess;
use serde_json::json;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_key_manages_app_users_and_goes_with_its_account() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    s.account("blog", "bob", "user", &["admin"]).await;
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    assert_eq!(call(&s.api, "POST", "/users/v1/settings", Some(&ann), "shop", Some(lax)).await.0, 200);
    let creds = json!({"email": "zoe@example.com", "password": "zoe's long password"});
    assert_eq!(call(&s.api, "POST", "/users/v1/signup", None, "shop", Some(creds.clone())).await.0, 200);
    let (_, zoe) = call(&s.api, "POST", "/users/v1/login", None, "shop", Some(creds)).await;
    let (zoe_token, zoe_id) =
        (zoe["token"].as_str().unwrap().to_string(), zoe["user"]["id"].as_str().unwrap().to_string());
    let collection = json!({
        "name": "notes",
        "schema": [{"name": "text", "type": "text"}, {"name": "owner", "type": "text"}],
        "rules": {"list": "owner = @request.auth.id", "view": "owner = @request.auth.id", "create": "owner = @request.auth.id"}
    });
    assert_eq!(call(&s.api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(collection)).await.0, 200);
    let note = json!({"data": {"text": "zoe's", "owner": zoe_id}});
    let (st, v) = call(&s.api, "POST", "/db/v1/notes/records", Some(&zoe_token), "shop", Some(note)).await;
    assert!(st == 200 || st == 201, "{v}");

    // The key, as the docs make it: the admin's CLI, the secret printed once.
    let cli = Cli::new(micro(), &s.proxy);
    cli.ok(&["login", "--id", "admin", "--password", &s.admin_password]).await;
    let made = cli
        .json(&[
            "--namespace",
            "shop",
            "auth",
            "create",
            "account",
            "backend",
            "--type",
            "service",
            "--scopes",
            "data",
            "-o",
            "json",
        ])
        .await;
    let secret = made["secret"].as_str().unwrap().to_string();
    let token = |secret: String| {
        let api = s.api.clone();
        async move {
            let body = json!({"id": "backend", "secret": secret});
            call(&api, "POST", "/auth/token", None, "shop", Some(body)).await
        }
    };
    let (st, t) = token(secret.clone()).await;
    assert_eq!(st, 200, "{t}");
    let key = t["access_token"].as_str().unwrap().to_string();

    // It manages the app's users and reads every record.
    let (st, v) = call(&s.api, "GET", "/users/v1/users", Some(&key), "shop", None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.to_string().contains("zoe@example.com"), "{v}");
    let (st, v) = call(&s.api, "GET", "/db/v1/notes/records", Some(&key), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    // Not an admin: no accounts, rules or settings of the namespace; nothing elsewhere.
    let (st, v) = call(
        &s.api,
        "POST",
        "/auth/generate",
        Some(&key),
        "shop",
        Some(json!({"id": "x", "type": "user", "scopes": ["admin"]})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = call(&s.api, "GET", "/users/v1/users", Some(&key), "blog", None).await;
    assert_eq!(st, 403);
    let (st, _) = token("wrong secret".into()).await;
    assert_eq!(st, 401);

    // Erasing a user from the backend.
    let (st, v) = call(&s.api, "DELETE", &format!("/users/v1/users/{zoe_id}"), Some(&key), "shop", None).await;
    assert!(st == 200 || st == 204, "{v}");
    let (st, _) = call(&s.api, "GET", "/users/v1/me", Some(&zoe_token), "shop", None).await;
    assert_eq!(st, 401, "the erased user's session is over");

    // Deleting the account ends the key and its tokens at once.
    cli.ok(&["--namespace", "shop", "auth", "delete", "account", "backend"]).await;
    let (st, _) = call(&s.api, "GET", "/users/v1/users", Some(&key), "shop", None).await;
    assert_eq!(st, 401, "its token is void");
    let (st, _) = token(secret).await;
    assert_eq!(st, 401, "its secret is void");
}
