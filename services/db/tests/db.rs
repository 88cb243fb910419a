//! The database through a real `micro server` (the binary, hosting the product
//! in-process): collections, records, filters, rules, batches, realtime over server-sent
//! events, the CLI, namespaces that never see each other's records, and writes that
//! survive a SIGKILL.
// The tests are `async fn(Backend)`s that `on_both_backends!` makes into two tests each.
#![allow(clippy::unwrap_used)]

use micro_test::sse::Events;
use serde_json::{Value, json};
use std::time::Duration;

#[macro_use]
mod common;

use common::Backend;

on_both_backends!(
    filters_and_sorts_mean_the_same_on_every_backend,
    unindexed_reads_past_the_limit_are_refused,
    collections_records_rules_and_batches_over_http,
    indexes_plans_and_aggregates,
    search_and_expanded_relations_follow_the_rules,
    realtime_delivers_what_the_rules_let_each_subscriber_see,
    the_cli_and_crashes_and_deleted_namespaces
);

/// `method path` at the gateway `api` as `token` in namespace `ns`: (status, JSON body).
async fn call(api: &str, method: &str, path: &str, token: Option<&str>, ns: &str, body: Option<Value>) -> (u16, Value) {
    micro_test::call_json(api, method, path, token, ns, body).await
}

use micro_test::query_value as q;

/// The titles of a list reply, in order.
fn titles(v: &Value) -> Vec<String> {
    v["items"].as_array().unwrap_or(&vec![]).iter().map(|r| r["title"].as_str().unwrap_or("").to_string()).collect()
}

/// The todo app's collection: each person sees and changes only their own todos.
fn todos_spec() -> Value {
    json!({
        "name": "todos",
        "schema": [
            {"name": "title", "type": "text", "required": true, "max": 200},
            {"name": "owner", "type": "text", "required": true},
            {"name": "done", "type": "bool"},
            {"name": "prio", "type": "number", "min": 0, "max": 9},
            {"name": "tags", "type": "array"},
            {"name": "code", "type": "text", "unique": true}
        ],
        "rules": {
            "list": "owner = @request.auth.id",
            "view": "owner = @request.auth.id",
            "create": "@request.auth.id != '' && owner = @request.auth.id",
            "update": "owner = @request.auth.id",
            "delete": "owner = @request.auth.id && done = true"
        }
    })
}

/// The filter language's corpus (the SQL builders' unit tests' records and filters),
/// through the real API: each backend selects and orders the same records.
async fn filters_and_sorts_mean_the_same_on_every_backend(backend: Backend) {
    let Some((s, _schema)) = common::server(backend, "filters_and_sorts_mean_the_same", &[]).await else { return };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let spec = json!({"name": "docs", "rules": {"list": "", "view": ""}});
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
    assert_eq!(st, 200, "{v}");
    let docs = [
        (
            "r1",
            json!({"title": "Buy milk", "done": false, "owner": "ann", "total": 12.5, "tags": ["home", "vip", "r1"],
                      "meta": {"prio": 1}, "score": 5, "labels": ["x"], "pat": "%"}),
        ),
        (
            "r2",
            json!({"title": "100% done_ish", "done": true, "owner": "bo", "total": 100, "tags": ["work"],
                      "meta": {"prio": 3}, "score": "7", "labels": "x", "pat": "done"}),
        ),
        (
            "r3",
            json!({"title": "It's a 'quote'", "done": false, "owner": "ann", "total": 0, "tags": [],
                      "meta": {"prio": null}, "score": {"a": 1}, "labels": {"k": "x"}, "pat": "_"}),
        ),
        ("r4", json!({"title": "no owner", "done": false, "total": -3})),
    ];
    let writes: Vec<Value> = docs.iter().map(|(id, d)| json!({"action": "create", "id": id, "data": d})).collect();
    let (st, v) = call(&api, "POST", "/db/v1/docs/batch", Some(&ann), "shop", Some(json!({"writes": writes}))).await;
    assert_eq!(st, 200, "{v}");
    let ids = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap_or(&vec![]).iter().map(|r| r["id"].as_str().unwrap_or("").to_string()).collect()
    };
    for (filter, signed_in, want) in [
        ("done = false", false, vec!["r1", "r3", "r4"]),
        ("done = true && total >= 100", false, vec!["r2"]),
        ("total > 0 && total < 100", false, vec!["r1"]),
        ("total != 0", false, vec!["r1", "r2", "r4"]),
        ("owner = null", false, vec!["r4"]),
        ("owner != null", false, vec!["r1", "r2", "r3"]),
        ("meta.prio >= 2 || meta.prio = null", false, vec!["r2", "r3", "r4"]),
        ("title ~ 'MILK'", false, vec!["r1"]),
        ("title ~ '100%'", false, vec!["r2"]),
        ("title ~ '%'", false, vec!["r2"]),
        ("title ~ '_'", false, vec!["r2"]),
        ("title !~ 'o'", false, vec!["r1"]),
        ("title = \"It's a 'quote'\"", false, vec!["r3"]),
        ("tags ?= 'vip'", false, vec!["r1"]),
        ("tags ?~ 'or'", false, vec!["r2"]),
        ("tags ?!= 'home'", false, vec!["r1", "r2"]),
        ("owner = @request.auth.id", true, vec!["r1", "r3"]),
        ("owner = @request.auth.id", false, vec![]),
        ("@request.auth.id != ''", false, vec![]),
        ("@request.auth.id != '' && owner = @request.auth.id", true, vec!["r1", "r3"]),
        ("created <= @now", false, vec!["r1", "r2", "r3", "r4"]),
        ("id = 'r4' || (owner = 'bo' && done = true)", false, vec!["r2", "r4"]),
        ("version = 1 && updated = created", false, vec!["r1", "r2", "r3", "r4"]),
        ("score > 0", false, vec!["r1"]),
        ("score > ''", false, vec!["r2"]),
        ("labels ?= 'x'", false, vec!["r1"]),
        ("tags ?= id", false, vec!["r1"]),
        ("title ~ pat", false, vec!["r2"]),
        ("id > 'r2' && id < 'r4'", false, vec!["r3"]),
        // Injection attempts are values, never SQL.
        ("owner = \"' OR 1=1 --\"", false, vec![]),
        ("owner = '\"); DROP TABLE records; --'", false, vec![]),
        ("title ~ \"') OR 1=1 --\"", false, vec![]),
    ] {
        let path = format!("/db/v1/docs/records?filter={}&sort=id", q(filter));
        let token = if signed_in { Some(ann.as_str()) } else { None };
        let (st, v) = call(&api, "GET", &path, token, "shop", None).await;
        assert_eq!((st, ids(&v)), (200, want.iter().map(|s| s.to_string()).collect()), "{filter}: {v}");
    }
    for (sort, want) in [
        ("total", ["r4", "r3", "r1", "r2"]),
        ("-total", ["r2", "r1", "r3", "r4"]),
        ("-owner,id", ["r2", "r1", "r3", "r4"]),
        ("owner,-id", ["r4", "r3", "r1", "r2"]),
        ("meta.prio", ["r3", "r4", "r1", "r2"]),
        ("-created,-id", ["r4", "r3", "r2", "r1"]),
    ] {
        let (st, v) = call(&api, "GET", &format!("/db/v1/docs/records?sort={sort}"), None, "shop", None).await;
        assert_eq!((st, ids(&v)), (200, want.map(String::from).to_vec()), "sort {sort}: {v}");
    }
    let (_, v) = call(&api, "GET", "/db/v1/docs/records?total=true", None, "shop", None).await;
    assert_eq!(v["total"], 4, "all there after the injection attempts: {v}");
    let _ = s.stop();
}

