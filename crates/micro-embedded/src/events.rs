//! Embedded events: durable topics in SQLite with consumer groups, acknowledgements,
//! redelivery, a retry limit with a dead-letter topic, per-key ordering and retention.
//!
//! Every write (publishes, group cursors, deliveries, acks) goes through one batching
//! writer: concurrent publishers and acks share commits, and a publish returns once its
//! transaction has committed. Recent events stay in memory per topic,
//! so consumers that keep up never read SQLite.
//!
//! A consumer group lives in memory while it has members (or unacked deliveries) and is
//! mirrored in SQLite: `groups.cursor` is the next sequence number the group has not
//! taken from the log, and `pending` holds every taken event that is not done yet, with
//! its delivery count. Members pull from the group: ready entries go out lowest sequence
//! first; an entry whose key has an earlier pending entry waits until that one is done.
//! Publishes wake waiting members through a watch channel per topic; acks and nacks
//! through a `Notify` per group; ack-wait and nack-delay deadlines through timers.
//! After a restart every pending entry is due again (its holder is gone). Private groups
//! (an empty group name) live in memory only.
//!
//! One process owns a data directory: two backends on the same `events.db` would assign
//! the same sequence numbers.

mod group;
mod sql;

use crate::DataDir;
use crate::db::{Db, internal};
use group::{Group, GroupState, Member, progress};
use micro_core::events::{
    ConsumeOptions, Delivery, Event, Events, GroupInfo, Message, Offset, ReadOptions, validate_message, validate_topic,
};
use micro_core::store::now_ms;
use micro_core::{BoxStream, Status, namespace};
use rusqlite::{OptionalExtension, params};
use sql::{Op, SCHEMA, SELECT_EVENTS, TopicRow, Writer, event_from_row, rowid, seq_at};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

const ID: &str = "events";
/// Recent events kept in memory per topic, so consumers that keep up never read SQLite.
const RECENT_EVENTS: usize = 4096;
/// ... and at most this many payload bytes of them.
const RECENT_BYTES: usize = 16 << 20;
/// How often the retention limits are applied to the stored events.
const PURGE_EVERY: Duration = Duration::from_secs(1);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Embedded durable events (SQLite). Cheap to clone; clones share the database and
/// the consumer groups.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), micro_core::Status> {
/// use futures::StreamExt;
/// use micro_core::events::{ConsumeOptions, Events, Message, Offset};
/// use micro_embedded::{DataDir, events::EmbeddedEvents};
///
/// let events = EmbeddedEvents::open(&DataDir::memory())?;
/// let message = Message { payload: br#"{"id":1}"#.to_vec(), ..Message::default() };
/// let event = events.publish("micro", "orders", &message).await?;
/// assert_eq!(event.seq, 1);
///
/// let options = ConsumeOptions { group: "billing".into(), offset: Offset::First, ..ConsumeOptions::default() };
/// let mut deliveries = events.consume("micro", "orders", &options).await?;
/// if let Some(delivery) = deliveries.next().await {
///     let delivery = delivery?;
///     assert_eq!(delivery.event.seq, 1);
///     delivery.ack().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EmbeddedEvents {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    writer: Arc<Writer>,
    /// namespace → topic name → topic.
    topics: Mutex<HashMap<String, HashMap<String, Arc<Topic>>>>,
    retention: RwLock<Retention>,
}

/// Per-topic retention limits.
#[derive(Clone, Copy, Debug, Default)]
struct Retention {
    max_age: Option<Duration>,
    max_events: Option<u64>,
}

impl Retention {
    fn is_unlimited(&self) -> bool {
        self.max_age.is_none() && self.max_events.is_none()
    }

    /// The lowest retained sequence number and timestamp of a topic at `last_seq`.
    fn floor(&self, last_seq: u64, now: u64) -> (u64, u64) {
        let seq = self.max_events.map_or(1, |n| (last_seq.saturating_sub(n) + 1).max(1));
        let ts = self.max_age.map_or(0, |age| now.saturating_sub(millis(age)));
        (seq, ts)
    }

