//! Web app hosting (the apps product): another namespace's admin, an app user and an
//! anonymous caller try to deploy over, roll back or delete a namespace's site, or to get
//! their own site served under its host; a deployer sends an archive that inflates without
//! end; a site served on the gateway's own origin tries to act in it.

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use serde_json::json;

use super::*;

const DOMAIN: &str = "apps.test";

/// A tar archive of one `index.html` saying `what`.
fn site(what: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(what.len() as u64);
    h.set_mode(0o644);
    h.set_path("index.html").expect("a path");
    h.set_cksum();
    b.append(&h, what.as_bytes()).expect("an entry");
    b.into_inner().expect("an archive")
}

async fn deploy(api: &str, token: Option<&str>, ns: &str, app: &str, body: &[u8]) -> micro_test::HttpResponse {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("micro-namespace", ns), ("content-type", "application/x-tar")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    micro_test::http(api, "POST", &format!("/apps/v1/apps/{app}/deploys"), &headers, body).await
}

async fn on_host(api: &str, host: &str) -> micro_test::HttpResponse {
    micro_test::http(api, "GET", "/", &[("host", host)], b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_the_namespaces_deployers_changes_its_sites() {
    let s = ServerProcess::builder(micro()).env("MICRO_HOSTING_DOMAIN", DOMAIN).env("MICRO_SMTP", "log").start();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let mallet = s.account("blog", "mallet", "user", &["admin"]).await;
    let viewer = s.account("shop", "vera", "user", &["viewer"]).await;
    let r = deploy(&s.api, Some(&ann), "shop", "shop", &site("the real shop")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // An app user of shop.
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000});
    assert_eq!(call(&s.api, "POST", "/users/v1/settings", Some(&ann), "shop", Some(lax)).await.0, 200);
    let creds = json!({"email": "zoe@example.com", "password": "a long enough password"});
    assert_eq!(call(&s.api, "POST", "/users/v1/signup", None, "shop", Some(creds.clone())).await.0, 200);
    let (_, zoe) = call(&s.api, "POST", "/users/v1/login", None, "shop", Some(creds)).await;
    let zoe = zoe["token"].as_str().expect("a token").to_string();

    for (who, token) in [
        ("blog's admin", Some(mallet.as_str())),
        ("shop's app user", Some(zoe.as_str())),
        ("a viewer", Some(viewer.as_str())),
        ("anybody", None),
    ] {
        let r = deploy(&s.api, token, "shop", "shop", &site("defaced")).await;
        assert!(r.status == 401 || r.status == 403, "{who} deploys: {} {}", r.status, r.body);
        let r = deploy(&s.api, token, "shop", "shop", &site("defaced")).await;
        assert!(!r.body.contains("\"deploy\""), "{who}");
        let (st, _) = call(&s.api, "POST", "/apps/v1/apps/shop/rollback", token, "shop", Some(json!({}))).await;
        assert!(st == 401 || st == 403, "{who} rolls back: {st}");
        let (st, _) = call(&s.api, "DELETE", "/apps/v1/apps/shop", token, "shop", None).await;
        assert!(st == 401 || st == 403, "{who} deletes: {st}");
        // Through the product's service too (what the CLI calls), acting in shop.
        let client = client(&s.proxy, "shop", token);
        for (endpoint, body) in [
            ("Apps.Rollback", json!({"name": "shop"})),
            ("Apps.Delete", json!({"name": "shop"})),
            ("Apps.Deploy", json!({"name": "shop", "archive": "x.tar"})),
        ] {
            let r = client.call_json("apps", endpoint, &body).await;
            assert!(r.is_err(), "{who}: {endpoint} went through: {r:?}");
        }
    }
    // Blog's admin makes an app of the same name in blog: it is blog's, on blog's host;
    // shop's host still serves shop's.
    let r = deploy(&s.api, Some(&mallet), "blog", "shop", &site("blog's own")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let own = micro_test::eventually(std::time::Duration::from_secs(5), || async {
        on_host(&s.api, &format!("shop.blog.{DOMAIN}")).await.body.contains("blog's own")
    })
    .await;
    assert!(own);
    assert!(on_host(&s.api, &format!("shop.shop.{DOMAIN}")).await.body.contains("the real shop"));
    // Host tricks: another label order, a port, a trailing dot, upper case, a preview of
    // a deploy of another namespace.
    let blog_deploy = r.json()["deploy"]["id"].as_str().expect("an id").to_string();
    for host in [
        format!("shop.shop.{DOMAIN}:80"),
        format!("SHOP.Shop.{DOMAIN}."),
        format!("shop--{blog_deploy}.shop.{DOMAIN}"),
        format!("shop.shop.{DOMAIN}.evil.example"),
    ] {
        let r = on_host(&s.api, &host).await;
        assert!(!r.body.contains("blog's own"), "{host}: {}", r.body);
    }
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_inflates_without_end_is_refused_and_a_path_site_runs_in_no_origin() {
    let s = ServerProcess::builder(micro()).env("MICRO_HOSTING_DOMAIN", DOMAIN).env("MICRO_SMTP", "log").start();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    // 300 MB of zeros in one entry, gzipped to a few hundred kB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut h = tar::Header::new_gnu();
        let size = 300u64 << 20;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_path("index.html").expect("a path");
        h.set_cksum();
        b.append(&h, std::io::Read::take(std::io::repeat(0), size)).expect("an entry");
        b.finish().expect("an archive");
    }
    let bomb = gz.finish().expect("gzip");
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let r = deploy(&s.api, Some(&ann), "shop", "shop", &bomb).await;
    assert!(r.status == 400 || r.status == 413, "{} {}", r.status, r.body);
    assert_eq!(on_host(&s.api, &format!("shop.shop.{DOMAIN}")).await.status, 404, "nothing deployed");
    // Many tiny files past the limit.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..5001 {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_path(format!("f{i}.txt")).expect("a path");
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("an entry");
    }
    let r = deploy(&s.api, Some(&ann), "shop", "shop", &b.into_inner().expect("an archive")).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // A site served under the gateway's own origin runs sandboxed, whatever it holds.
    let page = "<script>fetch('/auth/token',{credentials:'include'})</script>";
    assert_eq!(deploy(&s.api, Some(&ann), "shop", "shop", &site(page)).await.status, 200);
    let r = micro_test::http(&s.api, "GET", "/apps/shop/", &[("micro-namespace", "shop")], b"").await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(csp.starts_with("sandbox") && !csp.contains("allow-same-origin"), "{}", r.head);
    let r = micro_test::http(&s.api, "GET", "/apps/shop/deep/route", &[("micro-namespace", "shop")], b"").await;
    assert!(r.header("content-security-policy").unwrap_or("").starts_with("sandbox"), "{}", r.head);
    let (st, _) = call(&s.api, "GET", "/apps/v1/apps", Some(&ann), "shop", None).await;
    assert_eq!(st, 200, "the server goes on");
    let _ = s.stop();
}
