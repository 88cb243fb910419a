//! Events on NATS JetStream.
//!
//! - **Topics**: one stream per namespace and topic (`MICRO_EV_<hash>`, its description
//!   naming both), so stream sequence numbers are the topic's sequence numbers. Events
//!   are published on `micro.ev.<hash>.n`, or `micro.ev.<hash>.k.<key hash>` when they
//!   have an ordering key; a header carries the key, metadata, timestamp and, for keyed
//!   events, the sequence number of the previous event with the same key (kept exact with
//!   JetStream's expected-last-subject-sequence check).
//! - **Groups**: one durable pull consumer per group (an ephemeral one for a private
//!   group). A member asks for one event at a time, and only while it is being read, so
//!   members share a group's events and an idle member holds nothing. Acks and nacks are
//!   synchronous, so "acked" means the server has it. A group's progress is its
//!   consumer's: delivered and ack-floor stream sequences, and the pending counts.
//! - **Retry limit**: the consumer allows one delivery more than the limit; a nack of
//!   the last attempt, or that extra delivery (after the last attempt's ack wait),
//!   moves the event to the dead-letter topic (de-duplicated by message id, so two nodes
//!   doing it at once write one dead letter) and terminates it.
//! - **Per-key order**: an event whose same-key predecessor is not done for the group is
//!   held by the member that got it (kept from redelivery with progress acks) until the
//!   predecessor is acked or dead-lettered; "done" is the highest finished sequence per
//!   group and key, in a JetStream key-value bucket.

use crate::{Nats, unavailable};
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use micro_core::events::{
    Acker, ConsumeOptions, Delivery, Event, Events, GroupInfo, Message, Offset, ReadOptions, validate_message,
    validate_topic,
};
use micro_core::store::now_ms;
use micro_core::{BoxStream, Status, namespace};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const ID: &str = "events";
/// The header with an event's [`Meta`].
const HEADER: &str = "Micro-Event";
/// Streams of topics are named with this prefix.
const STREAM_PREFIX: &str = "MICRO_EV_";
/// The stream of per-group, per-key progress, and its subjects' prefix.
const DONE_STREAM: &str = "MICRO_EVDONE";
const DONE_SUBJECT: &str = "micro.evdone";
/// How long one pull request waits for an event.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often held (key-ordered) events look at their predecessor again.
const HOLD_POLL: Duration = Duration::from_millis(25);
/// A private group's consumer is removed this long after its member stops reading.
const PRIVATE_INACTIVE: Duration = Duration::from_secs(300);
/// Retries of a keyed publish that raced another publisher of the same key.
const KEYED_RETRIES: usize = 20;

/// What the [`HEADER`] holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    k: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    m: BTreeMap<String, String>,
    t: u64,
    /// The previous event with the same key (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    p: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a topic's stream description says.
#[derive(Serialize, Deserialize)]
struct Described {
    namespace: String,
    topic: String,
}

/// Durable events in NATS JetStream, shared by every node connected to the same server.
#[derive(Clone)]
pub struct NatsEvents {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsEvents").finish_non_exhaustive()
    }
}

struct Inner {
    nats: Nats,
    /// Streams known to exist.
    known: Mutex<HashSet<String>>,
    done: tokio::sync::OnceCell<jetstream::stream::Stream<()>>,
    max_age: Option<Duration>,
    max_events: Option<u64>,
}

/// The stream and subjects of one topic.
struct Names {
    stream: String,
    base: String,
}

fn digest(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    crate::broker::hex(&h.finalize()[..16])
}

/// The durable consumer of group `group`.
fn durable_name(group: &str) -> String {
    format!("g{}", digest(&[group]))
}

/// A group's progress from its consumer's state, in a topic whose last event is `last`.
fn group_info(name: &str, c: &jetstream::consumer::Info, last: u64) -> GroupInfo {
    let pending = u64::try_from(c.num_ack_pending).unwrap_or(u64::MAX);
    GroupInfo {
        name: name.to_string(),
        // A start past the end of the stream puts both beyond it.
        delivered: c.delivered.stream_sequence.min(last),
        acked: c.ack_floor.stream_sequence.min(last),
        pending,
        lag: c.num_pending.saturating_add(pending),
        // Pull consumers show only the requests waiting at this moment.
        members: None,
    }
}

