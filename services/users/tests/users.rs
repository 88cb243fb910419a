//! App users through a real `micro server` (the binary, hosting the product in-process)
//! and a real SMTP server (aiosmtpd, started by the test) that the codes arrive at:
//! signup, confirmation, sessions, refresh-token rotation, resets, sign-in codes,
//! deletion, and tokens that the database's rules and the gateway honour — and nothing
//! more. Each runs on the embedded defaults and on two nodes sharing PostgreSQL.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

fn server(sink: &SmtpSink, env: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::builder(micro())
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Platform <noreply@platform.test>")
        .envs(env)
        .start()
}

/// The `count`th mail to `to` about `subject`.
async fn mail(sink: &SmtpSink, to: &str, subject: &str, count: usize) -> micro_test::smtp::Received {
    sink.mail_to(to, subject, count).await
}

/// The 6-digit code of a mail.
fn code(m: &micro_test::smtp::Received) -> String {
    m.code()
}

async fn post(api: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    call(api, "POST", path, token, "shop", Some(body)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_an_app_user_signs_up_confirms_and_owns_their_records() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink, &[]);
    signs_up_confirms_and_owns_records(&sink, &s, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_an_app_user_signs_up_on_one_node_and_signs_in_on_the_other() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_users_cluster_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str())];
    let a = server(&sink, &env);
    let b = server(&sink, &env);
    signs_up_confirms_and_owns_records(&sink, &a, &b).await;
}

