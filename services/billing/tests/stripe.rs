//! The Stripe adapter against the Stripe contract server of `micro-test` (which checks
//! every request against Stripe's OpenAPI description and signs webhooks as Stripe does).
#![allow(clippy::unwrap_used)]

use micro_billing::provider::{Charge, EventKind, Outcome, PaymentProvider, ProviderError};
use micro_billing::stripe::{API_VERSION, Stripe, StripeSettings, sign_webhook};
use micro_test::stripe::{Charges, StripeServer, WebhookSink};
use serde_json::json;

/// The adapter pointed at `server`, configured as an operator would (the variables).
fn adapter(server: &StripeServer) -> Stripe {
    let vars = [
        ("MICRO_STRIPE_KEY", server.key().to_string()),
        ("MICRO_STRIPE_WEBHOOK_SECRET", server.webhook_secret().to_string()),
        ("MICRO_STRIPE_URL", server.url().to_string()),
    ];
    let settings =
        StripeSettings::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).unwrap();
    Stripe::new(settings).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn charge(customer: &str, invoice: &str, attempt: u32) -> Charge {
    Charge {
        invoice: invoice.to_string(),
        number: format!("N-{invoice}"),
        customer: customer.to_string(),
        amount: 2000,
        currency: "usd".to_string(),
        attempt,
    }
}

/// A customer who has given a card through a setup session.
async fn customer_with_card(server: &StripeServer, stripe: &Stripe, namespace: &str) -> String {
    let customer = stripe.customer(namespace, &format!("{namespace}@example.com")).await.unwrap();
    let setup = stripe.setup(&customer, "https://micro.example/billing").await.unwrap();
    server.complete_setup(&setup.id);
    customer
}

#[tokio::test]
async fn a_customer_is_made_once() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    assert_eq!(server.version(), API_VERSION, "the adapter pins the version of the description");
    let first = stripe.customer("acme", "ops@acme.example").await.unwrap();
    let again = stripe.customer("acme", "ops@acme.example").await.unwrap();
    assert!(first.starts_with("cus_"), "{first}");
    assert_eq!(first, again);
    assert_eq!(server.customers().len(), 1);
    assert_eq!(server.customers()[0]["metadata"]["namespace"], "acme");
    let posts = server.requests_to("POST", "/v1/customers");
    assert_eq!(posts.len(), 2);
    for r in &posts {
        assert_eq!(r.idempotency_key.as_deref(), Some("customer-acme"));
        assert_eq!(r.stripe_version.as_deref(), Some(API_VERSION));
        assert_eq!(r.param("email"), Some("ops@acme.example"));
        assert_eq!(r.param("metadata[namespace]"), Some("acme"));
    }
    assert!(!posts[0].replayed && posts[1].replayed, "the second is Stripe's replay of the first");
    let other = stripe.customer("globex", "ops@globex.example").await.unwrap();
    assert_ne!(other, first);
    server.assert_no_violations();
}

#[tokio::test]
async fn setup_gives_a_checkout_url() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let customer = stripe.customer("acme", "ops@acme.example").await.unwrap();
    let setup = stripe.setup(&customer, "https://micro.example/billing?set=1").await.unwrap();
    assert!(setup.url.starts_with("https://checkout.stripe.com/"), "{}", setup.url);
    assert!(setup.id.starts_with("cs_"), "{}", setup.id);
    let r = &server.requests_to("POST", "/v1/checkout/sessions")[0];
    assert_eq!(r.param("mode"), Some("setup"));
    assert_eq!(r.param("customer"), Some(customer.as_str()));
    assert_eq!(r.param("currency"), Some("usd"));
    assert_eq!(r.param("success_url"), Some("https://micro.example/billing?set=1"));
    assert_eq!(r.param("cancel_url"), Some("https://micro.example/billing?set=1"));
    let key = r.idempotency_key.clone().unwrap();
    assert!(key.starts_with(&format!("setup-{customer}-")), "{key}");
    // The same way back reuses the session; another opens another.
    assert_eq!(stripe.setup(&customer, "https://micro.example/billing?set=1").await.unwrap(), setup);
    let other = stripe.setup(&customer, "https://micro.example/other").await.unwrap();
    assert_ne!(other.id, setup.id);
    assert_eq!(server.sessions().len(), 2);
    assert!(matches!(stripe.setup("cus_nobody", "https://micro.example/").await, Err(ProviderError::Refused(_))));
    assert!(matches!(stripe.setup("../v1/x", "https://micro.example/").await, Err(ProviderError::Refused(_))));
    server.assert_no_violations();
}

