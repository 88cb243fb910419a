//! The database product: a member of the namespace, an anonymous caller and a tenant of
//! another namespace try to read what the collections' rules hide (through realtime,
//! ids, versions and rules that do not mean what they say), to keep a subscription after
//! the collection or the namespace is gone, and to swamp the realtime delivery.

use super::*;
use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::query_value as q;
use micro_test::sse::Events;
use serde_json::{Value, json};

async fn save(api: &str, admin: &str, spec: Value) {
    let (st, v) = call(api, "POST", "/db/v1/collections", Some(admin), "shop", Some(spec)).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_records_stay_hidden_through_realtime_ids_and_versions() {
    let s = ServerProcess::start(&micro(), &[("MICRO_DB_MAX_SUBSCRIPTIONS", "6")]);
    let api = s.api.clone();
    let boss = s.account("shop", "boss", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let eve = s.account("shop", "eve", "user", &[]).await;
    // A stranger with the same account name in another namespace.
    let other_sam = s.account("blog", "sam", "user", &["admin"]).await;

    // Tickets: fetched by id by anyone who has the link, never listed.
    save(&api, &boss, json!({"name": "tickets", "rules": {"view": "", "create": "@request.auth.id != ''"}})).await;
    let (st, secret) =
        call(&api, "POST", "/db/v1/tickets/records", Some(&sam), "shop", Some(json!({"data": {"seat": "12A"}}))).await;
    assert_eq!(st, 200, "{secret}");
    // Eve subscribes to the whole collection from the beginning of the change log: the
    // list rule (locked) refuses what the view rule alone would let through.
    let mut all = Events::open(&api, "/db/v1/tickets/subscribe?cursor=0", Some(&eve), "shop").await;
    assert_eq!(all.next().await["action"], "error", "a whole collection needs the list rule too");
    // One record by id is what the view rule allows.
    let path = format!("/db/v1/tickets/subscribe?id={}", secret["id"].as_str().unwrap());
    let mut one = Events::open(&api, &path, Some(&eve), "shop").await;
    assert_eq!(one.next().await["action"], "subscribed");

    // A record made, deleted and made again under the same id goes on from its last
    // version: a stale compare-and-set does not match the new one.
    save(&api, &boss, json!({"name": "notes", "rules": {"list": "owner = @request.auth.id", "view": "owner = @request.auth.id",
        "create": "owner = @request.auth.id", "update": "owner = @request.auth.id", "delete": "owner = @request.auth.id"}}))
    .await;
    let mine = json!({"id": "n1", "data": {"owner": "sam", "text": "v1"}});
    call(&api, "POST", "/db/v1/notes/records", Some(&sam), "shop", Some(mine.clone())).await;
    let (st, _) = call(&api, "DELETE", "/db/v1/notes/records/n1", Some(&sam), "shop", None).await;
    assert_eq!(st, 204);
    let (st, again) = call(&api, "POST", "/db/v1/notes/records", Some(&sam), "shop", Some(mine)).await;
    assert_eq!((st, again["version"].as_u64()), (200, Some(2)), "{again}");
    let stale = json!({"data": {"text": "from a stale copy"}, "version": 1});
    let (st, _) = call(&api, "PATCH", "/db/v1/notes/records/n1", Some(&sam), "shop", Some(stale)).await;
    assert_eq!(st, 409);

    // Whether a hidden record has an id is not told to whom the create rule refuses.
    let probe = json!({"id": "n1", "data": {"owner": "sam"}});
    let (st, v) = call(&api, "POST", "/db/v1/notes/records", Some(&eve), "shop", Some(probe)).await;
    assert_eq!(st, 403, "the rule answers before the id does: {v}");
    let probe = json!({"id": "n1", "data": {"owner": "eve"}});
    let (st, v) = call(&api, "POST", "/db/v1/notes/records", Some(&eve), "shop", Some(probe)).await;
    assert_eq!(st, 409, "an id is one per collection: {v}");
    let (st, v) = call(&api, "GET", "/db/v1/notes/records/n1", Some(&eve), "shop", None).await;
    assert_eq!(st, 404, "{v}");

    // A write-only collection (view locked): a member's update is not found, not a crash.
    save(&api, &boss, json!({"name": "drops", "rules": {"create": "", "update": ""}})).await;
    let (_, d) = call(&api, "POST", "/db/v1/drops/records", Some(&eve), "shop", Some(json!({"data": {"x": 1}}))).await;
    let (st, v) = call(
        &api,
        "PATCH",
        &format!("/db/v1/drops/records/{}", d["id"].as_str().unwrap()),
        Some(&eve),
        "shop",
        Some(json!({"data": {"x": 2}})),
    )
    .await;
    assert_eq!(st, 404, "{v}");

    // A rule naming a caller's field that does not exist would hold for everyone: refused.
    let lax = json!({"name": "vault", "rules": {"list": "@request.auth.role != 'banned'"}});
    let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&boss), "shop", Some(lax)).await;
    assert_eq!(st, 400, "{v}");

    // The other namespace's sam owns nothing here and cannot act here.
    let (st, _) = call(&api, "GET", "/db/v1/notes/records", Some(&other_sam), "shop", None).await;
    assert_eq!(st, 403);
    let mut theirs = Events::open(&api, "/db/v1/notes/subscribe", Some(&other_sam), "shop").await;
    assert_eq!(theirs.next().await["action"], "error");

    // Subscriptions are counted per namespace: past the limit they are refused.
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut e = Events::open(&api, "/db/v1/notes/subscribe", Some(&sam), "shop").await;
        if e.next().await["action"] == "subscribed" {
            held.push(e);
        }
    }
    let mut over = Events::open(&api, "/db/v1/notes/subscribe", Some(&sam), "shop").await;
    assert_eq!(over.next().await["action"], "error", "{} were open", held.len() + 1);
    drop(held);
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscription_outlives_its_collection_its_namespace_or_removed_fields() {
    let s = ServerProcess::start(&micro(), &[]);
    let api = s.api.clone();
    s.admin_cli().await.ok(&["namespace", "create", "shop"]).await;
    let boss = s.account("shop", "boss", "user", &["admin"]).await;
    let sam = s.account("shop", "sam", "user", &[]).await;
    let public = json!({"list": "", "view": "", "create": "", "update": ""});
    save(&api, &boss, json!({"name": "board", "rules": public})).await;
    let (_, r) = call(
        &api,
        "POST",
        "/db/v1/board/records",
        Some(&sam),
        "shop",
        Some(json!({"data": {"pin": "1234", "text": "hi"}})),
    )
    .await;

    // A field removed from every record is not replayed from the change log: a cursor
    // from before the removal cannot resume.
    let mut before = Events::open(&api, "/db/v1/board/subscribe?cursor=0", None, "shop").await;
    assert_eq!(before.next().await["action"], "subscribed");
    let first = before.next().await;
    assert_eq!(first["record"]["pin"], "1234", "{first}");
    drop(before);
    let schemaless = json!({"name": "board", "rules": public, "drop": ["pin"]});
    save(&api, &boss, schemaless).await;
    let mut replay = Events::open(&api, "/db/v1/board/subscribe?cursor=0", None, "shop").await;
    assert_eq!(replay.next().await["action"], "error", "the old changes held the pin");
    let (_, now) =
        call(&api, "GET", &format!("/db/v1/board/records/{}", r["id"].as_str().unwrap()), None, "shop", None).await;
    assert!(now.get("pin").is_none() && now["version"] == 2, "removing a field is a write: {now}");

    // Deleting the collection ends its subscriptions.
    let mut live = Events::open(&api, "/db/v1/board/subscribe", None, "shop").await;
    let sub = live.next().await;
    assert_eq!(sub["action"], "subscribed");
    // Another tenant writes meanwhile: the subscriber still gets the reset.
    let stranger = s.account("blog", "bea", "user", &["admin"]).await;
    let (st, _) =
        call(&api, "POST", "/db/v1/notes/records", Some(&stranger), "blog", Some(json!({"data": {"x": 1}}))).await;
    assert_eq!(st, 200);
    let (st, _) = call(&api, "DELETE", "/db/v1/collections/board", Some(&boss), "shop", None).await;
    assert_eq!(st, 204);
    assert_eq!(live.next().await["action"], "reset", "the collection is gone, and what the subscriber holds with it");
    assert_eq!(live.within(std::time::Duration::from_secs(2)).await, None, "the subscription ended");

    // A namespace deleted and made again: a subscriber of the old one (even its admin)
    // gets nothing of the new one's records, and the old cursor cannot resume.
    save(&api, &boss, json!({"name": "board", "rules": public})).await;
    let mut old = Events::open(&api, "/db/v1/board/subscribe", Some(&boss), "shop").await;
    let cursor = old.next().await["cursor"].as_u64().unwrap();
    let root = s.admin_cli().await;
    root.ok(&["namespace", "delete", "shop"]).await;
    root.ok(&["namespace", "create", "shop"]).await;
    let heir = s.account("shop", "heir", "user", &["admin"]).await;
    save(&api, &heir, json!({"name": "board", "rules": {"create": ""}})).await;
    call(&api, "POST", "/db/v1/board/records", Some(&heir), "shop", Some(json!({"data": {"secret": "new owner's"}})))
        .await;
    let got = old.next().await;
    assert_eq!(got["action"], "reset", "the old subscription saw {got}");
    assert_eq!(old.within(std::time::Duration::from_secs(2)).await, None, "and nothing of the new owner's");
    // Resuming from the old namespace's cursor: told that everything before is gone.
    let mut resumed = Events::open(&api, &format!("/db/v1/board/subscribe?cursor={cursor}"), Some(&heir), "shop").await;
    assert_eq!(resumed.next().await["action"], "subscribed");
    assert_eq!(resumed.next().await["action"], "reset", "a cursor of the old namespace");
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_filter_holds_up_no_other_subscriber() {
    let s = ServerProcess::start(&micro(), &[]);
    let api = s.api.clone();
    let boss = s.account("shop", "boss", "user", &["admin"]).await;
    save(&api, &boss, json!({"name": "docs", "rules": {"list": "", "view": "", "create": "", "update": ""}})).await;
    // The attacker's filter: a contains-test over a big document, slow per record.
    let slow = format!("t ~ '{}b'", "a".repeat(3000));
    let mut attacker = Events::open(&api, &format!("/db/v1/docs/subscribe?filter={}", q(&slow)), None, "shop").await;
    assert_eq!(attacker.next().await["action"], "subscribed");
    let mut honest = Events::open(&api, "/db/v1/docs/subscribe", None, "shop").await;
    assert_eq!(honest.next().await["action"], "subscribed");
    let big = json!({"data": {"t": "a".repeat(900_000)}});
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let (st, v) = call(&api, "POST", "/db/v1/docs/records", None, "shop", Some(big.clone())).await;
        assert_eq!(st, 200, "{v}");
    }
    for _ in 0..3 {
        assert_eq!(honest.next().await["action"], "create");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let _ = s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscriptions_block_no_other_call() {
    let s = ServerProcess::start(&micro(), &[]);
    let api = s.api.clone();
    let boss = s.account("shop", "boss", "user", &["admin"]).await;
    save(&api, &boss, json!({"name": "feed", "rules": {"list": "", "view": ""}})).await;
    let bea = s.account("blog", "bea", "user", &["admin"]).await;
    // More subscriptions than one HTTP/2 connection used to carry (1024): each is a
    // stream of the gateway's connection to the product.
    let mut open = Vec::new();
    for _ in 0..1100 {
        open.push(Events::open(&api, "/db/v1/feed/subscribe", None, "shop").await);
    }
    let mut subscribed = 0;
    for e in &mut open {
        if e.next().await["action"] == "subscribed" {
            subscribed += 1;
        }
    }
    assert_eq!(subscribed, 1100);
    // Another tenant's calls go through beside them, at once.
    let started = std::time::Instant::now();
    let (st, v) = call(&api, "POST", "/db/v1/notes/records", Some(&bea), "blog", Some(json!({"data": {"x": 1}}))).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = call(&api, "GET", "/db/v1/notes/records", Some(&bea), "blog", None).await;
    assert_eq!(st, 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    drop(open);
    let _ = s.stop();
}

/// A tenant cannot pile up indexes on the records table every namespace shares (each one
/// is looked at by every write and plan), nor name one so that it lands on another's, on
/// either backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_pile_up_or_take_over_indexes() {
    let pg = micro_test::backend_url("MICRO_TEST_POSTGRES");
    let schema = match &pg {
        Some(base) => Some(micro_test::PgSchema::create(base, "micro_attack_db_indexes").await),
        None => None,
    };
    let mut servers = vec![ServerProcess::start(&micro(), &[])];
    if let Some(schema) = &schema {
        servers.push(ServerProcess::start(&micro(), &[("MICRO_DB_URL", schema.url.as_str())]));
    }
    for s in &servers {
        let api = s.api.clone();
        let admin = s.account("shop", "ann", "user", &["admin"]).await;
        let victim = s.account("acme", "vic", "user", &["admin"]).await;
        // The victim's unique index on its users' names.
        let users = json!({"name": "users", "indexes": [{"fields": ["name"], "unique": true}]});
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&victim), "acme", Some(users)).await;
        assert_eq!(st, 200, "{v}");
        // The attacker's namespace: 16 indexes a collection, 4 collections, then a fifth.
        let fields: Vec<Value> = (0..16).map(|i| json!({"fields": [format!("f{i}")]})).collect();
        for c in 0..4 {
            let spec = json!({"name": format!("c{c}"), "indexes": fields});
            let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&admin), "shop", Some(spec)).await;
            assert_eq!(st, 200, "{v}");
        }
        let spec = json!({"name": "c4", "indexes": [{"fields": ["x"]}]});
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&admin), "shop", Some(spec)).await;
        assert_eq!(st, 400, "{v}");
        assert!(v["detail"].as_str().unwrap_or("").contains("at most 64"), "{v}");
        // Dropping the attacker's indexes (and its namespace) leaves the victim's holding.
        for c in 0..4 {
            let (st, _) = call(&api, "DELETE", &format!("/db/v1/collections/c{c}"), Some(&admin), "shop", None).await;
            assert_eq!(st, 204);
        }
        let spec = json!({"name": "users", "indexes": [{"fields": ["name"], "unique": true}]});
        let (st, _) = call(&api, "POST", "/db/v1/collections", Some(&admin), "shop", Some(spec)).await;
        assert_eq!(st, 200, "the same definition in another namespace is an index of its own");
        call(&api, "DELETE", "/db/v1/collections/users", Some(&admin), "shop", None).await;
        let add = |n: &str| json!({"data": {"name": n}});
        let (st, _) = call(&api, "POST", "/db/v1/users/records", Some(&victim), "acme", Some(add("vic"))).await;
        assert_eq!(st, 200);
        let (st, v) = call(&api, "POST", "/db/v1/users/records", Some(&victim), "acme", Some(add("vic"))).await;
        assert_eq!(st, 409, "the victim's unique index still holds: {v}");
    }
    drop(servers);
    if let Some(schema) = schema {
        schema.drop().await;
    }
}
