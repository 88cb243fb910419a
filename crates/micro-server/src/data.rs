//! The data-plane core services: `store` (Store and Blob), `events`, `broker`, `config`
//! and `sync`, each serving its contract over gRPC in the caller's namespace.

use futures::StreamExt;
use micro::proto::{broker as bpb, config as cpb, events as epb, store as spb, sync as ypb};
use micro::status::to_tonic;
use micro_core::blob::Blob;
use micro_core::broker::Broker;
use micro_core::config::Config;
use micro_core::events::{ConsumeOptions, Delivery, Events};
use micro_core::metadata::FROM_SERVICE;
use micro_core::store::{Store, Table};
use micro_core::sync::{Lock, Sync};
use micro_core::{Code, Status as MicroStatus};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

fn t(e: MicroStatus) -> Status {
    to_tonic(&e)
}

/// The table a store call acts on: the caller's namespace as database (another one is
/// refused), and the given table, else the calling service, else `default`.
fn table_of<T>(req: &Request<T>, options: Option<&spb::Options>) -> Result<Table, Status> {
    let ns = micro::namespace(req);
    let database = options.map(|o| o.database.as_str()).filter(|d| !d.is_empty()).unwrap_or(&ns);
    if database != ns {
        return Err(t(MicroStatus::new(
            Code::PermissionDenied,
            "store",
            format!("database {database:?} belongs to another namespace (you are in {ns:?})"),
        )));
    }
    let from = req.metadata().get(FROM_SERVICE).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let table = options.map(|o| o.table.as_str()).filter(|t| !t.is_empty()).or(from).unwrap_or("default");
    let table = Table::new(database, table);
    table.validate().map_err(t)?;
    Ok(table)
}

/// Serves a [`Store`] as `store.Store`.
pub(crate) struct StoreService {
    pub(crate) store: Arc<dyn Store>,
    /// The namespaces' storage quotas.
    pub(crate) storage: crate::storage::StorageQuota,
}

#[tonic::async_trait]
impl spb::store_server::Store for StoreService {
    async fn read(&self, req: Request<spb::ReadRequest>) -> Result<Response<spb::ReadResponse>, Status> {
        let table = table_of(&req, req.get_ref().options.as_ref())?;
        let r = req.into_inner();
        let query = micro::proto::query_of(&r.options.unwrap_or_default()).map_err(t)?;
        let records = self.store.read(&table, &r.key, &query).await.map_err(t)?;
        Ok(Response::new(spb::ReadResponse { records: records.iter().map(Into::into).collect() }))
    }

    async fn write(&self, req: Request<spb::WriteRequest>) -> Result<Response<spb::WriteResponse>, Status> {
        let table = table_of(&req, req.get_ref().options.as_ref())?;
        let r = req.into_inner();
        let record: micro_core::store::Record =
            r.record.ok_or_else(|| Status::invalid_argument("store: record is required"))?.into();
        if r.ttl_ms < 0 {
            return Err(Status::invalid_argument("store: ttl_ms must not be negative"));
        }
        let ttl = (r.ttl_ms > 0).then(|| Duration::from_millis(r.ttl_ms as u64));
        let size = micro_core::store::record_size(&record.key, &record.value, &record.metadata);
        self.storage.admit(&table.database, size).await.map_err(t)?;
        self.store.write(&table, &record, ttl).await.map_err(t)?;
        Ok(Response::new(spb::WriteResponse {}))
    }

    async fn delete(&self, req: Request<spb::DeleteRequest>) -> Result<Response<spb::DeleteResponse>, Status> {
        let table = table_of(&req, req.get_ref().options.as_ref())?;
        self.store.delete(&table, &req.into_inner().key).await.map_err(t)?;
        Ok(Response::new(spb::DeleteResponse {}))
    }

    type ListStream = Stream<spb::ListResponse>;