#[tokio::test]
async fn charges_succeed_decline_and_stay_pending() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let customer = customer_with_card(&server, &stripe, "acme").await;

    let Outcome::Succeeded { payment } = stripe.charge(&charge(&customer, "inv-1", 1)).await.unwrap() else {
        panic!("the charge succeeds")
    };
    let intent = server.payment_intent(&payment).unwrap();
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["amount"], 2000);
    assert_eq!(intent["amount_received"], 2000);
    assert_eq!(intent["customer"], customer.as_str());
    assert_eq!(intent["metadata"], json!({"invoice": "inv-1", "number": "N-inv-1"}));
    let r = &server.requests_to("POST", "/v1/payment_intents")[0];
    assert_eq!(r.idempotency_key.as_deref(), Some("charge-inv-1-1"));
    for (k, v) in
        [("confirm", "true"), ("off_session", "true"), ("currency", "usd"), ("description", "Invoice N-inv-1")]
    {
        assert_eq!(r.param(k), Some(v), "{k}");
    }
    assert!(r.param("payment_method").unwrap().starts_with("pm_"));

    server.set_charges(&customer, Charges::Decline);
    let declined = stripe.charge(&charge(&customer, "inv-2", 1)).await.unwrap();
    let Outcome::Failed { payment: Some(payment), reason } = declined else { panic!("declined: {declined:?}") };
    assert_eq!(reason, "Your card was declined.");
    assert_eq!(server.payment_intent(&payment).unwrap()["status"], "requires_payment_method");

    server.set_charges(&customer, Charges::Process);
    let pending = stripe.charge(&charge(&customer, "inv-3", 1)).await.unwrap();
    assert!(matches!(pending, Outcome::Pending { payment: Some(_) }), "{pending:?}");

    server.set_charges(&customer, Charges::Succeed);
    assert!(matches!(stripe.charge(&charge(&customer, "inv-2", 2)).await.unwrap(), Outcome::Succeeded { .. }));
    assert_eq!(server.payment_intents().len(), 4);
    server.assert_no_violations();
}

#[tokio::test]
async fn a_customer_without_a_payment_method_is_not_charged() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let customer = stripe.customer("acme", "ops@acme.example").await.unwrap();
    let outcome = stripe.charge(&charge(&customer, "inv-1", 1)).await.unwrap();
    assert!(matches!(outcome, Outcome::Failed { payment: None, .. }), "{outcome:?}");
    assert!(server.requests_to("POST", "/v1/payment_intents").is_empty());
    // A card added outside a setup (in Stripe's dashboard, say) is used.
    server.add_payment_method(&customer);
    assert!(matches!(stripe.charge(&charge(&customer, "inv-1", 2)).await.unwrap(), Outcome::Succeeded { .. }));
    server.assert_no_violations();
}

#[tokio::test]
async fn server_errors_are_unavailable_and_other_refusals_refused() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let customer = customer_with_card(&server, &stripe, "acme").await;
    server.fail_next("/v1/payment_intents", 1);
    let failed = stripe.charge(&charge(&customer, "inv-1", 1)).await;
    assert!(matches!(failed, Err(ProviderError::Unavailable(_))), "{failed:?}");
    server.fail_next(&format!("/v1/customers/{customer}"), 1);
    assert!(matches!(stripe.charge(&charge(&customer, "inv-1", 1)).await, Err(ProviderError::Unavailable(_))));
    server.fail_next("/v1/customers", 1);
    assert!(matches!(stripe.customer("globex", "x@globex.example").await, Err(ProviderError::Unavailable(_))));

    // A customer Stripe does not know, and a key it does not take.
    let unknown = stripe.charge(&charge("cus_nobody", "inv-9", 1)).await;
    assert!(matches!(unknown, Err(ProviderError::Refused(_))), "{unknown:?}");
    let mut settings = StripeSettings::new("sk_test_wrong", server.webhook_secret());
    settings.url = server.url().to_string();
    let wrong = Stripe::new(settings).unwrap().customer("acme", "ops@acme.example").await;
    assert!(matches!(&wrong, Err(ProviderError::Refused(m)) if m.contains("Invalid API Key")), "{wrong:?}");

    // Nothing listens: unavailable.
    let closed = micro_test::free_port();
    let mut settings = StripeSettings::new(server.key(), server.webhook_secret());
    settings.url = format!("http://127.0.0.1:{closed}");
    let gone = Stripe::new(settings).unwrap().customer("acme", "ops@acme.example").await;
    assert!(matches!(gone, Err(ProviderError::Unavailable(_))), "{gone:?}");
    server.assert_no_violations();
}

