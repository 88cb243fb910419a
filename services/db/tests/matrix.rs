//! The rules matrix: every kind of caller (anonymous, the record's owner, another user,
//! the namespace's admin) × every operation (list, view, create, update, delete, live
//! delivery, expansion from another collection) × every kind of rule (locked, anyone,
//! the owner's only), through the real server; and realtime over each transport
//! (server-sent events, WebSocket, a gRPC server stream).
// The tests are `async fn(Backend)`s that `on_both_backends!` makes into two tests each.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use micro_test::call_json as call;
use micro_test::sse::Events;
use serde_json::{Value, json};
use std::time::Duration;

#[macro_use]
mod common;

use common::Backend;

on_both_backends!(every_caller_gets_what_each_rule_says_and_nothing_more, realtime_over_websocket_and_a_grpc_stream);

/// A kind of rule, as a collection's rules for every operation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Locked,
    Anyone,
    Owner,
}

impl Kind {
    fn rule(self) -> Value {
        match self {
            Kind::Locked => Value::Null,
            Kind::Anyone => json!(""),
            Kind::Owner => json!("owner = @request.auth.id"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Locked => "locked",
            Kind::Anyone => "anyone",
            Kind::Owner => "owner",
        }
    }
}

/// A caller: who, and its token.
struct Caller {
    who: &'static str,
    token: Option<String>,
    admin: bool,
}

impl Caller {
    /// Whether `kind` lets this caller at sam's record (the owner is `sam`).
    fn may(&self, kind: Kind) -> bool {
        self.admin
            || match kind {
                Kind::Locked => false,
                Kind::Anyone => true,
                Kind::Owner => self.who == "sam",
            }
    }
}

async fn every_caller_gets_what_each_rule_says_and_nothing_more(backend: Backend) {
    let Some((s, _schema)) =
        common::server(backend, "every_caller_gets_what_each_rule_says_and_nothing_more", &[]).await
    else {
        return;
    };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let callers = [
        Caller { who: "anonymous", token: None, admin: false },
        Caller { who: "sam", token: Some(s.account("shop", "sam", "user", &[]).await), admin: false },
        Caller { who: "bo", token: Some(s.account("shop", "bo", "user", &[]).await), admin: false },
        Caller { who: "ann", token: Some(ann.clone()), admin: true },
    ];
    for kind in [Kind::Locked, Kind::Anyone, Kind::Owner] {
        let c = format!("things_{}", kind.name());
        let r = kind.rule();
        let spec = json!({"name": c, "rules": {"list": r, "view": r, "create": r, "update": r, "delete": r}});
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
        assert_eq!(st, 200, "{v}");
        // Posts, public, point at the things: expanding one shows it only to whom its
        // view rule shows it.
        let posts = format!("posts_{}", kind.name());
        let spec = json!({"name": posts, "schema": [{"name": "thing", "type": "relation", "collection": c}],
            "rules": {"list": "", "view": ""}});
        let (st, v) = call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;
        assert_eq!(st, 200, "{v}");

        for caller in &callers {
            let t = caller.token.as_deref();
            let here = format!("{kind:?} × {}", caller.who);
            let may = caller.may(kind);
            // sam's record, made by the admin.
            let data = json!({"data": {"owner": "sam", "secret": format!("{}-{}", kind.name(), caller.who)}});
            let (_, thing) = call(&api, "POST", &format!("/db/v1/{c}/records"), Some(&ann), "shop", Some(data)).await;
            let id = thing["id"].as_str().expect("an id").to_string();
            let link = json!({"data": {"thing": id}});
            call(&api, "POST", &format!("/db/v1/{posts}/records"), Some(&ann), "shop", Some(link)).await;
            // Subscribed before the change that follows.
            let mut live = Events::open(&api, &format!("/db/v1/{c}/subscribe?id={id}"), t, "shop").await;
            let first = live.next().await;

            // list
            let (st, v) = call(&api, "GET", &format!("/db/v1/{c}/records?filter=id%3D'{id}'"), t, "shop", None).await;
            let listed = v["items"].as_array().map_or(0, Vec::len);
            match (kind, may) {
                (Kind::Locked, false) => assert_eq!(st, 403, "{here}: list"),
                (_, true) => assert_eq!((st, listed), (200, 1), "{here}: list {v}"),
                (_, false) => assert_eq!((st, listed), (200, 0), "{here}: list {v}"),
            }
            // view
            let (st, v) = call(&api, "GET", &format!("/db/v1/{c}/records/{id}"), t, "shop", None).await;
            match (kind, may) {
                (_, true) => assert_eq!((st, v["secret"].is_string()), (200, true), "{here}: view"),
                (Kind::Locked, false) => assert_eq!(st, 403, "{here}: view"),
                (_, false) => assert_eq!(st, 404, "{here}: view {v}"),
            }
            // expand from the public posts
            let (st, v) = call(
                &api,
                "GET",
                &format!("/db/v1/{posts}/records?expand=thing&filter=thing%3D'{id}'"),
                t,
                "shop",
                None,
            )
            .await;
            let expanded = v["items"][0]["expand"]["thing"]["secret"].is_string();
            assert_eq!((st, expanded), (200, may), "{here}: expand {v}");
            // update, seen live by whom the rules show it
            let (st, v) =
                call(&api, "PATCH", &format!("/db/v1/{c}/records/{id}"), t, "shop", Some(json!({"data": {"n": 1}})))
                    .await;
            match (kind, may) {
                (_, true) => assert_eq!(st, 200, "{here}: update {v}"),
                (Kind::Locked, false) => assert_eq!(st, 403, "{here}: update"),
                (_, false) => assert_eq!(st, 404, "{here}: update {v}"),
            }
            if !may {
                // Made live by the admin, then: the subscriber must not see it.
                call(
                    &api,
                    "PATCH",
                    &format!("/db/v1/{c}/records/{id}"),
                    Some(&ann),
                    "shop",
                    Some(json!({"data": {"n": 2}})),
                )
                .await;
            }
            match (kind, may) {
                (Kind::Locked, false) => assert_eq!(first["action"], "error", "{here}: subscribe"),
                (_, true) => {
                    assert_eq!(first["action"], "subscribed", "{here}");
                    let e = live.next().await;
                    assert_eq!(
                        (e["action"].as_str(), e["record"]["n"].as_i64()),
                        (Some("update"), Some(1)),
                        "{here}: live"
                    );
                }
                (_, false) => {
                    assert_eq!(first["action"], "subscribed", "{here}");
                    assert_eq!(live.within(Duration::from_millis(700)).await, None, "{here}: live shows nothing");
                }
            }
            // create: sam's record (a stranger may not make one for sam)
            let (st, _) =
                call(&api, "POST", &format!("/db/v1/{c}/records"), t, "shop", Some(json!({"data": {"owner": "sam"}})))
                    .await;
            let expected = match (kind, may) {
                (_, true) => 200,
                _ => 403,
            };
            assert_eq!(st, expected, "{here}: create");
            // delete
            let (st, _) = call(&api, "DELETE", &format!("/db/v1/{c}/records/{id}"), t, "shop", None).await;
            match (kind, may) {
                (_, true) => assert_eq!(st, 204, "{here}: delete"),
                (Kind::Locked, false) => assert_eq!(st, 403, "{here}: delete"),
                (_, false) => assert_eq!(st, 404, "{here}: delete"),
            }
            let (st, _) = call(&api, "GET", &format!("/db/v1/{c}/records/{id}"), Some(&ann), "shop", None).await;
            assert_eq!(st, if may { 404 } else { 200 }, "{here}: still there unless deleted");
        }
    }
    let _ = s.stop();
}

async fn realtime_over_websocket_and_a_grpc_stream(backend: Backend) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let Some((s, _schema)) = common::server(backend, "realtime_over_websocket_and_a_grpc_stream", &[]).await else {
        return;
    };
    let api = s.api.clone();
    let ann = s.account("shop", "ann", "user", &["admin"]).await;
    let spec = json!({"name": "feed", "rules": {"list": "", "view": ""}});
    call(&api, "POST", "/db/v1/collections", Some(&ann), "shop", Some(spec)).await;

