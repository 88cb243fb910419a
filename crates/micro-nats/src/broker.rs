//! The broker on core NATS: one subject per namespace and topic, NATS queue groups for
//! queue subscribers. Like the embedded broker, nothing is stored.

use crate::{Nats, unavailable};
use futures::StreamExt;
use micro_core::broker::{Broker, Message};
use micro_core::{BoxStream, Status};
use std::collections::BTreeMap;

const ID: &str = "broker";
/// The header that carries a message's metadata, as JSON.
const METADATA: &str = "Micro-Metadata";

/// Broker messages over NATS subjects `micro.br.<namespace>.<hex topic>`.
#[derive(Clone, Debug)]
pub struct NatsBroker {
    nats: Nats,
}

impl NatsBroker {
    /// The broker on a shared connection.
    pub fn new(nats: &Nats) -> NatsBroker {
        NatsBroker { nats: nats.clone() }
    }
}

fn subject(namespace: &str, topic: &str) -> String {
    format!("micro.br.{namespace}.{}", hex(topic.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait::async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, namespace: &str, message: &Message) -> Result<(), Status> {
        micro_core::broker::check_publish(namespace, message)?;
        self.nats.connected(ID)?;
        let mut headers = async_nats::HeaderMap::new();
        if !message.metadata.is_empty() {
            let json = serde_json::to_string(&message.metadata).map_err(|e| Status::internal(ID, e.to_string()))?;
            headers.insert(METADATA, json.as_str());
        }
        let subject = subject(namespace, &message.topic);
        self.nats
            .client
            .publish_with_headers(subject, headers, message.payload.clone().into())
            .await
            .map_err(|e| unavailable(ID, "publish", e))
        // No flush per message: the client writes queued messages out at once by itself,
        // and a broker message is fire-and-forget (a flush is a round trip, a third of the
        // rate).
    }

    async fn subscribe(
        &self,
        namespace: &str,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<Message, Status>>, Status> {
        micro_core::broker::check_subscribe(namespace, topic, queue)?;
        self.nats.connected(ID)?;
        let subject = subject(namespace, topic);
        let subscriber = match queue.filter(|q| !q.is_empty()) {
            Some(q) => self.nats.client.queue_subscribe(subject, q.to_string()).await,
            None => self.nats.client.subscribe(subject).await,
        }
        .map_err(|e| unavailable(ID, "subscribe", e))?;
        // The subscription is registered once the server has seen it.
        self.nats.client.flush().await.map_err(|e| unavailable(ID, "subscribe", e))?;
        let topic = topic.to_string();
        Ok(subscriber
            .map(move |m| {
                let metadata = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(METADATA))
                    .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v.as_str()).ok())
                    .unwrap_or_default();
                Ok(Message { topic: topic.clone(), metadata, payload: m.payload.to_vec() })
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let nats = Nats::connect(&url).await.expect("connects");
        micro_conformance::broker::broker(Arc::new(NatsBroker::new(&nats))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_share_messages_and_queue_groups() {
        let Some(url) = crate::test_url() else { return };
        let a = NatsBroker::new(&Nats::connect(&url).await.expect("connects"));
        let b = NatsBroker::new(&Nats::connect(&url).await.expect("connects"));
        let ns = format!("broker-nodes-{}", std::process::id());
        let mut on_a = a.subscribe(&ns, "jobs", Some("workers")).await.expect("subscribe");
        let mut on_b = b.subscribe(&ns, "jobs", Some("workers")).await.expect("subscribe");
        for n in 0..20 {
            let m = Message { topic: "jobs".into(), payload: format!("{n}").into_bytes(), ..Message::default() };
            a.publish(&ns, &m).await.expect("publish");
        }
        let mut got = Vec::new();
        for s in [&mut on_a, &mut on_b] {
            while let Ok(Some(m)) = tokio::time::timeout(std::time::Duration::from_millis(300), s.next()).await {
                got.push(String::from_utf8(m.expect("message").payload).expect("utf8"));
            }
        }
        got.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
        assert_eq!(got, (0..20).map(|n| n.to_string()).collect::<Vec<_>>(), "a queue group spans both nodes");
    }
}
