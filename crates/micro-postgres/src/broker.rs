//! The broker in PostgreSQL, for nodes that share a database but no NATS.
//!
//! A `NOTIFY` payload holds at most 8000 bytes and a message up to 1 MiB, so a publish
//! inserts the message into `micro_broker` and notifies its id, namespace and topic in
//! the same statement (the notice goes out on commit, in commit order). Notifications
//! reach the whole database, whatever the schema, so the channel is named after the
//! table's OID (`micro_broker_<oid>`): clusters in separate schemas of one database do
//! not hear each other. Every node keeps one connection outside the pool listening to the
//! channel; on a notice for a namespace and topic it has subscribers of, it reads the
//! row and hands the message to them: each plain subscriber gets every message, in
//! order. For a queue group, the nodes with a member of it race to insert a claim row
//! (message id, group) into `micro_broker_claims`; the node whose insert wins hands the
//! message to one of its members, in turn, so each message reaches one member in the
//! whole cluster. A subscription starts where a marker it notifies passes the listener,
//! so it sees exactly the messages published after it was made.
//!
//! The broker is ephemeral, like the embedded and NATS ones: both tables are `UNLOGGED`
//! (no write-ahead log, nothing flushed to disk per message, emptied by a database
//! crash), every node deletes rows older than a minute every 30 s, and while a node's
//! listening connection is lost (it comes back with backoff, 100 ms doubling to 5 s)
//! the messages published meanwhile are lost for that node's subscribers. A subscriber
//! that falls 4096 messages behind misses the next ones.

use crate::{Database, Heard, Listening, db_error};
use futures::StreamExt;
use micro_core::broker::{Broker, Message};
use micro_core::{BoxStream, Code, Status};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const ID: &str = "broker";

const SCHEMA: &str = "
CREATE UNLOGGED TABLE IF NOT EXISTS micro_broker (
    id BIGSERIAL PRIMARY KEY,
    namespace TEXT NOT NULL,
    topic TEXT NOT NULL,
    metadata TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS micro_broker_created ON micro_broker (created);
CREATE UNLOGGED TABLE IF NOT EXISTS micro_broker_claims (
    id BIGINT NOT NULL,
    grp TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, grp)
);
CREATE INDEX IF NOT EXISTS micro_broker_claims_created ON micro_broker_claims (created);
";

/// Messages a slow subscriber may fall behind by before new ones are dropped for it.
const BUFFER: usize = 4096;
/// Notifications already received that the listener handles together (one read of the
/// database for a burst of messages).
const BATCH: usize = 256;
/// How long a subscription waits for its marker to pass the listener.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How often old messages and claims are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Deletes the messages and claims older than a minute (every node has long read them).
const SWEEP: &str = "
DELETE FROM micro_broker WHERE created < now() - interval '1 minute';
DELETE FROM micro_broker_claims WHERE created < now() - interval '1 minute';
";

/// The broker in PostgreSQL, shared by every node on the database. Cheap to clone; the
/// listening connection closes when the last clone is dropped, and the subscriptions
/// then end.
#[derive(Clone)]
pub struct PostgresBroker {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// The notification channel of published messages and of subscription markers.
    channel: String,
    state: Arc<Mutex<State>>,
    listener: tokio::task::AbortHandle,
    sweeper: tokio::task::AbortHandle,
    /// The backend process of the listening connection (0 while there is none).
    #[cfg(test)]
    listener_pid: Arc<std::sync::atomic::AtomicI32>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
        self.sweeper.abort();
    }
}

/// This node's subscriptions.
#[derive(Default)]
struct State {
    /// By namespace and topic.
    topics: HashMap<(String, String), Topic>,
    /// Subscriptions waiting for their marker to pass the listener, by marker.
    pending: HashMap<String, Pending>,
    /// The id of the last subscription.
    last_id: u64,
}

/// The subscribers of one namespace and topic on this node.
#[derive(Default)]
struct Topic {
    /// Without a queue group: each gets every message.
    all: Vec<Subscriber>,
    /// Queue groups: each message goes to one member in the cluster.
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    members: Vec<Subscriber>,
    /// The member whose turn is next.
    next: usize,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Message>,
}

/// A subscription made but not yet started.
struct Pending {
    key: (String, String),
    queue: Option<String>,
    subscriber: Subscriber,
    started: oneshot::Sender<()>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Starts the subscription waiting for `marker`, if it is this node's.
    fn start(&mut self, marker: &str) {
        if let Some(p) = self.pending.remove(marker) {
            let topic = self.topics.entry(p.key).or_default();
            match p.queue {
                Some(q) => topic.groups.entry(q).or_default().members.push(p.subscriber),
                None => topic.all.push(p.subscriber),
            }
            let _ = p.started.send(());
        }
    }