    fn keeps(&self, event: &Event, last_seq: u64, now: u64) -> bool {
        let (seq, ts) = self.floor(last_seq, now);
        event.seq >= seq && event.timestamp >= ts
    }
}

struct Topic {
    id: i64,
    ns: String,
    name: String,
    state: Mutex<TopicState>,
    /// The last committed sequence number; consumers wait on it.
    published: watch::Sender<u64>,
    /// Live groups by name.
    groups: Mutex<HashMap<String, Weak<Group>>>,
    /// Serialises group loading so each group has one in-memory instance.
    opening: tokio::sync::Mutex<()>,
}

struct TopicState {
    last_seq: u64,
    last_ts: u64,
    /// The latest events, contiguous, ending at `last_seq`.
    recent: VecDeque<Arc<Event>>,
    recent_bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Topic {
    fn new(row: TopicRow, ns: &str, name: &str) -> Topic {
        Topic {
            id: row.id,
            ns: ns.to_string(),
            name: name.to_string(),
            state: Mutex::new(TopicState {
                last_seq: row.last_seq,
                last_ts: row.last_ts,
                recent: VecDeque::new(),
                recent_bytes: 0,
            }),
            published: watch::Sender::new(row.last_seq),
            groups: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn last_seq(&self) -> u64 {
        lock(&self.state).last_seq
    }

    fn position(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.last_seq, st.last_ts)
    }

    /// Records a committed event (called by the writer, in sequence order).
    fn committed(&self, event: Arc<Event>) {
        let mut st = lock(&self.state);
        st.last_seq = event.seq;
        st.last_ts = event.timestamp;
        st.recent_bytes += event.payload.len();
        st.recent.push_back(event);
        while st.recent.len() > RECENT_EVENTS || (st.recent_bytes > RECENT_BYTES && st.recent.len() > 1) {
            if let Some(old) = st.recent.pop_front() {
                st.recent_bytes -= old.payload.len();
            }
        }
    }

    /// Up to `max` cached events from `from` to `to`; `None` when `from` is older than the
    /// cache.
    fn cached(&self, from: u64, to: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let st = lock(&self.state);
        let first = st.recent.front().map_or(st.last_seq + 1, |e| e.seq);
        if from < first {
            return None;
        }
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        Some(st.recent.iter().skip(skip).take_while(|e| e.seq <= to).take(max).cloned().collect())
    }
}

async fn purge_task(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else { return };
        let retention = strong.retention();
        if retention.is_unlimited() {
            continue;
        }
        // Do not keep the backend alive while the purge runs.
        let writer = strong.writer.clone();
        drop(strong);
        if let Err(e) = writer.call(|reply| Op::Purge { retention, reply: Some(reply) }).await {
            tracing::warn!(error = %e, "events: purge failed");
        }
    }
}

impl EmbeddedEvents {
    /// Opens (creating) the events database `events.db` in `dir`. Must be called inside
    /// a tokio runtime: it starts the retention task, which stops when the backend is
    /// dropped.
    pub fn open(dir: &DataDir) -> Result<EmbeddedEvents, Status> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Status::internal(ID, "the events backend must be opened inside a tokio runtime"))?;
        let db = dir.open("events", SCHEMA)?;
        let inner = Arc::new(Inner {
            writer: Writer::new(db.clone(), runtime.clone()),
            db,
            topics: Mutex::new(HashMap::new()),
            retention: RwLock::new(Retention::default()),
        });
        runtime.spawn(purge_task(Arc::downgrade(&inner)));
        Ok(EmbeddedEvents { inner })
    }

    /// Limits every topic to events younger than `max_age` and/or to its last
    /// `max_events` events. Older events disappear from reads and consumers at once and
    /// are deleted by a background task.
    pub fn retention(self, max_age: Option<Duration>, max_events: Option<u64>) -> Self {
        *self.inner.retention.write().unwrap_or_else(|e| e.into_inner()) = Retention { max_age, max_events };
        self
    }
}