    async fn list(&self, req: Request<spb::ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        let table = table_of(&req, req.get_ref().options.as_ref())?;
        let r = req.into_inner();
        let query = micro::proto::query_of(&r.options.unwrap_or_default()).map_err(t)?;
        let keys = self.store.list(&table, &r.key, &query).await.map_err(t)?;
        let batches: Vec<Result<spb::ListResponse, Status>> =
            keys.chunks(1000).map(|c| Ok(spb::ListResponse { keys: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn databases(&self, req: Request<spb::DatabasesRequest>) -> Result<Response<spb::DatabasesResponse>, Status> {
        // An admin of the default namespace sees every database; anyone else only the
        // namespace's own.
        let ns = micro::namespace(&req);
        let operator =
            ns == micro_core::namespace::DEFAULT && micro::auth::Caller::of(&req).is_some_and(|c| c.is_admin());
        let all = self.store.databases().await.map_err(t)?;
        let visible = all.into_iter().filter(|d| operator || *d == ns).collect();
        Ok(Response::new(spb::DatabasesResponse { databases: visible }))
    }

    async fn tables(&self, req: Request<spb::TablesRequest>) -> Result<Response<spb::TablesResponse>, Status> {
        let options =
            spb::Options { database: req.get_ref().database.clone(), table: "x".into(), ..Default::default() };
        let table = table_of(&req, Some(&options))?;
        let tables = self.store.tables(&table.database).await.map_err(t)?;
        Ok(Response::new(spb::TablesResponse { tables }))
    }
}

/// Serves a [`Blob`] as `store.Blob`.
pub(crate) struct BlobService {
    pub(crate) blob: Arc<dyn Blob>,
    /// The namespaces' storage quotas.
    pub(crate) storage: crate::storage::StorageQuota,
}

#[tonic::async_trait]
impl spb::blob_server::Blob for BlobService {
    async fn put(&self, req: Request<Streaming<spb::PutRequest>>) -> Result<Response<spb::PutResponse>, Status> {
        let ns = micro::namespace(&req);
        // The namespace's storage quota holds as the bytes come (parallel uploads share it).
        let allowance = self.storage.allowance(&ns).await.map_err(t)?;
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("blob: empty upload"))?;
        let (bucket, key, ct) = (first.bucket.clone(), first.key.clone(), first.content_type.clone());
        allowance.take((key.len() + ct.len().max(micro_core::blob::DEFAULT_CONTENT_TYPE.len())) as u64).map_err(t)?;
        let head = futures::stream::iter([Ok(bytes::Bytes::from(first.data))]);
        let rest = input.map(|m| m.map(|m| bytes::Bytes::from(m.data)).map_err(|e| micro::status::from_tonic(&e)));
        let held = head.chain(rest).map(move |c| c.and_then(|b| allowance.take(b.len() as u64).map(|()| b)));
        let info = self.blob.put(&ns, &bucket, &key, &ct, held.boxed()).await.map_err(t)?;
        Ok(Response::new(spb::PutResponse { info: Some((&info).into()) }))
    }

    type GetStream = Stream<spb::GetResponse>;

    async fn get(&self, req: Request<spb::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let (info, chunks) = self.blob.get(&ns, &r.bucket, &r.key).await.map_err(t)?;
        let head = futures::stream::iter([Ok(spb::GetResponse { info: Some((&info).into()), data: Vec::new() })]);
        let body = chunks.map(|c| c.map(|data| spb::GetResponse { info: None, data: data.to_vec() }).map_err(t));
        Ok(Response::new(Box::pin(head.chain(body))))
    }

    async fn list(&self, req: Request<spb::BlobListRequest>) -> Result<Response<spb::BlobListResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let objects = self.blob.list(&ns, &r.bucket, &r.prefix).await.map_err(t)?;
        Ok(Response::new(spb::BlobListResponse { objects: objects.iter().map(Into::into).collect() }))
    }

    async fn delete(&self, req: Request<spb::BlobDeleteRequest>) -> Result<Response<spb::BlobDeleteResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        self.blob.delete(&ns, &r.bucket, &r.key).await.map_err(t)?;
        Ok(Response::new(spb::BlobDeleteResponse {}))
    }
}

/// One turn of a consume stream.
enum Step {
    Deliver(Delivery),
    Ack(epb::Ack),
    Pull(u32),
    Fail(Status),
    End,
}

/// Serves [`Events`] as `events.Events`.
pub(crate) struct EventsService {
    pub(crate) events: Arc<dyn Events>,
}

fn consume_options(s: &epb::Subscribe) -> Result<ConsumeOptions, Status> {
    let defaults = ConsumeOptions::default();
    Ok(ConsumeOptions {
        group: s.group.clone(),
        offset: micro::proto::parse_offset(s.offset.as_ref().map(|o| o.value.as_str()).unwrap_or("")).map_err(t)?,
        auto_ack: s.auto_ack,
        ack_wait: if s.ack_wait_ms == 0 { defaults.ack_wait } else { Duration::from_millis(u64::from(s.ack_wait_ms)) },
        max_deliver: if s.unlimited {
            0
        } else if s.max_deliver == 0 {
            defaults.max_deliver
        } else {
            s.max_deliver
        },
        dead_letter: Some(s.dead_letter.clone()).filter(|d| !d.is_empty()),
    })
}

#[tonic::async_trait]
impl epb::events_server::Events for EventsService {
    async fn publish(&self, req: Request<epb::PublishRequest>) -> Result<Response<epb::PublishResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let mut message =
            micro_core::events::Message { key: r.key, metadata: r.metadata.into_iter().collect(), payload: r.payload };
        stamp_trace(&mut message.metadata);
        let event = self.events.publish(&ns, &r.topic, &message).await.map_err(t)?;
        Ok(Response::new(epb::PublishResponse { event: Some((&event).into()) }))
    }

