//! The broker: ephemeral publish/subscribe with queue groups. Nothing is stored; a
//! message published while nobody listens is gone.

use crate::{BoxStream, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The topic it was published on.
    pub topic: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Fire-and-forget messaging.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends a message to the current subscribers of its topic.
    async fn publish(&self, namespace: &str, message: &Message) -> Result<(), Status>;
    /// Subscribes to a topic. With a queue group, each message goes to one member of the
    /// group; without, to every subscriber.
    async fn subscribe(
        &self,
        namespace: &str,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<Message, Status>>, Status>;
}

/// Checks a message before it is published, the way every backend does.
pub fn check_publish(namespace: &str, message: &Message) -> Result<(), Status> {
    check_topic(namespace, &message.topic)?;
    if message.payload.len() > crate::events::MAX_PAYLOAD {
        return Err(Status::bad_request("broker", "the payload is over 1 MiB"));
    }
    Ok(())
}

/// Checks a subscription: the namespace, the topic and the queue group (if any).
pub fn check_subscribe(namespace: &str, topic: &str, queue: Option<&str>) -> Result<(), Status> {
    check_topic(namespace, topic)?;
    if let Some(q) = queue {
        crate::events::validate_group(q).map_err(|e| Status::bad_request("broker", e.detail()))?;
    }
    Ok(())
}

fn check_topic(namespace: &str, topic: &str) -> Result<(), Status> {
    crate::namespace::validate(namespace)?;
    crate::events::validate_topic(topic).map_err(|e| Status::bad_request("broker", e.detail()))
}
