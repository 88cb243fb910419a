//! Web app hosting through a real `micro server` (the binary; its gateway serves the
//! sites) and the real CLI: `micro app deploy` of a folder, the site on its own host
//! (the hosting domain's `<app>.<namespace>.…`) and under `/apps/<app>/` (sandboxed), SPA
//! fallback, content types and caching, an atomic second deploy, instant rollback, a
//! preview deploy, archives that try to leave the site, and who may deploy. On the
//! embedded defaults and on two nodes sharing PostgreSQL.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::cli::Cli;
use micro_test::process::ServerProcess;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

const DOMAIN: &str = "apps.test";

fn server(env: &[(&str, &str)]) -> ServerProcess {
    ServerProcess::builder(micro()).env("MICRO_HOSTING_DOMAIN", DOMAIN).env("MICRO_SMTP", "log").envs(env).start()
}

/// A site of version `v`: a page, a hashed script, a stylesheet, an image, a nested page.
fn site(dir: &Path, v: &str) {
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        format!("<!doctype html><title>Shop {v}</title><script type=module src=/assets/index-Ab12Cd3{v}.js></script><h1>{v}</h1>"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("assets/index-Ab12Cd3{v}.js")), format!("document.body.dataset.version = '{v}';"))
        .unwrap();
    std::fs::write(dir.join("assets/style.css"), "h1 { color: teal }").unwrap();
    std::fs::write(dir.join("assets/logo.svg"), "<svg xmlns='http://www.w3.org/2000/svg'/>").unwrap();
    std::fs::write(dir.join("docs/index.html"), format!("<p>docs {v}</p>")).unwrap();
}

/// A GET of `path` on the app's own host.
async fn on_host(api: &str, host: &str, path: &str) -> micro_test::HttpResponse {
    micro_test::http(api, "GET", path, &[("host", host)], b"").await
}

