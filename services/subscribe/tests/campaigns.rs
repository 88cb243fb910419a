//! Campaigns through a real `micro server` (the binary) and a real SMTP server (aiosmtpd):
//! a campaign composed inline and one from an email template, each subscriber's own mail
//! (their name, their one-click unsubscribe link), the rate it goes at, scheduling and
//! cancelling, opt-in open and click tracking through the links in the delivered mails,
//! the report, bad input, a sending node SIGKILLed half-way (its restart sends each
//! subscriber exactly one mail), and two nodes sharing PostgreSQL (made on one, sent once
//! by the cluster).
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

fn server(sink: &SmtpSink) -> ServerProcess {
    ServerProcess::builder(micro())
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Platform <noreply@platform.test>")
        .env("MICRO_EMAIL_DAILY_LIMIT", "0")
        .start()
}

/// A list `news` of `shop` with `n` subscribers `s<i>@example.com` named `Sub <i>`, added
/// by the team (no mail); the admin's token.
async fn list_of(s: &ServerProcess, n: usize) -> String {
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let list = json!({"name": "news", "title": "Shop News", "double_opt_in": false});
    let (st, v) = call(&s.api, "POST", "/subscribe/lists/save", Some(&ann), "shop", Some(list)).await;
    assert_eq!(st, 200, "{v}");
    for i in 0..n {
        let body = json!({"list": "news", "email": format!("s{i}@example.com"), "name": format!("Sub {i}")});
        let (st, v) = call(&s.api, "POST", "/subscribe/subscribers/add", Some(&ann), "shop", Some(body)).await;
        assert_eq!(st, 200, "{v}");
    }
    ann
}

async fn campaign(api: &str, token: &str, endpoint: &str, body: Value) -> (u16, Value) {
    call(api, "POST", &format!("/subscribe/campaigns/{endpoint}"), Some(token), "shop", Some(body)).await
}

