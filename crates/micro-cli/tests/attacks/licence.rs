//! The licence, attacked: a tenant's admin, a member of micro, a service account of
//! micro and an anonymous caller each try to install a licence (a valid one, signed by a
//! key the server trusts: as if it were stolen) or read the server's, over gRPC and the
//! gateway; all are refused, nothing is written, and the team plan stays refused until the
//! server's admin installs it.

use micro::Code;
use micro::proto::license as pb;
use micro_test::process::ServerProcess;
use serde_json::json;

/// `License.Install` of `text` in `ns` as the holder of `token` (anonymous without).
async fn install(proxy: &str, token: Option<&str>, ns: &str, text: &str) -> Result<pb::ShowReply, micro::Status> {
    let source = token.map(|t| {
        std::sync::Arc::new(micro::data::StaticToken(t.to_string())) as std::sync::Arc<dyn micro::data::TokenSource>
    });
    let channel = micro::data::channel_with(proxy, source).expect("a channel");
    let mut req = tonic::Request::new(pb::InstallRequest { licence: text.to_string() });
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("a namespace"));
    let mut client = pb::license_client::LicenseClient::new(channel.clone());
    let installed = client.install(req).await.map(|r| r.into_inner()).map_err(|e| micro::status::from_tonic(&e));
    let mut req = tonic::Request::new(pb::ShowRequest {});
    req.metadata_mut().insert("micro-namespace", ns.parse().expect("a namespace"));
    let shown = client.show(req).await;
    assert!(shown.is_err() || installed.is_ok(), "whoever may not install may not read it either");
    installed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_servers_admins_install_a_licence() {
    let (public, text) = micro_test::process::test_licence(&["team", "billing"]);
    let s = ServerProcess::builder(super::micro()).env("MICRO_LICENSE_KEYS", &public).start();
    let shop_admin = s.account("shop", "boss", "user", &["admin"]).await;
    let micro_member = s.account("micro", "mia", "user", &["developer"]).await;
    let micro_service = s.account("micro", "svc", "service", &["data"]).await;

    let attempts = [
        (None, "micro", Code::Unauthenticated, "anonymous"),
        (Some(&shop_admin), "shop", Code::PermissionDenied, "shop's admin"),
        (Some(&shop_admin), "micro", Code::PermissionDenied, "shop's admin naming micro"),
        (Some(&micro_member), "micro", Code::PermissionDenied, "a developer of micro"),
        (Some(&micro_service), "micro", Code::PermissionDenied, "a service account of micro"),
    ];
    for (token, ns, code, who) in attempts {
        let err = install(&s.proxy, token.map(String::as_str), ns, &text).await.unwrap_err();
        assert_eq!(err.code(), code, "{who}: {err}");
        // The gateway's route to the core refuses the same.
        let (status, body) = micro_test::post_json(
            &s.api,
            token.map(String::as_str),
            Some(ns),
            "/license/license/install",
            &json!({
                "licence": text
            }),
        )
        .await;
        assert!(matches!(status, 401 | 403), "{who} through the gateway: {status} {body}");
    }
    assert!(!s.data_dir().join(micro_server::LICENSE_FILE).exists(), "nothing was written");

    // Still unlicensed: not even the server's admin may put shop on the team plan, until
    // they install the licence.
    let admin = s.admin_token().await;
    let team = json!({"namespace": "shop", "plan": "team"});
    let (status, body) = micro_test::post_json(&s.api, Some(&admin), None, "/platform/plan/set", &team).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap_or_default().contains("install a licence that includes"), "{body}");
    let shown = install(&s.proxy, Some(&admin), "micro", &text).await.expect("the admin installs it");
    assert_eq!(shown.state, "valid");
    let (status, body) = micro_test::post_json(&s.api, Some(&admin), None, "/platform/plan/set", &team).await;
    assert_eq!(status, 200, "{body}");
}
