//! Consumer groups: which taken events are pending, ready, blocked behind an earlier
//! event with the same key, or out awaiting their ack; members pulling from them; and
//! acks, nacks and dead letters.

use super::sql::Op;
use super::{ID, Inner, Topic, millis};
use futures::StreamExt;
use micro_core::events::{Acker, ConsumeOptions, DEFAULT_ACK_WAIT, Delivery, Event, GroupInfo, Message};
use micro_core::store::now_ms;
use micro_core::{BoxStream, Status};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Events a group holds at most (taken from the log but not done yet).
const WINDOW: usize = 1024;
/// Events taken from the log at a time.
const TAKE: usize = 256;

pub(super) struct Group {
    topic: Arc<Topic>,
    /// The row id; `None` for a private group, which is not stored.
    id: Option<i64>,
    name: String,
    state: tokio::sync::Mutex<GroupState>,
    /// Signalled when an entry is done or rescheduled.
    changed: Notify,
    /// Members consuming now (their streams are alive).
    members: AtomicU32,
}

impl Group {
    pub(super) fn new(topic: Arc<Topic>, id: Option<i64>, name: String, state: GroupState) -> Group {
        let state = tokio::sync::Mutex::new(state);
        Group { topic, id, name, state, changed: Notify::new(), members: AtomicU32::new(0) }
    }

    /// The group's position as it stands in memory (ahead of what is stored).
    pub(super) async fn snapshot(&self) -> Snapshot {
        let st = self.state.lock().await;
        Snapshot {
            cursor: st.cursor,
            entries: st.entries.iter().map(|(seq, e)| (*seq, e.attempts)).collect(),
            members: self.members.load(Ordering::Relaxed),
        }
    }
}

/// A group's position: what [`progress`] reports on.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// The next sequence number to take from the log.
    pub(super) cursor: u64,
    /// Taken and not done: (sequence number, deliveries so far), in sequence order.
    pub(super) entries: Vec<(u64, u32)>,
    /// Members consuming now.
    pub(super) members: u32,
}

/// The progress of group `name` at `at`, in a topic whose last event is `last_seq` and
/// whose first retained one is `floor` (earlier ones are gone: passed).
pub(super) fn progress(name: String, at: &Snapshot, last_seq: u64, floor: u64) -> GroupInfo {
    let floor = floor.max(1);
    let entries: Vec<(u64, u32)> = at.entries.iter().copied().filter(|(seq, _)| *seq >= floor).collect();
    // The first event not taken from the log yet (purged ones are skipped when taking).
    let untaken = at.cursor.max(floor);
    // Entries all lie below the cursor, so the first of them is the first not done.
    let first_open = entries.first().map_or(untaken, |(seq, _)| *seq).min(untaken);
    // Done entries leave the table: the highest taken event that is not an entry is
    // done (so was delivered), or precedes the group's start.
    let mut below = untaken - 1;
    for (seq, _) in entries.iter().rev() {
        if *seq == below {
            below -= 1;
        } else if *seq < below {
            break;
        }
    }
    let handed = entries.iter().rev().find(|(_, attempts)| *attempts > 0).map_or(0, |(seq, _)| *seq);
    let pending = entries.iter().filter(|(_, attempts)| *attempts > 0).count() as u64;
    let not_taken = (last_seq + 1).saturating_sub(untaken);
    GroupInfo {
        name,
        delivered: below.max(handed).min(last_seq),
        acked: (first_open - 1).min(last_seq),
        pending,
        lag: not_taken + entries.len() as u64,
        members: Some(at.members),
    }
}

/// Where a pending entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Behind an earlier pending entry with the same key.
    Blocked,
    /// In `ready`: may be delivered now.
    Ready,
    /// In `timers`: delivered and awaiting its ack, or nacked with a delay.
    Due(u64),
}

struct Entry {
    key: String,
    attempts: u32,
    at: At,
    /// The event, until it is first delivered.
    event: Option<Arc<Event>>,
}

