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
