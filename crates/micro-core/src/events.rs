//! Events: durable topics with consumer groups, acknowledgements, redelivery, a retry
//! limit with a dead-letter topic, per-key ordering and history.

use crate::{BoxStream, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest payload, in bytes.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// The default time a delivery may stay unacknowledged before it is redelivered.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// The default number of deliveries before an event goes to the dead-letter topic.
pub const DEFAULT_MAX_DELIVER: u32 = 5;

/// One stored event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The topic.
    pub topic: String,
    /// Position in the topic, from 1, increasing in publish order.
    pub seq: u64,
    /// When it was published, Unix milliseconds.
    pub timestamp: u64,
    /// Ordering key: events with the same key reach a group in publish order.
    #[serde(default)]
    pub key: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The payload (JSON by convention).
    pub payload: Vec<u8>,
}

/// What to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Ordering key (optional).
    #[serde(default)]
    pub key: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Where a new consumer group starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Offset {
    /// Only events published from now on (the default).
    #[default]
    New,
    /// From the first retained event.
    First,
    /// From this sequence number.
    Seq(u64),
    /// From the first event at or after this Unix millisecond.
    Time(u64),
}

/// How to consume a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumeOptions {
    /// The consumer group: each event goes to one member of a group, and every group gets
    /// every event. Empty: a private group for this consumer alone.
    pub group: String,
    /// Where a new group starts (an existing group resumes where it left off).
    pub offset: Offset,
    /// Acknowledge each event as it is delivered.
    pub auto_ack: bool,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before the event goes to the dead-letter topic (0: no limit).
    pub max_deliver: u32,
    /// The dead-letter topic (default `<topic>.dead`).
    pub dead_letter: Option<String>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            group: String::new(),
            offset: Offset::New,
            auto_ack: false,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: DEFAULT_MAX_DELIVER,
            dead_letter: None,
        }
    }
}

/// Acknowledges deliveries on behalf of a consumer.
#[async_trait::async_trait]
pub trait Acker: Send + Sync + 'static {
    /// The event is done with.
    async fn ack(&self, delivery: &Delivery) -> Result<(), Status>;
    /// The event failed; redeliver it (after `delay`).
    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), Status>;
}

/// One delivery of an event to a consumer.
#[derive(Clone)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The group it was delivered to.
    pub group: String,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    /// Identifies this delivery to the acker.
    pub token: String,
    /// Acknowledges this delivery.
    pub acker: Arc<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    /// Acknowledges the event.
    pub async fn ack(&self) -> Result<(), Status> {
        self.acker.ack(self).await
    }

    /// Asks for redelivery (immediately).
    pub async fn nack(&self) -> Result<(), Status> {
        self.acker.nack(self, Duration::ZERO).await
    }
}

/// Options of a history read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Where to start (`New` reads nothing; the default here is `First`).
    pub offset: Option<Offset>,
    /// At most this many events (0: 100).
    pub limit: u32,
    /// Skip this many first.
    pub offset_count: u32,
}

/// The progress of one durable consumer group through a topic, as reported by
/// [`Events::groups`]. Sequence numbers are the topic's; positions before the group's
/// start, and events removed by retention before the group reached them, count as
/// passed (delivered and acknowledged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// The highest sequence number the group has been handed (0 before the first
    /// delivery of a group starting at the beginning). A backend that prefetches
    /// for its members counts what it fetched.
    pub delivered: u64,
    /// The acknowledgement floor: every event up to this sequence number is done for the
    /// group (acknowledged, dead-lettered or passed).
    pub acked: u64,
    /// Events delivered and not yet acknowledged, including those nacked and waiting to
    /// be redelivered.
    pub pending: u64,
    /// Events the group has still to finish: those not delivered yet plus `pending`. When
    /// acknowledgements arrive in order this is the topic's last sequence number minus
    /// `acked`; acknowledgements beyond the floor make it smaller.
    pub lag: u64,
    /// Members consuming right now; `None` when the backend cannot tell (a pull-based
    /// broker knows only the requests waiting at this moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
}

/// Durable event streams.
#[async_trait::async_trait]
pub trait Events: Send + Sync + 'static {
    /// Appends an event to `topic`; returns it as stored (with its sequence number).
    async fn publish(&self, namespace: &str, topic: &str, message: &Message) -> Result<Event, Status>;
    /// Consumes `topic` as a member of `options.group`.
    async fn consume(
        &self,
        namespace: &str,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status>;
    /// The retained history of `topic`; `NotFound` for a topic never published to.
    async fn read(&self, namespace: &str, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status>;
    /// The topics of a namespace.
    async fn topics(&self, namespace: &str) -> Result<Vec<String>, Status>;
    /// The durable (named) consumer groups of `topic` with their progress, sorted by
    /// name; private groups are not listed. `NotFound` for a topic never published to.
    async fn groups(&self, namespace: &str, topic: &str) -> Result<Vec<GroupInfo>, Status>;
}

/// Checks a topic name: 1–256 characters of `a-z A-Z 0-9 . _ - /`, not starting with a dot.
pub fn validate_topic(topic: &str) -> Result<(), Status> {
    let ok = !topic.is_empty()
        && topic.len() <= 256
        && !topic.starts_with('.')
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::bad_request("events", format!("invalid topic {topic:?}: use 1-256 of a-z A-Z 0-9 . _ - /")))
    }
}

/// Checks a group name: empty, or 1–128 characters of `a-z A-Z 0-9 . _ -`.
pub fn validate_group(group: &str) -> Result<(), Status> {
    let ok = group.len() <= 128 && group.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(Status::bad_request("events", format!("invalid group {group:?}"))) }
}

/// Checks a consume request the way every backend does; returns its dead-letter topic
/// (`<topic>.dead` unless the options name one).
pub fn check_consume(namespace: &str, topic: &str, options: &ConsumeOptions) -> Result<String, Status> {
    crate::namespace::validate(namespace)?;
    validate_topic(topic)?;
    validate_group(&options.group)?;
    let dead_letter = options.dead_letter.clone().unwrap_or_else(|| format!("{topic}.dead"));
    validate_topic(&dead_letter)?;
    Ok(dead_letter)
}

/// Checks a message before it is published.
pub fn validate_message(message: &Message) -> Result<(), Status> {
    if message.payload.len() > MAX_PAYLOAD {
        let detail = format!("the payload is {} bytes; the limit is {MAX_PAYLOAD}", message.payload.len());
        return Err(Status::bad_request("events", detail));
    }
    if message.key.len() > 256 {
        return Err(Status::bad_request("events", "the ordering key is longer than 256 bytes"));
    }
    Ok(())
}
