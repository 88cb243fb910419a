//! Mailing lists through a real `micro server` (the binary) and a real SMTP server
//! (aiosmtpd, started by the test): a subscription from another site's form, double
//! opt-in from the delivered mail (a page with a button: following the link changes
//! nothing), the welcome mail's one-click unsubscribe (RFC 8058 headers, and the POST a
//! mail client sends), CSV export, and bad input. On the embedded defaults and on two
//! nodes sharing PostgreSQL.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::json;

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

/// The first URL in a mail's text that goes to `/subscribe/v1/`, as a path and query.
fn link(m: &micro_test::smtp::Received) -> String {
    let text = m.text.clone().unwrap_or_default();
    let at = text.find("/subscribe/v1/").expect("a link in the mail");
    text[at..].split_whitespace().next().unwrap().to_string()
}

/// A form post from another site's page, as a browser sends it.
async fn subscribe_form(api: &str, body: &str) -> micro_test::HttpResponse {
    micro_test::http(
        api,
        "POST",
        "/subscribe/v1/shop/lists/news/subscribe",
        &[("content-type", "application/x-www-form-urlencoded"), ("origin", "https://shop.example")],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_a_subscriber_confirms_from_the_mail_and_unsubscribes_in_one_click() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let s = server(&sink, &[]);
    lists(&sink, &s, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_subscription_on_one_node_is_confirmed_on_the_other() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_subscribe_cluster_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str())];
    let a = server(&sink, &env);
    let b = server(&sink, &env);
    lists(&sink, &a, &b).await;
}