/// A tar archive with one entry of `kind` at `path` (written raw, as an attacker would).
fn archive_with(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let data = b"evil";
    h.set_entry_type(kind);
    h.set_size(if kind.is_file() { data.len() as u64 } else { 0 });
    h.set_mode(0o644);
    // The name bytes go in as they are (set_path would refuse `..`).
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    b.append(&h, if kind.is_file() { &data[..] } else { &[][..] }).unwrap();
    // And a page, so only the bad entry is wrong.
    let mut ok = tar::Header::new_gnu();
    ok.set_size(2);
    ok.set_mode(0o644);
    ok.set_path("index.html").unwrap();
    ok.set_cksum();
    b.append(&ok, &b"ok"[..]).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_a_site_is_deployed_served_rolled_back_and_previewed() {
    let s = server(&[]);
    hosting(&s, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_site_deployed_on_one_node_is_served_and_rolled_back_on_the_other() {
    let Some(pg) = micro_test::backend_url("MICRO_TEST_POSTGRES") else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_apps_cluster_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str())];
    let a = server(&env);
    let b = server(&env);
    hosting(&a, &b).await;
}

async fn hosting(a: &ServerProcess, b: &ServerProcess) {
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let cli = Cli::new(micro(), &a.proxy);
    cli.ok(&["login", "--id", "admin", "--password", &a.admin_password]).await;
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("shop").join("dist");
    site(&dist, "1");
    std::fs::write(dist.join(".env"), "SECRET_KEY=do-not-publish").unwrap();
    let host = format!("shop.shop.{DOMAIN}");

    // Nothing yet.
    assert_eq!(on_host(&a.api, &host, "/").await.status, 404);
    // Deployed with the CLI (the name from the folder: dist's parent).
    let out = cli.ok(&["--namespace", "shop", "app", "deploy", dist.to_str().unwrap()]).await;
    assert!(out.contains("deployed shop: deploy"), "{out}");
    assert!(out.contains("(5 files,"), "{out}");
    let v1 = out.split("deploy ").nth(1).unwrap().split(' ').next().unwrap().to_string();

    // Served on its own host by either node: the page, its assets with their types and
    // caching, a nested page, the SPA's routes; a missing asset is a 404.
    // (A node that looked before the deploy may take up to a second to see it.)
    let seen = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&a.api, &host, "/").await.status == 200 && on_host(&b.api, &host, "/").await.status == 200
    })
    .await;
    assert!(seen, "both nodes serve the first deploy");
    let page = on_host(&b.api, &host, "/").await;
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page.body.contains("<h1>1</h1>"), "{}", page.body);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page.header("content-security-policy").is_none(), "its own origin: not sandboxed");
    let js = on_host(&a.api, &host, "/assets/index-Ab12Cd31.js").await;
    assert_eq!((js.status, js.header("cache-control")), (200, Some("public, max-age=31536000, immutable")));
    assert!(js.header("content-type").unwrap().contains("javascript"), "{}", js.head);
    let css = on_host(&a.api, &host, "/assets/style.css").await;
    assert_eq!(
        (css.header("content-type"), css.header("cache-control")),
        (Some("text/css; charset=utf-8"), Some("no-cache"))
    );
    assert_eq!(on_host(&a.api, &host, "/assets/logo.svg").await.header("content-type"), Some("image/svg+xml"));
    let docs = on_host(&b.api, &host, "/docs/").await;
    assert!(docs.body.contains("docs 1"), "{}", docs.body);
    assert!(on_host(&b.api, &host, "/docs").await.body.contains("docs 1"));
    let route = on_host(&a.api, &host, "/products/42?color=red").await;
    assert_eq!(route.status, 200);
    assert!(route.body.contains("<h1>1</h1>"), "a route of the app is its page: {}", route.body);
    assert_eq!(on_host(&a.api, &host, "/assets/missing.js").await.status, 404);
    let env = on_host(&a.api, &host, "/.env").await;
    assert!(env.status == 404 && !env.body.contains("SECRET_KEY"), "hidden files stay home: {}", env.body);
    for bad in ["/../../etc/passwd", "/%2e%2e/x", "/assets/..%2f..%2findex.html"] {
        let r = on_host(&a.api, &host, bad).await;
        assert!(r.status == 400 || r.status == 404 || r.body.contains("<h1>1</h1>"), "{bad}: {}", r.status);
        assert!(!r.body.contains("root:"), "{bad}");
    }
    let etag = page.header("etag").unwrap().to_string();
    let again = micro_test::http(&a.api, "GET", "/", &[("host", &host), ("if-none-match", &etag)], b"").await;
    assert_eq!(again.status, 304);
    // Under /apps/ of the gateway: the same site, sandboxed (an origin of its own).
    let path = micro_test::http(&a.api, "GET", "/apps/shop/", &[("micro-namespace", "shop")], b"").await;
    assert_eq!(path.status, 200);
    assert!(path.header("content-security-policy").unwrap().starts_with("sandbox"), "{}", path.head);
    let bare = micro_test::http(&a.api, "GET", "/apps/shop", &[("micro-namespace", "shop")], b"").await;
    assert_eq!((bare.status, bare.header("location")), (308, Some("/apps/shop/")));

    // A second deploy: the site changes at once, whole.
    site(&dist, "2");
    std::fs::remove_file(dist.join("assets/index-Ab12Cd31.js")).unwrap();
    let out = cli.ok(&["--namespace", "shop", "app", "deploy", dist.to_str().unwrap(), "--name", "shop"]).await;
    let v2 = out.split("deploy ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    assert_ne!(v1, v2);
    let served = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&b.api, &host, "/").await.body.contains("<h1>2</h1>")
    })
    .await;
    assert!(served, "the second deploy is served on the other node");
    let old_gone = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&a.api, &host, "/assets/index-Ab12Cd31.js").await.status == 404
    })
    .await;
    assert!(old_gone, "the old asset is gone with its deploy (within a second on every node)");

    // Rolled back on node b: node a serves the first again within a second.
    let cli_b = Cli::new(micro(), &b.proxy);
    cli_b.ok(&["login", "--id", "admin", "--password", &a.admin_password]).await;
    let out = cli_b.ok(&["--namespace", "shop", "app", "rollback", "shop"]).await;
    assert!(out.contains(&format!("serves deploy {v1} again")), "{out}");
    let back = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&a.api, &host, "/").await.body.contains("<h1>1</h1>")
    })
    .await;
    assert!(back, "the rollback is served");
    let listed = cli.ok(&["--namespace", "shop", "app", "deploys", "shop"]).await;
    assert!(listed.contains(&format!("{v1} *")), "{listed}");
    // Rolling forward to the second by its id.
    cli.ok(&["--namespace", "shop", "app", "rollback", "shop", "--to", &v2]).await;

    // A preview: stored and served at its own name, the app untouched.
    site(&dist, "3");
    let out =
        cli.ok(&["--namespace", "shop", "app", "deploy", dist.to_str().unwrap(), "--name", "shop", "--preview"]).await;
    let v3 = out.split("deploy ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    let preview = on_host(&b.api, &format!("shop--{v3}.shop.{DOMAIN}"), "/").await;
    assert!(preview.body.contains("<h1>3</h1>"), "{}", preview.body);
    let current = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&a.api, &host, "/").await.body.contains("<h1>2</h1>")
    })
    .await;
    assert!(current, "a preview leaves the app as it was");
    assert_eq!(on_host(&a.api, &format!("shop--aaaaaaaaaa.shop.{DOMAIN}"), "/").await.status, 404);

    // Archives that try to leave the site, or hold links: refused whole, nothing changed.
    for (path, kind, link) in [
        ("../evil.html", tar::EntryType::Regular, None),
        ("/etc/evil.html", tar::EntryType::Regular, None),
        ("a/../../evil.html", tar::EntryType::Regular, None),
        ("link.html", tar::EntryType::Symlink, Some("/etc/passwd")),
        ("hard.html", tar::EntryType::Link, Some("index.html")),
    ] {
        let body = archive_with(path, kind, link);
        let r = micro_test::http(
            &a.api,
            "POST",
            "/apps/v1/apps/shop/deploys",
            &[
                ("micro-namespace", "shop"),
                ("authorization", &format!("Bearer {ann}")),
                ("content-type", "application/x-tar"),
            ],
            &body,
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    let r = micro_test::http(
        &a.api,
        "POST",
        "/apps/v1/apps/shop/deploys",
        &[("micro-namespace", "shop"), ("authorization", &format!("Bearer {ann}"))],
        b"not a tar archive at all",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(on_host(&a.api, &host, "/").await.body.contains("<h1>2</h1>"));
    // A folder with a link in it: the CLI refuses it before sending anything.
    std::os::unix::fs::symlink("/etc/passwd", dist.join("passwd")).unwrap();
    let err = cli.fails(&["--namespace", "shop", "app", "deploy", dist.to_str().unwrap(), "--name", "shop"]).await;
    assert!(err.contains("symbolic link"), "{err}");
    std::fs::remove_file(dist.join("passwd")).unwrap();
    let err = cli.fails(&["--namespace", "shop", "app", "deploy", dist.to_str().unwrap(), "--name", "Shop!"]).await;
    assert!(err.contains("not an app name"), "{err}");

    // Over the HTTP API too, as a deploy script would (a gzipped archive).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut t = tar::Builder::new(&mut gz);
        t.append_dir_all(".", &dist).unwrap();
        t.finish().unwrap();
    }
    let body = gz.finish().unwrap();
    let (st, apps) = call(&a.api, "GET", "/apps/v1/apps", Some(&ann), "shop", None).await;
    assert_eq!((st, apps["apps"][0]["name"].as_str()), (200, Some("shop")), "{apps}");
    let r = micro_test::http(
        &a.api,
        "POST",
        "/apps/v1/apps/blog/deploys",
        &[
            ("micro-namespace", "shop"),
            ("authorization", &format!("Bearer {ann}")),
            ("content-type", "application/gzip"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let blog = micro_test::eventually(Duration::from_secs(5), || async {
        on_host(&b.api, &format!("blog.shop.{DOMAIN}"), "/").await.body.contains("<h1>3</h1>")
    })
    .await;
    assert!(blog, "the site deployed over HTTP is served");

    // Who may: not an app user, not another namespace, not a viewer; nobody anonymous.
    let viewer = a.account("shop", "vera", "user", &["viewer"]).await;
    let other = a.account("blog", "bob", "user", &["admin"]).await;
    for (who, token, ns) in [
        ("viewer", Some(viewer.as_str()), "shop"),
        ("other", Some(other.as_str()), "shop"),
        ("anonymous", None, "shop"),
    ] {
        let (st, _) = call(&a.api, "POST", "/apps/v1/apps/shop/rollback", token, ns, Some(json!({}))).await;
        assert!(st == 401 || st == 403, "{who} rolls back: {st}");
        let (st, _) = call(&a.api, "DELETE", "/apps/v1/apps/shop", token, ns, None).await;
        assert!(st == 401 || st == 403, "{who} deletes: {st}");
    }
    let (st, _) = call(&a.api, "GET", "/apps/v1/apps", Some(&other), "blog", None).await;
    assert_eq!(st, 200);
    assert!(on_host(&a.api, &host, "/").await.body.contains("<h1>2</h1>"), "nothing changed");

    // Deleted: nothing served.
    cli.ok(&["--namespace", "shop", "app", "delete", "shop"]).await;
    let gone =
        micro_test::eventually(Duration::from_secs(5), || async { on_host(&b.api, &host, "/").await.status == 404 })
            .await;
    assert!(gone);
}
