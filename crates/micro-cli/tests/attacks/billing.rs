//! Billing: another namespace's admin, the namespace's own members, app users and code,
//! and anonymous callers try to read a namespace's bills, pay or redirect them, mint
//! credit, mark invoices paid, rewrite prices or usage, forge Stripe's webhooks, or
//! escape a suspension for an unpaid bill by bringing their services back themselves.

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use serde_json::json;

use super::*;

/// 2027-01-01 00:00:00 UTC.
const JAN: u64 = 1_798_761_600;
const DAY: u64 = 86_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_but_operators_touches_the_books_and_no_tenant_escapes_a_suspension() {
    let stripe = micro_test::stripe::StripeServer::start().await;
    let clock = tempfile::NamedTempFile::new().expect("a clock file");
    // Mid-January while acme is set up (the tick closes nothing yet), then past its end.
    std::fs::write(clock.path(), (JAN + 15 * DAY).to_string()).expect("the clock is set");
    let s = ServerProcess::builder(micro())
        .licensed(&["billing"])
        .env("MICRO_CLOCK_FILE", clock.path())
        .env("MICRO_BILLING_INTERVAL", "1")
        .env("MICRO_SMTP", "log")
        .env("MICRO_STRIPE_KEY", stripe.key())
        .env("MICRO_STRIPE_WEBHOOK_SECRET", stripe.webhook_secret())
        .env("MICRO_STRIPE_URL", stripe.url())
        .start();
    let op = s.admin_token().await;
    s.admin_cli().await.ok(&["namespace", "create", "acme"]).await;
    let ann = s.account("acme", "ann", "user", &["admin"]).await;
    let dev = s.account("acme", "dev", "user", &["developer"]).await;
    let bot = s.account("acme", "bot", "service", &["data"]).await;
    let mallet = s.account("evil", "mallet", "user", &["admin"]).await;
    let lax = json!({"verify_before_login": false, "attempts_per_minute": 1000, "signups_per_hour": 1000});
    assert_eq!(call(&s.api, "POST", "/users/v1/settings", Some(&ann), "acme", Some(lax)).await.0, 200);
    let (zoe, _) = s.app_user("acme", "zoe@example.com").await;
    let operator = |path: &'static str, body: serde_json::Value| {
        let (api, op) = (s.api.clone(), op.clone());
        async move {
            let (st, v) = call(&api, "POST", path, Some(&op), "micro", Some(body)).await;
            assert_eq!(st, 200, "{path}: {v}");
            v
        }
    };
    operator("/platform/plan/set", json!({"namespace": "acme", "plan": "personal"})).await;
    operator("/billing/billing/record", json!({"namespace": "acme", "service": "api", "from": JAN})).await;
    let (st, v) = call(
        &s.api,
        "POST",
        "/billing/billing/settings",
        Some(&ann),
        "acme",
        Some(json!({"email": "ann@acme.example"})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // The month is over; before it is closed the plan is dropped to the free one (here by
    // the operator, as an owner would): the month is still billed at the plan it ran on.
    std::fs::write(clock.path(), (JAN + 31 * DAY + 60).to_string()).expect("the clock is set");
    operator("/platform/plan/set", json!({"namespace": "acme", "plan": "community"})).await;
    std::fs::write(clock.path(), (JAN + 40 * DAY).to_string()).expect("the clock is set");
    operator("/billing/billing/close", json!({"period": "2027-01"})).await;
    let inv = operator("/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!(
        (inv["namespace"].as_str(), inv["plan"].as_str(), inv["total"].as_i64()),
        (Some("acme"), Some("personal"), Some(2000)),
        "{inv}"
    );
    // A billing address that is none is refused (a provider would refuse it for ever).
    for email in ["a@@b", "a@b", "a b@c.d", "@c.d"] {
        let (st, v) =
            call(&s.api, "POST", "/billing/billing/settings", Some(&ann), "acme", Some(json!({"email": email}))).await;
        assert_eq!(st, 400, "{email}: {v}");
    }

    // Everyone but acme's admin (and the operators): nothing of acme's bills, in acme's
    // name or their own.
    let outsiders = [
        ("evil's admin", Some(mallet.as_str()), "acme"),
        ("evil's admin in evil", Some(mallet.as_str()), "evil"),
        ("acme's developer", Some(dev.as_str()), "acme"),
        ("acme's service", Some(bot.as_str()), "acme"),
        ("acme's app user", Some(zoe.as_str()), "acme"),
        ("anybody", None, "acme"),
    ];
    for (who, token, ns) in outsiders {
        let member = who == "acme's developer";
        for (path, body) in [
            ("/billing/billing/settings", json!({"namespace": "acme", "email": "mallet@evil.example"})),
            ("/billing/billing/settings", json!({"email": "mallet@evil.example"})),
            ("/billing/billing/setuppayment", json!({"namespace": "acme", "return_url": "https://evil.example/"})),
            ("/billing/billing/pay", json!({"id": "INV-000001"})),
            ("/billing/billing/markpaid", json!({"id": "INV-000001", "reference": "fake"})),
            ("/billing/billing/addcredit", json!({"namespace": "acme", "amount": 100000, "reference": "free"})),
            ("/billing/billing/addcredit", json!({"namespace": "evil", "amount": 100000, "reference": "free"})),
            ("/billing/billing/close", json!({"period": "2027-02"})),
            ("/billing/billing/record", json!({"namespace": "acme", "service": "api", "from": JAN, "to": JAN + 1})),
            ("/billing/billing/prices", json!({"prices": {"currency": "usd", "plans": {}}})),
            ("/billing/billing/ledger", json!({})),
            ("/billing/billing/revenue", json!({})),
            ("/billing/billing/invoices", json!({"all": true})),
        ] {
            if ns != "acme" && body.get("namespace").is_none() && path.ends_with("/settings") {
                continue; // its own namespace's settings are its own
            }
            let (st, v) = call(&s.api, "POST", path, token, ns, Some(body.clone())).await;
            assert!([401, 403, 404].contains(&st), "{who}: {path} {body}: {st} {v}");
        }
        // Reading: only acme's own people, and never another namespace's.
        for path in [
            "/billing/billing/account",
            "/billing/billing/usage",
            "/billing/billing/preview",
            "/billing/billing/invoices",
        ] {
            let (st, v) = call(&s.api, "POST", path, token, ns, Some(json!({"namespace": "acme"}))).await;
            if member {
                assert_eq!(st, 200, "{who}: {path}: {v}");
            } else {
                assert!([401, 403].contains(&st), "{who}: {path}: {st} {v}");
            }
        }
        for path in ["/billing/v1/invoices/INV-000001.pdf", "/billing/v1/invoices/2027-01-acme.html"] {
            let mut headers = vec![("micro-namespace", ns)];
            let auth = token.map(|t| format!("Bearer {t}"));
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            let r = micro_test::http(&s.api, "GET", path, &headers, b"").await;
            if member {
                assert_eq!(r.status, 200, "{who}: {path}");
            } else {
                assert!([401, 404].contains(&r.status), "{who}: {path}: {} {}", r.status, r.body);
            }
        }
    }
    // Paths that are not an invoice's.
    let auth = format!("Bearer {ann}");
    for path in
        ["/billing/v1/invoices/../../license.pdf", "/billing/v1/invoices/INV-000001", "/billing/v1/invoices/%2e%2e.pdf"]
    {
        let r = micro_test::http(&s.api, "GET", path, &[("authorization", auth.as_str())], b"").await;
        assert!([400, 404].contains(&r.status), "{path}: {} {}", r.status, r.body);
    }
    let ledger = operator("/billing/billing/ledger", json!({})).await;
    assert_eq!(ledger["transactions"].as_array().map(Vec::len), Some(1), "nothing but the invoice: {ledger}");
    let settings = operator("/billing/billing/account", json!({"namespace": "acme"})).await;
    assert_eq!(settings["settings"]["email"], "ann@acme.example", "{settings}");

    // Stripe's webhooks: unsigned, signed with another secret, an old signature, a good
    // signature over another body — none pays the invoice.
    let pi = json!({"id": "pi_forged", "object": "payment_intent", "status": "succeeded", "amount": 2000,
                    "amount_received": 2000, "currency": "usd", "metadata": {"invoice": "2027-01-acme"}});
    let event =
        json!({"id": "evt_forged", "object": "event", "type": "payment_intent.succeeded", "data": {"object": pi}});
    let body = event.to_string();
    let now = micro_core::licence::now();
    let good = stripe.signature(body.as_bytes(), now);
    let other = micro_billing_sign("whsec_not_the_platforms", body.as_bytes(), now);
    let old = stripe.signature(body.as_bytes(), now - 3600);
    let swapped = stripe.signature(br#"{"id":"evt_other"}"#, now);
    for (what, sig, b) in [
        ("unsigned", None, body.as_str()),
        ("another secret", Some(other.as_str()), body.as_str()),
        ("an hour old", Some(old.as_str()), body.as_str()),
        ("another body's signature", Some(swapped.as_str()), body.as_str()),
        ("the right signature, the body changed", Some(good.as_str()), &body.replace("2000", "1")),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(sig) = sig {
            headers.push(("stripe-signature", sig));
        }
        let r = micro_test::http(&s.api, "POST", "/billing/v1/webhook/stripe", &headers, b.as_bytes()).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
    }
    let r = micro_test::http(
        &s.api,
        "POST",
        "/billing/v1/webhook/manual",
        &[("stripe-signature", good.as_str())],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let big = vec![b'x'; 2 << 20];
    let r =
        micro_test::http(&s.api, "POST", "/billing/v1/webhook/stripe", &[("stripe-signature", good.as_str())], &big)
            .await;
    assert!([400, 413].contains(&r.status), "a 2 MiB webhook: {}", r.status);
    let inv = operator("/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!(inv["status"], "open", "{inv}");

    // A service runs; past the invoice's grace acme is stopped. Its admin can neither
    // bring it back through the runtime nor start or roll anything meanwhile.
    let admin = s.admin_cli().await;
    let app = tempfile::tempdir().expect("a folder");
    std::fs::write(app.path().join("micro.toml"), "run = \"sleep 100000\"\n").expect("a manifest");
    let folder = app.path().to_str().expect("a path");
    let out = admin.ok(&["--namespace", "acme", "run", folder, "--name", "api"]).await;
    assert!(out.contains("api running"), "{out}");
    std::fs::write(clock.path(), (JAN + 40 * DAY + 22 * DAY).to_string()).expect("the clock is set");
    let mut suspended = String::new();
    for _ in 0..100 {
        suspended = admin.ok(&["--namespace", "acme", "status"]).await;
        if suspended.contains("suspended") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(suspended.contains("suspended"), "{suspended}");
    let mut proxy = micro::proto::runtime::runtime_client::RuntimeClient::connect(format!("http://{}", s.proxy))
        .await
        .expect("the proxy answers");
    for (who, token) in [("acme's admin", ann.as_str()), ("evil's admin", mallet.as_str())] {
        for on in [false, true] {
            let mut req =
                tonic::Request::new(micro::proto::runtime::SuspendRequest { suspended: on, reason: String::new() });
            req.metadata_mut().insert("micro-namespace", "acme".parse().expect("ascii"));
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
            let err = proxy.suspend(req).await.expect_err("only operators suspend");
            assert!(
                matches!(err.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
                "{who} suspend={on}: {err:?}"
            );
        }
    }
    micro_test::create_account(&s.proxy, &op, "acme", ("annie", "annie-long-password"), "user", &["admin"]).await;
    let annie = s.cli().fresh();
    annie.ok(&["login", "--namespace", "acme", "--id", "annie", "--password", "annie-long-password"]).await;
    for args in [
        vec!["--namespace", "acme", "run", folder, "--name", "again"],
        vec!["--namespace", "acme", "update", folder, "--name", "api"],
    ] {
        let err = annie.fails(&args).await;
        assert!(err.contains("suspended"), "{args:?}: {err}");
    }
    assert!(admin.ok(&["--namespace", "acme", "status"]).await.contains("suspended"));

    // Paid by transfer (the operator marks it): acme runs again, without anyone touching
    // the runtime.
    let open = operator("/billing/billing/invoices", json!({"namespace": "acme"})).await;
    for inv in open["invoices"].as_array().expect("invoices") {
        let id = inv["number"].as_str().expect("a number");
        operator("/billing/billing/markpaid", json!({"id": id, "reference": format!("wire-{id}")})).await;
    }
    let mut back = String::new();
    for _ in 0..100 {
        back = admin.ok(&["--namespace", "acme", "status"]).await;
        if back.contains("running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back.contains("running") && !back.contains("suspended"), "{back}");

    // Deleted, acme's name is not given to anyone else: its books stay with it.
    admin.ok(&["namespace", "delete", "acme"]).await;
    let err = admin.error(&["namespace", "create", "acme"]).await;
    assert!(err.contains("billing's books"), "{err}");
}

/// Stripe's signature of `body` at `t` with `secret`, computed the adapter's way.
fn micro_billing_sign(secret: &str, body: &[u8], t: u64) -> String {
    micro_billing::stripe::sign_webhook(secret, body, t)
}