impl Inner {
    fn retention(&self) -> Retention {
        *self.retention.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_topic(&self, ns: &str, name: &str) -> Option<Arc<Topic>> {
        lock(&self.topics).get(ns).and_then(|t| t.get(name)).cloned()
    }

    /// The topic, created if needed. Callers racing to open it get one instance (the
    /// first one made), without waiting for each other: a member's delivery stream opens
    /// its dead-letter topic, and may be left pending while it does.
    async fn topic(&self, ns: &str, name: &str) -> Result<Arc<Topic>, Status> {
        if let Some(t) = self.cached_topic(ns, name) {
            return Ok(t);
        }
        let row = self.writer.call(|reply| Op::Topic { ns: ns.to_string(), name: name.to_string(), reply }).await?;
        // Nothing is published through an instance before it is in the map, so a
        // racing caller's row, read before or after this one, is as good.
        let mut topics = lock(&self.topics);
        let topic = topics.entry(ns.to_string()).or_default().entry(name.to_string());
        Ok(topic.or_insert_with(|| Arc::new(Topic::new(row, ns, name))).clone())
    }

    /// Where a new group of `topic` starts.
    async fn start(&self, topic: &Arc<Topic>, offset: Offset) -> Result<u64, Status> {
        match offset {
            Offset::New => Ok(topic.last_seq() + 1),
            Offset::First => Ok(1),
            Offset::Seq(n) => Ok(n.max(1)),
            Offset::Time(ms) => {
                let id = topic.id;
                let last = topic.last_seq();
                self.db.read(move |conn| Ok(seq_at(conn, id, last, ms).map_err(internal)?.unwrap_or(last + 1))).await
            }
        }
    }

    /// The group `name` of `topic` (a private one when `name` is empty), loaded or created
    /// at `start`.
    async fn group(&self, topic: &Arc<Topic>, name: &str, start: u64) -> Result<Arc<Group>, Status> {
        if name.is_empty() {
            return Ok(Arc::new(Group::new(topic.clone(), None, String::new(), GroupState::new(start))));
        }
        let _opening = topic.opening.lock().await;
        if let Some(group) = lock(&topic.groups).get(name).and_then(Weak::upgrade) {
            return Ok(group);
        }
        let row = self.writer.call(|reply| Op::Group { topic: topic.id, name: name.to_string(), start, reply }).await?;
        let mut state = GroupState::new(row.cursor);
        let now = now_ms();
        for p in row.pending {
            state.add(p.seq, p.key, p.attempts, p.not_before, None, now);
        }
        let group = Arc::new(Group::new(topic.clone(), Some(row.id), name.to_string(), state));
        let mut groups = lock(&topic.groups);
        groups.retain(|_, g| g.strong_count() > 0);
        groups.insert(name.to_string(), Arc::downgrade(&group));
        Ok(group)
    }

    /// Up to `max` events of `topic` from `from` to `to`, from memory when recent.
    async fn fetch(&self, topic: &Arc<Topic>, from: u64, to: u64, max: usize) -> Result<Vec<Arc<Event>>, Status> {
        if let Some(events) = topic.cached(from, to, max) {
            return Ok(events);
        }
        let (id, name) = (topic.id, topic.name.clone());
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!("{SELECT_EVENTS} WHERE id >= ?1 AND id <= ?2 ORDER BY id LIMIT ?3"))
                    .map_err(internal)?;
                let rows = stmt
                    .query_map(params![rowid(id, from), rowid(id, to), max as i64], |r| event_from_row(&name, r))
                    .map_err(internal)?;
                rows.map(|r| r.map(Arc::new).map_err(internal)).collect()
            })
            .await
    }

    /// The positions of the groups of `ns`/`name` that live in memory, by name. Never
    /// waits for a member: see [`group`].
    fn live_groups(&self, ns: &str, name: &str) -> HashMap<String, group::Snapshot> {
        let Some(topic) = self.cached_topic(ns, name) else { return HashMap::new() };
        let groups: Vec<(String, Arc<Group>)> =
            lock(&topic.groups).iter().filter_map(|(n, g)| Some((n.clone(), g.upgrade()?))).collect();
        groups.into_iter().map(|(name, group)| (name, group.snapshot())).collect()
    }

    /// Event `seq` of `topic`, if it is still stored.
    async fn load(&self, topic: &Arc<Topic>, seq: u64) -> Result<Option<Arc<Event>>, Status> {
        Ok(self.fetch(topic, seq, seq, 1).await?.pop())
    }

    /// Events `seqs` of `topic`, each with `None` when it is no longer stored; from
    /// memory when recent, else with one read of SQLite for all.
    async fn load_many(&self, topic: &Arc<Topic>, seqs: Vec<u64>) -> Result<Vec<(u64, Option<Arc<Event>>)>, Status> {
        let mut events = Vec::with_capacity(seqs.len());
        let mut stored = Vec::new();
        for seq in seqs {
            match topic.cached(seq, seq, 1) {
                Some(mut cached) => events.push((seq, cached.pop())),
                None => stored.push(seq),
            }
        }
        if stored.is_empty() {
            return Ok(events);
        }
        let (id, name) = (topic.id, topic.name.clone());
        let read = self.db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("{SELECT_EVENTS} WHERE id = ?1")).map_err(internal)?;
            let mut read = Vec::with_capacity(stored.len());
            for seq in stored {
                let event = stmt.query_row(params![rowid(id, seq)], |r| event_from_row(&name, r)).optional();
                read.push((seq, event.map_err(internal)?.map(Arc::new)));
            }
            Ok(read)
        });
        events.extend(read.await?);
        Ok(events)
    }
}

