//! Mailing lists (the subscribe product): an app user, another namespace's admin and an
//! anonymous caller try to manage a namespace's lists or read its subscribers; a link
//! of one namespace is replayed in another; a list's title tries to run script in the
//! pages; another site's page tries to read the export with the team's cookie.

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_the_team_reads_or_changes_a_namespaces_lists() {
    let s = ServerProcess::start(&micro(), &[("MICRO_SMTP", "log")]);
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let mallet = s.account("blog", "mallet", "user", &["admin"]).await;
    let list = json!({"name": "news", "title": "<script>alert(document.cookie)</script>"});
    let (st, v) = call(&s.api, "POST", "/subscribe/lists/save", Some(&ann), "shop", Some(list)).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) =
        call(&s.api, "POST", "/subscribe/lists/save", Some(&mallet), "blog", Some(json!({"name": "news"}))).await;
    assert_eq!(st, 200, "blog's own list of the same name");
    // An app user of shop.
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000});
    assert_eq!(call(&s.api, "POST", "/users/v1/settings", Some(&ann), "shop", Some(lax)).await.0, 200);
    let creds = json!({"email": "zoe@example.com", "password": "a long enough password"});
    assert_eq!(call(&s.api, "POST", "/users/v1/signup", None, "shop", Some(creds.clone())).await.0, 200);
    let (_, zoe) = call(&s.api, "POST", "/users/v1/login", None, "shop", Some(creds)).await;
    let zoe = zoe["token"].as_str().expect("a token").to_string();
    let r = micro_test::http(
        &s.api,
        "POST",
        "/subscribe/v1/shop/lists/news/subscribe",
        &[("content-type", "application/json")],
        br#"{"email":"sub@example.com"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    for (who, token) in
        [("shop's app user", Some(zoe.as_str())), ("blog's admin", Some(mallet.as_str())), ("anybody", None)]
    {
        for (path, body) in [
            ("/subscribe/lists/save", json!({"name": "news", "redirect_url": "https://evil.example"})),
            ("/subscribe/lists/delete", json!({"name": "news"})),
            ("/subscribe/lists/list", json!({})),
            ("/subscribe/subscribers/list", json!({"list": "news"})),
            ("/subscribe/subscribers/export", json!({"list": "news"})),
        ] {
            let (st, v) = call(&s.api, "POST", path, token, "shop", Some(body)).await;
            assert!(st == 401 || st == 403, "{who}: {path}: {st} {v}");
            assert!(!v.to_string().contains("sub@example.com"), "{who}: {path}");
        }
        let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
        let r = micro_test::http(
            &s.api,
            "GET",
            "/subscribe/v1/lists/news/subscribers.csv",
            &[("authorization", &bearer), ("micro-namespace", "shop")],
            b"",
        )
        .await;
        assert!(!r.body.contains("sub@example.com"), "{who} reads the export: {}", r.body);
    }
    // The export with the team's cookie, as another site's page would ask: no CORS
    // answer lets that page read a credentialed answer (that takes its own origin and
    // Access-Control-Allow-Credentials; `*` never does).
    let r = micro_test::http(
        &s.api,
        "GET",
        "/subscribe/v1/lists/news/subscribers.csv",
        &[("cookie", &format!("micro-token={ann}")), ("origin", "https://evil.example"), ("micro-namespace", "shop")],
        b"",
    )
    .await;
    assert!(r.header("access-control-allow-credentials").is_none(), "{}", r.head);
    assert_ne!(r.header("access-control-allow-origin"), Some("https://evil.example"), "{}", r.head);

    // A confirmation link of blog's list replayed under shop (the same list name and
    // address): another namespace's key, refused.
    let forged = "/subscribe/v1/shop/unsubscribe?list=news&email=sub%40example.com&sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = micro_test::http(&s.api, "POST", forged, &[], b"List-Unsubscribe=One-Click").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = micro_test::http(
        &s.api,
        "GET",
        "/subscribe/v1/shop/confirm?list=news&email=sub%40example.com&exp=99999999999",
        &[("accept", "text/html")],
        b"",
    )
    .await;
    assert!(r.status == 403 || r.status == 400, "{}", r.body);
    let twice = "/subscribe/v1/shop/unsubscribe?list=news&email=a%40b.co&email=sub%40example.com&sig=x";
    assert_eq!(micro_test::http(&s.api, "POST", twice, &[], b"").await.status, 400);

    // The title is text in every page, never markup.
    for path in ["/subscribe/v1/shop/lists/news/form"] {
        let r = micro_test::http(&s.api, "GET", path, &[], b"").await;
        assert_eq!(r.status, 200);
        assert!(!r.body.contains("<script>alert"), "{}", r.body);
        assert!(r.body.contains("&lt;script&gt;"), "{}", r.body);
        assert!(r.header("content-security-policy").unwrap_or("").contains("default-src 'none'"), "{}", r.head);
    }
    let r = micro_test::http(&s.api, "GET", "/subscribe/v1/shop/lists/news/form.js", &[], b"").await;
    assert!(!r.body.contains("<script>"), "the script names no title: {}", r.body);
    let (st, v) =
        call(&s.api, "POST", "/subscribe/subscribers/list", Some(&ann), "shop", Some(json!({"list": "news"}))).await;
    assert_eq!((st, v["subscribers"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_the_team_runs_a_namespaces_campaigns_or_bends_their_links() {
    let Some(sink) = micro_test::smtp::SmtpSink::start(Default::default()) else { return };
    let s = ServerProcess::builder(micro()).env("MICRO_SMTP", sink.url()).env("MICRO_EMAIL_DAILY_LIMIT", "0").start();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let mallet = s.account("blog", "mallet", "user", &["admin"]).await;
    let viewer = s.account("shop", "vera", "user", &["viewer"]).await;
    for (ns, token) in [("shop", &ann), ("blog", &mallet)] {
        let (st, v) =
            call(&s.api, "POST", "/subscribe/lists/save", Some(token), ns, Some(json!({"name": "news"}))).await;
        assert_eq!(st, 200, "{v}");
    }
    let add = json!({"list": "news", "email": "sub@example.com", "name": "Sub"});
    assert_eq!(call(&s.api, "POST", "/subscribe/subscribers/add", Some(&ann), "shop", Some(add)).await.0, 200);
    let html = r#"<a href="https://shop.example/p">p</a> <a href="javascript:alert(1)">x</a>"#;
    let draft = json!({"name": "c1", "list": "news", "subject": "Hi", "text": "t", "html": html, "track": true});
    let (st, v) = call(&s.api, "POST", "/subscribe/campaigns/save", Some(&ann), "shop", Some(draft.clone())).await;
    assert_eq!(st, 200, "{v}");

    // Another namespace's admin (in shop's name, and in their own with shop's names), a
    // viewer of shop, and anybody: no campaign of shop is made, sent, read or stopped.
    for (who, token, ns) in [
        ("blog's admin in shop", Some(mallet.as_str()), "shop"),
        ("shop's viewer", Some(viewer.as_str()), "shop"),
        ("anybody", None, "shop"),
    ] {
        for (path, body) in [
            ("/subscribe/campaigns/save", draft.clone()),
            ("/subscribe/campaigns/send", json!({"name": "c1"})),
            ("/subscribe/campaigns/cancel", json!({"name": "c1"})),
            ("/subscribe/campaigns/delete", json!({"name": "c1"})),
            ("/subscribe/campaigns/report", json!({"name": "c1"})),
            ("/subscribe/campaigns/list", json!({})),
            ("/subscribe/subscribers/add", json!({"list": "news", "email": "spam@example.com"})),
        ] {
            let (st, v) = call(&s.api, "POST", path, token, ns, Some(body)).await;
            assert!(st == 401 || st == 403, "{who}: {path}: {st} {v}");
        }
    }
    let (st, _) =
        call(&s.api, "POST", "/subscribe/campaigns/send", Some(&mallet), "blog", Some(json!({"name": "c1"}))).await;
    assert_eq!(st, 404, "blog has no campaign c1");
    let (_, list) = call(&s.api, "POST", "/subscribe/campaigns/list", Some(&ann), "shop", Some(json!({}))).await;
    assert_eq!(list["campaigns"][0]["state"], "draft", "still a draft: {list}");

    // Sent, the mail's tracked link works for shop alone, and only to where it was signed.
    assert_eq!(
        call(&s.api, "POST", "/subscribe/campaigns/send", Some(&ann), "shop", Some(json!({"name": "c1"}))).await.0,
        200
    );
    let m = sink.mail_to("sub@example.com", "Hi", 1).await;
    let h = m.html.expect("an html body");
    assert!(h.contains(r#"href="javascript:alert(1)""#), "only http(s) links are tracked: {h}");
    let at = h.find("/subscribe/v1/shop/c/c1?").expect("a tracked link");
    let link = h[at..].split('"').next().expect("its end").replace("&amp;", "&");
    assert_eq!(micro_test::http(&s.api, "GET", &link, &[], b"").await.status, 302);
    for bent in [
        link.replace("/v1/shop/", "/v1/blog/"),
        link.replace("/c/c1?", "/c/c2?"),
        link.replace("shop%2Eexample", "evil%2Eexample"),
        format!("{link}&u=https%3A%2F%2Fevil%2Eexample"),
        link.replace("u=https", "u=javascript"),
    ] {
        let r = micro_test::http(&s.api, "GET", &bent, &[], b"").await;
        assert!(r.status == 403 || r.status == 400, "{bent}: {} {}", r.status, r.body);
        assert!(r.header("location").is_none(), "{bent}: no redirect");
    }
    let (_, report) =
        call(&s.api, "POST", "/subscribe/campaigns/report", Some(&ann), "shop", Some(json!({"name": "c1"}))).await;
    assert_eq!(report["clicks"], 1, "{report}");
    let _ = s.stop();
}
