//! The data-plane services as the contracts of `micro-core`: what a service outside the
//! server uses transparently.

use super::{Ch, TIMEOUT, e, request};
use crate::proto::{broker as bpb, config as cpb, events as epb, store as spb, sync as ypb};
use bytes::Bytes;
use futures::StreamExt;
use micro_core::blob::{Blob, BlobInfo, Chunks};
use micro_core::broker::{Broker, Message as BrokerMessage};
use micro_core::config::{Change, Config};
use micro_core::events::{Acker, ConsumeOptions, Delivery, Event, Events, GroupInfo, Message, ReadOptions};
use micro_core::store::{Query, Record, Store, Table};
use micro_core::sync::{Lock, Sync};
use micro_core::{BoxStream, Status};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The `store` service's Store endpoints as a [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStore {
    client: spb::store_client::StoreClient<Ch>,
    namespace: String,
}

impl RemoteStore {
    /// A client over `channel` (see [`super::channel`]) acting in namespace `namespace` (which
    /// [`Store::databases`] reports on).
    pub fn new(channel: Ch, namespace: &str) -> RemoteStore {
        RemoteStore {
            client: spb::store_client::StoreClient::new(channel).max_decoding_message_size(64 << 20),
            namespace: namespace.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Store for RemoteStore {
    async fn read(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        let msg = spb::ReadRequest { key: key.to_string(), options: Some(crate::proto::options_of(query, table)) };
        let res = self.client.clone().read(request(&table.database, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().records.into_iter().map(Into::into).collect())
    }

    async fn write(&self, table: &Table, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        let mut wire: spb::Record = record.into();
        let ttl_ms = match ttl {
            Some(t) => t.as_millis().max(1) as i64,
            None => {
                // An absolute expiry travels as a TTL, so clocks need not agree.
                let left = record.expiry.map(|x| x.saturating_sub(micro_core::store::now_ms()));
                wire.expiry = 0;
                left.map(|l| l.max(1) as i64).unwrap_or(0)
            }
        };
        let msg = spb::WriteRequest {
            record: Some(wire),
            options: Some(crate::proto::options_of(&Query::default(), table)),
            ttl_ms,
        };
        self.client.clone().write(request(&table.database, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn delete(&self, table: &Table, key: &str) -> Result<(), Status> {
        let msg = spb::DeleteRequest {
            key: key.to_string(),
            options: Some(crate::proto::options_of(&Query::default(), table)),
        };
        self.client.clone().delete(request(&table.database, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn list(&self, table: &Table, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        let msg = spb::ListRequest { key: key.to_string(), options: Some(crate::proto::options_of(query, table)) };
        let mut stream =
            self.client.clone().list(request(&table.database, msg, Some(TIMEOUT))?).await.map_err(e)?.into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream.message().await.map_err(e)? {
            keys.extend(batch.keys);
        }
        Ok(keys)
    }

    async fn databases(&self) -> Result<Vec<String>, Status> {
        // The server answers with the caller's own database.
        let res = self
            .client
            .clone()
            .databases(request(&self.namespace, spb::DatabasesRequest {}, Some(TIMEOUT))?)
            .await
            .map_err(e)?;
        Ok(res.into_inner().databases)
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, Status> {
        let msg = spb::TablesRequest { database: database.to_string() };
        let res = self.client.clone().tables(request(database, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().tables)
    }
}

/// The `store` service's Blob endpoints as a [`Blob`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteBlob {
    client: spb::blob_client::BlobClient<Ch>,
}

impl RemoteBlob {
    /// A client over `channel` (see [`super::channel`]).
    pub fn new(channel: Ch) -> RemoteBlob {
        RemoteBlob { client: spb::blob_client::BlobClient::new(channel).max_decoding_message_size(8 << 20) }
    }
}

/// Chunks sent per message of an upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[async_trait::async_trait]
impl Blob for RemoteBlob {
    async fn put(
        &self,
        ns: &str,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status> {
        let (tx, rx) = mpsc::channel::<spb::PutRequest>(4);
        let first = spb::PutRequest {
            bucket: bucket.to_string(),
            key: key.to_string(),
            content_type: content_type.to_string(),
            data: Vec::new(),
        };
        // On a failing source the feeder hands back its sender, so the call can be
        // cancelled (RST_STREAM) before the request stream could look complete.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<(Status, mpsc::Sender<spb::PutRequest>)>();
        tokio::spawn(async move {
            if tx.send(first).await.is_err() {
                return;
            }
            let mut data = data;
            while let Some(chunk) = data.next().await {
                match chunk {
                    Ok(b) => {
                        for part in b.chunks(UPLOAD_CHUNK) {
                            let msg = spb::PutRequest { data: part.to_vec(), ..Default::default() };
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(st) => {
                        let _ = failed_tx.send((st, tx));
                        return;
                    }
                }
            }
        });
        let mut client = self.client.clone();
        let mut call = Box::pin(client.put(request(ns, ReceiverStream::new(rx), None)?));
        let res = tokio::select! {
            res = &mut call => res,
            failed = failed_rx => match failed {
                Ok((st, tx)) => {
                    drop(call);
                    drop(tx);
                    return Err(st);
                }
                // The source ended well: wait for the answer.
                Err(_) => call.await,
            },
        };
        let info = res.map_err(e)?.into_inner().info.unwrap_or_default();
        Ok(info.into())
    }

    async fn get(&self, ns: &str, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status> {
        let msg = spb::GetRequest { bucket: bucket.to_string(), key: key.to_string() };
        let mut stream = self.client.clone().get(request(ns, msg, None)?).await.map_err(e)?.into_inner();
        let first = stream.message().await.map_err(e)?.ok_or_else(|| Status::internal("blob", "empty answer"))?;
        let info: BlobInfo = first.info.unwrap_or_default().into();
        let chunks = stream.map(|m| m.map(|m| Bytes::from(m.data)).map_err(e)).boxed();
        Ok((info, chunks))
    }

    async fn list(&self, ns: &str, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status> {
        let msg = spb::BlobListRequest { bucket: bucket.to_string(), prefix: prefix.to_string() };
        let res = self.client.clone().list(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().objects.into_iter().map(Into::into).collect())
    }

    async fn delete(&self, ns: &str, bucket: &str, key: &str) -> Result<(), Status> {
        let msg = spb::BlobDeleteRequest { bucket: bucket.to_string(), key: key.to_string() };
        self.client.clone().delete(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    /// Not on the wire: only the server lists a namespace's buckets (to delete them with
    /// the namespace), so a remote handle answers `Unimplemented`.
    async fn buckets(&self, _ns: &str) -> Result<Vec<String>, Status> {
        Err(Status::new(micro_core::Code::Unimplemented, "blob", "listing buckets is not offered by the blob service"))
    }
}

/// The `events` service as [`Events`]. Cheap to clone.
///
/// A consumer acks while its delivery stream is alive: once the stream is dropped the
/// server learns the member has left, and later acks fail (`FailedPrecondition`; the
/// event is redelivered after its ack wait). A program about to exit calls [`settle`].
#[derive(Clone)]
pub struct RemoteEvents {
    client: epb::events_client::EventsClient<Ch>,
}

impl RemoteEvents {
    /// A client over `channel` (see [`super::channel`]).
    pub fn new(channel: Ch) -> RemoteEvents {
        RemoteEvents { client: epb::events_client::EventsClient::new(channel) }
    }
}

/// Acks and nacks sent back on a consume stream.
struct RemoteAcker {
    tx: mpsc::Sender<epb::ConsumeRequest>,
    /// The delivery stream was dropped: the server reads nothing after the close marker.
    left: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Acker for RemoteAcker {
    async fn ack(&self, d: &Delivery) -> Result<(), Status> {
        self.send(epb::Ack { token: d.token.clone(), nack: false, delay_ms: 0 }).await
    }

    async fn nack(&self, d: &Delivery, delay: Duration) -> Result<(), Status> {
        let delay_ms = delay.as_millis().min(u128::from(u32::MAX)) as u32;
        self.send(epb::Ack { token: d.token.clone(), nack: true, delay_ms }).await
    }
}

/// The client's side of a consume call: sends the close marker when dropped and keeps
/// the call open until the server ends it. Dropping the replies at once would cancel the
/// call, and with it acks sent just before that the server had not read yet.
struct Leave {
    tx: mpsc::Sender<epb::ConsumeRequest>,
    replies: Option<tonic::Streaming<epb::Delivery>>,
    left: Arc<AtomicBool>,
}

/// How many consume calls are closing in the background (see [`settle`]).
fn closing() -> &'static tokio::sync::watch::Sender<usize> {
    static CLOSING: std::sync::OnceLock<tokio::sync::watch::Sender<usize>> = std::sync::OnceLock::new();
    CLOSING.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Counts one closing call while it lives (also when its runtime drops it unfinished).
struct Closing;

impl Closing {
    fn start() -> Closing {
        closing().send_modify(|n| *n += 1);
        Closing
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        closing().send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Waits, at most `timeout`, until the consume streams of [`RemoteEvents`] dropped so far
/// have closed, so the server has read the acks sent on them. A program about to exit
/// calls it: ending the runtime would cancel the closing, and acks sent last would be
/// lost (their events redelivered after the ack wait).
pub async fn settle(timeout: Duration) {
    let mut rx = closing().subscribe();
    let _ = tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await;
}

impl Drop for Leave {
    fn drop(&mut self) {
        // Acks from now on would follow the close marker, which the server reads last.
        self.left.store(true, Ordering::SeqCst);
        let unsent = match self.tx.try_send(epb::ConsumeRequest { kind: None }) {
            Err(mpsc::error::TrySendError::Full(close)) => Some(close),
            _ => None,
        };
        let (tx, replies) = (self.tx.clone(), self.replies.take());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let closing = Closing::start();
            rt.spawn(async move {
                let _closing = closing;
                if let Some(close) = unsent {
                    let _ = tx.send(close).await;
                }
                drop(tx);
                // Deliveries sent meanwhile are dropped unacked: the server redelivers them.
                if let Some(mut replies) = replies {
                    let drained = async { while let Ok(Some(_)) = replies.message().await {} };
                    let _ = tokio::time::timeout(TIMEOUT, drained).await;
                }
            });
        }
    }
}

impl RemoteAcker {
    async fn send(&self, ack: epb::Ack) -> Result<(), Status> {
        if self.left.load(Ordering::SeqCst) {
            let detail =
                "the consumer has left (its delivery stream was dropped); the event is redelivered after its ack wait";
            return Err(Status::new(micro_core::Code::FailedPrecondition, "events", detail));
        }
        let msg = epb::ConsumeRequest { kind: Some(epb::consume_request::Kind::Ack(ack)) };
        self.tx.send(msg).await.map_err(|_| Status::unavailable("events", "the consume stream has ended"))
    }
}

#[async_trait::async_trait]
impl Events for RemoteEvents {
    async fn publish(&self, ns: &str, topic: &str, message: &Message) -> Result<Event, Status> {
        let msg = epb::PublishRequest {
            topic: topic.to_string(),
            key: message.key.clone(),
            metadata: message.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            payload: message.payload.clone(),
        };
        let res = self.client.clone().publish(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().event.unwrap_or_default().into())
    }

    async fn consume(
        &self,
        ns: &str,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        let (tx, rx) = mpsc::channel::<epb::ConsumeRequest>(64);
        let subscribe = epb::Subscribe {
            topic: topic.to_string(),
            group: options.group.clone(),
            offset: Some(epb::Offset { value: crate::proto::format_offset(&options.offset) }),
            auto_ack: options.auto_ack,
            ack_wait_ms: options.ack_wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
            max_deliver: options.max_deliver,
            unlimited: options.max_deliver == 0,
            dead_letter: options.dead_letter.clone().unwrap_or_default(),
            window: 0,
        };
        tx.send(epb::ConsumeRequest { kind: Some(epb::consume_request::Kind::Subscribe(subscribe)) })
            .await
            .map_err(|_| Status::internal("events", "consume stream closed"))?;
        // When the caller drops the delivery stream, a close marker (after any acks already
        // queued) tells the server this member left, even while deliveries holding the
        // acker live on; the server then redelivers what it had not acked, and their acks
        // are refused. The call stays open until the server has read that far (see
        // [`Leave`]).
        let replies =
            self.client.clone().consume(request(ns, ReceiverStream::new(rx), None)?).await.map_err(e)?.into_inner();
        let left = Arc::new(AtomicBool::new(false));
        let mut member = Leave { tx: tx.clone(), replies: Some(replies), left: left.clone() };
        let acker: Arc<dyn Acker> = Arc::new(RemoteAcker { tx: tx.clone(), left });
        // Demand-driven: one delivery is asked for each time the caller wants the next,
        // so nothing sits in flight to a consumer that has stopped reading.
        let out = async_stream::stream! {
            loop {
                let pull = epb::ConsumeRequest { kind: Some(epb::consume_request::Kind::Pull(epb::Pull { count: 1 })) };
                if tx.send(pull).await.is_err() {
                    break;
                }
                let Some(replies) = member.replies.as_mut() else { break };
                match replies.message().await {
                    Ok(Some(d)) => yield Ok(Delivery {
                        event: d.event.unwrap_or_default().into(),
                        group: d.group,
                        attempt: d.attempt,
                        token: d.token,
                        acker: acker.clone(),
                    }),
                    Ok(None) => break,
                    Err(err) => {
                        yield Err(e(err));
                        break;
                    }
                }
            }
        };
        Ok(out.boxed())
    }

    async fn read(&self, ns: &str, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status> {
        let msg = epb::ReadRequest {
            topic: topic.to_string(),
            offset: options.offset.as_ref().map(|o| epb::Offset { value: crate::proto::format_offset(o) }),
            limit: options.limit,
            skip: options.offset_count,
        };
        let res = self.client.clone().read(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().events.into_iter().map(Into::into).collect())
    }

    async fn topics(&self, ns: &str) -> Result<Vec<String>, Status> {
        let res = self.client.clone().topics(request(ns, epb::TopicsRequest {}, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().topics)
    }

    async fn groups(&self, ns: &str, topic: &str) -> Result<Vec<GroupInfo>, Status> {
        let msg = epb::GroupsRequest { topic: topic.to_string() };
        let res = self.client.clone().groups(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(res.into_inner().groups.into_iter().map(Into::into).collect())
    }
}

/// The `broker` service as a [`Broker`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteBroker {
    client: bpb::broker_client::BrokerClient<Ch>,
}

impl RemoteBroker {
    /// A client over `channel` (see [`super::channel`]).
    pub fn new(channel: Ch) -> RemoteBroker {
        RemoteBroker { client: bpb::broker_client::BrokerClient::new(channel) }
    }
}

#[async_trait::async_trait]
impl Broker for RemoteBroker {
    async fn publish(&self, ns: &str, m: &BrokerMessage) -> Result<(), Status> {
        let message = bpb::Message {
            topic: m.topic.clone(),
            metadata: m.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            payload: m.payload.clone(),
        };
        let msg = bpb::PublishRequest { message: Some(message) };
        self.client.clone().publish(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        ns: &str,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<BrokerMessage, Status>>, Status> {
        let msg = bpb::SubscribeRequest { topic: topic.to_string(), queue: queue.unwrap_or_default().to_string() };
        let stream = self.client.clone().subscribe(request(ns, msg, None)?).await.map_err(e)?.into_inner();
        Ok(stream
            .map(|m| {
                let m = m.map_err(e)?;
                Ok(BrokerMessage { topic: m.topic, metadata: m.metadata.into_iter().collect(), payload: m.payload })
            })
            .boxed())
    }
}

/// The `config` service as [`Config`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteConfig {
    client: cpb::config_client::ConfigClient<Ch>,
}

impl RemoteConfig {
    /// A client over `channel` (see [`super::channel`]).
    pub fn new(channel: Ch) -> RemoteConfig {
        RemoteConfig { client: cpb::config_client::ConfigClient::new(channel) }
    }
}

#[async_trait::async_trait]
impl Config for RemoteConfig {
    async fn get(&self, ns: &str, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let msg = cpb::GetRequest { path: path.to_string(), secret: secrets };
        let res = self.client.clone().get(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?.into_inner();
        Ok(res.found.then(|| res.value.as_ref().map(crate::proto::value_to_json).unwrap_or(Value::Null)))
    }

    async fn set(&self, ns: &str, path: &str, value: &Value, secret: bool) -> Result<(), Status> {
        let msg = cpb::SetRequest { path: path.to_string(), value: Some(crate::proto::json_to_value(value)), secret };
        self.client.clone().set(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn delete(&self, ns: &str, path: &str) -> Result<(), Status> {
        let msg = cpb::DeleteRequest { path: path.to_string() };
        self.client.clone().delete(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn watch(&self, ns: &str, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        let msg = cpb::WatchRequest { path: path.to_string() };
        let stream = self.client.clone().watch(request(ns, msg, None)?).await.map_err(e)?.into_inner();
        Ok(stream
            .map(|c| {
                let c = c.map_err(e)?;
                Ok(Change {
                    path: c.path,
                    value: c.value.as_ref().map(crate::proto::value_to_json).unwrap_or(Value::Null),
                })
            })
            .boxed())
    }
}

/// The `sync` service as [`Sync`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteSync {
    client: ypb::sync_client::SyncClient<Ch>,
}

impl RemoteSync {
    /// A client over `channel` (see [`super::channel`]).
    pub fn new(channel: Ch) -> RemoteSync {
        RemoteSync { client: ypb::sync_client::SyncClient::new(channel) }
    }
}

fn ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[async_trait::async_trait]
impl Sync for RemoteSync {
    async fn lock(&self, ns: &str, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        let msg = ypb::LockRequest { id: id.to_string(), ttl_ms: ms(ttl), wait_ms: ms(wait) };
        let res = self.client.clone().lock(request(ns, msg, Some(wait + TIMEOUT))?).await.map_err(e)?.into_inner();
        Ok(Lock { id: res.id, token: res.token, ttl })
    }

    async fn refresh(&self, ns: &str, lock: &Lock) -> Result<(), Status> {
        let msg = ypb::RefreshRequest { id: lock.id.clone(), token: lock.token.clone(), ttl_ms: ms(lock.ttl) };
        self.client.clone().refresh(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }

    async fn unlock(&self, ns: &str, lock: &Lock) -> Result<(), Status> {
        let msg = ypb::UnlockRequest { id: lock.id.clone(), token: lock.token.clone() };
        self.client.clone().unlock(request(ns, msg, Some(TIMEOUT))?).await.map_err(e)?;
        Ok(())
    }
}