fn validate(namespace: &str, topic: &str) -> Result<(), Status> {
    namespace::validate(namespace)?;
    validate_topic(topic)
}

#[async_trait::async_trait]
impl Events for EmbeddedEvents {
    async fn publish(&self, namespace: &str, topic: &str, message: &Message) -> Result<Event, Status> {
        validate(namespace, topic)?;
        validate_message(message)?;
        let topic = self.inner.topic(namespace, topic).await?;
        self.inner
            .writer
            .call(|reply| Op::Publish { topic, message: message.clone(), done: None, reply: Some(reply) })
            .await
    }

    async fn consume(
        &self,
        namespace: &str,
        topic: &str,
        options: &ConsumeOptions,
    ) -> Result<BoxStream<Result<Delivery, Status>>, Status> {
        let dead_letter = micro_core::events::check_consume(namespace, topic, options)?;
        let topic = self.inner.topic(namespace, topic).await?;
        let start = self.inner.start(&topic, options.offset).await?;
        let group = self.inner.group(&topic, &options.group, start).await?;
        Ok(Member::new(self.inner.clone(), group, options, dead_letter).into_stream())
    }

    async fn read(&self, namespace: &str, topic: &str, options: &ReadOptions) -> Result<Vec<Event>, Status> {
        validate(namespace, topic)?;
        let (ns, name) = (namespace.to_string(), topic.to_string());
        let offset = options.offset.unwrap_or(Offset::First);
        let limit = if options.limit == 0 { 100 } else { options.limit };
        let skip = options.offset_count;
        let retention = self.inner.retention();
        self.inner
            .db
            .read(move |conn| {
                let topic: Option<(i64, i64)> = conn
                    .prepare_cached("SELECT id, last_seq FROM topics WHERE ns = ?1 AND name = ?2")
                    .and_then(|mut s| s.query_row(params![ns, name], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                    .map_err(internal)?;
                let Some((id, last)) = topic.filter(|t| t.1 > 0).map(|(id, last)| (id, last as u64)) else {
                    return Err(Status::not_found(ID, format!("no topic {name:?} in namespace {ns:?}")));
                };
                let from = match offset {
                    Offset::New => return Ok(Vec::new()),
                    Offset::First => 1,
                    Offset::Seq(n) => n,
                    Offset::Time(ms) => match seq_at(conn, id, last, ms).map_err(internal)? {
                        Some(seq) => seq,
                        None => return Ok(Vec::new()),
                    },
                };
                let (floor, min_ts) = retention.floor(last, now_ms());
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "{SELECT_EVENTS} WHERE id >= ?1 AND id <= ?2 AND ts >= ?3 ORDER BY id LIMIT ?4 OFFSET ?5"
                    ))
                    .map_err(internal)?;
                let rows = stmt
                    .query_map(params![rowid(id, from.max(floor)), rowid(id, last), min_ts as i64, limit, skip], |r| {
                        event_from_row(&name, r)
                    })
                    .map_err(internal)?;
                rows.map(|r| r.map_err(internal)).collect()
            })
            .await
    }