/// A list or aggregate that would read more records than `MICRO_DB_SCAN_LIMIT` with no
/// index to narrow it is refused with a hint; an index, a small collection or a plain
/// export in id order is not.
async fn unindexed_reads_past_the_limit_are_refused(backend: Backend) {
    let env = [("MICRO_DB_SCAN_LIMIT", "50")];
    let Some((s, _schema)) = common::server(backend, "unindexed_reads_past_the_limit", &env).await else { return };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let spec = json!({"name": "big", "rules": {"list": "owner = @request.auth.id"}});
    call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec.clone())).await;
    let small = json!({"name": "small", "rules": {"list": "owner = @request.auth.id"}});
    call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(small)).await;
    let writes: Vec<Value> =
        (0..80).map(|i| json!({"action": "create", "data": {"owner": format!("u{}", i % 4), "n": i}})).collect();
    let (st, v) = call(&api, "POST", "/db/v1/big/batch", Some(&ann), "shop", Some(json!({"writes": writes}))).await;
    assert_eq!(st, 200, "{v}");
    let few: Vec<Value> = (0..10).map(|i| json!({"action": "create", "data": {"owner": "u1", "n": i}})).collect();
    call(&api, "POST", "/db/v1/small/batch", Some(&ann), "shop", Some(json!({"writes": few}))).await;

    let filtered = format!("/db/v1/big/records?filter={}", q("n > 70"));
    let (st, v) = call(&api, "GET", &filtered, Some(&ann), "shop", None).await;
    assert_eq!(st, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("more than 50 records: no index serves"), "{v}");
    let (st, _) = call(&api, "GET", "/db/v1/big/records?sort=-n", Some(&ann), "shop", None).await;
    assert_eq!(st, 400, "an unindexed sort reads everything too");
    let group = json!({"group_by": ["owner"], "aggregates": [{"op": "count"}]});
    let (st, _) = call(&api, "POST", "/db/v1/big/aggregate", Some(&ann), "shop", Some(group.clone())).await;
    assert_eq!(st, 400, "so does grouping");
    // An export (everything, in id order) and a small collection are fine.
    let (st, v) = call(&api, "GET", "/db/v1/big/records?per_page=100", Some(&ann), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(80)), "{v}");
    let (st, _) = call(&api, "GET", &filtered.replace("/big/", "/small/"), Some(&ann), "shop", None).await;
    assert_eq!(st, 200);
    // With indexes the same calls are served.
    let mut indexed = spec.clone();
    indexed["indexes"] = json!([{"fields": ["n"]}, {"fields": ["owner", "n"]}]);
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(indexed)).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&api, "GET", &format!("{filtered}&sort=n"), Some(&ann), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(9)), "{v}");
    let (st, v) = call(&api, "POST", "/db/v1/big/aggregate", Some(&ann), "shop", Some(group)).await;
    assert_eq!((st, v["rows"].as_array().map(Vec::len)), (200, Some(4)), "{v}");
    let _ = s.stop();
}