    /// Starts every waiting subscription (their markers may have been sent while no one
    /// listened).
    fn start_all(&mut self) {
        let markers: Vec<String> = self.pending.keys().cloned().collect();
        for m in markers {
            self.start(&m);
        }
    }

    /// Removes subscription `id` of `key`, started or not.
    fn remove(&mut self, key: &(String, String), marker: &str, id: u64) {
        self.pending.remove(marker);
        let Some(topic) = self.topics.get_mut(key) else { return };
        topic.all.retain(|s| s.id != id);
        for g in topic.groups.values_mut() {
            g.members.retain(|s| s.id != id);
        }
        topic.groups.retain(|_, g| !g.members.is_empty());
        if topic.all.is_empty() && topic.groups.is_empty() {
            self.topics.remove(key);
        }
    }

    /// Whether this node has subscribers of `key`, and then the queue groups with
    /// members here (forgetting subscribers whose stream is gone).
    fn interest(&mut self, key: &(String, String)) -> Option<Vec<String>> {
        let topic = self.topics.get_mut(key)?;
        topic.all.retain(|s| !s.tx.is_closed());
        for g in topic.groups.values_mut() {
            g.members.retain(|s| !s.tx.is_closed());
        }
        topic.groups.retain(|_, g| !g.members.is_empty());
        if topic.all.is_empty() && topic.groups.is_empty() {
            self.topics.remove(key);
            return None;
        }
        Some(topic.groups.keys().cloned().collect())
    }

    /// Hands `m` to every plain subscriber of `key` and to one member of each group
    /// this node `won` it for.
    fn deliver(&mut self, key: &(String, String), m: &Message, won: impl Fn(&str) -> bool) {
        let Some(topic) = self.topics.get_mut(key) else { return };
        topic.all.retain(|s| match s.tx.try_send(m.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(topic = %m.topic, "broker subscriber is behind; message dropped for it");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        for (name, g) in &mut topic.groups {
            if !won(name) {
                continue;
            }
            // The member whose turn it is, or the next one that can take it.
            let n = g.members.len();
            let taken = (0..n).map(|i| (g.next + i) % n).find(|&k| g.members[k].tx.try_send(m.clone()).is_ok());
            match taken {
                Some(k) => g.next = k + 1,
                None => {
                    tracing::debug!(topic = %m.topic, group = %name, "no member of the queue group can take a message; dropped")
                }
            }
        }
    }
}

/// Forgets a subscription when its stream is dropped.
struct Unsubscribe {
    state: Weak<Mutex<State>>,
    key: (String, String),
    marker: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).remove(&self.key, &self.marker, self.id);
        }
    }
}

impl PostgresBroker {
    /// The broker in `db`: creates its tables when missing and starts listening for
    /// messages (failing when the database is unreachable).
    pub async fn open(db: &Database) -> Result<PostgresBroker, Status> {
        db.migrate(ID, SCHEMA).await?;
        let channel = db.table_channel(ID, "micro_broker").await?;
        let listening = Listening::open(db, &channel, "micro-broker-listener").await?;
        #[cfg(test)]
        let listener_pid = listening.pid();
        let state = Arc::new(Mutex::new(State::default()));
        let listener = Listener { db: db.clone(), state: state.clone() };
        let listener = tokio::spawn(listener.run(listening)).abort_handle();
        let sweeper = tokio::spawn(sweep(db.clone())).abort_handle();
        let inner = Inner {
            db: db.clone(),
            channel,
            state,
            listener,
            sweeper,
            #[cfg(test)]
            listener_pid,
        };
        Ok(PostgresBroker { inner: Arc::new(inner) })
    }

    /// Deletes the messages and claims older than a minute now (every node does it
    /// every 30 s).
    pub async fn sweep(&self) -> Result<(), Status> {
        sweep_once(&self.inner.db).await
    }
}

async fn sweep_once(db: &Database) -> Result<(), Status> {
    db.client(ID).await?.batch_execute(SWEEP).await.map_err(|e| db_error(ID, e))
}

/// Sweeps every [`SWEEP_EVERY`] until aborted.
async fn sweep(db: Database) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if let Err(e) = sweep_once(&db).await {
            tracing::warn!(error = %e, "broker: deleting old messages failed");
        }
    }
}