    // A WebSocket: one JSON message an event.
    let mut req = format!("ws://{api}/db/v1/feed/subscribe").into_client_request().expect("a request");
    req.headers_mut().insert("micro-namespace", "shop".parse().expect("a header"));
    let tcp = tokio::net::TcpStream::connect(&api).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.expect("a websocket");
    assert_eq!(next_ws(&mut ws).await["action"], "subscribed");

    // A gRPC server stream through the proxy, as any service's client calls it.
    let client = micro::Client::via_proxy(&s.proxy).namespace("shop");
    let request = bytes::Bytes::from(json!({"collection": "feed"}).to_string());
    let mut grpc = client
        .stream_json("db", "Db.Subscribe", futures::stream::iter([request]), &micro::CallOptions::default())
        .await
        .expect("a stream");
    let first: Value = serde_json::from_slice(&grpc.next().await.expect("an event").expect("ok")).expect("JSON");
    assert_eq!(first["action"], "subscribed");

    call(&api, "POST", "/db/v1/feed/records", Some(&ann), "shop", Some(json!({"data": {"n": 7}}))).await;
    let e = next_ws(&mut ws).await;
    assert_eq!((e["action"].as_str(), e["record"]["n"].as_i64()), (Some("create"), Some(7)), "{e}");
    let e: Value = serde_json::from_slice(
        &tokio::time::timeout(Duration::from_secs(10), grpc.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("ok"),
    )
    .expect("JSON");
    assert_eq!((e["action"].as_str(), e["record"]["n"].as_i64()), (Some("create"), Some(7)), "{e}");
    let _ = ws.close(None).await;
    let _ = s.stop();
}

/// The next WebSocket message, as JSON (within 10 s).
async fn next_ws(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    use tokio_tungstenite::tungstenite::Message;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a message").expect("open") {
        Ok(Message::Text(t)) => serde_json::from_str::<Value>(&t).expect("JSON"),
        other => panic!("{other:?}"),
    }
}
