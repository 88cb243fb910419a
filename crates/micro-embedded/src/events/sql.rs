//! The SQLite side of the events backend: the schema, the batching writer and the
//! queries.
//!
//! Every change goes through [`Writer`]: operations queue up, and whoever finds no commit
//! running commits the queue (looping while more arrives) in one transaction per round,
//! then makes new events visible and answers. Concurrent publishers and acks therefore
//! share commits, and a lone publisher pays one hop to the blocking pool and back.

use super::group::Snapshot;
use super::{ID, Retention, Topic, lock};
use crate::db::{Db, internal};
use micro_core::events::{Event, Message};
use micro_core::store::now_ms;
use micro_core::{Code, Status};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_ts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (ns, name)
);
-- id = topic id << 40 | seq: one B-tree ordered by topic then seq, with no extra index.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    key TEXT NOT NULL,
    metadata TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    topic_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    UNIQUE (topic_id, name)
);
CREATE TABLE IF NOT EXISTS pending (
    group_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    PRIMARY KEY (group_id, seq)
) WITHOUT ROWID;
";

/// Bits of an event row id that hold the sequence number.
const SEQ_BITS: u32 = 40;
/// Rounds of commits per turn on the writer connection, so in-memory readers (which
/// share it) get a turn under constant load.
const ROUNDS: usize = 8;

/// The row id of event `seq` of topic `topic`.
pub(super) fn rowid(topic: i64, seq: u64) -> i64 {
    (topic << SEQ_BITS) | (seq.min((1 << SEQ_BITS) - 1) as i64)
}

pub(super) fn seq_of(rowid: i64) -> u64 {
    (rowid & ((1 << SEQ_BITS) - 1)) as u64
}

pub(super) fn closed() -> Status {
    Status::unavailable(ID, "the events backend is shutting down")
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// A change to commit.
pub(super) enum Op {
    /// Creates (or finds) a topic.
    Topic { ns: String, name: String, reply: Reply<TopicRow> },
    /// Appends an event; `done` also completes a pending entry (group id, seq) in the
    /// same transaction, for dead letters.
    Publish { topic: Arc<Topic>, message: Message, done: Option<(i64, u64)>, reply: Option<Reply<Event>> },
    /// Creates (or loads) a group that starts at `start`.
    Group { topic: i64, name: String, start: u64, reply: Reply<GroupRow> },
    /// A group took events from the log.
    Take { group: i64, cursor: u64, seqs: Vec<u64> },
    /// A pending entry was delivered, or nacked.
    Attempt { group: i64, seq: u64, attempts: u32, not_before: u64 },
    /// A pending entry is done.
    Done { group: i64, seq: u64, reply: Option<Reply<()>> },
    /// Applies the retention limits.
    Purge { retention: Retention, reply: Option<Reply<()>> },
    /// Reads the stored groups of a topic. Queued like a write, so it sees everything
    /// queued before it.
    Groups { ns: String, name: String, retention: Retention, reply: Reply<Option<TopicGroups>> },
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TopicRow {
    pub(super) id: i64,
    pub(super) last_seq: u64,
    pub(super) last_ts: u64,
}

#[derive(Debug)]
pub(super) struct GroupRow {
    pub(super) id: i64,
    pub(super) cursor: u64,
    pub(super) pending: Vec<PendingRow>,
}

/// A topic's stored groups; see [`Op::Groups`].
#[derive(Debug)]
pub(super) struct TopicGroups {
    pub(super) last_seq: u64,
    /// The first event the retention limits keep.
    pub(super) floor: u64,
    /// Name and position of every group, by name.
    pub(super) groups: Vec<(String, Snapshot)>,
}

#[derive(Debug)]
pub(super) struct PendingRow {
    pub(super) seq: u64,
    pub(super) attempts: u32,
    pub(super) not_before: u64,
    pub(super) key: String,
}

/// Commits queued operations in batches.
pub(super) struct Writer {
    db: Db,
    runtime: tokio::runtime::Handle,
    queue: Mutex<Vec<Op>>,
    /// A flush is running (or about to): it will see anything queued.
    busy: AtomicBool,
}

impl Writer {
    pub(super) fn new(db: Db, runtime: tokio::runtime::Handle) -> Arc<Writer> {
        Arc::new(Writer { db, runtime, queue: Mutex::new(Vec::new()), busy: AtomicBool::new(false) })
    }

    /// Queues `op`; true when the caller must flush.
    fn push(&self, op: Op) -> bool {
        lock(&self.queue).push(op);
        !self.busy.swap(true, Ordering::SeqCst)
    }

    /// Queues `op` without waiting for its commit.
    pub(super) fn send(self: &Arc<Self>, op: Op) {
        if self.push(op) {
            self.runtime.spawn(self.clone().flush());
        }
    }

    /// Queues the operation made with `op` and waits for its answer, committing on this
    /// task when no commit is running.
    pub(super) async fn call<T>(self: &Arc<Self>, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, Status> {
        let (reply, mut answer) = oneshot::channel();
        if self.push(op(reply)) {
            // Commit here, but return as soon as this operation is answered: the flush
            // goes on without this task when more operations keep arriving. The flush is
            // polled first, so it starts even when the operation was already answered
            // (by a flush that ended between the push and the swap of `busy`).
            let flush = self.clone().flush();
            tokio::pin!(flush);
            tokio::select! {
                biased;
                () = &mut flush => {}
                answer = &mut answer => return answer.map_err(|_| closed())?,
            }
        }
        answer.await.map_err(|_| closed())?
    }

    async fn flush(self: Arc<Self>) {
        let me = self.clone();
        let done = self.db.write(move |conn| {
            me.drain(conn);
            Ok(())
        });
        if let Err(e) = done.await {
            tracing::error!(error = %e, "events: the writer failed");
        }
    }

    /// Commits rounds of queued operations until the queue is empty (or hands over to a
    /// new task after [`ROUNDS`]). Runs on the blocking pool, owning `busy`; it keeps
    /// running when the task that started it is cancelled.
    fn drain(self: &Arc<Self>, conn: &mut Connection) {
        let mut owner = Busy(self, true);
        for _ in 0..ROUNDS {
            let ops = std::mem::take(&mut *lock(&self.queue));
            if ops.is_empty() {
                self.busy.store(false, Ordering::SeqCst);
                owner.1 = false;
                // Something queued after the take saw `busy` set: take it over, unless a
                // new flush already did.
                if lock(&self.queue).is_empty() || self.busy.swap(true, Ordering::SeqCst) {
                    return;
                }
                owner.1 = true;
                continue;
            }
            apply(conn, ops);
        }
        owner.1 = false;
        self.runtime.spawn(self.clone().flush());
    }
}

/// Releases `busy` if a flush unwinds, so later operations are committed.
struct Busy<'a>(&'a Writer, bool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.busy.store(false, Ordering::SeqCst);
        }
    }
}

