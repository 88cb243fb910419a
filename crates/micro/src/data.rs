//! Clients of the server's data-plane services — store, blob, events, broker, config and
//! sync — implementing the same contracts as the embedded backends, so a service outside
//! the server uses them transparently (see [`crate::Service::store`] and friends).

use crate::proto::{broker as bpb, config as cpb, events as epb, store as spb, sync as ypb};
use crate::status::from_tonic;
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
use tonic::transport::Channel;

/// The deadline of a unary data-plane call.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client gets the access token it sends (`authorization: Bearer …`).
pub trait TokenSource: Send + std::marker::Sync + 'static {
    /// The current token, if any.
    fn token(&self) -> Option<String>;

    /// The account's credentials, when the source can have tokens delegated to other
    /// services ([`crate::auth::Credentials::token_for`]); a fixed token cannot.
    fn credentials(&self) -> Option<&crate::auth::Credentials> {
        None
    }
}

/// A fixed token.
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// Adds the token of a [`TokenSource`] to every call on a channel.
#[derive(Clone, Default)]
pub struct AuthInterceptor(Option<Arc<dyn TokenSource>>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.as_ref().and_then(|s| s.token())
            && !req.metadata().contains_key("authorization")
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// A channel to the server whose calls carry a token when there is one.
pub type Ch = tonic::service::interceptor::InterceptedService<Channel, AuthInterceptor>;

/// A lazily connecting channel to the server at `address` (`host:port` of its proxy).
pub fn channel(address: &str) -> Result<Ch, Status> {
    channel_with(address, None)
}

/// Like [`channel`], sending the tokens of `source`.
pub fn channel_with(address: &str, source: Option<Arc<dyn TokenSource>>) -> Result<Ch, Status> {
    let ch = Channel::from_shared(format!("http://{address}"))
        .map_err(|e| Status::bad_request("micro", format!("bad server address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(tonic::service::interceptor::InterceptedService::new(ch, AuthInterceptor(source)))
}

/// A request in namespace `ns`, with a deadline unless `timeout` is `None`.
pub(crate) fn request<T>(ns: &str, msg: T, timeout: Option<Duration>) -> Result<tonic::Request<T>, Status> {
    let mut req = tonic::Request::new(msg);
    let v = ns.parse().map_err(|_| Status::bad_request("micro", format!("invalid namespace {ns:?}")))?;
    req.metadata_mut().insert(micro_core::metadata::NAMESPACE, v);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(req)
}

fn e(s: tonic::Status) -> Status {
    from_tonic(&s)
}

/// The `store` service's Store endpoints as a [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStore {
    client: spb::store_client::StoreClient<Ch>,
    namespace: String,
}

impl RemoteStore {
    /// A client over `channel` (see [`channel`]) acting in namespace `namespace` (which
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
    /// A client over `channel` (see [`channel`]).
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
    /// A client over `channel` (see [`channel`]).
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
    /// A client over `channel` (see [`channel`]).
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
    /// A client over `channel` (see [`channel`]).
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
    /// A client over `channel` (see [`channel`]).
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

/// Every data-plane backend a service uses. Cheap to clone.
#[derive(Clone)]
pub struct Data {
    /// Key-value records.
    pub store: Arc<dyn Store>,
    /// Objects.
    pub blob: Arc<dyn Blob>,
    /// Durable events.
    pub events: Arc<dyn Events>,
    /// Ephemeral messaging.
    pub broker: Arc<dyn Broker>,
    /// Configuration.
    pub config: Arc<dyn Config>,
    /// Locks and leader election.
    pub sync: Arc<dyn Sync>,
}

impl Data {
    /// The data services of the `micro server` whose proxy is at `address`, for calls in
    /// `namespace`. A malformed address is logged and replaced by the default one.
    pub fn remote(address: &str, namespace: &str) -> Data {
        Data::remote_with(address, namespace, None)
    }

    /// Like [`Data::remote`], every call carrying the tokens of `source`.
    pub fn remote_with(address: &str, namespace: &str, source: Option<Arc<dyn TokenSource>>) -> Data {
        let ch = channel_with(address, source.clone()).unwrap_or_else(|e| {
            tracing::warn!(address, error = %e, "bad server address; using {}", crate::DEFAULT_SERVER);
            tonic::service::interceptor::InterceptedService::new(
                Channel::from_static("http://127.0.0.1:8081").connect_lazy(),
                AuthInterceptor(source),
            )
        });
        Data {
            store: Arc::new(RemoteStore::new(ch.clone(), namespace)),
            blob: Arc::new(RemoteBlob::new(ch.clone())),
            events: Arc::new(RemoteEvents::new(ch.clone())),
            broker: Arc::new(RemoteBroker::new(ch.clone())),
            config: Arc::new(RemoteConfig::new(ch.clone())),
            sync: Arc::new(RemoteSync::new(ch)),
        }
    }
}

/// A store scoped to one table of a namespace (by default the service's own). Cheap to
/// clone.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<dyn Store>,
    table: Table,
}

impl StoreHandle {
    /// `store` scoped to `table`.
    pub fn new(store: Arc<dyn Store>, table: Table) -> StoreHandle {
        StoreHandle { store, table }
    }

    /// The same store, another table of the same database.
    pub fn table(&self, table: &str) -> StoreHandle {
        StoreHandle { store: self.store.clone(), table: Table::new(&self.table.database, table) }
    }

    /// Where records go.
    pub fn scope(&self) -> &Table {
        &self.table
    }

    /// The record at `key`; `NotFound` when absent.
    pub async fn get(&self, key: &str) -> Result<Record, Status> {
        let mut records = self.store.read(&self.table, key, &Query::default()).await?;
        records.pop().ok_or_else(|| Status::not_found("store", format!("no record {key:?}")))
    }

    /// Records matching `key` as `query` says.
    pub async fn read(&self, key: &str, query: &Query) -> Result<Vec<Record>, Status> {
        self.store.read(&self.table, key, query).await
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), Status> {
        self.store.write(&self.table, &Record::new(key, value), None).await
    }

    /// Writes a record, expiring after `ttl` when given.
    pub async fn write(&self, record: &Record, ttl: Option<Duration>) -> Result<(), Status> {
        self.store.write(&self.table, record, ttl).await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), Status> {
        self.store.delete(&self.table, key).await
    }

    /// Keys matching `key` as `query` says.
    pub async fn list(&self, key: &str, query: &Query) -> Result<Vec<String>, Status> {
        self.store.list(&self.table, key, query).await
    }
}

/// Events in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct EventsHandle {
    events: Arc<dyn Events>,
    namespace: String,
}

impl EventsHandle {
    /// `events` in `namespace`.
    pub fn new(events: Arc<dyn Events>, namespace: &str) -> EventsHandle {
        EventsHandle { events, namespace: namespace.to_string() }
    }

    /// Publishes a JSON payload.
    pub async fn publish<T: serde::Serialize>(&self, topic: &str, payload: &T) -> Result<Event, Status> {
        let payload = serde_json::to_vec(payload).map_err(|e| Status::bad_request("events", e.to_string()))?;
        self.events.publish(&self.namespace, topic, &Message { payload, ..Default::default() }).await
    }

    /// Publishes a message (key, metadata and raw payload).
    pub async fn publish_message(&self, topic: &str, message: &Message) -> Result<Event, Status> {
        self.events.publish(&self.namespace, topic, message).await
    }

    /// Consumes `topic`.
    pub async fn consume(
        &self,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        self.events.consume(&self.namespace, topic, options).await
    }

    /// The history of `topic`.
    pub async fn read(&self, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status> {
        self.events.read(&self.namespace, topic, options).await
    }
}

/// Config of one namespace, with optional local layers over the server's: a file and
/// environment variables (see [`ConfigHandle::layered_from_env`]). Cheap to clone.
#[derive(Clone)]
pub struct ConfigHandle {
    config: Arc<dyn Config>,
    namespace: String,
    /// File and environment values, which win over the server's.
    overlay: Result<Arc<Value>, Status>,
}

/// The environment prefix of config overrides: `MICRO_CONFIG_APP__DB__URL` sets
/// `app.db.url` (segments joined by `__`, lowercased).
pub const CONFIG_ENV_PREFIX: &str = "MICRO_CONFIG_";

/// Deep-merges `top` over `base`: objects merge key by key, anything else replaces.
pub fn merge(base: Value, top: Value) -> Value {
    match (base, top) {
        (Value::Object(mut b), Value::Object(t)) => {
            for (k, v) in t {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, top) => top,
    }
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return (!v.is_null()).then_some(v);
    }
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

fn set_at(root: &mut Value, segs: &[&str], value: Value) {
    let mut cur = root;
    for seg in segs {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Value::Object(map) = cur else { return };
        cur = map.entry(seg.to_string()).or_insert(Value::Null);
    }
    *cur = value;
}

/// The local layers: the file at `file` (JSON, or TOML by its `.toml` extension) with
/// the `MICRO_CONFIG_*` variables of `vars` over it.
pub fn overlay(file: Option<&std::path::Path>, vars: impl Iterator<Item = (String, String)>) -> Result<Value, Status> {
    let mut layer = match file {
        None => Value::Null,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Status::bad_request("config", format!("reading {}: {e}", path.display())))?;
            let parsed: Result<Value, String> = if path.extension().is_some_and(|x| x == "toml") {
                toml::from_str::<toml::Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
            } else {
                serde_json::from_str(&text).map_err(|e| e.to_string())
            };
            let v = parsed.map_err(|e| Status::bad_request("config", format!("{}: {e}", path.display())))?;
            if !v.is_object() {
                return Err(Status::bad_request(
                    "config",
                    format!("{}: the top level must be an object", path.display()),
                ));
            }
            v
        }
    };
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix(CONFIG_ENV_PREFIX) else { continue };
        if rest == "FILE" || rest.is_empty() {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let segs: Vec<&str> = lower.split("__").collect();
        if segs.iter().any(|s| s.is_empty()) {
            continue;
        }
        let value = serde_json::from_str(&v).unwrap_or(Value::String(v));
        set_at(&mut layer, &segs, value);
    }
    Ok(layer)
}

impl ConfigHandle {
    /// `config` in `namespace`, with no local layers.
    pub fn new(config: Arc<dyn Config>, namespace: &str) -> ConfigHandle {
        ConfigHandle { config, namespace: namespace.to_string(), overlay: Ok(Arc::new(Value::Null)) }
    }

    /// Puts `layer` (for example from [`overlay`]) over the server's values.
    pub fn with_overlay(mut self, layer: Value) -> ConfigHandle {
        self.overlay = Ok(Arc::new(layer));
        self
    }

    /// Layers the file named by `MICRO_CONFIG_FILE` and the `MICRO_CONFIG_*` variables
    /// over the server's values. A bad file makes every read fail with its error.
    pub fn layered_from_env(mut self) -> ConfigHandle {
        let file = std::env::var_os("MICRO_CONFIG_FILE").filter(|f| !f.is_empty()).map(std::path::PathBuf::from);
        self.overlay = overlay(file.as_deref(), std::env::vars()).map(Arc::new);
        self
    }

    async fn layered(&self, path: &str, secrets: bool) -> Result<Option<Value>, Status> {
        let layer = self.overlay.clone()?;
        let local = at(&layer, path).cloned();
        let server = match self.config.get(&self.namespace, path, secrets).await {
            Ok(v) => v,
            // Local layers still answer when the server is away.
            Err(e) if e.code() == micro_core::Code::Unavailable && local.is_some() => {
                tracing::warn!(error = %e, "config server unreachable; using local config only");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(match (server, local) {
            (s, None) => s,
            (None, l) => l,
            (Some(s), Some(l)) => Some(merge(s, l)),
        })
    }

    /// The value at `path` (secrets masked), local layers over the server's.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, Status> {
        self.layered(path, false).await
    }

    /// The value at `path` with secrets in plain text.
    pub async fn get_secret(&self, path: &str) -> Result<Option<Value>, Status> {
        self.layered(path, true).await
    }

    /// The value at `path` as `T`, or `default` when absent (secrets in plain text);
    /// an error when present but not a `T`.
    pub async fn get_or<T: serde::de::DeserializeOwned>(&self, path: &str, default: T) -> Result<T, Status> {
        match self.layered(path, true).await? {
            None | Some(Value::Null) => Ok(default),
            Some(v) => serde_json::from_value(v)
                .map_err(|err| Status::bad_request("config", format!("{path} has the wrong type: {err}"))),
        }
    }

    /// Sets `path` on the server (objects merge).
    pub async fn set(&self, path: &str, value: &Value) -> Result<(), Status> {
        self.config.set(&self.namespace, path, value, false).await
    }

    /// Sets `path` on the server to a secret, encrypted at rest.
    pub async fn set_secret(&self, path: &str, value: &Value) -> Result<(), Status> {
        self.config.set(&self.namespace, path, value, true).await
    }

    /// Deletes a leaf or subtree on the server.
    pub async fn delete(&self, path: &str) -> Result<(), Status> {
        self.config.delete(&self.namespace, path).await
    }

    /// The current value, then every change under `path` on the server (local layers
    /// are not watched).
    pub async fn watch(&self, path: &str) -> Result<BoxStream<Result<Change, Status>>, Status> {
        self.config.watch(&self.namespace, path).await
    }
}

/// Locks and elections in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct SyncHandle {
    sync: Arc<dyn Sync>,
    namespace: String,
}

impl SyncHandle {
    /// `sync` in `namespace`.
    pub fn new(sync: Arc<dyn Sync>, namespace: &str) -> SyncHandle {
        SyncHandle { sync, namespace: namespace.to_string() }
    }

    /// Takes lock `id` for `ttl`, waiting up to `wait`.
    pub async fn lock(&self, id: &str, ttl: Duration, wait: Duration) -> Result<Lock, Status> {
        self.sync.lock(&self.namespace, id, ttl, wait).await
    }

    /// Extends a held lock.
    pub async fn refresh(&self, lock: &Lock) -> Result<(), Status> {
        self.sync.refresh(&self.namespace, lock).await
    }

    /// Releases a held lock.
    pub async fn unlock(&self, lock: &Lock) -> Result<(), Status> {
        self.sync.unlock(&self.namespace, lock).await
    }

    /// Campaigns until elected leader of `election`.
    pub async fn elect(&self, election: &str, ttl: Duration) -> Result<micro_core::sync::Leadership, Status> {
        micro_core::sync::elect(self.sync.clone(), &self.namespace, election, ttl).await
    }
}

/// Objects in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct BlobHandle {
    blob: Arc<dyn Blob>,
    namespace: String,
}

impl BlobHandle {
    /// `blob` in `namespace`.
    pub fn new(blob: Arc<dyn Blob>, namespace: &str) -> BlobHandle {
        BlobHandle { blob, namespace: namespace.to_string() }
    }

    /// Stores `data` (in memory) as an object.
    pub async fn put(&self, bucket: &str, key: &str, content_type: &str, data: Bytes) -> Result<BlobInfo, Status> {
        let chunks = futures::stream::iter([Ok(data)]).boxed();
        self.blob.put(&self.namespace, bucket, key, content_type, chunks).await
    }

    /// Stores a stream of chunks as an object.
    pub async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        data: Chunks,
    ) -> Result<BlobInfo, Status> {
        self.blob.put(&self.namespace, bucket, key, content_type, data).await
    }

    /// An object's info and content stream.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<(BlobInfo, Chunks), Status> {
        self.blob.get(&self.namespace, bucket, key).await
    }

    /// Objects of a bucket by key prefix.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<BlobInfo>, Status> {
        self.blob.list(&self.namespace, bucket, prefix).await
    }

    /// Deletes an object.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Status> {
        self.blob.delete(&self.namespace, bucket, key).await
    }
}