fn names(namespace: &str, topic: &str) -> Names {
    let h = digest(&[namespace, topic]);
    Names { stream: format!("{STREAM_PREFIX}{h}"), base: format!("micro.ev.{h}") }
}

fn subject(names: &Names, key: &str) -> String {
    if key.is_empty() { format!("{}.n", names.base) } else { format!("{}.k.{}", names.base, digest(&[key])) }
}

fn check(namespace: &str, topic: &str) -> Result<(), Status> {
    namespace::validate(namespace)?;
    validate_topic(topic)
}

fn internal(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Status {
    Status::internal(ID, format!("{what}: {e}")).with_source(e)
}

fn decode(topic: &str, seq: u64, headers: Option<&async_nats::HeaderMap>, payload: &[u8]) -> (Event, u64) {
    let meta: Meta =
        headers.and_then(|h| h.get(HEADER)).and_then(|v| serde_json::from_str(v.as_str()).ok()).unwrap_or_default();
    let event = Event {
        topic: topic.to_string(),
        seq,
        timestamp: meta.t,
        key: meta.k,
        metadata: meta.m,
        payload: payload.to_vec(),
    };
    (event, meta.p)
}

impl NatsEvents {
    /// Events on a shared connection, keeping everything (see [`NatsEvents::retention`]).
    pub fn new(nats: &Nats) -> NatsEvents {
        NatsEvents {
            inner: Arc::new(Inner {
                nats: nats.clone(),
                known: Mutex::new(HashSet::new()),
                done: tokio::sync::OnceCell::new(),
                max_age: None,
                max_events: None,
            }),
        }
    }

    /// Drops events older than `max_age` and keeps at most `max_events` per topic, in
    /// topics created from now on.
    pub fn retention(self, max_age: Option<Duration>, max_events: Option<u64>) -> NatsEvents {
        let inner = Arc::new(Inner {
            nats: self.inner.nats.clone(),
            known: Mutex::new(HashSet::new()),
            done: tokio::sync::OnceCell::new(),
            max_age,
            max_events,
        });
        NatsEvents { inner }
    }
}

impl Inner {
    fn js(&self) -> &jetstream::Context {
        &self.nats.js
    }

    fn forget(&self, stream: &str) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).remove(stream);
    }

    /// Makes sure the topic's stream exists.
    async fn ensure(&self, namespace: &str, topic: &str, names: &Names) -> Result<(), Status> {
        if self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(&names.stream) {
            return Ok(());
        }
        let description = serde_json::to_string(&Described { namespace: namespace.into(), topic: topic.into() })
            .map_err(|e| internal("describe", e))?;
        let config = stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.base)],
            description: Some(description),
            max_age: self.max_age.unwrap_or_default(),
            max_messages: self.max_events.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)),
            storage: stream::StorageType::File,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..stream::Config::default()
        };
        self.js().get_or_create_stream(config).await.map_err(|e| unavailable(ID, "create the topic's stream", e))?;
        self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(names.stream.clone());
        Ok(())
    }

    /// The topic's stream with its state; `None` when it was never created.
    async fn info(&self, names: &Names) -> Result<Option<stream::Info>, Status> {
        match self.js().get_stream(&names.stream).await {
            Ok(mut s) => Ok(Some(s.info().await.map_err(|e| unavailable(ID, "stream info", e))?.clone())),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(unavailable(ID, "stream info", e)),
            },
        }
    }

    async fn stream(&self, names: &Names) -> Result<jetstream::stream::Stream<()>, Status> {
        self.js().get_stream_no_info(&names.stream).await.map_err(|e| unavailable(ID, "open the stream", e))
    }

    /// Event `seq` and its same-key predecessor; `None` when it is gone.
    async fn get(
        &self,
        stream: &jetstream::stream::Stream<()>,
        topic: &str,
        seq: u64,
    ) -> Result<Option<(Event, u64)>, Status> {
        match stream.direct_get(seq).await {
            Ok(m) => Ok(Some(decode(topic, m.sequence, Some(&m.headers), &m.payload))),
            Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(unavailable(ID, "read an event", e)),
        }
    }

    /// The first sequence number in `first..=last` with a timestamp at or after `ms`.
    async fn seq_at(&self, names: &Names, topic: &str, first: u64, last: u64, ms: u64) -> Result<Option<u64>, Status> {
        let stream = self.stream(names).await?;
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = self.get(&stream, topic, mid).await?.map_or(0, |(e, _)| e.timestamp);
            if ts >= ms { hi = mid } else { lo = mid + 1 }
        }
        Ok((lo <= last).then_some(lo))
    }

    /// The stream of per-group, per-key progress (one message kept per subject: a
    /// key-value bucket made of a plain stream, which every JetStream version serves).
    async fn done_stream(&self) -> Result<&jetstream::stream::Stream<()>, Status> {
        self.done
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: DONE_STREAM.to_string(),
                    subjects: vec![format!("{DONE_SUBJECT}.>")],
                    description: Some("Micro events: per group and key, the last finished event".into()),
                    max_messages_per_subject: 1,
                    max_age: Duration::from_secs(30 * 24 * 3600),
                    storage: stream::StorageType::File,
                    allow_direct: true,
                    ..stream::Config::default()
                };
                self.js()
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| unavailable(ID, "create the progress stream", e))?;
                self.js()
                    .get_stream_no_info(DONE_STREAM)
                    .await
                    .map_err(|e| unavailable(ID, "open the progress stream", e))
            })
            .await
    }

    async fn publish_event(
        &self,
        namespace: &str,
        topic: &str,
        message: &Message,
        msg_id: Option<String>,
    ) -> Result<Event, Status> {
        let names = names(namespace, topic);
        self.ensure(namespace, topic, &names).await?;
        let subject = subject(&names, &message.key);
        let timestamp = now_ms();
        for _ in 0..KEYED_RETRIES {
            let prev = if message.key.is_empty() {
                0
            } else {
                let stream = self.stream(&names).await?;
                match stream.direct_get_last_for_subject(subject.as_str()).await {
                    Ok(m) => m.sequence,
                    Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => 0,
                    Err(e) => return Err(unavailable(ID, "publish", e)),
                }
            };
            let meta = Meta { k: message.key.clone(), m: message.metadata.clone(), t: timestamp, p: prev };
            let json = serde_json::to_string(&meta).map_err(|e| internal("encode", e))?;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(HEADER, json.as_str());
            if !message.key.is_empty() {
                headers.insert("Nats-Expected-Last-Subject-Sequence", prev.to_string().as_str());
            }
            if let Some(id) = &msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let sent = self.js().publish_with_headers(subject.clone(), headers, message.payload.clone().into()).await;
            let acked = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            use jetstream::context::PublishErrorKind as Kind;
            match acked {
                Ok(ack) => {
                    return Ok(Event {
                        topic: topic.to_string(),
                        seq: ack.sequence,
                        timestamp,
                        key: message.key.clone(),
                        metadata: message.metadata.clone(),
                        payload: message.payload.clone(),
                    });
                }
                Err(e) if e.kind() == Kind::WrongLastSequence => continue,
                Err(e) if e.kind() == Kind::StreamNotFound => {
                    // Deleted behind our back: make it again.
                    self.forget(&names.stream);
                    self.ensure(namespace, topic, &names).await?;
                }
                Err(e) if e.kind() == Kind::MaxPayloadExceeded => {
                    return Err(Status::bad_request(ID, format!("the event is too large for NATS: {e}")));
                }
                Err(e) => return Err(unavailable(ID, "publish", e)),
            }
        }
        Err(Status::unavailable(ID, "publish: too many concurrent publishers of the same key; try again"))
    }
}

