//! App users (the users product): somebody who signs up from the internet to a tenant's
//! app tries to act as the tenant's team, in another namespace, or at the core; to have
//! tokens signed; to keep a session of somebody else's address; to reuse a stolen
//! refresh token; and a tenant's admin tries to read their users' sign-in codes.

use micro::proto::auth as pb;
use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};

use super::*;

/// A gRPC request as the holder of `token`, acting in `ns`.
fn request<T>(msg: T, token: &str, ns: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    req
}

fn auth(proxy: &str) -> pb::auth_client::AuthClient<micro::Channel> {
    pb::auth_client::AuthClient::new(micro::data::channel(proxy).expect("channel"))
}

async fn post(api: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call(api, "POST", path, token, "shop", Some(body)).await
}

/// A server whose namespace `shop` lets unconfirmed users sign in (the laxest setting),
/// and its admin's token.
async fn lax_shop() -> (ServerProcess, String) {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let settings = json!({"verify_before_login": false, "attempts_per_minute": 1000});
    let (st, v) = post(&s.api, "/users/v1/settings", Some(&ann), settings).await;
    assert_eq!(st, 200, "{v}");
    (s, ann)
}

/// Signs up `email` with `password` and signs in: the reply.
async fn app_user(api: &str, email: &str, password: &str) -> Value {
    let (st, v) = post(api, "/users/v1/signup", None, json!({"email": email, "password": password})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = post(api, "/users/v1/login", None, json!({"email": email, "password": password})).await;
    assert_eq!(st, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_user_is_nobody_on_the_team_nor_anywhere_else() {
    let (s, _ann) = lax_shop().await;
    let mallory = app_user(&s.api, "mallory@example.com", "mallory's password").await;
    let token = mallory["token"].as_str().unwrap().to_string();

    // The core: the store, the accounts, the registry, the runtime, the namespace's rules
    // and settings.
    let (store, accounts) = core_codes(&s.proxy, "shop", &token).await;
    assert_eq!(store, Some(micro::Code::PermissionDenied));
    assert_eq!(accounts, Some(micro::Code::PermissionDenied));
    let err = register(&s.proxy, Some(&token), "shop", "orders", "evil-1", "127.0.0.1:9", "grpc").await.unwrap_err();
    assert_eq!(err.code(), micro::Code::PermissionDenied, "{err}");
    let rules = auth(&s.proxy).list_rules(request(pb::ListRulesRequest {}, &token, "shop")).await.unwrap_err();
    assert_eq!(rules.code(), tonic::Code::PermissionDenied, "{rules}");
    let watch = pb::WatchRulesRequest { namespace: "shop".into() };
    let refused = match auth(&s.proxy).watch_rules(request(watch, &token, "shop")).await {
        Err(_) => true,
        Ok(r) => r.into_inner().message().await.is_err(),
    };
    assert!(refused, "an app user follows the namespace's rules");
    let setting = pb::SetSettingRequest { key: "git.credentials.example.com".into(), value: "x".into() };
    let err = auth(&s.proxy).set_setting(request(setting, &token, "shop")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    for (method, path) in [("GET", "/runtime/read"), ("GET", "/db/v1/collections"), ("GET", "/users/v1/users")] {
        let (st, v) = call(&s.api, method, path, Some(&token), "shop", None).await;
        assert!(st == 403 || st == 401, "{path}: {st} {v}");
    }
    // The products' team endpoints: mail as the namespace, manage its users.
    let (st, _) =
        post(&s.api, "/email/send", Some(&token), json!({"to": ["x@example.com"], "subject": "s", "text": "t"})).await;
    assert_eq!(st, 403);
    let (st, _) = post(&s.api, "/users/v1/settings", Some(&token), json!({"signups": true})).await;
    assert_eq!(st, 403);
    // Another namespace, and the platform's own.
    for ns in ["blog", "micro"] {
        let (st, v) = call(&s.api, "GET", "/users/v1/me", Some(&token), ns, None).await;
        assert_eq!(st, 403, "{ns}: {v}");
        let (store, _) = core_codes(&s.proxy, ns, &token).await;
        assert_eq!(store, Some(micro::Code::PermissionDenied), "{ns}");
    }
    // Tokens: none signed for it, and nothing delegated makes it more.
    let mint = pb::MintRequest { namespace: "shop".into(), id: "mallorymallory1".into(), ..Default::default() };
    let err = auth(&s.proxy).mint(request(mint, &token, "shop")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_users_product_has_tokens_signed_and_only_for_app_users() {
    let (s, ann) = lax_shop().await;
    let operator = s.admin_token().await;
    let micro_data = s.account("micro", "mia", "service", &["data", "platform"]).await;
    for (who, token) in [("the operator", &operator), ("shop's admin", &ann), ("a data service of micro", &micro_data)]
    {
        let mint = pb::MintRequest { namespace: "shop".into(), id: "someoneelse1234".into(), ..Default::default() };
        let err = auth(&s.proxy).mint(request(mint, token, "micro")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{who}: {err}");
        let revoke = pb::MintRequest { namespace: "shop".into(), id: "*".into(), revoke: true, ..Default::default() };
        assert!(auth(&s.proxy).mint(request(revoke, token, "micro")).await.is_err(), "{who} revokes a namespace");
    }
    // Nobody gives a team account the app users' scope (nor any micro: scope).
    for scope in ["micro:app", "micro:anything"] {
        let generate = pb::GenerateRequest {
            id: "fake".into(),
            r#type: "user".into(),
            secret: "fake-secret-123".into(),
            scopes: vec![scope.into()],
            ..Default::default()
        };
        let err = auth(&s.proxy).generate(request(generate, &ann, "shop")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{scope}: {err}");
    }
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_keeps_a_session_of_an_address_they_do_not_own_nor_of_a_stolen_refresh_token() {
    let (s, _ann) = lax_shop().await;
    // Vic signs up and uses the app unconfirmed (the lax setting allows it); Mallory
    // signs up again with Vic's address: nothing changes, Mallory's password opens
    // nothing, and Vic's session goes on.
    let vic = app_user(&s.api, "vic@example.com", "vic's real one").await;
    let (st, _) =
        post(&s.api, "/users/v1/signup", None, json!({"email": "vic@example.com", "password": "mallory's guess 1"}))
            .await;
    assert_eq!(st, 200);
    let (st, _) =
        post(&s.api, "/users/v1/login", None, json!({"email": "vic@example.com", "password": "mallory's guess 1"}))
            .await;
    assert_eq!(st, 401, "the re-signup's password opens nothing");
    let (st, v) = post(&s.api, "/users/v1/refresh", None, json!({"refresh_token": vic["refresh_token"]})).await;
    assert_eq!(st, 200, "Vic's session goes on: {v}");
    // Nor does a code confirm anything with a password that is not the address's.
    let (st, v) = post(
        &s.api,
        "/users/v1/verify",
        None,
        json!({"email": "vic@example.com", "code": "123456", "password": "mallory's guess 1"}),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = post(
        &s.api,
        "/users/v1/code/login",
        None,
        json!({"email": "vic@example.com", "code": "123456", "password": "vic's real one"}),
    )
    .await;
    assert_eq!(st, 400, "a password goes only with a confirmation: {v}");

    // A stolen refresh token: the thief refreshes first; when the owner's (now used-up)
    // copy comes back, the session ends for both.
    let vic = app_user(&s.api, "vic2@example.com", "vic's second one").await;
    let (st, thief) = post(&s.api, "/users/v1/refresh", None, json!({"refresh_token": vic["refresh_token"]})).await;
    assert_eq!(st, 200, "{thief}");
    let (st, _) = post(&s.api, "/users/v1/refresh", None, json!({"refresh_token": vic["refresh_token"]})).await;
    assert_eq!(st, 401);
    let (st, _) = post(&s.api, "/users/v1/refresh", None, json!({"refresh_token": thief["refresh_token"]})).await;
    assert_eq!(st, 401, "the replay ended the thief's session too");
    // A thief with the access token edits the profile over and over while the owner
    // changes the password: no edit writes the old password back.
    let owner = app_user(&s.api, "vic3@example.com", "vic's third one").await;
    let stolen = owner["token"].as_str().unwrap().to_string();
    let edits: Vec<_> = (0..20)
        .map(|i| {
            let (api, token) = (s.api.clone(), stolen.clone());
            tokio::spawn(async move {
                call(&api, "PATCH", "/users/v1/me", Some(&token), "shop", Some(json!({"data": {"i": i}}))).await.0
            })
        })
        .collect();
    let change = json!({"password": "vic's third one", "new_password": "vic's brand new one"});
    let (st, v) = post(&s.api, "/users/v1/me/password", owner["token"].as_str(), change).await;
    assert_eq!(st, 200, "{v}");
    for e in edits {
        let _ = e.await;
    }
    let old = json!({"email": "vic3@example.com", "password": "vic's third one"});
    assert_eq!(post(&s.api, "/users/v1/login", None, old).await.0, 401, "the old password stays gone");
    let new = json!({"email": "vic3@example.com", "password": "vic's brand new one"});
    assert_eq!(post(&s.api, "/users/v1/login", None, new).await.0, 200);

    // Forged refresh tokens find nothing.
    let uid = vic["user"]["id"].as_str().unwrap();
    for forged in [format!("{uid}.aaaaaaaaaaaaaaaa.x"), format!("{uid}.*.x"), format!("../{uid}.b.c"), "a.b".into()] {
        let (st, _) = post(&s.api, "/users/v1/refresh", None, json!({"refresh_token": forged})).await;
        assert_eq!(st, 401, "{forged}");
    }
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_limited_and_guessing_passwords_locks_the_address() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let settings = json!({"signups_per_hour": 3, "attempts_per_minute": 5});
    assert_eq!(post(&s.api, "/users/v1/settings", Some(&ann), settings).await.0, 200);
    let mut codes = Vec::new();
    for i in 0..5 {
        let body = json!({"email": format!("bot{i}@example.com"), "password": "bot's password 1"});
        codes.push(post(&s.api, "/users/v1/signup", None, body).await.0);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429], "signups from one address are limited");
    let mut codes = Vec::new();
    for _ in 0..7 {
        let body = json!({"email": "bot0@example.com", "password": "a guess 12345"});
        codes.push(post(&s.api, "/users/v1/login", None, body).await.0);
    }
    assert!(codes[..5].iter().all(|c| *c == 401 || *c == 400) && codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    // Namespaces without app users answer nothing (no work is done for them).
    let (st, v) =
        call(&s.api, "POST", "/users/v1/login", None, "ghost", Some(json!({"email": "a@b.co", "password": "x"}))).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("app users are off"), "{v}");
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_up_first_with_somebodys_address_leaves_no_way_in_once_they_confirm_it() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", &sink.url())]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let (st, v) = post(&s.api, "/users/v1/settings", Some(&ann), json!({"attempts_per_minute": 1000})).await;
    assert_eq!(st, 200, "{v}");

    // Mallory signs up first with Vic's address; Vic confirms it from the mail (the
    // code is Vic's: it came to Vic's mailbox) without knowing Mallory's password.
    let mallory = json!({"email": "vic@example.com", "password": "mallory's pre-set one"});
    assert_eq!(post(&s.api, "/users/v1/signup", None, mallory.clone()).await.0, 200);
    let code = sink.mail_to("vic@example.com", "Confirm your email", 1).await.code();
    let (st, v) = post(&s.api, "/users/v1/verify", None, json!({"email": "vic@example.com", "code": code})).await;
    assert_eq!((st, &v["user"]["verified"]), (200, &json!(true)), "{v}");
    assert_eq!(post(&s.api, "/users/v1/login", None, mallory).await.0, 401, "Mallory's password opens nothing");

    // Vic signs up first; Mallory signs up again right after (the latest signup's
    // password stands until the address is confirmed); Vic confirms with Vic's own
    // password: refused, and confirming without it leaves Mallory's password dead.
    let vic = json!({"email": "vic2@example.com", "password": "vic's own password"});
    assert_eq!(post(&s.api, "/users/v1/signup", None, vic.clone()).await.0, 200);
    let mallory = json!({"email": "vic2@example.com", "password": "mallory's late one"});
    assert_eq!(post(&s.api, "/users/v1/signup", None, mallory.clone()).await.0, 200);
    let code = sink.mail_to("vic2@example.com", "Confirm your email", 2).await.code();
    let with = json!({"email": "vic2@example.com", "code": code, "password": "vic's own password"});
    let (st, v) = post(&s.api, "/users/v1/verify", None, with).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = post(&s.api, "/users/v1/verify", None, json!({"email": "vic2@example.com", "code": code})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(post(&s.api, "/users/v1/login", None, mallory).await.0, 401, "Mallory's password opens nothing");
    assert_eq!(post(&s.api, "/users/v1/login", None, vic).await.0, 401, "nor the replaced one");
    let _ = s.stop();
}
