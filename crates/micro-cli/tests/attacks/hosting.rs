//! Public hosting (`MICRO_HOSTING_DOMAIN`): a tenant's services at
//! `<service>.<namespace>.<domain>`. The name decides the namespace, whatever a request
//! says; a private service answers its namespace's accounts only, through every door
//! (its name, a gateway path, the proxy); another namespace cannot change a namespace's
//! hosting, nor claim the platform's names as custom domains.

use super::*;
use micro::Code;
use micro::proto::domains as pb;
use micro_test::process::ServerProcess;
use micro_test::recorder::Recorder;
use serde_json::{Value, json};

const DOMAIN: &str = "apps.test";

/// A `Domains` call in `ns` as the holder of `token`.
fn domains_req<T>(ns: &str, token: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("namespace"));
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_names_reach_their_namespace_and_private_services_answer_members_only() {
    let s = ServerProcess::start(&micro(), &[("MICRO_HOSTING_DOMAIN", DOMAIN)]);
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, "shop", ("owner", "owner-secret-1"), "user", &["admin"]).await;
    let owner_token = micro_test::login(&s.proxy, "shop", "owner", "owner-secret-1").await;
    let vera = s.account("shop", "vera", "user", &["viewer"]).await;
    let mallory = s.account("blog", "mallory", "user", &["admin"]).await;
    let hello = |from: &'static str| move |_: micro::Context, _: Value| async move { Ok(json!({"from": from})) };
    let shop_greet = s.service("shop", "greet").await.handle("Greet.Hello", hello("shop")).start().await.unwrap();
    let blog_greet = s.service("blog", "greet").await.handle("Greet.Hello", hello("blog")).start().await.unwrap();
    // An HTTP app of the shop (which checks nothing itself).
    let site = Recorder::start(&[]).await;
    register(&s.proxy, Some(&owner_token), "shop", "site", "site-1", &format!("http://{}", site.address), "http")
        .await
        .unwrap();

    let get = |host: String, path: &'static str, token: Option<String>| {
        let api = s.api.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
            // The request names the blog: on a hosted name, that does not count.
            let mut headers = vec![("host", host.as_str()), ("micro-namespace", "blog")];
            if !bearer.is_empty() {
                headers.push(("authorization", bearer.as_str()));
            }
            micro_test::http(&api, "GET", path, &headers, b"").await
        }
    };
    let host = |name: &str| format!("{name}.{DOMAIN}:80");

    // Public (the default): each name reaches its own namespace's service.
    let r = get(host("greet.shop"), "/hello", None).await;
    assert_eq!((r.status, r.json()["from"].as_str()), (200, Some("shop")), "{}", r.body);
    let r = get(host("greet.blog"), "/hello", None).await;
    assert_eq!((r.status, r.json()["from"].as_str()), (200, Some("blog")), "{}", r.body);
    let r = get("GREET.Shop.Apps.Test.".into(), "/hello", None).await;
    assert_eq!(r.json()["from"], "shop", "names are not case sensitive: {}", r.body);
    let r = get(host("shop"), "/greet/hello", None).await;
    assert_eq!((r.status, r.json()["from"].as_str()), (200, Some("shop")), "the namespace's name: {}", r.body);
    let r = get(host("site.shop"), "/page?x=1", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(site.requests().last().map(|p| p.uri.to_string()), Some("/page?x=1".into()));
    // The gateway's own pages are not on hosted names.
    assert_ne!(get(host("shop"), "/", None).await.json()["name"], "micro");

    // The owner sees where the services are, and makes the greeter private.
    let owner = s.cli();
    owner.ok(&["--namespace", "shop", "login", "--id", "owner", "--password", "owner-secret-1"]).await;
    let listed = owner.json(&["hosting", "-o", "json"]).await;
    assert_eq!((listed["domain"].as_str(), listed["private"].as_bool()), (Some(DOMAIN), Some(false)), "{listed}");
    let port = s.api.rsplit(':').next().unwrap().to_string();
    let greet_row = listed["services"].as_array().unwrap().iter().find(|x| x["name"] == "greet").unwrap().clone();
    assert_eq!(greet_row["url"], format!("http://greet.shop.{DOMAIN}:{port}"), "{listed}");
    assert_eq!((greet_row["running"].as_bool(), greet_row["private"].as_bool()), (Some(true), Some(false)));
    let text = owner.ok(&["hosting", "private", "greet"]).await;
    assert!(text.contains("greet is now private"), "{text}");

    // Private: nobody outside the shop reaches it, by its name, a path or the proxy.
    let r = get(host("greet.shop"), "/hello", None).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("service greet of namespace shop is private"), "{}", r.body);
    assert_eq!(get(host("greet.shop"), "/hello", Some(mallory.clone())).await.status, 403);
    let path = |ns: &'static str, token: Option<String>| {
        let api = s.api.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
            let mut headers = vec![("micro-namespace", ns)];
            if !bearer.is_empty() {
                headers.push(("authorization", bearer.as_str()));
            }
            micro_test::http(&api, "POST", "/greet/hello", &headers, b"{}").await
        }
    };
    assert_eq!(path("shop", None).await.status, 401);
    assert_ne!(path("shop", Some(mallory.clone())).await.status, 200);
    let err = client(&s.proxy, "shop", None).call_json("greet", "Greet.Hello", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = client(&s.proxy, "shop", Some(&mallory)).call_json("greet", "Greet.Hello", &json!({})).await.unwrap_err();
    assert!(matches!(err.code(), Code::PermissionDenied | Code::Unauthenticated), "{err}");
    // The blog's own greeter is not the shop's business.
    assert_eq!(get(host("greet.blog"), "/hello", None).await.status, 200);
    // Members still reach it, by every door.
    let r = get(host("greet.shop"), "/hello", Some(owner_token.clone())).await;
    assert_eq!((r.status, r.json()["from"].as_str()), (200, Some("shop")), "{}", r.body);
    assert_eq!(get(host("greet.shop"), "/hello", Some(vera.clone())).await.status, 200, "a viewer is a member");
    let reply =
        client(&s.proxy, "shop", Some(&owner_token)).call_json("greet", "Greet.Hello", &json!({})).await.unwrap();
    assert_eq!(reply["from"], "shop");

    // Private by default: the HTTP app too, until it is made public; `default` follows it.
    owner.ok(&["hosting", "private"]).await;
    let before = site.requests().len();
    assert_eq!(get(host("site.shop"), "/page", None).await.status, 401);
    assert_eq!(get(host("site.shop"), "/page", Some(mallory.clone())).await.status, 403);
    assert_eq!(site.requests().len(), before, "a refused request never reaches the app");
    owner.ok(&["hosting", "public", "site"]).await;
    assert_eq!(get(host("site.shop"), "/page", None).await.status, 200);
    owner.ok(&["hosting", "public", "greet"]).await;
    assert_eq!(get(host("greet.shop"), "/hello", None).await.status, 200);
    owner.ok(&["hosting", "default", "greet"]).await;
    assert_eq!(get(host("greet.shop"), "/hello", None).await.status, 401, "back to the namespace's default");
    let listed = owner.ok(&["hosting"]).await;
    assert!(listed.contains("private unless set otherwise") && listed.contains("private (default)"), "{listed}");

    // Bad input: one clear line each, nothing changed.
    for (args, why) in [
        (vec!["hosting", "default", "bad name"], "invalid service name"),
        (vec!["hosting", "private", "a/b"], "invalid service name"),
    ] {
        let e = owner.fails(&args).await;
        assert!(e.contains(why), "{args:?}: {e}");
    }
    let mut domains = pb::domains_client::DomainsClient::new(micro::data::channel(&s.proxy).unwrap());
    for (service, visibility) in [("", "open"), ("", "default"), ("greet", "")] {
        let msg = pb::SetHostingRequest { service: service.into(), visibility: visibility.into() };
        let e = domains.set_hosting(domains_req("shop", Some(&owner_token), msg)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{service:?} {visibility:?}: {e}");
    }

    // Nobody else changes the shop's hosting: not another namespace's admin, not the
    // anonymous, not the shop's viewer (who may look).
    for token in [Some(mallory.as_str()), None, Some(vera.as_str())] {
        let msg = pb::SetHostingRequest { service: "greet".into(), visibility: "public".into() };
        let e = domains.set_hosting(domains_req("shop", token, msg)).await.unwrap_err();
        assert!(
            matches!(e.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
            "{token:?} made the shop's api public: {e}"
        );
    }
    let seen = domains.hosting(domains_req("shop", Some(&vera), pb::HostingRequest {})).await.unwrap().into_inner();
    assert!(seen.private, "the viewer sees the shop's hosting");
    let e = domains.hosting(domains_req("shop", Some(&mallory), pb::HostingRequest {})).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(get(host("greet.shop"), "/hello", None).await.status, 401, "still private");

    // The platform's names are nobody's custom domain: the blog cannot claim the shop's.
    for name in [format!("greet.shop.{DOMAIN}"), DOMAIN.to_string(), format!("x.{DOMAIN}")] {
        let msg = pb::AddRequest { domain: name.clone(), service: "greet".into() };
        let e = domains.add(domains_req("blog", Some(&mallory), msg)).await.unwrap_err();
        assert!(e.message().contains("the platform's own"), "{name}: {e}");
    }
    shop_greet.stop().await;
    blog_greet.stop().await;
}
