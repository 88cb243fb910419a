//! Billing through a real `micro server` (the binary), a real SMTP server and a clock the
//! test moves (`MICRO_CLOCK_FILE`): a Personal namespace runs two services (real ones, in
//! the runtime) for a month, the invoice shows each at $20 prorated to its hours with the
//! customer's tax, is mailed, and is paid; the ledger balances. Without a licence for
//! billing nothing is issued, with a clear message. Bad input is refused and changes
//! nothing; other namespaces see none of it.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::smtp::{Options, SmtpSink};
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// 2027-01-01 00:00:00 UTC; January 2027 has 744 hours.
const JAN: u64 = 1_798_761_600;
const DAY: u64 = 86_400;

/// A clock the test moves.
struct Clock(tempfile::NamedTempFile);

impl Clock {
    fn at(t: u64) -> Clock {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), t.to_string()).unwrap();
        Clock(f)
    }
    fn set(&self, t: u64) {
        std::fs::write(self.0.path(), t.to_string()).unwrap();
    }
    fn path(&self) -> &str {
        self.0.path().to_str().unwrap()
    }
}

/// A service of the runtime that does nothing but run (no build).
fn sleeper() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("micro.toml"), "run = \"sleep 100000\"\n").unwrap();
    dir
}

async fn ok(s: &ServerProcess, token: &str, ns: &str, path: &str, body: Value) -> Value {
    let (st, v) = call(&s.api, "POST", path, Some(token), ns, Some(body)).await;
    assert_eq!(st, 200, "{path}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_two_services_is_invoiced_mailed_and_paid() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let clock = Clock::at(JAN);
    let s = ServerProcess::builder(micro())
        .licensed(&["billing"])
        .env("MICRO_CLOCK_FILE", clock.path())
        .env("MICRO_BILLING_INTERVAL", "1")
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Billing <billing@platform.test>")
        .env("MICRO_EMAIL_DAILY_LIMIT", "0")
        .start();
    let op = s.admin_token().await;
    let cli = s.admin_cli().await;
    let ann = s.account("acme", "ann", "user", &["admin"]).await;
    let dev = s.account("acme", "dev", "user", &[]).await;
    let eve = s.account("evil", "eve", "user", &["admin"]).await;

    // Acme is on Personal, in Germany (19% VAT), and wants its invoices mailed.
    ok(&s, &op, "micro", "/platform/plan/set", json!({"namespace": "acme", "plan": "personal"})).await;
    let mut prices = ok(&s, &op, "micro", "/billing/billing/prices", json!({})).await;
    assert_eq!(prices["plans"]["personal"]["per_service"], 2000, "$20 per service per month: {prices}");
    prices["tax"] = json!({"DE": 1900});
    ok(&s, &op, "micro", "/billing/billing/prices", json!({"prices": prices})).await;
    let settings = json!({"email": "billing@acme.example", "country": "de"});
    let v = ok(&s, &ann, "acme", "/billing/billing/settings", settings).await;
    assert_eq!(v["country"], "DE");
    // A member who is no admin sees the billing and changes none of it.
    let (st, v) =
        call(&s.api, "POST", "/billing/billing/settings", Some(&dev), "acme", Some(json!({"country": "FR"}))).await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = call(&s.api, "POST", "/billing/billing/account", Some(&dev), "acme", Some(json!({}))).await;
    assert_eq!(st, 200);

    // Two services: api all month; worker from the 11th to the 21st (240 h).
    let (api, worker) = (sleeper(), sleeper());
    let run = |name: &'static str, dir: &tempfile::TempDir| {
        let folder = dir.path().to_str().unwrap().to_string();
        cli.command(&["--namespace", "acme", "run", &folder, "--name", name])
    };
    let out = run("api", &api).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("api running"), "{out:?}");
    clock.set(JAN + 10 * DAY);
    let out = run("worker", &worker).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("worker running"), "{out:?}");
    clock.set(JAN + 15 * DAY);
    // The upcoming invoice, at any time: to date, and projected to the month's end.
    let v = ok(&s, &ann, "acme", "/billing/billing/preview", json!({})).await;
    assert_eq!(v["period"], "2027-01");
    let to_date: Vec<i64> =
        v["to_date"]["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_i64().unwrap()).collect();
    // api 360 h of 744, worker 120 h: 2000 × 360/744 = 967.74, × 120/744 = 322.58; the
    // lines sum to the rounded total, 1290.32 → 1290: $9.68 and $3.22.
    assert_eq!(to_date, vec![968, 322], "{v}");
    let usage = ok(&s, &ann, "acme", "/billing/billing/usage", json!({})).await;
    assert_eq!(usage["services"]["api"], 360 * 3600, "{usage}");
    clock.set(JAN + 20 * DAY);
    cli.ok(&["--namespace", "acme", "kill", "worker"]).await;

    // The month ends; billing closes it by itself once the meters settled (5 min).
    clock.set(JAN + 31 * DAY + 600);
    let mut invoices = Value::Null;
    for _ in 0..100 {
        invoices = ok(&s, &ann, "acme", "/billing/billing/invoices", json!({})).await;
        if !invoices["invoices"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inv = &invoices["invoices"][0];
    assert_eq!((inv["number"].as_str(), inv["period"].as_str()), (Some("INV-000001"), Some("2027-01")), "{invoices}");
    let lines = inv["lines"].as_array().unwrap();
    let got: Vec<(&str, u64, i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["service"].as_str().unwrap(),
                l["quantity"].as_u64().unwrap(),
                l["amount"].as_i64().unwrap(),
                l["tax"].as_i64().unwrap(),
            )
        })
        .collect();
    // api: 744 h = $20.00, tax $3.80; worker: 240 h → 2000 × 240/744 = 645.16 → $6.45,
    // tax 122.55 → the tax lines apportioned to round(502.55) = 503.
    assert_eq!(got, vec![("api", 744 * 3600, 2000, 380), ("worker", 240 * 3600, 645, 123)], "{inv}");
    assert!(lines.iter().all(|l| l["tax_rate"] == 1900));
    assert_eq!(
        (inv["subtotal"].as_i64(), inv["tax"].as_i64(), inv["total"].as_i64()),
        (Some(2645), Some(503), Some(3148))
    );
    assert_eq!((inv["status"].as_str(), inv["owed"].as_i64()), (Some("open"), Some(3148)));

    // It is mailed, as text and as the same page the dashboard shows.
    let mail = sink.mail_to("billing@acme.example", "Invoice INV-000001", 1).await;
    assert!(mail.text.as_deref().unwrap_or_default().contains("$31.48"), "{mail:?}");
    let page = ok(&s, &ann, "acme", "/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert!(page["html"].as_str().unwrap().contains("Service worker: 240.00 h of 744.00 h"), "{page}");

    // And as a PDF, which a PDF reader (pypdf) opens and reads the same lines from.
    let auth = format!("Bearer {ann}");
    let pdf = micro_test::http(
        &s.api,
        "GET",
        "/billing/v1/invoices/INV-000001.pdf",
        &[("authorization", auth.as_str())],
        b"",
    )
    .await;
    assert_eq!((pdf.status, pdf.header("content-type")), (200, Some("application/pdf")), "{}", pdf.body);
    assert!(pdf.bytes.starts_with(b"%PDF-"));
    if let Some(python) = micro_test::smtp::python(&["pypdf"], "reading the invoice's PDF") {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &pdf.bytes).unwrap();
        let read = "import sys, pypdf\nr = pypdf.PdfReader(sys.argv[1])\nprint(len(r.pages))\nprint(r.pages[0].extract_text())";
        let out =
            std::process::Command::new(python).args(["-c", read, file.path().to_str().unwrap()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for want in ["1\n", "Invoice INV-000001", "Service worker: 240.00 h of 744.00 h", "$31.48", "19.00%"] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
    }
    let html = micro_test::http(
        &s.api,
        "GET",
        "/billing/v1/invoices/2027-01-acme.html",
        &[("authorization", auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(html.status, 200);
    assert!(html.header("content-security-policy").unwrap_or_default().contains("default-src 'none'"));
    let eve_auth = format!("Bearer {eve}");
    let r = micro_test::http(
        &s.api,
        "GET",
        "/billing/v1/invoices/INV-000001.pdf",
        &[("authorization", eve_auth.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = micro_test::http(&s.api, "GET", "/billing/v1/invoices/INV-000001.pdf", &[], b"").await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Another namespace sees no trace of it; asking for it by number is "not found".
    for path in ["/billing/billing/invoice", "/billing/billing/pay"] {
        let (st, v) = call(&s.api, "POST", path, Some(&eve), "evil", Some(json!({"id": "INV-000001"}))).await;
        assert_eq!(st, 404, "{path}: {v}");
    }
    let (st, v) =
        call(&s.api, "POST", "/billing/billing/invoices", Some(&eve), "evil", Some(json!({"namespace": "acme"}))).await;
    assert_eq!(st, 403, "{v}");
    let (st, v) =
        call(&s.api, "POST", "/billing/billing/invoices", Some(&eve), "evil", Some(json!({"all": true}))).await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = call(&s.api, "POST", "/billing/billing/close", Some(&ann), "acme", Some(json!({}))).await;
    assert_eq!(st, 403, "only operators close periods: {v}");
    let (st, _) = call(&s.api, "POST", "/billing/billing/account", None, "acme", Some(json!({}))).await;
    assert_eq!(st, 401);

    // Closing again issues nothing more.
    let v = ok(&s, &op, "micro", "/billing/billing/close", json!({"period": "2027-01"})).await;
    assert_eq!(v["issued"], json!([]), "{v}");

    // Bad input is refused with a clear error, and changes nothing.
    for (path, body, says) in [
        ("/billing/billing/close", json!({"period": "2027-13"}), "YYYY-MM"),
        ("/billing/billing/close", json!({"period": "2030-01"}), "not over yet"),
        ("/billing/billing/markpaid", json!({"id": "INV-000001", "reference": "", "amount": 100}), "reference"),
        ("/billing/billing/markpaid", json!({"id": "INV-000001", "reference": "x", "amount": -5}), "positive"),
        ("/billing/billing/markpaid", json!({"id": "INV-00000x", "reference": "x"}), "INV-000001"),
        ("/billing/billing/addcredit", json!({"namespace": "acme", "amount": 0, "reference": "r"}), "positive"),
        (
            "/billing/billing/addcredit",
            json!({"namespace": "Not A Namespace", "amount": 5, "reference": "r"}),
            "namespace",
        ),
        (
            "/billing/billing/prices",
            json!({"prices": {"currency": "usd", "plans": {"personal": {"base": -1, "per_service": 0, "included_requests": 0}}}}),
            "negative",
        ),
        (
            "/billing/billing/record",
            json!({"namespace": "acme", "service": "x", "from": 10, "to": 5}),
            "before it starts",
        ),
    ] {
        let (st, v) = call(&s.api, "POST", path, Some(&op), "micro", Some(body)).await;
        assert_eq!(st, 400, "{path}: {v}");
        assert!(v["detail"].as_str().unwrap_or_default().contains(says), "{path}: {v}");
    }
    let (st, v) =
        call(&s.api, "POST", "/billing/billing/settings", Some(&ann), "acme", Some(json!({"country": "Germany"})))
            .await;
    assert_eq!(st, 400, "{v}");

    // Paid by bank transfer, told twice: applied once.
    for _ in 0..2 {
        let v = ok(&s, &op, "micro", "/billing/billing/markpaid", json!({"id": "INV-000001", "reference": "wire-77"}))
            .await;
        assert_eq!((v["status"].as_str(), v["owed"].as_i64()), (Some("paid"), Some(0)), "{v}");
    }
    let ledger = ok(&s, &op, "micro", "/billing/billing/ledger", json!({})).await;
    assert_eq!(ledger["balanced"], true, "{ledger}");
    assert_eq!(ledger["transactions"].as_array().unwrap().len(), 2, "{ledger}");
    assert_eq!(ledger["balances"]["cash:manual"], 3148);
    assert_eq!(ledger["balances"]["revenue"], -2645);
    assert_eq!(ledger["balances"]["tax"], -503);
    let revenue = ok(&s, &op, "micro", "/billing/billing/revenue", json!({})).await;
    assert_eq!(
        (revenue["revenue"].as_i64(), revenue["unpaid"].as_array().map(Vec::len)),
        (Some(2645), Some(0)),
        "{revenue}"
    );

    // Prepaid credit pays the next invoice: February runs api alone, $20 + 19%.
    let v = ok(
        &s,
        &op,
        "micro",
        "/billing/billing/addcredit",
        json!({"namespace": "acme", "amount": 5000, "reference": "voucher-1"}),
    )
    .await;
    assert_eq!(v["credit"], 5000);
    let v = ok(
        &s,
        &op,
        "micro",
        "/billing/billing/addcredit",
        json!({"namespace": "acme", "amount": 5000, "reference": "voucher-1"}),
    )
    .await;
    assert_eq!(v["credit"], 5000, "the same reference adds nothing");
    clock.set(JAN + 59 * DAY + 600); // 2027-03-01 00:10
    let v = ok(&s, &op, "micro", "/billing/billing/close", json!({"period": "2027-02"})).await;
    let feb = &v["issued"][0];
    assert_eq!(
        (feb["number"].as_str(), feb["total"].as_i64(), feb["credit_applied"].as_i64(), feb["amount_due"].as_i64()),
        (Some("INV-000002"), Some(2380), Some(2380), Some(0)),
        "{v}"
    );
    let account = ok(&s, &ann, "acme", "/billing/billing/account", json!({})).await;
    assert_eq!((account["credit"].as_i64(), account["owed"].as_i64()), (Some(5000 - 2380), Some(0)), "{account}");
    let ledger = ok(&s, &op, "micro", "/billing/billing/ledger", json!({})).await;
    assert_eq!(ledger["balanced"], true, "{ledger}");

    // A correction: a credit note against the paid January invoice ($5.00 of its $31.48,
    // 19% of it tax), asked twice under one reference; it becomes acme's credit.
    let body = json!({"id": "INV-000001", "amount": 500, "reason": "worker was down a day", "reference": "cn-1"});
    for _ in 0..2 {
        let note = ok(&s, &op, "micro", "/billing/billing/creditnote", body.clone()).await;
        assert_eq!(
            (note["number"].as_str(), note["net"].as_i64(), note["tax"].as_i64()),
            (Some("CN-000001"), Some(420), Some(80)),
            "{note}"
        );
    }
    let (st, v) = call(
        &s.api,
        "POST",
        "/billing/billing/creditnote",
        Some(&op),
        "micro",
        Some(json!({"id": "INV-000001", "amount": 3000, "reason": "too much", "reference": "cn-2"})),
    )
    .await;
    assert_eq!(st, 400, "more than the invoice's total less what was credited: {v}");
    assert!(v["detail"].as_str().unwrap().contains("at most $26.48"), "{v}");
    let (st, v) = call(&s.api, "POST", "/billing/billing/creditnote", Some(&ann), "acme", Some(body)).await;
    assert_eq!(st, 403, "operators only: {v}");
    let inv = ok(&s, &ann, "acme", "/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!(
        (inv["total"].as_i64(), inv["credit_notes"][0]["number"].as_str()),
        (Some(3148), Some("CN-000001")),
        "the invoice is unchanged, its note listed: {inv}"
    );
    let account = ok(&s, &ann, "acme", "/billing/billing/account", json!({})).await;
    assert_eq!(account["credit"].as_i64(), Some(5000 - 2380 + 500), "{account}");
    let ledger = ok(&s, &op, "micro", "/billing/billing/ledger", json!({})).await;
    assert_eq!(
        (ledger["balanced"].as_bool(), ledger["balances"]["revenue"].as_i64(), ledger["balances"]["tax"].as_i64()),
        (Some(true), Some(-2645 - 2000 + 420), Some(-503 - 380 + 80)),
        "{ledger}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_licence_usage_is_shown_and_nothing_is_issued() {
    let clock = Clock::at(JAN + 40 * DAY);
    let s = ServerProcess::builder(micro()).env("MICRO_CLOCK_FILE", clock.path()).start();
    let op = s.admin_token().await;
    ok(&s, &op, "micro", "/platform/plan/set", json!({"namespace": "acme", "plan": "personal"})).await;
    ok(&s, &op, "micro", "/billing/billing/record", json!({"namespace": "acme", "service": "api", "from": JAN})).await;
    let usage = ok(&s, &op, "micro", "/billing/billing/usage", json!({"namespace": "acme"})).await;
    assert_eq!(usage["services"]["api"], 9 * DAY, "metered without a licence: {usage}");
    let (st, v) =
        call(&s.api, "POST", "/billing/billing/close", Some(&op), "micro", Some(json!({"period": "2027-01"}))).await;
    assert_eq!(st, 400, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("licence") && detail.contains("billing"), "a clear message: {detail}");
    let v = ok(&s, &op, "micro", "/billing/billing/invoices", json!({"all": true})).await;
    assert_eq!(v["invoices"], json!([]));
}

/// The newest mail to `to` whose subject holds `subject`.
async fn mail(sink: &SmtpSink, to: &str, subject: &str) -> String {
    sink.mail_to(to, subject, 1).await.text.unwrap_or_default()
}

async fn status_of(cli: &micro_test::cli::Cli, service: &str) -> String {
    let table = cli.ok(&["--namespace", "acme", "status", service]).await;
    table.lines().nth(1).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_pays_by_signed_webhook_and_dunning_stops_and_brings_back_services() {
    let Some(sink) = SmtpSink::start(Options::default()) else { return };
    let stripe = micro_test::stripe::StripeServer::start().await;
    let clock = Clock::at(JAN);
    let s = ServerProcess::builder(micro())
        .licensed(&["billing"])
        .env("MICRO_CLOCK_FILE", clock.path())
        .env("MICRO_BILLING_INTERVAL", "1")
        .env("MICRO_SMTP", sink.url())
        .env("MICRO_EMAIL_FROM", "Billing <billing@platform.test>")
        .env("MICRO_EMAIL_DAILY_LIMIT", "0")
        .env("MICRO_STRIPE_KEY", stripe.key())
        .env("MICRO_STRIPE_WEBHOOK_SECRET", stripe.webhook_secret())
        .env("MICRO_STRIPE_URL", stripe.url())
        .start();
    let op = s.admin_token().await;
    let cli = s.admin_cli().await;
    let ann = s.account("acme", "ann", "user", &["admin"]).await;
    let hook = format!("http://{}/billing/v1/webhook/stripe", s.api);
    ok(&s, &op, "micro", "/platform/plan/set", json!({"namespace": "acme", "plan": "personal"})).await;
    ok(&s, &ann, "acme", "/billing/billing/settings", json!({"email": "billing@acme.example"})).await;

    // Ann gives a card through Stripe Checkout; Stripe tells us by webhook.
    let setup =
        ok(&s, &ann, "acme", "/billing/billing/setuppayment", json!({"return_url": "https://m3o.test/billing"})).await;
    assert!(setup["url"].as_str().unwrap().starts_with("http"), "{setup}");
    let session = stripe.complete_setup(setup["id"].as_str().unwrap());
    let d = stripe.send_event(&hook, "checkout.session.completed", session).await;
    assert_eq!(d.status, 200, "{d:?}");
    let account = ok(&s, &ann, "acme", "/billing/billing/account", json!({})).await;
    assert_eq!(account["settings"]["payment_method"], true, "{account}");
    let customer = account["settings"]["customer"].as_str().unwrap().to_string();

    // Two services: api all January, worker from the 11th to the 21st; the bank debit of
    // their invoice stays processing until Stripe's webhook.
    let (api, worker) = (sleeper(), sleeper());
    let out =
        cli.command(&["--namespace", "acme", "run", api.path().to_str().unwrap(), "--name", "api"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    clock.set(JAN + 10 * DAY);
    let out = cli
        .command(&["--namespace", "acme", "run", worker.path().to_str().unwrap(), "--name", "worker"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    clock.set(JAN + 20 * DAY);
    cli.ok(&["--namespace", "acme", "kill", "worker"]).await;
    stripe.set_charges(&customer, micro_test::stripe::Charges::Process);
    clock.set(JAN + 31 * DAY + 600);
    let mut intents = Vec::new();
    for _ in 0..150 {
        intents = stripe.payment_intents();
        if !intents.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(intents.len(), 1, "charged once at issue: {intents:?}");
    let mut pi = intents[0].clone();
    // $20.00 for api's 744 h and $6.45 for worker's 240 h, mailed.
    assert_eq!((pi["amount"].as_i64(), pi["metadata"]["invoice"].as_str()), (Some(2645), Some("2027-01-acme")), "{pi}");
    let inv = ok(&s, &ann, "acme", "/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!(inv["status"], "open", "processing is not paid: {inv}");
    let amounts: Vec<(&str, i64)> = inv["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["service"].as_str().unwrap(), l["amount"].as_i64().unwrap()))
        .collect();
    assert_eq!(amounts, vec![("api", 2000), ("worker", 645)], "{inv}");
    assert!(mail(&sink, "billing@acme.example", "Invoice INV-000001").await.contains("$26.45"));

    // A forged or altered webhook is refused and changes nothing.
    pi["status"] = json!("succeeded");
    pi["amount_received"] = pi["amount"].clone();
    let body = json!({"id": "evt_forged", "type": "payment_intent.succeeded", "data": {"object": pi}}).to_string();
    let forged = micro_test::http(
        &s.api,
        "POST",
        "/billing/v1/webhook/stripe",
        &[("stripe-signature", "t=1,v1=00")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    let unsigned = micro_test::http(&s.api, "POST", "/billing/v1/webhook/stripe", &[], body.as_bytes()).await;
    assert_eq!(unsigned.status, 400, "{}", unsigned.body);
    let inv = ok(&s, &ann, "acme", "/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!(inv["status"], "open");

    // Stripe's signed webhook pays it; delivered again (as Stripe retries), nothing more.
    let d = stripe.send_event(&hook, "payment_intent.succeeded", pi).await;
    assert_eq!(d.status, 200, "{d:?}");
    let again = micro_test::http(
        &s.api,
        "POST",
        "/billing/v1/webhook/stripe",
        &[("stripe-signature", d.signature.as_str())],
        d.body.as_bytes(),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let inv = ok(&s, &ann, "acme", "/billing/billing/invoice", json!({"id": "INV-000001"})).await;
    assert_eq!((inv["status"].as_str(), inv["owed"].as_i64()), (Some("paid"), Some(0)), "{inv}");
    let ledger = ok(&s, &op, "micro", "/billing/billing/ledger", json!({})).await;
    assert_eq!(
        (ledger["balanced"].as_bool(), ledger["balances"]["cash:stripe"].as_i64()),
        (Some(true), Some(2645)),
        "{ledger}"
    );

    // February's charge is declined: mailed, tried again, and past the grace the
    // services stop (kept, not deleted).
    stripe.set_charges(&customer, micro_test::stripe::Charges::Decline);
    clock.set(JAN + 59 * DAY + 600); // 2027-03-01 00:10
    let text = mail(&sink, "billing@acme.example", "Payment of invoice INV-000002 failed").await;
    assert!(text.contains("declined") || text.contains("failed"), "{text}");
    assert!(status_of(&cli, "api").await.contains("running"));
    clock.set(JAN + 59 * DAY + 22 * DAY); // 21 days after issue: due 14 + grace 7
    let text = mail(&sink, "billing@acme.example", "Services of acme stopped").await;
    assert!(text.contains("Nothing was deleted"), "{text}");
    assert!(status_of(&cli, "api").await.contains("suspended"), "{}", cli.ok(&["--namespace", "acme", "status"]).await);
    let err = cli.fails(&["--namespace", "acme", "run", api.path().to_str().unwrap(), "--name", "other"]).await;
    assert!(err.contains("suspended"), "nothing new starts meanwhile: {err}");

    // Ann fixes the card and pays: the services run again.
    stripe.set_charges(&customer, micro_test::stripe::Charges::Succeed);
    let paid = ok(&s, &ann, "acme", "/billing/billing/pay", json!({"id": "INV-000002"})).await;
    assert_eq!(paid["invoice"]["status"], "paid", "{paid}");
    mail(&sink, "billing@acme.example", "Services of acme running again").await;
    let mut status = String::new();
    for _ in 0..100 {
        status = status_of(&cli, "api").await;
        if status.contains("running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(status.contains("running"), "{status}");
    let ledger = ok(&s, &op, "micro", "/billing/billing/ledger", json!({})).await;
    assert_eq!(ledger["balanced"], true, "{ledger}");
    // Each charge attempt carried its own idempotency key; none broke Stripe's contract.
    let keys: Vec<String> =
        stripe.requests_to("POST", "/v1/payment_intents").iter().filter_map(|r| r.idempotency_key.clone()).collect();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        unique.len(),
        keys.len() - stripe.requests_to("POST", "/v1/payment_intents").iter().filter(|r| r.replayed).count(),
        "{keys:?}"
    );
    stripe.assert_no_violations();
}