/// The events a group has taken from the log and not finished.
#[derive(Default)]
pub(super) struct GroupState {
    /// The next sequence number to take from the log.
    cursor: u64,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    /// Pending sequence numbers per non-empty key, in order; only the first may be out.
    keys: HashMap<String, VecDeque<u64>>,
}

impl GroupState {
    pub(super) fn new(cursor: u64) -> GroupState {
        GroupState { cursor: cursor.max(1), ..GroupState::default() }
    }

    /// Adds an entry (in sequence order).
    pub(super) fn add(
        &mut self,
        seq: u64,
        key: String,
        attempts: u32,
        not_before: u64,
        event: Option<Arc<Event>>,
        now: u64,
    ) {
        let head = key.is_empty() || {
            let queue = self.keys.entry(key.clone()).or_default();
            queue.push_back(seq);
            queue.len() == 1
        };
        let at = if !head {
            At::Blocked
        } else if not_before > now {
            self.timers.insert((not_before, seq));
            At::Due(not_before)
        } else {
            self.ready.insert(seq);
            At::Ready
        };
        self.entries.insert(seq, Entry { key, attempts, at, event });
    }

    /// Makes entries whose time has come ready.
    fn fire(&mut self, now: u64) {
        while let Some(&(due, seq)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if let Some(e) = self.entries.get_mut(&seq) {
                e.at = At::Ready;
                self.ready.insert(seq);
            }
        }
    }

    /// Makes `seq` ready at `due`.
    fn schedule(&mut self, seq: u64, due: u64, now: u64) {
        let Some(e) = self.entries.get_mut(&seq) else { return };
        match e.at {
            At::Ready => {
                self.ready.remove(&seq);
            }
            At::Due(t) => {
                self.timers.remove(&(t, seq));
            }
            At::Blocked => {}
        }
        if due > now {
            e.at = At::Due(due);
            self.timers.insert((due, seq));
        } else {
            e.at = At::Ready;
            self.ready.insert(seq);
        }
    }

    /// Removes a finished entry, unblocking the next one with its key.
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        match entry.at {
            At::Ready => {
                self.ready.remove(&seq);
            }
            At::Due(t) => {
                self.timers.remove(&(t, seq));
            }
            At::Blocked => {}
        }
        if !entry.key.is_empty()
            && let Some(queue) = self.keys.get_mut(&entry.key)
        {
            let was_head = queue.front() == Some(&seq);
            queue.retain(|s| *s != seq);
            match queue.front().copied() {
                None => {
                    self.keys.remove(&entry.key);
                }
                Some(next) if was_head => {
                    if let Some(e) = self.entries.get_mut(&next)
                        && e.at == At::Blocked
                    {
                        e.at = At::Ready;
                        self.ready.insert(next);
                    }
                }
                Some(_) => {}
            }
        }
        Some(entry)
    }
}

/// One consume() call: a member of a group.
pub(super) struct Member {
    acker: Arc<GroupAcker>,
    auto_ack: bool,
    /// Milliseconds.
    ack_wait: u64,
}

enum Step {
    Deliver(Box<Delivery>),
    /// Nothing to deliver; wait for a publish, a group change or this time.
    Wait(Option<u64>),
}

impl Member {
    /// A member of `group` consuming with `options`; `dead_letter` is the resolved
    /// dead-letter topic.
    pub(super) fn new(inner: Arc<Inner>, group: Arc<Group>, options: &ConsumeOptions, dead_letter: String) -> Member {
        let ack_wait = if options.ack_wait.is_zero() { DEFAULT_ACK_WAIT } else { options.ack_wait };
        group.members.fetch_add(1, Ordering::Relaxed);
        let acker = Arc::new(GroupAcker { inner, group, max_deliver: options.max_deliver, dead_letter });
        Member { acker, auto_ack: options.auto_ack, ack_wait: millis(ack_wait) }
    }