#[async_trait::async_trait]
impl Events for NatsEvents {
    async fn publish(&self, namespace: &str, topic: &str, message: &Message) -> Result<Event, Status> {
        check(namespace, topic)?;
        validate_message(message)?;
        self.inner.nats.connected(ID)?;
        self.inner.publish_event(namespace, topic, message, None).await
    }

    async fn consume(
        &self,
        namespace: &str,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        let dead_letter = micro_core::events::check_consume(namespace, topic, options)?;
        self.inner.nats.connected(ID)?;
        let inner = &self.inner;
        let names = names(namespace, topic);
        inner.ensure(namespace, topic, &names).await?;
        let stream = inner.stream(&names).await?;
        let durable = (!options.group.is_empty()).then(|| durable_name(&options.group));
        let existing = match &durable {
            Some(name) => match stream.consumer_info(name).await {
                Ok(c) => Some(c),
                Err(e) if matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound) => None,
                Err(e) => return Err(unavailable(ID, "look up the group", e)),
            },
            None => None,
        };
        let consumer = match existing {
            Some(c) => c,
            None => {
                let info = inner.info(&names).await?.ok_or_else(|| Status::unavailable(ID, "the topic vanished"))?;
                let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
                let start = match options.offset {
                    Offset::First => 1,
                    Offset::New => last + 1,
                    Offset::Seq(n) => n.max(1),
                    Offset::Time(ms) => inner.seq_at(&names, topic, first, last, ms).await?.unwrap_or(last + 1),
                };
                let max_deliver = if options.max_deliver == 0 { -1 } else { i64::from(options.max_deliver) + 1 };
                let config = pull::Config {
                    durable_name: durable.clone(),
                    description: Some(if options.group.is_empty() { "private".into() } else { options.group.clone() }),
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_wait.max(Duration::from_millis(1)),
                    max_deliver,
                    max_ack_pending: 10_000,
                    inactive_threshold: if durable.is_none() { PRIVATE_INACTIVE } else { Duration::ZERO },
                    ..pull::Config::default()
                };
                match stream.create_consumer(config).await {
                    Ok(c) => c.cached_info().clone(),
                    // Another member made it first (with its own start): join that one.
                    Err(_) if durable.is_some() => stream
                        .consumer_info(durable.as_deref().unwrap_or_default())
                        .await
                        .map_err(|e| unavailable(ID, "create the group", e))?,
                    Err(e) => return Err(unavailable(ID, "create the consumer", e)),
                }
            }
        };
        let info = &consumer;
        let group_start = match info.config.deliver_policy {
            jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
            _ => 1,
        };
        let member = Arc::new(Member {
            inner: inner.clone(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            stream: names.stream.clone(),
            consumer: info.name.clone(),
            group: options.group.clone(),
            group_start,
            auto_ack: options.auto_ack,
            max_deliver: options.max_deliver,
            ack_wait: info.config.ack_wait,
            dead_letter,
        });
        member.run().await
    }