async fn collections_records_rules_and_batches_over_http(backend: Backend) {
    let Some((s, _schema)) = common::server(backend, "collections_records_rules_and_batches_over_http", &[]).await
    else {
        return;
    };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let bo = s.account("shop", "bo", "user", &[]).await;
    let blog = s.account("blog", "sam", "user", &["admin"]).await;

    // Only the namespace's admins and developers make collections.
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&sam), "shop", Some(todos_spec())).await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(todos_spec())).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["explained"][0].as_str().unwrap().contains("where owner = @request.auth.id"), "{v}");
    // A spec that makes no sense is refused with the reason.
    let mut broken = todos_spec();
    broken["rules"]["list"] = json!("owner = ");
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(broken)).await;
    assert_eq!((st, v["detail"].as_str().unwrap().contains("list rule: at 8")), (400, true), "{v}");

    // sam and bo make their todos; the rules keep each to their own.
    let mut ids = Vec::new();
    for (who, title, prio) in [(&sam, "milk", 3), (&sam, "eggs", 1), (&sam, "bread", 2), (&bo, "nails", 5)] {
        let owner = if who == &sam { "sam" } else { "bo" };
        let body = json!({"data": {"title": title, "owner": owner, "done": false, "prio": prio, "tags": ["home"]}});
        let (st, v) = call(&api, "POST", "/db/v1/todos/records", Some(who), "shop", Some(body)).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!((v["version"].as_u64(), v["id"].as_str().map(str::len)), (Some(1), Some(32)), "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Making a record for someone else, or without an account, is refused.
    let forged = json!({"data": {"title": "x", "owner": "sam"}});
    let (st, v) = call(&api, "POST", "/db/v1/todos/records", Some(&bo), "shop", Some(forged.clone())).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("create rule of todos"), "{v}");
    let (st, _) = call(&api, "POST", "/db/v1/todos/records", None, "shop", Some(forged)).await;
    assert_eq!(st, 403);

    let list = |token: Option<String>, query: &str| {
        let (api, query) = (api.clone(), query.to_string());
        async move { call(&api, "GET", &format!("/db/v1/todos/records?{query}"), token.as_deref(), "shop", None).await }
    };
    let (st, v) = list(Some(sam.clone()), "sort=-prio&total=true").await;
    assert_eq!(
        (st, titles(&v), v["total"].as_u64()),
        (200, vec!["milk".into(), "bread".into(), "eggs".into()], Some(3))
    );
    let (_, v) = list(Some(bo.clone()), "").await;
    assert_eq!(titles(&v), vec!["nails".to_string()]);
    let (_, v) = list(None, "").await;
    assert_eq!(titles(&v), Vec::<String>::new(), "anonymous callers own nothing");
    // The admin sees every record; the filter, sort and pages apply.
    let f = q("prio >= 2 && tags ?= 'home'");
    let (_, v) = list(Some(ann.clone()), &format!("filter={f}&sort=prio&per_page=2&page=1&total=true")).await;
    assert_eq!((titles(&v), v["total"].as_u64()), (vec!["bread".into(), "milk".into()], Some(3)));
    let (_, v) = list(Some(ann.clone()), &format!("filter={f}&sort=prio&per_page=2&page=2&fields=title")).await;
    assert_eq!(titles(&v), vec!["nails".to_string()]);
    assert!(v["items"][0].get("owner").is_none() && v["items"][0]["id"].is_string(), "{v}");

    // Bad filters and sorts: 400 with where and what; injections are literals.
    let (st, v) = list(Some(sam.clone()), &format!("filter={}", q("prio >"))).await;
    assert_eq!(st, 400);
    assert!(v["detail"].as_str().unwrap().contains("at 6: expected a field or a value"), "{v}");
    for attack in ["title = '' OR 1=1 --'", "title = \"\\\"); DROP TABLE records; --\"", "title = 'milk\u{202e}'"] {
        let (st, v) = list(Some(ann.clone()), &format!("filter={}", q(attack))).await;
        assert!(st == 400 || (st == 200 && titles(&v).is_empty()), "refused or a literal: {attack}: {v}");
    }
    let (st, v) = list(Some(sam.clone()), "sort=prio;DROP").await;
    assert_eq!(st, 400, "{v}");
    let (st, _) = list(Some(sam.clone()), "per_page=100000").await;
    assert_eq!(st, 400);
    let (_, v) = list(Some(ann.clone()), "total=true").await;
    assert_eq!(v["total"], 4, "nothing was written or dropped: {v}");

    // One record: another's is not there for bo; schema and size are checked.
    let path = format!("/db/v1/todos/records/{}", ids[0]);
    let (st, v) = call(&api, "GET", &path, Some(&sam), "shop", None).await;
    assert_eq!((st, v["title"].as_str()), (200, Some("milk")));
    let (st, _) = call(&api, "GET", &path, Some(&bo), "shop", None).await;
    assert_eq!(st, 404);
    let (st, _) = call(&api, "PATCH", &path, Some(&bo), "shop", Some(json!({"data": {"title": "mine"}}))).await;
    assert_eq!(st, 404, "a record bo may not see does not exist for bo");
    for (bad, why) in [
        (json!({"data": {"prio": 10}}), "at most 9"),
        (json!({"data": {"done": "yes"}}), "true or false"),
        (json!({"data": {"nope": 1}}), "unknown field nope"),
        (json!({"data": {"owner": "bo"}}), "update rule of todos"),
    ] {
        let (st, v) = call(&api, "PATCH", &path, Some(&sam), "shop", Some(bad.clone())).await;
        assert!(st == 400 || st == 403, "{bad}: {st} {v}");
        assert!(v["detail"].as_str().unwrap_or("").contains(why), "{bad}: {v}");
    }
    let (st, v) =
        call(&api, "PATCH", &path, Some(&sam), "shop", Some(json!({"data": {"done": true}, "version": 1}))).await;
    assert_eq!((st, v["version"].as_u64(), v["title"].as_str()), (200, Some(2), Some("milk")), "{v}");
    // A stale version is a conflict.
    let (st, v) =
        call(&api, "PATCH", &path, Some(&sam), "shop", Some(json!({"data": {"prio": 0}, "version": 1}))).await;
    assert_eq!(st, 409, "{v}");
    // Replace keeps only what it is given (and the schema still holds).
    let (st, v) = call(&api, "PUT", &path, Some(&sam), "shop", Some(json!({"data": {"title": "oat milk"}}))).await;
    assert_eq!(st, 400, "owner is required: {v}");

    // Unique fields.
    let (st, _) = call(&api, "PATCH", &path, Some(&sam), "shop", Some(json!({"data": {"code": "A1"}}))).await;
    assert_eq!(st, 200);
    let other = format!("/db/v1/todos/records/{}", ids[1]);
    let (st, v) = call(&api, "PATCH", &other, Some(&sam), "shop", Some(json!({"data": {"code": "A1"}}))).await;
    assert_eq!(st, 409, "{v}");

    // The delete rule: only done todos.
    let (st, _) = call(&api, "DELETE", &other, Some(&sam), "shop", None).await;
    assert_eq!(st, 403);
    let (st, _) = call(&api, "DELETE", &path, Some(&sam), "shop", None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&api, "GET", &path, Some(&sam), "shop", None).await;
    assert_eq!(st, 404);

    // A batch is all or none: the last write's version is stale, so nothing is written.
    let batch = |v2: u64| {
        json!({"writes": [
            {"action": "update", "id": ids[1], "data": {"prio": 7}},
            {"action": "create", "data": {"title": "jam", "owner": "sam"}},
            {"action": "update", "id": ids[2], "data": {"done": true}, "version": v2},
        ]})
    };
    let (st, v) = call(&api, "POST", "/db/v1/todos/batch", Some(&sam), "shop", Some(batch(5))).await;
    assert_eq!(st, 409, "{v}");
    let (_, v) = list(Some(sam.clone()), "sort=title").await;
    assert_eq!(titles(&v), vec!["bread".to_string(), "eggs".into()], "{v}");
    assert_eq!(v["items"][1]["prio"], 1, "the first write of the refused batch is not there");
    let (st, v) = call(&api, "POST", "/db/v1/todos/batch", Some(&sam), "shop", Some(batch(1))).await;
    assert_eq!((st, v["records"].as_array().map(Vec::len)), (200, Some(3)), "{v}");
    // A batch that touches another's record is refused whole.
    let mixed = json!({"writes": [
        {"action": "create", "data": {"title": "x", "owner": "sam"}},
        {"action": "delete", "id": ids[3]},
    ]});
    let (st, _) = call(&api, "POST", "/db/v1/todos/batch", Some(&sam), "shop", Some(mixed)).await;
    assert_eq!(st, 404);
    let (_, v) = list(Some(ann.clone()), "total=true").await;
    assert_eq!(v["total"], 4, "{v}");
    let (st, v) = call(&api, "POST", "/db/v1/todos/batch", Some(&sam), "shop", Some(json!({"writes": []}))).await;
    assert_eq!(st, 400, "{v}");

    // Another namespace sees none of it, even with an account named sam; a token of
    // another namespace is refused in this one.
    let (st, v) = call(&api, "GET", "/db/v1/todos/records", Some(&blog), "blog", None).await;
    assert_eq!((st, titles(&v)), (200, Vec::<String>::new()), "{v}");
    let (st, _) = call(&api, "GET", "/db/v1/todos/records", Some(&blog), "shop", None).await;
    assert_eq!(st, 403);
    let (st, _) = call(&api, "GET", "/db/v1/collections", Some(&blog), "shop", None).await;
    assert_eq!(st, 403);
    let (st, v) = call(&api, "GET", "/db/v1/collections", Some(&ann), "shop", None).await;
    assert_eq!((st, v["collections"][0]["name"].as_str()), (200, Some("todos")), "{v}");
    let (st, _) = call(&api, "GET", "/db/v1/collections", Some(&sam), "shop", None).await;
    assert_eq!(st, 403, "a plain account does not see the specs");

    // A collection nobody made: locked to everyone but its managers, whose first write
    // makes it.
    let (st, _) = call(&api, "GET", "/db/v1/notes/records", Some(&sam), "shop", None).await;
    assert_eq!(st, 404);
    let (st, v) = call(&api, "POST", "/db/v1/notes/records", Some(&ann), "shop", Some(json!({"data": {"t": 1}}))).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&api, "GET", "/db/v1/notes/records", Some(&sam), "shop", None).await;
    assert_eq!(st, 403, "locked by default: {v}");

    // Schema evolution: rename a field in every record without downtime.
    let mut spec = todos_spec();
    spec["schema"][3]["name"] = json!("priority");
    spec["rename"] = json!({"prio": "priority"});
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = list(Some(sam.clone()), "sort=priority").await;
    assert_eq!(titles(&v), vec!["jam".to_string(), "bread".into(), "eggs".into()], "a missing field first: {v}");
    assert!(v["items"][2].get("prio").is_none() && v["items"][2]["priority"] == 7, "{v}");

    // Deleting the collection deletes its records.
    let (st, _) = call(&api, "DELETE", "/db/v1/collections/todos", Some(&ann), "shop", None).await;
    assert_eq!(st, 204);
    let (st, _) = call(&api, "GET", "/db/v1/todos/records", Some(&sam), "shop", None).await;
    assert_eq!(st, 404);
    let _ = s.stop();
}