/// Waits for campaign `name` to be in `state`; its report.
async fn until_state(api: &str, token: &str, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, r) = campaign(api, token, "report", json!({"name": name})).await;
        assert_eq!(st, 200, "{r}");
        if r["campaign"]["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "campaign {name} never got {state}: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The mails whose subject contains `subject`.
fn mails(sink: &SmtpSink, subject: &str) -> Vec<micro_test::smtp::Received> {
    sink.messages().into_iter().filter(|m| m.header("subject").contains(subject)).collect()
}

/// The path and query of the first `href` of `html` that goes to `/subscribe/v1/`.
fn tracked_link(html: &str) -> String {
    let at = html.find("/subscribe/v1/shop/c/").expect("a tracked link");
    html[at..].split('"').next().unwrap().replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_reaches_each_subscriber_with_their_own_mail_and_counts_opens_and_clicks() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink);
    let ann = list_of(&s, 3).await;
    let api = s.api.clone();
    // One more subscribes from a form, and unsubscribes before the campaign: they get
    // nothing of it.
    let r = micro_test::http(
        &api,
        "POST",
        "/subscribe/v1/shop/lists/news/subscribe",
        &[("content-type", "application/json")],
        br#"{"email":"s3@example.com"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let welcome = sink.mail_to("s3@example.com", "You are subscribed", 1).await;
    let unsub = welcome.text.clone().unwrap();
    let at = unsub.find("/subscribe/v1/").unwrap();
    let path = unsub[at..].split_whitespace().next().unwrap().to_string();
    let r = micro_test::http(
        &api,
        "POST",
        &path,
        &[("content-type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let html = r#"<html><body><p>Hello {{name}}!</p><p><a href="https://shop.example/sale?a=1&amp;b=2">The sale</a></p><p><a href="{{unsubscribe_url}}">Unsubscribe</a></p></body></html>"#;
    let draft = json!({"name": "spring", "list": "news", "subject": "Spring sale for {{name}}", "text": "Hello {{name}}, the sale: https://shop.example/sale", "html": html, "track": true, "rate": 120});
    let (st, c) = campaign(&api, &ann, "save", draft.clone()).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["state"], "draft");
    // Nothing goes before it is sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(mails(&sink, "Spring sale").is_empty());
    let started = Instant::now();
    let (st, c) = campaign(&api, &ann, "send", json!({"name": "spring"})).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["state"], "scheduled");
    let report = until_state(&api, &ann, "spring", "sent").await;
    assert_eq!(
        (report["campaign"]["sent"].as_u64(), report["campaign"]["failed"].as_u64()),
        (Some(3), Some(0)),
        "{report}"
    );
    // 120 a minute: the third goes a second after the second.
    assert!(started.elapsed() >= Duration::from_millis(1000), "the rate held: {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    while mails(&sink, "Spring sale").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spring = mails(&sink, "Spring sale");
    let mut to: Vec<String> = spring.iter().flat_map(|m| m.rcpt_tos.clone()).collect();
    to.sort();
    assert_eq!(to, ["s0@example.com", "s1@example.com", "s2@example.com"], "each confirmed subscriber once");
    let m = spring.iter().find(|m| m.rcpt_tos == ["s1@example.com"]).unwrap();
    assert_eq!(m.header("subject"), "Spring sale for Sub 1");
    assert!(m.text.as_deref().unwrap().contains("Hello Sub 1, the sale"), "{:?}", m.text);
    assert!(m.header("list-unsubscribe").contains("/subscribe/v1/shop/unsubscribe?"), "{:?}", m.headers);
    assert_eq!(m.header("list-unsubscribe-post"), "List-Unsubscribe=One-Click");
    let h = m.html.clone().unwrap();
    assert!(h.contains("Hello Sub 1!"), "{h}");
    assert!(!h.contains("href=\"https://shop.example"), "the sale's link is tracked: {h}");
    assert!(h.contains("/subscribe/v1/shop/unsubscribe?"), "the unsubscribe link is not: {h}");
    assert!(h.contains("/subscribe/v1/shop/o/spring?"), "the open pixel: {h}");

    // The click counts and goes where the mail said; twice counts once.
    let click = tracked_link(&h);
    for _ in 0..2 {
        let r = micro_test::http(&api, "GET", &click, &[], b"").await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(r.header("location"), Some("https://shop.example/sale?a=1&b=2"));
    }
    // A link bent to go elsewhere is refused (no open redirect).
    let bent = click.replace("shop%2Eexample", "evil%2Eexample");
    assert_ne!(bent, click);
    assert_eq!(micro_test::http(&api, "GET", &bent, &[], b"").await.status, 403);
    // Another subscriber opens (the image).
    let h0 = spring.iter().find(|m| m.rcpt_tos == ["s0@example.com"]).unwrap().html.clone().unwrap();
    let at = h0.find("/subscribe/v1/shop/o/").unwrap();
    let pixel = h0[at..].split('"').next().unwrap().replace("&amp;", "&");
    let r = micro_test::http(&api, "GET", &pixel, &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // s2 unsubscribes from the campaign's mail.
    let u = spring.iter().find(|m| m.rcpt_tos == ["s2@example.com"]).unwrap().header("list-unsubscribe").to_string();
    let u = u.trim_matches(|c| c == '<' || c == '>');
    let u = &u[u.find("/subscribe/v1/").unwrap()..];
    let r = micro_test::http(
        &api,
        "POST",
        u,
        &[("content-type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, report) = campaign(&api, &ann, "report", json!({"name": "spring"})).await;
    assert_eq!((report["opens"].as_u64(), report["clicks"].as_u64()), (Some(2), Some(1)), "{report}");
    assert_eq!(report["links"], json!({"https://shop.example/sale?a=1&b=2": 1}));
    assert_eq!(report["unsubscribed"], 1, "{report}");
    // A sent campaign changes no more, and is not sent again.
    let (st, v) = campaign(&api, &ann, "save", draft).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = campaign(&api, &ann, "send", json!({"name": "spring"})).await;
    assert_eq!(st, 400, "{v}");

    // From an email template, scheduled ahead, then cancelled: nothing goes.
    let t = json!({"name": "weekly", "subject": "Weekly for {{name}}", "text": "Hi {{email}}"});
    let (st, v) = call(&api, "POST", "/email/email/savetemplate", Some(&ann), "shop", Some(t)).await;
    assert_eq!(st, 200, "{v}");
    let (st, c) = campaign(&api, &ann, "save", json!({"name": "week-1", "list": "news", "template": "weekly"})).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["subject"], "Weekly for {{name}}");
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3;
    let (st, c) = campaign(&api, &ann, "send", json!({"name": "week-1", "at": at})).await;
    assert_eq!(st, 200, "{c}");
    let (st, c) = campaign(&api, &ann, "cancel", json!({"name": "week-1"})).await;
    assert_eq!((st, c["state"].as_str()), (200, Some("cancelled")), "{c}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(mails(&sink, "Weekly for").is_empty(), "a cancelled campaign sends nothing");
    // Scheduled a moment ahead, it goes then (to the two still subscribed).
    let (_, _) = campaign(&api, &ann, "delete", json!({"name": "week-1"})).await;
    let (st, _) = campaign(&api, &ann, "save", json!({"name": "week-2", "list": "news", "template": "weekly"})).await;
    assert_eq!(st, 200);
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    campaign(&api, &ann, "send", json!({"name": "week-2", "at": at})).await;
    let report = until_state(&api, &ann, "week-2", "sent").await;
    assert_eq!(report["campaign"]["sent"], 2, "{report}");
    let m = sink.mail_to("s0@example.com", "Weekly for Sub 0", 1).await;
    assert!(m.text.unwrap().contains("Hi s0@example.com"));
    let (_, all) = campaign(&api, &ann, "list", json!({})).await;
    let names: Vec<&str> = all["campaigns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["week-2", "spring"]);

    // Bad input, each refused in words.
    for (bad, says) in [
        (json!({"name": "Bad Name", "list": "news", "subject": "s", "text": "t"}), "not a campaign name"),
        (json!({"name": "x", "list": "nope", "subject": "s", "text": "t"}), "no list"),
        (json!({"name": "x", "list": "news", "subject": "", "text": "t"}), "subject"),
        (json!({"name": "x", "list": "news", "subject": "s\r\nBcc: all@example.com", "text": "t"}), "subject"),
        (json!({"name": "x", "list": "news", "subject": "s", "text": ""}), "body"),
        (json!({"name": "x", "list": "news", "subject": "s", "text": "t", "rate": 0}), "rate"),
        (json!({"name": "x", "list": "news", "template": "weekly", "text": "t"}), "not both"),
        (json!({"name": "x", "list": "news", "template": "nope"}), "no email template"),
        (
            json!({"name": "x", "list": "news", "subject": "s", "text": "t", "state": "sent", "sent": 5, "bogus": 1}),
            "unknown field",
        ),
    ] {
        let (st, v) = campaign(&api, &ann, "save", bad.clone()).await;
        assert!(st == 400 || st == 404, "{bad} → {st} {v}");
        assert!(v["detail"].as_str().unwrap_or_default().contains(says), "{bad} → {v}");
    }
    let (st, _) = campaign(&api, &ann, "send", json!({"name": "nope"})).await;
    assert_eq!(st, 404);
    let (st, _) = campaign(&api, &ann, "delete", json!({"name": "spring", "extra": 1})).await;
    assert_eq!(st, 400);
    // Tracking links without their signature, or for another campaign, count nothing.
    for bad in ["/subscribe/v1/shop/o/spring", "/subscribe/v1/shop/c/spring?u=https://evil.example&s=00&sig=x"] {
        assert_eq!(micro_test::http(&api, "GET", bad, &[], b"").await.status, 403, "{bad}");
    }
    let (_, report) = campaign(&api, &ann, "report", json!({"name": "spring"})).await;
    assert_eq!((report["opens"].as_u64(), report["clicks"].as_u64()), (Some(2), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_while_sending_a_campaign_sends_each_subscriber_exactly_once_after_its_restart() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink);
    let n = 60;
    let ann = list_of(&s, n).await;
    let draft = json!({"name": "big", "list": "news", "subject": "Big news", "text": "Hello {{name}}", "rate": 600});
    let (st, v) = campaign(&s.api, &ann, "save", draft).await;
    assert_eq!(st, 200, "{v}");
    campaign(&s.api, &ann, "send", json!({"name": "big"})).await;
    // Killed part-way (about a third in, at 10 a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    while mails(&sink, "Big news").len() < 15 {
        assert!(Instant::now() < deadline, "the campaign did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = s.kill();
    let before = mails(&sink, "Big news").len();
    assert!(before < n, "killed before the end ({before})");
    let s = again.start();
    let ann = s.account("shop", "ann2", "user", &["admin"]).await;
    let report = until_state(&s.api, &ann, "big", "sent").await;
    // The outbox delivers what was accepted: every mail once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = mails(&sink, "Big news");
        let mut to: Vec<String> = got.iter().flat_map(|m| m.rcpt_tos.clone()).collect();
        to.sort();
        let unique = {
            let mut u = to.clone();
            u.dedup();
            u
        };
        assert_eq!(to.len(), unique.len(), "nobody twice: {to:?}");
        if to.len() == n {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {n} delivered; report {report}", to.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_campaign_made_on_one_node_is_sent_once_by_the_cluster() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_campaigns_cluster_{}", std::process::id())).await;
    let node = || {
        ServerProcess::builder(micro())
            .env("MICRO_SMTP", sink.url())
            .env("MICRO_EMAIL_DAILY_LIMIT", "0")
            .env("MICRO_BACKEND", schema.url.as_str())
            .start()
    };
    let (a, b) = (node(), node());
    let ann = list_of(&a, 5).await;
    let draft =
        json!({"name": "both", "list": "news", "subject": "Both nodes", "text": "Hello {{name}}", "track": true});
    let (st, v) = campaign(&b.api, &ann, "save", draft).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = campaign(&a.api, &ann, "send", json!({"name": "both"})).await;
    assert_eq!(st, 200, "{v}");
    let report = until_state(&b.api, &ann, "both", "sent").await;
    assert_eq!(report["campaign"]["sent"], 5, "{report}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mails(&sink, "Both nodes").len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut to: Vec<String> = mails(&sink, "Both nodes").iter().flat_map(|m| m.rcpt_tos.clone()).collect();
    to.sort();
    let expected: Vec<String> = (0..5).map(|i| format!("s{i}@example.com")).collect();
    assert_eq!(to, expected, "each subscriber once, whichever node sent");
}