    async fn read(&self, namespace: &str, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status> {
        check(namespace, topic)?;
        self.inner.nats.connected(ID)?;
        let inner = &self.inner;
        let names = names(namespace, topic);
        let not_found = || Status::not_found(ID, format!("no topic {topic:?} in namespace {namespace:?}"));
        let info = inner.info(&names).await?.ok_or_else(not_found)?;
        let (first, last) = (info.state.first_sequence.max(1), info.state.last_sequence);
        if last == 0 {
            return Err(not_found());
        }
        let from = match options.offset.unwrap_or(Offset::First) {
            Offset::New => return Ok(Vec::new()),
            Offset::First => 1,
            Offset::Seq(n) => n,
            Offset::Time(ms) => match inner.seq_at(&names, topic, first, last, ms).await? {
                Some(seq) => seq,
                None => return Ok(Vec::new()),
            },
        }
        .max(first);
        let limit = if options.limit == 0 { 100 } else { options.limit.min(10_000) } as usize;
        let skip = options.offset_count as usize;
        let stream = inner.stream(&names).await?;
        let stream = &stream;
        let events: Vec<Result<(Event, u64), Status>> = futures::stream::iter(from..=last)
            .map(|seq| async move { inner.get(stream, topic, seq).await })
            .buffered(16)
            .filter_map(|r| async move { r.transpose() })
            .skip(skip)
            .take(limit)
            .collect()
            .await;
        events.into_iter().map(|r| r.map(|(e, _)| e)).collect()
    }

    async fn topics(&self, namespace: &str) -> Result<Vec<String>, Status> {
        namespace::validate(namespace)?;
        self.inner.nats.connected(ID)?;
        let mut streams = self.inner.js().streams();
        let mut topics = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| unavailable(ID, "list topics", e))?;
            if !info.config.name.starts_with(STREAM_PREFIX) || info.state.last_sequence == 0 {
                continue;
            }
            if let Some(d) = info.config.description.as_deref().and_then(|d| serde_json::from_str::<Described>(d).ok())
                && d.namespace == namespace
            {
                topics.push(d.topic);
            }
        }
        topics.sort();
        Ok(topics)
    }

    async fn groups(&self, namespace: &str, topic: &str) -> Result<Vec<GroupInfo>, Status> {
        check(namespace, topic)?;
        self.inner.nats.connected(ID)?;
        let names = names(namespace, topic);
        let not_found = || Status::not_found(ID, format!("no topic {topic:?} in namespace {namespace:?}"));
        let info = self.inner.info(&names).await?.ok_or_else(not_found)?;
        let last = info.state.last_sequence;
        if last == 0 {
            return Err(not_found());
        }
        let stream = self.inner.stream(&names).await?;
        let mut consumers = stream.consumers();
        let mut groups = Vec::new();
        while let Some(consumer) = consumers.next().await {
            let consumer = consumer.map_err(|e| unavailable(ID, "list the groups", e))?;
            // A named group is a durable consumer named after the group in its
            // description; private groups are ephemeral ("private").
            let Some(name) = consumer.config.description.as_deref() else { continue };
            if consumer.config.durable_name.is_none() || consumer.name != durable_name(name) {
                continue;
            }
            groups.push(group_info(name, &consumer, last));
        }
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }
}