/// What a transaction executes.
enum Sql {
    Topic { ns: String, name: String },
    Event(i64, Arc<Event>),
    Group { topic: i64, name: String, start: u64 },
    Take { group: i64, cursor: u64, seqs: Vec<u64> },
    Attempt { group: i64, seq: u64, attempts: u32, not_before: u64 },
    Done { group: i64, seq: u64 },
    Purge(Retention),
    Groups { ns: String, name: String, retention: Retention },
}

enum Out {
    Topic(TopicRow),
    Group(GroupRow),
    Groups(Option<TopicGroups>),
}

/// Commits one batch, then publishes its events and answers.
fn apply(conn: &mut Connection, mut ops: Vec<Op>) {
    // Sequence numbers are assigned here, under the writer connection: the only appender.
    let mut positions: HashMap<i64, (u64, u64)> = HashMap::new();
    let mut sql = Vec::with_capacity(ops.len());
    let mut events = VecDeque::new();
    for op in &mut ops {
        match op {
            Op::Topic { ns, name, .. } => sql.push(Sql::Topic { ns: ns.clone(), name: name.clone() }),
            Op::Publish { topic, message, done, .. } => {
                let pos = positions.entry(topic.id).or_insert_with(|| topic.position());
                pos.0 += 1;
                pos.1 = pos.1.max(now_ms());
                let event = Arc::new(Event {
                    topic: topic.name.clone(),
                    seq: pos.0,
                    timestamp: pos.1,
                    key: std::mem::take(&mut message.key),
                    metadata: std::mem::take(&mut message.metadata),
                    payload: std::mem::take(&mut message.payload),
                });
                sql.push(Sql::Event(topic.id, event.clone()));
                if let Some((group, seq)) = *done {
                    sql.push(Sql::Done { group, seq });
                }
                events.push_back(event);
            }
            Op::Group { topic, name, start, .. } => {
                sql.push(Sql::Group { topic: *topic, name: name.clone(), start: *start })
            }
            Op::Take { group, cursor, seqs } => {
                sql.push(Sql::Take { group: *group, cursor: *cursor, seqs: std::mem::take(seqs) })
            }
            Op::Attempt { group, seq, attempts, not_before } => {
                sql.push(Sql::Attempt { group: *group, seq: *seq, attempts: *attempts, not_before: *not_before })
            }
            Op::Done { group, seq, .. } => sql.push(Sql::Done { group: *group, seq: *seq }),
            Op::Purge { retention, .. } => sql.push(Sql::Purge(*retention)),
            Op::Groups { ns, name, retention, .. } => {
                sql.push(Sql::Groups { ns: ns.clone(), name: name.clone(), retention: *retention })
            }
        }
    }
    let mut outs = match execute(conn, sql) {
        Ok(outs) => VecDeque::from(outs),
        Err(e) => {
            tracing::warn!(error = %e, "events: a write failed");
            for op in ops {
                match op {
                    Op::Topic { reply, .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Op::Group { reply, .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Op::Publish { reply: Some(reply), .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Op::Done { reply: Some(reply), .. } | Op::Purge { reply: Some(reply), .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Op::Groups { reply, .. } => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    _ => {}
                }
            }
            return;
        }
    };
    // Committed: make the events visible to consumers (in order), wake them, then answer.
    let mut touched: Vec<&Arc<Topic>> = Vec::new();
    let mut committed = events.iter();
    for op in &ops {
        if let Op::Publish { topic, .. } = op
            && let Some(event) = committed.next()
        {
            topic.committed(event.clone());
            if !touched.iter().any(|t| Arc::ptr_eq(t, topic)) {
                touched.push(topic);
            }
        }
    }
    for topic in touched {
        topic.published.send_replace(topic.last_seq());
    }
    for op in ops {
        match op {
            Op::Topic { reply, .. } => {
                let row = match outs.pop_front() {
                    Some(Out::Topic(row)) => Ok(row),
                    _ => Err(Status::internal(ID, "writer: missing topic row")),
                };
                let _ = reply.send(row);
            }
            Op::Group { reply, .. } => {
                let row = match outs.pop_front() {
                    Some(Out::Group(row)) => Ok(row),
                    _ => Err(Status::internal(ID, "writer: missing group row")),
                };
                let _ = reply.send(row);
            }
            Op::Publish { reply, .. } => {
                let event = events.pop_front();
                if let (Some(reply), Some(event)) = (reply, event) {
                    let _ = reply.send(Ok(Event::clone(&event)));
                }
            }
            Op::Done { reply: Some(reply), .. } | Op::Purge { reply: Some(reply), .. } => {
                let _ = reply.send(Ok(()));
            }
            Op::Groups { reply, .. } => {
                let groups = match outs.pop_front() {
                    Some(Out::Groups(groups)) => Ok(groups),
                    _ => Err(Status::internal(ID, "writer: missing groups")),
                };
                let _ = reply.send(groups);
            }
            _ => {}
        }
    }
}

fn execute(conn: &mut Connection, sql: Vec<Sql>) -> Result<Vec<Out>, Status> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
    let mut outs = Vec::new();
    // Topic positions are written once per batch (before anything that reads them).
    let mut last: HashMap<i64, (u64, u64)> = HashMap::new();
    let flush = |tx: &Connection, last: &mut HashMap<i64, (u64, u64)>| -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached("UPDATE topics SET last_seq = ?1, last_ts = ?2 WHERE id = ?3")?;
        for (topic, (seq, ts)) in last.drain() {
            stmt.execute(params![seq as i64, ts as i64, topic])?;
        }
        Ok(())
    };
    for s in sql {
        match s {
            Sql::Topic { ns, name } => {
                flush(&tx, &mut last).map_err(internal)?;
                tx.prepare_cached("INSERT INTO topics (ns, name) VALUES (?1, ?2) ON CONFLICT (ns, name) DO NOTHING")
                    .and_then(|mut s| s.execute(params![ns, name]))
                    .map_err(internal)?;
                let row = tx
                    .prepare_cached("SELECT id, last_seq, last_ts FROM topics WHERE ns = ?1 AND name = ?2")
                    .and_then(|mut s| {
                        s.query_row(params![ns, name], |r| {
                            Ok(TopicRow {
                                id: r.get(0)?,
                                last_seq: r.get::<_, i64>(1)? as u64,
                                last_ts: r.get::<_, i64>(2)? as u64,
                            })
                        })
                    })
                    .map_err(internal)?;
                outs.push(Out::Topic(row));
            }
            Sql::Event(topic, event) => {
                if event.seq >= 1 << SEQ_BITS {
                    return Err(Status::new(Code::ResourceExhausted, ID, "the topic is full"));
                }
                let metadata = if event.metadata.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&event.metadata).map_err(|e| Status::internal(ID, e.to_string()))?
                };
                tx.prepare_cached("INSERT INTO events (id, ts, key, metadata, payload) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .and_then(|mut s| {
                        s.execute(params![
                            rowid(topic, event.seq),
                            event.timestamp as i64,
                            event.key,
                            metadata,
                            event.payload
                        ])
                    })
                    .map_err(internal)?;
                last.insert(topic, (event.seq, event.timestamp));
            }
            Sql::Group { topic, name, start } => {
                let row = load_group(&tx, topic, &name, start).map_err(internal)?;
                outs.push(Out::Group(row));
            }
            Sql::Take { group, cursor, seqs } => {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO pending (group_id, seq, attempts, not_before) VALUES (?1, ?2, 0, 0)",
                    )
                    .map_err(internal)?;
                for seq in seqs {
                    insert.execute(params![group, seq as i64]).map_err(internal)?;
                }
                tx.prepare_cached("UPDATE groups SET cursor = ?1 WHERE id = ?2")
                    .and_then(|mut s| s.execute(params![cursor as i64, group]))
                    .map_err(internal)?;
            }
            Sql::Attempt { group, seq, attempts, not_before } => {
                tx.prepare_cached("UPDATE pending SET attempts = ?1, not_before = ?2 WHERE group_id = ?3 AND seq = ?4")
                    .and_then(|mut s| s.execute(params![attempts, not_before as i64, group, seq as i64]))
                    .map_err(internal)?;
            }
            Sql::Done { group, seq } => {
                tx.prepare_cached("DELETE FROM pending WHERE group_id = ?1 AND seq = ?2")
                    .and_then(|mut s| s.execute(params![group, seq as i64]))
                    .map_err(internal)?;
            }
            Sql::Purge(retention) => {
                flush(&tx, &mut last).map_err(internal)?;
                purge(&tx, retention).map_err(internal)?;
            }
            Sql::Groups { ns, name, retention } => {
                flush(&tx, &mut last).map_err(internal)?;
                outs.push(Out::Groups(load_groups(&tx, &ns, &name, retention).map_err(internal)?));
            }
        }
    }
    flush(&tx, &mut last).map_err(internal)?;
    tx.commit().map_err(internal)?;
    Ok(outs)
}

