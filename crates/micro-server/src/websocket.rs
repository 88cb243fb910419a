//! Streaming endpoints over WebSocket at the gateway.
//!
//! Every text or binary message from the browser is one JSON request message; every
//! reply is one text message. For a server-streaming endpoint the request is the query
//! string when it has one, else the first message. The socket closes with 1000 when the
//! stream ends, or with 1011 after a text message holding the JSON error body. The
//! messages' bytes are metered when the socket ends, under the upgrade's request.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use micro::{CallOptions, Client, Status, json_error};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tonic::body::Body;

/// Whether the request asks to upgrade to a WebSocket.
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// What to call once the socket is open.
pub(crate) struct Call {
    pub(crate) client: Client,
    pub(crate) service: String,
    pub(crate) endpoint: String,
    /// `server`, `client` or `bidi`.
    pub(crate) kind: String,
    /// The request built from the query string, if it had any parameters.
    pub(crate) first: Option<Bytes>,
    pub(crate) opts: CallOptions,
    /// Counts the socket's messages (the upgrade itself is counted as a request).
    pub(crate) meter: crate::usage::Meter,
    pub(crate) labels: crate::usage::Labels,
}

/// The bytes a socket carried, metered (under its upgrade's 101) when it ends, however it
/// ends.
struct SocketUsage {
    meter: crate::usage::Meter,
    labels: crate::usage::Labels,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Drop for SocketUsage {
    fn drop(&mut self) {
        let l = &self.labels;
        self.meter.record(&crate::usage::Usage {
            namespace: &l.namespace,
            service: &l.service,
            endpoint: &l.endpoint,
            account: &l.account,
            status: 101,
            requests: 0,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
        });
    }
}

/// Answers the upgrade with 101 and runs the call on the socket in the background.
pub(crate) fn upgrade(mut req: Request<Incoming>, call: Call) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes())) else {
        return json_error(&Status::bad_request("api", "WebSocket upgrade without Sec-WebSocket-Key"));
    };
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v != "13") {
        return json_error(&Status::bad_request("api", "unsupported WebSocket version (use 13)"));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
                run(ws, call).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

async fn run<S>(ws: WebSocketStream<S>, call: Call)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let single = call.kind == "server";
    let mut usage =
        SocketUsage { meter: call.meter.clone(), labels: call.labels.clone(), bytes_in: Arc::default(), bytes_out: 0 };
    let counted = usage.bytes_in.clone();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let preset = call.first.is_some();
    if let Some(first) = call.first.clone() {
        let _ = tx.send(first).await;
    }
    // The socket's messages feed the request stream from their own task: the service
    // may wait for the first message before it answers with headers.
    let reader = tokio::spawn(async move {
        if single && preset {
            return;
        }
        while let Some(msg) = incoming.next().await {
            let msg = match msg {
                Ok(Message::Text(t)) => Bytes::from(t.as_str().to_owned()),
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue,
            };
            counted.fetch_add(msg.len() as u64, Ordering::Relaxed);
            if tx.send(msg).await.is_err() || single {
                return;
            }
        }
    });
    let started = call.client.stream_json(&call.service, &call.endpoint, ReceiverStream::new(rx), &call.opts).await;
    let mut replies = match started {
        Ok(s) => s,
        Err(e) => {
            reader.abort();
            close_with_error(&mut sink, &e).await;
            return;
        }
    };
    while let Some(reply) = replies.next().await {
        match reply {
            Ok(b) => {
                usage.bytes_out += b.len() as u64;
                if sink.send(Message::text(String::from_utf8_lossy(&b).into_owned())).await.is_err() {
                    reader.abort();
                    return;
                }
            }
            Err(e) => {
                reader.abort();
                close_with_error(&mut sink, &e).await;
                return;
            }
        }
    }
    reader.abort();
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

async fn close_with_error<S>(sink: &mut S, e: &Status)
where
    S: futures::Sink<Message> + Unpin,
{
    let body = String::from_utf8_lossy(&e.to_json()).into_owned();
    let _ = sink.send(Message::text(body)).await;
    let frame = CloseFrame { code: CloseCode::Error, reason: e.detail().chars().take(100).collect::<String>().into() };
    let _ = sink.send(Message::Close(Some(frame))).await;
}
