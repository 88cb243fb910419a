//! The in-process broker: fire-and-forget publish/subscribe with queue groups.

use futures::StreamExt;
use micro_core::broker::{Broker, Message};
use micro_core::{BoxStream, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Messages a slow subscriber may fall behind by before new ones are dropped for it.
const BUFFER: usize = 4096;

/// The in-process broker. Cheap to clone.
#[derive(Clone, Default)]
pub struct EmbeddedBroker {
    topics: Arc<Mutex<HashMap<(String, String), Topic>>>,
}

#[derive(Default)]
struct Topic {
    /// Subscribers without a queue group: each gets every message.
    all: Vec<mpsc::Sender<Message>>,
    /// Queue groups: each message goes to one member.
    groups: HashMap<String, (Vec<mpsc::Sender<Message>>, AtomicUsize)>,
}

impl EmbeddedBroker {
    /// An empty broker.
    pub fn new() -> EmbeddedBroker {
        EmbeddedBroker::default()
    }
}

fn deliver(tx: &mpsc::Sender<Message>, m: &Message) -> bool {
    match tx.try_send(m.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!(topic = %m.topic, "broker subscriber is behind; message dropped for it");
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[async_trait::async_trait]
impl Broker for EmbeddedBroker {
    async fn publish(&self, namespace: &str, message: &Message) -> Result<(), Status> {
        micro_core::broker::check_publish(namespace, message)?;
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), message.topic.clone());
        let Some(t) = topics.get_mut(&key) else { return Ok(()) };
        t.all.retain(|tx| deliver(tx, message));
        for (members, next) in t.groups.values_mut() {
            members.retain(|tx| !tx.is_closed());
            if members.is_empty() {
                continue;
            }
            let i = next.fetch_add(1, Ordering::Relaxed) % members.len();
            deliver(&members[i], message);
        }
        t.groups.retain(|_, (m, _)| !m.is_empty());
        if t.all.is_empty() && t.groups.is_empty() {
            topics.remove(&key);
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        namespace: &str,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<Message, Status>>, Status> {
        micro_core::broker::check_subscribe(namespace, topic, queue)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let t = topics.entry((namespace.to_string(), topic.to_string())).or_default();
        match queue.filter(|q| !q.is_empty()) {
            Some(q) => t.groups.entry(q.to_string()).or_default().0.push(tx),
            None => t.all.push(tx),
        }
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        micro_conformance::broker::broker(Arc::new(EmbeddedBroker::new())).await;
    }
}