/// One member of a group: pulls events one at a time while it is read.
struct Member {
    inner: Arc<Inner>,
    namespace: String,
    topic: String,
    stream: String,
    consumer: String,
    group: String,
    group_start: u64,
    auto_ack: bool,
    max_deliver: u32,
    ack_wait: Duration,
    dead_letter: String,
}

/// A delivery waiting for its same-key predecessor.
struct Held {
    delivery: Delivery,
    prev: u64,
}

/// The parts of a JetStream ack subject: delivery count and stream sequence.
fn parse_ack_subject(reply: &str) -> Option<(u32, u64)> {
    let tokens: Vec<&str> = reply.split('.').collect();
    // $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>, or with a
    // domain and account hash after ACK (12 tokens).
    let at = match tokens.len() {
        9 => 4,
        n if n >= 11 => 6,
        _ => return None,
    };
    Some((tokens[at].parse().ok()?, tokens[at + 1].parse().ok()?))
}

impl Member {
    fn done_subject(&self, key: &str) -> String {
        format!("{DONE_SUBJECT}.{}.{}.{}", self.stream, self.consumer, digest(&[key]))
    }

    /// The last finished sequence number of `key` in this group (0: none).
    async fn finished(&self, key: &str) -> Result<u64, Status> {
        let done = self.inner.done_stream().await?;
        match done.direct_get_last_for_subject(self.done_subject(key)).await {
            Ok(m) => Ok(std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok()).unwrap_or(0)),
            Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => Ok(0),
            Err(e) => Err(unavailable(ID, "read the group's progress", e)),
        }
    }

    /// Records a keyed event as finished for the group.
    async fn finish(&self, event: &Event) -> Result<(), Status> {
        if event.key.is_empty() {
            return Ok(());
        }
        self.inner.done_stream().await?;
        let subject = self.done_subject(&event.key);
        let ack = self.inner.js().publish(subject, event.seq.to_string().into()).await;
        match ack {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        }
        .map_err(|e| unavailable(ID, "record the group's progress", e))
    }

    /// Sends an acknowledgement (`+ACK`, `-NAK`, `+TERM`, `+WPI`) and waits for the server.
    async fn reply(&self, token: &str, body: String) -> Result<(), Status> {
        self.inner
            .nats
            .client
            .request(token.to_string(), body.into())
            .await
            .map(drop)
            .map_err(|e| unavailable(ID, "acknowledge", e))
    }

    async fn to_dead_letter(&self, delivery: &Delivery, attempts: u32) -> Result<(), Status> {
        let e = &delivery.event;
        let mut metadata = e.metadata.clone();
        metadata.insert("dead-letter-topic".into(), self.topic.clone());
        metadata.insert("dead-letter-seq".into(), e.seq.to_string());
        metadata.insert("dead-letter-group".into(), self.group.clone());
        metadata.insert("attempts".into(), attempts.to_string());
        let message = Message { key: e.key.clone(), metadata, payload: e.payload.clone() };
        let id = format!("dead-{}-{}-{}", self.stream, self.consumer, e.seq);
        self.inner.publish_event(&self.namespace, &self.dead_letter, &message, Some(id)).await?;
        self.finish(e).await?;
        self.reply(&delivery.token, "+TERM".into()).await
    }

    /// Turns one pulled message into a delivery; `None` when it was dead-lettered.
    async fn accept(self: &Arc<Self>, m: async_nats::Message) -> Result<Option<Held>, Status> {
        let Some(reply) = m.reply.as_ref().map(|r| r.to_string()) else { return Ok(None) };
        let Some((attempt, seq)) = parse_ack_subject(&reply) else {
            return Err(Status::internal(ID, format!("consume: unexpected ack subject {reply:?}")));
        };
        let (event, prev) = decode(&self.topic, seq, m.headers.as_ref(), &m.payload);
        let acker: Arc<dyn Acker> = self.clone();
        let delivery = Delivery { event, group: self.group.clone(), attempt, token: reply, acker };
        if self.max_deliver > 0 && attempt > self.max_deliver {
            // The last attempt's ack wait ran out.
            self.to_dead_letter(&delivery, attempt - 1).await?;
            return Ok(None);
        }
        let prev = if delivery.event.key.is_empty() { 0 } else { prev };
        Ok(Some(Held { delivery, prev }))
    }

    async fn hand_out(&self, held: Held) -> Result<Delivery, Status> {
        if self.auto_ack {
            self.ack(&held.delivery).await?;
        }
        Ok(held.delivery)
    }

    async fn run(self: Arc<Self>) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        let client = self.inner.nats.client.clone();
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await.map_err(|e| unavailable(ID, "consume", e))?;
        let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.stream, self.consumer);
        let expires = u64::try_from(PULL_EXPIRES.as_nanos()).unwrap_or(u64::MAX);
        let request = format!("{{\"batch\":1,\"expires\":{expires}}}");
        let stream = async_stream::stream! {
            let mut held: Vec<Held> = Vec::new();
            let mut waiting: Option<Instant> = None;
            let mut progressed = Instant::now();
            loop {
                // Held events whose predecessor is done go first, in order.
                if !held.is_empty() {
                    let mut i = 0;
                    let mut released = None;
                    while i < held.len() {
                        let h = &held[i];
                        let ready = match self.ready_for(&h.delivery.event.key, h.prev).await {
                            Ok(r) => r,
                            Err(e) => { yield Err(e); break; }
                        };
                        if ready {
                            released = Some(held.remove(i));
                            break;
                        }
                        i += 1;
                    }
                    if let Some(h) = released {
                        yield self.hand_out(h).await;
                        continue;
                    }
                    if progressed.elapsed() >= self.ack_wait / 3 {
                        for h in &held {
                            let _ = self.reply(&h.delivery.token, "+WPI".into()).await;
                        }
                        progressed = Instant::now();
                    }
                }
                let now = Instant::now();
                if waiting.is_none_or(|deadline| now >= deadline) {
                    if let Err(e) = client.publish_with_reply(next_subject.clone(), inbox.clone(), request.clone().into()).await {
                        yield Err(unavailable(ID, "consume", e));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    waiting = Some(now + PULL_EXPIRES + Duration::from_secs(1));
                }
                let wait = if held.is_empty() { PULL_EXPIRES + Duration::from_secs(1) } else { HOLD_POLL };
                let m = match tokio::time::timeout(wait, sub.next()).await {
                    Err(_) => continue,
                    Ok(None) => {
                        yield Err(Status::unavailable(ID, "consume: the NATS subscription closed"));
                        break;
                    }
                    Ok(Some(m)) => m,
                };
                if let Some(status) = m.status {
                    // 404/408: the pull expired; 409: the consumer changed or went away.
                    waiting = None;
                    if status == async_nats::StatusCode::REQUEST_TERMINATED
                        && m.description.as_deref().is_some_and(|d| d.to_ascii_lowercase().contains("deleted"))
                    {
                        yield Err(Status::unavailable(ID, "consume: the group's consumer was deleted"));
                        break;
                    }
                    continue;
                }
                waiting = None;
                let h = match self.accept(m).await {
                    Ok(Some(h)) => h,
                    Ok(None) => continue,
                    Err(e) => { yield Err(e); continue; }
                };
                let ready = match self.ready_for(&h.delivery.event.key, h.prev).await {
                    Ok(r) => r,
                    Err(e) => { yield Err(e); continue; }
                };
                if ready {
                    yield self.hand_out(h).await;
                } else {
                    if held.is_empty() {
                        progressed = Instant::now();
                    }
                    held.push(h);
                    held.sort_by_key(|h| h.delivery.event.seq);
                }
            }
        };
        Ok(stream.boxed())
    }

    async fn ready_for(&self, key: &str, prev: u64) -> Result<bool, Status> {
        if key.is_empty() || prev < self.group_start || prev == 0 {
            return Ok(true);
        }
        Ok(self.finished(key).await? >= prev)
    }
}