#[tokio::test]
async fn a_retried_charge_is_charged_once() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let customer = customer_with_card(&server, &stripe, "acme").await;
    let attempt = charge(&customer, "inv-1", 1);
    // The first try fails before Stripe does anything; the retries charge once.
    server.fail_next("/v1/payment_intents", 1);
    assert!(stripe.charge(&attempt).await.is_err());
    let first = stripe.charge(&attempt).await.unwrap();
    let again = stripe.charge(&attempt).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(server.payment_intents().len(), 1, "one PaymentIntent for one attempt");
    let posts = server.requests_to("POST", "/v1/payment_intents");
    assert_eq!(posts.len(), 3);
    assert!(posts.iter().all(|r| r.idempotency_key.as_deref() == Some("charge-inv-1-1")));
    assert_eq!(posts.iter().map(|r| r.replayed).collect::<Vec<_>>(), [false, false, true]);
    // A declined attempt retried is the same decline, not a second try of the card.
    server.set_charges(&customer, Charges::Decline);
    let declined = charge(&customer, "inv-2", 1);
    let (a, b) = (stripe.charge(&declined).await.unwrap(), stripe.charge(&declined).await.unwrap());
    assert_eq!(a, b);
    assert!(matches!(a, Outcome::Failed { payment: Some(_), .. }));
    assert_eq!(server.payment_intents().len(), 2);
    server.assert_no_violations();
}

#[tokio::test]
async fn webhook_signatures_are_verified() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let sink = WebhookSink::start().await;
    let customer = customer_with_card(&server, &stripe, "acme").await;
    let Outcome::Succeeded { payment } = stripe.charge(&charge(&customer, "inv-1", 1)).await.unwrap() else {
        panic!("the charge succeeds")
    };
    let delivery =
        server.send_event(sink.url(), "payment_intent.succeeded", server.payment_intent(&payment).unwrap()).await;
    assert_eq!(delivery.status, 200);
    let (headers, body) = sink.received().pop().unwrap();
    assert_eq!(body, delivery.body.as_bytes(), "the body arrives as signed");
    let t = now();
    let signed_at = delivery.signature.split(',').next().unwrap().trim_start_matches("t=").parse::<u64>().unwrap();

    let event = stripe.webhook(&headers, &body, t).unwrap();
    assert_eq!(event.id, delivery.event["id"].as_str().unwrap());
    assert_eq!(
        event.kind,
        EventKind::PaymentSucceeded { payment: payment.clone(), invoice: "inv-1".into(), amount: 2000 }
    );

    let refused = |r: Result<_, ProviderError>, what: &str| {
        assert!(matches!(r, Err(ProviderError::Signature(_))), "{what}: {r:?}");
    };
    let mut tampered = body.to_vec();
    let at = tampered.iter().position(|b| *b == b'2').unwrap();
    tampered[at] = b'9';
    refused(stripe.webhook(&headers, &tampered, t), "a tampered body");
    let mut other = StripeSettings::new(server.key(), "whsec_another_endpoint");
    other.url = server.url().to_string();
    refused(Stripe::new(other).unwrap().webhook(&headers, &body, t), "another endpoint's secret");
    refused(stripe.webhook(&headers, &body, signed_at + 301), "a replay after the tolerance");
    refused(stripe.webhook(&headers, &body, signed_at - 301), "a timestamp from the future");
    assert!(stripe.webhook(&headers, &body, signed_at + 300).is_ok(), "within the tolerance");
    let mut old = headers.clone();
    let stale = sign_webhook(server.webhook_secret(), &body, t - 3600);
    old.insert("stripe-signature", stale.parse().unwrap());
    refused(stripe.webhook(&old, &body, t), "a signature made an hour ago");
    let mut missing = headers.clone();
    missing.remove("stripe-signature");
    refused(stripe.webhook(&missing, &body, t), "no header");
    let mut v0 = headers.clone();
    let only_v0 = delivery.signature.split(',').filter(|p| !p.starts_with("v1=")).collect::<Vec<_>>().join(",");
    v0.insert("stripe-signature", only_v0.parse().unwrap());
    refused(stripe.webhook(&v0, &body, t), "only a v0 signature");
    for garbage in ["", "t=,v1=", "v1=00", "t=abc,v1=zz", "nonsense"] {
        let mut h = headers.clone();
        h.insert("stripe-signature", garbage.parse().unwrap());
        refused(stripe.webhook(&h, &body, t), garbage);
    }

    // During a secret's rotation Stripe signs with both: one good v1 is enough.
    let good = sign_webhook(server.webhook_secret(), &body, signed_at);
    let stale = sign_webhook("whsec_rolled", &body, signed_at);
    let both = format!("{},{}", stale, good.split(',').nth(1).unwrap());
    let mut rotated = headers.clone();
    rotated.insert("stripe-signature", both.parse().unwrap());
    assert!(stripe.webhook(&rotated, &body, t).is_ok());

    // The adapter signs as the server does (two implementations of HMAC-SHA256).
    assert_eq!(sign_webhook(server.webhook_secret(), &body, signed_at), server.signature(&body, signed_at));
    server.assert_no_violations();
}

