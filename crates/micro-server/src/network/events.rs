//! Event topics shared with the peers (`MICRO_NETWORK_EVENTS`, opt-in on both sides).
//!
//! For each peer whose link is up and each shared topic, a consumer group of this
//! cluster's (`network-<peer>`) reads the topic and sends each event over the link; the
//! event is acknowledged once the peer has published it, so an event published while
//! the link is down, or lost on the way, goes when the link is back: at least once.
//! Events carry the clusters they passed through (metadata `micro-network-path`), never
//! go back to one of them, and keep their first id (`micro-network-id`,
//! `<origin cluster>:<seq>`) for consumers that drop duplicates.

use super::link::SERVER_NAME;
use super::{MAX_HOPS, Network, validate_name};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use micro_core::Status;
use micro_core::events::{ConsumeOptions, Event, Message, Offset};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::body::Body;

/// The clusters an event passed through, its origin first (metadata).
pub(crate) const META_PATH: &str = "micro-network-path";
/// An event's first id, `<origin cluster>:<seq>` (metadata).
pub(crate) const META_ID: &str = "micro-network-id";
/// How long an event sent to a peer may go unanswered before it is sent again.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// An event on its way to a peer.
#[derive(Serialize, Deserialize)]
pub(super) struct Shared {
    ns: String,
    topic: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Base64.
    payload: String,
    /// The clusters it passed through, the sender last.
    path: Vec<String>,
}

/// Starts sending the shared topics' events to `peer` (while its link is up).
pub(super) fn start(net: &Network, peer: &str) -> Vec<tokio::task::AbortHandle> {
    net.inner
        .shared
        .iter()
        .map(|(ns, topic)| {
            tokio::spawn(forward(net.clone(), peer.to_string(), ns.clone(), topic.clone())).abort_handle()
        })
        .collect()
}

async fn forward(net: Network, peer: String, ns: String, topic: String) {
    let options = ConsumeOptions {
        group: format!("network-{peer}"),
        offset: Offset::New,
        auto_ack: false,
        ack_wait: ACK_WAIT,
        max_deliver: 0,
        dead_letter: None,
    };
    loop {
        let mut deliveries = match net.inner.events.consume(&ns, &topic, &options).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(peer, ns, topic, error = %e, "consuming a shared topic failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(d) = deliveries.next().await {
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(peer, ns, topic, error = %e, "a shared topic's consumer failed");
                    break;
                }
            };
            let path: Vec<String> =
                d.event.metadata.get(META_PATH).map(|p| p.split(',').map(str::to_string).collect()).unwrap_or_default();
            // Never back where it came from, nor further than a call goes.
            if path.contains(&peer) || path.len() >= MAX_HOPS {
                let _ = d.ack().await;
                continue;
            }
            match send(&net, &peer, &ns, &topic, &d.event, path).await {
                Ok(()) => {
                    let _ = d.ack().await;
                }
                // The peer does not share the topic: the event is not for it.
                Err(Failed::Refused(e)) => {
                    tracing::info!(peer, ns, topic, seq = d.event.seq, error = %e, "the peer refused a shared event; dropped");
                    let _ = d.ack().await;
                }
                Err(Failed::Again(e)) => {
                    tracing::debug!(peer, ns, topic, seq = d.event.seq, error = %e, "an event did not reach the peer; again soon");
                    let _ = d.acker.nack(&d, Duration::from_millis(500)).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Why an event did not go.
enum Failed {
    /// Not now: it goes again.
    Again(String),
    /// Never: the peer refuses it.
    Refused(String),
}

async fn send(
    net: &Network,
    peer: &str,
    ns: &str,
    topic: &str,
    event: &Event,
    path: Vec<String>,
) -> Result<(), Failed> {
    match try_send(net, peer, ns, topic, event, path).await {
        Ok(None) => Ok(()),
        Ok(Some(refused)) => Err(Failed::Refused(refused)),
        Err(e) => Err(Failed::Again(e)),
    }
}

/// `Ok(Some(why))` when the peer refuses the event for good.
async fn try_send(
    net: &Network,
    peer: &str,
    ns: &str,
    topic: &str,
    event: &Event,
    mut path: Vec<String>,
) -> Result<Option<String>, String> {
    let mut send = net.lock().peers.get(peer).and_then(|p| p.send.as_ref().map(|(_, s)| s.clone())).ok_or("no link")?;
    let mut metadata = event.metadata.clone();
    metadata.remove(META_PATH);
    // Its id is made where it was published (whatever a publisher put there).
    if path.is_empty() {
        metadata.insert(META_ID.to_string(), format!("{}:{}", net.name(), event.seq));
    }
    path.push(net.name().to_string());
    let shared = Shared {
        ns: ns.to_string(),
        topic: topic.to_string(),
        key: event.key.clone(),
        metadata,
        payload: base64::engine::general_purpose::STANDARD.encode(&event.payload),
        path,
    };
    let body = serde_json::to_vec(&shared).map_err(|e| e.to_string())?;
    let req = http::Request::post(format!("https://{SERVER_NAME}/network/v1/events"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::new(Full::new(Bytes::from(body))))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        send.ready().await?;
        send.send_request(req).await
    })
    .await
    .map_err(|_| "no answer within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    if res.status().is_success() {
        return Ok(None);
    }
    let status = res.status();
    let body = http_body_util::Limited::new(res.into_body(), 16 << 10).collect().await.map(|b| b.to_bytes());
    let why = format!("HTTP {status}: {}", body.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default());
    match status.as_u16() {
        400 | 403 | 413 => Ok(Some(why)),
        _ => Err(why),
    }
}

/// Publishes an event `peer` sent, when its topic is shared here too.
pub(super) async fn receive(net: &Network, peer: &str, body: Bytes) -> Result<serde_json::Value, Status> {
    let shared: Shared =
        serde_json::from_slice(&body).map_err(|e| Status::bad_request("network", format!("an event: {e}")))?;
    if !net.inner.shared.iter().any(|(n, t)| *n == shared.ns && *t == shared.topic) {
        return Err(Status::new(
            micro_core::Code::PermissionDenied,
            "network",
            format!("topic {} of {} is not shared by this cluster", shared.topic, shared.ns),
        ));
    }
    let valid = shared.path.last().map(String::as_str) == Some(peer)
        && shared.path.len() <= MAX_HOPS
        && shared.path.iter().all(|c| validate_name(c).is_ok())
        && !shared.path.iter().any(|c| c == net.name());
    if !valid {
        return Err(Status::new(
            micro_core::Code::PermissionDenied,
            "network",
            "an event's path must end with the peer, without loops",
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&shared.payload)
        .map_err(|_| Status::bad_request("network", "an event's payload is base64"))?;
    let mut metadata = shared.metadata;
    // An event's id names the cluster it came from first, which no peer speaks for.
    let origin = shared.path.first().map(String::as_str).unwrap_or_default();
    if metadata.get(META_ID).is_some_and(|id| id.split_once(':').is_none_or(|(o, _)| o != origin)) {
        return Err(Status::bad_request("network", "an event's id must name the cluster it came from"));
    }
    metadata.insert(META_PATH.to_string(), shared.path.join(","));
    let message = Message { key: shared.key, metadata, payload };
    micro_core::events::validate_message(&message)?;
    let event = net.inner.events.publish(&shared.ns, &shared.topic, &message).await?;
    Ok(serde_json::json!({ "seq": event.seq }))
}
