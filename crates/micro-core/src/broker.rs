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