#[async_trait::async_trait]
impl Acker for Member {
    async fn ack(&self, delivery: &Delivery) -> Result<(), Status> {
        // Progress first: a crash between the two redelivers an event that is already
        // marked done (order may bend) rather than blocking its key forever.
        self.finish(&delivery.event).await?;
        self.reply(&delivery.token, "+ACK".into()).await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), Status> {
        if self.max_deliver > 0 && delivery.attempt >= self.max_deliver {
            return self.to_dead_letter(delivery, delivery.attempt).await;
        }
        let body = if delay.is_zero() {
            "-NAK".to_string()
        } else {
            format!("-NAK {{\"delay\":{}}}", u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX))
        };
        self.reply(&delivery.token, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the streams of earlier conformance runs.
    async fn clean(nats: &Nats) {
        let mut streams = nats.js.streams();
        let mut old = Vec::new();
        while let Some(Ok(info)) = streams.next().await {
            if let Some(d) = info.config.description.as_deref().and_then(|d| serde_json::from_str::<Described>(d).ok())
                && d.namespace.starts_with("conformance-events")
            {
                old.push(info.config.name.clone());
            }
        }
        for name in old {
            let _ = nats.js.delete_stream(&name).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let nats = Nats::connect(&url).await.expect("connects");
        clean(&nats).await;
        micro_conformance::events::events(Arc::new(NatsEvents::new(&nats))).await;
    }

    #[test]
    fn ack_subjects() {
        assert_eq!(parse_ack_subject("$JS.ACK.S.C.3.17.9.1700000000000000000.0"), Some((3, 17)));
        assert_eq!(parse_ack_subject("$JS.ACK.dom.acc.S.C.2.5.4.1700000000000000000.0.tok"), Some((2, 5)));
        assert_eq!(parse_ack_subject("nonsense"), None);
    }
}