fn load_group(tx: &Connection, topic: i64, name: &str, start: u64) -> rusqlite::Result<GroupRow> {
    tx.prepare_cached(
        "INSERT INTO groups (topic_id, name, cursor) VALUES (?1, ?2, ?3) ON CONFLICT (topic_id, name) DO NOTHING",
    )?
    .execute(params![topic, name, start as i64])?;
    let (id, cursor): (i64, i64) = tx
        .prepare_cached("SELECT id, cursor FROM groups WHERE topic_id = ?1 AND name = ?2")?
        .query_row(params![topic, name], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut pending = Vec::new();
    let mut gone = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT p.seq, p.attempts, p.not_before, e.key FROM pending p
             LEFT JOIN events e ON e.id = ?2 + p.seq WHERE p.group_id = ?1 ORDER BY p.seq",
        )?;
        let mut rows = stmt.query(params![id, rowid(topic, 0)])?;
        while let Some(r) = rows.next()? {
            let seq = r.get::<_, i64>(0)? as u64;
            match r.get::<_, Option<String>>(3)? {
                Some(key) => {
                    pending.push(PendingRow { seq, attempts: r.get(1)?, not_before: r.get::<_, i64>(2)? as u64, key })
                }
                None => gone.push(seq),
            }
        }
    }
    // Entries whose event was purged are done.
    let mut delete = tx.prepare_cached("DELETE FROM pending WHERE group_id = ?1 AND seq = ?2")?;
    for seq in gone {
        delete.execute(params![id, seq as i64])?;
    }
    Ok(GroupRow { id, cursor: cursor as u64, pending })
}