async fn indexes_plans_and_aggregates(backend: Backend) {
    let Some((s, _schema)) = common::server(backend, "indexes_plans_and_aggregates", &[]).await else { return };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let spec = json!({"name": "orders", "rules": {"list": "owner = @request.auth.id"}});
    call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec.clone())).await;
    let writes: Vec<Value> = (0..300)
        .map(|i| {
            let (owner, status) = (["sam", "bo", "cy"][i % 3], ["new", "paid"][i % 2]);
            json!({"action": "create", "data": {"owner": owner, "status": status, "total": i}})
        })
        .collect();
    let (st, v) = call(&api, "POST", "/db/v1/orders/batch", Some(&ann), "shop", Some(json!({"writes": writes}))).await;
    assert_eq!(st, 200, "{v}");

    // Without an index the plan reads the whole collection; with one it searches it.
    let explain = format!("/db/v1/orders/explain?filter={}&sort=-total", q("owner = 'sam' && total > 100"));
    let (st, v) = call(&api, "GET", &explain, Some(&ann), "shop", None).await;
    assert_eq!((st, v["scan"].as_bool(), v["indexes"].as_array().map(Vec::len)), (200, Some(true), Some(0)), "{v}");
    let mut indexed = spec.clone();
    indexed["indexes"] = json!([{"fields": ["owner", "total"]}]);
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(indexed)).await;
    assert_eq!((st, v["indexes"][0]["fields"][0].as_str()), (200, Some("owner")), "{v}");
    let (_, v) = call(&api, "GET", &explain, Some(&ann), "shop", None).await;
    assert_eq!((v["scan"].as_bool(), v["indexes"][0].clone()), (Some(false), json!(["owner", "total"])), "{v}");
    let (st, _) = call(&api, "GET", &explain, Some(&sam), "shop", None).await;
    assert_eq!(st, 403, "plans are for the namespace's members");
    // A unique index over shared values is refused, and the spec stays as it was.
    let mut clash = spec.clone();
    clash["indexes"] = json!([{"fields": ["owner"], "unique": true}]);
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(clash)).await;
    assert_eq!(st, 409, "{v}");
    let (_, v) = call(&api, "GET", "/db/v1/collections/orders", Some(&ann), "shop", None).await;
    assert_eq!(v["indexes"].as_array().map(Vec::len), Some(1), "{v}");
    // An index naming a field twice, or two alike, are refused; so is making a collection
    // that exists when only making is asked for.
    for indexes in [json!([{"fields": ["owner", "owner"]}]), json!([{"fields": ["owner"]}, {"fields": ["owner"]}])] {
        let mut twice = spec.clone();
        twice["indexes"] = indexes;
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(twice)).await;
        assert_eq!(st, 400, "{v}");
    }
    let mut again = spec.clone();
    again["create_only"] = json!(true);
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(again)).await;
    assert_eq!(st, 409, "{v}");
    // A lookup by id is not a scan.
    let (_, v) = call(&api, "GET", "/db/v1/orders/explain?filter=id%3D'x'", Some(&ann), "shop", None).await;
    assert_eq!(v["scan"], false, "{v}");

    // Aggregates: grouped, filtered, and only over what the list rule shows.
    let body = json!({"group_by": ["status"], "aggregates": [{"op": "count"}, {"op": "sum", "field": "total"}]});
    let (st, v) = call(&api, "POST", "/db/v1/orders/aggregate", Some(&ann), "shop", Some(body.clone())).await;
    assert_eq!(st, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    let sum: i64 = rows.iter().map(|r| r["sum_total"].as_i64().unwrap()).sum();
    assert_eq!((rows.len(), sum, rows[0]["count"].as_i64()), (2, (0..300).sum::<i64>(), Some(150)), "{v}");
    let (_, v) = call(&api, "POST", "/db/v1/orders/aggregate", Some(&sam), "shop", Some(body)).await;
    let counts: i64 = v["rows"].as_array().unwrap().iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(counts, 100, "sam's orders only: {v}");
    let (st, v) = call(
        &api,
        "POST",
        "/db/v1/orders/aggregate",
        Some(&ann),
        "shop",
        Some(json!({"aggregates": [{"op": "median", "field": "total"}]})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = call(
        &api,
        "POST",
        "/db/v1/orders/aggregate",
        Some(&ann),
        "shop",
        Some(json!({"group_by": ["a); DROP TABLE records; --"]})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let twice = json!({"group_by": ["status", "status"]});
    let (st, v) = call(&api, "POST", "/db/v1/orders/aggregate", Some(&ann), "shop", Some(twice)).await;
    assert_eq!(st, 400, "{v}");
    let _ = s.stop();
}

async fn search_and_expanded_relations_follow_the_rules(backend: Backend) {
    let Some((s, _schema)) = common::server(backend, "search_and_expanded_relations_follow_the_rules", &[]).await
    else {
        return;
    };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    // Authors are public; their private notes are for their owner only.
    let authors = json!({"name": "authors", "rules": {"list": "", "view": ""}});
    let notes =
        json!({"name": "notes", "rules": {"list": "owner = @request.auth.id", "view": "owner = @request.auth.id"}});
    let posts = json!({
        "name": "posts",
        "schema": [
            {"name": "title", "type": "text"}, {"name": "body", "type": "text"},
            {"name": "author", "type": "relation", "collection": "authors"},
            {"name": "note", "type": "relation", "collection": "notes"}
        ],
        "search": ["title", "body"],
        "rules": {"list": "", "view": ""}
    });
    for spec in [authors, notes, posts] {
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
        assert_eq!(st, 200, "{v}");
    }
    let (_, author) =
        call(&api, "POST", "/db/v1/authors/records", Some(&ann), "shop", Some(json!({"data": {"name": "Ann"}}))).await;
    let (_, note) = call(
        &api,
        "POST",
        "/db/v1/notes/records",
        Some(&ann),
        "shop",
        Some(json!({"data": {"owner": "ann", "secret": "s3"}})),
    )
    .await;
    for (title, body) in [
        ("Rust databases", "SQLite and PostgreSQL"),
        ("Gardening", "basil"),
        ("Databases at scale", "databases, databases"),
    ] {
        let data = json!({"title": title, "body": body, "author": author["id"], "note": note["id"]});
        let (st, v) = call(&api, "POST", "/db/v1/posts/records", Some(&ann), "shop", Some(json!({"data": data}))).await;
        assert_eq!(st, 200, "{v}");
    }
    // Full-text search, ranked, with prefixes, for anyone the list rule lets in.
    let (st, v) = call(&api, "GET", "/db/v1/posts/search?text=databases", None, "shop", None).await;
    assert_eq!((st, titles(&v)), (200, vec!["Databases at scale".to_string(), "Rust databases".into()]), "{v}");
    let (_, v) = call(&api, "GET", "/db/v1/posts/search?text=postgre&prefix=true", None, "shop", None).await;
    assert_eq!(titles(&v), vec!["Rust databases".to_string()]);
    let (st, v) = call(&api, "GET", &format!("/db/v1/posts/search?text={}", q("* ( ) : \"")), None, "shop", None).await;
    assert_eq!(st, 400, "no words: {v}");
    let (st, _) = call(&api, "GET", "/db/v1/authors/search?text=ann", None, "shop", None).await;
    assert_eq!(st, 400, "a collection without search says so");

    // Expand: the public author comes along; the note only for its owner.
    let (st, v) =
        call(&api, "GET", "/db/v1/posts/records?expand=author,note&sort=title", Some(&sam), "shop", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"][0]["expand"]["author"]["name"], "Ann", "{v}");
    assert!(v["items"][0]["expand"].get("note").is_none_or(Value::is_null), "sam may not see ann's note: {v}");
    let (_, v) = call(&api, "GET", "/db/v1/posts/records?expand=author,note", None, "shop", None).await;
    assert!(v["items"][0]["expand"].get("note").is_none_or(Value::is_null), "{v}");
    let id = v["items"][0]["id"].as_str().unwrap().to_string();
    let (st, v) = call(&api, "GET", &format!("/db/v1/posts/records/{id}?expand=note"), Some(&ann), "shop", None).await;
    assert_eq!((st, v["expand"]["note"]["secret"].as_str()), (200, Some("s3")), "{v}");
    let (st, v) = call(&api, "GET", "/db/v1/posts/records?expand=title", Some(&ann), "shop", None).await;
    assert_eq!(st, 400, "{v}");
    let _ = s.stop();
}

async fn realtime_delivers_what_the_rules_let_each_subscriber_see(backend: Backend) {
    let Some((s, _schema)) =
        common::server(backend, "realtime_delivers_what_the_rules_let_each_subscriber_see", &[]).await
    else {
        return;
    };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let bo = s.account("shop", "bo", "user", &[]).await;
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(todos_spec())).await;
    assert_eq!(st, 200, "{v}");

    let mut sams = Events::open(&api, "/db/v1/todos/subscribe", Some(&sam), "shop").await;
    let first = sams.next().await;
    assert_eq!(first["action"], "subscribed", "{first}");
    let mut bos = Events::open(&api, "/db/v1/todos/subscribe", Some(&bo), "shop").await;
    assert_eq!(bos.next().await["action"], "subscribed");
    let mut admins =
        Events::open(&api, &format!("/db/v1/todos/subscribe?filter={}", q("done = true")), Some(&ann), "shop").await;
    assert_eq!(admins.next().await["action"], "subscribed");
    // Anonymous callers may not subscribe to what they could not read.
    let mut anon = Events::open(&api, "/db/v1/todos/subscribe", None, "shop").await;
    let a = anon.next().await;
    assert!(a["action"] == "subscribed" || a["action"] == "error", "{a}");

    let new = |title: &str, owner: &str| json!({"data": {"title": title, "owner": owner, "done": false}});
    let (_, r1) = call(&api, "POST", "/db/v1/todos/records", Some(&sam), "shop", Some(new("milk", "sam"))).await;
    let (_, r2) = call(&api, "POST", "/db/v1/todos/records", Some(&bo), "shop", Some(new("nails", "bo"))).await;
    let path = format!("/db/v1/todos/records/{}", r1["id"].as_str().unwrap());
    call(&api, "PATCH", &path, Some(&sam), "shop", Some(json!({"data": {"done": true}}))).await;
    call(&api, "DELETE", &path, Some(&sam), "shop", None).await;

    // sam gets his record's changes in commit order, bo only his, the admin's filter
    // only done ones.
    let got: Vec<Value> = vec![sams.next().await, sams.next().await, sams.next().await];
    let actions: Vec<&str> = got.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "update", "delete"], "{got:?}");
    assert!(got.iter().all(|e| e["record"]["owner"] == "sam"), "{got:?}");
    assert!(got.windows(2).all(|w| w[0]["cursor"].as_u64() < w[1]["cursor"].as_u64()), "{got:?}");
    sams.quiet(Duration::from_millis(500)).await.expect("nothing of bo's reaches sam");
    let b = bos.next().await;
    assert_eq!((b["action"].as_str(), b["record"]["id"].clone()), (Some("create"), r2["id"].clone()), "{b}");
    bos.quiet(Duration::from_millis(500)).await.expect("nothing of sam's reaches bo");
    let a = admins.next().await;
    assert_eq!((a["action"].as_str(), a["record"]["done"].as_bool()), (Some("update"), Some(true)), "{a}");
    let a = admins.next().await;
    assert_eq!(a["action"], "delete", "{a}");
    anon.quiet(Duration::from_millis(300)).await.expect("an anonymous subscriber owns nothing");

    // Resume: sam goes away, changes happen, and he picks up from his cursor without
    // losing any.
    let cursor = got[2]["cursor"].as_u64().unwrap();
    drop(sams);
    let (_, r3) = call(&api, "POST", "/db/v1/todos/records", Some(&sam), "shop", Some(new("eggs", "sam"))).await;
    call(&api, "POST", "/db/v1/todos/records", Some(&bo), "shop", Some(new("screws", "bo"))).await;
    let mut again = Events::open(&api, &format!("/db/v1/todos/subscribe?cursor={cursor}"), Some(&sam), "shop").await;
    assert_eq!(again.next().await["action"], "subscribed");
    let e = again.next().await;
    assert_eq!((e["action"].as_str(), e["record"]["id"].clone()), (Some("create"), r3["id"].clone()), "{e}");
    again.quiet(Duration::from_millis(500)).await.expect("only sam's");

    // A rule changed while subscribed holds for what is delivered next: the view rule
    // is locked, so sam gets nothing more.
    let mut locked = todos_spec();
    locked["rules"]["view"] = Value::Null;
    call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(locked)).await;
    call(&api, "POST", "/db/v1/todos/records", Some(&sam), "shop", Some(new("late", "sam"))).await;
    match again.quiet(Duration::from_millis(1500)).await {
        Ok(()) => {}
        Err(e) => assert_eq!(e["action"], "error", "a locked rule delivers nothing: {e}"),
    }
    // A cursor from the future is refused.
    let mut bad = Events::open(&api, "/db/v1/todos/subscribe?cursor=999999", Some(&ann), "shop").await;
    assert_eq!(bad.next().await["action"], "error");
    let _ = s.stop();
}

async fn the_cli_and_crashes_and_deleted_namespaces(backend: Backend) {
    let Some((s, _schema)) = common::server(backend, "the_cli_and_crashes_and_deleted_namespaces", &[]).await else {
        return;
    };
    let api = s.api.clone();
    s.admin_cli().await.ok(&["namespace", "create", "shop"]).await;
    let admin = s.admin_token().await;
    micro_test::create_account(&s.proxy, &admin, "shop", ("ann", "ann-secret-1"), "user", &["admin"]).await;
    let cli = s.cli();
    cli.ok(&["--namespace", "shop", "login", "--id", "ann", "--password", "ann-secret-1"]).await;
    let made = cli.json(&["db", "create", "--collection", "notes", "--data", r#"{"text":"hello","n":1}"#]).await;
    let id = made["id"].as_str().expect("an id").to_string();
    let got = cli.json(&["db", "get", "--collection", "notes", "--id", &id]).await;
    assert_eq!(got["text"], "hello");
    let listed = cli.json(&["db", "list", "--collection", "notes", "--filter", "n = 1", "--total"]).await;
    assert_eq!(listed["total"], 1, "{listed}");
    let err = cli.error(&["db", "list", "--collection", "notes", "--filter", "n = = 1"]).await;
    assert!(err.contains("at 4"), "{err}");

    // Export and import, as JSON lines and as CSV, with ids kept.
    let ann = micro_test::login(&s.proxy, "shop", "ann", "ann-secret-1").await;
    let writes: Vec<Value> =
        (0..600).map(|i| json!({"action": "create", "data": {"n": i + 10, "t": "a, \"b\"\nc"}})).collect();
    let (st, v) = call(&api, "POST", "/db/v1/notes/batch", Some(&ann), "shop", Some(json!({"writes": writes}))).await;
    assert_eq!(st, 200, "{v}");
    let dir = tempfile::tempdir().expect("temp dir");
    let (jsonl, csv) = (dir.path().join("notes.jsonl"), dir.path().join("notes.csv"));
    let (jsonl, csv) = (jsonl.to_str().unwrap(), csv.to_str().unwrap());
    cli.ok(&["db", "export", "--collection", "notes", "--output", jsonl]).await;
    assert_eq!(std::fs::read_to_string(jsonl).unwrap().lines().count(), 601, "every record, across pages");
    cli.ok(&["db", "export", "--collection", "notes", "--output", csv]).await;
    let out = cli.ok(&["db", "import", "--collection", "copy", "--file", jsonl]).await;
    assert!(out.contains("imported 601 records"), "{out}");
    let copied = cli.json(&["db", "get", "--collection", "copy", "--id", &id]).await;
    assert_eq!(copied["text"], "hello", "ids are kept: {copied}");
    let out = cli.ok(&["db", "import", "--collection", "fromcsv", "--file", csv]).await;
    assert!(out.contains("imported 601 records"), "{out}");
    let got = cli.json(&["db", "get", "--collection", "fromcsv", "--id", &id]).await;
    assert_eq!((got["text"].as_str(), got["n"].as_i64()), (Some("hello"), Some(1)), "{got}");
    // Importing the same ids again is refused, naming the lines; a broken file writes nothing.
    let err = cli.error(&["db", "import", "--collection", "copy", "--file", jsonl]).await;
    assert!(err.contains("lines 1-500 were not imported") && err.contains("0 records before"), "{err}");
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"a\": 1}\n{\"a\": 2\n").unwrap();
    let err = cli.error(&["db", "import", "--collection", "broken", "--file", broken.to_str().unwrap()]).await;
    assert!(err.contains("line 2: not JSON"), "{err}");
    let err = cli.error(&["db", "export", "--collection", "notes", "--format", "xml"]).await;
    assert!(err.contains("unknown format"), "{err}");

    // Acknowledged writes survive a SIGKILL; a batch is whole or absent.
    let (_, v) = call(&api, "GET", "/db/v1/broken/records", Some(&ann), "shop", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "nothing of the broken file: {v}");
    // Three crashes at different moments: each batch (its own marker) is whole or absent,
    // every acknowledged write is there, and nothing is doubled.
    let mut s = s;
    let mut acked: Vec<String> = Vec::new();
    for (round, delay) in [(0u64, 1u64), (1, 6), (2, 15)] {
        let api = s.api.clone();
        let ann = micro_test::login(&s.proxy, "shop", "ann", "ann-secret-1").await;
        for i in 0..10 {
            let data = json!({"data": {"n": i, "round": round}});
            let (st, v) = call(&api, "POST", "/db/v1/notes/records", Some(&ann), "shop", Some(data)).await;
            assert_eq!(st, 200, "{v}");
            acked.push(v["id"].as_str().unwrap().to_string());
        }
        let writes: Vec<Value> =
            (0..200).map(|i| json!({"action": "create", "data": {"batch": round, "i": i}})).collect();
        let (api2, ann2) = (api.clone(), ann.clone());
        let racing = tokio::spawn(async move {
            call(&api2, "POST", "/db/v1/notes/batch", Some(&ann2), "shop", Some(json!({"writes": writes}))).await
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let restart = s.kill();
        // Cut off by the kill (its connection reset): not acknowledged.
        let st = racing.await.map_or(0, |(st, _)| st);
        s = restart.start();
        let api = s.api.clone();
        let ann = micro_test::login(&s.proxy, "shop", "ann", "ann-secret-1").await;
        for id in &acked {
            let (st, _) = call(&api, "GET", &format!("/db/v1/notes/records/{id}"), Some(&ann), "shop", None).await;
            assert_eq!(st, 200, "acknowledged record {id} is lost");
        }
        let filter = micro_test::query_value(&format!("batch = {round}"));
        let (_, v) =
            call(&api, "GET", &format!("/db/v1/notes/records?filter={filter}&total=true"), Some(&ann), "shop", None)
                .await;
        let n = v["total"].as_u64().unwrap();
        assert!(n == 0 || n == 200, "round {round}: a batch is all or nothing across a crash, found {n}");
        assert!(st != 200 || n == 200, "round {round}: the batch was acknowledged, so it is all there ({n})");
        let (_, v) =
            call(&api, "GET", "/db/v1/notes/records?filter=round%20!%3D%20null&total=true", Some(&ann), "shop", None)
                .await;
        assert_eq!(v["total"].as_u64(), Some(acked.len() as u64), "nothing doubled");
    }
    let api = s.api.clone();

    // Deleting the namespace deletes its collections and records.
    let root = s.admin_cli().await;
    root.ok(&["namespace", "delete", "shop"]).await;
    // It could not be made again while anything of it remained.
    root.ok(&["namespace", "create", "shop"]).await;
    let admin = s.admin_token().await;
    let (st, v) = call(&api, "GET", "/db/v1/notes/records", Some(&admin), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let _ = s.stop();
}