#[tokio::test]
async fn events_are_read() {
    let server = StripeServer::start().await;
    let stripe = adapter(&server);
    let sink = WebhookSink::start().await;
    let customer = stripe.customer("acme", "ops@acme.example").await.unwrap();
    let setup = stripe.setup(&customer, "https://micro.example/billing").await.unwrap();
    let session = server.complete_setup(&setup.id);
    server.set_charges(&customer, Charges::Decline);
    let Outcome::Failed { payment: Some(declined), .. } = stripe.charge(&charge(&customer, "inv-1", 1)).await.unwrap()
    else {
        panic!("declined")
    };
    let mut foreign = server.payment_intent(&declined).unwrap();
    foreign["metadata"] = json!({});

    let events = [
        ("checkout.session.completed", session.clone()),
        ("payment_intent.payment_failed", server.payment_intent(&declined).unwrap()),
        ("payment_intent.payment_failed", foreign),
        ("customer.created", server.customers()[0].clone()),
    ];
    for (kind, object) in events {
        assert_eq!(server.send_event(sink.url(), kind, object).await.status, 200);
    }
    let read: Vec<EventKind> =
        sink.received().iter().map(|(headers, body)| stripe.webhook(headers, body, now()).unwrap().kind).collect();
    assert_eq!(
        read,
        [
            EventKind::PaymentMethodSet {
                customer: customer.clone(),
                method: session["setup_intent"].as_str().unwrap().to_string()
            },
            EventKind::PaymentFailed {
                payment: declined.clone(),
                invoice: "inv-1".into(),
                reason: "Your card was declined.".into()
            },
            EventKind::Other { kind: "payment_intent.payment_failed".into() },
            EventKind::Other { kind: "customer.created".into() },
        ]
    );

    // A signed body that is not an event is malformed, not a signature problem.
    let body = b"[1,2,3]";
    let mut headers = http::HeaderMap::new();
    headers.insert("stripe-signature", sign_webhook(server.webhook_secret(), body, now()).parse().unwrap());
    assert!(matches!(stripe.webhook(&headers, body, now()), Err(ProviderError::Malformed(_))));
    server.assert_no_violations();
}

/// Signing against a vector computed independently: Python's `hmac` module
/// (`hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()`), and accepted by
/// Stripe's own Python library (`stripe.WebhookSignature.verify_header`, 5.0.0).
#[test]
fn signing_matches_a_known_vector() {
    let body = br#"{"id":"evt_1","object":"event","type":"customer.created"}"#;
    assert_eq!(
        sign_webhook("whsec_3a7f9c2e8b1d4f6a", body, 1_700_000_000),
        "t=1700000000,v1=902dd2540e529dc33156064dda16b68b6b32d5c596e7418c21cdcf18eb2053f6"
    );
}

