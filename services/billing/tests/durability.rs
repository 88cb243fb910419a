//! Billing when things go wrong: the server SIGKILLed at random points while it issues a
//! month's invoices and while it applies payments (told again and again), then two nodes
//! sharing PostgreSQL issuing the same month at once. Whatever happens: every invoice
//! exactly once, numbers without gaps, no payment applied twice, the ledger balanced.
#![allow(clippy::unwrap_used)]

use micro_test::call_json as call;
use micro_test::process::{Builder, ServerProcess};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

/// 2027-01-01 00:00:00 UTC.
const JAN: u64 = 1_798_761_600;
const DAY: u64 = 86_400;
const TENANTS: usize = 45;

fn clock(at: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), at.to_string()).unwrap();
    f
}

/// `path` as an operator; billing busy after a kill (its lock held by the dead process
/// until it expires) is asked again.
async fn ok(s: &ServerProcess, token: &str, path: &str, body: Value) -> Value {
    for _ in 0..60 {
        let (st, v) = call(&s.api, "POST", path, Some(token), "micro", Some(body.clone())).await;
        if st == 503 && v["detail"].as_str().unwrap_or_default().contains("try again") {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert_eq!(st, 200, "{path}: {v}");
        return v;
    }
    panic!("{path}: billing stayed busy");
}

/// Forty-five Personal namespaces, each running `api` all January and some a `worker` too.
async fn tenants(s: &ServerProcess, op: &str) {
    for i in 0..TENANTS {
        let ns = format!("t{i:02}");
        ok(s, op, "/platform/plan/set", json!({"namespace": ns, "plan": "personal"})).await;
        ok(s, op, "/billing/billing/record", json!({"namespace": ns, "service": "api", "from": JAN})).await;
        if i % 3 == 0 {
            let (from, to) = (JAN + i as u64 * 3600, JAN + 20 * DAY);
            ok(s, op, "/billing/billing/record", json!({"namespace": ns, "service": "worker", "from": from, "to": to}))
                .await;
        }
    }
}

/// Every invoice is there once, numbered 1..=n without gaps, one per namespace, and the
/// ledger balances; returns the invoices.
async fn check_books(s: &ServerProcess, op: &str) -> Vec<Value> {
    let all = ok(s, op, "/billing/billing/invoices", json!({"all": true})).await;
    let invoices = all["invoices"].as_array().unwrap().clone();
    assert_eq!(invoices.len(), TENANTS, "{all}");
    let mut seqs: Vec<u64> = invoices.iter().map(|i| i["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TENANTS as u64).collect::<Vec<_>>(), "numbers without gaps or repeats");
    let namespaces: BTreeSet<&str> = invoices.iter().map(|i| i["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces.len(), TENANTS, "one invoice per namespace");
    for inv in &invoices {
        let expected = if inv["namespace"].as_str().unwrap()[1..].parse::<usize>().unwrap() % 3 == 0 { 2 } else { 1 };
        assert_eq!(inv["lines"].as_array().unwrap().len(), expected, "{inv}");
        assert_eq!(inv["lines"][0]["amount"], 2000, "{inv}");
    }
    let ledger = ok(s, op, "/billing/billing/ledger", json!({})).await;
    assert_eq!(ledger["balanced"], true, "{ledger}");
    let issued = ledger["transactions"].as_array().unwrap().iter().filter(|t| t["kind"] == "invoice").count();
    assert_eq!(issued, TENANTS, "one ledger transaction per invoice");
    let total: i64 = invoices.iter().map(|i| i["total"].as_i64().unwrap()).sum();
    assert_eq!(ledger["balances"]["revenue"].as_i64().unwrap(), -total);
    invoices
}

/// A pseudo-random delay of up to `most` ms (seeded by the round, printed on failure).
fn delay(round: u64, most: u64) -> Duration {
    let mut x = (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    x ^= x >> 31;
    Duration::from_millis(x % most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_issuing_and_paying_loses_and_doubles_nothing() {
    let data = tempfile::tempdir().unwrap();
    let clock = clock(JAN + 15 * DAY);
    let builder = || {
        ServerProcess::builder(micro())
            .data_dir(data.path())
            .licensed(&["billing"])
            .env("MICRO_CLOCK_FILE", clock.path())
            .env("MICRO_SERVICES", "platform,billing,email")
            .env("MICRO_BILLING_INTERVAL", "3600")
    };
    let s = builder().start();
    let op = s.admin_token().await;
    tenants(&s, &op).await;
    // The month is over: each start closes it at once, and the test asks again besides.
    std::fs::write(clock.path(), (JAN + 31 * DAY + 600).to_string()).unwrap();
    let mut s = s;
    let mut progress = Vec::new();
    for round in 0..8u64 {
        let count = |s: &ServerProcess| {
            let (api, op) = (s.api.clone(), op.clone());
            async move {
                let (_, v) =
                    call(&api, "POST", "/billing/billing/invoices", Some(&op), "micro", Some(json!({"all": true})))
                        .await;
                v["invoices"].as_array().map_or(0, Vec::len)
            }
        };
        let before = count(&s).await;
        if before == TENANTS {
            break;
        }
        // Asked until it runs (the lock of the process killed last runs out first), then
        // killed a moment after the next invoice appears: in the middle of the run.
        let (api, op2) = (s.api.clone(), op.clone());
        let asking = tokio::spawn(async move {
            loop {
                let body = Some(json!({"period": "2027-01"}));
                let (st, _) = call(&api, "POST", "/billing/billing/close", Some(&op2), "micro", body).await;
                if st != 503 {
                    return;
                }
            }
        });
        while count(&s).await == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(delay(round, 80)).await;
        let restarted: Builder = s.kill();
        asking.abort();
        s = restarted.start();
        progress.push(count(&s).await);
    }
    // Where the kills landed (how many invoices were out by then), for the record.
    eprintln!("invoices issued at each kill: {progress:?}");
    assert!(progress.iter().any(|n| *n > 0 && *n < TENANTS), "a kill landed mid-run: {progress:?}");
    let op = s.admin_token().await;
    let v = ok(&s, &op, "/billing/billing/close", json!({"period": "2027-01"})).await;
    eprintln!("after the kills, the last close issued {} more", v["issued"].as_array().unwrap().len());
    let invoices = check_books(&s, &op).await;

    // Payments, each told three times over, with kills in between: applied once each.
    for round in 0..4u64 {
        let api = s.api.clone();
        let op2 = op.clone();
        let ids: Vec<String> = invoices.iter().map(|i| i["number"].as_str().unwrap().to_string()).collect();
        let paying = tokio::spawn(async move {
            for id in ids {
                let body = json!({"id": id, "reference": format!("wire-{id}")});
                let _ = call(&api, "POST", "/billing/billing/markpaid", Some(&op2), "micro", Some(body)).await;
            }
        });
        tokio::time::sleep(delay(round + 100, 600)).await;
        let restarted = s.kill();
        let _ = paying.await;
        s = restarted.start();
    }
    let op = s.admin_token().await;
    for inv in &invoices {
        let id = inv["number"].as_str().unwrap();
        let v = ok(&s, &op, "/billing/billing/markpaid", json!({"id": id, "reference": format!("wire-{id}")})).await;
        assert_eq!((v["status"].as_str(), v["owed"].as_i64()), (Some("paid"), Some(0)), "{v}");
    }
    check_books(&s, &op).await;
    let ledger = ok(&s, &op, "/billing/billing/ledger", json!({})).await;
    let payments = ledger["transactions"].as_array().unwrap().iter().filter(|t| t["kind"] == "payment").count();
    assert_eq!(payments, TENANTS, "one payment per invoice: {ledger}");
    let total: i64 = invoices.iter().map(|i| i["total"].as_i64().unwrap()).sum();
    assert_eq!(ledger["balances"]["cash:manual"].as_i64(), Some(total));
    let revenue = ok(&s, &op, "/billing/billing/revenue", json!({})).await;
    assert_eq!((revenue["receivable"].as_i64(), revenue["credit_held"].as_i64()), (Some(0), Some(0)), "{revenue}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_issue_each_invoice_once() {
    let Some(pg) = micro_conformance::backend_url("MICRO_TEST_POSTGRES") else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_billing_{}", std::process::id())).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let clock = clock(JAN + 15 * DAY);
    let node = |dir: &Path| {
        ServerProcess::builder(micro())
            .data_dir(dir)
            .env("MICRO_BACKEND", &schema.url)
            .licensed(&["billing"])
            .env("MICRO_CLOCK_FILE", clock.path())
            .env("MICRO_BILLING_INTERVAL", "1")
            .env("MICRO_SERVICES", "platform,billing,email")
            .start()
    };
    let (a, b) = (node(da.path()), node(db.path()));
    let op = a.admin_token().await;
    tenants(&a, &op).await;
    // The month ends: both nodes' ticks and both nodes asked at once.
    std::fs::write(clock.path(), (JAN + 31 * DAY + 600).to_string()).unwrap();
    let ask = |s: &ServerProcess| {
        let (api, op) = (s.api.clone(), op.clone());
        tokio::spawn(async move {
            call(&api, "POST", "/billing/billing/close", Some(&op), "micro", Some(json!({"period": "2027-01"}))).await
        })
    };
    let (ra, rb) = (ask(&a), ask(&b));
    let (ra, rb) = (ra.await.unwrap(), rb.await.unwrap());
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    let invoices = check_books(&b, &op).await;
    // Seen the same from both nodes.
    let from_a = ok(&a, &op, "/billing/billing/invoices", json!({"all": true})).await;
    assert_eq!(from_a["invoices"].as_array().unwrap().len(), invoices.len());
    drop((a, b));
    schema.drop().await;
}
