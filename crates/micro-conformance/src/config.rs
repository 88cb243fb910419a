//! Conformance of `config` backends.

use futures::StreamExt;
use micro_core::config::{Change, Config, MASK, MAX_VALUE};
use micro_core::{BoxStream, Code, Status};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static RUN: AtomicU64 = AtomicU64::new(0);

/// A fresh namespace for one run of the suite.
fn namespace(what: &str) -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conformance-config-{what}-{}-{n}", t % 1_000_000_000_000)
}

async fn get(c: &dyn Config, ns: &str, path: &str) -> Option<Value> {
    c.get(ns, path, false).await.unwrap_or_else(|e| panic!("get {path:?}: {e:?}"))
}

async fn set(c: &dyn Config, ns: &str, path: &str, value: Value) {
    c.set(ns, path, &value, false).await.unwrap_or_else(|e| panic!("set {path:?} = {value}: {e:?}"));
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, what: &str) {
    match r {
        Err(e) => assert_eq!(e.code(), code, "{what}: wrong code ({e:?})"),
        Ok(v) => panic!("{what}: expected {code}, got Ok({v:?})"),
    }
}

async fn next_change(w: &mut BoxStream<Result<Change, Status>>, what: &str) -> Change {
    match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
        Ok(Some(Ok(c))) => c,
        Ok(Some(Err(e))) => panic!("{what}: watch failed: {e:?}"),
        Ok(None) => panic!("{what}: watch ended"),
        Err(_) => panic!("{what}: no change within 5 s"),
    }
}