    async fn topics(&self, namespace: &str) -> Result<Vec<String>, Status> {
        namespace::validate(namespace)?;
        let ns = namespace.to_string();
        self.inner
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT name FROM topics WHERE ns = ?1 AND last_seq > 0 ORDER BY name")
                    .map_err(internal)?;
                let rows = stmt.query_map(params![ns], |r| r.get(0)).map_err(internal)?;
                rows.map(|r| r.map_err(internal)).collect()
            })
            .await
    }

    async fn groups(&self, namespace: &str, topic: &str) -> Result<Vec<GroupInfo>, Status> {
        validate(namespace, topic)?;
        // Groups in memory are ahead of what is stored, so they are looked at first. The
        // stored rows are read through the writer, behind every write queued so far: a
        // group that has left memory has its last writes committed by then.
        let mut live = self.inner.live_groups(namespace, topic);
        let (ns, name, retention) = (namespace.to_string(), topic.to_string(), self.inner.retention());
        let stored = self.inner.writer.call(|reply| Op::Groups { ns, name, retention, reply }).await?;
        let Some(stored) = stored else {
            return Err(Status::not_found(ID, format!("no topic {topic:?} in namespace {namespace:?}")));
        };
        let groups = stored.groups.into_iter().map(|(name, at)| {
            let at = live.remove(&name).unwrap_or(at);
            progress(name, &at, stored.last_seq, stored.floor)
        });
        Ok(groups.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::collections::BTreeMap;

    fn msg(key: &str, payload: &str) -> Message {
        Message { key: key.into(), metadata: BTreeMap::new(), payload: payload.as_bytes().to_vec() }
    }

    async fn next(stream: &mut BoxStream<Result<Delivery, Status>>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a delivery within 5 s")
            .expect("the stream goes on")
            .expect("a delivery, not an error")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_in_memory() {
        let events = EmbeddedEvents::open(&DataDir::memory()).expect("open");
        micro_conformance::events::events(Arc::new(events)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let events = EmbeddedEvents::open(&DataDir::new(dir.path())).expect("open");
        micro_conformance::events::events(Arc::new(events.clone())).await;
        // Twice against the same data: the suite must not depend on a fresh backend.
        micro_conformance::events::events(Arc::new(events)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ConsumeOptions {
            group: "workers".into(),
            offset: Offset::First,
            ack_wait: Duration::from_secs(60),
            ..ConsumeOptions::default()
        };
        {
            let events = EmbeddedEvents::open(&DataDir::new(dir.path())).expect("open");
            for i in 1..=4 {
                events.publish("ns", "orders", &msg("", &format!("e{i}"))).await.expect("publish");
            }
            let mut stream = events.consume("ns", "orders", &options).await.expect("consume");
            let first = next(&mut stream).await;
            let second = next(&mut stream).await;
            assert_eq!((first.event.seq, second.event.seq), (1, 2));
            first.ack().await.expect("ack");
            // The second stays unacked; the process "stops".
            let writer = Arc::downgrade(&events.inner.writer);
            drop((stream, first, second));
            drop(events);
            // Commits still in flight hold the writer.
            let idle = micro_conformance::eventually(Duration::from_secs(5), || async { writer.upgrade().is_none() });
            assert!(idle.await, "the writer finishes");
        }
        let events = EmbeddedEvents::open(&DataDir::new(dir.path())).expect("reopen");
        let event = events.publish("ns", "orders", &msg("", "e5")).await.expect("publish");
        assert_eq!(event.seq, 5, "sequence numbers continue after a restart");
        let mut stream = events.consume("ns", "orders", &options).await.expect("consume");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let d = next(&mut stream).await;
            seen.push((d.event.seq, d.attempt));
            d.ack().await.expect("ack");
        }
        seen.sort();
        assert_eq!(seen, vec![(2, 2), (3, 1), (4, 1), (5, 1)], "unacked redelivered, acked not");
        let none = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        assert!(none.is_err(), "nothing else is delivered");
    }

    /// Polls `stream` once; a delivery if one was ready, else `None` with the poll left
    /// pending (a stream keeps its half-done work for the next poll).
    fn poll_once(stream: &mut BoxStream<Result<Delivery, Status>>) -> Option<Delivery> {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        match stream.poll_next_unpin(&mut cx) {
            std::task::Poll::Ready(d) => Some(d.expect("the stream goes on").expect("a delivery")),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_left_mid_poll_blocks_nobody_after_a_restart() {
        // After a restart the unacked deliveries are read back from SQLite, so polling a
        // member's stream goes to the database and is pending for a while. The server
        // leaves such a poll pending when an ack arrives and answers the ack first (the
        // consumer's window lets it ask for more before it acks). That poll must hold
        // up neither the ack, nor other members, nor `groups`: a group once jammed here.
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ConsumeOptions {
            group: "workers".into(),
            offset: Offset::First,
            ack_wait: Duration::from_secs(60),
            max_deliver: 0,
            ..ConsumeOptions::default()
        };
        {
            let events = EmbeddedEvents::open(&DataDir::new(dir.path())).expect("open");
            for i in 1..=500 {
                events.publish("ns", "orders", &msg("", &format!("e{i}"))).await.expect("publish");
            }
            let mut stream = events.consume("ns", "orders", &options).await.expect("consume");
            let mut taken = Vec::new();
            for _ in 0..400 {
                taken.push(next(&mut stream).await);
            }
            for d in &taken[..300] {
                d.ack().await.expect("ack");
            }
            let writer = Arc::downgrade(&events.inner.writer);
            drop((stream, taken, events));
            let idle = micro_conformance::eventually(Duration::from_secs(5), || async { writer.upgrade().is_none() });
            assert!(idle.await, "the writer finishes");
        }
        let events = EmbeddedEvents::open(&DataDir::new(dir.path())).expect("reopen");
        let mut stream = events.consume("ns", "orders", &options).await.expect("consume");
        let mut seen = Vec::new();
        let mut suspended = 0;
        while seen.len() < 200 {
            let mut taken = vec![next(&mut stream).await];
            // Poll on until a poll has to wait (for the database, while events remain),
            // and leave that one pending.
            while let Some(d) = poll_once(&mut stream) {
                taken.push(d);
            }
            suspended += usize::from(seen.len() + taken.len() < 200);
            let within = |what: &str| format!("{what} within 5 s while a poll is pending");
            let groups = tokio::time::timeout(Duration::from_secs(5), events.groups("ns", "orders"));
            groups.await.unwrap_or_else(|_| panic!("{}", within("groups"))).expect("groups");
            for d in taken {
                let ack = tokio::time::timeout(Duration::from_secs(5), d.ack());
                ack.await.unwrap_or_else(|_| panic!("{}", within("an ack"))).expect("ack");
                seen.push(d.event.seq);
            }
        }
        assert!(suspended > 0, "some polls had to wait for the database");
        seen.sort_unstable();
        assert_eq!(seen, (301..=500).collect::<Vec<_>>(), "every unacked event is redelivered once");
        let none = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        assert!(none.is_err(), "nothing else is delivered");
        let groups = events.groups("ns", "orders").await.expect("groups");
        assert_eq!((groups[0].acked, groups[0].pending, groups[0].lag), (500, 0, 0), "{groups:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_never_stall() {
        // Many callers racing for the writer: none may be left waiting for a commit. (A
        // race here once left the writer marked busy with nobody committing.)
        let events = EmbeddedEvents::open(&DataDir::memory()).expect("open");
        for round in 0..3 {
            let topic = format!("t{round}");
            let options = ConsumeOptions { group: "g".into(), offset: Offset::First, ..ConsumeOptions::default() };
            let mut stream = events.consume("ns", &topic, &options).await.expect("consume");
            let publishers: Vec<_> = (0..32)
                .map(|_| {
                    let (events, topic) = (events.clone(), topic.clone());
                    tokio::spawn(async move {
                        for _ in 0..500 {
                            events.publish("ns", &topic, &msg("", "x")).await.expect("publish");
                        }
                    })
                })
                .collect();
            let mut acks = Vec::new();
            for _ in 0..16_000 {
                let d = next(&mut stream).await;
                acks.push(tokio::spawn(async move { d.ack().await.expect("ack") }));
            }
            for task in publishers.into_iter().chain(acks) {
                tokio::time::timeout(Duration::from_secs(10), task).await.expect("no stall").expect("task");
            }
        }
    }

    #[tokio::test]
    async fn retention_limits_reads_and_consumers() {
        let events = EmbeddedEvents::open(&DataDir::memory()).expect("open").retention(None, Some(3));
        for i in 1..=5 {
            events.publish("ns", "t", &msg("", &format!("e{i}"))).await.expect("publish");
        }
        let read = events.read("ns", "t", &ReadOptions::default()).await.expect("read");
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        let options = ConsumeOptions { offset: Offset::First, auto_ack: true, ..ConsumeOptions::default() };
        let mut stream = events.consume("ns", "t", &options).await.expect("consume");
        assert_eq!(next(&mut stream).await.event.seq, 3, "purged events are not delivered");

        // The background task deletes them.
        let db = events.inner.db.clone();
        let count = || {
            let db = db.clone();
            async move {
                db.read(|c| c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).map_err(internal))
                    .await
                    .expect("count")
            }
        };
        assert!(micro_conformance::eventually(Duration::from_secs(3), || async { count().await == 3 }).await);
    }

    #[tokio::test]
    async fn retention_by_age() {
        let events =
            EmbeddedEvents::open(&DataDir::memory()).expect("open").retention(Some(Duration::from_millis(200)), None);
        events.publish("ns", "t", &msg("", "old")).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
        events.publish("ns", "t", &msg("", "new")).await.expect("publish");
        let read = events.read("ns", "t", &ReadOptions::default()).await.expect("read");
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[tokio::test]
    async fn delivery_is_prompt() {
        let events = EmbeddedEvents::open(&DataDir::memory()).expect("open");
        let mut stream = events.consume("ns", "t", &ConsumeOptions::default()).await.expect("consume");
        let waiter = tokio::spawn(async move {
            let d = next(&mut stream).await;
            (d, std::time::Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = std::time::Instant::now();
        events.publish("ns", "t", &msg("", "hi")).await.expect("publish");
        let (d, received) = waiter.await.expect("task");
        assert_eq!(d.event.payload, b"hi");
        assert!(received.duration_since(sent) < Duration::from_millis(40), "woken by the publish, not a poll");
    }

    #[tokio::test]
    async fn background_tasks_stop_with_the_backend() {
        let events = EmbeddedEvents::open(&DataDir::memory()).expect("open").retention(None, Some(10));
        events.publish("ns", "t", &msg("", "x")).await.expect("publish");
        let inner = Arc::downgrade(&events.inner);
        let writer = Arc::downgrade(&events.inner.writer);
        drop(events);
        assert!(inner.upgrade().is_none(), "no task keeps the backend alive");
        assert!(
            micro_conformance::eventually(Duration::from_secs(2), || async { writer.upgrade().is_none() }).await,
            "the writer goes away with the backend"
        );
    }
}