/// The groups of topic `name` in `ns` with their stored positions; `None` when nothing was
/// ever published to it.
fn load_groups(tx: &Connection, ns: &str, name: &str, retention: Retention) -> rusqlite::Result<Option<TopicGroups>> {
    let topic: Option<(i64, i64)> = tx
        .prepare_cached("SELECT id, last_seq FROM topics WHERE ns = ?1 AND name = ?2")?
        .query_row(params![ns, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((topic, last_seq)) = topic.filter(|t| t.1 > 0).map(|(id, last)| (id, last as u64)) else {
        return Ok(None);
    };
    let (mut floor, min_ts) = retention.floor(last_seq, now_ms());
    if min_ts > 0 {
        floor = floor.max(seq_at(tx, topic, last_seq, min_ts)?.unwrap_or(last_seq + 1));
    }
    let rows: Vec<(i64, String, u64)> = tx
        .prepare_cached("SELECT id, name, cursor FROM groups WHERE topic_id = ?1 ORDER BY name")?
        .query_map(params![topic], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?
        .collect::<Result<_, _>>()?;
    let mut pending = tx.prepare_cached("SELECT seq, attempts FROM pending WHERE group_id = ?1 ORDER BY seq")?;
    let mut groups = Vec::with_capacity(rows.len());
    for (id, name, cursor) in rows {
        let entries = pending
            .query_map(params![id], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        groups.push((name, Snapshot { cursor, entries, members: 0 }));
    }
    Ok(Some(TopicGroups { last_seq, floor, groups }))
}

fn purge(tx: &Connection, retention: Retention) -> rusqlite::Result<()> {
    let topics: Vec<(i64, u64)> = tx
        .prepare_cached("SELECT id, last_seq FROM topics WHERE last_seq > 0")?
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    let now = now_ms();
    for (topic, last_seq) in topics {
        let (mut floor, min_ts) = retention.floor(last_seq, now);
        if min_ts > 0 {
            // Timestamps never decrease along a topic: scan the expired head only.
            let first_kept: Option<i64> = tx
                .prepare_cached("SELECT id FROM events WHERE id >= ?1 AND id <= ?2 AND ts >= ?3 ORDER BY id LIMIT 1")?
                .query_row(params![rowid(topic, 0), rowid(topic, last_seq), min_ts as i64], |r| r.get(0))
                .optional()?;
            floor = floor.max(first_kept.map_or(last_seq + 1, seq_of));
        }
        if floor <= 1 {
            continue;
        }
        tx.prepare_cached("DELETE FROM events WHERE id >= ?1 AND id < ?2")?
            .execute(params![rowid(topic, 0), rowid(topic, floor)])?;
        tx.prepare_cached(
            "DELETE FROM pending WHERE seq < ?2 AND group_id IN (SELECT id FROM groups WHERE topic_id = ?1)",
        )?
        .execute(params![topic, floor as i64])?;
    }
    Ok(())
}

/// The first retained event of `topic` at or after `ms` (timestamps never decrease
/// along a topic, so this is a binary search of point lookups).
pub(super) fn seq_at(conn: &Connection, topic: i64, last_seq: u64, ms: u64) -> rusqlite::Result<Option<u64>> {
    let mut stmt = conn.prepare_cached("SELECT id, ts FROM events WHERE id >= ?1 AND id <= ?2 ORDER BY id LIMIT 1")?;
    let mut probe = |seq: u64| -> rusqlite::Result<Option<(u64, u64)>> {
        stmt.query_row(params![rowid(topic, seq), rowid(topic, last_seq)], |r| {
            Ok((seq_of(r.get(0)?), r.get::<_, i64>(1)? as u64))
        })
        .optional()
    };
    let (mut lo, mut hi) = (0, last_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe(mid)? {
            Some((_, ts)) if ts < ms => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(probe(lo)?.map(|(seq, _)| seq))
}

pub(super) fn event_from_row(topic: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let metadata: String = r.get(3)?;
    let metadata = if metadata.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&metadata)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e)))?
    };
    Ok(Event {
        topic: topic.to_string(),
        seq: seq_of(r.get(0)?),
        timestamp: r.get::<_, i64>(1)? as u64,
        key: r.get(2)?,
        metadata,
        payload: r.get(4)?,
    })
}

/// The columns [`event_from_row`] reads.
pub(super) const SELECT_EVENTS: &str = "SELECT id, ts, key, metadata, payload FROM events";
