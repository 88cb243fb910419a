//! Email through a real `micro server` (the binary, hosting the product in-process) and a
//! real SMTP server (aiosmtpd, started by the test): STARTTLS with a login, templates,
//! the CLI, idempotency, limits, retries, bounces, namespaces that never see each other's
//! mail, and an outbox that loses and doubles nothing across SIGKILLs.

use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// How to start a server sending through `sink`, with `env` on top.
fn server_builder(sink: &SmtpSink, env: &[(&str, &str)]) -> micro_test::process::Builder {
    let mut b = ServerProcess::builder(micro())
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Platform <noreply@platform.test>")
        .envs(env);
    if let Some(ca) = sink.ca() {
        b = b.env("MICRO_SMTP_CA", ca);
    }
    b
}

/// A server sending through `sink`, with `env` on top.
fn server(sink: &SmtpSink, env: &[(&str, &str)]) -> ServerProcess {
    server_builder(sink, env).start()
}

/// `POST path` at the gateway `api` with `token`: (status, JSON body).
async fn call(api: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    micro_test::post_json(api, token, None, path, &body).await
}

/// The mail `id` as `token` sees it, once it is done (sent, bounced or failed).
async fn settled(api: &str, token: &str, id: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, mail) = call(api, Some(token), "/email/get", json!({"id": id})).await;
        assert_eq!(status, 200, "{mail}");
        if ["sent", "bounced", "failed"].contains(&mail["state"].as_str().unwrap_or("")) {
            return mail;
        }
        last = mail;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mail {id} did not settle: {last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_over_starttls_with_templates_limits_and_namespaces() {
    let login = Some(("mailer".to_string(), "relay-pass-1".to_string()));
    let Some(sink) = SmtpSink::start(Options { tls: true, login, ..Default::default() }) else { return };
    let s = server(&sink, &[("MICRO_EMAIL_DAILY_LIMIT", "5")]);
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, "shop", ("sam", "sam-secret-1"), "user", &[]).await;
    let sam = micro_test::login(&s.proxy, "shop", "sam", "sam-secret-1").await;
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let bea = s.account("blog", "bea", "user", &[]).await;

    // The CLI, as sam: `micro email send`.
    let cli = s.cli();
    cli.ok(&["--namespace", "shop", "login", "--id", "sam", "--password", "sam-secret-1"]).await;
    let sent = cli
        .json(&[
            "email",
            "send",
            "--to",
            "Bob <bob@example.com>",
            "--subject",
            "Your order",
            "--text",
            "It ships today.",
            "--from_name",
            "Sam's Shop",
            "--reply_to",
            "sam@shop.example",
        ])
        .await;
    let id = sent["ids"][0].as_str().expect("an id").to_string();
    let mail = settled(&s.api, &sam, &id).await;
    assert_eq!(mail["state"], "sent", "{mail}");
    let m = &sink.wait_for(1, Duration::from_secs(10)).await[0];
    assert!(m.tls, "STARTTLS was used");
    assert_eq!(m.login.as_deref(), Some("mailer"));
    assert_eq!(m.rcpt_tos, vec!["bob@example.com"]);
    assert_eq!(m.mail_from, "noreply@platform.test", "the platform's address, never the tenant's");
    assert!(
        m.header("from").contains("Sam's Shop via Platform") && m.header("from").contains("noreply@platform.test"),
        "{m:?}"
    );
    assert_eq!(m.header("reply-to"), "sam@shop.example");
    assert_eq!(m.header("subject"), "Your order");
    assert!(m.header("message-id").contains(&id), "the Message-ID carries the mail's id: {m:?}");
    assert_eq!(m.text.as_deref().map(str::trim), Some("It ships today."));

    // A template: values escaped in the HTML, not in the text.
    let (status, body) = call(
        &s.api,
        Some(&sam),
        "/email/save-template",
        json!({"name": "welcome", "subject": "Welcome, {{ name }}", "text": "Hi {{ name }}!", "html": "<p>Hi {{ name }}!</p>"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &s.api,
        Some(&sam),
        "/email/send",
        json!({"to": ["eve@example.com"], "template": "welcome", "vars": {"name": "<script>x</script>"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let msgs = sink.wait_for(2, Duration::from_secs(10)).await;
    let m = &msgs[1];
    assert_eq!(m.header("subject"), "Welcome, <script>x</script>");
    assert_eq!(m.text.as_deref().map(str::trim), Some("Hi <script>x</script>!"));
    let html = m.html.as_deref().expect("an HTML part");
    assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");

    // Bad input: a clear 4xx each, nothing queued.
    for (body, says) in [
        (json!({"to": ["eve@example.com"], "template": "welcome", "vars": {}}), "undefined"),
        (json!({"to": ["eve@example.com"], "template": "welcome", "subject": "x"}), "not both"),
        (json!({"to": ["not an address"], "subject": "x", "text": "y"}), "not an email address"),
        (json!({"to": [], "subject": "x", "text": "y"}), "recipients"),
        (json!({"to": vec!["a@example.com"; 51], "subject": "x", "text": "y"}), "recipients"),
        (json!({"to": ["a@example.com"], "subject": "x\r\nBcc: victim@example.com", "text": "y"}), "one line"),
        (
            json!({"to": ["a@example.com"], "subject": "x", "text": "y", "from_name": "A\r\nBcc: v@example.com"}),
            "one line",
        ),
        (json!({"to": ["a@example.com"], "subject": "", "text": "y"}), "subject"),
        (json!({"to": ["a@example.com"], "subject": "x"}), "body"),
        (json!({"to": ["a@example.com"], "subject": "x", "text": "y", "from": "ceo@bank.example"}), "unknown field"),
        (
            json!({"to": ["a@example.com"], "subject": "x", "text": "y", "from_name": "Platform Security"}),
            "platform's name",
        ),
        (json!({"to": ["a@example.com"], "subject": "x", "text": "y", "from_name": "ceo@bank.example"}), "address"),
        (json!({"to": ["a@example.com"], "template": "welcome", "vars": {"name": {"a": 1}}}), "not a string"),
    ] {
        let (status, err) = call(&s.api, Some(&sam), "/email/send", body.clone()).await;
        assert_eq!(status, 400, "{body} → {err}");
        assert!(err["detail"].as_str().unwrap_or("").contains(says), "{body} → {err}");
    }
    let (status, err) =
        call(&s.api, Some(&sam), "/email/send", json!({"to": ["eve@example.com"], "template": "nope"})).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) =
        call(&s.api, Some(&sam), "/email/save-template", json!({"name": "x", "subject": "{{ a", "text": ""})).await;
    assert_eq!(status, 400, "{err}");
    let (status, _) =
        call(&s.api, None, "/email/send", json!({"to": ["a@example.com"], "subject": "x", "text": "y"})).await;
    assert_eq!(status, 401, "anonymous callers send nothing");

    // An idempotency key: the repeat returns the same ids and sends nothing more.
    let req =
        json!({"to": ["c1@example.com", "c2@example.com"], "subject": "Once", "text": "only once", "key": "order-42"});
    let (status, first) = call(&s.api, Some(&sam), "/email/send", req.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = call(&s.api, Some(&sam), "/email/send", req).await;
    assert_eq!((status, &again), (200, &first));
    sink.wait_for(4, Duration::from_secs(10)).await;

    // The daily limit (5): 4 spent, so 2 more are refused, with the numbers.
    let (status, err) = call(
        &s.api,
        Some(&sam),
        "/email/send",
        json!({"to": ["d1@example.com", "d2@example.com"], "subject": "x", "text": "y"}),
    )
    .await;
    assert_eq!(status, 429, "{err}");
    assert!(err["detail"].as_str().unwrap_or("").contains("5 recipients a day"), "{err}");

    // Namespaces: blog sees none of shop's mail or templates; sam sees his, ann (admin) all.
    let (status, _) = call(&s.api, Some(&bea), "/email/get", json!({"id": id})).await;
    assert_eq!(status, 404);
    let (_, listed) = call(&s.api, Some(&bea), "/email/list", json!({})).await;
    assert_eq!(listed["mails"].as_array().map(Vec::len), Some(0), "{listed}");
    let (_, listed) = call(&s.api, Some(&bea), "/email/templates", json!({})).await;
    assert_eq!(listed["templates"].as_array().map(Vec::len), Some(0), "{listed}");
    let (status, err) = call(
        &s.api,
        Some(&bea),
        "/email/send",
        json!({"to": ["x@example.com"], "template": "welcome", "vars": {"name": "x"}}),
    )
    .await;
    assert_eq!(status, 404, "blog cannot use shop's template: {err}");
    let (_, listed) = call(&s.api, Some(&ann), "/email/list", json!({})).await;
    assert_eq!(listed["mails"].as_array().map(Vec::len), Some(4), "{listed}");
    let theirs = s.account("shop", "sid", "user", &[]).await;
    let (_, listed) = call(&s.api, Some(&theirs), "/email/list", json!({})).await;
    assert_eq!(listed["mails"].as_array().map(Vec::len), Some(0), "a member sees only what they sent: {listed}");
    let (status, _) = call(&s.api, Some(&theirs), "/email/get", json!({"id": id})).await;
    assert_eq!(status, 404, "nor another member's mail by id");
    assert_eq!(sink.messages().len(), 4, "nothing else was sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_with_backoff_and_records_bounces() {
    let options = Options { reject: Some("nobody".into()), tempfail: 2, ..Default::default() };
    let Some(sink) = SmtpSink::start(options) else { return };
    let s = server(&sink, &[("MICRO_EMAIL_RETRY", "0.2")]);
    let sam = s.account("shop", "sam", "user", &[]).await;
    let ann = s.account("shop", "ann", "user", &["admin"]).await;

    // Two 451s, then accepted: three attempts.
    let (status, sent) =
        call(&s.api, Some(&sam), "/email/send", json!({"to": ["ok@example.com"], "subject": "x", "text": "y"})).await;
    assert_eq!(status, 200, "{sent}");
    let mail = settled(&s.api, &sam, sent["ids"][0].as_str().unwrap()).await;
    assert_eq!((mail["state"].as_str(), mail["attempts"].as_u64()), (Some("sent"), Some(3)), "{mail}");
    assert_eq!(sink.messages().len(), 1);

    // A 550 bounces at once and is recorded; the address is refused until an admin clears it.
    let (_, sent) =
        call(&s.api, Some(&sam), "/email/send", json!({"to": ["nobody@example.com"], "subject": "x", "text": "y"}))
            .await;
    let mail = settled(&s.api, &sam, sent["ids"][0].as_str().unwrap()).await;
    assert_eq!((mail["state"].as_str(), mail["attempts"].as_u64()), (Some("bounced"), Some(1)), "{mail}");
    assert!(mail["error"].as_str().unwrap_or("").contains("no such user"), "{mail}");
    let (_, bounces) = call(&s.api, Some(&sam), "/email/bounces", json!({})).await;
    assert_eq!(bounces["bounces"][0]["address"], "nobody@example.com", "{bounces}");
    let again = json!({"to": ["Nobody <NOBODY@example.com>"], "subject": "x", "text": "y"});
    let (status, err) = call(&s.api, Some(&sam), "/email/send", again.clone()).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["detail"].as_str().unwrap_or("").contains("bounced"), "{err}");
    let (status, _) = call(&s.api, Some(&sam), "/email/unbounce", json!({"address": "nobody@example.com"})).await;
    assert_eq!(status, 403, "a member does not clear a bounce");
    let (status, _) = call(&s.api, Some(&ann), "/email/unbounce", json!({"address": "nobody@example.com"})).await;
    assert_eq!(status, 204);
    let (status, _) = call(&s.api, Some(&sam), "/email/send", again).await;
    assert_eq!(status, 200, "accepted once the bounce is cleared");
    // Another namespace's outbox is untouched by shop's bounce.
    let bea = s.account("blog", "bea", "user", &[]).await;
    let (_, bounces) = call(&s.api, Some(&bea), "/email/bounces", json!({})).await;
    assert_eq!(bounces["bounces"].as_array().map(Vec::len), Some(0), "{bounces}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_send_is_refused_clearly() {
    let s = ServerProcess::builder(micro()).env_remove("MICRO_SMTP").start();
    let sam = s.account("shop", "sam", "user", &[]).await;
    let (status, err) =
        call(&s.api, Some(&sam), "/email/send", json!({"to": ["a@example.com"], "subject": "x", "text": "y"})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["detail"].as_str().unwrap_or("").contains("MICRO_SMTP"), "{err}");
    // A bad setting stops the server at start-up with the variable's name.
    let out = std::process::Command::new(micro())
        .args(["server"])
        .env("MICRO_SMTP", "smtp://u:p@mail.example.com?tls=none")
        .env("MICRO_DATA_DIR", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("MICRO_SMTP") && err.contains("plain text"), "{err}");
}

/// A number from 0 to `n - 1` that differs from run to run.
fn pick(n: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970");
    (t.subsec_nanos() as u64 ^ t.as_secs()) % n
}

#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_survives_sigkill() {
    const MAILS: usize = 40;
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let mut s = server(&sink, &[]);
    let sam = s.account("shop", "sam", "user", &[]).await;
    // Two crashes at points that change from run to run, each while mail is being sent.
    let kills = [5 + pick(10) as usize, 20 + pick(10) as usize];
    for i in 0..MAILS {
        if kills.contains(&i) {
            s = s.kill().start();
        }
        // A client retries with its key until the call is accepted.
        let req = json!({"to": [format!("user{i}@example.com")], "subject": format!("mail {i}"), "text": "x", "key": format!("k{i}")});
        let mut tries = 0;
        loop {
            let (status, body) = call(&s.api, Some(&sam), "/email/send", req.clone()).await;
            if status == 200 {
                break;
            }
            tries += 1;
            assert!(tries < 50, "mail {i}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Kill once more while the tail of the outbox may still be sending, then let it finish.
    let s = s.kill().start();
    let msgs = sink.wait_for(MAILS, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = if sink.messages().len() > msgs.len() { sink.messages() } else { msgs };
    let mut by_subject = std::collections::BTreeMap::<String, Vec<String>>::new();
    for m in &msgs {
        by_subject.entry(m.header("subject").to_string()).or_default().push(m.header("message-id").to_string());
    }
    assert_eq!(by_subject.len(), MAILS, "every accepted mail arrived: {by_subject:?}");
    // A repeat is only possible for a mail in flight at a kill, and carries the same Message-ID.
    let repeats: Vec<_> = by_subject.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(repeats.len() <= 3, "at most one repeat per kill: {repeats:?}");
    for (subject, ids) in &repeats {
        assert!(ids.iter().all(|i| i == &ids[0]), "{subject}: a repeat keeps its Message-ID: {ids:?}");
    }
    // And each mail is marked sent.
    let admin = s.account("shop", "ann", "user", &["admin"]).await;
    let (_, listed) = call(&s.api, Some(&admin), "/email/list", json!({"state": "sent"})).await;
    assert_eq!(listed["mails"].as_array().map(Vec::len), Some(MAILS), "{listed}");
}

/// Two servers sharing PostgreSQL: mail accepted by either is sent once, by whichever
/// leads; when the leader dies the other takes over the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_share_one_outbox() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_email_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str())];
    let password = "two-node-admin-password";
    let a = server_builder(&sink, &env).admin_password(password).start();
    let b = server_builder(&sink, &env).admin_password(password).start();
    let sam = a.account("shop", "sam", "user", &[]).await;
    // A token from A works on B at once, on B's products too (whichever node's auth
    // answers their key lookups).
    for api in [&a.api, &b.api] {
        let (status, body) = call(api, Some(&sam), "/email/list", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..20 {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        let (status, body) = call(
            api,
            Some(&sam),
            "/email/send",
            json!({"to": [format!("u{i}@example.com")], "subject": format!("n{i}"), "text": "x"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    sink.wait_for(20, Duration::from_secs(30)).await;
    // A dies at once (SIGKILL); if it led, B takes the outbox over when its lease ends.
    let _a = a.kill();
    for i in 20..25 {
        let (status, body) = call(
            &b.api,
            Some(&sam),
            "/email/send",
            json!({"to": [format!("u{i}@example.com")], "subject": format!("n{i}"), "text": "x"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let msgs = sink.wait_for(25, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut by_subject = std::collections::BTreeMap::<String, Vec<String>>::new();
    for m in sink.messages() {
        by_subject.entry(m.header("subject").to_string()).or_default().push(m.header("message-id").to_string());
    }
    assert_eq!(by_subject.len(), 25, "every mail arrived: {msgs:?}");
    // Once each, but for one in flight when A was killed (between the server's OK and
    // its `sent` mark), which B sends again with the same Message-ID (docs/email.md).
    let repeats: Vec<_> = by_subject.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(repeats.len() <= 1 && repeats.iter().all(|(_, ids)| ids.len() == 2), "{repeats:?}");
    for (subject, ids) in &repeats {
        assert!(ids.iter().all(|i| i == &ids[0]), "{subject}: a repeat keeps its Message-ID: {ids:?}");
    }
    drop(b);
    schema.drop().await;
}