    type ConsumeStream = Stream<epb::Delivery>;

    async fn consume(
        &self,
        req: Request<Streaming<epb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let ns = micro::namespace(&req);
        let mut input = req.into_inner();
        let Some(epb::consume_request::Kind::Subscribe(sub)) = input.message().await?.and_then(|m| m.kind) else {
            return Err(Status::invalid_argument("events: the first message must be a subscribe"));
        };
        let options = consume_options(&sub)?;
        let mut deliveries = self.events.consume(&ns, &sub.topic, &options).await.map_err(t)?;
        let out = async_stream::try_stream! {
            // Deliveries awaiting an ack from this consumer, by token.
            let mut pending: HashMap<String, Delivery> = HashMap::new();
            // Deliveries the consumer asked for and has not been sent yet.
            let mut credit = u64::from(sub.window);
            loop {
                let step = tokio::select! {
                    d = deliveries.next(), if credit > 0 => match d {
                        Some(Ok(d)) => Step::Deliver(d),
                        Some(Err(e)) => Step::Fail(t(e)),
                        None => Step::End,
                    },
                    m = input.message() => match m {
                        Ok(Some(epb::ConsumeRequest { kind: Some(epb::consume_request::Kind::Ack(a)) })) => Step::Ack(a),
                        Ok(Some(epb::ConsumeRequest { kind: Some(epb::consume_request::Kind::Pull(p)) })) => {
                            Step::Pull(p.count)
                        }
                        Ok(Some(epb::ConsumeRequest { kind: Some(_) })) => {
                            Step::Fail(Status::invalid_argument("events: only acks may follow the subscribe"))
                        }
                        // A close marker, or the consumer closed its side or went away.
                        Ok(Some(epb::ConsumeRequest { kind: None })) | Ok(None) | Err(_) => Step::End,
                    },
                };
                match step {
                    Step::Deliver(d) => {
                        let wire = epb::Delivery {
                            event: Some((&d.event).into()),
                            group: d.group.clone(),
                            attempt: d.attempt,
                            token: d.token.clone(),
                        };
                        if !options.auto_ack {
                            pending.insert(d.token.clone(), d);
                        }
                        credit -= 1;
                        yield wire;
                    }
                    Step::Ack(a) => {
                        let Some(d) = pending.remove(&a.token) else {
                            Err(Status::failed_precondition(format!("events: unknown delivery token {:?}", a.token)))?;
                            break;
                        };
                        let r = if a.nack {
                            d.acker.nack(&d, Duration::from_millis(u64::from(a.delay_ms))).await
                        } else {
                            d.ack().await
                        };
                        r.map_err(t)?;
                    }
                    Step::Pull(n) => credit = credit.saturating_add(u64::from(n)).min(1 << 20),
                    Step::Fail(e) => Err(e)?,
                    Step::End => break,
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }

    async fn read(&self, req: Request<epb::ReadRequest>) -> Result<Response<epb::ReadResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let offset = match r.offset.as_ref().map(|o| o.value.as_str()).filter(|v| !v.is_empty()) {
            Some(v) => Some(micro::proto::parse_offset(v).map_err(t)?),
            None => None,
        };
        let options = micro_core::events::ReadOptions { offset, limit: r.limit, offset_count: r.skip };
        let events = self.events.read(&ns, &r.topic, &options).await.map_err(t)?;
        Ok(Response::new(epb::ReadResponse { events: events.iter().map(Into::into).collect() }))
    }

    async fn topics(&self, req: Request<epb::TopicsRequest>) -> Result<Response<epb::TopicsResponse>, Status> {
        let ns = micro::namespace(&req);
        Ok(Response::new(epb::TopicsResponse { topics: self.events.topics(&ns).await.map_err(t)? }))
    }

    async fn groups(&self, req: Request<epb::GroupsRequest>) -> Result<Response<epb::GroupsResponse>, Status> {
        let ns = micro::namespace(&req);
        let groups = self.events.groups(&ns, &req.into_inner().topic).await.map_err(t)?;
        Ok(Response::new(epb::GroupsResponse { groups: groups.iter().map(Into::into).collect() }))
    }
}

/// Serves a [`Broker`] as `broker.Broker`.
pub(crate) struct BrokerService {
    pub(crate) broker: Arc<dyn Broker>,
}

#[tonic::async_trait]
impl bpb::broker_server::Broker for BrokerService {
    async fn publish(&self, req: Request<bpb::PublishRequest>) -> Result<Response<bpb::PublishResponse>, Status> {
        let ns = micro::namespace(&req);
        let m = req.into_inner().message.ok_or_else(|| Status::invalid_argument("broker: message is required"))?;
        let mut message = micro_core::broker::Message {
            topic: m.topic,
            metadata: m.metadata.into_iter().collect(),
            payload: m.payload,
        };
        stamp_trace(&mut message.metadata);
        self.broker.publish(&ns, &message).await.map_err(t)?;
        Ok(Response::new(bpb::PublishResponse {}))
    }

    type SubscribeStream = Stream<bpb::Message>;

    async fn subscribe(&self, req: Request<bpb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let queue = Some(r.queue.as_str()).filter(|q| !q.is_empty());
        let messages = self.broker.subscribe(&ns, &r.topic, queue).await.map_err(t)?;
        let out = messages.map(|m| {
            m.map(|m| bpb::Message { topic: m.topic, metadata: m.metadata.into_iter().collect(), payload: m.payload })
                .map_err(t)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Serves a [`Config`] as `config.Config`.
pub(crate) struct ConfigService {
    pub(crate) config: Arc<dyn Config>,
}

#[tonic::async_trait]
impl cpb::config_server::Config for ConfigService {
    async fn get(&self, req: Request<cpb::GetRequest>) -> Result<Response<cpb::GetResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let value = self.config.get(&ns, &r.path, r.secret).await.map_err(t)?;
        Ok(Response::new(cpb::GetResponse {
            found: value.is_some(),
            value: value.as_ref().map(micro::proto::json_to_value),
        }))
    }

    async fn set(&self, req: Request<cpb::SetRequest>) -> Result<Response<cpb::SetResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let value = r.value.as_ref().map(micro::proto::value_to_json).unwrap_or(serde_json::Value::Null);
        self.config.set(&ns, &r.path, &value, r.secret).await.map_err(t)?;
        Ok(Response::new(cpb::SetResponse {}))
    }

    async fn delete(&self, req: Request<cpb::DeleteRequest>) -> Result<Response<cpb::DeleteResponse>, Status> {
        let ns = micro::namespace(&req);
        self.config.delete(&ns, &req.into_inner().path).await.map_err(t)?;
        Ok(Response::new(cpb::DeleteResponse {}))
    }

    type WatchStream = Stream<cpb::Change>;

    async fn watch(&self, req: Request<cpb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let ns = micro::namespace(&req);
        let changes = self.config.watch(&ns, &req.into_inner().path).await.map_err(t)?;
        let out = changes.map(|c| {
            c.map(|c| cpb::Change { path: c.path, value: Some(micro::proto::json_to_value(&c.value)) }).map_err(t)
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Whether lock `id` of `ns` is one the server takes itself (the runtime's election,
/// `server/…`: ACME orders, the cluster's CA): nobody may take it through the service,
/// where holding it would stall the server.
pub(crate) fn reserved_lock(ns: &str, id: &str) -> bool {
    ns == micro_core::namespace::DEFAULT && (id == "leader/runtime" || id.starts_with("server/"))
}

/// Serves a [`Sync`] as `sync.Sync`.
pub(crate) struct SyncService {
    pub(crate) sync: Arc<dyn Sync>,
}

fn ms(n: u32) -> Duration {
    Duration::from_millis(u64::from(n))
}

#[tonic::async_trait]
impl ypb::sync_server::Sync for SyncService {
    async fn lock(&self, req: Request<ypb::LockRequest>) -> Result<Response<ypb::LockResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        if reserved_lock(&ns, &r.id) {
            return Err(Status::permission_denied(format!("sync: lock {:?} is the server's own", r.id)));
        }
        let lock = self.sync.lock(&ns, &r.id, ms(r.ttl_ms), ms(r.wait_ms)).await.map_err(t)?;
        Ok(Response::new(ypb::LockResponse { id: lock.id, token: lock.token, ttl_ms: r.ttl_ms }))
    }

    async fn refresh(&self, req: Request<ypb::RefreshRequest>) -> Result<Response<ypb::RefreshResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let lock = Lock { id: r.id, token: r.token, ttl: ms(r.ttl_ms) };
        if lock.ttl.is_zero() {
            return Err(Status::invalid_argument("sync: ttl_ms is required"));
        }
        self.sync.refresh(&ns, &lock).await.map_err(t)?;
        Ok(Response::new(ypb::RefreshResponse {}))
    }

    async fn unlock(&self, req: Request<ypb::UnlockRequest>) -> Result<Response<ypb::UnlockResponse>, Status> {
        let ns = micro::namespace(&req);
        let r = req.into_inner();
        let lock = Lock { id: r.id, token: r.token, ttl: Duration::ZERO };
        self.sync.unlock(&ns, &lock).await.map_err(t)?;
        Ok(Response::new(ypb::UnlockResponse {}))
    }
}

/// Gives a published message the trace context of its publish (this handler's span),
/// unless the publisher gave it one: its consumers continue the trace from there
/// ([`micro::telemetry::consumer`]).
fn stamp_trace(metadata: &mut std::collections::BTreeMap<String, String>) {
    if !metadata.contains_key(micro::telemetry::MESSAGE_TRACEPARENT)
        && let Some(tp) = micro::telemetry::current_traceparent()
    {
        metadata.insert(micro::telemetry::MESSAGE_TRACEPARENT.to_string(), tp);
    }
}