#[async_trait::async_trait]
impl Broker for PostgresBroker {
    async fn publish(&self, namespace: &str, message: &Message) -> Result<(), Status> {
        micro_core::broker::check_publish(namespace, message)?;
        let metadata =
            serde_json::to_string(&message.metadata).map_err(|e| Status::internal(ID, format!("metadata: {e}")))?;
        let c = self.inner.db.client(ID).await?;
        let sql = "WITH m AS (
                INSERT INTO micro_broker (namespace, topic, metadata, payload) VALUES ($1, $2, $3, $4) RETURNING id
            )
            SELECT pg_notify($5, 'm:' || m.id || ':' || $1::text || ':' || $2::text) FROM m";
        let statement = c.prepare_cached(sql).await.map_err(|e| db_error(ID, e))?;
        c.execute(&statement, &[&namespace, &message.topic, &metadata, &message.payload, &self.inner.channel])
            .await
            .map_err(|e| db_error(ID, e))?;
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
        let (started, on_start) = oneshot::channel();
        let marker = format!("s:{}", uuid::Uuid::new_v4().simple());
        let key = (namespace.to_string(), topic.to_string());
        let id = {
            let mut state = lock(&self.inner.state);
            state.last_id += 1;
            let id = state.last_id;
            let pending = Pending {
                key: key.clone(),
                queue: queue.filter(|q| !q.is_empty()).map(str::to_string),
                subscriber: Subscriber { id, tx },
                started,
            };
            state.pending.insert(marker.clone(), pending);
            id
        };
        // Forgets the subscription on every way out, this call failing included.
        let guard = Unsubscribe { state: Arc::downgrade(&self.inner.state), key, marker: marker.clone(), id };
        // The marker reaches the listener after every message published before it: the
        // subscription starts there, and every message published after this returns
        // reaches it.
        let c = self.inner.db.client(ID).await?;
        c.execute("SELECT pg_notify($1, $2)", &[&self.inner.channel, &marker]).await.map_err(|e| db_error(ID, e))?;
        drop(c);
        match tokio::time::timeout(SUBSCRIBE_WAIT, on_start).await {
            Ok(Ok(())) => {}
            _ => return Err(Status::new(Code::Unavailable, ID, "the broker is not listening to the database")),
        }
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            let m = rx.recv().await?;
            Some((Ok(m), (rx, guard)))
        });
        Ok(stream.boxed())
    }
}

// --- Listening -------------------------------------------------------------------

/// What a notification on the broker's channel says.
enum Notice<'a> {
    /// Message `id` was published on `key`.
    Message { id: i64, key: (String, String) },
    /// A subscription waits for this marker.
    Marker(&'a str),
}

fn parse(payload: &str) -> Option<Notice<'_>> {
    if payload.starts_with("s:") {
        return Some(Notice::Marker(payload));
    }
    let mut parts = payload.strip_prefix("m:")?.splitn(3, ':');
    let id = parts.next()?.parse().ok()?;
    let (ns, topic) = (parts.next()?, parts.next()?);
    Some(Notice::Message { id, key: (ns.to_string(), topic.to_string()) })
}

/// The task that hears every node's messages and hands them to this node's subscribers.
struct Listener {
    db: Database,
    state: Arc<Mutex<State>>,
}