    pub(super) fn into_stream(self) -> BoxStream<Result<Delivery, Status>> {
        let published = self.acker.group.topic.published.subscribe();
        futures::stream::unfold((self, published), |(member, mut published)| async move {
            let group = member.acker.group.clone();
            loop {
                let changed = group.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                published.borrow_and_update();
                match member.next().await {
                    Ok(Step::Deliver(d)) => return Some((Ok(*d), (member, published))),
                    Err(e) => return Some((Err(e), (member, published))),
                    Ok(Step::Wait(due)) => {
                        let wait = due.map_or(Duration::from_secs(3600), |t| {
                            Duration::from_millis(t.saturating_sub(now_ms()).max(1))
                        });
                        tokio::select! {
                            _ = &mut changed => {}
                            r = published.changed() => if r.is_err() { return None },
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        })
        .boxed()
    }

    /// The next delivery for this member, if any.
    async fn next(&self) -> Result<Step, Status> {
        let acker = &self.acker;
        let (inner, group) = (&acker.inner, &acker.group);
        let topic = &group.topic;
        let mut st = group.state.lock().await;
        loop {
            let now = now_ms();
            st.fire(now);
            if let Some(seq) = st.ready.pop_first() {
                let Some(attempts) = st.entries.get(&seq).map(|e| e.attempts) else { continue };
                let cached = st.entries.get(&seq).and_then(|e| e.event.clone());
                if acker.max_deliver > 0 && attempts >= acker.max_deliver {
                    let op = match acker.dead_letter(seq, attempts, cached).await {
                        Ok(op) => op,
                        Err(e) => {
                            st.ready.insert(seq);
                            return Err(e);
                        }
                    };
                    st.remove(seq);
                    group.changed.notify_waiters();
                    if let Some(op) = op {
                        inner.writer.send(op);
                    }
                    continue;
                }
                let event = match cached {
                    Some(e) => Some(e),
                    None => match inner.load(topic, seq).await {
                        Ok(e) => e,
                        Err(e) => {
                            st.ready.insert(seq);
                            return Err(e);
                        }
                    },
                };
                let retention = inner.retention();
                let Some(event) = event.filter(|e| retention.keeps(e, topic.last_seq(), now)) else {
                    // Purged: nothing left to deliver.
                    st.remove(seq);
                    acker.persist(|group| Op::Done { group, seq, reply: None });
                    group.changed.notify_waiters();
                    continue;
                };
                let attempt = attempts + 1;
                if self.auto_ack {
                    st.remove(seq);
                    acker.persist(|group| Op::Done { group, seq, reply: None });
                    group.changed.notify_waiters();
                } else {
                    if let Some(e) = st.entries.get_mut(&seq) {
                        e.attempts = attempt;
                        // Redeliveries read it again (from memory while recent).
                        e.event = None;
                    }
                    let due = now.saturating_add(self.ack_wait);
                    st.schedule(seq, due, now);
                    if st.timers.first() == Some(&(due, seq)) {
                        // Idle members sleep until the earliest deadline: this is a new one.
                        group.changed.notify_waiters();
                    }
                    acker.persist(|group| Op::Attempt { group, seq, attempts: attempt, not_before: 0 });
                }
                return Ok(Step::Deliver(Box::new(Delivery {
                    event: Event::clone(&event),
                    group: group.name.clone(),
                    attempt,
                    token: format!("{seq}:{attempt}"),
                    acker: acker.clone(),
                })));
            }
            // Nothing ready: take more from the log.
            let last = topic.last_seq();
            if st.cursor <= last && st.entries.len() < WINDOW {
                let max = TAKE.min(WINDOW - st.entries.len());
                let events = inner.fetch(topic, st.cursor, last, max).await?;
                st.cursor = match events.last() {
                    Some(e) if events.len() == max => e.seq + 1,
                    _ => last + 1,
                };
                let retention = inner.retention();
                let mut seqs = Vec::with_capacity(events.len());
                for event in events {
                    if retention.keeps(&event, last, now) {
                        seqs.push(event.seq);
                        st.add(event.seq, event.key.clone(), 0, 0, Some(event), now);
                    }
                }
                let cursor = st.cursor;
                acker.persist(|group| Op::Take { group, cursor, seqs });
                continue;
            }
            return Ok(Step::Wait(st.timers.first().map(|t| t.0)));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.acker.group.members.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Acknowledges the deliveries of one member.
pub(super) struct GroupAcker {
    inner: Arc<Inner>,
    group: Arc<Group>,
    max_deliver: u32,
    dead_letter: String,
}

fn parse_token(token: &str) -> Result<(u64, u32), Status> {
    token
        .split_once(':')
        .and_then(|(seq, attempt)| Some((seq.parse().ok()?, attempt.parse().ok()?)))
        .ok_or_else(|| Status::bad_request(ID, format!("invalid delivery token {token:?}")))
}

impl GroupAcker {
    /// Queues a write for a stored group (private groups are not stored).
    fn persist(&self, op: impl FnOnce(i64) -> Op) {
        if let Some(id) = self.group.id {
            self.inner.writer.send(op(id));
        }
    }

    /// Completes entry `seq` of a stored group and waits for the commit.
    async fn persist_now(&self, seq: u64) -> Result<(), Status> {
        match self.group.id {
            Some(group) => self.inner.writer.call(|reply| Op::Done { group, seq, reply: Some(reply) }).await,
            None => Ok(()),
        }
    }

    /// The write that moves entry `seq` to the dead-letter topic and completes it in
    /// the same transaction (just completes it when its event was purged).
    async fn dead_letter(&self, seq: u64, attempts: u32, cached: Option<Arc<Event>>) -> Result<Option<Op>, Status> {
        let topic = &self.group.topic;
        let event = match cached {
            Some(e) => Some(e),
            None => self.inner.load(topic, seq).await?,
        };
        let done = self.group.id.map(|g| (g, seq));
        let Some(event) = event else {
            return Ok(done.map(|(group, seq)| Op::Done { group, seq, reply: None }));
        };
        let mut metadata = event.metadata.clone();
        metadata.insert("dead-letter-topic".into(), topic.name.clone());
        metadata.insert("dead-letter-seq".into(), seq.to_string());
        metadata.insert("dead-letter-group".into(), self.group.name.clone());
        metadata.insert("attempts".into(), attempts.to_string());
        let message = Message { key: event.key.clone(), metadata, payload: event.payload.clone() };
        let target = self.inner.topic(&topic.ns, &self.dead_letter).await?;
        tracing::debug!(topic = %topic.name, seq, dead_letter = %self.dead_letter, "events: dead letter");
        Ok(Some(Op::Publish { topic: target, message, done, reply: None }))
    }
}

#[async_trait::async_trait]
impl Acker for GroupAcker {
    async fn ack(&self, delivery: &Delivery) -> Result<(), Status> {
        let (seq, _) = parse_token(&delivery.token)?;
        let removed = self.group.state.lock().await.remove(seq).is_some();
        if !removed {
            return Ok(());
        }
        self.group.changed.notify_waiters();
        self.persist_now(seq).await
    }

    async fn nack(&self, delivery: &Delivery, delay: Duration) -> Result<(), Status> {
        let (seq, attempt) = parse_token(&delivery.token)?;
        let now = now_ms();
        let mut st = self.group.state.lock().await;
        // Only the latest delivery of a pending entry may be nacked.
        let current = st.entries.get(&seq).is_some_and(|e| e.attempts == attempt && e.at != At::Blocked);
        if !current {
            return Ok(());
        }
        if self.max_deliver > 0 && attempt >= self.max_deliver {
            let op = self.dead_letter(seq, attempt, None).await?;
            st.remove(seq);
            drop(st);
            self.group.changed.notify_waiters();
            return match op {
                Some(Op::Publish { topic, message, done, .. }) => {
                    let publish = |reply| Op::Publish { topic, message, done, reply: Some(reply) };
                    self.inner.writer.call(publish).await.map(drop)
                }
                Some(Op::Done { seq, .. }) => self.persist_now(seq).await,
                _ => Ok(()),
            };
        }
        let due = now.saturating_add(millis(delay));
        st.schedule(seq, due, now);
        drop(st);
        self.group.changed.notify_waiters();
        let not_before = if due > now { due } else { 0 };
        self.persist(|group| Op::Attempt { group, seq, attempts: attempt, not_before });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_block_and_timers_fire() {
        let mut st = GroupState::new(1);
        st.add(1, "a".into(), 0, 0, None, 0);
        st.add(2, "b".into(), 0, 0, None, 0);
        st.add(3, "a".into(), 0, 0, None, 0);
        st.add(4, String::new(), 0, 0, None, 0);
        assert_eq!(st.ready.iter().copied().collect::<Vec<_>>(), vec![1, 2, 4], "3 waits behind 1");
        st.remove(1);
        assert_eq!(st.ready.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4], "3 is unblocked");
        st.ready.pop_first();
        st.schedule(2, 100, 10);
        st.fire(50);
        assert!(!st.ready.contains(&2));
        st.fire(100);
        assert!(st.ready.contains(&2));
        // Restored after a restart: attempts kept, a nack delay honoured.
        let mut st = GroupState::new(1);
        st.add(7, "k".into(), 2, 500, None, 100);
        st.add(8, "k".into(), 0, 0, None, 100);
        assert!(st.ready.is_empty() && st.timers.contains(&(500, 7)));
    }

    fn at(cursor: u64, entries: &[(u64, u32)]) -> Snapshot {
        Snapshot { cursor, entries: entries.to_vec(), members: 1 }
    }

    fn numbers(info: &GroupInfo) -> (u64, u64, u64, u64) {
        (info.delivered, info.acked, info.pending, info.lag)
    }

    #[test]
    fn progress_from_cursor_and_entries() {
        // Nothing taken yet, from the start: nothing delivered or acked, all to do.
        assert_eq!(numbers(&progress("g".into(), &at(1, &[]), 10, 1)), (0, 0, 0, 10));
        // Started at 6 (offset New after 5 events): 1-5 are passed.
        assert_eq!(numbers(&progress("g".into(), &at(6, &[]), 8, 1)), (5, 5, 0, 3));
        // 1-10 taken; 1-3 acked, 4-5 delivered, 6-10 waiting.
        let entries = [(4, 1), (5, 1), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(11, &entries), 10, 1)), (5, 3, 2, 7));
        // 5 acked out of order while 4 is still out: the floor stays, the lag shrinks.
        let entries = [(4, 1), (6, 0), (7, 0), (8, 0), (9, 0), (10, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(11, &entries), 10, 1)), (5, 3, 1, 6));
        // Everything taken was acked; 11-12 are not taken yet.
        assert_eq!(numbers(&progress("g".into(), &at(11, &[]), 12, 1)), (10, 10, 0, 2));
        // A nacked entry (attempts kept) still counts as pending; a key-blocked later one
        // was never delivered, but one past it was.
        let entries = [(2, 2), (3, 0), (4, 1)];
        assert_eq!(numbers(&progress("g".into(), &at(5, &entries), 4, 1)), (4, 1, 2, 3));
        // Retention removed 1-6: entries below the floor are gone, the cursor jumps.
        let entries = [(2, 1), (3, 0)];
        assert_eq!(numbers(&progress("g".into(), &at(4, &entries), 10, 7)), (6, 6, 0, 4));
        // A start past the end of the topic reports the end.
        assert_eq!(numbers(&progress("g".into(), &at(50, &[]), 10, 1)), (10, 10, 0, 0));
    }
}
