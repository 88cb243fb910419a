//! The product's HTTP API, which the gateway serves under `/push/v1/`: what an app's
//! pages call with the JS client (the key, the browser's subscription, receipts, the
//! realtime stream) and what its team's servers call to send.

use crate::{Live, NAME, Push, SendRequest, Who, bad, user_key, valid_topic};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode, header};
use micro::auth::Caller;
use micro::web::{Body, reply};
use micro_core::{Code, Status};
use serde_json::json;
use std::time::Duration;

/// How often an idle realtime stream says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a realtime stream checks that its caller's token still holds.
const RECHECK: Duration = Duration::from_secs(2);

/// Whether the caller's token still holds (not revoked since the request came).
pub type StillValid = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl Push {
    /// Serves a request under `/push/v1/` for `caller` (its namespace is the one acted in).
    /// A realtime stream asks `valid` every few seconds whether the caller's token still
    /// holds (its account deleted, signed out everywhere: the stream ends).
    pub async fn serve<B>(&self, req: http::Request<B>, caller: &Caller, valid: StillValid) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        match self.route(req, caller, valid).await {
            Ok(res) => res,
            Err(e) => micro::json_error(&e),
        }
    }

    async fn route<B>(
        &self,
        req: http::Request<B>,
        caller: &Caller,
        valid: StillValid,
    ) -> Result<Response<Body>, Status>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send + Sync + 'static,
    {
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix("/push/v1/") else {
            return Err(Status::new(Code::NotFound, NAME, format!("no route {path}: the push API is under /push/v1/")));
        };
        let query = req.uri().query().map(str::to_string);
        if let Some(name) = micro::web::repeated_param(query.as_deref()) {
            return Err(bad(format!("the query gives {name} twice")));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let ns = caller.namespace.clone();
        let who = Who { caller, ns: &ns };
        let method = req.method().clone();
        match (&method, segs.as_slice()) {
            // For the namespace's own accounts (so nobody makes keys for names that are no
            // namespace's).
            (&Method::GET, ["key"]) => {
                if who.sender().is_err() {
                    who.member()?;
                }
                let vapid = self.vapid(&ns).await?;
                Ok(reply(StatusCode::OK, &json!({"public_key": vapid.public})))
            }
            (&Method::POST, ["subscriptions"]) => {
                let body = micro::web::json_body(req.into_body(), 8192, NAME).await?;
                let sub = self.subscribe(&who, body).await?;
                Ok(reply(StatusCode::CREATED, &json!(sub)))
            }
            (&Method::GET, ["subscriptions"]) => {
                let user = micro::web::query_param(query.as_deref(), "user");
                let subs = self.subscriptions(&who, user.as_deref()).await?;
                Ok(reply(StatusCode::OK, &json!({"subscriptions": subs})))
            }
            (&Method::DELETE, ["subscriptions", id]) => {
                self.unsubscribe(&who, id).await?;
                Ok(micro::web::empty(StatusCode::NO_CONTENT))
            }
            (&Method::POST, ["messages"]) => {
                let body = micro::web::json_body(req.into_body(), 16 * 1024, NAME).await?;
                let send: SendRequest = serde_json::from_value(body).map_err(|e| bad(format!("a message: {e}")))?;
                let report = self.send(&who, send).await?;
                Ok(reply(StatusCode::CREATED, &json!(report)))
            }
            (&Method::GET, ["messages"]) => {
                let limit = micro::web::query_param(query.as_deref(), "limit")
                    .map(|l| l.parse::<usize>().map_err(|_| bad("limit is a number")))
                    .transpose()?
                    .unwrap_or(50);
                let messages = self.messages(&who, limit).await?;
                Ok(reply(StatusCode::OK, &json!({"messages": messages})))
            }
            (&Method::GET, ["messages", id]) => Ok(reply(StatusCode::OK, &json!(self.message(&who, id).await?))),
            (&Method::POST, ["messages", id, "receipts"]) => {
                let id = id.to_string();
                let body = micro::web::json_body(req.into_body(), 1024, NAME).await?;
                let event = body.get("event").and_then(|e| e.as_str()).unwrap_or_default();
                let token = body.get("receipt").and_then(|e| e.as_str()).unwrap_or_default();
                self.receipt(&who, &id, event, token).await?;
                Ok(micro::web::empty(StatusCode::NO_CONTENT))
            }
            (&Method::GET, ["events"]) => self.events(&who, query.as_deref(), valid).await,
            _ => Err(Status::new(Code::NotFound, NAME, format!("no route {method} {path}"))),
        }
    }

    /// The caller's realtime stream (server-sent events): every notification for them, or
    /// for a topic their subscriptions follow or `?topics=a,b` names, while their token
    /// lasts.
    async fn events(&self, who: &Who<'_>, query: Option<&str>, valid: StillValid) -> Result<Response<Body>, Status> {
        let (me, app_user) = who.member()?;
        let ukey = user_key(&me, app_user);
        let mut topics: Vec<String> = Vec::new();
        if let Some(t) = micro::web::query_param(query, "topics") {
            for t in t.split(',').filter(|t| !t.is_empty()) {
                if !valid_topic(t) {
                    return Err(bad(format!("{t:?} is not a topic")));
                }
                topics.push(t.to_string());
            }
        }
        if topics.len() > 20 {
            return Err(bad("a stream follows at most 20 topics"));
        }
        for s in self.user_subscriptions(who.ns, &ukey).await? {
            topics.extend(s.topics);
        }
        let slot = self.stream_slot(who.ns, &ukey).ok_or_else(|| {
            Status::new(Code::ResourceExhausted, NAME, "too many realtime streams open: close one")
                .with_http_status(429)
        })?;
        topics.sort();
        topics.dedup();
        // What is the caller's: everyone's, their own, their topics' (each a topic of the
        // broker, so nothing of anybody else's is even buffered here).
        let mut wanted = vec![Live::All, Live::User(ukey.clone())];
        wanted.extend(topics.into_iter().map(Live::Topic));
        let mut streams = Vec::new();
        for w in &wanted {
            streams.push(self.broker.subscribe(micro_core::namespace::DEFAULT, &w.topic(who.ns), None).await?);
        }
        let mut live = futures::stream::select_all(streams);
        let receipts = self.receipt_key(who.ns).await?;
        // The stream ends when the caller's token does: a user deleted, or signed out
        // everywhere, stops hearing within its lifetime.
        let until = who.caller.expires.map(|e| e.saturating_sub(crate::now())).unwrap_or(3600);
        let ends = tokio::time::sleep(Duration::from_secs(until));
        let stream = async_stream_events(move |tx| async move {
            let _slot = slot;
            tokio::pin!(ends);
            if tx.send(Ok(Bytes::from_static(b": connected\n\nevent: ready\ndata: {}\n\n"))).await.is_err() {
                return;
            }
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            let mut check = tokio::time::interval(RECHECK);
            check.tick().await;
            loop {
                let chunk = tokio::select! {
                    m = live.next() => match m {
                        Some(Ok(m)) => match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                            Ok(n) => {
                                let n = Push::for_user(&n, &receipts, &ukey);
                                let id = n.get("id").and_then(|i| i.as_str()).unwrap_or_default().to_string();
                                Bytes::from(format!("id: {id}\nevent: push\ndata: {n}\n\n"))
                            }
                            _ => continue,
                        },
                        // The broker went away: the client reconnects.
                        _ => return,
                    },
                    _ = beat.tick() => Bytes::from_static(b": ping\n\n"),
                    _ = check.tick() => {
                        if valid() {
                            continue;
                        }
                        let _ = tx.send(Ok(Bytes::from_static(b"event: error\ndata: {\"detail\":\"signed out: the token no longer holds\"}\n\n"))).await;
                        return;
                    }
                    _ = &mut ends => return,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        let mut res = Response::new(micro::web::stream_body(stream));
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(res)
    }
}

/// A stream of chunks fed by `f` through a channel (ends when `f` returns).
fn async_stream_events<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, Status>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Status>>,
) -> impl futures::Stream<Item = Result<Bytes, Status>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