/// Stripe's own library (`stripe` for Python, Debian's python3-stripe) accepts what the
/// server sends, where it is installed; skipped with a notice elsewhere.
#[tokio::test]
async fn stripes_own_library_accepts_the_servers_webhooks() {
    let python = "/usr/bin/python3";
    let has = std::process::Command::new(python).args(["-c", "import stripe.webhook"]).output();
    if !has.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no Python with Stripe's library (apt-get install python3-stripe)");
        return;
    }
    let server = StripeServer::start().await;
    let sink = WebhookSink::start().await;
    server.send_event(sink.url(), "customer.created", json!({"id": "cus_1"})).await;
    let (headers, body) = sink.received().pop().unwrap();
    let header = headers.get("stripe-signature").unwrap().to_str().unwrap().to_string();
    let script = "import sys, stripe.webhook as w\n\
                  body, header, secret = sys.argv[1], sys.argv[2], sys.argv[3]\n\
                  w.WebhookSignature.verify_header(body, header, secret, 300)\n\
                  print('ok')";
    let out = std::process::Command::new(python)
        .args(["-c", script, std::str::from_utf8(&body).unwrap(), &header, server.webhook_secret()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Request headers of a test.
type Headers = Vec<(&'static str, String)>;

/// The server refuses, and records, requests the description does not allow.
#[tokio::test]
async fn the_server_holds_requests_to_the_description() {
    let server = StripeServer::start().await;
    let addr = server.url().trim_start_matches("http://").to_string();
    let auth = format!("Bearer {}", server.key());
    let good = [
        ("Authorization", auth.as_str()),
        ("Stripe-Version", API_VERSION),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Idempotency-Key", "k1"),
    ];
    let post = |headers: Headers, path: &'static str, body: &'static str| {
        let addr = addr.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            micro_test::http(&addr, "POST", path, &h, body.as_bytes()).await
        }
    };
    let with = |changes: &[(&'static str, Option<&str>)]| {
        let mut h: Headers = good.iter().map(|(k, v)| (*k, v.to_string())).collect();
        for (k, v) in changes {
            h.retain(|(name, _)| name != k);
            if let Some(v) = v {
                h.push((k, v.to_string()));
            }
        }
        h
    };
    // (headers, path, body, status answered, what the error says)
    let cases: Vec<(Headers, &str, &str, u16, &str)> = vec![
        (with(&[]), "/v1/customers", "email=a%40b.example&nickname=x", 400, "Received unknown parameter: nickname"),
        (with(&[]), "/v1/customers", "metadata[a][b]=1", 400, "metadata[a]"),
        (with(&[]), "/v1/payment_intents", "currency=usd", 400, "Missing required param: amount."),
        (with(&[]), "/v1/payment_intents", "amount=ten&currency=usd", 400, "Invalid integer: ten"),
        (with(&[]), "/v1/payment_intents", "amount=100&currency=usd&confirm=yes", 400, "Invalid boolean: yes"),
        (with(&[]), "/v1/checkout/sessions", "mode=setup&success_url=https%3A%2F%2Fx.example", 400, "currency"),
        (with(&[]), "/v1/checkout/sessions", "mode=later", 400, "Invalid mode"),
        (with(&[("Idempotency-Key", None)]), "/v1/customers", "email=a%40b.example", 400, "Idempotency-Key"),
        (with(&[("Authorization", None)]), "/v1/customers", "", 401, "did not provide an API key"),
        (with(&[("Stripe-Version", Some("2020-08-27"))]), "/v1/customers", "", 400, "Stripe-Version"),
        (with(&[("Content-Type", Some("application/json"))]), "/v1/customers", "{}", 400, "x-www-form-urlencoded"),
        (with(&[]), "/v1/charges", "amount=100", 404, "Unrecognized request URL"),
    ];
    let n = cases.len();
    for (headers, path, body, status, says) in cases {
        let r = post(headers, path, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{path} {body}: {message}");
    }
    assert_eq!(server.take_violations().len(), n);

    // Idempotency: the same key and body replays; the same key with another body is
    // Stripe's idempotency error (and a violation: the adapter never does it).
    let first = post(with(&[]), "/v1/customers", "email=a%40b.example").await;
    let replay = post(with(&[]), "/v1/customers", "email=a%40b.example").await;
    assert_eq!((first.status, replay.json()), (200, first.json()));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let reused = post(with(&[]), "/v1/customers", "email=c%40d.example").await;
    assert_eq!((reused.status, reused.json()["error"]["type"].as_str()), (400, Some("idempotency_error")));
    assert_eq!(server.take_violations().len(), 1);
    assert_eq!(server.customers().len(), 1);

    // A wrong key is Stripe's answer to a valid request, not a violation.
    let wrong = post(with(&[("Authorization", Some("Bearer sk_test_other"))]), "/v1/customers", "").await;
    assert_eq!(wrong.status, 401);
    let get = micro_test::http(&addr, "GET", "/v1/customers/cus_x?limit=abc", &good[..2], b"").await;
    assert_eq!(get.status, 400, "{}", get.body);
    assert_eq!(server.take_violations().len(), 1, "the GET's unknown parameter");
    server.assert_no_violations();
}
