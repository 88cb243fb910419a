//! Invite-only signup through a real `micro server` (the binary, hosting the platform and
//! email products) and a real SMTP server: people join the waitlist, confirm their
//! address with a mailed code, the operator invites a batch, invitees sign up into
//! namespaces of their own; and everything a stranger might try is refused.

use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

fn server(sink: &SmtpSink) -> ServerProcess {
    ServerProcess::builder(micro())
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "M3O <hello@m3o.test>")
        .env("MICRO_PLATFORM_URL", "https://m3o.test")
        .start()
}

/// `POST path` at the gateway `api`, with `token` when given: (status, JSON body).
async fn call(api: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    micro_test::post_json(api, token, None, path, &body).await
}

/// The newest mail to `to` (waiting up to 10 s for mail number `n`).
async fn mail_to(sink: &SmtpSink, n: usize, to: &str) -> micro_test::smtp::Received {
    let all = sink.wait_for(n, Duration::from_secs(10)).await;
    all.iter().rev().find(|m| m.rcpt_tos.iter().any(|r| r == to)).cloned().unwrap_or_else(|| panic!("no mail to {to}"))
}

/// The code in a mail: the 6 digits after "is " (verification) or the hex after "code: " (invite).
fn code_in(m: &micro_test::smtp::Received) -> String {
    let text = m.text.clone().unwrap_or_default();
    if let Some(rest) = text.split("invite code: ").nth(1) {
        return rest.split_whitespace().next().unwrap_or_default().to_string();
    }
    let rest = text.split("waitlist is ").nth(1).unwrap_or_else(|| panic!("no code in {text}"));
    rest.chars().take(6).collect()
}