/// The app's whole life with its users, through node `a` and node `b` (the same server
/// on the embedded defaults).
async fn signs_up_confirms_and_owns_records(sink: &SmtpSink, a: &ServerProcess, b: &ServerProcess) {
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let (api, bpi) = (a.api.clone(), b.api.clone());

    // Off until the namespace turns app users on.
    let signup = json!({"email": "Zoe@Example.com", "password": "an early bird's guess", "name": "Zoe"});
    let (st, v) = post(&api, "/users/v1/signup", None, signup.clone()).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("app users are off"), "{v}");
    // (This test makes more attempts from one address than a person would.)
    let settings = json!({"app_name": "Shop", "link_url": "https://shop.example/signin", "attempts_per_minute": 1000});
    let (st, v) = post(&api, "/users/v1/settings", Some(&ann), settings).await;
    assert_eq!(st, 200, "{v}");
    // Settings are the managers': not the public's.
    let (st, _) = post(&api, "/users/v1/settings", None, json!({"signups": true})).await;
    assert_eq!(st, 401);

    // Bad input: a clear 400 each, and nothing made.
    for (body, says) in [
        (json!({"email": "zoe", "password": "correct horse battery"}), "not an email address"),
        (json!({"email": "zoe@example.com", "password": "short"}), "too short"),
        (json!({"email": "zoe@example.com", "password": "password123"}), "too common"),
        (json!({"email": "zoe@example.com", "password": "zoe@example.com"}), "too common"),
        (json!({"email": "zoe@example.com", "password": "correct horse battery", "admin": true}), "unknown field"),
        (json!({"email": "zoe@example.com", "password": "x".repeat(300)}), "too long"),
    ] {
        let (st, v) = post(&api, "/users/v1/signup", None, body).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{says}: {v}");
    }

    let (st, v) = post(&api, "/users/v1/signup", None, signup.clone()).await;
    assert_eq!(st, 200, "{v}");
    let first = mail(sink, "zoe@example.com", "Confirm your email for Shop", 1).await;
    assert!(first.header("from").contains("Shop via"), "{:?}", first.headers);
    let text = first.text.clone().unwrap();
    assert!(text.contains("https://shop.example/signin?purpose=verify&email=zoe%40example.com&code="), "{text}");

    // No password sign-in before the address is confirmed (the default).
    let early = json!({"email": "zoe@example.com", "password": "an early bird's guess"});
    let (st, v1) = post(&bpi, "/users/v1/login", None, early.clone()).await;
    assert_eq!(st, 400, "{v1}");
    assert!(v1["detail"].as_str().unwrap().contains("confirm your email address first"), "{v1}");

    // Signing up again while nobody confirmed the address: the same answer, and the
    // latest password stands (whoever signed up first with somebody's address gains
    // nothing); a new code goes out, the first one is dead.
    let again = json!({"email": "zoe@example.com", "password": "correct horse battery", "name": "Zoe"});
    let (st, v2) = post(&bpi, "/users/v1/signup", None, again).await;
    assert_eq!((st, &v2), (200, &v), "the same answer whether or not the address has a user");
    let second = mail(sink, "zoe@example.com", "Confirm your email for Shop", 2).await;

    // Confirming: a wrong code is refused, the right one signs in verified, once.
    let (st, v1) = post(&api, "/users/v1/verify", None, json!({"email": "zoe@example.com", "code": "000000x"})).await;
    assert_eq!(st, 400, "{v1}");
    let right = code(&second);
    if code(&first) != right {
        let old = json!({"email": "zoe@example.com", "code": code(&first)});
        let (st, _) = post(&api, "/users/v1/verify", None, old).await;
        assert_eq!(st, 400, "the first code died with the second signup");
    }
    // Keeping the password takes the latest signup's: the first one's is refused, and
    // the refusal leaves the code alive.
    let (st, v1) = post(
        &bpi,
        "/users/v1/verify",
        None,
        json!({"email": "zoe@example.com", "code": right, "password": "an early bird's guess"}),
    )
    .await;
    assert_eq!(st, 400, "{v1}");
    assert!(v1["detail"].as_str().unwrap().contains("not the password"), "{v1}");
    let confirm = json!({"email": "zoe@example.com", "code": right, "password": "correct horse battery"});
    let (st, zoe) = post(&bpi, "/users/v1/verify", None, confirm).await;
    assert_eq!(st, 200, "{zoe}");
    assert_eq!(zoe["user"]["verified"], true);
    let uid = zoe["user"]["id"].as_str().unwrap().to_string();
    let (st, _) = post(&api, "/users/v1/verify", None, json!({"email": "zoe@example.com", "code": right})).await;
    assert_eq!(st, 400, "a code is used once");
    let (st, _) = post(&api, "/users/v1/login", None, early).await;
    assert_eq!(st, 401, "the early password is gone");

    // Signing up again with a confirmed address: the same answer, nothing changes, the
    // owner is told.
    let third = json!({"email": "zoe@example.com", "password": "yet another one"});
    let (st, v3) = post(&bpi, "/users/v1/signup", None, third).await;
    assert_eq!((st, &v3), (200, &v), "the same answer");
    mail(sink, "zoe@example.com", "Someone signed up for Shop", 1).await;
    let again = json!({"email": "zoe@example.com", "password": "yet another one"});
    let (st, _) = post(&api, "/users/v1/login", None, again).await;
    assert_eq!(st, 401, "the third signup changed nothing");
    let token = zoe["token"].as_str().unwrap().to_string();
    let (st, me) = call(&api, "GET", "/users/v1/me", Some(&token), "shop", None).await;
    assert_eq!((st, me["email"].as_str()), (200, Some("zoe@example.com")), "{me}");
    let (st, me) =
        call(&bpi, "PATCH", "/users/v1/me", Some(&token), "shop", Some(json!({"data": {"plan": "gold"}}))).await;
    assert_eq!((st, &me["data"]["plan"]), (200, &json!("gold")), "{me}");

    // The database's rules see the app user: verified users write their own records,
    // and see only theirs.
    let spec = json!({
        "name": "notes",
        "rules": {"list": "owner = @request.auth.id", "view": "owner = @request.auth.id",
                  "create": "@request.auth.verified = true && owner = @request.auth.id"}
    });
    let (st, v) = post(&api, "/db/v1/collections", Some(&ann), spec).await;
    assert_eq!(st, 200, "{v}");
    let note = json!({"data": {"owner": uid, "text": "mine"}});
    let (st, v) = post(&bpi, "/db/v1/notes/records", Some(&token), note.clone()).await;
    assert_eq!(st, 200, "{v}");
    // Where a namespace lets unconfirmed users sign in with a password, the rules still
    // tell them apart.
    let lax = json!({"app_name": "Shop", "link_url": "https://shop.example/signin", "attempts_per_minute": 1000,
                     "verify_before_login": false});
    let (st, v) = post(&api, "/users/v1/settings", Some(&ann), lax).await;
    assert_eq!(st, 200, "{v}");
    let unverified =
        post(&api, "/users/v1/signup", None, json!({"email": "yan@example.com", "password": "yan's good password"}))
            .await;
    assert_eq!(unverified.0, 200);
    let (st, yan) =
        post(&api, "/users/v1/login", None, json!({"email": "yan@example.com", "password": "yan's good password"}))
            .await;
    assert_eq!(st, 200, "{yan}");
    let yan_token = yan["token"].as_str().unwrap().to_string();
    let yan_id = yan["user"]["id"].as_str().unwrap();
    let (st, _) = post(&api, "/db/v1/notes/records", Some(&yan_token), json!({"data": {"owner": yan_id}})).await;
    assert_eq!(st, 403, "an unconfirmed user cannot create");
    let (st, v) = call(&api, "GET", "/db/v1/notes/records", Some(&yan_token), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    // Somebody signs up again with the address: with unconfirmed users signed in,
    // nothing changes (it might be their account in use); the address is told.
    let other = json!({"email": "yan@example.com", "password": "someone else's password"});
    assert_eq!(post(&api, "/users/v1/signup", None, other.clone()).await.0, 200);
    mail(sink, "yan@example.com", "Someone signed up for Shop", 1).await;
    assert_eq!(post(&api, "/users/v1/login", None, other).await.0, 401, "the password stands");
    // The address's owner confirms it with the mailed code, without the password they
    // never chose: the early sessions end, and so does that password.
    let yan_code = code(&mail(sink, "yan@example.com", "Confirm your email for Shop", 1).await);
    let (st, v) = post(&bpi, "/users/v1/verify", None, json!({"email": "yan@example.com", "code": yan_code})).await;
    assert_eq!((st, &v["user"]["verified"]), (200, &json!(true)), "{v}");
    let early = json!({"email": "yan@example.com", "password": "yan's good password"});
    assert_eq!(post(&api, "/users/v1/login", None, early).await.0, 401, "the unproven password is gone");
    let (st, _) = post(&bpi, "/users/v1/refresh", None, json!({"refresh_token": yan["refresh_token"]})).await;
    assert_eq!(st, 401, "the early session ended");
    let voided = micro_test::eventually(Duration::from_secs(5), || async {
        call(&bpi, "GET", "/users/v1/me", Some(&yan_token), "shop", None).await.0 == 401
    })
    .await;
    assert!(voided, "the early access token is void");
    let (st, v) = call(&api, "GET", "/db/v1/notes/records", Some(&token), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(1)), "{v}");

    // An app user is nobody on the team: no mail, no store, no users list, no settings.
    let (st, _) =
        post(&api, "/email/send", Some(&token), json!({"to": ["x@example.com"], "subject": "s", "text": "t"})).await;
    assert_eq!(st, 403);
    let (st, _) = call(&api, "GET", "/users/v1/users", Some(&token), "shop", None).await;
    assert_eq!(st, 403);
    let (st, _) = post(&api, "/users/v1/settings", Some(&token), json!({})).await;
    assert_eq!(st, 403);
    let (st, _) = call(&api, "GET", "/db/v1/collections", Some(&token), "shop", None).await;
    assert_eq!(st, 403);
    // … and nobody in another namespace.
    let (st, _) = call(&api, "GET", "/users/v1/me", Some(&token), "blog", None).await;
    assert_eq!(st, 403);

    // The namespace's admins see the mails went, not the codes in them.
    let (st, listed) = post(&api, "/email/list", Some(&ann), json!({})).await;
    assert_eq!(st, 200, "{listed}");
    let sent = listed["mails"].as_array().unwrap();
    assert!(!sent.is_empty(), "{listed}");
    for m in sent {
        let (st, got) = post(&api, "/email/get", Some(&ann), json!({"id": m["id"]})).await;
        assert_eq!(st, 200, "{got}");
        assert!(got["text"].as_str().unwrap().starts_with("(withheld"), "{got}");
        assert!(!got.to_string().contains(&right), "{got}");
    }

    // Managers see the users (without their hashes).
    let (st, v) = call(&api, "GET", "/users/v1/users", Some(&ann), "shop", None).await;
    assert_eq!((st, v["users"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    assert!(!v.to_string().contains("argon2"), "{v}");

    // Refresh tokens are used up by a refresh; a used one coming back ends the session.
    let r1 = zoe["refresh_token"].as_str().unwrap().to_string();
    let (st, z2) = post(&bpi, "/users/v1/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(st, 200, "{z2}");
    let r2 = z2["refresh_token"].as_str().unwrap().to_string();
    let (st, _) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(st, 401, "a used refresh token");
    let (st, _) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": r2})).await;
    assert_eq!(st, 401, "the replay ended the session");
    for junk in ["", "a.b.c", "..", &"x".repeat(5000)] {
        let (st, _) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": junk})).await;
        assert_eq!(st, 401, "{junk}");
    }

    // Sessions: listed; ending one voids its access token at once.
    let (_, s1) =
        post(&api, "/users/v1/login", None, json!({"email": "zoe@example.com", "password": "correct horse battery"}))
            .await;
    let (_, s2) =
        post(&bpi, "/users/v1/login", None, json!({"email": "zoe@example.com", "password": "correct horse battery"}))
            .await;
    let t1 = s1["token"].as_str().unwrap().to_string();
    let (st, v) = call(&api, "GET", "/users/v1/me/sessions", Some(&t1), "shop", None).await;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<&str> = v["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    let sid2 = s2["refresh_token"].as_str().unwrap().split('.').nth(1).unwrap();
    assert!(ids.contains(&sid2), "{v}");
    let (st, _) = call(&api, "DELETE", &format!("/users/v1/me/sessions/{sid2}"), Some(&t1), "shop", None).await;
    assert_eq!(st, 204);
    let voided = micro_test::eventually(Duration::from_secs(5), || async {
        call(&bpi, "GET", "/users/v1/me", Some(&t1), "shop", None).await.0 == 401
    })
    .await;
    assert!(voided, "ending a session voids the access tokens");
    let (st, _) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": s2["refresh_token"]})).await;
    assert_eq!(st, 401, "the ended session");
    let (st, s1) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": s1["refresh_token"]})).await;
    assert_eq!(st, 200, "the other session goes on: {s1}");

    // A forgotten password: the same answer for any address; the mailed code resets it
    // and ends every session.
    let (st, v) = post(&api, "/users/v1/reset", None, json!({"email": "nobody@example.com"})).await;
    let (st2, v2) = post(&api, "/users/v1/reset", None, json!({"email": "zoe@example.com"})).await;
    assert_eq!((st, &v), (st2, &v2), "{v} {v2}");
    let reset = mail(sink, "zoe@example.com", "Reset your Shop password", 1).await;
    let weak = json!({"email": "zoe@example.com", "code": code(&reset), "password": "12345678"});
    let (st, _) = post(&api, "/users/v1/reset/confirm", None, weak).await;
    assert_eq!(st, 400, "the policy holds on a reset");
    let ok = json!({"email": "zoe@example.com", "code": code(&reset), "password": "a brand new secret"});
    let (st, z3) = post(&bpi, "/users/v1/reset/confirm", None, ok.clone()).await;
    assert_eq!(st, 200, "{z3}");
    let (st, _) = post(&api, "/users/v1/reset/confirm", None, ok).await;
    assert_eq!(st, 400, "a reset code is used once");
    let (st, _) = post(&api, "/users/v1/refresh", None, json!({"refresh_token": s1["refresh_token"]})).await;
    assert_eq!(st, 401, "a reset ends the sessions");
    let (st, _) =
        post(&api, "/users/v1/login", None, json!({"email": "zoe@example.com", "password": "correct horse battery"}))
            .await;
    assert_eq!(st, 401);

    // A mailed sign-in code (a magic link when the app gave its URL).
    let (st, _) = post(&api, "/users/v1/code", None, json!({"email": "zoe@example.com"})).await;
    assert_eq!(st, 200);
    let signin = mail(sink, "zoe@example.com", "Your Shop sign-in code", 1).await;
    assert!(signin.text.clone().unwrap().contains("purpose=login"));
    let (st, z4) =
        post(&bpi, "/users/v1/code/login", None, json!({"email": "zoe@example.com", "code": code(&signin)})).await;
    assert_eq!(st, 200, "{z4}");
    let t4 = z4["token"].as_str().unwrap().to_string();

    // GDPR: everything kept about her, then erased; her tokens stop.
    let (st, export) = call(&api, "GET", "/users/v1/me/export", Some(&t4), "shop", None).await;
    assert_eq!(st, 200, "{export}");
    assert_eq!(export["user"]["email"], "zoe@example.com");
    assert!(!export.to_string().contains("argon2"));
    let (st, _) = post(&api, "/users/v1/me/delete", Some(&t4), json!({"password": "wrong"})).await;
    assert_eq!(st, 403, "a wrong password is no expired token (a client would refresh and retry)");
    let (st, v) = post(&api, "/users/v1/me/delete", Some(&t4), json!({"password": "a brand new secret"})).await;
    assert_eq!(st, 204, "{v}");
    let voided = micro_test::eventually(Duration::from_secs(5), || async {
        call(&bpi, "GET", "/db/v1/notes/records", Some(&t4), "shop", None).await.0 == 401
    })
    .await;
    assert!(voided, "a deleted user's token stops at the database too");
    let (st, v) = call(&api, "GET", "/users/v1/users", Some(&ann), "shop", None).await;
    assert_eq!((st, v["users"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    // Brute force: 10 failures lock an address for 15 minutes, known or not alike.
    for who in ["yan@example.com", "ghost@example.com"] {
        let mut last = 0;
        for _ in 0..11 {
            last = post(&bpi, "/users/v1/login", None, json!({"email": who, "password": "wrong guess 123"})).await.0;
            if last == 429 {
                break;
            }
        }
        assert_eq!(last, 429, "{who}");
    }
    let (st, v) =
        post(&api, "/users/v1/login", None, json!({"email": "yan@example.com", "password": "the real yan's password"}))
            .await;
    assert_eq!(st, 429, "locked even with the right password: {v}");
}