/// The broker in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    broker: Arc<dyn Broker>,
    namespace: String,
}

impl BrokerHandle {
    /// `broker` in `namespace`.
    pub fn new(broker: Arc<dyn Broker>, namespace: &str) -> BrokerHandle {
        BrokerHandle { broker, namespace: namespace.to_string() }
    }

    /// Publishes a JSON payload to the topic's current subscribers.
    pub async fn publish<T: serde::Serialize>(&self, topic: &str, payload: &T) -> Result<(), Status> {
        let payload = serde_json::to_vec(payload).map_err(|e| Status::bad_request("broker", e.to_string()))?;
        let m = BrokerMessage { topic: topic.to_string(), payload, ..Default::default() };
        self.broker.publish(&self.namespace, &m).await
    }

    /// Subscribes (optionally in a queue group).
    pub async fn subscribe(
        &self,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<BoxStream<Result<BrokerMessage, Status>>, Status> {
        self.broker.subscribe(&self.namespace, topic, queue).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_from_a_file_and_env_vars() {
        let dir = std::env::temp_dir().join(format!("micro-overlay-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("app.toml");
        std::fs::write(&toml, "[app.db]\nhost = \"file\"\nport = 1\n").unwrap();
        let vars = [
            ("MICRO_CONFIG_APP__DB__PORT".to_string(), "5432".to_string()),
            ("MICRO_CONFIG_APP__MODE".to_string(), "production".to_string()),
            ("MICRO_CONFIG_FILE".to_string(), "ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let v = overlay(Some(&toml), vars.into_iter()).unwrap();
        assert_eq!(v, json!({"app": {"db": {"host": "file", "port": 5432}, "mode": "production"}}));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{nope").unwrap();
        assert_eq!(overlay(Some(&bad), std::iter::empty()).unwrap_err().code(), micro_core::Code::InvalidArgument);
        assert!(overlay(Some(&dir.join("missing.json")), std::iter::empty()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn merge_is_deep() {
        let m = merge(json!({"a": {"b": 1, "c": 2}, "d": 1}), json!({"a": {"c": 3}, "e": 4}));
        assert_eq!(m, json!({"a": {"b": 1, "c": 3}, "d": 1, "e": 4}));
        assert_eq!(merge(json!({"a": 1}), json!(5)), json!(5));
    }
}