fn detail(v: &Value) -> String {
    v["detail"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_join_two_are_invited_and_sign_up_into_their_own_namespaces() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink);
    let admin = s.admin_cli().await;
    let api = s.api.clone();
    // Every test join comes from 127.0.0.1: let more than 10 an hour through.
    admin.ok(&["platform", "settings", "--joins_per_address", "1000"]).await;

    // Three people join; each confirms the code mailed to them.
    let people = ["ann@one.example", "ann@two.example", "cy@three.example"];
    for (i, email) in people.iter().enumerate() {
        let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": email})).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["message"].as_str().unwrap_or("").contains("check your mail"), "{body}");
        let m = mail_to(&sink, i + 1, email).await;
        assert_eq!(m.header("subject"), format!("Your code: {}", code_in(&m)));
        // A wrong code first: refused, with the tries left.
        let (status, body) =
            call(&api, None, "/platform/signup/verify", json!({"email": email, "code": "000000x"})).await;
        assert_eq!(status, 400);
        assert!(detail(&body).contains("4 tries left"), "{body}");
        let (status, body) =
            call(&api, None, "/platform/signup/verify", json!({"email": email, "code": code_in(&m)})).await;
        assert_eq!((status, body["state"].as_str()), (200, Some("waiting")), "{body}");
    }

    // The operator sees them in the order they confirmed, and invites the next 2.
    let list = admin.json(&["platform", "waitlist"]).await;
    let order: Vec<&str> = list["entries"].as_array().unwrap().iter().map(|e| e["email"].as_str().unwrap()).collect();
    assert_eq!(order, people);
    let invited = admin.json(&["platform", "invite", "--count", "2"]).await;
    assert_eq!(invited["invited"], json!(["ann@one.example", "ann@two.example"]), "{invited}");
    let first = mail_to(&sink, 4, "ann@one.example").await;
    let second = mail_to(&sink, 5, "ann@two.example").await;
    assert_eq!(first.header("subject"), "You are invited");
    let text = first.text.clone().unwrap_or_default();
    assert!(text.contains("https://m3o.test/signup/accept?email=ann%40one.example&code="), "{text}");
    let (code1, code2) = (code_in(&first), code_in(&second));
    assert_eq!(code1.len(), 32, "an invite code carries 128 bits: {code1}");

    // An invite works for its own address only, and only with a real password.
    let (status, body) = call(
        &api,
        None,
        "/platform/signup/accept",
        json!({"email": "ann@two.example", "code": code1, "password": "long enough password"}),
    )
    .await;
    assert_eq!(status, 400, "another's code: {body}");
    let (status, body) = call(
        &api,
        None,
        "/platform/signup/accept",
        json!({"email": "ann@one.example", "code": code1, "password": "short"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(detail(&body).contains("10 to 200"), "{body}");

    // Both sign up: namespaces of their own, named after them without colliding.
    let mut namespaces = Vec::new();
    for (email, code) in [("ann@one.example", &code1), ("ann@two.example", &code2)] {
        let (status, body) = call(
            &api,
            None,
            "/platform/signup/accept",
            json!({"email": email, "code": code, "password": format!("{email} password")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], email);
        namespaces.push(body["namespace"].as_str().unwrap().to_string());
    }
    assert_eq!(namespaces, ["ann", "ann-2"]);
    // The code is spent.
    let (status, _) = call(
        &api,
        None,
        "/platform/signup/accept",
        json!({"email": "ann@one.example", "code": code1, "password": "another password"}),
    )
    .await;
    assert_eq!(status, 400, "an invite works once");

    // Each logs in to their namespace as its admin, and is a stranger to the other's.
    let ann = micro_test::login(&s.proxy, "ann", "ann@one.example", "ann@one.example password").await;
    let ann2 = micro_test::login(&s.proxy, "ann-2", "ann@two.example", "ann@two.example password").await;
    let (status, body) = call(&api, Some(&ann), "/distributed/notes/create", json!({"title": "mine"})).await;
    assert_eq!(status, 200, "{body}");
    let mut headers = vec![("authorization", format!("Bearer {ann2}")), ("micro-namespace", "ann".to_string())];
    headers.push(("content-type", "application/json".into()));
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = micro_test::http(&api, "POST", "/distributed/notes/list", &h, b"{}").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let cli = s.cli();
    cli.ok(&["--namespace", "ann", "login", "--id", "ann@one.example", "--password", "ann@one.example password"]).await;
    let rules = cli.ok(&["auth", "list", "rules"]).await;
    assert!(!rules.is_empty(), "the owner administers the namespace");

    // The third is still waiting; a newcomer's account cannot see the waitlist.
    let list = admin.json(&["platform", "waitlist", "--state", "waiting"]).await;
    assert_eq!(list["entries"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["entries"][0]["email"], "cy@three.example");
    let (status, _) = call(&api, Some(&ann), "/platform/waitlist", json!({})).await;
    assert_eq!(status, 403, "only operators see the waitlist");
    let (status, _) = call(&api, None, "/platform/waitlist", json!({})).await;
    assert_eq!(status, 401);
    let (status, _) = call(&api, Some(&ann), "/platform/invite", json!({"count": 1})).await;
    assert_eq!(status, 403, "only operators invite batches");

    // Users hold invites of their own (1 here): Ann gives hers to a friend, then has none.
    admin.ok(&["platform", "settings", "--invites_per_user", "1"]).await;
    let (status, body) = call(&api, Some(&ann), "/platform/invite-friend", json!({"email": "dee@four.example"})).await;
    assert_eq!((status, body["left"].as_u64()), (200, Some(0)), "{body}");
    let friend = mail_to(&sink, 6, "dee@four.example").await;
    let (status, body) = call(
        &api,
        None,
        "/platform/signup/accept",
        json!({"email": "dee@four.example", "code": code_in(&friend), "password": "dee's password!"}),
    )
    .await;
    assert_eq!((status, body["namespace"].as_str()), (200, Some("dee")), "{body}");
    let (status, body) = call(&api, Some(&ann), "/platform/invite-friend", json!({"email": "eve@five.example"})).await;
    assert_eq!(status, 429, "{body}");
    let list = admin.json(&["platform", "waitlist"]).await;
    let dee = list["entries"].as_array().unwrap().iter().find(|e| e["email"] == "dee@four.example").cloned().unwrap();
    assert_eq!((dee["state"].as_str(), dee["invited_by"].as_str()), (Some("joined"), Some("ann@one.example")));

    // Open signup: a confirmed address is invited at once.
    admin.ok(&["platform", "settings", "--invite_only", "false"]).await;
    call(&api, None, "/platform/signup/join", json!({"email": "fay@six.example"})).await;
    let m = mail_to(&sink, 7, "fay@six.example").await;
    let (status, body) =
        call(&api, None, "/platform/signup/verify", json!({"email": "fay@six.example", "code": code_in(&m)})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("invited")), "{body}");
    assert_eq!(mail_to(&sink, 8, "fay@six.example").await.header("subject"), "You are invited");
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_guesses_and_bad_input_are_refused() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink);
    let admin = s.admin_cli().await;
    let api = s.api.clone();

    // Bad addresses, throwaway domains and unknown fields: 400, and no mail.
    for (email, says) in [
        ("not-an-address", "not an email address"),
        ("a@b", "not an email address"),
        ("x\r\n@evil.example", "not an email address"),
        ("eve@mailinator.com", "throwaway"),
    ] {
        let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": email})).await;
        assert_eq!(status, 400, "{email}: {body}");
        assert!(detail(&body).contains(says), "{email}: {body}");
    }
    let (status, _) = call(&api, None, "/platform/signup/join", json!({"email": "a@x.example", "admin": true})).await;
    assert_eq!(status, 400);
    assert!(sink.messages().is_empty());

    // A flood from one address stops at the limit (3 an hour here).
    admin.ok(&["platform", "settings", "--joins_per_address", "3"]).await;
    for i in 0..3 {
        let (status, body) =
            call(&api, None, "/platform/signup/join", json!({"email": format!("p{i}@flood.example")})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": "p9@flood.example"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(detail(&body).contains("from your address"), "{body}");
    // Naming another client address does not help: the gateway stamps the real one.
    for forged in ["10.0.0.1", "192.0.2.7", "2001:db8::1"] {
        let headers =
            [("content-type", "application/json"), ("micro-client-address", forged), ("x-forwarded-for", forged)];
        let r =
            micro_test::http(&api, "POST", "/platform/signup/join", &headers, br#"{"email":"p8@flood.example"}"#).await;
        assert_eq!(r.status, 429, "{forged}: {}", r.body);
    }
    // One domain is limited too.
    admin.ok(&["platform", "settings", "--joins_per_address", "1000", "--joins_per_domain", "4"]).await;
    let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": "p4@flood.example"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": "p5@flood.example"})).await;
    assert_eq!(status, 429, "{body}");
    assert!(detail(&body).contains("at flood.example"), "{body}");

    // One address is mailed at most 3 times an hour (`+tags` are the same address).
    admin.ok(&["platform", "settings", "--joins_per_domain", "1000"]).await;
    for tag in ["", "+a", "+b"] {
        let (status, body) =
            call(&api, None, "/platform/signup/join", json!({"email": format!("gus{tag}@g.example")})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = call(&api, None, "/platform/signup/join", json!({"email": "GUS@g.example"})).await;
    assert_eq!(status, 429, "{body}");

    // Guessing a code: five wrong tries void it, and the right one is then refused too.
    let m = mail_to(&sink, 7, "gus@g.example").await;
    let right = code_in(&m);
    for _ in 0..5 {
        call(&api, None, "/platform/signup/verify", json!({"email": "gus@g.example", "code": "999999"})).await;
    }
    let (status, body) =
        call(&api, None, "/platform/signup/verify", json!({"email": "gus@g.example", "code": right})).await;
    assert_eq!(status, 400, "{body}");
    assert!(detail(&body).contains("void"), "{body}");

    // The same answer whether or not an address is listed: nobody learns who joined.
    let (_, listed) = call(&api, None, "/platform/signup/join", json!({"email": "p0@flood.example"})).await;
    let (_, fresh) = call(&api, None, "/platform/signup/join", json!({"email": "new@fresh.example"})).await;
    assert_eq!(
        listed["message"].as_str().map(|m| m.replace("p0@flood", "X")),
        fresh["message"].as_str().map(|m| m.replace("new@fresh", "X"))
    );
    // Nobody accepts without an invite; an unverified address is not invited.
    let (status, _) = call(
        &api,
        None,
        "/platform/signup/accept",
        json!({"email": "new@fresh.example", "code": "0".repeat(32), "password": "a long password"}),
    )
    .await;
    assert_eq!(status, 400);
    let out = admin.json(&["platform", "invite", "--emails", "new@fresh.example"]).await;
    assert_eq!(out["invited"].as_array().map(Vec::len), Some(0), "{out}");
    assert!(out["skipped"][0].as_str().unwrap_or("").contains("not confirmed"), "{out}");
    // Bad settings are refused.
    let err = admin.error(&["platform", "settings", "--batch", "0"]).await;
    assert!(err.contains("batch"), "{err}");
}