/// Runs every config check against `config`.
pub async fn config(config: Arc<dyn Config>) {
    let c = &*config;
    let ns = namespace("a");
    let other = namespace("b");

    // Empty namespace.
    assert_eq!(get(c, &ns, "").await, None, "the document of a new namespace is absent");
    assert_eq!(get(c, &ns, "app.db.url").await, None, "a missing path is None");

    // Leaves and subtrees.
    set(c, &ns, "app.db.url", json!("postgres://db")).await;
    assert_eq!(get(c, &ns, "app.db.url").await, Some(json!("postgres://db")), "set then get a leaf");
    assert_eq!(get(c, &ns, "app.db").await, Some(json!({"url": "postgres://db"})), "get of a parent is its subtree");
    assert_eq!(
        get(c, &ns, "").await,
        Some(json!({"app": {"db": {"url": "postgres://db"}}})),
        "get \"\" is the document"
    );
    assert_eq!(get(c, &ns, "app.db.url.more").await, None, "a path under a leaf is None");
    assert_eq!(get(c, &ns, "app.nope").await, None, "a missing sibling is None");

    // Objects merge, deeply; existing keys are kept.
    set(c, &ns, "app.db", json!({"pool": 5})).await;
    assert_eq!(get(c, &ns, "app.db").await, Some(json!({"url": "postgres://db", "pool": 5})), "an object merges");
    set(c, &ns, "app", json!({"db": {"timeout": 3}, "name": "shop"})).await;
    assert_eq!(
        get(c, &ns, "app").await,
        Some(json!({"db": {"url": "postgres://db", "pool": 5, "timeout": 3}, "name": "shop"})),
        "an object merges deeply"
    );

    // Anything else replaces.
    set(c, &ns, "app.db.pool", json!(10)).await;
    assert_eq!(get(c, &ns, "app.db.pool").await, Some(json!(10)), "a scalar replaces a scalar");
    set(c, &ns, "app.tags", json!(["a", "b"])).await;
    set(c, &ns, "app.tags", json!(["c"])).await;
    assert_eq!(get(c, &ns, "app.tags").await, Some(json!(["c"])), "an array replaces, not merges");
    set(c, &ns, "app.name", json!({"first": "shop"})).await;
    assert_eq!(get(c, &ns, "app.name").await, Some(json!({"first": "shop"})), "an object replaces a non-object");
    set(c, &ns, "flag", json!(true)).await;
    set(c, &ns, "flag.on", json!(1)).await;
    assert_eq!(
        get(c, &ns, "flag").await,
        Some(json!({"on": 1})),
        "setting under a non-object replaces it with an object"
    );
    set(c, &ns, "flag", json!(null)).await;
    assert_eq!(get(c, &ns, "flag").await, Some(json!(null)), "null is a value");

    // Delete a leaf, then a subtree.
    c.delete(&ns, "app.db.pool").await.expect("delete a leaf");
    assert_eq!(get(c, &ns, "app.db.pool").await, None, "a deleted leaf is gone");
    assert_eq!(get(c, &ns, "app.db.url").await, Some(json!("postgres://db")), "deleting a leaf keeps its siblings");
    c.delete(&ns, "app.db").await.expect("delete a subtree");
    assert_eq!(get(c, &ns, "app.db").await, None, "a deleted subtree is gone");
    assert_eq!(get(c, &ns, "app.db.url").await, None, "the leaves of a deleted subtree are gone");
    assert_eq!(get(c, &ns, "app.name.first").await, Some(json!("shop")), "deleting a subtree keeps its siblings");
    expect_code(c.delete(&ns, "app.db").await, Code::NotFound, "delete of a deleted path");
    expect_code(c.delete(&ns, "nope.deeper").await, Code::NotFound, "delete of a missing path");

    // Malformed paths.
    for bad in ["a..b", ".a", "a.", "a b", "a/b", "ü"] {
        expect_code(c.get(&ns, bad, false).await, Code::InvalidArgument, &format!("get {bad:?}"));
        expect_code(c.set(&ns, bad, &json!(1), false).await, Code::InvalidArgument, &format!("set {bad:?}"));
        expect_code(c.delete(&ns, bad).await, Code::InvalidArgument, &format!("delete {bad:?}"));
        expect_code(c.watch(&ns, bad).await.map(|_| ()), Code::InvalidArgument, &format!("watch {bad:?}"));
    }

    // Oversize values.
    let big = json!("x".repeat(MAX_VALUE));
    expect_code(c.set(&ns, "big", &big, false).await, Code::InvalidArgument, "a value over MAX_VALUE");
    assert_eq!(get(c, &ns, "big").await, None, "an oversize value is not stored");

    // Secrets.
    c.set(&ns, "app.password", &json!("hunter2"), true).await.expect("set a secret");
    assert_eq!(get(c, &ns, "app.password").await, Some(json!(MASK)), "a secret reads masked by default");
    let revealed = c.get(&ns, "app.password", true).await.expect("get a secret");
    assert_eq!(revealed, Some(json!("hunter2")), "a secret reads back with secrets=true");
    let app = get(c, &ns, "app").await.expect("app exists");
    assert_eq!(app["password"], json!(MASK), "a secret is masked inside its parent's subtree: {app}");
    assert_eq!(app["name"], json!({"first": "shop"}), "masking keeps other values: {app}");
    let whole = get(c, &ns, "").await.expect("document exists");
    assert_eq!(whole["app"]["password"], json!(MASK), "a secret is masked in the whole document: {whole}");
    let app = c.get(&ns, "app", true).await.expect("get app with secrets").expect("app exists");
    assert_eq!(app["password"], json!("hunter2"), "secrets=true reveals secrets in a subtree: {app}");
    c.set(&ns, "creds", &json!({"user": "u", "token": "t0k"}), true).await.expect("set an object secret");
    assert_eq!(get(c, &ns, "creds").await, Some(json!(MASK)), "an object secret reads masked");
    let creds = c.get(&ns, "creds", true).await.expect("get an object secret");
    assert_eq!(creds, Some(json!({"user": "u", "token": "t0k"})), "an object secret reads back whole");
    set(c, &ns, "app.password", json!("plain")).await;
    assert_eq!(get(c, &ns, "app.password").await, Some(json!("plain")), "a plain set replaces a secret");
    c.delete(&ns, "creds").await.expect("delete a secret");
    assert_eq!(c.get(&ns, "creds", true).await.expect("get"), None, "a deleted secret is gone");

    // Watch.
    let mut w = c.watch(&ns, "svc.db").await.expect("watch");
    let first = next_change(&mut w, "first watch item").await;
    assert_eq!(first.value, Value::Null, "a watch of a missing path starts with null: {first:?}");
    set(c, &ns, "svc.db.host", json!("h1")).await;
    let ch = next_change(&mut w, "set of a child").await;
    assert_eq!(ch, Change { path: "svc.db.host".into(), value: json!({"host": "h1"}) }, "a child set is seen");
    set(c, &ns, "unrelated", json!(1)).await;
    set(c, &ns, "svc.other", json!(1)).await;
    set(c, &ns, "svc.db", json!({"port": 5432})).await;
    let ch = next_change(&mut w, "set of the path").await;
    assert_eq!(
        ch,
        Change { path: "svc.db".into(), value: json!({"host": "h1", "port": 5432}) },
        "a set of the path is seen (and changes elsewhere are not)"
    );
    set(c, &ns, "svc", json!({"db": {"host": "h2"}})).await;
    let ch = next_change(&mut w, "set of a parent").await;
    assert_eq!(ch, Change { path: "svc".into(), value: json!({"host": "h2", "port": 5432}) }, "a parent set is seen");
    c.set(&ns, "svc.db.password", &json!("pw"), true).await.expect("set a watched secret");
    let ch = next_change(&mut w, "set of a secret").await;
    assert_eq!(ch.value["password"], json!(MASK), "a watcher sees secrets masked: {ch:?}");
    c.delete(&ns, "svc.db").await.expect("delete the watched path");
    let ch = next_change(&mut w, "delete of the path").await;
    assert_eq!(ch, Change { path: "svc.db".into(), value: Value::Null }, "a delete is seen as null");

    let mut w2 = c.watch(&ns, "app.name").await.expect("watch an existing path");
    let first = next_change(&mut w2, "first watch item").await;
    assert_eq!(first.value, json!({"first": "shop"}), "a watch starts with the current value");
    drop(w2);

    // Namespaces are isolated.
    let mut wo = c.watch(&other, "app").await.expect("watch another namespace");
    assert_eq!(next_change(&mut wo, "first").await.value, Value::Null, "another namespace starts empty");
    assert_eq!(get(c, &other, "app").await, None, "namespaces are isolated");
    assert_eq!(get(c, &other, "").await, None, "namespaces are isolated");
    expect_code(c.delete(&other, "app").await, Code::NotFound, "delete in another namespace");
    set(c, &ns, "app.x", json!(1)).await;
    set(c, &other, "app.y", json!(2)).await;
    let ch = next_change(&mut wo, "set in the watched namespace").await;
    assert_eq!(ch, Change { path: "app.y".into(), value: json!({"y": 2}) }, "a watch sees only its namespace");
    assert_eq!(get(c, &ns, "app.y").await, None, "namespaces are isolated");
    assert_eq!(get(c, &ns, "app.x").await, Some(json!(1)), "namespaces are isolated");

    // Clean up, so repeated runs leave little behind.
    c.delete(&ns, "").await.expect("delete the whole document");
    assert_eq!(get(c, &ns, "").await, None, "a deleted document is absent");
    c.delete(&other, "").await.expect("delete the whole document");
}
