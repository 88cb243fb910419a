//! Two `micro server` nodes sharing one PostgreSQL database (a cluster: `MICRO_BACKEND`):
//! both host the database product on the shared records, so a write on one is read,
//! listed and delivered live on the other, in commit order, and a compare-and-set
//! holds across them. (The two nodes' own accounts and keys are the cluster's too.)

use micro_test::call_json as call;
use micro_test::process::ServerProcess;
use micro_test::sse::Events;
use serde_json::{Value, json};
use std::time::Duration;

fn micro() -> std::path::PathBuf {
    micro_test::process::binary(micro_test::sibling_binary("micro"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_on_one_node_is_seen_live_on_the_other() {
    let Some(pg) = micro_conformance::backend_url("MICRO_TEST_POSTGRES") else { return };
    let schema = micro_test::PgSchema::create(&pg, &format!("micro_db_cluster_{}", std::process::id())).await;
    let env = [("MICRO_BACKEND", schema.url.as_str())];
    let a = ServerProcess::start(&micro(), &env);
    let b = ServerProcess::start(&micro(), &env);
    // Accounts and tokens are the cluster's: made on A, honoured on B.
    let ann = a.account("shop", "ann", "user", &["admin"]).await;
    let sam = a.account("shop", "sam", "user", &[]).await;
    let spec = json!({
        "name": "todos",
        "rules": {"list": "owner = @request.auth.id", "view": "owner = @request.auth.id",
                  "create": "owner = @request.auth.id", "update": "owner = @request.auth.id"},
        "indexes": [{"fields": ["owner"]}],
        "search": ["title"]
    });
    let (st, v) = call(&a.api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(&b.api, "GET", "/db/v1/collections/todos", Some(&ann), "shop", None).await;
    assert_eq!((st, v["name"].as_str()), (200, Some("todos")), "B has A's collection: {v}");

    // sam subscribes on B; writes come from A and B at once.
    let mut live = Events::open(&b.api, "/db/v1/todos/subscribe", Some(&sam), "shop").await;
    assert_eq!(live.next().await["action"], "subscribed");
    let mut writers = Vec::new();
    for (node, api) in [("a", a.api.clone()), ("b", b.api.clone())] {
        let sam = sam.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                let body = json!({"data": {"owner": "sam", "title": format!("{node}{i}")}});
                let (st, v) = call(&api, "POST", "/db/v1/todos/records", Some(&sam), "shop", Some(body)).await;
                assert_eq!(st, 200, "{v}");
                ids.push(v["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    // Every write arrives once, cursors rising: the change log is in commit order.
    let mut seen = Vec::new();
    let mut last = 0u64;
    while seen.len() < written.len() {
        let e = live.within(Duration::from_secs(10)).await.expect("every change arrives on B");
        assert_eq!(e["action"], "create", "{e}");
        let cursor = e["cursor"].as_u64().unwrap();
        assert!(cursor > last, "cursors rise: {cursor} after {last}");
        last = cursor;
        seen.push(e["record"]["id"].as_str().unwrap().to_string());
    }
    let (mut s1, mut s2) = (seen.clone(), written.clone());
    s1.sort();
    s2.sort();
    assert_eq!(s1, s2, "each write once");

    // Read, listed and filtered on the other node; the index is used there too.
    let (st, v) = call(&b.api, "GET", &format!("/db/v1/todos/records/{}", written[0]), Some(&sam), "shop", None).await;
    assert_eq!((st, v["title"].as_str()), (200, Some("a0")), "{v}");
    let (_, v) = call(&a.api, "GET", "/db/v1/todos/records?total=true&per_page=1", Some(&sam), "shop", None).await;
    assert_eq!(v["total"], 30, "{v}");
    let filter = format!("/db/v1/todos/records?filter={}&total=true", micro_test::query_value("title ~ 'b1'"));
    let (_, v) = call(&b.api, "GET", &filter, Some(&sam), "shop", None).await;
    assert_eq!(v["total"], 6, "b1 and b10 to b14: {v}");
    // Searched on A, written on both.
    let (st, v) = call(&a.api, "GET", "/db/v1/todos/search?text=b12", Some(&sam), "shop", None).await;
    assert_eq!((st, v["items"].as_array().map(Vec::len)), (200, Some(1)), "{v}");

    // Compare-and-set across nodes: of two updates expecting version 1, one wins.
    let path = format!("/db/v1/todos/records/{}", written[1]);
    let body = |t: &str| json!({"data": {"title": t}, "version": 1});
    let (ra, rb) = tokio::join!(
        call(&a.api, "PATCH", &path, Some(&sam), "shop", Some(body("from a"))),
        call(&b.api, "PATCH", &path, Some(&sam), "shop", Some(body("from b")))
    );
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{ra:?} {rb:?}");
    let (_, v) = call(&b.api, "GET", &path, Some(&sam), "shop", None).await;
    assert_eq!(v["version"], 2, "{v}");

    // Deleting the collection on A ends B's subscription with a reset.
    let (st, v) = call(&a.api, "DELETE", "/db/v1/collections/todos", Some(&ann), "shop", None).await;
    assert_eq!(st, 204, "{v}");
    let mut reset = false;
    while let Some(e) = live.within(Duration::from_secs(10)).await {
        if e["action"] == "reset" {
            reset = true;
            break;
        }
    }
    assert!(reset, "B's subscriber is told the collection is gone");
    let (st, _): (u16, Value) = call(&b.api, "GET", &path, Some(&ann), "shop", None).await;
    assert_eq!(st, 404);
    let _ = a.stop();
    let _ = b.stop();
    schema.drop().await;
}