impl Listener {
    /// Listens (again and again whenever the connection is lost) until aborted.
    async fn run(self, mut listening: Listening) {
        loop {
            let first = match listening.next().await {
                Heard::Notification(n) => n,
                Heard::Reconnected => {
                    lock(&self.state).start_all();
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match listening.ready() {
                    Some(n) => batch.push(n),
                    None => break,
                }
            }
            // In order: a subscription starts between the messages around its marker.
            let mut messages = Vec::new();
            for n in &batch {
                match parse(n.payload()) {
                    Some(Notice::Message { id, key }) => messages.push((id, key)),
                    Some(Notice::Marker(marker)) => {
                        self.deliver(std::mem::take(&mut messages)).await;
                        lock(&self.state).start(marker);
                    }
                    None => tracing::debug!(payload = n.payload(), "broker: an unknown notification"),
                }
            }
            self.deliver(messages).await;
        }
    }

    /// Reads the `messages` someone here subscribes to, claims them for the queue
    /// groups with members here, and hands them out in order.
    async fn deliver(&self, messages: Vec<(i64, (String, String))>) {
        let (mut wanted, mut claim_ids, mut claim_groups) = (Vec::new(), Vec::new(), Vec::new());
        {
            let mut state = lock(&self.state);
            for (id, key) in &messages {
                let Some(groups) = state.interest(key) else { continue };
                wanted.push(*id);
                for g in groups {
                    claim_ids.push(*id);
                    claim_groups.push(g);
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let c = match self.db.client(ID).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, messages = wanted.len(), "broker: cannot read messages; dropped");
                return;
            }
        };
        // Both on one connection, pipelined: one round trip.
        let read =
            async { c.query("SELECT id, metadata, payload FROM micro_broker WHERE id = ANY($1)", &[&wanted]).await };
        let claim = async {
            if claim_ids.is_empty() {
                return Ok(Vec::new());
            }
            let sql = "INSERT INTO micro_broker_claims (id, grp) SELECT * FROM unnest($1::bigint[], $2::text[])
                ON CONFLICT DO NOTHING RETURNING id, grp";
            c.query(sql, &[&claim_ids, &claim_groups]).await
        };
        let (read, claimed) = futures::join!(read, claim);
        let rows = match read {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, messages = wanted.len(), "broker: cannot read messages; dropped");
                return;
            }
        };
        let won: HashSet<(i64, String)> = match claimed {
            Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "broker: cannot claim messages for queue groups; dropped for them");
                HashSet::new()
            }
        };
        let mut found: HashMap<i64, (BTreeMap<String, String>, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                let metadata = serde_json::from_str(r.get::<_, &str>(1)).unwrap_or_default();
                (r.get(0), (metadata, r.get(2)))
            })
            .collect();
        let mut state = lock(&self.state);
        for (id, key) in messages {
            // Not wanted, or gone (swept after a long stall).
            let Some((metadata, payload)) = found.remove(&id) else { continue };
            let m = Message { topic: key.1.clone(), metadata, payload };
            state.deliver(&key, &m, |g| won.contains(&(id, g.to_string())));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn open(url: &str) -> PostgresBroker {
        // A pool of its own, as on another node.
        PostgresBroker::open(&Database::connect(url).unwrap()).await.unwrap()
    }

    fn msg(n: u32) -> Message {
        Message { topic: "jobs".into(), payload: n.to_string().into_bytes(), ..Message::default() }
    }

    async fn drain(s: &mut BoxStream<Result<Message, Status>>) -> Vec<u32> {
        let mut got = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
            got.push(String::from_utf8(m.unwrap().payload).unwrap().parse().unwrap());
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let Some(url) = crate::test_url() else { return };
        let broker = Arc::new(open(&url).await);
        micro_conformance::broker::broker(broker.clone()).await;
        // Repeatable against one database.
        micro_conformance::broker::broker(broker.clone()).await;
        broker.sweep().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_share_messages_and_queue_groups() {
        let Some(url) = crate::test_url() else { return };
        let (a, b) = (open(&url).await, open(&url).await);
        let ns = format!("pg-broker-{}", uuid::Uuid::new_v4().simple());

        let mut on_b = b.subscribe(&ns, "jobs", None).await.unwrap();
        let mut q_a = a.subscribe(&ns, "jobs", Some("workers")).await.unwrap();
        let mut q_b = b.subscribe(&ns, "jobs", Some("workers")).await.unwrap();
        for n in 0..20 {
            a.publish(&ns, &msg(n)).await.unwrap();
        }
        assert_eq!(drain(&mut on_b).await, (0..20).collect::<Vec<_>>(), "b sees what a publishes, in order");
        let (got_a, got_b) = (drain(&mut q_a).await, drain(&mut q_b).await);
        let mut got = [got_a.clone(), got_b.clone()].concat();
        got.sort();
        assert_eq!(got, (0..20).collect::<Vec<_>>(), "each message once in the group: a {got_a:?}, b {got_b:?}");

        // A member that leaves leaves the group to the other node.
        drop(q_a);
        for n in 20..25 {
            b.publish(&ns, &msg(n)).await.unwrap();
        }
        assert_eq!(drain(&mut q_b).await, (20..25).collect::<Vec<_>>());
        assert_eq!(drain(&mut on_b).await, (20..25).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriptions_survive_a_lost_listening_connection() {
        use std::sync::atomic::Ordering;
        let Some(url) = crate::test_url() else { return };
        let (a, b) = (open(&url).await, open(&url).await);
        let ns = format!("pg-broker-{}", uuid::Uuid::new_v4().simple());
        let mut s = a.subscribe(&ns, "jobs", None).await.unwrap();
        let pid = a.inner.listener_pid.load(Ordering::Relaxed);
        assert_ne!(pid, 0);
        let c = a.inner.db.client(ID).await.unwrap();
        c.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        let listening_again = micro_conformance::eventually(Duration::from_secs(10), || async {
            matches!(a.inner.listener_pid.load(Ordering::Relaxed), p if p != 0 && p != pid)
        })
        .await;
        assert!(listening_again, "a listens again");
        b.publish(&ns, &msg(1)).await.unwrap();
        assert_eq!(drain(&mut s).await, vec![1], "the subscription made before goes on");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscriptions_end_when_the_broker_is_dropped() {
        let Some(url) = crate::test_url() else { return };
        let broker = open(&url).await;
        let ns = format!("pg-broker-{}", uuid::Uuid::new_v4().simple());
        let mut s = broker.subscribe(&ns, "jobs", None).await.unwrap();
        drop(broker);
        let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
    }
}
