//! Conformance of `store` backends.

use micro_core::Code;
use micro_core::store::{MAX_KEY, MAX_VALUE, Order, Query, Record, Store, Table};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static RUN: AtomicU64 = AtomicU64::new(0);

/// A fresh database name for one run of the suite.
fn database() -> String {
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("conformance-store-{}-{n}", t % 1_000_000_000_000)
}

fn keys(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.key.as_str()).collect()
}

/// Runs every store check against `store`.
pub async fn store(store: Arc<dyn Store>) {
    let db = database();
    let t = Table::new(&db, "users");
    let q = Query::default();

    // Write, read, replace, metadata.
    let mut r = Record::new("user/1", b"alice".to_vec());
    r.metadata.insert("kind".into(), "person".into());
    store.write(&t, &r, None).await.expect("write");
    let got = store.read(&t, "user/1", &q).await.expect("read");
    assert_eq!(got.len(), 1, "exact read returns one record");
    assert_eq!(got[0].value, b"alice", "value round-trips");
    assert_eq!(got[0].metadata.get("kind").map(String::as_str), Some("person"), "metadata round-trips");
    assert_eq!(got[0].expiry, None, "no TTL, no expiry");
    store.write(&t, &Record::new("user/1", b"alicia".to_vec()), None).await.expect("replace");
    assert_eq!(store.read(&t, "user/1", &q).await.expect("read")[0].value, b"alicia", "write replaces");
    let missing = store.read(&t, "user/404", &q).await.expect_err("missing key");
    assert_eq!(missing.code(), Code::NotFound, "an exact read of a missing key is NotFound");

    // Prefix, suffix, limit, offset, order.
    for k in ["user/2", "user/3", "user/10", "team/1", "team/2.json", "user/4.json"] {
        store.write(&t, &Record::new(k, k.as_bytes().to_vec()), None).await.expect("write");
    }
    let p = Query { prefix: true, ..Default::default() };
    let users = store.read(&t, "user/", &p).await.expect("prefix read");
    assert_eq!(keys(&users), ["user/1", "user/10", "user/2", "user/3", "user/4.json"], "prefix read, ascending");
    let desc = Query { prefix: true, order: Order::Desc, limit: 2, ..Default::default() };
    assert_eq!(keys(&store.read(&t, "user/", &desc).await.expect("desc")), ["user/4.json", "user/3"], "desc + limit");
    let page = Query { prefix: true, limit: 2, offset: 1, ..Default::default() };
    assert_eq!(keys(&store.read(&t, "user/", &page).await.expect("page")), ["user/10", "user/2"], "limit + offset");
    let s = Query { suffix: true, ..Default::default() };
    assert_eq!(keys(&store.read(&t, ".json", &s).await.expect("suffix")), ["team/2.json", "user/4.json"], "suffix");
    assert!(
        store.read(&t, "nobody/", &p).await.expect("empty prefix read").is_empty(),
        "no match is empty, not an error"
    );
    // Pattern characters in keys are literal.
    store.write(&t, &Record::new("odd*key?[x]", b"1".to_vec()), None).await.expect("write odd key");
    store.write(&t, &Record::new("odd-other", b"1".to_vec()), None).await.expect("write");
    assert_eq!(
        keys(&store.read(&t, "odd*", &p).await.expect("literal prefix")),
        ["odd*key?[x]"],
        "glob chars are literal"
    );
    assert_eq!(keys(&store.read(&t, "%", &p).await.expect("percent")), Vec::<&str>::new(), "% is literal");

    // List.
    let all = store.list(&t, "", &q).await.expect("list");
    assert_eq!(all.len(), 9, "list returns every key: {all:?}");
    let teams = store.list(&t, "team/", &p).await.expect("list prefix");
    assert_eq!(teams, ["team/1", "team/2.json"], "list with prefix");
    let lim = store.list(&t, "", &Query { limit: 3, order: Order::Desc, ..Default::default() }).await.expect("list");
    assert_eq!(lim.len(), 3, "list with limit");
    assert!(lim[0] > lim[1] && lim[1] > lim[2], "list desc: {lim:?}");

    // Delete.
    store.delete(&t, "team/1").await.expect("delete");
    assert_eq!(store.read(&t, "team/1", &q).await.expect_err("deleted").code(), Code::NotFound, "deleted is gone");
    assert_eq!(store.delete(&t, "team/1").await.expect_err("again").code(), Code::NotFound, "delete twice");

    // TTL: never returned after expiry, not by read, list, or prefix read.
    let short = Record::new("tmp/1", b"x".to_vec());
    store.write(&t, &short, Some(Duration::from_millis(300))).await.expect("write with ttl");
    let live = store.read(&t, "tmp/1", &q).await.expect("live");
    assert!(live[0].expiry.is_some(), "a TTL sets the expiry");
    store.write(&t, &Record::new("tmp/2", b"y".to_vec()), Some(Duration::from_secs(60))).await.expect("write");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.read(&t, "tmp/1", &q).await.expect_err("expired").code(), Code::NotFound, "expired: NotFound");
    assert_eq!(keys(&store.read(&t, "tmp/", &p).await.expect("prefix")), ["tmp/2"], "expired hidden from prefix reads");
    assert!(!store.list(&t, "", &q).await.expect("list").contains(&"tmp/1".to_string()), "expired hidden from lists");
    assert_eq!(
        store.delete(&t, "tmp/1").await.expect_err("expired").code(),
        Code::NotFound,
        "expired: delete NotFound"
    );
    // Writing again revives it, without the old TTL.
    store.write(&t, &short, None).await.expect("rewrite");
    assert_eq!(store.read(&t, "tmp/1", &q).await.expect("revived")[0].expiry, None, "rewrite clears the TTL");

    // Tables and databases are isolated.
    let other_table = Table::new(&db, "orders");
    let other_db = Table::new(format!("{db}-other"), "users");
    assert_eq!(store.read(&other_table, "user/1", &q).await.expect_err("other table").code(), Code::NotFound);
    assert_eq!(store.read(&other_db, "user/1", &q).await.expect_err("other db").code(), Code::NotFound);
    store.write(&other_table, &Record::new("o/1", b"1".to_vec()), None).await.expect("write");
    store.write(&other_db, &Record::new("user/1", b"mallory".to_vec()), None).await.expect("write");
    assert_eq!(store.read(&t, "user/1", &q).await.expect("read")[0].value, b"alicia", "other database untouched");
    assert!(store.list(&other_table, "user/", &p).await.expect("list").is_empty(), "tables isolated");
    let tables = store.tables(&db).await.expect("tables");
    assert_eq!(tables, ["orders", "users"], "tables of a database");
    let dbs = store.databases().await.expect("databases");
    assert!(dbs.contains(&db) && dbs.contains(&format!("{db}-other")), "databases listed: {dbs:?}");
    // The size of a database: its records' keys and values in bytes (the other's apart).
    let other_size = store.size(&format!("{db}-other")).await.expect("size");
    assert_eq!(other_size, ("user/1".len() + "mallory".len() + "{}".len()) as u64, "a database's size");
    let mut expected = 0u64;
    for table in &tables {
        let all = store.read(&Table::new(&db, table), "", &p).await.expect("read all");
        expected += all.iter().map(|r| micro_core::store::record_size(&r.key, &r.value, &r.metadata)).sum::<u64>();
    }
    assert_eq!(store.size(&db).await.expect("size"), expected, "size sums every live record, metadata too");
    assert_eq!(store.size(&format!("{db}-none")).await.expect("size of nothing"), 0);

    // Bad input: clear InvalidArgument, nothing stored.
    let bad = |r: Result<(), micro_core::Status>, what: &str| {
        assert_eq!(r.expect_err(what).code(), Code::InvalidArgument, "{what}");
    };
    bad(store.write(&t, &Record::new("", b"x".to_vec()), None).await, "empty key");
    bad(store.write(&t, &Record::new("k".repeat(MAX_KEY + 1), b"x".to_vec()), None).await, "oversize key");
    bad(store.write(&t, &Record::new("nul\0key", b"x".to_vec()), None).await, "NUL in key");
    bad(store.write(&t, &Record::new("big", vec![0u8; MAX_VALUE + 1]), None).await, "oversize value");
    bad(store.write(&Table::new(&db, "bad table"), &Record::new("k", b"x".to_vec()), None).await, "bad table");
    bad(store.write(&Table::new("Bad DB!", "t"), &Record::new("k", b"x".to_vec()), None).await, "bad database");
    assert_eq!(store.read(&t, "", &q).await.expect_err("empty key").code(), Code::InvalidArgument, "read empty key");
    assert_eq!(store.read(&t, "big", &q).await.expect_err("not stored").code(), Code::NotFound, "oversize not stored");
    // A value at exactly the limit is fine.
    store.write(&t, &Record::new("max", vec![7u8; MAX_VALUE]), None).await.expect("value at the limit");
    assert_eq!(store.read(&t, "max", &q).await.expect("read")[0].value.len(), MAX_VALUE);
}