async fn lists(sink: &SmtpSink, a: &ServerProcess, b: &ServerProcess) {
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let viewer = a.account("shop", "vera", "user", &["viewer"]).await;
    let other = a.account("blog", "bob", "user", &["admin"]).await;
    let (api, bpi) = (a.api.clone(), b.api.clone());

    // No list yet: nothing to subscribe to.
    let r = subscribe_form(&api, "email=zoe%40example.com").await;
    assert_eq!(r.status, 404, "{}", r.body);
    // The team makes one (through the service, as the CLI does); bad ones are refused.
    let list = json!({"name": "news", "title": "Shop News"});
    let (st, v) = call(&api, "POST", "/subscribe/lists/save", Some(&ann), "shop", Some(list.clone())).await;
    assert_eq!(st, 200, "{v}");
    for (bad, says) in [
        (json!({"name": "News!"}), "not a list name"),
        (json!({"name": "x", "redirect_url": "javascript:alert(1)"}), "redirect_url"),
        (json!({"name": "x", "admin": true}), "unknown field"),
    ] {
        let (st, v) = call(&api, "POST", "/subscribe/lists/save", Some(&ann), "shop", Some(bad)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(says), "{says}: {v}");
    }
    let (st, _) = call(&api, "POST", "/subscribe/lists/save", Some(&viewer), "shop", Some(list.clone())).await;
    assert_eq!(st, 403, "a viewer manages no lists");
    let (st, _) = call(&api, "POST", "/subscribe/lists/save", Some(&other), "shop", Some(list.clone())).await;
    assert!(st == 401 || st == 403, "another namespace manages no lists: {st}");

    // The embeddable form: an iframe's page and a script tag's script.
    let page = micro_test::http(&bpi, "GET", "/subscribe/v1/shop/lists/news/form", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<form method=post action=\"/subscribe/v1/shop/lists/news/subscribe\""),
        "{}",
        page.body
    );
    assert!(page.header("content-security-policy").unwrap().contains("frame-ancestors *"), "{}", page.head);
    let js = micro_test::http(&bpi, "GET", "/subscribe/v1/shop/lists/news/form.js", &[], b"").await;
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(js.body.contains("/subscribe/v1/shop/lists/news/subscribe"), "{}", js.body);

    // Zoe subscribes from the shop's site: a simple form post, answered to any origin.
    let r = subscribe_form(&api, "email=Zoe%40Example.com&name=Zoe").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.json()["message"].as_str().unwrap().contains("Check your email"), "{}", r.body);
    let mail = sink.mail_to("zoe@example.com", "Confirm your subscription to Shop News", 1).await;
    assert!(mail.header("from").contains("via"), "{:?}", mail.headers);
    let confirm = link(&mail);
    // Asking again right away mails nothing more (a form is no way to flood a mailbox).
    assert_eq!(subscribe_form(&bpi, "email=zoe%40example.com").await.status, 200);

    // Following the link shows a page with a button and changes nothing (mail scanners
    // follow links); the button confirms, on either node.
    let shown = micro_test::http(&bpi, "GET", &confirm, &[], b"").await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(shown.body.contains("Confirm my subscription"), "{}", shown.body);
    let (_, subs) =
        call(&api, "POST", "/subscribe/subscribers/list", Some(&ann), "shop", Some(json!({"list": "news"}))).await;
    assert_eq!(subs["subscribers"][0]["state"], "pending", "{subs}");
    // A changed link: refused, in words.
    for bent in [
        confirm.replace("zoe%40example", "eve%40example"),
        confirm.replace("exp=", "exp=9"),
        confirm.replace("sig=", "sig=x"),
    ] {
        let r = micro_test::http(&api, "POST", &bent, &[("accept", "text/html")], b"").await;
        assert!(r.status == 403 || r.status == 400, "{bent}: {}", r.status);
        assert!(r.body.contains("class=error"), "{}", r.body);
    }
    let done =
        micro_test::http(&bpi, "POST", &confirm, &[("content-type", "application/x-www-form-urlencoded")], b"").await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("You are subscribed"), "{}", done.body);
    let (_, subs) =
        call(&bpi, "POST", "/subscribe/subscribers/list", Some(&ann), "shop", Some(json!({"list": "news"}))).await;
    assert_eq!(
        (subs["subscribers"][0]["state"].as_str(), subs["subscribers"][0]["name"].as_str()),
        (Some("subscribed"), Some("Zoe")),
        "{subs}"
    );
    let confirmations =
        sink.messages().iter().filter(|m| m.header("subject").contains("Confirm your subscription")).count();
    assert_eq!(confirmations, 1, "the second ask mailed nothing");

    // The welcome mail says how to leave, in the headers mail clients show as a button.
    let welcome = sink.mail_to("zoe@example.com", "You are subscribed to Shop News", 1).await;
    let header = welcome.header("list-unsubscribe").to_string();
    assert!(header.starts_with('<') && header.contains("/subscribe/v1/shop/unsubscribe?"), "{header}");
    assert_eq!(welcome.header("list-unsubscribe-post"), "List-Unsubscribe=One-Click");
    let unsubscribe = &header[header.find("/subscribe/v1/").unwrap()..header.len() - 1];
    // A bad signature unsubscribes nobody.
    let r = micro_test::http(&api, "POST", &unsubscribe.replace("sig=", "sig=AA"), &[], b"List-Unsubscribe=One-Click")
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // CSV export, for the team's managers: a name that would run as a formula is defused.
    let r = subscribe_form(&api, "email=mal%40example.com&name=%3DHYPERLINK(%22http://evil%22)").await;
    assert_eq!(r.status, 200);
    let csv = micro_test::http(
        &api,
        "GET",
        "/subscribe/v1/lists/news/subscribers.csv",
        &[("authorization", &format!("Bearer {ann}")), ("micro-namespace", "shop")],
        b"",
    )
    .await;
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(csv.body.starts_with("email,name,state,created,confirmed,unsubscribed\n"), "{}", csv.body);
    assert!(csv.body.contains("zoe@example.com,Zoe,subscribed,"), "{}", csv.body);
    assert!(csv.body.contains("mal@example.com,\"'=HYPERLINK(\"\"http://evil\"\")\",pending"), "{}", csv.body);
    for token in [&viewer, &other] {
        let r = micro_test::http(
            &api,
            "GET",
            "/subscribe/v1/lists/news/subscribers.csv",
            &[("authorization", &format!("Bearer {token}")), ("micro-namespace", "shop")],
            b"",
        )
        .await;
        assert!(r.status == 401 || r.status == 403, "{}", r.body);
        assert!(!r.body.contains("zoe@example.com"));
    }
    // One click, as a mail client sends it: unsubscribed, on the other node.
    let r = micro_test::http(
        &bpi,
        "POST",
        unsubscribe,
        &[("content-type", "application/x-www-form-urlencoded")],
        b"List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, subs) =
        call(&api, "POST", "/subscribe/subscribers/list", Some(&ann), "shop", Some(json!({"list": "news"}))).await;
    let zoe = subs["subscribers"].as_array().unwrap().iter().find(|s| s["email"] == "zoe@example.com").unwrap().clone();
    assert_eq!(zoe["state"], "unsubscribed", "{subs}");
    // The link's page works the same from a browser.
    let page = micro_test::http(&api, "GET", unsubscribe, &[], b"").await;
    assert!(page.body.contains("Unsubscribe"), "{}", page.body);

    // Bad input: each refused with its reason.
    for (body, status, says) in [
        ("email=not-an-address", 400, "not an email address"),
        ("email=a%40b.c%0d%0aBcc:%20x%40y.z", 400, "not an email address"),
        ("email=a%40b.co&admin=1", 400, "unknown field"),
        ("email=a%40b.co&name=", 200, ""),
    ] {
        let r = subscribe_form(&api, body).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(r.body.contains(says), "{body}: {}", r.body);
    }
    let r = micro_test::http(
        &api,
        "POST",
        "/subscribe/v1/shop/lists/nope/subscribe",
        &[("content-type", "application/json")],
        br#"{"email":"a@b.co"}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    // A flood from one address is held.
    let mut limited = false;
    for i in 0..30 {
        let r = subscribe_form(&api, &format!("email=flood{i}%40example.com")).await;
        if r.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "thirty subscriptions from one address in a minute");
}
